//! `Probe`: the closed set of probe kinds the agent can schedule (enum dispatch, no registry).
//! Each variant turns a config entry into calls on the `probes` crate.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use probes::{
    CancellationToken, FailureKind, IcmpClient, Measurement, Observation, Outcome, PingStats,
    RoundPlan,
};

use crate::config::{FamilyPreference, ProbeConfig, ProbeKind, Target};

/// A configured probe, ready to run against any of its targets.
#[derive(Debug, Clone)]
pub enum Probe {
    Icmp { client: IcmpClient, plan: RoundPlan },
}

/// Shared measurement resources, opened once per agent.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub icmp: Option<IcmpClient>,
}

impl Probe {
    /// Build the runnable probe; fails only if a shared resource it needs (e.g. an ICMP socket) is
    /// missing from `resources`.
    pub fn new(config: &ProbeConfig, resources: &Resources) -> anyhow::Result<Probe> {
        match &config.kind {
            ProbeKind::Icmp { count, spacing } => Ok(Probe::Icmp {
                client: resources
                    .icmp
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("probe {:?} needs ICMP sockets", config.name))?,
                plan: RoundPlan {
                    count: *count,
                    spacing: *spacing,
                    timeout: config.timeout,
                },
            }),
        }
    }

    /// The longest one run may take before the scheduler cuts it off.
    pub fn deadline(&self) -> Duration {
        match self {
            // Slack for resolving the name and for the last reply's hand-off.
            Probe::Icmp { plan, .. } => plan.duration() + Duration::from_secs(1),
        }
    }

    /// Measure `target` once. Never fails: problems are recorded in the observation.
    pub async fn run(
        &self,
        target: &Target,
        stop: &CancellationToken,
    ) -> (Option<IpAddr>, Observation) {
        let address = match resolve(&target.host, target.family).await {
            Ok(address) => address,
            Err(message) => {
                return (
                    None,
                    self.failed_before_start(FailureKind::Resolve, message),
                );
            }
        };
        let observation = match self {
            Probe::Icmp { client, plan } => client.round(address, *plan, stop).await,
        };
        (Some(address), observation)
    }

    /// The observation for a run that could not even start (name did not resolve, deadline hit).
    pub fn failed_before_start(&self, kind: FailureKind, message: String) -> Observation {
        let measurement = match self {
            Probe::Icmp { .. } => Measurement::Ping(PingStats::from_rtts(Vec::new())),
        };
        Observation {
            started_at: SystemTime::now(),
            duration: Duration::ZERO,
            outcome: Outcome::failure(kind, message),
            measurement,
        }
    }
}

/// Resolve a host name or address literal, honouring the family preference.
pub async fn resolve(host: &str, family: FamilyPreference) -> Result<IpAddr, String> {
    if let Ok(address) = host.parse::<IpAddr>() {
        return Ok(address);
    }
    let started = Instant::now();
    let addresses = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?;
    let wanted = |a: &IpAddr| match family {
        FamilyPreference::Any => true,
        FamilyPreference::V4 => a.is_ipv4(),
        FamilyPreference::V6 => a.is_ipv6(),
    };
    let found = addresses.map(|s| s.ip()).find(wanted);
    tracing::trace!(host, ?found, elapsed = ?started.elapsed(), "resolved");
    found.ok_or_else(|| format!("{host:?} has no {family:?} address"))
}
