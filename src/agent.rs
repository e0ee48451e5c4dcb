//! The agent as a library: [`Agent::start`] a configuration, look into it with
//! [`Agent::snapshot`], [`Agent::stop`] it. `vantage run` is this plus signal handling; tests and
//! the fleet view and web page to come drive it the same way.
//!
//! ## The pipeline
//! ```text
//! scheduler ──▶ dispatch ──▶ outputs: SinkHandle::offer_shared  never waits; full: drop, counted (sinks)
//!  (probes)        │
//!                  └───────▶ store writer (STORE_QUEUE)      waits: probing slows, nothing is lost
//!                               │ once stored
//!                               └──▶ rules (RULES_QUEUE)     waits up to RULES_WAIT, then drops, counted
//!                                      └──▶ incident manager ──▶ outbox ──▶ incident sinks
//! ```
//! The dispatcher wraps each record in one `Arc` that the status page, the outputs, the store and
//! the rules all share (no copy per consumer). Every fan-out point is in this file and says what
//! it does when its consumer is behind:
//! - outputs are best effort on the hot path (their durable spool catches up later), so an offer
//!   never delays probing; [`crate::sinks::SinkHandle::offer_shared`] counts what it drops;
//! - the store is the record of truth, so the dispatcher waits for it (the scheduler's runs wait
//!   in turn, and a late run is a counted skipped tick, not lost data);
//! - the rules see a record only once it is stored (the evidence reads it back). A dropped record
//!   could hide a breach, so the store writer waits for a busy rules engine (back-pressure) for up
//!   to [`RULES_WAIT`] per record; only an engine stalled longer than that loses records, each
//!   counted in [`Snapshot::rules_dropped`] and logged, and the writer stops waiting until the
//!   engine takes a record again, so a stalled engine can never stop the measuring.
//!
//! ## Runtime models, one per kind of work
//! - **tokio tasks** (the caller's multi-thread runtime) for probing and the dispatcher: thousands
//!   of concurrent network waits, cancelled together at stop.
//! - **a std thread per loop that owns a SQLite connection**: the store writer, the spool writer,
//!   the rules engine with the incident manager, each incident sink's outbox deliverer and each
//!   output's sender. SQLite calls block; on their own threads a slow disk delays only its loop and
//!   never a runtime worker that probes. Threads talk through bounded std channels.
//! - those threads that also speak HTTP (outputs, Alertmanager, webhooks) drive the async reqwest
//!   client with a current-thread runtime of their own, on their own thread, for the same reason.
//!
//! ## Reload: [`Agent::reconfigure`]
//! A new configuration is applied piece by piece, each only if it changed, and nothing measured,
//! spooled or open is lost:
//! 1. jobs to start are built first (sockets, probes): if that fails nothing has changed;
//! 2. outputs: the dispatcher waits while the old set stops (what is queued is spooled) and the
//!    new one starts on the same spool ([`crate::sinks::Sinks::replace`]): a changed output keeps
//!    its pending points, a removed output's stay in the spool (logged), delivered if it returns;
//! 3. incident sinks: delivery restarts with the new set; undelivered events stay in the outbox;
//! 4. rules: the rules thread takes the new configuration between two records
//!    ([`crate::rules::Engine::reconfigure`]): unchanged (rule, target) pairs keep their windows and
//!    open incidents, and an incident whose rule or target was removed is resolved, its timeline
//!    saying why;
//! 5. the scheduler stops the removed and changed jobs (a run in flight is cut short and not
//!    stored, as at a stop) and starts the added and changed ones.
//!
//! The `[agent]` section (name, site, data_dir, the retentions, listen) needs a restart: a
//! configuration that changes it is rejected, naming the key, and the agent keeps running as it
//! was. The agent's [`Status`] follows the reload: its job and rule counts, its stall limit, its
//! outputs, and the latest records of the jobs that remain.
//!
//! ## Health, metrics and the watchdog
//! The dispatcher keeps the latest record of each (probe, target) in the agent's
//! [`Status`] (`crate::status`), which also tells whether the scheduler still starts runs and
//! the store writer is alive. With `[agent] listen` set, [`Agent::start`] serves it over HTTP
//! (`crate::web`: `/healthz`, `/readyz`, `/metrics`); `vantage run` also pings systemd's
//! watchdog while it is live. [`Agent::stall_scheduler_for_test`] stops the scheduler from
//! starting runs, to prove both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use probes::{CancellationToken, IcmpClient};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{Config, ProbeKind};
use crate::incident::IncidentSink;
use crate::incident::outputs::OutputsSink;
use crate::incident::pipeline::{self, Pipeline};
use crate::probe::{Probe, Resources};
use crate::record::Record;
use crate::scheduler::{self, Command, Counters, Identity, Job, JobKey};
use crate::sinks::{DurableWriter, OutputStats, SinkHandle, SinkOptions, Sinks};
use crate::status::{Flow, StatusInner, WriterAlive, stale_after};
pub use crate::status::{Snapshot, Status};
use crate::store::{Store, writer};

mod reload;
pub use reload::{Changes, ReloadReport};

/// Records waiting for the store; probes wait (rather than lose data) only if it fills.
pub const STORE_QUEUE: usize = 16_384;
/// How long the store writer waits for a busy rules engine to take one record before dropping it.
pub const RULES_WAIT: Duration = Duration::from_secs(5);
/// How often the agent logs a one-line summary of what it measured.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// At shutdown, keep delivering spooled points to the outputs for at most this long (what is
/// left stays in the spool for the next start).
pub const SINK_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A running agent. Stop it with [`Agent::stop`]: dropped instead, its tasks end with the runtime
/// and its threads once their inputs close, without draining.
#[derive(Debug)]
pub struct Agent {
    /// The configuration running now (replaced by [`Agent::reconfigure`]).
    config: Arc<Config>,
    stop: CancellationToken,
    counters: Arc<Counters>,
    flow: Arc<Flow>,
    scheduler: JoinHandle<()>,
    /// Jobs added and stopped at reload.
    commands: mpsc::Sender<Command>,
    dispatcher: JoinHandle<()>,
    summaries: JoinHandle<()>,
    writer: std::thread::JoinHandle<anyhow::Result<u64>>,
    /// `None` only while [`Agent::reconfigure`] replaces its sinks.
    incidents: Option<Pipeline>,
    outputs: Option<Sinks>,
    /// The dispatcher's way to the outputs: held while reload replaces them, so none is missed.
    offer_to: OutputsHandle,
    /// The ICMP socket, shared by every ICMP job (opened when the first ICMP probe needs it).
    icmp: Option<IcmpClient>,
    status: Status,
    /// The health and metrics listener: its address, its stop and its task.
    web: Option<(SocketAddr, CancellationToken, JoinHandle<()>)>,
}

/// The outputs' hand-off as the dispatcher sees it; `None` without outputs.
type OutputsHandle = Arc<tokio::sync::Mutex<Option<SinkHandle>>>;

/// What [`Agent::stop`] leaves behind.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub observations: u64,
    pub stored: u64,
    pub rules_dropped: u64,
    /// Each output as it stopped; pending points stay in the spool for the next start.
    pub outputs: Vec<OutputStats>,
}

impl Agent {
    /// Open the store, the outputs' spool and incident state, and start probing. Must be called
    /// inside a tokio runtime. Fails if any of them cannot start: the agent does not run without
    /// its store, its outputs or its incident function (the rules engine and every incident sink).
    pub async fn start(config: Config) -> anyhow::Result<Agent> {
        let config = Arc::new(config);
        let counters = Arc::new(Counters::default());
        let flow = Arc::new(Flow::default());
        let setup = {
            let (config, counters) = (Arc::clone(&config), Arc::clone(&counters));
            tokio::task::spawn_blocking(move || Setup::open(&config, &counters))
                .await
                .context("agent start-up task")??
        };
        let Setup {
            store,
            jobs,
            outputs,
            incidents,
            rules,
            icmp,
        } = setup;

        // scheduler ─▶ dispatch ─▶ (outputs, store); store ─▶ rules.
        let (to_dispatch, from_scheduler) = mpsc::channel(STORE_QUEUE);
        let (to_store, from_dispatch) = mpsc::channel(STORE_QUEUE);
        let store_path = store.path().to_path_buf();
        let writer_alive = Arc::new(AtomicBool::new(true));
        let status = Status(Arc::new(StatusInner {
            agent: config.agent.name.clone(),
            site: config.agent.site.clone(),
            data_dir: config.agent.data_dir.clone(),
            rules: config.rules.len().into(),
            jobs: jobs.len().into(),
            started: Instant::now(),
            counters: Arc::clone(&counters),
            flow: Arc::clone(&flow),
            outputs: Mutex::new(outputs.as_ref().map(Sinks::watch)),
            stale_after: Mutex::new(stale_after(&jobs)),
            writer_alive: Arc::clone(&writer_alive),
            stopping: AtomicBool::new(false),
            config: Mutex::new(Arc::clone(&config)),
            latest: Mutex::new(HashMap::new()),
        }));
        // Bound before anything runs: a port in use fails the start, naming the key.
        let web = match &config.agent.listen {
            Some(listen) => Some(crate::web::start(listen, status.clone()).await?),
            None => None,
        };
        let mut rules_tap = rules_tap(rules, Arc::clone(&flow), RULES_WAIT);
        let alive = WriterAlive(writer_alive);
        let tap: writer::Tap = Box::new(move |batch| {
            let _held_by_the_writer = &alive;
            rules_tap(batch)
        });
        let writer = writer::spawn_with_tap(store, from_dispatch, (&config.agent).into(), tap);
        let offer_to: OutputsHandle =
            Arc::new(tokio::sync::Mutex::new(outputs.as_ref().map(Sinks::handle)));
        let dispatcher = tokio::spawn(dispatch(
            from_scheduler,
            Arc::clone(&offer_to),
            to_store,
            Arc::clone(&flow),
            Some(status.clone()),
        ));

        tracing::info!(
            agent = %config.agent.name,
            site = %config.agent.site,
            probes = config.probes.len(),
            targets = config.targets.len(),
            jobs = jobs.len(),
            store = %store_path.display(),
            "agent started"
        );
        let stop = CancellationToken::new();
        let identity = Identity {
            agent: config.agent.name.clone(),
            site: config.agent.site.clone(),
        };
        let (commands, from_agent) = mpsc::channel(16);
        let scheduler = tokio::spawn(scheduler::run(
            jobs,
            identity,
            to_dispatch,
            Arc::clone(&counters),
            stop.clone(),
            from_agent,
        ));
        let summaries = tokio::spawn(log_summaries(Arc::clone(&counters), Arc::clone(&flow)));
        Ok(Agent {
            config,
            commands,
            offer_to,
            icmp,
            stop,
            counters,
            flow,
            scheduler,
            dispatcher,
            summaries,
            writer,
            incidents: Some(incidents),
            outputs,
            status,
            web,
        })
    }

    /// The agent's counters now. Cheap: atomics only.
    pub fn snapshot(&self) -> Snapshot {
        self.status.snapshot()
    }

    /// A shared view of this agent (health, counters, latest records) that outlives `&self`.
    pub fn status(&self) -> Status {
        self.status.clone()
    }

    /// Where the health and metrics listener listens (the bound port when `listen` gave `:0`).
    pub fn listen_address(&self) -> Option<SocketAddr> {
        self.web.as_ref().map(|(address, _, _)| *address)
    }

    /// Test hook: while `stalled`, the scheduler starts no run (runs in flight finish), so
    /// `/healthz` and the watchdog see a stuck scheduler. `vantage run` of a debug build also
    /// stalls while the file named by `VANTAGE_TEST_STALL_FILE` exists (`crate::cli::agent`).
    pub fn stall_scheduler_for_test(&self, stalled: bool) {
        self.counters.stalled.store(stalled, Ordering::Relaxed);
    }

    /// Apply `new` without a restart (see "Reload" in the module doc) and say what changed.
    /// `new` must be valid ([`Config::load`]). Rejected, with nothing changed, if it changes what
    /// needs a restart (the error names the key) or if its new jobs cannot be built; an output set
    /// or incident sinks that then fail to start are an error, and the previous ones run again.
    pub async fn reconfigure(&mut self, new: Config) -> anyhow::Result<ReloadReport> {
        let keys = reload::needs_restart(&self.config.agent, &new.agent);
        if !keys.is_empty() {
            anyhow::bail!(
                "{} changed: that needs a restart (`systemctl restart vantage`); still running on the previous configuration",
                keys.join(", ")
            );
        }
        let new = Arc::new(new);
        let mut report = ReloadReport::between(&self.config, &new);
        let to_start: std::collections::HashSet<String> = report
            .jobs
            .added
            .iter()
            .chain(&report.jobs.changed)
            .cloned()
            .collect();
        let jobs = self.build_jobs(&new, to_start).await?;
        if !report.outputs.is_empty() {
            self.replace_outputs(&new).await?;
        }
        let outputs_came_or_went = self.config.outputs.is_empty() != new.outputs.is_empty();
        if !report.incident_sinks.is_empty() || outputs_came_or_went {
            self.replace_incident_sinks(&new).await?;
        }
        let stopped: Vec<JobKey> = report
            .jobs
            .removed
            .iter()
            .chain(&report.jobs.changed)
            .filter_map(|key| key.split_once('/'))
            .map(|(probe, target)| (probe.to_string(), target.to_string()))
            .collect();
        self.command(Command::Stop(stopped)).await?;
        let pipeline = self.incidents.as_ref().context("incident pipeline")?;
        report.incidents_resolved = pipeline
            .reconfigure(Arc::clone(&new))
            .await
            .context("the rules engine has stopped")??;
        self.status
            .reconfigured(&new, &reload::job_keys(&new), &jobs);
        self.command(Command::Start(jobs)).await?;
        self.config = new;
        Ok(report)
    }

    /// The jobs of `config` named (`probe/target`) in `wanted`, built off the runtime (sockets).
    async fn build_jobs(
        &mut self,
        config: &Arc<Config>,
        wanted: std::collections::HashSet<String>,
    ) -> anyhow::Result<Vec<Job>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let config = Arc::clone(config);
        let mut icmp = self.icmp.clone();
        let (jobs, icmp) = tokio::task::spawn_blocking(move || {
            let store = Store::open(&config.agent.data_dir)?;
            let jobs = jobs(&config, &store, &mut icmp, |(probe, target)| {
                wanted.contains(&format!("{probe}/{target}"))
            })?;
            anyhow::Ok((jobs, icmp))
        })
        .await
        .context("reload task")?
        .context("cannot start the new probes; still running on the previous configuration")?;
        self.icmp = icmp;
        Ok(jobs)
    }

    /// Replace the outputs while the dispatcher waits (it offers nothing to a stopped set); if the
    /// new set fails to start, start the previous one again.
    async fn replace_outputs(&mut self, new: &Arc<Config>) -> anyhow::Result<()> {
        let mut offer_to = Arc::clone(&self.offer_to).lock_owned().await;
        let old = Arc::clone(&self.config);
        let (running, counters, icmp) = (
            self.outputs.take(),
            Arc::clone(&self.counters),
            self.icmp.clone(),
        );
        let new = Arc::clone(new);
        let (outputs, result) = tokio::task::spawn_blocking(move || {
            let start = |config: &Config, running: Option<Sinks>| -> anyhow::Result<Option<Sinks>> {
                let options = sink_options(config, &counters, icmp.clone());
                match (running, config.outputs.is_empty()) {
                    (Some(sinks), true) => {
                        // Stopped through `replace`, which logs what stays in the spool.
                        sinks.replace(Vec::new(), options)?.shutdown(Duration::ZERO);
                        Ok(None)
                    }
                    (Some(sinks), false) => Ok(Some(sinks.replace(config.outputs.clone(), options)?)),
                    (None, true) => Ok(None),
                    (None, false) => Ok(Some(Sinks::start(&config.agent.data_dir, config.outputs.clone(), options)?)),
                }
            };
            match start(&new, running) {
                Ok(outputs) => (outputs, Ok(())),
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "reload: the new outputs cannot start; starting the previous ones again");
                    let outputs = start(&old, None).unwrap_or_else(|again| {
                        tracing::error!(error = %format!("{again:#}"), "the previous outputs cannot start either: results are stored but not sent until a restart");
                        None
                    });
                    (outputs, Err(error))
                }
            }
        })
        .await
        .context("reload task")?;
        *offer_to = outputs.as_ref().map(Sinks::handle);
        self.status
            .watch_outputs(outputs.as_ref().map(Sinks::watch));
        self.outputs = outputs;
        result.context("the new outputs cannot start; running the previous ones")
    }

    /// Deliver incidents to `new`'s sinks (and to its outputs, if it has any); if they fail to
    /// start, deliver to the previous ones again.
    async fn replace_incident_sinks(&mut self, new: &Arc<Config>) -> anyhow::Result<()> {
        let mut pipeline = self.incidents.take().context("incident pipeline")?;
        let old = Arc::clone(&self.config);
        let new = Arc::clone(new);
        let writer = self
            .outputs
            .as_ref()
            .map(Sinks::durable_writer)
            .transpose()?;
        let (pipeline, result) = tokio::task::spawn_blocking(move || {
            let extra = |writer: Option<DurableWriter>| -> Vec<Box<dyn IncidentSink>> {
                writer.map(|w| Box::new(OutputsSink::new(w)) as Box<dyn IncidentSink>).into_iter().collect()
            };
            let data_dir = &new.agent.data_dir;
            let mut result = pipeline.replace_sinks(&new, data_dir, extra(writer));
            if let Err(error) = &result {
                tracing::error!(error = %format!("{error:#}"), "reload: the new incident sinks cannot start; starting the previous ones again");
                // Without the outputs' writer: it went with the failed start.
                if let Err(again) = pipeline.replace_sinks(&old, data_dir, Vec::new()) {
                    tracing::error!(error = %format!("{again:#}"), "the previous incident sinks cannot start either: incidents wait in the outbox until a restart");
                }
                result = result.context("the new incident sinks cannot start; running the previous ones");
            }
            (pipeline, result)
        })
        .await
        .context("reload task")?;
        self.incidents = Some(pipeline);
        result
    }

    async fn command(&self, command: Command) -> anyhow::Result<()> {
        self.commands
            .send(command)
            .await
            .map_err(|_| anyhow::anyhow!("the scheduler has stopped"))
    }

    /// Stop probing, let the runs in flight finish and hand over what they measured, then drain
    /// in order: the store, the rules engine and incident delivery, the outputs (for at most
    /// [`SINK_SHUTDOWN_GRACE`]; what is left stays in their spool).
    pub async fn stop(self) -> anyhow::Result<Summary> {
        self.status.0.stopping.store(true, Ordering::Relaxed);
        self.stop.cancel();
        self.summaries.abort();
        self.scheduler.await.context("scheduler task")?;
        self.dispatcher.await.context("dispatcher task")?;
        // Every sender is gone now: the writer drains its queue and returns; with it goes the
        // rules engine's feed, so the engine drains and delivery makes its last pass.
        let writer = self.writer;
        let stored = tokio::task::spawn_blocking(move || writer.join())
            .await?
            .map_err(|_| anyhow::anyhow!("store writer panicked"))??;
        if let Some(incidents) = self.incidents {
            tokio::task::spawn_blocking(move || incidents.join()).await?;
        }
        let outputs = match self.outputs {
            Some(sinks) => {
                tokio::task::spawn_blocking(move || sinks.shutdown(SINK_SHUTDOWN_GRACE)).await?
            }
            None => Vec::new(),
        };
        for output in &outputs {
            tracing::info!(output = %output.name, delivered = output.delivered, pending = output.spool_points, dropped = output.dropped(), "output stopped; pending points stay in the spool");
        }
        let summary = Summary {
            observations: self.counters.observations.load(Ordering::Relaxed),
            stored,
            rules_dropped: self.flow.rules_dropped.load(Ordering::Relaxed),
            outputs,
        };
        tracing::info!(
            observations = summary.observations,
            stored,
            rules_dropped = summary.rules_dropped,
            "agent stopped; everything measured is stored"
        );
        // Last: `/readyz` answered "stopping" until now.
        if let Some((_, stop, task)) = self.web {
            stop.cancel();
            let _ = task.await;
        }
        Ok(summary)
    }
}

/// What [`Agent::start`] opens before anything runs (blocking: SQLite files, raw sockets).
struct Setup {
    store: Store,
    jobs: Vec<Job>,
    outputs: Option<Sinks>,
    incidents: Pipeline,
    /// The rules engine's input (fed even without rules: a reload can add some).
    rules: Option<SyncSender<Arc<Record>>>,
    icmp: Option<IcmpClient>,
}

impl Setup {
    fn open(config: &Config, counters: &Arc<Counters>) -> anyhow::Result<Setup> {
        // Private (0700), owned by us and outside system paths, before anything is written in it.
        crate::config::data_dir::prepare(&config.agent.data_dir)?;
        let store = Store::open(&config.agent.data_dir)?;
        let mut icmp = None;
        let jobs = jobs(config, &store, &mut icmp, |_| true)?;
        let outputs = if config.outputs.is_empty() {
            None
        } else {
            Some(Sinks::start(
                &config.agent.data_dir,
                config.outputs.clone(),
                sink_options(config, counters, icmp.clone()),
            )?)
        };
        // Incidents go to the directory, each `[[incident_sink]]` and, as `incident` points, to
        // the outputs. Without rules nothing is evaluated (open incidents still resume or close).
        let mut extra: Vec<Box<dyn IncidentSink>> = Vec::new();
        if let Some(outputs) = &outputs {
            extra.push(Box::new(OutputsSink::new(outputs.durable_writer()?)));
        }
        let (rules, incidents) = pipeline::start(config, &config.agent.data_dir, extra)
            .context("the incident function cannot start, so the agent does not run")?;
        Ok(Setup {
            store,
            jobs,
            outputs,
            incidents,
            rules: Some(rules),
            icmp,
        })
    }
}

/// The outputs' options: who measures, and the agent's own figures for the self-metrics.
fn sink_options(
    config: &Config,
    counters: &Arc<Counters>,
    icmp: Option<IcmpClient>,
) -> SinkOptions {
    let mut options = SinkOptions::new(config.agent.name.clone(), config.agent.site.clone());
    let stats = Arc::clone(counters);
    options.agent_stats = Some(Box::new(move || {
        (
            stats.observations.load(Ordering::Relaxed),
            stats.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }));
    // Forged echo replies (issue 11, item 8), counted in the `agent` self-metrics.
    if let Some(icmp) = icmp {
        options.icmp_rejected_replies = Some(Box::new(move || icmp.rejected_replies()));
    }
    options
}

/// One job per (probe, target) that is `wanted`, with the ICMP socket shared (opened into `icmp`
/// if a probe needs it and it is not open yet) and each trace seeded with the path stored last (so
/// the first trace after a restart or reload can flag a change).
fn jobs(
    config: &Config,
    store: &Store,
    icmp: &mut Option<IcmpClient>,
    wanted: impl Fn(&JobKey) -> bool,
) -> anyhow::Result<Vec<Job>> {
    let needs_icmp = config
        .probes
        .iter()
        .any(|p| matches!(p.kind, ProbeKind::Icmp { .. }));
    if needs_icmp && icmp.is_none() {
        *icmp = Some(IcmpClient::new()?);
    }
    let resources = Resources { icmp: icmp.clone() };
    let traces: Vec<&str> = config
        .probes
        .iter()
        .filter(|p| matches!(&p.kind, ProbeKind::Trace(_)))
        .map(|p| p.name.as_str())
        .collect();
    if !traces.is_empty() && !crate::probe::has_cap_net_raw() {
        tracing::warn!(probes = ?traces, "each run of these trace probes will fail: {}", probes::trace::NEEDS_CAP_NET_RAW);
    }
    let mut path_hashes = match store.latest_path_hashes() {
        Ok(hashes) => hashes,
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "cannot read the last traced paths; the first trace of each target will not flag a change");
            Default::default()
        }
    };
    // By name, once: a linear search per (probe, target) made starting 100,000 targets quadratic.
    let targets: HashMap<&str, &crate::config::Target> = config
        .targets
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut jobs = Vec::new();
    for probe_config in &config.probes {
        for name in &probe_config.targets {
            if !wanted(&(probe_config.name.clone(), name.clone())) {
                continue;
            }
            let target = targets.get(name.as_str()).copied().with_context(|| {
                format!(
                    "probe {:?} names unknown target {name:?}",
                    probe_config.name
                )
            })?;
            let probe = Probe::new(probe_config, target, &resources)?;
            if let Some(hash) = path_hashes.remove(&(probe_config.name.clone(), name.clone())) {
                probe.seed_path_hash(hash);
            }
            jobs.push(Job {
                probe_name: probe_config.name.clone(),
                probe: Arc::new(probe),
                target: Arc::new(target.clone()),
                interval: probe_config.interval,
            });
        }
    }
    Ok(jobs)
}

/// The fan-out of every measured record: offered to the outputs (never waits; drops are counted
/// by the sinks), then handed to the store (waits). Returns when the scheduler is done or the
/// store writer is gone. One shared copy of each record goes to all of them (and on to the
/// rules): a clone per consumer was allocator churn at 10,000 targets.
async fn dispatch(
    mut from_scheduler: mpsc::Receiver<Record>,
    outputs: OutputsHandle,
    store: mpsc::Sender<Arc<Record>>,
    flow: Arc<Flow>,
    status: Option<Status>,
) {
    while let Some(record) = from_scheduler.recv().await {
        let record = Arc::new(record);
        if let Some(status) = &status {
            status.remember(&record);
        }
        if let Some(outputs) = &*outputs.lock().await {
            outputs.offer_shared(Arc::clone(&record));
        }
        if store.send(record).await.is_err() {
            tracing::error!("the store writer is gone: measurements are no longer stored");
            return;
        }
        flow.to_store.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the store writer does with each record once it is stored (a committed batch at a time):
/// count it and, with rules, hand it to the rules engine — waiting up to `wait` ([`RULES_WAIT`])
/// while it is busy, dropping (counted, logged) only when it is stalled. After a drop the writer
/// stops waiting until the engine takes a record again, so a stalled engine costs one wait, not
/// one per record.
fn rules_tap(
    rules: Option<SyncSender<Arc<Record>>>,
    flow: Arc<Flow>,
    wait: Duration,
) -> writer::Tap {
    let mut rules = rules;
    let mut patient = true;
    Box::new(move |batch: &mut dyn Iterator<Item = Arc<Record>>| {
        for record in batch {
            flow.stored.fetch_add(1, Ordering::Relaxed);
            let Some(sender) = &rules else {
                continue;
            };
            let deadline = Instant::now() + wait;
            let mut record = record;
            let mut waited = false;
            loop {
                match sender.try_send(record) {
                    Ok(()) => {
                        flow.to_rules.fetch_add(1, Ordering::Relaxed);
                        patient = true;
                        break;
                    }
                    Err(TrySendError::Full(back)) if patient && Instant::now() < deadline => {
                        if !waited {
                            waited = true;
                            flow.rules_waits.fetch_add(1, Ordering::Relaxed);
                        }
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(TrySendError::Full(_)) => {
                        patient = false;
                        let dropped = flow.rules_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                        if dropped.is_power_of_two() {
                            tracing::error!(
                                dropped,
                                ?wait,
                                "rules engine stalled: stored observations NOT evaluated"
                            );
                        }
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        // The engine has stopped (it logged why); stop offering.
                        rules = None;
                        break;
                    }
                }
            }
        }
    })
}

async fn log_summaries(counters: Arc<Counters>, flow: Arc<Flow>) {
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.tick().await;
    let (mut last_observations, mut last_failures) = (0, 0);
    loop {
        tick.tick().await;
        let observations = counters.observations.load(Ordering::Relaxed);
        let failures = counters.failures.load(Ordering::Relaxed);
        tracing::info!(
            observations = observations - last_observations,
            failures = failures - last_failures,
            skipped_ticks = counters.skipped_ticks.load(Ordering::Relaxed),
            deadline_exceeded = counters.deadline_exceeded.load(Ordering::Relaxed),
            max_lag_ms = counters.max_lag_us.swap(0, Ordering::Relaxed) as f64 / 1000.0,
            rules_waits = flow.rules_waits.load(Ordering::Relaxed),
            rules_dropped = flow.rules_dropped.load(Ordering::Relaxed),
            "last minute"
        );
        (last_observations, last_failures) = (observations, failures);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use probes::{FailureKind, Measurement, Observation, Outcome, PingStats};

    use super::*;

    fn record(n: u64) -> Record {
        Record {
            agent: "a".into(),
            site: "s".into(),
            probe: "p".into(),
            target: format!("t{n}"),
            target_site: "s".into(),
            address: None,
            observation: Observation {
                started_at: std::time::SystemTime::now(),
                duration: Duration::ZERO,
                outcome: Outcome::failure(FailureKind::Timeout, "no reply"),
                measurement: Measurement::Ping(PingStats::from_rtts(vec![None])),
            },
        }
    }

    #[test]
    fn a_busy_rules_engine_slows_the_store_writer_and_loses_nothing() {
        let (tx, rx) = sync_channel(1);
        let flow = Arc::new(Flow::default());
        let mut tap = rules_tap(Some(tx), Arc::clone(&flow), Duration::from_secs(5));
        // The engine takes one record every 20 ms; the writer offers 10 at once.
        let engine = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Ok(record) = rx.recv() {
                seen.push(record.target.clone());
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        for n in 0..10 {
            tap(&mut std::iter::once(Arc::new(record(n))));
        }
        drop(tap);
        let seen = engine.join().expect("engine thread");
        assert_eq!(seen, (0..10).map(|n| format!("t{n}")).collect::<Vec<_>>());
        assert_eq!(flow.stored.load(Ordering::Relaxed), 10);
        assert_eq!(flow.to_rules.load(Ordering::Relaxed), 10);
        assert_eq!(flow.rules_dropped.load(Ordering::Relaxed), 0);
        assert!(
            flow.rules_waits.load(Ordering::Relaxed) > 0,
            "the writer waited"
        );
    }

    #[test]
    fn a_stalled_rules_engine_costs_one_wait_and_every_drop_is_counted() {
        let (tx, _stalled) = sync_channel(1);
        let flow = Arc::new(Flow::default());
        let wait = Duration::from_millis(200);
        let mut tap = rules_tap(Some(tx), Arc::clone(&flow), wait);
        let start = Instant::now();
        tap(&mut (0..50).map(|n| Arc::new(record(n))));
        let took = start.elapsed();
        // One record queued, the second waited `wait` and was dropped, the rest dropped at once.
        assert_eq!(flow.to_rules.load(Ordering::Relaxed), 1);
        assert_eq!(flow.rules_dropped.load(Ordering::Relaxed), 49);
        assert_eq!(flow.stored.load(Ordering::Relaxed), 50);
        assert!(took >= wait && took < wait * 5, "{took:?}");
    }

    #[test]
    fn without_rules_stored_records_are_only_counted() {
        let flow = Arc::new(Flow::default());
        let mut tap = rules_tap(None, Arc::clone(&flow), RULES_WAIT);
        tap(&mut std::iter::once(Arc::new(record(0))));
        assert_eq!(flow.stored.load(Ordering::Relaxed), 1);
        assert_eq!(flow.to_rules.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_dispatcher_offers_every_record_to_the_outputs_and_still_stores_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Nothing listens on the discard port of loopback: the output is down, the spool keeps all.
        let output =
            crate::config::OutputConfig::influxdb_v2("down", "http://127.0.0.1:9", "o", "b", None);
        let mut options = SinkOptions::new("a", "s");
        options.self_metrics_every = None;
        let sinks = Sinks::start(dir.path(), vec![output], options).expect("start");
        let (tx, rx) = mpsc::channel(4);
        let (store_tx, mut store_rx) = mpsc::channel(100);
        let flow = Arc::new(Flow::default());
        let tee = tokio::spawn(dispatch(
            rx,
            Arc::new(tokio::sync::Mutex::new(Some(sinks.handle()))),
            store_tx,
            Arc::clone(&flow),
            None,
        ));
        for i in 0..20 {
            tx.send(record(i)).await.expect("send");
        }
        drop(tx);
        tee.await.expect("tee");
        let mut stored = 0;
        while store_rx.recv().await.is_some() {
            stored += 1;
        }
        assert_eq!(stored, 20);
        assert_eq!(flow.to_store.load(Ordering::Relaxed), 20);
        let stats = tokio::task::spawn_blocking(move || sinks.shutdown(Duration::ZERO))
            .await
            .expect("shutdown")
            .remove(0);
        assert_eq!(
            (stats.accepted, stats.spool_points, stats.delivered),
            (20, 20, 0)
        );
        let totals = &crate::sinks::Spool::open(dir.path())
            .expect("spool")
            .totals()
            .expect("totals")[0];
        assert_eq!((totals.accepted, totals.pending_points), (20, 20));
    }
}
