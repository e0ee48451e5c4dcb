//! The agent's incident pipeline: stored observations → rules engine → [`Manager`] (incident
//! state + outbox, in one transaction) → [`Deliverer`] → sinks. One thread evaluates (fed by a
//! bounded channel from the store writer, ticking once a second for durations and status
//! updates); each sink is delivered to by a thread of its own, so a slow or dead sink delays
//! neither evaluation nor the other sinks.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use super::alertmanager::AlertmanagerSink;
use super::outbox::Deliverer;
use super::webhook::WebhookSink;
use super::{DIRECTORY, DirectorySink, IncidentDb, IncidentSink, Manager, TraceDiagnostics};
use crate::config::{Config, IncidentSinkKind};
use crate::record::Record;
use crate::rules::Engine;
use crate::store::Store;

/// Observations waiting for the rules engine.
pub const RULES_QUEUE: usize = 16_384;
/// How often durations are re-evaluated without new observations.
pub const TICK: Duration = Duration::from_secs(1);
/// How often the outbox is checked for events to deliver.
pub const DELIVERY_POLL: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Pipeline {
    rules: JoinHandle<()>,
    delivery: JoinHandle<()>,
    stop_delivery: Arc<AtomicBool>,
}

/// Start evaluating and delivering, once the incident state is open, every sink is built and
/// every sink's outbox is open: if any of them cannot start, stop what started and return why (the
/// agent does not run without its incident function). Blocks while opening (SQLite files); call
/// it from a blocking context. `extra` sinks are delivered to besides the directory. Feed the
/// returned sender with stored records; drop it to stop, then [`Pipeline::join`].
pub fn start(
    config: &Config,
    data_dir: &Path,
    extra: Vec<Box<dyn IncidentSink>>,
) -> anyhow::Result<(SyncSender<Record>, Pipeline)> {
    // The sinks are built on the delivery thread (HTTP sinks own a runtime); their names are
    // registered first, on the rules thread, before any event can be queued.
    let mut names = vec![super::directory::NAME.to_string()];
    names.extend(config.incident_sinks.iter().map(|s| s.name.clone()));
    names.extend(extra.iter().map(|s| s.name().to_string()));
    let (tx, rx) = sync_channel(RULES_QUEUE);
    let origin = Instant::now();
    let rules_config = config.clone();
    let rules_dir = data_dir.to_path_buf();
    // Each thread says whether it could open its state before it runs; they start one after the
    // other so that they never open the same SQLite files at once.
    let (ready_tx, ready) = channel::<anyhow::Result<()>>();
    let rules_ready = ready_tx.clone();
    let rules = std::thread::Builder::new()
        .name("rules".into())
        .spawn(
            move || match prepare(&rules_config, &rules_dir, origin, &names) {
                Ok((engine, manager)) => {
                    let _ = rules_ready.send(Ok(()));
                    drop(rules_ready);
                    evaluate_loop(engine, manager, rx, origin);
                }
                Err(error) => {
                    let _ = rules_ready.send(Err(error.context("cannot open incident state")));
                }
            },
        )?;
    let started = |ready: &Receiver<anyhow::Result<()>>| {
        ready
            .recv()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("an incident thread died while starting")))
    };
    let stop_delivery = Arc::new(AtomicBool::new(false));
    if let Err(error) = started(&ready) {
        drop(tx);
        let _ = rules.join();
        return Err(error);
    }
    let stop = Arc::clone(&stop_delivery);
    let delivery_dir = data_dir.to_path_buf();
    let delivery_config = config.clone();
    let delivery = std::thread::Builder::new()
        .name("incident-outbox".into())
        .spawn(move || {
            let deliverers = match deliverers(&delivery_config, &delivery_dir, extra) {
                Ok(deliverers) => deliverers,
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            drop(ready_tx);
            // One thread per sink: a sink that hangs until its timeout delays only itself.
            std::thread::scope(|scope| {
                for deliverer in deliverers {
                    let stop = &stop;
                    scope.spawn(move || {
                        deliverer.run(DELIVERY_POLL, || stop.load(Ordering::Relaxed));
                    });
                }
            });
        })?;
    let pipeline = Pipeline {
        rules,
        delivery,
        stop_delivery,
    };
    if let Err(error) = started(&ready) {
        drop(tx);
        pipeline.join();
        return Err(error);
    }
    Ok((tx, pipeline))
}

/// A deliverer (its own outbox connection) for each incident sink: the directory, each
/// `[[incident_sink]]`, then `extra`.
fn deliverers(
    config: &Config,
    data_dir: &Path,
    extra: Vec<Box<dyn IncidentSink>>,
) -> anyhow::Result<Vec<Deliverer>> {
    let mut all = sinks(config, data_dir).context("cannot start the incident sinks")?;
    all.extend(extra);
    all.into_iter()
        .map(|sink| {
            let name = sink.name().to_string();
            IncidentDb::open(data_dir)
                .and_then(|db| Deliverer::new(db, vec![sink]))
                .with_context(|| format!("cannot open the incident outbox for the sink {name:?}"))
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
    let mut manager = Manager::new(db, Some(store), config, diagnostics);
    let resumed = manager.resume(&mut engine, origin.elapsed(), SystemTime::now())?;
    tracing::info!(rules = config.rules.len(), resumed, "rules engine started");
    Ok((engine, manager))
}

impl Pipeline {
    /// Wait for the rules thread to drain its queue (its sender must be gone), then let the
    /// deliverer make one last pass.
    pub fn join(self) {
        if self.rules.join().is_err() {
            tracing::error!("rules thread panicked");
        }
        self.stop_delivery.store(true, Ordering::Relaxed);
        if self.delivery.join().is_err() {
            tracing::error!("incident outbox thread panicked");
        }
    }
}

fn evaluate_loop(mut engine: Engine, mut manager: Manager, rx: Receiver<Record>, origin: Instant) {
    let mut last_tick = Instant::now();
    loop {
        let transitions = match rx.recv_timeout(TICK) {
            Ok(record) => {
                if let Err(error) = manager.path_changed(&record, SystemTime::now()) {
                    tracing::error!(error = %format!("{error:#}"), "cannot note a path change in its incident");
                }
                engine.observe(origin.elapsed(), &record)
            }
            Err(RecvTimeoutError::Timeout) => Vec::new(),
            Err(RecvTimeoutError::Disconnected) => return,
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
            // The engine has moved on; the incident state is unchanged and the next transition
            // of this key will find it as it was.
            tracing::error!(key = %transition.key, kind = transition.kind.as_str(), error = %format!("{error:#}"), "cannot record incident transition");
        }
    }
}
