//! `Probe`: the closed set of probe kinds the agent can schedule (enum dispatch, no registry).
//! Each variant turns a config entry into calls on the `probes` crate.
//!
//! A `Probe` is built per (probe, target) job, so that what depends on the target is prepared once:
//! the HTTP check for the target's URL, the trace probe's memory of the last path. The ICMP
//! client inside is shared by every job (one socket per address family for the whole agent).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use probes::{
    CancellationToken, DnsCheck, DnsExpect, DnsSettings, DnsStats, FailureKind, HeaderMatch,
    HttpCheck, HttpExpect, HttpSettings, HttpStats, IcmpClient, IpPreference, Measurement,
    Observation, Outcome, PingStats, RoundPlan, TcpSettings, TcpStats, TraceReport, TraceSettings,
};

use crate::config::{
    DnsProbe, FamilyPreference, HttpProbe, ProbeConfig, ProbeKind, TRACE_GRACE, Target, TraceProbe,
};

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
        query: DnsProbe,
        timeout: Duration,
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
                let settings = http_settings(http, &target.host, config.timeout, ip);
                let check = HttpCheck::new(settings).with_context(|| {
                    format!("probe {:?}, target {:?}", config.name, target.name)
                })?;
                Probe::Http {
                    check: Box::new(check),
                }
            }
            ProbeKind::Dns(dns) => {
                // Catch what only the DNS library can judge before the first run.
                let placeholder = SocketAddr::from(([127, 0, 0, 1], dns.port));
                DnsCheck::new(dns_settings(dns, placeholder, config.timeout))
                    .with_context(|| format!("probe {:?}", config.name))?;
                Probe::Dns {
                    query: dns.clone(),
                    timeout: config.timeout,
                }
            }
            ProbeKind::Trace(trace) => Probe::Trace {
                settings: trace_settings(trace, &target.host, config.timeout, ip),
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

    /// The longest one run may take before the scheduler cuts it off.
    pub fn deadline(&self) -> Duration {
        match self {
            // Slack for resolving the name and for the last reply's hand-off.
            Probe::Icmp { plan, .. } => plan.duration() + SLACK,
            Probe::Tcp { settings } => settings.timeout + SLACK,
            Probe::Http { check } => check.settings().timeout + SLACK,
            Probe::Dns { timeout, .. } => *timeout + SLACK,
            Probe::Trace { settings, .. } => settings.max_duration() + TRACE_SLACK,
        }
    }

    /// Measure `target` once. Never fails: problems are recorded in the observation. Returns the
    /// address measured, when known.
    pub async fn run(
        &self,
        target: &Target,
        stop: &CancellationToken,
    ) -> (Option<IpAddr>, Observation) {
        match self {
            Probe::Icmp { client, plan } => match resolve(&target.host, target.family).await {
                Ok(address) => (Some(address), client.round(address, *plan, stop).await),
                Err(message) => (
                    None,
                    self.failed_before_start(FailureKind::Resolve, message),
                ),
            },
            Probe::Tcp { settings } => {
                let observation = probes::tcp::run(settings).await;
                let address = match &observation.measurement {
                    Measurement::Tcp(stats) => stats.address.map(|a| a.ip()),
                    _ => None,
                };
                (address, observation)
            }
            // reqwest resolves (and times) the name itself; only a literal is known up front.
            Probe::Http { check } => (target.host.parse().ok(), check.run().await),
            Probe::Dns { query, timeout } => {
                let server = match resolve(&target.host, target.family).await {
                    Ok(address) => address,
                    Err(message) => {
                        return (
                            None,
                            self.failed_before_start(FailureKind::Resolve, message),
                        );
                    }
                };
                let settings = dns_settings(query, SocketAddr::new(server, query.port), *timeout);
                let observation = match DnsCheck::new(settings) {
                    Ok(check) => check.run().await,
                    // Checked when the probe was built; cannot happen for another server.
                    Err(error) => self.failed_before_start(FailureKind::Send, error.to_string()),
                };
                (Some(server), observation)
            }
            Probe::Trace {
                settings,
                last_path,
            } => {
                let mut observation = probes::trace::run(settings).await;
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

    /// The observation for a run that could not even start (name did not resolve, deadline hit).
    pub fn failed_before_start(&self, kind: FailureKind, message: String) -> Observation {
        let measurement = match self {
            Probe::Icmp { .. } => Measurement::Ping(PingStats::from_rtts(Vec::new())),
            Probe::Tcp { .. } => Measurement::Tcp(TcpStats {
                connect_ms: None,
                resolve_ms: None,
                address: None,
            }),
            Probe::Http { check } => Measurement::Http(HttpStats {
                method: check.settings().method.clone(),
                final_url: check.settings().url.clone(),
                ..HttpStats::default()
            }),
            Probe::Dns { query, .. } => Measurement::Dns(DnsStats {
                server: String::new(),
                record_type: query.record_type.as_str().to_string(),
                rcode: None,
                latency_ms: None,
                answers: 0,
                records: Vec::new(),
                authoritative: false,
                truncated: false,
            }),
            Probe::Trace { .. } => {
                Measurement::Trace(TraceReport::new(IpAddr::from([0, 0, 0, 0]), Vec::new()))
            }
        };
        Observation {
            started_at: SystemTime::now(),
            duration: Duration::ZERO,
            outcome: Outcome::failure(kind, message),
            measurement,
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

fn http_settings(
    http: &HttpProbe,
    host: &str,
    timeout: Duration,
    ip: IpPreference,
) -> HttpSettings {
    HttpSettings {
        method: http.method.clone(),
        headers: http.headers.clone(),
        body: http.body.as_ref().map(|b| b.clone().into_bytes()),
        timeout,
        max_body_bytes: http.max_body_bytes,
        max_redirects: http.max_redirects,
        follow_private_redirects: http.follow_private_redirects,
        ip,
        server_name: http.server_name.clone(),
        ca_file: http.ca_file.clone(),
        expect: HttpExpect {
            status_codes: http.expect_status.clone(),
            body_contains: http.body_contains.iter().cloned().collect(),
            body_matches: http.body_regex.iter().cloned().collect(),
            headers: http
                .header_matches
                .iter()
                .map(|(name, regex)| HeaderMatch {
                    name: name.clone(),
                    regex: regex.clone(),
                })
                .collect(),
            max_total: http.max_total,
            min_cert_expiry_days: http.min_cert_expiry_days,
        },
        ..HttpSettings::new(http.url(host))
    }
}

fn dns_settings(dns: &DnsProbe, server: SocketAddr, timeout: Duration) -> DnsSettings {
    DnsSettings {
        transport: dns.transport,
        timeout,
        recursion_desired: dns.recursion,
        expect: DnsExpect {
            rcodes: dns.expect_rcode.iter().cloned().collect(),
            min_answers: dns.min_answers,
            answers_include: dns.expect_answers.clone(),
            answers_match: Vec::new(),
        },
        ..DnsSettings::new(server, dns.query.clone(), dns.record_type)
    }
}

fn trace_settings(
    trace: &TraceProbe,
    host: &str,
    round: Duration,
    ip: IpPreference,
) -> TraceSettings {
    TraceSettings {
        ip,
        protocol: trace.protocol,
        rounds: trace.count as usize,
        round_duration: round,
        grace: TRACE_GRACE,
        max_ttl: trace.max_ttl,
        port: trace.port,
        privileged: has_cap_net_raw(),
        ..TraceSettings::new(host)
    }
}

/// Whether this process may open raw sockets (`CAP_NET_RAW` in its effective set). Traces need
/// it (every protocol: trippy cannot trace over ping sockets); without it each trace is a failure
/// saying so.
pub fn has_cap_net_raw() -> bool {
    const CAP_NET_RAW: u32 = 13;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_RAW) != 0)
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut http = HttpProbe {
            scheme: "https".into(),
            port: None,
            path: "/healthz?full=1".into(),
            method: "GET".into(),
            headers: Vec::new(),
            body: None,
            expect_status: Vec::new(),
            body_contains: None,
            body_regex: None,
            header_matches: Vec::new(),
            max_total: None,
            min_cert_expiry_days: None,
            ca_file: None,
            server_name: None,
            max_redirects: 10,
            max_body_bytes: 1 << 20,
            follow_private_redirects: false,
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

    #[test]
    fn the_capability_check_reads_this_process() {
        // Whatever the answer, it must not panic, and root in CI has the capability.
        let raw = has_cap_net_raw();
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            assert!(raw, "CI runs as root, with CAP_NET_RAW");
        }
    }
}
