//! One scheduler for every probe kind (after cloudprober's `sched.go`): a loop per (probe, target),
//! starts staggered evenly across the interval, a little jitter per tick, missed ticks skipped —
//! never a burst to catch up — and a deadline on every run. On stop, every run in flight returns at
//! once through its stop token (an ICMP round stops sending, a trace stops waiting for trippy) and,
//! cut short, is not stored: every stored round has its full count of echoes, and no check is
//! recorded as failed because the agent was stopping.
//!
//! Jobs can be added and stopped while it runs ([`Command`], the agent's reload): a stopped job's
//! loop ends like at a stop (its own cancellation token, a child of the agent's), the others never
//! notice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use probes::{CancellationToken, FailureKind};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Target;
use crate::probe::Probe;
use crate::record::Record;

/// One probe against one target, every `interval`.
#[derive(Debug, Clone)]
pub struct Job {
    pub probe_name: String,
    pub probe: Arc<Probe>,
    pub target: Arc<Target>,
    pub interval: Duration,
}

/// Who is measuring: stamped on every record.
#[derive(Debug, Clone)]
pub struct Identity {
    pub agent: String,
    pub site: String,
}

/// Running totals, read by the agent's periodic log line and self-metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub observations: AtomicU64,
    pub failures: AtomicU64,
    pub skipped_ticks: AtomicU64,
    pub deadline_exceeded: AtomicU64,
    /// Worst lateness of a run's start against its schedule since last read, in microseconds.
    pub max_lag_us: AtomicU64,
    /// Runs cut short by the stop (ICMP rounds short of their count, checks and traces
    /// interrupted), and so not stored.
    pub cut_short: AtomicU64,
}

/// A job's identity: (probe name, target name).
pub type JobKey = (String, String);

impl Job {
    pub fn key(&self) -> JobKey {
        (self.probe_name.clone(), self.target.name.clone())
    }
}

/// A change to the running jobs (reload). A changed job is a `Stop` of its key then a `Start`.
#[derive(Debug)]
pub enum Command {
    /// Start these jobs, their first runs spread over one interval.
    Start(Vec<Job>),
    /// Stop these jobs' loops (a run in flight is cut short and not stored, as at a stop).
    Stop(Vec<JobKey>),
}

/// Start every job, then apply `commands` as they come; returns when `stop` fires and every loop
/// has handed over its last observation.
pub async fn run(
    jobs: Vec<Job>,
    identity: Identity,
    out: mpsc::Sender<Record>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    mut commands: mpsc::Receiver<Command>,
) {
    let identity = Arc::new(identity);
    let mut loops = JoinSet::new();
    let mut running: HashMap<JobKey, CancellationToken> = HashMap::new();
    let start = |jobs: Vec<Job>,
                 loops: &mut JoinSet<()>,
                 running: &mut HashMap<JobKey, CancellationToken>| {
        let total = jobs.len().max(1) as u32;
        for (index, job) in jobs.into_iter().enumerate() {
            // Spread first runs evenly over one interval so 10,000 targets never start in one burst.
            let offset = job.interval / total * index as u32;
            let token = stop.child_token();
            if let Some(previous) = running.insert(job.key(), token.clone()) {
                previous.cancel();
            }
            loops.spawn(job_loop(
                job,
                offset,
                Arc::clone(&identity),
                out.clone(),
                Arc::clone(&counters),
                token,
            ));
        }
    };
    start(jobs, &mut loops, &mut running);
    let mut commands_open = true;
    loop {
        tokio::select! {
            command = commands.recv(), if commands_open && !stop.is_cancelled() => match command {
                Some(Command::Start(jobs)) => start(jobs, &mut loops, &mut running),
                Some(Command::Stop(keys)) => {
                    for key in keys {
                        if let Some(token) = running.remove(&key) {
                            token.cancel();
                        }
                    }
                }
                None => commands_open = false,
            },
            Some(result) = loops.join_next() => {
                if let Err(error) = result {
                    tracing::error!(%error, "a probe loop ended abnormally");
                }
            }
            // Stopping, and every loop has handed over its last observation.
            () = stop.cancelled(), if loops.is_empty() => break,
            else => break,
        }
    }
    drop(out);
    let cut_short = counters.cut_short.load(Ordering::Relaxed);
    if cut_short > 0 {
        tracing::info!(
            rounds = cut_short,
            "stopping: runs in flight were cut short and are not stored"
        );
    }
}

/// The next due time after `due` that is not already in the past: missed ticks are skipped.
/// Returns the new due time and how many ticks were skipped.
pub fn next_due(due: Instant, interval: Duration, now: Instant) -> (Instant, u64) {
    let next = due + interval;
    if next >= now {
        return (next, 0);
    }
    let behind = now.duration_since(next).as_nanos();
    let skipped = (behind / interval.as_nanos().max(1)) as u64 + 1;
    (next + interval * skipped as u32, skipped)
}

/// Small random delay per tick (at most 2% of the interval, capped at 500 ms) so agents started
/// together do not probe in lockstep.
fn jitter(interval: Duration) -> Duration {
    let max = (interval / 50).min(Duration::from_millis(500));
    max.mul_f64(rand::random::<f64>())
}

async fn job_loop(
    job: Job,
    offset: Duration,
    identity: Arc<Identity>,
    out: mpsc::Sender<Record>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let deadline = job.probe.deadline();
    let mut due = Instant::now() + offset;
    loop {
        let start_at = due + jitter(job.interval);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(start_at) => {}
        }
        let lag = Instant::now().saturating_duration_since(start_at);
        counters
            .max_lag_us
            .fetch_max(lag.as_micros() as u64, Ordering::Relaxed);

        let (address, observation) =
            match tokio::time::timeout(deadline, job.probe.run(&job.target, &stop)).await {
                Ok(measured) => measured,
                Err(_) => {
                    counters.deadline_exceeded.fetch_add(1, Ordering::Relaxed);
                    let message = format!("run exceeded its deadline of {deadline:?}");
                    (
                        None,
                        job.probe
                            .failed_before_start(FailureKind::Deadline, message),
                    )
                }
            };
        if stop.is_cancelled() && job.probe.cut_short(&observation) {
            // A stored round is always whole: the latest round of a target never shows 5 of 10.
            counters.cut_short.fetch_add(1, Ordering::Relaxed);
            return;
        }
        counters.observations.fetch_add(1, Ordering::Relaxed);
        if !observation.is_success() {
            counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(probe = %job.probe_name, target = %job.target.name, outcome = ?observation.outcome, "run failed");
        }
        let record = Record {
            agent: identity.agent.clone(),
            site: identity.site.clone(),
            probe: job.probe_name.clone(),
            target: job.target.name.clone(),
            target_site: job.target.site.clone(),
            address: address.map(|a| a.to_string()),
            observation,
        };
        if out.send(record).await.is_err() {
            return; // the store is gone: the agent is shutting down
        }

        let (next, skipped) = next_due(due, job.interval, Instant::now());
        if skipped > 0 {
            counters.skipped_ticks.fetch_add(skipped, Ordering::Relaxed);
            tracing::debug!(probe = %job.probe_name, target = %job.target.name, skipped, "run overran its interval; skipping ticks");
        }
        due = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_ticks_are_skipped_not_replayed() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(next_due(t0, s * 10, t0 + s), (t0 + s * 10, 0));
        // Woke 35 s late on a 10 s interval: ticks at 10, 20, 30 are gone; next is 40.
        assert_eq!(next_due(t0, s * 10, t0 + s * 35), (t0 + s * 40, 3));
        // Exactly on the next tick is not a miss.
        assert_eq!(next_due(t0, s * 10, t0 + s * 10), (t0 + s * 10, 0));
    }

    #[test]
    fn jitter_stays_small() {
        for _ in 0..1000 {
            assert!(jitter(Duration::from_secs(20)) <= Duration::from_millis(400));
            assert!(jitter(Duration::from_secs(3600)) <= Duration::from_millis(500));
        }
    }
}
