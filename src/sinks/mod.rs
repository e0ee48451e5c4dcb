//! Sinks: every result into InfluxDB-compatible outputs, with nothing lost while an output is
//! unreachable — including during the outage the agent is measuring.
//!
//! ## Layout
//! - [`OutputConfig`] (one `[[output]]`, secrets by reference) is in [`crate::config::output`]
//! - [`line_protocol`]: the measurement schema as line protocol — [`line_protocol::encode`] is a pure
//!   function, one match arm per measurement kind
//! - [`spool`]: the durable SQLite spool `DATA_DIR/spool.db`
//! - [`influx`]: the v2 and v1 write APIs and what their answers mean
//! - `deliver`: the retry/split/bisect loop of one output
//! - [`check`]: `vantage check`'s connectivity and credential test
//!
//! ## Data flow
//! ```text
//! scheduler ─▶ SinkHandle::offer (never blocks: bounded queue, drop + count when full)
//!           ─▶ spool writer thread: encode once, one transaction per burst (the first record waits
//!              up to `commit_linger` for more), a row per point and output, drop-oldest (counted)
//!              past spool_max_bytes, self-metrics every 10 s
//!           ─▶ one delivery thread per output: oldest batch ─▶ HTTP ─▶ 2xx: delete │ retry │ split │ bisect
//! ```
//! Each output has its own thread, spool rows and counters, so a dead output never slows a live one.
//!
//! Reload ([`Sinks::replace`]): the running outputs stop (what is queued is spooled first), the new
//! set starts on the same spool. Spool rows belong to an output's name, so a changed output keeps
//! its pending points; a removed output's stay in the spool (logged), delivered if it comes back.
//! Delivery is at-least-once: a point leaves the spool only after a 2xx. If the agent dies between
//! the 2xx and the delete, the point is sent again after the restart; InfluxDB keeps one point per
//! series and timestamp (a resend overwrites it with the same values), and VictoriaMetrics does the
//! same when started with `-dedup.minScrapeInterval=1ms`.

pub mod check;
mod deliver;
pub mod influx;
pub mod line_protocol;
pub mod redact;
pub mod spool;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use probes::CancellationToken;

/// The `[[output]]` configuration, defined with the rest of the configuration.
pub use crate::config::output as config;
pub use crate::config::{OutputConfig, OutputKind, SecretSource};
pub use line_protocol::AgentSample;
pub use spool::{SPOOL_FILE, Spool};

use crate::record::Record;

/// Default capacity of the hand-off queue between the agent and the spool writer, in records.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// Default self-metrics period.
pub const DEFAULT_SELF_METRICS_EVERY: Duration = Duration::from_secs(10);
/// Records encoded and committed in one spool transaction, at most.
const MAX_RECORDS_PER_COMMIT: usize = 5_000;
/// How long the first record of a spool transaction waits for more (default of
/// [`SinkOptions::commit_linger`]): rounds arrive spread over their interval, one every few ms at
/// 10,000 targets, and a transaction per record cost more than the encoding.
pub const DEFAULT_COMMIT_LINGER: Duration = Duration::from_millis(250);
/// Retry period of a spool write the disk refused.
const WRITE_RETRY: Duration = Duration::from_millis(250);
/// At shutdown, give up on a disk that keeps refusing writes after this long (the points are then
/// counted as dropped).
const WRITE_GIVE_UP_AT_SHUTDOWN: Duration = Duration::from_secs(5);

/// Who is measuring, and what the self-metrics should say about the agent itself.
pub struct SinkOptions {
    pub agent: String,
    pub site: String,
    /// Hand-off queue capacity in records (default 10,000).
    pub queue_capacity: usize,
    /// Emit the `agent` self-metrics this often into every output; None: never.
    pub self_metrics_every: Option<Duration>,
    /// Observations made and recent probe lag, from the scheduler's counters; None: count the
    /// records offered, lag 0.
    pub agent_stats: Option<Box<dyn Fn() -> (u64, f64) + Send>>,
    /// Echo replies the ICMP client rejected (issue 11, item 8); None: 0.
    pub icmp_rejected_replies: Option<Box<dyn Fn() -> u64 + Send>>,
    /// How long the first record of a spool transaction waits for more (default
    /// [`DEFAULT_COMMIT_LINGER`]).
    pub commit_linger: Duration,
}

impl std::fmt::Debug for SinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkOptions")
            .field("agent", &self.agent)
            .field("site", &self.site)
            .field("queue_capacity", &self.queue_capacity)
            .field("self_metrics_every", &self.self_metrics_every)
            .field("commit_linger", &self.commit_linger)
            .field("agent_stats", &self.agent_stats.as_ref().map(|_| "fn"))
            .field(
                "icmp_rejected_replies",
                &self.icmp_rejected_replies.as_ref().map(|_| "fn"),
            )
            .finish()
    }
}

impl SinkOptions {
    pub fn new(agent: impl Into<String>, site: impl Into<String>) -> SinkOptions {
        SinkOptions {
            agent: agent.into(),
            site: site.into(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            self_metrics_every: Some(DEFAULT_SELF_METRICS_EVERY),
            agent_stats: None,
            icmp_rejected_replies: None,
            commit_linger: DEFAULT_COMMIT_LINGER,
        }
    }
}

/// Live state of one output, shared by the hand-off, the spool writer and its delivery thread.
#[derive(Debug)]
pub(crate) struct OutputShared {
    pub name: String,
    pub id: i64,
    pub config: OutputConfig,
    pub spool_points: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub accepted: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped_unspooled: AtomicU64,
    pub dropped_spool_full: AtomicU64,
    pub dead_letter: AtomicU64,
    pub requests: AtomicU64,
    pub failed_requests: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Ids of the points being sent right now (never dropped by the spool bound).
    pub in_flight: Mutex<HashSet<i64>>,
    /// Points per request, lowered by a 413.
    pub max_batch: AtomicUsize,
    pub wake: tokio::sync::Notify,
    pub last_error: Mutex<Option<String>>,
    /// Set when stopping: deliver until then.
    pub deadline: Mutex<Option<tokio::time::Instant>>,
}

/// A point-in-time view of one output (counters are totals since the spool was created).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputStats {
    pub name: String,
    pub spool_points: u64,
    pub spool_bytes: u64,
    pub accepted: u64,
    pub delivered: u64,
    pub dropped_unspooled: u64,
    pub dropped_spool_full: u64,
    pub dead_letter: u64,
    /// Since this process started.
    pub requests: u64,
    pub failed_requests: u64,
    pub auth_failures: u64,
    pub last_error: Option<String>,
}

impl OutputStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_unspooled + self.dropped_spool_full
    }
}

impl OutputShared {
    fn stats(&self) -> OutputStats {
        OutputStats {
            name: self.name.clone(),
            spool_points: self.spool_points.load(Ordering::Relaxed),
            spool_bytes: self.spool_bytes.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped_unspooled: self.dropped_unspooled.load(Ordering::Relaxed),
            dropped_spool_full: self.dropped_spool_full.load(Ordering::Relaxed),
            dead_letter: self.dead_letter.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failed_requests: self.failed_requests.load(Ordering::Relaxed),
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .expect("last-error lock poisoned")
                .clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    outputs: Vec<Arc<OutputShared>>,
    /// Records offered (including dropped ones).
    offered: AtomicU64,
    /// Records the hand-off dropped (queue full or sinks stopped).
    handoff_dropped: AtomicU64,
    /// Dropped records not yet counted in the spool's `dropped_unspooled` (the writer persists them).
    unpersisted_drops: AtomicU64,
    /// Spool writes the disk refused.
    write_errors: AtomicU64,
    /// Transactions the spool writer committed.
    commits: AtomicU64,
    stop_writer: AtomicBool,
    /// Set (under the write lock) once the writer takes its last look at the queue; offers hold
    /// the read lock while queueing, so none can slip in unseen.
    closed: RwLock<bool>,
}

/// The agent's side of the hand-off: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct SinkHandle {
    /// Shared records: `sync_channel` allocates every slot up front, so a slot is a pointer (10,000
    /// whole `Record`s took 4.2 MB), and the agent's one copy of a record is not cloned for the
    /// outputs.
    tx: SyncSender<Arc<Record>>,
    shared: Arc<Shared>,
}

impl SinkHandle {
    /// Queue a copy of `record` for every output (see [`SinkHandle::offer_shared`]).
    pub fn offer(&self, record: &Record) -> bool {
        self.offer_shared(Arc::new(record.clone()))
    }

    /// Queue `record` for every output. Never blocks: when the queue is full (the spool writer is
    /// behind or the disk refuses writes) the record is dropped and counted. Returns whether it was
    /// queued.
    pub fn offer_shared(&self, record: Arc<Record>) -> bool {
        self.shared.offered.fetch_add(1, Ordering::Relaxed);
        let closed = self.shared.closed.read().expect("closed lock poisoned");
        let queued = if *closed {
            Err(TrySendError::Disconnected(()))
        } else {
            self.tx.try_send(record).map_err(|e| match e {
                TrySendError::Full(_) => TrySendError::Full(()),
                TrySendError::Disconnected(_) => TrySendError::Disconnected(()),
            })
        };
        drop(closed);
        match queued {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let dropped = self.shared.handoff_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                self.shared
                    .unpersisted_drops
                    .fetch_add(1, Ordering::Relaxed);
                for output in &self.shared.outputs {
                    output.dropped_unspooled.fetch_add(1, Ordering::Relaxed);
                }
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        "sink hand-off queue full: dropping results for the outputs (probing continues)"
                    );
                }
                false
            }
        }
    }
}

/// Writes points to every output's spool *now*, bypassing the lossy hand-off queue, and says
/// whether they are durable: for points whose sender retries until they are (incident events from
/// the outbox). Small volumes only; the spool bound is enforced by the spool writer's next commit.
#[derive(Debug)]
pub struct DurableWriter {
    spool: Spool,
    /// The running outputs: follows [`Sinks::replace`].
    route: Route,
}

/// The outputs a [`DurableWriter`] writes to, swapped when a reload replaces them.
type Route = Arc<RwLock<Arc<Shared>>>;

impl DurableWriter {
    pub fn write(&mut self, points: &[line_protocol::Point]) -> anyhow::Result<()> {
        let lines: Vec<(i64, Vec<u8>)> = points
            .iter()
            .filter_map(|p| Some((p.timestamp_ns, p.line()?.into_bytes())))
            .collect();
        let shared = Arc::clone(&self.route.read().expect("route lock poisoned"));
        let ids: Vec<i64> = shared.outputs.iter().map(|o| o.id).collect();
        append_counted(&mut self.spool, &shared, &ids, &lines, 0).with_context(|| {
            format!("cannot write to the spool {}", self.spool.path().display())
        })?;
        for output in &shared.outputs {
            output.wake.notify_one();
        }
        Ok(())
    }
}

/// [`Spool::append`] with every output's counters kept right: the points count as pending
/// before they become visible, so a delivery thread that sends and removes them at once never
/// takes the counters below zero; on failure nothing is counted.
fn append_counted(
    spool: &mut Spool,
    shared: &Shared,
    ids: &[i64],
    lines: &[(i64, Vec<u8>)],
    dropped_before: u64,
) -> rusqlite::Result<()> {
    let points = lines.len() as u64;
    let bytes: u64 = lines.iter().map(|(_, l)| l.len() as u64).sum();
    for output in &shared.outputs {
        output.spool_points.fetch_add(points, Ordering::Relaxed);
        output.spool_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    let appended = spool.append(ids, lines, dropped_before);
    for output in &shared.outputs {
        if appended.is_ok() {
            output.accepted.fetch_add(points, Ordering::Relaxed);
        } else {
            output.spool_points.fetch_sub(points, Ordering::Relaxed);
            output.spool_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
    appended
}

/// The outputs' counters, read-only, for whoever outlives a borrow of [`Sinks`] (`/metrics`).
#[derive(Debug, Clone)]
pub struct OutputsWatch(Arc<Shared>);

impl OutputsWatch {
    pub fn stats(&self) -> Vec<OutputStats> {
        self.0.outputs.iter().map(|o| o.stats()).collect()
    }

    /// Records the hand-off dropped so far (each output also counts them).
    pub fn handoff_dropped(&self) -> u64 {
        self.0.handoff_dropped.load(Ordering::Relaxed)
    }
}

/// The running sinks: a spool writer thread and a delivery thread per output.
#[derive(Debug)]
pub struct Sinks {
    handle: SinkHandle,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    senders: Vec<JoinHandle<()>>,
    stop: CancellationToken,
    spool_path: PathBuf,
    route: Route,
}

impl Sinks {
    /// Open the spool in `data_dir`, validate `outputs`, and start delivering (including whatever
    /// a previous run left in the spool).
    pub fn start(
        data_dir: &Path,
        outputs: Vec<OutputConfig>,
        options: SinkOptions,
    ) -> anyhow::Result<Sinks> {
        Sinks::start_on(data_dir, outputs, options, Route::default())
    }

    /// Reload: stop these outputs (queued records are spooled first; nothing more is delivered by
    /// them) and start `outputs` on the same spool; durable writers follow. Spool rows are kept by
    /// output name: a changed output delivers its pending points, a removed output's stay (logged).
    /// `outputs` is checked before anything stops; if the new set still fails to start, the error
    /// says why and no output runs (the spool keeps everything). Blocks.
    pub fn replace(
        self,
        outputs: Vec<OutputConfig>,
        options: SinkOptions,
    ) -> anyhow::Result<Sinks> {
        Sinks::check(&outputs)?;
        for output in &outputs {
            influx::Writer::new(output)
                .with_context(|| format!("output {:?}: cannot start", output.name))?;
        }
        let data_dir = self
            .spool_path
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let route = Arc::clone(&self.route);
        for stopped in self.shutdown(Duration::ZERO) {
            if stopped.spool_points > 0 && !outputs.iter().any(|o| o.name == stopped.name) {
                tracing::warn!(output = %stopped.name, pending = stopped.spool_points, "output removed from the configuration: its pending points stay in the spool, delivered if it is added back");
            }
        }
        Sinks::start_on(&data_dir, outputs, options, route)
    }

    /// Every output valid, each name once.
    fn check(outputs: &[OutputConfig]) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let mut names = HashSet::new();
        for output in outputs {
            for (field, message) in output.validate() {
                problems.push(format!("output {:?}: {field}: {message}", output.name));
            }
            if !names.insert(output.name.clone()) {
                problems.push(format!("output {:?}: name used twice", output.name));
            }
        }
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("\n"));
        }
        Ok(())
    }

    fn start_on(
        data_dir: &Path,
        outputs: Vec<OutputConfig>,
        options: SinkOptions,
        route: Route,
    ) -> anyhow::Result<Sinks> {
        Sinks::check(&outputs)?;
        let mut spool = Spool::open(data_dir)?;
        let spool_path = spool.path().to_path_buf();
        let mut shared_outputs = Vec::new();
        for config in outputs {
            let id = spool.output_id(&config.name)?;
            let totals = spool.totals_of(id)?;
            shared_outputs.push(Arc::new(OutputShared {
                name: config.name.clone(),
                id,
                max_batch: AtomicUsize::new(config.batch_size),
                config,
                spool_points: AtomicU64::new(totals.pending_points),
                spool_bytes: AtomicU64::new(totals.pending_bytes),
                accepted: AtomicU64::new(totals.accepted),
                delivered: AtomicU64::new(totals.delivered),
                dropped_unspooled: AtomicU64::new(totals.dropped_unspooled),
                dropped_spool_full: AtomicU64::new(totals.dropped_spool_full),
                dead_letter: AtomicU64::new(totals.dead_letter),
                requests: AtomicU64::new(0),
                failed_requests: AtomicU64::new(0),
                auth_failures: AtomicU64::new(0),
                in_flight: Mutex::new(HashSet::new()),
                wake: tokio::sync::Notify::new(),
                last_error: Mutex::new(None),
                deadline: Mutex::new(None),
            }));
        }
        let shared = Arc::new(Shared {
            outputs: shared_outputs,
            ..Shared::default()
        });
        let (tx, rx) = std::sync::mpsc::sync_channel(options.queue_capacity.max(1));
        let stop = CancellationToken::new();

        let mut senders = Vec::new();
        for output in &shared.outputs {
            let writer = influx::Writer::new(&output.config)?;
            let sender = deliver::Sender::new(
                Arc::clone(output),
                Spool::open(data_dir)?,
                writer,
                stop.clone(),
            );
            let pending = output.spool_points.load(Ordering::Relaxed);
            tracing::info!(output = %output.name, kind = output.config.kind.name(), endpoint = %sender.writer.endpoint(), pending, "output started");
            senders.push(
                std::thread::Builder::new()
                    .name(format!("sink-{}", output.name))
                    .spawn(move || {
                        match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(runtime) => runtime.block_on(sender.run()),
                            Err(e) => {
                                tracing::error!(error = %e, "cannot start an output's runtime")
                            }
                        }
                    })
                    .context("cannot start an output thread")?,
            );
        }
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("sink-spool".into())
                .spawn(move || SpoolWriter::new(spool, rx, shared, options).run())
                .context("cannot start the spool writer thread")?
        };
        *route.write().expect("route lock poisoned") = Arc::clone(&shared);
        Ok(Sinks {
            handle: SinkHandle {
                tx,
                shared: Arc::clone(&shared),
            },
            shared,
            writer: Some(writer),
            senders,
            stop,
            spool_path,
            route,
        })
    }

    pub fn handle(&self) -> SinkHandle {
        self.handle.clone()
    }

    /// A [`DurableWriter`] into these outputs' spool (its own SQLite connection).
    pub fn durable_writer(&self) -> anyhow::Result<DurableWriter> {
        let data_dir = self.spool_path.parent().unwrap_or(Path::new("."));
        Ok(DurableWriter {
            spool: Spool::open(data_dir)?,
            route: Arc::clone(&self.route),
        })
    }

    pub fn spool_path(&self) -> &Path {
        &self.spool_path
    }

    /// Every output's counters now.
    pub fn stats(&self) -> Vec<OutputStats> {
        self.shared.outputs.iter().map(|o| o.stats()).collect()
    }

    /// A view of the outputs' counters that does not borrow these sinks (the agent's status).
    pub fn watch(&self) -> OutputsWatch {
        OutputsWatch(Arc::clone(&self.shared))
    }

    /// Records offered so far, and how many of them the hand-off dropped.
    pub fn offered(&self) -> (u64, u64) {
        (
            self.shared.offered.load(Ordering::Relaxed),
            self.shared.handoff_dropped.load(Ordering::Relaxed),
        )
    }

    /// Spool writes the disk refused so far (each retried).
    pub fn write_errors(&self) -> u64 {
        self.shared.write_errors.load(Ordering::Relaxed)
    }

    /// Transactions the spool writer committed so far (each holds many records: the linger).
    pub fn spool_commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Stop: spool everything queued, then keep delivering for up to `grace` (until every spool is
    /// empty, if sooner). What is left stays in the spool for the next start. Blocks; call it from
    /// a blocking context. Records offered after this are dropped and counted.
    pub fn shutdown(mut self, grace: Duration) -> Vec<OutputStats> {
        self.shared.stop_writer.store(true, Ordering::Relaxed);
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the spool writer panicked");
        }
        let deadline = tokio::time::Instant::now() + grace;
        for output in &self.shared.outputs {
            *output.deadline.lock().expect("deadline lock poisoned") = Some(deadline);
        }
        self.stop.cancel();
        for sender in self.senders.drain(..) {
            if sender.join().is_err() {
                tracing::error!("an output thread panicked");
            }
        }
        self.stats()
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        // Not shut down explicitly (e.g. a panic): stop the threads without waiting for delivery.
        if self.writer.is_some() || !self.senders.is_empty() {
            self.shared.stop_writer.store(true, Ordering::Relaxed);
            for output in &self.shared.outputs {
                *output.deadline.lock().expect("deadline lock poisoned") =
                    Some(tokio::time::Instant::now());
            }
            self.stop.cancel();
        }
    }
}

/// The spool writer thread: encodes once, persists for every output, enforces the bound, emits
/// self-metrics, wakes the delivery threads.
struct SpoolWriter {
    spool: Spool,
    rx: Receiver<Arc<Record>>,
    shared: Arc<Shared>,
    options: SinkOptions,
    ids: Vec<i64>,
    /// Encoded points not yet committed (timestamp, line).
    held: Vec<(i64, Vec<u8>)>,
    /// Records behind `held`.
    held_records: u64,
    next_metrics: Option<Instant>,
    last_write_error_log: Option<Instant>,
}

impl SpoolWriter {
    fn new(
        spool: Spool,
        rx: Receiver<Arc<Record>>,
        shared: Arc<Shared>,
        options: SinkOptions,
    ) -> Self {
        let ids = shared.outputs.iter().map(|o| o.id).collect();
        let next_metrics = options
            .self_metrics_every
            .map(|every| Instant::now() + every);
        SpoolWriter {
            spool,
            rx,
            shared,
            options,
            ids,
            held: Vec::new(),
            held_records: 0,
            next_metrics,
            last_write_error_log: None,
        }
    }

    fn run(mut self) {
        let mut failing_since: Option<Instant> = None;
        let mut closed = false;
        loop {
            if !closed && self.shared.stop_writer.load(Ordering::Relaxed) {
                // From here on offers are counted as dropped instead of queued, so what is in the
                // queue now is all there is left to spool.
                *self.shared.closed.write().expect("closed lock poisoned") = true;
                closed = true;
            }
            let mut received = 0;
            if self.held.is_empty() {
                if !closed {
                    let wait = self
                        .next_metrics
                        .map_or(Duration::from_millis(200), |at| {
                            at.saturating_duration_since(Instant::now())
                        })
                        .min(Duration::from_millis(200));
                    match self.rx.recv_timeout(wait) {
                        Ok(record) => {
                            self.encode(&record);
                            received += 1;
                        }
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                    }
                }
                // The first record waits a little for more (see DEFAULT_COMMIT_LINGER); a stop
                // or a full transaction ends the wait.
                let linger_until =
                    (received > 0).then(|| Instant::now() + self.options.commit_linger);
                crate::record::linger_for_more(linger_until, || {
                    while self.held_records < MAX_RECORDS_PER_COMMIT as u64 {
                        match self.rx.try_recv() {
                            Ok(record) => {
                                self.encode(&record);
                                received += 1;
                            }
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                    self.held_records >= MAX_RECORDS_PER_COMMIT as u64
                        || self.shared.stop_writer.load(Ordering::Relaxed)
                });
                if !closed && self.next_metrics.is_some_and(|at| Instant::now() >= at) {
                    self.self_metrics();
                }
            }
            let drops = self.shared.unpersisted_drops.swap(0, Ordering::Relaxed);
            if self.held.is_empty() && drops == 0 {
                if closed && received == 0 {
                    break;
                }
                continue;
            }
            match append_counted(&mut self.spool, &self.shared, &self.ids, &self.held, drops) {
                Ok(()) => {
                    self.shared.commits.fetch_add(1, Ordering::Relaxed);
                    if failing_since.take().is_some() {
                        tracing::info!("the spool accepts writes again");
                    }
                    self.held.clear();
                    self.held_records = 0;
                    let shared = Arc::clone(&self.shared);
                    for output in &shared.outputs {
                        self.enforce_bound(output);
                        output.wake.notify_one();
                    }
                }
                Err(error) => {
                    self.shared
                        .unpersisted_drops
                        .fetch_add(drops, Ordering::Relaxed);
                    self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if self
                        .last_write_error_log
                        .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
                    {
                        self.last_write_error_log = Some(Instant::now());
                        tracing::error!(error = %error, spool = %self.spool.path().display(), held = self.held.len(), "cannot write to the spool (disk full?): holding these points and retrying; new results are dropped and counted while the queue is full");
                    }
                    if closed && since.elapsed() >= WRITE_GIVE_UP_AT_SHUTDOWN {
                        let mut lost = self.held_records;
                        while self.rx.try_recv().is_ok() {
                            lost += 1;
                        }
                        for output in &self.shared.outputs {
                            output.dropped_unspooled.fetch_add(lost, Ordering::Relaxed);
                        }
                        let total = self.shared.unpersisted_drops.swap(0, Ordering::Relaxed) + lost;
                        let _ = self.spool.count_dropped(&self.ids, total);
                        tracing::error!(
                            lost,
                            "stopping: the spool still refuses writes; these results are dropped"
                        );
                        break;
                    }
                    std::thread::sleep(WRITE_RETRY);
                }
            }
        }
    }

    fn encode(&mut self, record: &Record) {
        self.held_records += 1;
        for point in line_protocol::encode(record) {
            if let Some(line) = point.line() {
                self.held.push((point.timestamp_ns, line.into_bytes()));
            }
        }
    }

    /// Drop the oldest points (not in flight) while the output's spool is over its bound.
    fn enforce_bound(&mut self, output: &OutputShared) {
        let bytes = output.spool_bytes.load(Ordering::Relaxed);
        let max = output.config.spool_max_bytes;
        if bytes <= max {
            return;
        }
        let in_flight = output
            .in_flight
            .lock()
            .expect("in-flight set lock poisoned");
        match self.spool.drop_oldest(output.id, bytes - max, &in_flight) {
            Ok((points, freed)) => {
                drop(in_flight);
                output.spool_points.fetch_sub(points, Ordering::Relaxed);
                output.spool_bytes.fetch_sub(freed, Ordering::Relaxed);
                let total = output
                    .dropped_spool_full
                    .fetch_add(points, Ordering::Relaxed)
                    + points;
                if (total - points) / 10_000 != total / 10_000 || total == points {
                    tracing::warn!(output = %output.name, dropped_now = points, dropped_total = total, spool_max_bytes = max, "spool full: dropped the oldest points");
                }
            }
            Err(e) => {
                tracing::error!(output = %output.name, error = %e, "cannot enforce the spool bound")
            }
        }
    }

    /// One `agent` point per output, into every output.
    fn self_metrics(&mut self) {
        let Some(every) = self.options.self_metrics_every else {
            return;
        };
        self.next_metrics = Some(Instant::now() + every);
        let (observations, probe_lag_ms) = match &self.options.agent_stats {
            Some(stats) => stats(),
            None => (self.shared.offered.load(Ordering::Relaxed), 0.0),
        };
        let icmp_rejected_replies = self
            .options
            .icmp_rejected_replies
            .as_ref()
            .map_or(0, |f| f());
        let now = spool::now_ns();
        for output in &self.shared.outputs {
            let stats = output.stats();
            let oldest = self
                .spool
                .oldest_pending_ts(output.id)
                .ok()
                .flatten()
                .map(|ts| (now - ts) as f64 / 1e9);
            let sample = AgentSample {
                observations,
                spool_points: stats.spool_points,
                spool_bytes: stats.spool_bytes,
                delivered_points: stats.delivered,
                dropped_points: stats.dropped(),
                dead_letter_points: stats.dead_letter,
                probe_lag_ms,
                oldest_undelivered_age_s: oldest,
                icmp_rejected_replies,
            };
            let point = line_protocol::agent_point(
                &self.options.agent,
                &self.options.site,
                &output.name,
                &sample,
                now,
            );
            if let Some(line) = point.line() {
                self.held.push((now, line.into_bytes()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(n: usize) -> Record {
        Record::test_round(&format!("t{n}"))
    }

    /// Issue 15: `sync_channel` allocates every slot of its bound at start; with whole records
    /// in them the default hand-off queue held 4.2 MB of memory before the first record.
    #[test]
    fn the_hand_off_queue_allocates_pointers_not_records() {
        fn slot_bytes<T>(_: &SyncSender<T>) -> usize {
            size_of::<T>()
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let output = OutputConfig::influxdb_v2("down", "http://127.0.0.1:9", "o", "b", None);
        let mut options = SinkOptions::new("a", "s");
        options.self_metrics_every = None;
        let sinks = Sinks::start(dir.path(), vec![output], options).expect("start");
        let bytes = slot_bytes(&sinks.handle().tx) * DEFAULT_QUEUE_CAPACITY;
        assert!(bytes <= 256 << 10, "{bytes} bytes of slots");
        sinks.shutdown(Duration::ZERO);
    }

    #[test]
    fn records_offered_a_few_ms_apart_are_spooled_in_one_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Nothing listens on the discard port of loopback: every point stays in the spool.
        let output = OutputConfig::influxdb_v2("down", "http://127.0.0.1:9", "o", "b", None);
        let mut options = SinkOptions::new("a", "s");
        options.self_metrics_every = None;
        // Far longer than the offers take even on a loaded machine: what is tested is that the
        // writer waits for more, not how long.
        options.commit_linger = Duration::from_secs(2);
        let sinks = Sinks::start(dir.path(), vec![output], options).expect("start");
        let handle = sinks.handle();
        let spooled = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while sinks.stats()[0].spool_points < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(sinks.stats()[0].spool_points, n);
        };
        // One record first, so that the writer is up and waiting.
        assert!(handle.offer(&round(0)));
        spooled(1);
        for n in 1..=20 {
            assert!(handle.offer(&round(n)));
            std::thread::sleep(Duration::from_millis(5));
        }
        spooled(21);
        // A transaction's points are counted as it is written and its commit just after it
        // (`append_counted`): on a loaded machine the test could read the count in between.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sinks.spool_commits() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            sinks.spool_commits(),
            2,
            "one transaction for the 20 after the first"
        );
        let stats = sinks.shutdown(Duration::ZERO).remove(0);
        assert_eq!((stats.accepted, stats.spool_points), (21, 21));
    }
}
