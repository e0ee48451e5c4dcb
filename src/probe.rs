//! `Probe`: the closed set of probe kinds the agent can schedule (enum dispatch, no registry).
//! Each variant turns a config entry into calls on the `probes` crate.
//!
//! A `Probe` is built per (probe, target) job, so that what depends on the target is prepared once:
//! the HTTP check for the target's URL, the trace probe's memory of the last path. The ICMP
//! client inside is shared by every job (one socket per address family for the whole agent).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use probes::net::resolve_one;
// Re-exported for the agent's start-up check.
pub use probes::net::has_cap_net_raw;
use probes::{
    CancellationToken, DnsCheck, DnsSettings, DnsStats, FailureKind, HttpCheck, HttpSettings,
    IcmpClient, IpPreference, Measurement, Observation, Outcome, PingStats, RoundPlan, TcpSettings,
    TcpStats, TraceReport, TraceSettings,
};

use crate::config::{FamilyPreference, ProbeConfig, ProbeKind, Target};

/// Slack on top of a run's own time bound before the scheduler cuts it off: resolving a name,
/// handing over the result.
const SLACK: Duration = Duration::from_secs(1);
/// Traces resolve their target first, outside the tracer's own bound.
const TRACE_SLACK: Duration = Duration::from_secs(2);

/// A configured probe for one target, ready to run.
#[derive(Debug)]
pub enum Probe {
    Icmp {
        client: IcmpClient,
        plan: RoundPlan,
    },
    Tcp {
        settings: TcpSettings,
    },
    Http {
        check: Box<HttpCheck>,
    },
    /// The check is built per run: the target (the DNS server) may be a name to resolve first.
    Dns {
        settings: DnsSettings,
    },
    Trace {
        settings: TraceSettings,
        /// The path the next trace is compared with, for `path_changed`.
        last_path: Mutex<LastPath>,
    },
}

/// What a trace probe knows of the previous path: its hops (a silent hop then reads as unknown,
/// not as a change: [`probes::same_path`]), or after a restart only the stored hash.
#[derive(Debug, Default)]
pub enum LastPath {
    #[default]
    Unknown,
    Hash(String),
    Hops(probes::Path),
}

impl LastPath {
    /// Compare `report` with the previous path, then remember it; true if the path changed.
    fn changed(&mut self, report: &TraceReport) -> bool {
        let current = report.path();
        let (changed, reference) = match &*self {
            LastPath::Unknown => (false, current),
            LastPath::Hash(hash) => (*hash != report.path_hash, current),
            LastPath::Hops(previous) => {
                if probes::same_path(previous, &current, report.target) {
                    (false, probes::merge_path(previous, &current))
                } else {
                    (true, current)
                }
            }
        };
        *self = LastPath::Hops(reference);
        changed
    }
}

/// Shared measurement resources, opened once per agent.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub icmp: Option<IcmpClient>,
}

impl Probe {
    /// Build the runnable probe of `config` for `target`; fails if a shared resource it needs
    /// (e.g. an ICMP socket) is missing from `resources`, or if its settings cannot work (a CA
    /// file that does not parse).
    pub fn new(
        config: &ProbeConfig,
        target: &Target,
        resources: &Resources,
    ) -> anyhow::Result<Probe> {
        let ip = ip_preference(target.family);
        Ok(match &config.kind {
            ProbeKind::Icmp { count, spacing } => Probe::Icmp {
                client: resources
                    .icmp
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("probe {:?} needs ICMP sockets", config.name))?,
                plan: RoundPlan {
                    count: *count,
                    spacing: *spacing,
                    timeout: config.timeout,
                },
            },
            ProbeKind::Tcp { port } => Probe::Tcp {
                settings: TcpSettings {
                    host: target.host.clone(),
                    port: *port,
                    timeout: config.timeout,
                    ip,
                },
            },
            ProbeKind::Http(http) => {
                let settings = HttpSettings {
                    url: http.url(&target.host),
                    timeout: config.timeout,
                    ip,
                    ..http.check.clone()
                };
                let check = HttpCheck::new(settings).with_context(|| {
                    format!("probe {:?}, target {:?}", config.name, target.name)
                })?;
                Probe::Http {
                    check: Box::new(check),
                }
            }
            ProbeKind::Dns(dns) => {
                let settings = DnsSettings {
                    timeout: config.timeout,
                    ..dns.clone()
                };
                // Catch what only the DNS library can judge before the first run.
                DnsCheck::new(settings.clone())
                    .with_context(|| format!("probe {:?}", config.name))?;
                Probe::Dns { settings }
            }
            ProbeKind::Trace(trace) => Probe::Trace {
                settings: TraceSettings {
                    target: target.host.clone(),
                    ip,
                    privileged: has_cap_net_raw(),
                    ..trace.clone()
                },
                last_path: Mutex::new(LastPath::Unknown),
            },
        })
    }

    /// The trace probe's last known path hash, e.g. the latest stored one, so that the first
    /// trace after a restart is not taken for a path change. No-op for other kinds.
    pub fn seed_path_hash(&self, hash: String) {
        if let Probe::Trace { last_path, .. } = self {
            *last_path.lock().unwrap_or_else(PoisonError::into_inner) = LastPath::Hash(hash);
        }
    }

    /// An ICMP probe's client and plan, with the target's address when the target is given as one
    /// the family preference allows: such a job needs no name resolved per round, so the scheduler
    /// runs it in its probe's one loop ([`crate::scheduler`]) rather than in a loop of its own.
    pub fn icmp_by_address(&self, target: &Target) -> Option<(&IcmpClient, RoundPlan, IpAddr)> {
        let Probe::Icmp { client, plan } = self else {
            return None;
        };
        let address = probes::net::literal_ip(&target.host)?;
        ip_preference(target.family)
            .allows(address)
            .then_some((client, *plan, address))
    }

    /// The longest one run may take before the scheduler cuts it off.
    pub fn deadline(&self) -> Duration {
        match self {
            // Slack for resolving the name and for the last reply's hand-off.
            Probe::Icmp { plan, .. } => plan.duration() + SLACK,
            Probe::Tcp { settings } => settings.timeout + SLACK,
            Probe::Http { check } => check.settings().timeout + SLACK,
            Probe::Dns { settings } => settings.timeout + SLACK,
            Probe::Trace { settings, .. } => settings.max_duration() + TRACE_SLACK,
        }
    }

    /// Measure `target` once: every kind through its probes-crate entry point, each honouring
    /// `stop` ([`probes::unless_stopped`]). Never fails: problems are recorded in the observation.
    /// Returns the address measured, when known.
    ///
    /// The checks' and traces' futures are boxed: a future is as large as its largest arm, and
    /// every (probe, target) loop holds one for the whole of each run, so the HTTP client's
    /// kilobytes inline would cost every ICMP target (10,000 ICMP targets: 42 MB of tasks;
    /// an ICMP round lasts its whole interval). Checks run seconds apart, so a box each is cheap.
    pub async fn run(
        &self,
        target: &Target,
        stop: &CancellationToken,
    ) -> (Option<IpAddr>, Observation) {
        match self {
            Probe::Icmp { client, plan } => {
                // Not `match self.resolve(..).await { Ok(a) => (.., client.round(..).await) }`:
                // the scrutinee (a whole observation) would sit in the future for the round.
                let address = match self.resolve(target, stop).await {
                    Ok(address) => address,
                    Err(failed) => return (None, failed),
                };
                (Some(address), client.round(address, *plan, stop).await)
            }
            Probe::Tcp { settings } => {
                let observation = Box::pin(probes::tcp::run(settings, stop)).await;
                let address = match &observation.measurement {
                    Measurement::Tcp(stats) => stats.address.map(|a| a.ip()),
                    _ => None,
                };
                (address, observation)
            }
            // reqwest resolves (and times) the name itself; only a literal is known up front.
            Probe::Http { check } => (target.host.parse().ok(), Box::pin(check.run(stop)).await),
            Probe::Dns { settings } => {
                let server = match self.resolve(target, stop).await {
                    Ok(address) => address,
                    Err(failed) => return (None, failed),
                };
                let settings = DnsSettings {
                    server: SocketAddr::new(server, settings.server.port()),
                    ..settings.clone()
                };
                let observation = match DnsCheck::new(settings) {
                    Ok(check) => Box::pin(check.run(stop)).await,
                    // Checked when the probe was built; cannot happen for another server.
                    Err(error) => self.failed_before_start(FailureKind::Send, error.to_string()),
                };
                (Some(server), observation)
            }
            Probe::Trace {
                settings,
                last_path,
            } => {
                let mut observation = Box::pin(probes::trace::run(settings, stop)).await;
                let mut address = None;
                if let Measurement::Trace(report) = &mut observation.measurement
                    && !report.hops.is_empty()
                {
                    address = Some(report.target);
                    let mut last = last_path.lock().unwrap_or_else(PoisonError::into_inner);
                    report.path_changed = last.changed(report);
                    if report.path_changed {
                        tracing::info!(target = %target.name, to = %report.path_hash, "path changed");
                    }
                }
                (address, observation)
            }
        }
    }

    /// The target's address, for the kinds that need one before they start; a name that does
    /// not resolve (or a stop while resolving) is the run's observation.
    async fn resolve(
        &self,
        target: &Target,
        stop: &CancellationToken,
    ) -> Result<IpAddr, Observation> {
        let started_at = SystemTime::now();
        tokio::select! {
            resolved = resolve_one(&target.host, ip_preference(target.family)) => resolved
                .map_err(|message| self.failed_before_start(FailureKind::Resolve, message)),
            () = stop.cancelled() => Err(Observation::stopped(started_at, self.empty_measurement())),
        }
    }

    /// Whether the run was interrupted by the stop rather than measured whole: an ICMP round
    /// cut short of its count, or a run of another kind that reported
    /// [`Observation::was_stopped`]. Neither is stored: its figures describe the shutdown, not
    /// the target.
    pub fn cut_short(&self, observation: &Observation) -> bool {
        match (self, &observation.measurement) {
            (Probe::Icmp { plan, .. }, Measurement::Ping(stats)) if stats.sent < plan.count => true,
            _ => observation.was_stopped(),
        }
    }

    /// The observation for a run that could not even start (name did not resolve, deadline hit).
    pub fn failed_before_start(&self, kind: FailureKind, message: String) -> Observation {
        Observation {
            started_at: SystemTime::now(),
            duration: Duration::ZERO,
            outcome: Outcome::failure(kind, message),
            measurement: self.empty_measurement(),
        }
    }

    /// This kind's measurement with nothing measured.
    fn empty_measurement(&self) -> Measurement {
        match self {
            Probe::Icmp { .. } => Measurement::Ping(PingStats::default()),
            Probe::Tcp { .. } => Measurement::Tcp(TcpStats::default()),
            Probe::Http { check } => check.empty_measurement(),
            Probe::Dns { settings } => Measurement::Dns(DnsStats {
                record_type: settings.record_type.as_str().to_string(),
                ..DnsStats::default()
            }),
            Probe::Trace { .. } => Measurement::Trace(TraceReport::default()),
        }
    }
}

/// A target's `family` as the probes crate's connect preference.
pub fn ip_preference(family: FamilyPreference) -> IpPreference {
    match family {
        FamilyPreference::Any => IpPreference::Any,
        FamilyPreference::V4 => IpPreference::V4Only,
        FamilyPreference::V6 => IpPreference::V6Only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (probe, target) loop holds a run's future for the whole run (an ICMP round lasts its
    /// interval), so its size is paid per target: 10,000 targets × 4 KB was 42 MB of RSS while
    /// the HTTP check's future sat inline in every ICMP target's loop, and the ICMP arm kept its
    /// resolution's `Result` (a whole observation) beside the round (952 bytes in a debug build).
    #[test]
    fn a_run_in_flight_holds_little_memory() {
        let config = crate::config::Config::parse(
            "[agent]\nsite = \"s\"\n[[target]]\nname = \"t\"\nhost = \"198.18.2.2\"\n\
             [[probe]]\nname = \"p\"\nkind = \"tcp\"\nport = 80\n",
            std::path::Path::new("/nonexistent/vantage.toml"),
        )
        .expect("config");
        let target = &config.targets[0];
        let probe =
            Probe::new(&config.probes[0], target, &Resources { icmp: None }).expect("probe");
        let stop = CancellationToken::new();
        let run = probe.run(target, &stop);
        let size = size_of_val(&run);
        eprintln!("a run's future: {size} bytes");
        assert!(size <= 768, "a run's future takes {size} bytes");
    }

    #[test]
    fn a_trace_is_a_path_change_only_when_the_route_differs() {
        let hop = |ttl: u8, address: Option<&str>| probes::Hop {
            ttl,
            addresses: address
                .into_iter()
                .map(|a| a.parse().expect("address"))
                .collect(),
            sent: 3,
            received: u32::from(address.is_some()) * 3,
            loss_pct: if address.is_some() { 0.0 } else { 100.0 },
            rtt_last_ms: None,
            rtt_avg_ms: None,
            rtt_best_ms: None,
            rtt_worst_ms: None,
            rtt_stddev_ms: None,
        };
        let trace =
            |hops: Vec<probes::Hop>| TraceReport::new("198.18.2.2".parse().expect("address"), hops);
        let full = trace(vec![
            hop(1, Some("198.18.0.1")),
            hop(2, Some("198.18.1.2")),
            hop(3, Some("198.18.2.2")),
        ]);
        let lossy = trace(vec![
            hop(1, Some("198.18.0.1")),
            hop(2, Some("198.18.1.2")),
            hop(3, None),
        ]);
        let rerouted = trace(vec![hop(1, Some("198.18.0.1")), hop(2, Some("198.18.2.2"))]);

        let mut last = LastPath::Unknown;
        assert!(!last.changed(&full), "the first trace is no change");
        assert!(!last.changed(&lossy), "the destination silent under loss");
        assert!(!last.changed(&full));
        assert!(last.changed(&rerouted), "one hop less");
        assert!(!last.changed(&rerouted));
        // After a restart only the stored hash is known: a different hash is a change.
        let mut seeded = LastPath::Hash(full.path_hash.clone());
        assert!(!seeded.changed(&full));
        let mut seeded = LastPath::Hash(full.path_hash.clone());
        assert!(seeded.changed(&rerouted));
    }

    #[test]
    fn http_urls_bracket_ipv6_and_keep_default_ports_out() {
        let mut http = crate::config::HttpProbe {
            scheme: "https".into(),
            port: None,
            path: "/healthz?full=1".into(),
            check: HttpSettings::new(""),
        };
        assert_eq!(
            http.url("api.example.net"),
            "https://api.example.net/healthz?full=1"
        );
        http.port = Some(8443);
        assert_eq!(
            http.url("2001:db8::1"),
            "https://[2001:db8::1]:8443/healthz?full=1"
        );
        assert_eq!(
            http.url("198.18.1.1"),
            "https://198.18.1.1:8443/healthz?full=1"
        );
    }
}
