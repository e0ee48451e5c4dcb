//! The agent's incident pipeline: stored observations → rules engine → [`Manager`] (incident
//! state + outbox, in one transaction) → [`Deliverer`] → sinks. One thread evaluates (fed by a
//! bounded channel from the store writer, ticking once a second for durations and status
//! updates); each sink is delivered to by a thread of its own, so a slow or dead sink delays
//! neither evaluation nor the other sinks.
//!
//! Reload: [`Pipeline::reconfigure`] hands the rules thread a new configuration between two
//! records ([`Manager::reconfigure`]); [`Pipeline::replace_sinks`] restarts delivery with a new
//! set of sinks (a removed sink's undelivered events stay in the outbox, delivered if it returns).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use super::alertmanager::AlertmanagerSink;
use super::outbox::Deliverer;
use super::webhook::WebhookSink;
use super::{
    DIRECTORY, DirectorySink, FleetLookup, IncidentDb, IncidentSink, Manager, TraceDiagnostics,
};
use crate::config::{Config, IncidentSinkKind};
use crate::record::Record;
use crate::rules::Engine;
use crate::store::Store;

/// Observations waiting for the rules engine.
pub const RULES_QUEUE: usize = 16_384;
/// What the rules queue holds: the agent's one shared copy of a record. `sync_channel` allocates
/// all of its slots up front, so a slot must be small: 16,384 whole `Record`s took 6.8 MB.
pub type Queued = Arc<Record>;
/// How often durations are re-evaluated without new observations.
pub const TICK: Duration = Duration::from_secs(1);
/// How often the outbox is checked for events to deliver.
pub const DELIVERY_POLL: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Pipeline {
    rules: JoinHandle<()>,
    /// None only after a failed [`Pipeline::replace_sinks`] (events wait in the outbox).
    delivery: Option<JoinHandle<()>>,
    stop_delivery: Arc<AtomicBool>,
    control: Sender<Reload>,
}

/// A new configuration for the rules thread, and where to say what it resolved.
struct Reload {
    config: Arc<Config>,
    reply: tokio::sync::oneshot::Sender<anyhow::Result<Vec<String>>>,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload").finish_non_exhaustive()
    }
}

/// Start evaluating and delivering. Incident state is created and opened, and the rules engine
/// resumed, here on the caller's thread, and the delivery thread reports back once every sink is
/// ready: an agent that cannot open incidents does not start (the error says why). `extra` sinks
/// are delivered to besides the directory. Feed the returned sender with stored records; drop it
/// to stop, then [`Pipeline::join`].
pub fn start(
    config: &Config,
    data_dir: &Path,
    extra: Vec<Box<dyn IncidentSink>>,
) -> anyhow::Result<(SyncSender<Queued>, Pipeline)> {
    // The sinks are built on the delivery thread (HTTP sinks own a runtime); their names are
    // registered first, before any event can be queued.
    let names = sink_names(config, &extra);
    let origin = Instant::now();
    // Creates incidents.db and its tables once, before any thread opens it: threads creating a
    // new file at once failed with "database is locked".
    let (engine, manager) = prepare(config, data_dir, origin, &names)
        .context("cannot open incident state: the agent does not run without its incidents")?;
    let (tx, rx) = sync_channel(RULES_QUEUE);
    let (control, reloads) = std::sync::mpsc::channel();
    let rules = std::thread::Builder::new()
        .name("rules".into())
        .spawn(move || evaluate_loop(engine, manager, rx, reloads, origin))?;
    match spawn_delivery(config, data_dir, extra) {
        Ok((delivery, stop_delivery)) => Ok((
            tx,
            Pipeline {
                rules,
                delivery: Some(delivery),
                stop_delivery,
                control,
            },
        )),
        Err(error) => {
            drop(tx);
            if rules.join().is_err() {
                tracing::error!("rules thread panicked");
            }
            Err(error
                .context("cannot start the incident sinks: the agent does not run without them"))
        }
    }
}

/// Start the delivery thread (a thread per sink under it); returns once every sink is ready,
/// with the flag that stops it.
fn spawn_delivery(
    config: &Config,
    data_dir: &Path,
    extra: Vec<Box<dyn IncidentSink>>,
) -> anyhow::Result<(JoinHandle<()>, Arc<AtomicBool>)> {
    let stop_delivery = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&stop_delivery);
    let delivery_dir = data_dir.to_path_buf();
    let delivery_config = config.clone();
    let (ready_tx, ready) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let delivery = std::thread::Builder::new()
        .name("incident-outbox".into())
        .spawn(move || {
            let deliverers = match deliverers(&delivery_config, &delivery_dir, extra) {
                Ok(deliverers) => {
                    let _ = ready_tx.send(Ok(()));
                    deliverers
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            // One thread per sink: a sink that hangs until its timeout delays only itself.
            std::thread::scope(|scope| {
                for deliverer in deliverers {
                    let stop = &stop;
                    scope.spawn(move || {
                        deliverer.run(DELIVERY_POLL, || stop.load(Ordering::Relaxed))
                    });
                }
            });
        })?;
    match ready.recv() {
        Ok(Ok(())) => Ok((delivery, stop_delivery)),
        failed => {
            if delivery.join().is_err() {
                tracing::error!("incident outbox thread panicked");
            }
            Err(match failed {
                Ok(Err(error)) => error,
                _ => anyhow::anyhow!("the incident outbox thread ended while starting"),
            })
        }
    }
}

/// The names of the sinks `config` and `extra` deliver to, the directory first.
fn sink_names(config: &Config, extra: &[Box<dyn IncidentSink>]) -> Vec<String> {
    let mut names = vec![super::directory::NAME.to_string()];
    names.extend(config.incident_sinks.iter().map(|s| s.name.clone()));
    names.extend(extra.iter().map(|s| s.name().to_string()));
    names
}

/// A deliverer per sink (the directory, each `[[incident_sink]]`, then `extra`), each with its
/// own connection to the outbox.
pub fn deliverers(
    config: &Config,
    data_dir: &Path,
    extra: Vec<Box<dyn IncidentSink>>,
) -> anyhow::Result<Vec<Deliverer>> {
    let mut all = sinks(config, data_dir)?;
    all.extend(extra);
    all.into_iter()
        .map(|sink| {
            let name = sink.name().to_string();
            IncidentDb::open_existing(data_dir)
                .and_then(|db| Deliverer::new(db, vec![sink]))
                .with_context(|| format!("incident sink {name}: cannot open the outbox"))
        })
        .collect()
}

/// The incident sinks of this agent: the directory, then each `[[incident_sink]]`.
fn sinks(config: &Config, data_dir: &Path) -> anyhow::Result<Vec<Box<dyn IncidentSink>>> {
    // Alerts and webhooks tell where the draft is: a path that is absolute, wherever the agent runs.
    let drafts = std::path::absolute(data_dir.join(DIRECTORY))?;
    let mut sinks: Vec<Box<dyn IncidentSink>> = vec![Box::new(DirectorySink::new(drafts.clone()))];
    for sink in &config.incident_sinks {
        sinks.push(match &sink.kind {
            IncidentSinkKind::Alertmanager { labels, resend } => Box::new(AlertmanagerSink::new(
                sink,
                labels.clone(),
                *resend,
                drafts.clone(),
            )?),
            IncidentSinkKind::Webhook => Box::new(WebhookSink::new(sink, drafts.clone())?),
        });
    }
    Ok(sinks)
}

/// Open incident state and resume what was open. The sinks are registered here, before any event
/// can be queued, so that a sink never misses an event of this run.
fn prepare(
    config: &Config,
    data_dir: &Path,
    origin: Instant,
    sinks: &[String],
) -> anyhow::Result<(Engine, Manager)> {
    let mut engine = Engine::new(config);
    let db = IncidentDb::open(data_dir)?;
    for sink in sinks {
        db.register_sink(sink)?;
    }
    let store = Store::open(data_dir)?;
    let diagnostics = Box::new(TraceDiagnostics::new(config));
    let mut manager =
        Manager::new(db, Some(store), config, diagnostics).with_fleet(FleetLookup::new(config)?);
    let resumed = manager.resume(&mut engine, origin.elapsed(), SystemTime::now())?;
    tracing::info!(rules = config.rules.len(), resumed, "rules engine started");
    Ok((engine, manager))
}

impl Pipeline {
    /// Hand the rules thread a new configuration (it takes it between two records, within a
    /// [`TICK`]); the answer is the ids of the incidents it resolved.
    pub fn reconfigure(
        &self,
        config: Arc<Config>,
    ) -> tokio::sync::oneshot::Receiver<anyhow::Result<Vec<String>>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        // A rules thread that is gone drops `reply`: the caller hears of it.
        let _ = self.control.send(Reload { config, reply });
        answer
    }

    /// Deliver to `config`'s incident sinks and `extra` from now on: the running deliverers make
    /// their last pass and stop, the new sinks are registered (they get every event from now on),
    /// and delivery starts again. Blocks (a last pass waits for slow sinks up to their timeout).
    pub fn replace_sinks(
        &mut self,
        config: &Config,
        data_dir: &Path,
        extra: Vec<Box<dyn IncidentSink>>,
    ) -> anyhow::Result<()> {
        let db = IncidentDb::open_existing(data_dir)?;
        for name in sink_names(config, &extra) {
            db.register_sink(&name)?;
        }
        self.stop_delivery.store(true, Ordering::Relaxed);
        if let Some(delivery) = self.delivery.take()
            && delivery.join().is_err()
        {
            tracing::error!("incident outbox thread panicked");
        }
        let (delivery, stop_delivery) = spawn_delivery(config, data_dir, extra)?;
        self.delivery = Some(delivery);
        self.stop_delivery = stop_delivery;
        Ok(())
    }

    /// Wait for the rules thread to drain its queue (its sender must be gone), then let the
    /// deliverer make one last pass.
    pub fn join(self) {
        drop(self.control);
        if self.rules.join().is_err() {
            tracing::error!("rules thread panicked");
        }
        self.stop_delivery.store(true, Ordering::Relaxed);
        if let Some(delivery) = self.delivery
            && delivery.join().is_err()
        {
            tracing::error!("incident outbox thread panicked");
        }
    }
}

fn evaluate_loop(
    mut engine: Engine,
    mut manager: Manager,
    rx: Receiver<Queued>,
    reloads: Receiver<Reload>,
    origin: Instant,
) {
    let mut last_tick = Instant::now();
    loop {
        while let Ok(Reload { config, reply }) = reloads.try_recv() {
            let diagnostics = Box::new(TraceDiagnostics::new(&config));
            let resolved =
                manager.reconfigure(&mut engine, &config, diagnostics, SystemTime::now());
            let _ = reply.send(resolved);
        }
        let transitions = match rx.recv_timeout(TICK) {
            Ok(record) => {
                if let Err(error) = manager.path_changed(&record, SystemTime::now()) {
                    tracing::error!(error = %format!("{error:#}"), "cannot note a path change in its incident");
                }
                engine.observe(origin.elapsed(), &record)
            }
            Err(RecvTimeoutError::Timeout) => Vec::new(),
            Err(RecvTimeoutError::Disconnected) => {
                manager.stop(SystemTime::now());
                return;
            }
        };
        apply(&mut manager, &transitions);
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            let now = origin.elapsed();
            let transitions = engine.tick(now);
            apply(&mut manager, &transitions);
            if let Err(error) = manager.tick(now, SystemTime::now()) {
                tracing::error!(error = %format!("{error:#}"), "cannot draft status updates");
            }
        }
    }
}

fn apply(manager: &mut Manager, transitions: &[crate::rules::Transition]) {
    for transition in transitions {
        if let Err(error) = manager.apply(transition, SystemTime::now()) {
            tracing::error!(key = %transition.key, kind = transition.kind.as_str(), error = %format!("{error:#}"), "cannot record incident transition");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "[agent]\nname = \"agent-1\"\nsite = \"scl3\"\n\
             [[target]]\nname = \"lo\"\nhost = \"127.0.0.1\"\n\
             [[probe]]\nname = \"ping\"\nkind = \"icmp\"\ninterval = \"5s\"\n\
             [[rule]]\nname = \"loss\"\nkind = \"loss\"\nabove_pct = 20\nclear_below_pct = 5\n",
            Path::new("vantage.toml"),
        )
        .expect("valid config")
    }

    /// Issue 11: 2 of 100 fresh starts lost the rules or a sink ("database is locked" while the
    /// threads created incidents.db at once), and the agent ran on without them. Every fresh start
    /// must come up whole, and say so by returning.
    #[test]
    fn fresh_starts_come_up_with_rules_and_every_sink() {
        let config = config();
        for _ in 0..12 {
            let dir = tempfile::tempdir().expect("tempdir");
            let (tx, pipeline) = start(&config, dir.path(), Vec::new()).expect("started");
            let db = IncidentDb::open_existing(dir.path()).expect("incidents.db");
            assert!(db.pending(super::super::directory::NAME, 0, 1).is_ok());
            drop(tx);
            pipeline.join();
        }
    }

    /// Issue 15: `sync_channel` allocates every slot of its bound at start; with whole records
    /// in them the rules queue alone held 6.8 MB of memory before the first record.
    #[test]
    fn the_rules_queue_allocates_pointers_not_records() {
        fn slot_bytes<T>(_: &SyncSender<T>) -> usize {
            size_of::<T>()
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, pipeline) = start(&config(), dir.path(), Vec::new()).expect("started");
        let bytes = slot_bytes(&tx) * RULES_QUEUE;
        assert!(bytes <= 256 << 10, "{bytes} bytes of slots");
        drop(tx);
        pipeline.join();
    }

    /// Incident state that cannot be opened stops the agent at start, naming the file.
    #[test]
    fn incident_state_that_cannot_be_opened_is_an_error_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_a_dir = dir.path().join("data");
        std::fs::write(&not_a_dir, "a file where the data directory should be").expect("write");
        let error = start(&config(), &not_a_dir, Vec::new()).expect_err("cannot start");
        let text = format!("{error:#}");
        assert!(
            text.contains("the agent does not run without its incidents")
                && text.contains(&not_a_dir.display().to_string()),
            "{text}"
        );
    }
}
