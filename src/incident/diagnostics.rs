//! [`TraceDiagnostics`]: the one-shot diagnostics an incident gets when it opens — an ICMP path
//! trace to each affected target (a few of them, at most), rendered like `mtr --report`, with the
//! verdict ([`probes::verdict_text`]: where loss starts, where latency steps up).
//!
//! Bounded and off the probing path: the manager runs it on the rules thread (never on a probe's),
//! the traces run in parallel on threads of their own, each for at most `ROUNDS × ROUND + grace`,
//! and the manager waits at most [`TraceDiagnostics::budget`] for them; a trace that is not done by
//! then (its target's name still resolving, say) is left to finish on its own and not attached.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use probes::{Measurement, Observation, Outcome, TraceProtocol, TraceSettings};

use super::{Diagnosis, Diagnostics, TraceEvidence};
use crate::config::{Config, FamilyPreference, TRACE_GRACE, Target};
use crate::probe::has_cap_net_raw;

/// Rounds per trace: enough that the verdict locates a lossy link — 30% each way on the link into
/// a router makes its hop and the destination lose 51%, and with 10 rounds one trace in 17 blamed
/// the destination instead (sampled hop loss under half the destination's); with 20, one in 60
/// (see the test) — and few enough to be quick (20 × 400 ms).
pub const ROUNDS: usize = 20;
/// How long each round waits for its replies.
pub const ROUND: Duration = Duration::from_millis(400);
/// At most this many affected targets are traced (the first ones, in the order the rule lists
/// them); an agent-wide incident over a thousand targets gets a sample, not a thousand traces.
pub const MAX_TARGETS: usize = 4;
/// On top of the traces' own bound: resolving names, starting threads.
const SLACK: Duration = Duration::from_secs(1);

/// Path traces at breach (see the module docs).
#[derive(Debug, Clone)]
pub struct TraceDiagnostics {
    agent: String,
    targets: HashMap<String, Target>,
    privileged: bool,
}

impl TraceDiagnostics {
    pub fn new(config: &Config) -> TraceDiagnostics {
        TraceDiagnostics {
            agent: config.agent.name.clone(),
            targets: config
                .targets
                .iter()
                .map(|t| (t.name.clone(), t.clone()))
                .collect(),
            privileged: has_cap_net_raw(),
        }
    }

    /// The longest [`Diagnostics::at_breach`] waits for its traces.
    pub fn budget() -> Duration {
        ROUND * ROUNDS as u32 + TRACE_GRACE + SLACK
    }

    fn settings(&self, host: &str) -> TraceSettings {
        TraceSettings {
            protocol: TraceProtocol::Icmp,
            rounds: ROUNDS,
            round_duration: ROUND,
            grace: TRACE_GRACE,
            privileged: self.privileged,
            ..TraceSettings::new(host)
        }
    }
}

/// What one trace thread sends back.
type Traced = (usize, Result<(IpAddr, Observation), String>);

impl Diagnostics for TraceDiagnostics {
    fn at_breach(&self, key: &str, affected: &[(String, String)]) -> Diagnosis {
        let mut names: Vec<&str> = Vec::new();
        for (_, target) in affected {
            if !names.contains(&target.as_str()) && self.targets.contains_key(target) {
                names.push(target);
            }
        }
        let total = names.len();
        names.truncate(MAX_TARGETS);
        if names.is_empty() {
            return Diagnosis::default();
        }
        let started = Instant::now();
        let deadline = started + Self::budget();
        let (tx, rx) = mpsc::channel::<Traced>();
        for (index, name) in names.iter().enumerate() {
            let target = self.targets[*name].clone();
            let settings = self.settings(&target.host);
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("trace-{name}"))
                .spawn(move || {
                    let result = resolve_blocking(&target.host, target.family)
                        .map(|ip| (ip, probes::trace::run_blocking(&settings, ip)));
                    let _ = tx.send((index, result));
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot start a trace thread");
            }
        }
        drop(tx);
        let mut results: Vec<Option<Result<(IpAddr, Observation), String>>> =
            (0..names.len()).map(|_| None).collect();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok((index, result)) => results[index] = Some(result),
                Err(_) => break, // every thread reported, or the budget is spent
            }
        }
        tracing::info!(key, traced = names.len(), elapsed = ?started.elapsed(), "path traces at breach");

        let mut reports = Vec::new();
        let mut verdicts = Vec::new();
        let mut notes = Vec::new();
        for (name, result) in names.iter().zip(results) {
            match result {
                None => notes.push(format!(
                    "Path trace to {name}: not finished within {:?}; not attached.",
                    Self::budget()
                )),
                Some(Err(why)) => notes.push(format!("Path trace to {name}: {why}.")),
                Some(Ok((ip, observation))) => {
                    let Measurement::Trace(report) = &observation.measurement else {
                        continue;
                    };
                    if report.hops.is_empty() {
                        let why = match &observation.outcome {
                            Outcome::Failure { message, .. } => message.as_str(),
                            Outcome::Success => "no hops",
                        };
                        notes.push(format!("Path trace to {name} ({ip}) failed: {why}."));
                        continue;
                    }
                    let verdict = probes::verdict_text(report);
                    reports.push(format!(
                        "$ vantage trace --count {ROUNDS} {}\nStart: {}\n{}",
                        self.targets[*name].host,
                        humantime::format_rfc3339_seconds(observation.started_at),
                        probes::render_report(report, &self.agent)
                    ));
                    verdicts.push((name.to_string(), verdict));
                }
            }
        }
        if total > names.len() {
            notes.push(format!(
                "Path traces: {} of the {total} affected targets traced.",
                names.len()
            ));
        }
        let trace = (!verdicts.is_empty()).then(|| TraceEvidence {
            report_text: reports.join("\n"),
            verdict_text: if verdicts.len() == 1 {
                verdicts.remove(0).1
            } else {
                verdicts
                    .iter()
                    .map(|(name, verdict)| format!("{name}: {verdict}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        });
        Diagnosis { trace, notes }
    }
}

/// Resolve on this (trace) thread; a literal needs no lookup.
fn resolve_blocking(host: &str, family: FamilyPreference) -> Result<IpAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addresses = (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?;
    addresses
        .map(|a| a.ip())
        .find(|ip| match family {
            FamilyPreference::Any => true,
            FamilyPreference::V4 => ip.is_ipv4(),
            FamilyPreference::V6 => ip.is_ipv6(),
        })
        .ok_or_else(|| format!("{host:?} has no {family:?} address"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config() -> Config {
        Config::parse(
            "[agent]\nname = \"agent-1\"\nsite = \"scl3\"\n\
             [[target]]\nname = \"lo-a\"\nhost = \"127.0.0.1\"\n\
             [[target]]\nname = \"lo-b\"\nhost = \"127.0.0.2\"\n",
            Path::new("vantage.toml"),
        )
        .expect("valid config")
    }

    /// Real ICMP traces over loopback (root, or ping sockets): each affected target once, in the
    /// order given, mtr-style, with a verdict per target; all within the budget.
    #[test]
    fn a_breach_traces_each_affected_target_within_the_budget() {
        let diagnostics = TraceDiagnostics::new(&config());
        let started = Instant::now();
        let affected = [
            ("ping".to_string(), "lo-a".to_string()),
            ("ping-slow".to_string(), "lo-a".to_string()),
            ("ping".to_string(), "lo-b".to_string()),
            ("ping".to_string(), "gone-from-config".to_string()),
        ];
        let diagnosis = diagnostics.at_breach("loss/target/lo-a", &affected);
        let took = started.elapsed();
        assert!(
            took <= TraceDiagnostics::budget() + Duration::from_millis(200),
            "{took:?}"
        );
        assert!(diagnosis.notes.is_empty(), "{:?}", diagnosis.notes);
        let trace = diagnosis.trace.expect("a trace");
        assert_eq!(
            trace.verdict_text,
            "lo-a: no loss to the destination; lo-b: no loss to the destination"
        );
        let text = &trace.report_text;
        assert!(
            text.contains(&format!(
                "$ vantage trace --count {ROUNDS} 127.0.0.1\nStart: "
            )),
            "{text}"
        );
        assert!(text.contains("HOST: agent-1 "), "{text}");
        assert!(
            text.contains("Loss%   Snt   Last   Avg  Best  Wrst StDev"),
            "{text}"
        );
        assert!(text.contains("  1.|-- 127.0.0.1 "), "{text}");
        assert!(text.contains("  1.|-- 127.0.0.2 "), "{text}");
        assert_eq!(
            text.matches("HOST:").count(),
            2,
            "one table per target: {text}"
        );
    }

    /// Exact, over every outcome of a trace through a link losing 30% each way: the router's hop
    /// (ttl 2) and the destination (ttl 3) both lose 51% per round, and the verdict must name ttl 2
    /// in at least 98% of traces (94% with 10 rounds).
    #[test]
    fn a_trace_has_rounds_enough_to_locate_a_lossy_link() {
        let loss = 1.0 - 0.7f64 * 0.7;
        let n = ROUNDS as u32;
        let pmf = |lost: u32| {
            let ways: f64 = (0..lost)
                .map(|i| f64::from(n - i) / f64::from(i + 1))
                .product();
            ways * loss.powi(lost as i32) * (1.0 - loss).powi((n - lost) as i32)
        };
        let hop = |ttl: u8, received: u32| probes::Hop {
            ttl,
            addresses: (received > 0)
                .then(|| IpAddr::from([198, 18, ttl, 2]))
                .into_iter()
                .collect(),
            sent: n,
            received,
            loss_pct: 100.0 * f64::from(n - received) / f64::from(n),
            rtt_last_ms: None,
            rtt_avg_ms: None,
            rtt_best_ms: None,
            rtt_worst_ms: None,
            rtt_stddev_ms: None,
        };
        let mut located = 0.0;
        for router_lost in 0..=n {
            for target_lost in 0..=n {
                let report = probes::TraceReport::new(
                    IpAddr::from([198, 18, 3, 2]),
                    vec![hop(1, n), hop(2, n - router_lost), hop(3, n - target_lost)],
                );
                if matches!(
                    probes::locate_loss(&report),
                    probes::LossVerdict::LossFrom { ttl: 2, .. }
                ) {
                    located += pmf(router_lost) * pmf(target_lost);
                }
            }
        }
        assert!(
            located >= 0.98,
            "the verdict names the lossy link in {located:.4} of traces"
        );
    }

    #[test]
    fn nothing_to_trace_is_no_diagnosis() {
        let diagnostics = TraceDiagnostics::new(&config());
        let diagnosis = diagnostics.at_breach("k", &[("ping".into(), "unknown".into())]);
        assert_eq!(diagnosis, Diagnosis::default());
    }
}
