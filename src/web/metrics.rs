//! `/metrics`: the agent in the Prometheus text format (OpenMetrics, via `prometheus-client`),
//! so a Prometheus shop can use vantage without InfluxDB, as it uses smokeping_prober. Every
//! series carries the stores' tags: `agent` and `site`; per target also `probe`, `target` and
//! `target_site`; per output `output`. The README's "Health and metrics" lists the names.
//!
//! A scrape reads the agent's counters and the latest record of each (probe, target)
//! ([`crate::status::Status::latest`]), so a removed target disappears at once, and streams the
//! text ([`Exposition`]): it never holds the whole exposition of 10,000 targets.
//! Units are Prometheus's (seconds, ratios); the stores keep milliseconds and percent.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AppState;
use crate::status::{Latest, Snapshot, Status};

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
    match Exposition::new(&state.status, &state.status.snapshot(), &disk) {
        Ok(exposition) => {
            let chunks = futures_util::stream::iter(exposition.map(Ok::<_, Infallible>));
            (
                [(header::CONTENT_TYPE, CONTENT_TYPE)],
                Body::from_stream(chunks),
            )
                .into_response()
        }
        Err(error) => {
            tracing::error!(%error, "/metrics: cannot encode");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn read_disk(status: &Status) -> DiskFacts {
    let mut facts = DiskFacts::default();
    match crate::sinks::Spool::open_read_only(status.data_dir()).and_then(|spool| match spool {
        Some(spool) => Ok(spool.oldest_pending()?),
        None => Ok(Vec::new()),
    }) {
        Ok(outputs) => {
            for (name, oldest) in outputs {
                if let Some(ts) = oldest {
                    facts.oldest_pending_ns.insert(name, ts);
                }
            }
        }
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "/metrics: cannot read the spool")
        }
    }
    match crate::incident::IncidentDb::open_existing(status.data_dir())
        .and_then(|db| db.count_open())
    {
        Ok(open) => facts.incidents_open = Some(open),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "/metrics: cannot read the open incidents")
        }
    }
    facts
}

/// The agent's own series (counters, gauges, outputs): the exposition's head, without `# EOF`.
fn render_head(
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
    let mut text = String::new();
    encode_registry(&mut text, &registry)?;
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

/// The labels of [`LatestPing::rtt_ms`]'s quantiles: min (0), p10, p25, median, p75, p90, max (1).
const QUANTILES: [&str; 7] = ["0", "0.1", "0.25", "0.5", "0.75", "0.9", "1"];

/// The per-target families, in the order they are written.
#[derive(Debug, Clone, Copy)]
enum TargetFamily {
    Success,
    Duration,
    Timestamp,
    Loss,
    Rtt,
    Sent,
    Received,
}

impl TargetFamily {
    const ALL: [TargetFamily; 7] = [
        Self::Success,
        Self::Duration,
        Self::Timestamp,
        Self::Loss,
        Self::Rtt,
        Self::Sent,
        Self::Received,
    ];

    fn name_and_help(self) -> (&'static str, &'static str) {
        match self {
            Self::Success => (
                "check_success",
                "1 if the latest run of this probe against this target succeeded, else 0",
            ),
            Self::Duration => ("check_duration_seconds", "How long the latest run took"),
            Self::Timestamp => (
                "check_timestamp_seconds",
                "When the latest run started (Unix time): the point's time in the stores",
            ),
            Self::Loss => (
                "ping_loss_ratio",
                "Share of echoes lost in the latest round (the stores' loss_pct / 100)",
            ),
            Self::Rtt => (
                "ping_rtt_seconds",
                "RTT quantiles of the latest round (0 = min, 1 = max; the stores' rtt_*_ms / 1000)",
            ),
            Self::Sent => ("ping_sent", "Echoes sent in the latest round"),
            Self::Received => ("ping_received", "Echo replies received in the latest round"),
        }
    }

    /// This family's samples of one run: `(quantile label, value)`.
    fn samples(self, run: &Latest, mut sample: impl FnMut(Option<&str>, f64)) {
        match (self, &run.ping) {
            (Self::Success, _) => sample(None, if run.success { 1.0 } else { 0.0 }),
            (Self::Duration, _) => sample(None, run.duration.as_secs_f64()),
            (Self::Timestamp, _) => sample(None, run.timestamp_ns as f64 / 1e9),
            (Self::Loss, Some(stats)) => sample(None, stats.loss_pct / 100.0),
            (Self::Rtt, Some(stats)) => {
                for (quantile, ms) in QUANTILES.into_iter().zip(stats.rtt_ms) {
                    if ms.is_finite() {
                        sample(Some(quantile), ms / 1000.0);
                    }
                }
            }
            (Self::Sent, Some(stats)) => sample(None, f64::from(stats.sent)),
            (Self::Received, Some(stats)) => sample(None, f64::from(stats.received)),
            (_, None) => {}
        }
    }
}

/// Bytes after which a chunk of the per-target families is handed to the connection.
const CHUNK_BYTES: usize = 32 * 1024;

/// The exposition as a stream of chunks: the agent's own series (a `prometheus-client`
/// registry, small), then the per-target families written straight as text a few hundred
/// targets at a time, then `# EOF`. At 10,000 targets the per-target part is ~130,000 lines
/// (~17 MB); as `prometheus-client` families it also took ~27 MB of labelled gauges per scrape,
/// all held at once (the agent's RSS grew by ~68 MB per scrape). Streamed, a scrape holds the
/// list of latest records (a pointer each) and one chunk.
#[derive(Debug)]
pub struct Exposition {
    head: Option<String>,
    /// `agent="…",site="…"`: the labels every series carries.
    identity: String,
    records: Vec<std::sync::Arc<Latest>>,
    /// Where the next chunk starts: a family (past the last: the `# EOF` is due or written) and a
    /// record within it.
    family: usize,
    record: usize,
}

impl Exposition {
    pub fn new(
        status: &Status,
        snapshot: &Snapshot,
        disk: &DiskFacts,
    ) -> Result<Self, std::fmt::Error> {
        let mut identity = String::new();
        push_label(&mut identity, "agent", status.agent());
        identity.push(',');
        push_label(&mut identity, "site", status.site());
        Ok(Self {
            head: Some(render_head(status, snapshot, disk)?),
            identity,
            records: status.latest(),
            family: 0,
            record: 0,
        })
    }

    fn write_family_header(&self, family: TargetFamily, chunk: &mut String) {
        let (name, help) = family.name_and_help();
        let _ = write!(
            chunk,
            "# HELP vantage_{name} {help}\n# TYPE vantage_{name} gauge\n"
        );
    }

    fn write_samples(&self, family: TargetFamily, record: &Latest, chunk: &mut String) {
        let (name, _) = family.name_and_help();
        family.samples(record, |quantile, value| {
            chunk.push_str("vantage_");
            chunk.push_str(name);
            chunk.push('{');
            chunk.push_str(&self.identity);
            for (key, label) in [
                ("probe", record.probe.as_str()),
                ("target", &record.target),
                ("target_site", &record.target_site),
            ]
            .into_iter()
            .chain(quantile.map(|q| ("quantile", q)))
            {
                chunk.push(',');
                push_label(chunk, key, label);
            }
            chunk.push_str("} ");
            push_number(chunk, value);
            chunk.push('\n');
        });
    }
}

impl Iterator for Exposition {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if let Some(head) = self.head.take() {
            return Some(head);
        }
        match self.family.cmp(&TargetFamily::ALL.len()) {
            std::cmp::Ordering::Greater => return None,
            std::cmp::Ordering::Equal => {
                self.family += 1;
                return Some("# EOF\n".to_string());
            }
            std::cmp::Ordering::Less => {}
        }
        let mut chunk = String::with_capacity(CHUNK_BYTES + 2048);
        while chunk.len() < CHUNK_BYTES {
            let Some(&family) = TargetFamily::ALL.get(self.family) else {
                break;
            };
            if self.record == 0 {
                self.write_family_header(family, &mut chunk);
            }
            while let Some(record) = self.records.get(self.record) {
                self.write_samples(family, record, &mut chunk);
                self.record += 1;
                if chunk.len() >= CHUNK_BYTES {
                    break;
                }
            }
            if self.record >= self.records.len() {
                self.family += 1;
                self.record = 0;
            }
        }
        Some(chunk)
    }
}

/// `key="value"`, the value escaped as the text format wants (names are validated to tag
/// characters, so this is belt and braces).
fn push_label(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A sample value: shortest exact decimal, and the text format's spelling of the non-finite.
fn push_number(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use probes::Measurement;

    use super::*;
    use crate::record::Record;

    fn status_with(records: impl IntoIterator<Item = Record>) -> Status {
        let status = crate::status::tests::status();
        for record in records {
            status.remember(&record);
        }
        status
    }

    fn round(target: &str, rtts: Vec<Option<f64>>) -> Record {
        let mut record = Record::test_round(target);
        record.observation.started_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        record.observation.measurement = Measurement::Ping(probes::PingStats::from_rtts(rtts));
        record
    }

    fn text(status: &Status) -> (Vec<String>, String) {
        let chunks: Vec<String> =
            Exposition::new(status, &status.snapshot(), &DiskFacts::default())
                .expect("encodes")
                .collect();
        let whole = chunks.concat();
        (chunks, whole)
    }

    /// A scrape reads only what it shows: each output's oldest waiting point (it counted and
    /// summed every waiting point) and the number of open incidents (it loaded and parsed
    /// every open draft: 600 MB of JSON in a mass outage of 10,000 targets). An open draft is
    /// not even parsed now: a row this build cannot read still counts.
    #[test]
    fn a_scrape_reads_the_oldest_waiting_point_and_counts_open_incidents_without_loading_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = crate::sinks::Spool::open(dir.path()).expect("spool");
        let influx = spool.output_id("influx").expect("output");
        spool.output_id("idle").expect("output");
        let points: Vec<(i64, Vec<u8>)> = (7..10).map(|ts| (ts, b"p v=1".to_vec())).collect();
        spool.append(&[influx], &points, 0).expect("append");
        let db = crate::incident::IncidentDb::open(dir.path()).expect("incidents.db");
        drop(db);
        let conn = rusqlite::Connection::open(dir.path().join("incidents.db")).expect("sqlite");
        for (seq, status) in [(1, "open"), (2, "resolved"), (3, "open")] {
            conn.execute(
                "INSERT INTO incidents (id, seq, key, status, opened_ns, data)
                 VALUES (?1, ?1, ?2, ?3, 0, '{\"from\": \"a later build\"}')",
                rusqlite::params![seq, format!("rule/{seq}"), status],
            )
            .expect("insert");
        }
        let facts = read_disk(&crate::status::tests::status_in(dir.path()));
        assert_eq!(facts.incidents_open, Some(2));
        assert_eq!(
            facts.oldest_pending_ns,
            HashMap::from([("influx".to_string(), 7)])
        );
    }

    #[test]
    fn a_round_is_written_as_the_text_format_wants() {
        let status = status_with([round("t1", vec![Some(1.5), Some(2.5), None, Some(2.0)])]);
        let (_, whole) = text(&status);
        let labels = r#"agent="a",site="s",probe="ping",target="t1",target_site="s""#;
        let tail = whole
            .split_once("# HELP vantage_check_success ")
            .expect("the per-target families follow the agent's own")
            .1;
        let expected = format!(
            "1 if the latest run of this probe against this target succeeded, else 0\n\
             # TYPE vantage_check_success gauge\n\
             vantage_check_success{{{labels}}} 1\n\
             # HELP vantage_check_duration_seconds How long the latest run took\n\
             # TYPE vantage_check_duration_seconds gauge\n\
             vantage_check_duration_seconds{{{labels}}} 0.02\n\
             # HELP vantage_check_timestamp_seconds When the latest run started (Unix time): the point's time in the stores\n\
             # TYPE vantage_check_timestamp_seconds gauge\n\
             vantage_check_timestamp_seconds{{{labels}}} 1700000000\n\
             # HELP vantage_ping_loss_ratio Share of echoes lost in the latest round (the stores' loss_pct / 100)\n\
             # TYPE vantage_ping_loss_ratio gauge\n\
             vantage_ping_loss_ratio{{{labels}}} 0.25\n\
             # HELP vantage_ping_rtt_seconds RTT quantiles of the latest round (0 = min, 1 = max; the stores' rtt_*_ms / 1000)\n\
             # TYPE vantage_ping_rtt_seconds gauge\n"
        );
        assert!(tail.starts_with(&expected), "got:\n{tail}");
        for quantile in ["0", "0.1", "0.25", "0.5", "0.75", "0.9", "1"] {
            let line = format!("vantage_ping_rtt_seconds{{{labels},quantile=\"{quantile}\"}} 0.00");
            assert_eq!(tail.matches(&line).count(), 1, "{line} in:\n{tail}");
        }
        assert!(tail.contains(&format!(
            "vantage_ping_rtt_seconds{{{labels},quantile=\"0\"}} 0.0015\n"
        )));
        assert!(tail.contains(&format!(
            "vantage_ping_rtt_seconds{{{labels},quantile=\"1\"}} 0.0025\n"
        )));
        assert!(tail.contains(&format!("vantage_ping_sent{{{labels}}} 4\n")));
        assert!(tail.contains(&format!("vantage_ping_received{{{labels}}} 3\n")));
        assert!(whole.starts_with("# HELP vantage_observations "), "{whole}");
        assert!(whole.contains("vantage_observations_total{agent=\"a\",site=\"s\"} 0\n"));
        assert!(whole.ends_with("\n# EOF\n"));
        assert_eq!(whole.matches("# EOF").count(), 1);
    }

    /// Issue 15: at 10,000 targets a scrape streams ~17 MB of text a chunk at a time instead of
    /// building 70,000 labelled gauges and the whole text (~68 MB of RSS per scrape).
    #[test]
    fn ten_thousand_targets_stream_in_bounded_chunks_each_family_whole_and_once() {
        let targets = 10_000;
        let status =
            status_with((0..targets).map(|i| round(&format!("t{i:05}"), vec![Some(1.0); 20])));
        let (chunks, whole) = text(&status);
        assert!(chunks.len() > 300, "{} chunks", chunks.len());
        let biggest = chunks.iter().map(String::len).max().unwrap_or(0);
        assert!(biggest < CHUNK_BYTES + 2048, "a chunk of {biggest} bytes");
        assert_eq!(chunks.last().map(String::as_str), Some("# EOF\n"));
        // Each family's samples follow its one header, and no family comes back later.
        let mut seen: Vec<&str> = Vec::new();
        for line in whole.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or(line);
            if seen.last() != Some(&name) {
                assert!(
                    !seen.contains(&name),
                    "{name} comes back after another family"
                );
                seen.push(name);
            }
        }
        for family in TargetFamily::ALL {
            let (name, _) = family.name_and_help();
            assert_eq!(
                whole
                    .matches(&format!("# TYPE vantage_{name} gauge\n"))
                    .count(),
                1,
                "{name}"
            );
            let samples = whole.matches(&format!("\nvantage_{name}{{")).count();
            let per_target = if matches!(family, TargetFamily::Rtt) {
                7
            } else {
                1
            };
            assert_eq!(samples, targets * per_target, "{name}");
        }
        assert!(whole.contains(r#"vantage_ping_sent{agent="a",site="s",probe="ping",target="t09999",target_site="s"} 20"#));
    }

    #[test]
    fn label_values_and_numbers_are_spelled_as_the_text_format_wants() {
        let mut out = String::new();
        push_label(&mut out, "target", "a\"b\\c\nd");
        assert_eq!(out, r#"target="a\"b\\c\nd""#);
        for (value, spelled) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (1e-7, "0.0000001"),
            (0.0, "0"),
        ] {
            let mut out = String::new();
            push_number(&mut out, value);
            assert_eq!(out, spelled);
        }
    }
}
