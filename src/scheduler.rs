//! One scheduler for every probe kind (after cloudprober's `sched.go`): a loop per (probe, target)
//! — for ICMP targets given by address, a row in their probe's one loop instead ([`icmp_probe`]) —
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
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use probes::{CancellationToken, FailureKind, Observation};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Target;
use crate::probe::Probe;
use crate::record::Record;

mod icmp_probe;

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
    /// When a run last started, in [`mono_ms`]: the liveness of `/healthz` and the watchdog.
    pub last_run_ms: AtomicU64,
    /// Test hook ([`crate::agent::Agent::stall_scheduler_for_test`]): while set, no run starts.
    pub stalled: AtomicBool,
}

/// Milliseconds on a monotonic clock (since the first call in this process).
pub fn mono_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
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
    counters.last_run_ms.store(mono_ms(), Ordering::Relaxed);
    let mut scheduler = Scheduler {
        identity: Arc::new(identity),
        out,
        counters: Arc::clone(&counters),
        stop: stop.clone(),
        loops: JoinSet::new(),
        running: HashMap::new(),
        probe_loops: HashMap::new(),
        next_probe_loop: 0,
    };
    scheduler.start(jobs);
    let mut commands_open = true;
    loop {
        tokio::select! {
            command = commands.recv(), if commands_open && !stop.is_cancelled() => match command {
                Some(Command::Start(jobs)) => scheduler.start(jobs),
                Some(Command::Stop(keys)) => scheduler.stop(keys),
                None => commands_open = false,
            },
            Some(result) = scheduler.loops.join_next() => {
                if let Err(error) = result {
                    tracing::error!(%error, "a probe loop ended abnormally");
                }
            }
            // Stopping, and every loop has handed over its last observation.
            () = stop.cancelled(), if scheduler.loops.is_empty() => break,
            else => break,
        }
    }
    drop(scheduler);
    let cut_short = counters.cut_short.load(Ordering::Relaxed);
    if cut_short > 0 {
        tracing::info!(
            rounds = cut_short,
            "stopping: runs in flight were cut short and are not stored"
        );
    }
}

/// Where a job runs: a loop of its own, or a row of its ICMP probe's loop.
enum Running {
    Own(CancellationToken),
    InProbeLoop(u64),
}

/// An ICMP probe's loop ([`icmp_probe`]): what it runs, and how many of its targets are running
/// (when none is left, its channel is dropped and the loop ends).
struct ProbeLoop {
    probe_name: String,
    plan: probes::RoundPlan,
    interval: Duration,
    changes: mpsc::UnboundedSender<icmp_probe::Change>,
    members: usize,
}

/// The scheduler's state while it runs.
struct Scheduler {
    identity: Arc<Identity>,
    out: mpsc::Sender<Record>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    loops: JoinSet<()>,
    running: HashMap<JobKey, Running>,
    probe_loops: HashMap<u64, ProbeLoop>,
    next_probe_loop: u64,
}

impl Scheduler {
    /// Start `jobs`, their first runs spread evenly over one interval so 10,000 targets never
    /// start in one burst. ICMP jobs against an address join their probe's loop; the others get
    /// a loop each.
    fn start(&mut self, jobs: Vec<Job>) {
        let total = jobs.len().max(1) as u32;
        let mut joining: HashMap<u64, Vec<(Job, Duration)>> = HashMap::new();
        for (index, job) in jobs.into_iter().enumerate() {
            let offset = job.interval / total * index as u32;
            let key = job.key();
            self.stop(vec![key.clone()]);
            let icmp = job
                .probe
                .icmp_by_address(&job.target)
                .map(|(client, plan, _)| (client.clone(), plan));
            if let Some((client, plan)) = icmp {
                let id = self.probe_loop_for(&job, client, plan);
                self.running.insert(key, Running::InProbeLoop(id));
                joining.entry(id).or_default().push((job, offset));
                continue;
            }
            let token = self.stop.child_token();
            self.running.insert(key, Running::Own(token.clone()));
            self.loops.spawn(job_loop(
                job,
                offset,
                Arc::clone(&self.identity),
                self.out.clone(),
                Arc::clone(&self.counters),
                token,
            ));
        }
        for (id, jobs) in joining {
            if let Some(probe_loop) = self.probe_loops.get_mut(&id) {
                probe_loop.members += jobs.len();
                let _ = probe_loop.changes.send(icmp_probe::Change::Add(jobs));
            }
        }
    }

    /// The loop of `job`'s probe (same name, plan and interval), started if there is none.
    fn probe_loop_for(
        &mut self,
        job: &Job,
        client: probes::IcmpClient,
        plan: probes::RoundPlan,
    ) -> u64 {
        let found = self.probe_loops.iter().find(|(_, l)| {
            l.probe_name == job.probe_name && l.plan == plan && l.interval == job.interval
        });
        if let Some((&id, _)) = found {
            return id;
        }
        let id = self.next_probe_loop;
        self.next_probe_loop += 1;
        let (changes, receiver) = mpsc::unbounded_channel();
        let plan_of_loop = icmp_probe::Plan {
            probe_name: job.probe_name.clone(),
            probe: Arc::clone(&job.probe),
            client,
            plan,
            interval: job.interval,
        };
        self.loops.spawn(icmp_probe::probe_loop(
            plan_of_loop,
            Arc::clone(&self.identity),
            self.out.clone(),
            Arc::clone(&self.counters),
            self.stop.clone(),
            receiver,
        ));
        self.probe_loops.insert(
            id,
            ProbeLoop {
                probe_name: job.probe_name.clone(),
                plan,
                interval: job.interval,
                changes,
                members: 0,
            },
        );
        id
    }

    /// Stop these jobs (a run in flight is cut short and not stored, as at a stop).
    fn stop(&mut self, keys: Vec<JobKey>) {
        let mut leaving: HashMap<u64, Vec<String>> = HashMap::new();
        for key in keys {
            match self.running.remove(&key) {
                Some(Running::Own(token)) => token.cancel(),
                Some(Running::InProbeLoop(id)) => leaving.entry(id).or_default().push(key.1),
                None => {}
            }
        }
        for (id, names) in leaving {
            let Some(probe_loop) = self.probe_loops.get_mut(&id) else {
                continue;
            };
            probe_loop.members = probe_loop.members.saturating_sub(names.len());
            let _ = probe_loop.changes.send(icmp_probe::Change::Remove(names));
            if probe_loop.members == 0 {
                // Its channel closes: the loop ends once its last round in flight has.
                self.probe_loops.remove(&id);
            }
        }
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
    let mut due = Instant::now() + offset;
    loop {
        let start_at = due + jitter(job.interval);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(start_at) => {}
        }
        while counters.stalled.load(Ordering::Relaxed) {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        counters.last_run_ms.store(mono_ms(), Ordering::Relaxed);
        let lag = Instant::now().saturating_duration_since(start_at);
        counters
            .max_lag_us
            .fetch_max(lag.as_micros() as u64, Ordering::Relaxed);

        // Boxed while it lasts: a loop is a task paid per target (10,000 of them), and a run
        // inline would sit in every loop's state between runs too.
        if Box::pin(run_once(&job, &identity, &out, &counters, &stop))
            .await
            .is_break()
        {
            return;
        }

        let (next, skipped) = next_due(due, job.interval, Instant::now());
        if skipped > 0 {
            counters.skipped_ticks.fetch_add(skipped, Ordering::Relaxed);
            tracing::debug!(probe = %job.probe_name, target = %job.target.name, skipped, "run overran its interval; skipping ticks");
        }
        due = next;
    }
}

/// One run of `job`, its record handed to the dispatcher. `Break` when the loop must end: the
/// run was cut short by the stop, or the dispatcher is gone.
async fn run_once(
    job: &Job,
    identity: &Identity,
    out: &mpsc::Sender<Record>,
    counters: &Counters,
    stop: &CancellationToken,
) -> ControlFlow<()> {
    let deadline = job.probe.deadline();
    let (address, observation) =
        match tokio::time::timeout(deadline, job.probe.run(&job.target, stop)).await {
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
        return ControlFlow::Break(());
    }
    hand_over(
        identity,
        &job.probe_name,
        &job.target,
        address,
        observation,
        out,
        counters,
    )
    .await
}

/// Count a whole run's observation and hand its record to the dispatcher. `Break` if the
/// dispatcher is gone (the agent is shutting down).
async fn hand_over(
    identity: &Identity,
    probe_name: &str,
    target: &Target,
    address: Option<IpAddr>,
    observation: Observation,
    out: &mpsc::Sender<Record>,
    counters: &Counters,
) -> ControlFlow<()> {
    counters.observations.fetch_add(1, Ordering::Relaxed);
    if !observation.is_success() {
        counters.failures.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(probe = %probe_name, target = %target.name, outcome = ?observation.outcome, "run failed");
    }
    let record = Record {
        agent: identity.agent.clone(),
        site: identity.site.clone(),
        probe: probe_name.to_string(),
        target: target.name.clone(),
        target_site: target.site.clone(),
        address: address.map(|a| a.to_string()),
        observation,
    };
    if out.send(record).await.is_err() {
        return ControlFlow::Break(());
    }
    ControlFlow::Continue(())
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

    /// Issue 15: 10,000 targets are 10,000 job loops, each a task as large as its largest state.
    /// A run (with its record's hand-off) is boxed while it lasts, so between runs a loop holds
    /// its schedule and little else: inline, the run, the observation and the record sat in every
    /// loop (952 bytes in a debug build; 1.66 KB per task, 16.6 MB in all, in a release build).
    #[test]
    fn a_job_loop_holds_little_memory() {
        let config = crate::config::Config::parse(
            "[agent]\nsite = \"s\"\n[[target]]\nname = \"t\"\nhost = \"198.18.2.2\"\n\
             [[probe]]\nname = \"p\"\nkind = \"tcp\"\nport = 80\n",
            std::path::Path::new("/nonexistent/vantage.toml"),
        )
        .expect("config");
        let target = Arc::new(config.targets[0].clone());
        let resources = crate::probe::Resources { icmp: None };
        let probe = Probe::new(&config.probes[0], &target, &resources).expect("probe");
        let job = Job {
            probe_name: "p".into(),
            probe: Arc::new(probe),
            target,
            interval: Duration::from_secs(20),
        };
        let identity = Arc::new(Identity {
            agent: "a".into(),
            site: "s".into(),
        });
        let (out, _records) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let job_loop = job_loop(job, Duration::ZERO, identity, out, Arc::default(), stop);
        let size = size_of_val(&job_loop);
        eprintln!("a job loop's future: {size} bytes");
        assert!(size <= 512, "a job loop's future takes {size} bytes");
    }

    fn icmp_job(target: &str, host: &str, client: &probes::IcmpClient) -> Job {
        let plan = "interval = \"400ms\"\ncount = 4\nspacing = \"60ms\"\ntimeout = \"200ms\"";
        icmp_job_with(target, host, plan, client)
    }

    fn icmp_job_with(target: &str, host: &str, plan: &str, client: &probes::IcmpClient) -> Job {
        let config = crate::config::Config::parse(
            &format!(
                "[agent]\nsite = \"s\"\n[[target]]\nname = \"{target}\"\nhost = \"{host}\"\n\
                 [[probe]]\nname = \"ping\"\nkind = \"icmp\"\n{plan}\n"
            ),
            std::path::Path::new("/nonexistent/vantage.toml"),
        )
        .expect("config");
        let target = Arc::new(config.targets[0].clone());
        let resources = crate::probe::Resources {
            icmp: Some(client.clone()),
        };
        let probe = Probe::new(&config.probes[0], &target, &resources).expect("probe");
        Job {
            probe_name: "ping".into(),
            probe: Arc::new(probe),
            target,
            interval: config.probes[0].interval,
        }
    }

    /// The scheduler on its own task, as the agent runs it; its stop token and counters.
    fn spawn_scheduler(
        jobs: Vec<Job>,
        out: mpsc::Sender<Record>,
        commands: mpsc::Receiver<Command>,
    ) -> (
        tokio::task::JoinHandle<()>,
        CancellationToken,
        Arc<Counters>,
    ) {
        let identity = Identity {
            agent: "a".into(),
            site: "s".into(),
        };
        let (stop, counters) = (CancellationToken::new(), Arc::new(Counters::default()));
        let scheduler = tokio::spawn(run(
            jobs,
            identity,
            out,
            Arc::clone(&counters),
            stop.clone(),
            commands,
        ));
        (scheduler, stop, counters)
    }

    /// Issue 15: ICMP targets given by address run as rows of their probe's one loop, not as a task
    /// each, with the per-target loop's contract: every target measured every interval, a target
    /// removed mid-round never stored cut short, added again it resumes, and at the stop nothing
    /// partial is stored. A target given by name keeps a loop of its own (it resolves each round).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn icmp_targets_by_address_share_one_loop_with_the_same_schedule_and_stops() {
        let client = probes::IcmpClient::new().expect("ICMP sockets (run as root)");
        let mut jobs: Vec<Job> = (1..=100)
            .map(|i| icmp_job(&format!("t{i}"), &format!("127.0.1.{i}"), &client))
            .collect();
        jobs.push(icmp_job("v6", "::1", &client));
        jobs.push(icmp_job("named", "localhost", &client));
        let (out, mut records) = mpsc::channel(1024);
        let (commands, receiver) = mpsc::channel(4);
        let tasks_before = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let (scheduler, stop, counters) = spawn_scheduler(jobs, out, receiver);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
            - tasks_before;
        // The scheduler, the probe's loop, the named target's loop: not 102.
        assert!(tasks <= 3, "{tasks} tasks for 102 targets");

        // Mid-round (rounds last 380 ms of every 400), t7 leaves; later it comes back.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let key = ("ping".to_string(), "t7".to_string());
        commands.send(Command::Stop(vec![key])).await.expect("stop");
        let removed_at = std::time::SystemTime::now();
        tokio::time::sleep(Duration::from_millis(900)).await;
        let back = icmp_job("t7", "127.0.1.7", &client);
        commands
            .send(Command::Start(vec![back]))
            .await
            .expect("start");
        let added_at = std::time::SystemTime::now();
        tokio::time::sleep(Duration::from_millis(1300)).await;
        stop.cancel();
        scheduler.await.expect("scheduler");

        let mut rounds: HashMap<String, Vec<Record>> = HashMap::new();
        while let Ok(record) = records.try_recv() {
            rounds
                .entry(record.target.clone())
                .or_default()
                .push(record);
        }
        assert_eq!(rounds.len(), 102, "targets measured: {:?}", rounds.keys());
        for (target, stored) in &rounds {
            for record in stored {
                let probes::Measurement::Ping(stats) = &record.observation.measurement else {
                    panic!("{target}: not a ping");
                };
                assert_eq!(
                    (stats.sent, stats.received),
                    (4, 4),
                    "{target}: a partial round"
                );
            }
            if target != "t7" {
                // ~3.2 s at one round per 400 ms, the first ones spread over one interval.
                assert!(stored.len() >= 5, "{target}: only {} rounds", stored.len());
            }
        }
        let t7 = &rounds["t7"];
        let gap = t7.iter().filter(|r| {
            r.observation.started_at > removed_at && r.observation.started_at < added_at
        });
        assert_eq!(gap.count(), 0, "t7 measured while removed");
        assert!(
            t7.iter().any(|r| r.observation.started_at > added_at),
            "t7 never came back"
        );
        assert!(
            counters.cut_short.load(Ordering::Relaxed) >= 1,
            "no round was cut short"
        );
        assert_eq!(counters.skipped_ticks.load(Ordering::Relaxed), 0);
    }

    /// A round the stop cuts short while the probe's loop is busy elsewhere (here: waiting on a
    /// full hand-off) ends in the session before the loop has seen the stop itself. It must be
    /// judged by the stop token then, not the loop's own flag: with the flag, such a round was
    /// stored partial about half the time (whichever of the two ready branches `select!` took).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_cut_short_while_the_loop_is_busy_is_not_stored() {
        let client = probes::IcmpClient::new().expect("ICMP sockets (run as root)");
        let plan = "interval = \"1s\"\ncount = 4\nspacing = \"200ms\"\ntimeout = \"300ms\"";
        for attempt in 0..6 {
            // a: rounds at 0 and 1 s; b: at 0.5 s, ending at ~1.1 s into a full hand-off (a's
            // first record fills it), so the loop waits while a's second round runs.
            let jobs = vec![
                icmp_job_with("a", "127.0.3.1", plan, &client),
                icmp_job_with("b", "127.0.3.2", plan, &client),
            ];
            let (out, mut records) = mpsc::channel(1);
            let (_commands, receiver) = mpsc::channel(1);
            let (scheduler, stop, counters) = spawn_scheduler(jobs, out, receiver);
            tokio::time::sleep(Duration::from_millis(1300)).await;
            stop.cancel();
            // a's second round ends cut short in the session while the loop still waits.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let mut stored = Vec::new();
            while let Some(record) = tokio::time::timeout(Duration::from_secs(5), records.recv())
                .await
                .expect("the scheduler ends")
            {
                stored.push(record);
            }
            scheduler.await.expect("scheduler");
            for record in &stored {
                let probes::Measurement::Ping(stats) = &record.observation.measurement else {
                    panic!("not a ping");
                };
                let round = (&record.target, stats.sent, stats.received);
                assert_eq!(
                    (stats.sent, stats.received),
                    (4, 4),
                    "attempt {attempt}: {round:?} stored"
                );
            }
            assert!(
                counters.cut_short.load(Ordering::Relaxed) >= 1,
                "attempt {attempt}: nothing cut short"
            );
        }
    }

    #[test]
    fn jitter_stays_small() {
        for _ in 0..1000 {
            assert!(jitter(Duration::from_secs(20)) <= Duration::from_millis(400));
            assert!(jitter(Duration::from_secs(3600)) <= Duration::from_millis(500));
        }
    }
}
