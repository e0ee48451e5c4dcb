//! [`Status`]: a cheap shared, read-only view of a running agent — its counters ([`Snapshot`]),
//! whether the scheduler still starts runs and the store writer is alive ([`Status::liveness`],
//! [`Status::readiness`]), and the latest record of each (probe, target), kept by the agent's
//! dispatcher (one per job, so bounded by the targets; a reconfiguration keeps only its jobs'), and the configuration running now. The agent makes it; the health and metrics listener
//! (`crate::web`) and `vantage run`'s systemd watchdog read it. It lives below both, so the
//! listener needs nothing of the agent but this.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::record::Record;
use crate::scheduler::{self, Counters, Job};
use crate::sinks::{OutputStats, OutputsWatch};

/// Counters of the pipeline's fan-out points (the scheduler keeps its own [`Counters`]).
#[derive(Debug, Default)]
pub(crate) struct Flow {
    /// Records handed to the store writer's queue.
    pub(crate) to_store: AtomicU64,
    /// Records the store has written.
    pub(crate) stored: AtomicU64,
    /// Stored records the rules engine took.
    pub(crate) to_rules: AtomicU64,
    /// Times the store writer waited for the rules engine (back-pressure).
    pub(crate) rules_waits: AtomicU64,
    /// Stored records the rules engine never saw: it was stalled longer than [`RULES_WAIT`].
    pub(crate) rules_dropped: AtomicU64,
}

/// What a running agent has done so far (totals since [`Agent::start`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub uptime: Duration,
    /// (probe, target) pairs being probed.
    pub jobs: usize,
    pub observations: u64,
    pub failures: u64,
    pub skipped_ticks: u64,
    pub deadline_exceeded: u64,
    /// Worst lateness of a run's start against its schedule in the last minute, in ms.
    pub max_lag_ms: f64,
    pub stored: u64,
    /// Records on their way to the store (queued or being written).
    pub store_backlog: u64,
    /// Stored records the rules engine took.
    pub evaluated: u64,
    /// Times the store writer waited for a busy rules engine.
    pub rules_waits: u64,
    /// Stored records the rules engine never saw (it was stalled).
    pub rules_dropped: u64,
    /// Records the outputs' hand-off dropped (each output also counts them).
    pub outputs_dropped: u64,
    pub outputs: Vec<OutputStats>,
}

/// A shared, read-only view of a running agent (for `/healthz`, `/metrics` and the watchdog).
/// Cheap to clone; reading it takes atomics and one short lock for the latest records.
#[derive(Debug, Clone)]
pub struct Status(pub(crate) Arc<StatusInner>);

#[derive(Debug)]
pub(crate) struct StatusInner {
    pub(crate) agent: String,
    pub(crate) site: String,
    pub(crate) data_dir: PathBuf,
    /// Rules and jobs configured now (a reload changes them).
    pub(crate) rules: AtomicUsize,
    pub(crate) jobs: AtomicUsize,
    pub(crate) started: Instant,
    pub(crate) counters: Arc<Counters>,
    pub(crate) flow: Arc<Flow>,
    /// The running outputs (a reload replaces them).
    pub(crate) outputs: Mutex<Option<OutputsWatch>>,
    /// No run started for this long means the scheduler is stuck; `None` without jobs.
    pub(crate) stale_after: Mutex<Option<Duration>>,
    pub(crate) writer_alive: Arc<AtomicBool>,
    pub(crate) stopping: AtomicBool,
    /// The configuration running now (a reload replaces it): what the web page's agent page shows.
    pub(crate) config: Mutex<Arc<crate::config::Config>>,
    /// The latest run of each probe and target, as the dispatcher saw it. By probe, then by
    /// target: the dispatcher finds a slot with borrowed names (no key allocated per record).
    pub(crate) latest: Mutex<HashMap<String, HashMap<String, Arc<Latest>>>>,
}

impl Status {
    /// Ok while the scheduler starts runs (one within [`Status::stale_after`]) and the store
    /// writer is alive; otherwise why not, in a sentence for `/healthz` and the logs.
    pub fn liveness(&self) -> Result<(), String> {
        let inner = &self.0;
        if !inner.writer_alive.load(Ordering::Relaxed) {
            return Err("the store writer has stopped: measurements are not stored".into());
        }
        if let Some(limit) = self.stale_after() {
            let idle = self.since_last_run();
            if idle > limit && !inner.stopping.load(Ordering::Relaxed) {
                return Err(format!(
                    "the scheduler has started no run for {:.1} s (limit {:.1} s, 3 intervals of the most frequent probe)",
                    idle.as_secs_f64(),
                    limit.as_secs_f64()
                ));
            }
        }
        Ok(())
    }

    /// Ok once the agent is live, not stopping and has stored its first round.
    pub fn readiness(&self) -> Result<(), String> {
        if self.0.stopping.load(Ordering::Relaxed) {
            return Err("the agent is stopping".into());
        }
        self.liveness()?;
        if self.0.flow.stored.load(Ordering::Relaxed) == 0 {
            return Err("no round stored yet".into());
        }
        Ok(())
    }

    /// How long ago the scheduler last started a run.
    pub fn since_last_run(&self) -> Duration {
        let last = self.0.counters.last_run_ms.load(Ordering::Relaxed);
        Duration::from_millis(scheduler::mono_ms().saturating_sub(last))
    }

    /// How long without a run the scheduler is taken for stuck (`None`: no jobs).
    pub fn stale_after(&self) -> Option<Duration> {
        *self.0.stale_after.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn agent(&self) -> &str {
        &self.0.agent
    }

    pub fn site(&self) -> &str {
        &self.0.site
    }

    /// Where the store, the spool and the incidents live.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.0.data_dir
    }

    /// The configuration running now: the one of the start, or of the last reload.
    pub fn config(&self) -> Arc<crate::config::Config> {
        Arc::clone(&self.0.config.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Rules configured.
    pub fn rules(&self) -> usize {
        self.0.rules.load(Ordering::Relaxed)
    }

    /// The agent's counters now.
    pub fn snapshot(&self) -> Snapshot {
        let inner = &self.0;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let stored = load(&inner.flow.stored);
        let outputs = inner
            .outputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Snapshot {
            uptime: inner.started.elapsed(),
            jobs: inner.jobs.load(Ordering::Relaxed),
            observations: load(&inner.counters.observations),
            failures: load(&inner.counters.failures),
            skipped_ticks: load(&inner.counters.skipped_ticks),
            deadline_exceeded: load(&inner.counters.deadline_exceeded),
            max_lag_ms: load(&inner.counters.max_lag_us) as f64 / 1000.0,
            stored,
            store_backlog: load(&inner.flow.to_store).saturating_sub(stored),
            evaluated: load(&inner.flow.to_rules),
            rules_waits: load(&inner.flow.rules_waits),
            rules_dropped: load(&inner.flow.rules_dropped),
            outputs_dropped: outputs.as_ref().map_or(0, OutputsWatch::handoff_dropped),
            outputs: outputs.as_ref().map_or_else(Vec::new, OutputsWatch::stats),
        }
    }

    /// After a reload: the new configuration and counts, the stall limit (the unchanged jobs' periods are read from
    /// the configuration, the new ones from `started`), and the latest records of `jobs` only,
    /// so a removed target disappears from `/metrics`.
    pub(crate) fn reconfigured(
        &self,
        config: &Arc<crate::config::Config>,
        jobs: &std::collections::BTreeSet<scheduler::JobKey>,
        started: &[Job],
    ) {
        let inner = &self.0;
        *inner.config.lock().unwrap_or_else(|e| e.into_inner()) = Arc::clone(config);
        inner.rules.store(config.rules.len(), Ordering::Relaxed);
        inner.jobs.store(jobs.len(), Ordering::Relaxed);
        let configured = config
            .probes
            .iter()
            .filter(|probe| !probe.targets.is_empty())
            .map(|probe| (probe.interval * 3).max(Duration::from_secs(2)))
            .min();
        let limit = [configured, stale_after(started)]
            .into_iter()
            .flatten()
            .max();
        *inner.stale_after.lock().unwrap_or_else(|e| e.into_inner()) = limit;
        let mut latest = inner.latest.lock().unwrap_or_else(|e| e.into_inner());
        for (probe, targets) in latest.iter_mut() {
            targets.retain(|target, _| jobs.contains(&(probe.clone(), target.clone())));
        }
        latest.retain(|_, targets| !targets.is_empty());
    }

    /// The outputs running now (a reload replaced them).
    pub(crate) fn watch_outputs(&self, outputs: Option<OutputsWatch>) {
        *self.0.outputs.lock().unwrap_or_else(|e| e.into_inner()) = outputs;
    }

    /// The latest run of each (probe, target), sorted by probe then target.
    pub fn latest(&self) -> Vec<Arc<Latest>> {
        let latest = self.0.latest.lock().unwrap_or_else(|e| e.into_inner());
        let mut runs: Vec<Arc<Latest>> =
            latest.values().flat_map(HashMap::values).cloned().collect();
        runs.sort_by(|a, b| (&a.probe, &a.target).cmp(&(&b.probe, &b.target)));
        runs
    }

    pub(crate) fn remember(&self, record: &Record) {
        let mut latest = self.0.latest.lock().unwrap_or_else(|e| e.into_inner());
        if !latest.contains_key(record.probe.as_str()) {
            latest.insert(record.probe.clone(), HashMap::new());
        }
        let Some(targets) = latest.get_mut(record.probe.as_str()) else {
            return;
        };
        let run = Arc::new(Latest::of(record));
        match targets.get_mut(record.target.as_str()) {
            Some(slot) => *slot = run,
            None => {
                targets.insert(record.target.clone(), run);
            }
        }
    }
}

/// What `/metrics` shows of a (probe, target)'s latest run: its figures, not its record. Issue 15:
/// a ping record with its list of RTTs and six tag strings is ~1 KB, and keeping each target's
/// latest one (the dispatcher's shared copy) held 7.4 MB at 10,000 targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    pub probe: String,
    pub target: String,
    pub target_site: String,
    pub success: bool,
    pub duration: Duration,
    /// When the run started (Unix ns): the point's time in the stores.
    pub timestamp_ns: i64,
    pub ping: Option<LatestPing>,
}

/// A ping round's figures in [`Latest`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatestPing {
    pub loss_pct: f64,
    pub sent: u32,
    pub received: u32,
    /// RTT quantiles in ms: min, p10, p25, median, p75, p90, max; NaN where there is none.
    pub rtt_ms: [f64; 7],
}

impl Latest {
    pub fn of(record: &Record) -> Latest {
        let observation = &record.observation;
        let ping = match &observation.measurement {
            probes::Measurement::Ping(stats) => Some(LatestPing {
                loss_pct: stats.loss_pct,
                sent: stats.sent,
                received: stats.received,
                rtt_ms: [
                    stats.rtt_min_ms,
                    stats.rtt_p10_ms,
                    stats.rtt_p25_ms,
                    stats.rtt_median_ms,
                    stats.rtt_p75_ms,
                    stats.rtt_p90_ms,
                    stats.rtt_max_ms,
                ]
                .map(|ms| ms.unwrap_or(f64::NAN)),
            }),
            _ => None,
        };
        Latest {
            probe: record.probe.clone(),
            target: record.target.clone(),
            target_site: record.target_site.clone(),
            success: observation.is_success(),
            duration: observation.duration,
            timestamp_ns: observation.timestamp_ns(),
            ping,
        }
    }
}

/// Clears `writer_alive` when the store writer thread lets go of its tap: it returned or panicked.
pub(crate) struct WriterAlive(pub(crate) Arc<AtomicBool>);

impl Drop for WriterAlive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// How long without a started run means a stuck scheduler: three periods of the most frequent
/// job (its interval, or its deadline if a run can last longer), and never under 2 s.
pub(crate) fn stale_after(jobs: &[Job]) -> Option<Duration> {
    jobs.iter()
        .map(|job| job.interval.max(job.probe.deadline()))
        .min()
        .map(|period| (period * 3).max(Duration::from_secs(2)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A status for agent `a` at site `s` with nothing measured yet (the unit tests').
    pub(crate) fn status() -> Status {
        status_in(std::path::Path::new("."))
    }

    /// As [`status`], with its data directory at `data_dir`.
    pub(crate) fn status_in(data_dir: &std::path::Path) -> Status {
        let config = crate::config::Config::parse(
            "[agent]\nname = \"a\"\nsite = \"s\"\n\
             [[target]]\nname = \"t1\"\nhost = \"198.18.0.1\"\n",
            std::path::Path::new("vantage.toml"),
        )
        .expect("valid config");
        Status(Arc::new(StatusInner {
            agent: "a".into(),
            site: "s".into(),
            data_dir: data_dir.to_path_buf(),
            rules: AtomicUsize::new(0),
            jobs: AtomicUsize::new(1),
            started: Instant::now(),
            counters: Arc::default(),
            flow: Arc::default(),
            outputs: Mutex::new(None),
            stale_after: Mutex::new(None),
            writer_alive: Arc::new(AtomicBool::new(true)),
            stopping: AtomicBool::new(false),
            config: Mutex::new(Arc::new(config)),
            latest: Mutex::new(HashMap::new()),
        }))
    }

    /// Issue 15: the status keeps each target's latest figures, not its record (which, with its
    /// RTTs and tags, is ~1 KB: 10,000 of them held 7.4 MB), and only the latest.
    #[test]
    fn the_latest_run_is_kept_as_its_figures_and_only_the_latest() {
        let status = status();
        let older = Arc::new(Record::test_round("t1"));
        status.remember(&older);
        let mut newer = Record::test_round("t1");
        newer.observation.duration = Duration::from_millis(1234);
        status.remember(&newer);
        status.remember(&Record::test_round("t2"));
        let latest = status.latest();
        assert_eq!(latest.len(), 2);
        assert_eq!(*latest[0], Latest::of(&newer));
        assert_eq!(latest[0].duration, Duration::from_millis(1234));
        assert_eq!(
            Arc::strong_count(&older),
            1,
            "the record itself is not kept"
        );
        let kept = size_of::<Latest>() + latest[0].probe.len() + latest[0].target.len();
        assert!(kept < 300, "{kept} bytes kept per target");
    }
}
