//! [`TraceDiagnostics`]: the one-shot diagnostics an incident gets when it opens — an ICMP path
//! trace to each affected target (a few of them, at most), rendered like `mtr --report`, with the
//! verdict ([`probes::verdict_text`]: where loss starts, where latency steps up).
//!
//! Off the rules thread and bounded: [`Diagnostics::start`] returns at once, and the traces run
//! on at most [`MAX_CONCURRENT_TRACES`] threads of their own (the others wait their turn in a
//! queue, not on a thread each: a mass outage asks for thousands), each for at most
//! `ROUNDS × ROUND + grace`. One whose turn comes after every incident that asked for it stopped
//! waiting ([`EVIDENCE_WAIT`]) is not run. A trace to a target already being traced, or
//! traced in the last [`REUSE`], serves every incident that asks (a per-target and a group
//! incident opening for one fault share it). The manager polls; an incident waits at most
//! [`EVIDENCE_WAIT`] for its traces, and one not done by then is not attached. When the agent
//! stops, traces waiting for their turn are dropped and running ones are not waited for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use probes::net::has_cap_net_raw;
use probes::{Measurement, Observation, Outcome, TraceProtocol, TraceSettings};

use super::manager::PendingDiagnosis;
use super::{Diagnosis, Diagnostics, TraceEvidence};
use crate::config::{Config, FamilyPreference, TRACE_GRACE, Target};
use crate::probe::ip_preference;

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
/// Traces running at once, over every incident: a fault behind which 16 targets breach together
/// gets its 16 traces in one wave (20 rounds of at most 30 probes each: about 1,200 packets a
/// second at most); more wait for a free slot.
pub const MAX_CONCURRENT_TRACES: usize = 16;
/// A trace that finished this recently is the trace at breach of another incident too.
pub const REUSE: Duration = Duration::from_secs(30);
/// The longest an incident's draft waits for its traces (a few waves of traces, when many
/// targets breach at once); what is not done by then is not attached.
pub const EVIDENCE_WAIT: Duration = Duration::from_secs(30);

/// Path traces at breach (see the module docs).
#[derive(Debug, Clone)]
pub struct TraceDiagnostics {
    agent: String,
    /// Shared: every incident's pending traces hold a clone.
    targets: Arc<HashMap<String, Target>>,
    privileged: bool,
    tracer: Arc<Tracer>,
}

/// The traces of every incident: one per target at a time, a bounded number at once.
#[derive(Debug, Default)]
struct Tracer {
    traces: Mutex<HashMap<String, Trace>>,
    queue: Mutex<Queue>,
    stopping: AtomicBool,
}

/// Traces asked for and not started, oldest first, and the threads running them.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// At most [`MAX_CONCURRENT_TRACES`].
    workers: usize,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("jobs", &self.jobs.len())
            .field("workers", &self.workers)
            .finish()
    }
}

/// One target's trace, to run once a worker is free.
struct Job {
    name: String,
    trace: Box<dyn FnOnce() -> Traced + Send>,
}

/// One target's latest trace.
#[derive(Debug)]
struct Trace {
    /// None while it waits or runs.
    result: Option<Arc<Traced>>,
    finished: Option<Instant>,
    /// When an incident last asked for it.
    asked: Instant,
}

/// What one trace found: the address traced and the observation, or why it could not run.
type Traced = Result<(IpAddr, Observation), String>;

impl TraceDiagnostics {
    pub fn new(config: &Config) -> TraceDiagnostics {
        TraceDiagnostics {
            agent: config.agent.name.clone(),
            targets: Arc::new(
                config
                    .targets
                    .iter()
                    .map(|t| (t.name.clone(), t.clone()))
                    .collect(),
            ),
            privileged: has_cap_net_raw(),
            tracer: Arc::default(),
        }
    }

    /// The longest one trace takes once it runs.
    pub fn budget() -> Duration {
        ROUND * ROUNDS as u32 + TRACE_GRACE
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

    /// Start a trace to `name`, unless one is running or waiting, or finished within [`REUSE`].
    fn request(&self, name: &str) {
        let mut traces = self
            .tracer
            .traces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(trace) = traces.get_mut(name) {
            if trace.finished.is_none() {
                // Waiting or running: one more incident waits for it, from now.
                trace.asked = Instant::now();
                return;
            }
            if trace.finished.is_some_and(|at| at.elapsed() < REUSE) {
                return;
            }
        }
        traces.insert(
            name.to_string(),
            Trace {
                result: None,
                finished: None,
                asked: Instant::now(),
            },
        );
        drop(traces);
        let target = self.targets[name].clone();
        let settings = self.settings(&target.host);
        Tracer::submit(&self.tracer, name.to_string(), move || {
            resolve_blocking(&target.host, target.family)
                .map(|ip| (ip, probes::trace::run_blocking(&settings, ip)))
        });
    }
}

impl Tracer {
    /// Queue `trace` for `name` (its entry in `traces` already made); a worker runs it once one is
    /// free, or not at all if the agent is stopping.
    fn submit(tracer: &Arc<Tracer>, name: String, trace: impl FnOnce() -> Traced + Send + 'static) {
        if tracer.stopping.load(Ordering::Relaxed) {
            tracer.finish(&name, Err("not run: the agent is stopping".into()));
            return;
        }
        let mut queue = tracer.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.jobs.push_back(Job {
            name,
            trace: Box::new(trace),
        });
        if queue.workers >= MAX_CONCURRENT_TRACES {
            return;
        }
        queue.workers += 1;
        drop(queue);
        let worker = Arc::clone(tracer);
        let spawned = std::thread::Builder::new()
            .name("trace".into())
            .spawn(move || worker.work());
        if let Err(error) = spawned {
            let mut queue = tracer.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.workers -= 1;
            if queue.workers == 0 {
                // No worker to run them: each says why.
                let jobs = std::mem::take(&mut queue.jobs);
                drop(queue);
                for job in jobs {
                    tracer.finish(
                        &job.name,
                        Err(format!("cannot start a trace thread: {error}")),
                    );
                }
            }
        }
    }

    /// A worker: run queued traces until none is left (or the agent stops: then the rest are
    /// not run).
    fn work(&self) {
        loop {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let stopping = self.stopping.load(Ordering::Relaxed);
            let job = match queue.jobs.pop_front() {
                Some(job) if !stopping => job,
                popped => {
                    queue.workers -= 1;
                    let left: Vec<Job> = popped.into_iter().chain(queue.jobs.drain(..)).collect();
                    drop(queue);
                    for job in left {
                        self.finish(&job.name, Err("not run: the agent is stopping".into()));
                    }
                    return;
                }
            };
            drop(queue);
            if self.forget_if_unwanted(&job.name) {
                continue;
            }
            let result = (job.trace)();
            self.finish(&job.name, result);
        }
    }

    /// Whether every incident that asked for `name`'s trace stopped waiting for it (its turn came
    /// too late: many opened at once); then it is forgotten, so a later incident asks anew.
    fn forget_if_unwanted(&self, name: &str) -> bool {
        let mut traces = self.traces.lock().unwrap_or_else(PoisonError::into_inner);
        let unwanted = traces
            .get(name)
            .is_none_or(|t| t.asked.elapsed() >= EVIDENCE_WAIT);
        if unwanted {
            traces.remove(name);
            tracing::debug!(
                target_name = name,
                "path trace not run: no incident waits for it any more"
            );
        }
        unwanted
    }

    fn finish(&self, name: &str, result: Traced) {
        let mut traces = self.traces.lock().unwrap_or_else(PoisonError::into_inner);
        traces.insert(
            name.to_string(),
            Trace {
                result: Some(Arc::new(result)),
                finished: Some(Instant::now()),
                asked: Instant::now(),
            },
        );
    }

    fn result(&self, name: &str) -> Option<Arc<Traced>> {
        let traces = self.traces.lock().unwrap_or_else(PoisonError::into_inner);
        traces.get(name).and_then(|t| t.result.clone())
    }
}

impl Diagnostics for TraceDiagnostics {
    fn start(&self, key: &str, affected: &[(String, String)]) -> Box<dyn PendingDiagnosis> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut names: Vec<String> = Vec::new();
        for (_, target) in affected {
            if self.targets.contains_key(target) && seen.insert(target) && names.len() < MAX_TARGETS
            {
                names.push(target.clone());
            }
        }
        let total = seen.len();
        for name in &names {
            self.request(name);
        }
        Box::new(PendingTraces {
            diagnostics: self.clone(),
            key: key.to_string(),
            names,
            total,
            started: Instant::now(),
        })
    }

    fn stop(&self) {
        self.tracer.stopping.store(true, Ordering::Relaxed);
    }
}

/// The traces one incident waits for.
#[derive(Debug)]
struct PendingTraces {
    diagnostics: TraceDiagnostics,
    key: String,
    names: Vec<String>,
    /// Affected targets known to the config (only the first [`MAX_TARGETS`] are traced).
    total: usize,
    started: Instant,
}

impl PendingDiagnosis for PendingTraces {
    fn poll(&mut self, force: bool) -> Option<Diagnosis> {
        let tracer = &self.diagnostics.tracer;
        let results: Vec<Option<Arc<Traced>>> =
            self.names.iter().map(|name| tracer.result(name)).collect();
        let done = results.iter().all(Option::is_some);
        if !done && !force && self.started.elapsed() < EVIDENCE_WAIT {
            return None;
        }
        tracing::info!(key = %self.key, traced = self.names.len(), elapsed = ?self.started.elapsed(), "path traces at breach");
        Some(self.diagnostics.diagnosis(&self.names, results, self.total))
    }
}

impl TraceDiagnostics {
    fn diagnosis(
        &self,
        names: &[String],
        results: Vec<Option<Arc<Traced>>>,
        total: usize,
    ) -> Diagnosis {
        let mut reports = Vec::new();
        let mut verdicts = Vec::new();
        let mut notes = Vec::new();
        for (name, result) in names.iter().zip(results) {
            match result.as_deref() {
                None => notes.push(format!(
                    "Path trace to {name}: not finished when the draft was written; not attached."
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
                        self.targets[name].host,
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

/// Resolve on this (trace) thread, with the family filter the probes use; a literal needs no
/// lookup.
fn resolve_blocking(host: &str, family: FamilyPreference) -> Result<IpAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addresses = (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?;
    ip_preference(family)
        .apply(addresses.collect())
        .first()
        .map(|a| a.ip())
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
    /// Poll like the manager does, until the diagnosis is there.
    fn wait(diagnostics: &TraceDiagnostics, key: &str, affected: &[(String, String)]) -> Diagnosis {
        let mut pending = diagnostics.start(key, affected);
        loop {
            if let Some(diagnosis) = pending.poll(false) {
                return diagnosis;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

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
        let diagnosis = wait(&diagnostics, "loss/target/lo-a", &affected);
        let took = started.elapsed();
        assert!(
            took <= TraceDiagnostics::budget() + Duration::from_millis(500),
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

    /// However many incidents open at once, at most [`MAX_CONCURRENT_TRACES`] traces run, on as
    /// many threads; the others wait their turn in the queue, and all of them run.
    #[test]
    fn concurrent_traces_are_bounded() {
        let tracer = Arc::new(Tracer::default());
        let (now, most) = (Arc::new(Mutex::new(0usize)), Arc::new(Mutex::new(0usize)));
        let names: Vec<String> = (0..3 * MAX_CONCURRENT_TRACES)
            .map(|i| format!("t{i}"))
            .collect();
        for name in &names {
            asked(&tracer, name, Instant::now());
            let (now, most) = (Arc::clone(&now), Arc::clone(&most));
            Tracer::submit(&tracer, name.clone(), move || {
                let running = {
                    let mut now = now.lock().expect("lock");
                    *now += 1;
                    *now
                };
                let mut most = most.lock().expect("lock");
                *most = (*most).max(running);
                drop(most);
                std::thread::sleep(Duration::from_millis(50));
                *now.lock().expect("lock") -= 1;
                Err("traced".into())
            });
            let workers = tracer.queue.lock().expect("lock").workers;
            assert!(workers <= MAX_CONCURRENT_TRACES, "{workers} trace threads");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while names.iter().any(|n| tracer.result(n).is_none()) {
            assert!(
                Instant::now() < deadline,
                "the queued traces did not all run"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(*most.lock().expect("lock"), MAX_CONCURRENT_TRACES);
        for name in &names {
            let result = tracer.result(name).expect("finished");
            assert_eq!(
                result.as_ref().as_ref().err().map(String::as_str),
                Some("traced")
            );
        }
    }

    /// A mass outage asks for thousands of traces; at two a second, most came up long after
    /// their incident was drafted without them, and each waited on a thread of its own (10,000
    /// threads, 200 MB). A trace whose turn comes after every incident that asked stopped
    /// waiting is not run, and is forgotten so that a later incident asks anew.
    #[test]
    fn a_trace_no_incident_waits_for_any_more_is_not_run() {
        let tracer = Arc::new(Tracer::default());
        let long_ago = Instant::now()
            .checked_sub(EVIDENCE_WAIT + Duration::from_secs(1))
            .expect("the clock started before that");
        asked(&tracer, "stale", long_ago);
        asked(&tracer, "fresh", Instant::now());
        let ran = Arc::new(Mutex::new(Vec::new()));
        for name in ["stale", "fresh"] {
            let ran = Arc::clone(&ran);
            Tracer::submit(&tracer, name.into(), move || {
                ran.lock().expect("lock").push(name);
                Err("traced".into())
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while tracer.queue.lock().expect("lock").workers > 0 {
            assert!(Instant::now() < deadline, "the trace worker did not finish");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(*ran.lock().expect("lock"), ["fresh"]);
        let traces = tracer.traces.lock().expect("lock");
        assert!(!traces.contains_key("stale"), "{traces:?}");
        assert!(traces["fresh"].result.is_some());
    }

    /// When the agent stops, every trace still queued ends "not run", including the one a
    /// worker takes just then (it was dropped without a result).
    #[test]
    fn a_stop_ends_every_queued_trace_with_why() {
        let tracer = Arc::new(Tracer::default());
        let release = Arc::new(AtomicBool::new(false));
        let mut names = Vec::new();
        for i in 0..MAX_CONCURRENT_TRACES + 2 {
            let name = format!("t{i}");
            asked(&tracer, &name, Instant::now());
            let release = Arc::clone(&release);
            Tracer::submit(&tracer, name.clone(), move || {
                while !release.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err("traced".into())
            });
            names.push(name);
        }
        // Every worker busy, two traces queued; then the agent stops and the workers come free.
        tracer.stopping.store(true, Ordering::Relaxed);
        release.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tracer.queue.lock().expect("lock").workers > 0 {
            assert!(
                Instant::now() < deadline,
                "the trace workers did not finish"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        for name in &names[MAX_CONCURRENT_TRACES..] {
            let result = tracer.result(name);
            assert_eq!(
                result
                    .as_deref()
                    .and_then(|r| r.as_ref().err())
                    .map(String::as_str),
                Some("not run: the agent is stopping"),
                "{name}"
            );
        }
    }

    /// An incident asked for `name`'s trace at `at` (what [`TraceDiagnostics::request`] notes).
    fn asked(tracer: &Tracer, name: &str, at: Instant) {
        tracer.traces.lock().expect("lock").insert(
            name.into(),
            Trace {
                result: None,
                finished: None,
                asked: at,
            },
        );
    }

    /// Incidents opening together each get their traces at once (not one after the other), and
    /// a target two incidents share is traced once; a stopped tracer starts no more traces.
    #[test]
    fn incidents_opening_together_share_traces_and_run_them_at_once() {
        let diagnostics = TraceDiagnostics::new(&config());
        let started = Instant::now();
        let mut pending = vec![
            diagnostics.start("loss/target/lo-a", &[("ping".into(), "lo-a".into())]),
            diagnostics.start("loss/target/lo-b", &[("ping".into(), "lo-b".into())]),
            diagnostics.start(
                "loss/group/x",
                &[
                    ("ping".into(), "lo-a".into()),
                    ("ping".into(), "lo-b".into()),
                ],
            ),
        ];
        let mut done = Vec::new();
        while !pending.is_empty() {
            pending.retain_mut(|p| match p.poll(false) {
                Some(diagnosis) => {
                    done.push(diagnosis);
                    false
                }
                None => true,
            });
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = started.elapsed();
        assert!(
            took <= TraceDiagnostics::budget() + Duration::from_secs(1),
            "three incidents' traces took {took:?}"
        );
        assert!(done.iter().all(|d| d.trace.is_some()), "{done:#?}");
        assert_eq!(diagnostics.tracer.traces.lock().expect("lock").len(), 2);

        diagnostics.stop();
        Tracer::submit(&diagnostics.tracer, "lo-c".into(), || {
            unreachable!("no trace starts after stop")
        });
        let result = diagnostics.tracer.result("lo-c").expect("finished at once");
        assert_eq!(
            result.as_ref().as_ref().err().map(String::as_str),
            Some("not run: the agent is stopping")
        );
    }

    #[test]
    fn nothing_to_trace_is_no_diagnosis() {
        let diagnostics = TraceDiagnostics::new(&config());
        let diagnosis = wait(&diagnostics, "k", &[("ping".into(), "unknown".into())]);
        assert_eq!(diagnosis, Diagnosis::default());
    }
}
