//! `vantage run`: the agent's main job.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use probes::{CancellationToken, IcmpClient};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{Config, ProbeKind};
use crate::incident::outputs::OutputsSink;
use crate::incident::{IncidentSink, pipeline};
use crate::probe::{Probe, Resources};
use crate::scheduler::{self, Counters, Identity, Job};
use crate::sinks::{OutputConfig, SinkOptions, Sinks};
use crate::store::{Store, writer};

/// Records waiting for the store; probes wait (rather than lose data) only if it fills.
const STORE_QUEUE: usize = 16_384;
/// How often the agent logs a one-line summary of what it measured.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// At shutdown, keep delivering spooled points to the outputs for at most this long (what is
/// left stays in the spool for the next start).
const SINK_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: not starting; fix the config (`vantage check --config {}`)",
                path.display(),
                path.display()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let store = Store::open(&config.agent.data_dir)?;
    let outputs = config.outputs.clone();
    super::runtime()?.block_on(agent(config, store, outputs))?;
    Ok(ExitCode::SUCCESS)
}

async fn agent(config: Config, store: Store, outputs: Vec<OutputConfig>) -> anyhow::Result<()> {
    let needs_icmp = config
        .probes
        .iter()
        .any(|p| matches!(p.kind, ProbeKind::Icmp { .. }));
    let resources = Resources {
        icmp: if needs_icmp {
            Some(IcmpClient::new()?)
        } else {
            None
        },
    };

    let traces: Vec<&str> = config
        .probes
        .iter()
        .filter(|p| matches!(&p.kind, ProbeKind::Trace(_)))
        .map(|p| p.name.as_str())
        .collect();
    if !traces.is_empty() && !crate::probe::has_cap_net_raw() {
        tracing::warn!(probes = ?traces, "each run of these trace probes will fail: {}", probes::trace::NEEDS_CAP_NET_RAW);
    }
    // Trace probes compare each path with the previous one; after a restart, the stored one.
    let mut path_hashes = match store.latest_path_hashes() {
        Ok(hashes) => hashes,
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "cannot read the last traced paths; the first trace of each target will not flag a change");
            Default::default()
        }
    };
    let mut jobs = Vec::new();
    for probe_config in &config.probes {
        for name in &probe_config.targets {
            let target = config.target(name).with_context(|| {
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

    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::channel(STORE_QUEUE);
    let store_path = store.path().to_path_buf();
    // With outputs configured, a tee offers every record to them (never blocking) before
    // the store gets it; the scheduler then sends to the tee instead of the store.
    let sinks = if outputs.is_empty() {
        None
    } else {
        let mut options = SinkOptions::new(config.agent.name.clone(), config.agent.site.clone());
        let stats = Arc::clone(&counters);
        options.agent_stats = Some(Box::new(move || {
            (
                stats.observations.load(Ordering::Relaxed),
                stats.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0,
            )
        }));
        Some(Sinks::start(&config.agent.data_dir, outputs, options)?)
    };
    // Stored observations flow on to the rules engine; incidents go out through the outbox, to
    // the directory and, as `incident` points, to the outputs. Without rules nothing is evaluated
    // (the pipeline still resumes or closes open incidents).
    let mut incident_sinks: Vec<Box<dyn IncidentSink>> = Vec::new();
    if let Some(sinks) = &sinks {
        incident_sinks.push(Box::new(OutputsSink::new(sinks.durable_writer()?)));
    }
    let (rules_tx, incidents) = pipeline::start(&config, &config.agent.data_dir, incident_sinks)?;
    let tap = (!config.rules.is_empty()).then_some(rules_tx);
    let writer = writer::spawn_with_tap(store, rx, config.agent.retention, tap);
    let (tx, tee) = match &sinks {
        Some(sinks) => {
            let (to_tee, from_scheduler) = mpsc::channel(STORE_QUEUE);
            let tee = tokio::spawn(crate::sinks::forward(from_scheduler, sinks.handle(), tx));
            (to_tee, Some(tee))
        }
        None => (tx, None),
    };
    tracing::info!(
        agent = %config.agent.name,
        site = %config.agent.site,
        probes = config.probes.len(),
        targets = config.targets.len(),
        jobs = jobs.len(),
        store = %store_path.display(),
        "agent started"
    );

    let identity = Identity {
        agent: config.agent.name.clone(),
        site: config.agent.site.clone(),
    };
    let scheduler = tokio::spawn(scheduler::run(
        jobs,
        identity,
        tx,
        Arc::clone(&counters),
        stop.clone(),
    ));
    let summary = tokio::spawn(log_summaries(Arc::clone(&counters)));

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping after in-flight runs"),
        _ = interrupt.recv() => tracing::info!("SIGINT: stopping after in-flight runs"),
    }
    stop.cancel();
    summary.abort();
    scheduler.await.context("scheduler task")?;
    if let Some(tee) = tee {
        tee.await.context("sink tee task")?;
    }
    // Every sender is gone now; the writer drains the queue and returns.
    let stored = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("store writer panicked"))??;
    // The writer is gone, and with it the rules engine's feed: let it finish and deliver.
    tokio::task::spawn_blocking(move || incidents.join()).await?;
    if let Some(sinks) = sinks {
        let stats =
            tokio::task::spawn_blocking(move || sinks.shutdown(SINK_SHUTDOWN_GRACE)).await?;
        for output in stats {
            tracing::info!(output = %output.name, delivered = output.delivered, pending = output.spool_points, dropped = output.dropped(), "output stopped; pending points stay in the spool");
        }
    }
    tracing::info!(
        observations = counters.observations.load(Ordering::Relaxed),
        stored,
        "agent stopped; everything measured is stored"
    );
    Ok(())
}

async fn log_summaries(counters: Arc<Counters>) {
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
            "last minute"
        );
        (last_observations, last_failures) = (observations, failures);
    }
}
