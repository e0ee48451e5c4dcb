//! `/metrics`: the agent in the Prometheus text format (OpenMetrics, via `prometheus-client`),
//! so a Prometheus shop can use vantage without InfluxDB, as it uses smokeping_prober. Every
//! series carries the stores' tags: `agent` and `site`; per target also `probe`, `target` and
//! `target_site`; per output `output`. The README's "Health and metrics" lists the names.
//!
//! A scrape builds a fresh registry from the agent's counters and the latest record of each
//! (probe, target) ([`crate::status::Status::latest`]), so a removed target disappears at once.
//! Units are Prometheus's (seconds, ratios); the stores keep milliseconds and percent.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use probes::Measurement;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AppState;
use crate::record::Record;
use crate::status::{Snapshot, Status};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
type GaugeF = Gauge<f64, AtomicU64>;

/// What a scrape reads from disk (the spool's oldest point, the open incidents); `None` where
/// it could not be read (logged; the series is left out rather than shown wrong).
#[derive(Debug, Default)]
pub struct DiskFacts {
    /// Per output: Unix ns of the oldest point waiting (absent: nothing waits).
    pub oldest_pending_ns: HashMap<String, i64>,
    pub incidents_open: Option<usize>,
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let status = state.status.clone();
    let disk = tokio::task::spawn_blocking(move || read_disk(&status))
        .await
        .unwrap_or_default();
    let text = render(&state.status, &state.status.snapshot(), &disk);
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "/metrics: cannot encode");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn read_disk(status: &Status) -> DiskFacts {
    let mut facts = DiskFacts::default();
    match crate::sinks::Spool::open_read_only(status.data_dir()).and_then(|spool| match spool {
        Some(spool) => spool.totals(),
        None => Ok(Vec::new()),
    }) {
        Ok(totals) => {
            for output in totals {
                if let Some(ts) = output.oldest_pending_ts_ns {
                    facts.oldest_pending_ns.insert(output.name, ts);
                }
            }
        }
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "/metrics: cannot read the spool")
        }
    }
    match crate::incident::IncidentDb::open_existing(status.data_dir())
        .and_then(|db| db.open_incidents())
    {
        Ok(open) => facts.incidents_open = Some(open.len()),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "/metrics: cannot read the open incidents")
        }
    }
    facts
}

/// The exposition text for this agent now.
pub fn render(
    status: &Status,
    snapshot: &Snapshot,
    disk: &DiskFacts,
) -> Result<String, std::fmt::Error> {
    let identity = [
        (
            Cow::Borrowed("agent"),
            Cow::Owned(status.agent().to_string()),
        ),
        (Cow::Borrowed("site"), Cow::Owned(status.site().to_string())),
    ];
    let mut registry = Registry::with_prefix_and_labels("vantage", identity.into_iter());
    let mut counter = |name: &str, help: &str, value: u64| {
        let metric = Counter::<u64>::default();
        metric.inc_by(value);
        registry.register(name, help, metric);
    };
    counter(
        "observations",
        "Runs measured since the agent started",
        snapshot.observations,
    );
    counter(
        "failures",
        "Runs that failed (no reply, error, deadline)",
        snapshot.failures,
    );
    counter(
        "skipped_ticks",
        "Scheduled runs skipped because the previous one was late",
        snapshot.skipped_ticks,
    );
    counter(
        "deadline_exceeded",
        "Runs cut off at their deadline",
        snapshot.deadline_exceeded,
    );
    counter(
        "records_stored",
        "Records written to the embedded store",
        snapshot.stored,
    );
    counter(
        "rules_dropped",
        "Stored records the rules engine never saw (it was stalled)",
        snapshot.rules_dropped,
    );
    counter(
        "outputs_handoff_dropped",
        "Records the outputs' hand-off queue dropped",
        snapshot.outputs_dropped,
    );
    let mut gauge = |name: &str, help: &str, value: f64| {
        let metric = GaugeF::default();
        metric.set(value);
        registry.register(name, help, metric);
    };
    gauge(
        "probe_lag_seconds",
        "Worst lateness of a run's start against its schedule, this minute",
        snapshot.max_lag_ms / 1000.0,
    );
    gauge(
        "scheduler_idle_seconds",
        "Time since the scheduler last started a run",
        status.since_last_run().as_secs_f64(),
    );
    gauge(
        "store_backlog_records",
        "Records on their way to the store",
        snapshot.store_backlog as f64,
    );
    gauge(
        "jobs",
        "(probe, target) pairs being probed",
        snapshot.jobs as f64,
    );
    gauge("rules", "Rules configured", status.rules() as f64);
    if let Some(open) = disk.incidents_open {
        gauge("incidents_open", "Incidents open now", open as f64);
    }
    register_outputs(&mut registry, snapshot, disk);
    register_targets(&mut registry, &status.latest());
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

fn register_outputs(registry: &mut Registry, snapshot: &Snapshot, disk: &DiskFacts) {
    let spool_points = Family::<Labels, GaugeF>::default();
    let spool_bytes = Family::<Labels, GaugeF>::default();
    let oldest_age = Family::<Labels, GaugeF>::default();
    let delivered = Family::<Labels, Counter>::default();
    let dropped = Family::<Labels, Counter>::default();
    let dead_letter = Family::<Labels, Counter>::default();
    let failed_requests = Family::<Labels, Counter>::default();
    let now_ns = probes::unix_ns(std::time::SystemTime::now());
    for output in &snapshot.outputs {
        let labels: Labels = vec![("output", output.name.clone())];
        spool_points
            .get_or_create(&labels)
            .set(output.spool_points as f64);
        spool_bytes
            .get_or_create(&labels)
            .set(output.spool_bytes as f64);
        if let Some(ts) = disk.oldest_pending_ns.get(&output.name) {
            oldest_age
                .get_or_create(&labels)
                .set(now_ns.saturating_sub(*ts).max(0) as f64 / 1e9);
        }
        delivered.get_or_create(&labels).inc_by(output.delivered);
        dropped.get_or_create(&labels).inc_by(output.dropped());
        dead_letter
            .get_or_create(&labels)
            .inc_by(output.dead_letter);
        failed_requests
            .get_or_create(&labels)
            .inc_by(output.failed_requests);
    }
    registry.register(
        "output_spool_points",
        "Points waiting in the durable spool for this output",
        spool_points,
    );
    registry.register(
        "output_spool_bytes",
        "Bytes of line protocol waiting in the spool for this output",
        spool_bytes,
    );
    registry.register(
        "output_oldest_undelivered_age_seconds",
        "Age of the oldest point waiting for this output (absent when none waits)",
        oldest_age,
    );
    registry.register(
        "output_delivered_points",
        "Points this output accepted",
        delivered,
    );
    registry.register(
        "output_dropped_points",
        "Points dropped for this output (hand-off full, disk refused, spool full)",
        dropped,
    );
    registry.register(
        "output_dead_letter_points",
        "Points this output rejected for good (kept in the spool's dead letters)",
        dead_letter,
    );
    registry.register(
        "output_failed_requests",
        "Write requests to this output that failed since the agent started",
        failed_requests,
    );
}

/// The quantiles of a ping round: min (0), p10, p25, median, p75, p90, max (1).
fn quantiles(stats: &probes::PingStats) -> [(&'static str, Option<f64>); 7] {
    [
        ("0", stats.rtt_min_ms),
        ("0.1", stats.rtt_p10_ms),
        ("0.25", stats.rtt_p25_ms),
        ("0.5", stats.rtt_median_ms),
        ("0.75", stats.rtt_p75_ms),
        ("0.9", stats.rtt_p90_ms),
        ("1", stats.rtt_max_ms),
    ]
}

fn register_targets(registry: &mut Registry, latest: &[std::sync::Arc<Record>]) {
    let success = Family::<Labels, GaugeF>::default();
    let duration = Family::<Labels, GaugeF>::default();
    let timestamp = Family::<Labels, GaugeF>::default();
    let loss = Family::<Labels, GaugeF>::default();
    let rtt = Family::<Labels, GaugeF>::default();
    let sent = Family::<Labels, GaugeF>::default();
    let received = Family::<Labels, GaugeF>::default();
    for record in latest {
        let labels: Labels = vec![
            ("probe", record.probe.clone()),
            ("target", record.target.clone()),
            ("target_site", record.target_site.clone()),
        ];
        let observation = &record.observation;
        success
            .get_or_create(&labels)
            .set(if observation.is_success() { 1.0 } else { 0.0 });
        duration
            .get_or_create(&labels)
            .set(observation.duration.as_secs_f64());
        timestamp
            .get_or_create(&labels)
            .set(observation.timestamp_ns() as f64 / 1e9);
        if let Measurement::Ping(stats) = &observation.measurement {
            loss.get_or_create(&labels).set(stats.loss_pct / 100.0);
            sent.get_or_create(&labels).set(f64::from(stats.sent));
            received
                .get_or_create(&labels)
                .set(f64::from(stats.received));
            for (quantile, value) in quantiles(stats) {
                if let Some(ms) = value.filter(|v| v.is_finite()) {
                    let mut labels = labels.clone();
                    labels.push(("quantile", quantile.to_string()));
                    rtt.get_or_create(&labels).set(ms / 1000.0);
                }
            }
        }
    }
    registry.register(
        "check_success",
        "1 if the latest run of this probe against this target succeeded, else 0",
        success,
    );
    registry.register(
        "check_duration_seconds",
        "How long the latest run took",
        duration,
    );
    registry.register(
        "check_timestamp_seconds",
        "When the latest run started (Unix time): the point's time in the stores",
        timestamp,
    );
    registry.register(
        "ping_loss_ratio",
        "Share of echoes lost in the latest round (the stores' loss_pct / 100)",
        loss,
    );
    registry.register(
        "ping_rtt_seconds",
        "RTT quantiles of the latest round (0 = min, 1 = max; the stores' rtt_*_ms / 1000)",
        rtt,
    );
    registry.register("ping_sent", "Echoes sent in the latest round", sent);
    registry.register(
        "ping_received",
        "Echo replies received in the latest round",
        received,
    );
}
