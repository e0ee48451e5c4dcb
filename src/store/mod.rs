//! The embedded store (default): every observation in SQLite under the data directory, kept for the
//! configured retention. One writer thread owns the connection; probes never wait on disk I/O
//! beyond a bounded channel.
//!
//! Ping rounds, the bulk, are compact typed rows with 5-minute and hourly rollups ([`series`]);
//! service checks and traces stay in `observations` with their fields as JSON. A store of the
//! old format (ping rounds in `observations` too) is converted when opened ([`migrate`]).

pub mod codec;
pub mod migrate;
pub mod series;
mod traces;
pub mod writer;

pub use series::{DEFAULT_RETENTION, Retention};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use probes::{Measurement, Outcome};
use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;

pub use crate::record::Record;
pub use traces::TracePoint;

/// The SQLite file inside the data directory.
pub const DB_FILE: &str = "vantage.db";

#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Ping series ids by their tags.
    series: HashMap<series::SeriesKey, i64>,
}

/// One row of `vantage report`: the latest ping round of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestPing {
    pub probe: String,
    pub target: String,
    pub target_site: String,
    pub address: Option<String>,
    pub timestamp_ns: i64,
    pub failure: Option<String>,
    pub sent: u32,
    pub loss_pct: f64,
    pub rtt_median_ms: Option<f64>,
    pub rtt_p10_ms: Option<f64>,
    pub rtt_p90_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
}

/// One row of `vantage report`'s service checks: the latest `http`, `dns` or `tcp` run of one
/// (probe, target).
#[derive(Debug, Clone, PartialEq)]
pub struct LatestCheck {
    /// `http`, `dns` or `tcp`.
    pub measurement: String,
    pub probe: String,
    pub target: String,
    pub target_site: String,
    pub address: Option<String>,
    pub timestamp_ns: i64,
    pub success: bool,
    pub failure: Option<String>,
    /// The measurement's fields as stored.
    pub fields: serde_json::Value,
}

/// One row of `vantage report`'s path traces: the latest trace of one (probe, target).
#[derive(Debug, Clone, PartialEq)]
pub struct LatestTrace {
    pub probe: String,
    pub target: String,
    pub target_site: String,
    pub timestamp_ns: i64,
    pub failure: Option<String>,
    /// The first address that answered at each TTL, `None` for a silent one.
    pub hops: Vec<Option<String>>,
    pub reached: bool,
    pub path_changed: bool,
    pub path_hash: String,
    /// [`probes::verdict_text`]: where loss starts and latency steps up, in words; `None` when the
    /// trace could not run.
    pub verdict: Option<String>,
}

/// The stored fields of a trace: the `trace` measurement, its hops (`trace_hop`), and the verdict
/// when there are hops to judge: the loss verdict (`verdict`, structured), the latency step
/// (`latency_step`, null when none) and both in words (`verdict_text`).
pub fn trace_fields(report: &probes::TraceReport) -> anyhow::Result<String> {
    let mut fields = serde_json::to_value(report)?;
    if let Some(object) = fields.as_object_mut() {
        let (verdict, text) = if report.hops.is_empty() {
            (serde_json::Value::Null, serde_json::Value::Null)
        } else {
            (
                serde_json::to_value(probes::locate_loss(report))?,
                serde_json::Value::String(probes::verdict_text(report)),
            )
        };
        object.insert("verdict".into(), verdict);
        object.insert(
            "latency_step".into(),
            serde_json::to_value(probes::locate_latency_step(report))?,
        );
        object.insert("verdict_text".into(), text);
    }
    Ok(serde_json::to_string(&fields)?)
}

/// One ping round, or one rollup bucket of rounds, as history: what an incident's evidence tables
/// and chart are drawn from.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PingPoint {
    /// The round's start, or the bucket's.
    pub timestamp_ns: i64,
    pub address: Option<String>,
    pub failure_kind: Option<String>,
    pub failure: Option<String>,
    pub sent: u32,
    pub loss_pct: f64,
    pub rtt_p10_ms: Option<f64>,
    pub rtt_p25_ms: Option<f64>,
    pub rtt_median_ms: Option<f64>,
    pub rtt_p75_ms: Option<f64>,
    pub rtt_p90_ms: Option<f64>,
    /// Rounds summarised: 1 for a raw round.
    #[serde(default = "one")]
    pub rounds: u32,
    /// The bucket's width: 0 for a raw round, else 5 minutes or 1 hour.
    #[serde(default)]
    pub step_ns: i64,
}

fn one() -> u32 {
    1
}

/// One `http`, `dns` or `tcp` run as history: what an incident's evidence lists for a service
/// check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckPoint {
    /// `http`, `dns` or `tcp`.
    pub measurement: String,
    pub timestamp_ns: i64,
    pub address: Option<String>,
    pub success: bool,
    pub failure_kind: Option<String>,
    pub failure: Option<String>,
    /// The measurement's fields as stored.
    pub fields: serde_json::Value,
}

/// How much of a store a read-only connection maps (SQLite's `mmap_size`; the rest is read).
const READ_ONLY_MMAP: i64 = 1 << 32;

/// Open an SQLite file read-only without creating anything beside it (see
/// [`Store::open_read_only`] for what happens with WAL): the store's and the spool's readers.
pub fn open_sqlite_read_only(path: &Path) -> anyhow::Result<Connection> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let beside = |suffix: &str| path.with_file_name(format!("{name}{suffix}"));
    let (wal, shm) = (beside("-wal"), beside("-shm"));
    anyhow::ensure!(
        !wal.exists() || shm.exists(),
        "{} has a write-ahead log ({name}-wal) but no {name}-shm, and reading it would create \
         one: copy it with `sqlite3 {} \".backup COPY\"`, or copy the -shm file too",
        path.display(),
        path.display()
    );
    // Without a -wal, even a `mode=ro` connection creates the -wal and -shm of a WAL database:
    // `immutable=1` reads the file as it is (nobody is writing it: a writer keeps a -wal).
    let uri = format!(
        "file:{}?mode=ro{}",
        path.to_string_lossy()
            .replace('%', "%25")
            .replace('?', "%3f")
            .replace('#', "%23"),
        if wal.exists() { "" } else { "&immutable=1" }
    );
    let conn = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Pages read from the mapped file rather than copied into each connection's cache: every
    // page view opens a connection, and the overview seeks into every series.
    conn.pragma_update(None, "mmap_size", READ_ONLY_MMAP)?;
    Ok(conn)
}

/// The service checks' measurements, in `observations`.
const CHECKS: &[&str] = &["dns", "http", "tcp"];

/// SQL for `columns` of the latest observation (`o`) of each (measurement, probe, target) among
/// `measurements` that matches `latest_where` (an SQL condition on the row, `TRUE` for any),
/// ordered by probe, target and time. Every view of the overview runs it, so it seeks: a
/// skip-scan of `observations_by_target` hops from one (measurement, probe, target) to the next
/// (three index seeks each) and walks each one's rows back from the latest to the first that
/// matches (one more seek, and as many steps as the latest rows that do not match), instead of
/// grouping every row of the retention (60 M at 1,000 checks every 20 s for 14 days).
fn latest_observations(columns: &str, measurements: &[&str], latest_where: &str) -> String {
    let quoted: Vec<String> = measurements.iter().map(|m| format!("'{m}'")).collect();
    let first = measurements.iter().min().copied().unwrap_or_default();
    let last = measurements.iter().max().copied().unwrap_or_default();
    format!(
        "WITH RECURSIVE keys (measurement, probe, target) AS (
             SELECT * FROM (SELECT measurement, probe, target FROM observations
                            WHERE measurement >= '{first}'
                            ORDER BY measurement, probe, target LIMIT 1)
             UNION ALL
             SELECT o.measurement, o.probe, o.target
             FROM keys k JOIN observations o ON o.id = coalesce(
                 (SELECT id FROM observations
                  WHERE measurement = k.measurement AND probe = k.probe AND target > k.target
                  ORDER BY target LIMIT 1),
                 (SELECT id FROM observations
                  WHERE measurement = k.measurement AND probe > k.probe
                  ORDER BY probe, target LIMIT 1),
                 (SELECT id FROM observations WHERE measurement > k.measurement
                  ORDER BY measurement, probe, target LIMIT 1))
             WHERE k.measurement <= '{last}'
         )
         SELECT {columns}
         FROM keys k CROSS JOIN observations o ON o.id = (
             SELECT id FROM observations
             WHERE measurement = k.measurement AND probe = k.probe AND target = k.target
                   AND ({latest_where})
             ORDER BY ts_ns DESC, id DESC LIMIT 1)
         WHERE k.measurement IN ({})
         ORDER BY o.probe, o.target, o.ts_ns, o.id",
        quoted.join(", ")
    )
}

/// The path hash of the latest trace with hops of each (probe, target) (a trace that could not
/// run has none, and is no path), by [`latest_observations`]: one seek per series.
fn latest_path_hashes_sql() -> String {
    latest_observations(
        "o.probe, o.target, json_extract(o.fields, '$.path_hash')",
        &["trace"],
        "json_array_length(fields, '$.hops') > 0",
    )
}

impl Store {
    /// Open (creating if needed) the store in `data_dir`, converting a store of the old format
    /// ([`migrate`]).
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
        Store::open_migrating(data_dir, migrate::CHUNK, None)
    }

    /// As [`Store::open`], converting at most `max_chunks` chunks of `chunk` old rounds: what a
    /// conversion interrupted half-way leaves (for its test).
    #[doc(hidden)]
    pub fn open_migrating(
        data_dir: &Path,
        chunk: usize,
        max_chunks: Option<usize>,
    ) -> anyhow::Result<Store> {
        crate::config::data_dir::create(data_dir)?;
        // Canonical, so logs and errors name the directory plainly (no `config/../`).
        let path = data_dir
            .canonicalize()
            .unwrap_or_else(|_| data_dir.to_path_buf())
            .join(DB_FILE);
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open store {}", path.display()))?;
        // The busy timeout first: the agent's threads open this file too, and wait for a lock
        // rather than fail with "database is locked".
        conn.execute_batch(
            "PRAGMA busy_timeout = 5000;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS observations (
                 id           INTEGER PRIMARY KEY,
                 ts_ns        INTEGER NOT NULL,
                 measurement  TEXT NOT NULL,
                 agent        TEXT NOT NULL,
                 site         TEXT NOT NULL,
                 probe        TEXT NOT NULL,
                 target       TEXT NOT NULL,
                 target_site  TEXT NOT NULL,
                 address      TEXT,
                 success      INTEGER NOT NULL,
                 failure_kind TEXT,
                 failure      TEXT,
                 duration_ms  REAL NOT NULL,
                 fields       TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS observations_by_time ON observations (ts_ns);
             CREATE INDEX IF NOT EXISTS observations_by_target
                 ON observations (measurement, probe, target, ts_ns);",
        )
        .and_then(|()| conn.execute_batch(series::SCHEMA))
        .with_context(|| format!("cannot initialise store {}", path.display()))?;
        let mut store = Store {
            conn,
            path,
            series: HashMap::new(),
        };
        migrate::ping_rounds(&mut store, chunk, max_chunks)?;
        Ok(store)
    }

    /// Open an existing store in `data_dir` read-only (the web page, `vantage serve`): SQLite
    /// `mode=ro`, so that nothing is created or changed in a directory that may belong to someone
    /// else (serve runs as root on a copy, or beside a running agent).
    ///
    /// WAL: a store whose agent stopped cleanly (or a copy made with `sqlite3 .backup`) has no
    /// `vantage.db-wal`, and is read as an immutable file (no lock, no -wal or -shm created). Beside a running agent the `-wal` and `-shm` files
    /// exist, and a read-only connection reads both (it sees every committed round). A copy with a
    /// `-wal` but no `-shm` is refused with an error that says how to copy it: reading it would
    /// make SQLite create the `-shm`.
    pub fn open_read_only(data_dir: &Path) -> anyhow::Result<Store> {
        let metadata = std::fs::metadata(data_dir).with_context(|| {
            format!(
                "cannot read the data directory {}: point --data-dir at the agent's data directory",
                data_dir.display()
            )
        })?;
        anyhow::ensure!(
            metadata.is_dir(),
            "{} is not a directory: point --data-dir at the agent's data directory",
            data_dir.display()
        );
        let path = data_dir.join(DB_FILE);
        anyhow::ensure!(
            path.is_file(),
            "{} holds no store ({DB_FILE} is missing): is it the agent's data directory?",
            data_dir.display()
        );
        let conn = open_sqlite_read_only(&path)?;
        let is_store: bool = conn
            .query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'observations'",
                [],
                |row| row.get(0),
            )
            .with_context(|| {
                format!(
                    "{} is not a vantage store (not an SQLite database)",
                    path.display()
                )
            })?;
        anyhow::ensure!(
            is_store,
            "{} is not a vantage store (no observations table)",
            path.display()
        );
        // A store of the old format (JSON ping rounds) is converted when it is opened to write;
        // read-only, its rounds would look missing.
        let compact: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'ping_rounds'",
            [],
            |row| row.get(0),
        )?;
        anyhow::ensure!(
            compact,
            "{} is a store of the old format: convert it first by opening it once to write (`vantage report --data-dir DIR` on a copy, or start the agent)",
            path.display()
        );
        Ok(Store {
            conn,
            path,
            series: HashMap::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Persist records in one transaction, with their original timestamps.
    /// Takes records or shared ones (`Arc<Record>`: the agent's pipeline shares each record).
    pub fn insert<R: std::borrow::Borrow<Record>>(&mut self, records: &[R]) -> anyhow::Result<()> {
        self.insert_with(records, true)
    }

    /// As [`Store::insert`], but ping rounds go into the rollups only: what the store holds of
    /// rounds older than the raw retention once they are pruned. For a benchmark's fill
    /// (`examples/bench_web.rs`), which could not insert and prune 130 M raw rounds in time.
    #[doc(hidden)]
    pub fn insert_rollups_only(&mut self, records: &[Record]) -> anyhow::Result<()> {
        self.insert_with(records, false)
    }

    /// For a benchmark's fill only (`examples/bench_web.rs`): no journal and no fsync (a crash
    /// mid-fill leaves a corrupt file, which the benchmark discards) and a page cache of
    /// `cache_mib`, so that filling 130 M rounds is bound by the store's own insert code rather
    /// than by the disk. Never used by the product; reopen with [`Store::open`] to get the
    /// product's settings back (WAL, synchronous = NORMAL, the default cache).
    #[doc(hidden)]
    pub fn unsafe_bulk_fill_settings(&self, cache_mib: u32) -> anyhow::Result<()> {
        self.conn.execute_batch(&format!(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
             PRAGMA cache_size = -{};",
            u64::from(cache_mib) * 1024
        ))?;
        Ok(())
    }

    fn insert_with<R: std::borrow::Borrow<Record>>(
        &mut self,
        records: &[R],
        keep_raw: bool,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut rounds = Vec::new();
            let mut insert = tx.prepare_cached(
                "INSERT INTO observations (ts_ns, measurement, agent, site, probe, target, target_site,
                     address, success, failure_kind, failure, duration_ms, fields)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for r in records {
                let r: &Record = std::borrow::Borrow::borrow(r);
                let o = &r.observation;
                let (kind, message) = match &o.outcome {
                    Outcome::Success => (None, None),
                    Outcome::Failure { kind, message } => {
                        (Some(kind.as_str()), Some(message.as_str()))
                    }
                };
                let fields = match &o.measurement {
                    Measurement::Ping(stats) => {
                        rounds.push(series::Round {
                            series: series::SeriesKey {
                                probe: r.probe.clone(),
                                target: r.target.clone(),
                                agent: r.agent.clone(),
                                site: r.site.clone(),
                                target_site: r.target_site.clone(),
                                address: r.address.clone(),
                            },
                            ts_ns: o.timestamp_ns(),
                            duration_ms: o.duration.as_millis().try_into().unwrap_or(i64::MAX),
                            failure_kind: kind,
                            failure: message,
                            rtts_ms: &stats.rtts_ms,
                        });
                        continue;
                    }
                    Measurement::Tcp(stats) => serde_json::to_string(stats)?,
                    Measurement::Http(stats) => serde_json::to_string(stats)?,
                    Measurement::Dns(stats) => serde_json::to_string(stats)?,
                    Measurement::Trace(report) => trace_fields(report)?,
                };
                insert.execute(params![
                    o.timestamp_ns(),
                    o.measurement.name(),
                    r.agent,
                    r.site,
                    r.probe,
                    r.target,
                    r.target_site,
                    r.address,
                    o.is_success(),
                    kind,
                    message,
                    o.duration.as_secs_f64() * 1000.0,
                    fields,
                ])?;
            }
            series::insert_rounds(&tx, &mut self.series, &rounds, keep_raw)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Observations stored: ping rounds, service checks and traces.
    pub fn count(&self) -> anyhow::Result<u64> {
        Ok(self.conn.query_row(
            "SELECT (SELECT COUNT(*) FROM observations) + (SELECT COUNT(*) FROM ping_rounds)",
            [],
            |row| row.get(0),
        )?)
    }

    /// The `http`, `dns` and `tcp` runs of one (probe, target) from `from_ns` to `to_ns`
    /// (inclusive), oldest first: the evidence an incident draft shows for a service check.
    pub fn check_history(
        &self,
        probe: &str,
        target: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> anyhow::Result<Vec<CheckPoint>> {
        let mut query = self.conn.prepare_cached(
            "SELECT measurement, ts_ns, address, success, failure_kind, failure, fields
             FROM observations
             WHERE measurement IN ('http', 'dns', 'tcp') AND probe = ?1 AND target = ?2
                   AND ts_ns BETWEEN ?3 AND ?4
             ORDER BY ts_ns",
        )?;
        let rows = query.query_map(rusqlite::params![probe, target, from_ns, to_ns], |row| {
            Ok((
                CheckPoint {
                    measurement: row.get(0)?,
                    timestamp_ns: row.get(1)?,
                    address: row.get(2)?,
                    success: row.get(3)?,
                    failure_kind: row.get(4)?,
                    failure: row.get(5)?,
                    fields: serde_json::Value::Null,
                },
                row.get::<_, String>(6)?,
            ))
        })?;
        let mut points = Vec::new();
        for row in rows {
            let (mut point, fields) = row?;
            point.fields = serde_json::from_str(&fields)
                .with_context(|| format!("corrupt fields for {probe}/{target}"))?;
            points.push(point);
        }
        Ok(points)
    }

    /// The path hash of the latest trace with hops of every (probe, target): what a restarted
    /// agent's trace probes compare their first trace with.
    pub fn latest_path_hashes(&self) -> anyhow::Result<HashMap<(String, String), String>> {
        let mut query = self.conn.prepare(&latest_path_hashes_sql())?;
        let rows = query.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
            ))
        })?;
        let mut hashes = HashMap::new();
        for row in rows {
            if let (probe, target, Some(hash)) = row? {
                hashes.insert((probe, target), hash);
            }
        }
        Ok(hashes)
    }

    /// The most recent `http`, `dns` and `tcp` run per (probe, target), by probe then target.
    pub fn latest_checks(&self) -> anyhow::Result<Vec<LatestCheck>> {
        let mut query = self.conn.prepare_cached(&latest_observations(
            "o.measurement, o.probe, o.target, o.target_site, o.address, o.ts_ns, o.success,
             o.failure, o.fields",
            CHECKS,
            "TRUE",
        ))?;
        let rows = query.query_map([], |row| {
            Ok((
                LatestCheck {
                    measurement: row.get(0)?,
                    probe: row.get(1)?,
                    target: row.get(2)?,
                    target_site: row.get(3)?,
                    address: row.get(4)?,
                    timestamp_ns: row.get(5)?,
                    success: row.get(6)?,
                    failure: row.get(7)?,
                    fields: serde_json::Value::Null,
                },
                row.get::<_, String>(8)?,
            ))
        })?;
        let mut latest: Vec<LatestCheck> = Vec::new();
        for row in rows {
            let (mut check, fields) = row?;
            check.fields = serde_json::from_str(&fields)
                .with_context(|| format!("corrupt fields for {}/{}", check.probe, check.target))?;
            // One (probe, target) under two kinds (its probe changed kind): the latest wins.
            match latest.last_mut() {
                Some(last)
                    if (&last.probe, &last.target) == (&check.probe, &check.target)
                        && last.timestamp_ns <= check.timestamp_ns =>
                {
                    *last = check
                }
                Some(last) if (&last.probe, &last.target) == (&check.probe, &check.target) => {}
                _ => latest.push(check),
            }
        }
        Ok(latest)
    }

    /// The most recent trace per (probe, target), by probe then target.
    pub fn latest_traces(&self) -> anyhow::Result<Vec<LatestTrace>> {
        let mut query = self.conn.prepare_cached(&latest_observations(
            "o.probe, o.target, o.target_site, o.ts_ns, o.failure, o.fields",
            &["trace"],
            "TRUE",
        ))?;
        let rows = query.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, String>(5)?,
            ))
        })?;
        let mut latest = Vec::new();
        for row in rows {
            let (probe, target, target_site, timestamp_ns, failure, fields) = row?;
            let fields: serde_json::Value = serde_json::from_str(&fields)
                .with_context(|| format!("corrupt fields for {probe}/{target}"))?;
            let hops = fields["hops"]
                .as_array()
                .map(|hops| {
                    hops.iter()
                        .map(|hop| hop["addresses"][0].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            latest.push(LatestTrace {
                probe,
                target,
                target_site,
                timestamp_ns,
                failure,
                hops,
                reached: fields["reached"].as_bool().unwrap_or(false),
                path_changed: fields["path_changed"].as_bool().unwrap_or(false),
                path_hash: fields["path_hash"].as_str().unwrap_or_default().to_string(),
                verdict: fields["verdict_text"].as_str().map(str::to_string),
            });
        }
        Ok(latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probes::{FailureKind, Observation, PingStats};
    use std::time::{Duration, SystemTime};

    fn record(target: &str, at: SystemTime, rtts: Vec<Option<f64>>) -> Record {
        let stats = PingStats::from_rtts(rtts);
        let outcome = if stats.received == 0 {
            Outcome::failure(FailureKind::Timeout, "no reply")
        } else {
            Outcome::Success
        };
        Record {
            agent: "a1".into(),
            site: "scl3".into(),
            probe: "ping".into(),
            target: target.into(),
            target_site: "sjc1".into(),
            address: Some("198.18.2.2".into()),
            observation: Observation {
                started_at: at,
                duration: Duration::from_millis(1500),
                outcome,
                measurement: Measurement::Ping(stats),
            },
        }
    }

    #[test]
    fn latest_round_per_target_keeps_original_timestamps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        store
            .insert(&[
                record("a", t0, vec![Some(1.0), Some(3.0)]),
                record("b", t0, vec![None, None]),
                record("a", t0 + Duration::from_secs(20), vec![Some(5.0), None]),
            ])
            .expect("insert");
        let latest = store.latest_pings().expect("query");
        assert_eq!(latest.len(), 2);
        assert_eq!(latest[0].target, "a");
        assert_eq!(latest[0].timestamp_ns, 1_800_000_020_000_000_000);
        assert_eq!(latest[0].rtt_median_ms, Some(5.0));
        assert!((latest[0].loss_pct - 50.0).abs() < 1e-9);
        assert_eq!(latest[1].failure.as_deref(), Some("no reply"));
        assert_eq!(latest[1].rtt_median_ms, None);
    }

    /// The overview reads the latest round of every series on every view: one index seek per
    /// series, whatever the history's length (a scan of `ping_rounds` would read 60 M rows at
    /// 1,000 targets × 14 days).
    #[test]
    fn latest_pings_seek_each_series_and_never_scan_the_rounds() {
        use rusqlite::StatementStatus;
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let cost = |rounds: u64| {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut store = Store::open(dir.path()).expect("open");
            let records: Vec<Record> = (0..rounds)
                .flat_map(|i| {
                    ["a", "b", "c"].map(|target| {
                        record(target, t0 + Duration::from_secs(20 * i), vec![Some(1.0)])
                    })
                })
                .collect();
            store.insert(&records).expect("insert");
            let plan: Vec<String> = store
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {}", series::LATEST_PINGS))
                .expect("explain")
                .query_map([], |row| row.get(3))
                .expect("plan")
                .collect::<Result<_, _>>()
                .expect("plan rows");
            let mut query = store.conn.prepare(series::LATEST_PINGS).expect("prepare");
            let rows = query.query_map([], |_| Ok(())).expect("query").count();
            assert_eq!(rows, 3);
            (
                plan,
                query.get_status(StatementStatus::FullscanStep),
                query.get_status(StatementStatus::VmStep),
            )
        };
        let (_, _, short_steps) = cost(10);
        let (plan, scan_steps, long_steps) = cost(2_000);
        assert!(
            !plan
                .iter()
                .any(|step| step.starts_with("SCAN r") || step.starts_with("SCAN ping_rounds")),
            "the latest rounds scan ping_rounds: {plan:?}"
        );
        // Stepping through the three series is all the scanning there is.
        assert!(scan_steps <= 3, "{scan_steps} full-scan steps: {plan:?}");
        assert!(
            long_steps <= short_steps + 20,
            "200× the history costs {long_steps} VM steps instead of {short_steps}: {plan:?}"
        );
    }

    fn trace_record(target: &str, at: SystemTime, hops: Vec<(&str, f64)>) -> Record {
        let hops: Vec<probes::Hop> = hops
            .into_iter()
            .enumerate()
            .map(|(i, (address, loss_pct))| probes::Hop {
                ttl: i as u8 + 1,
                addresses: vec![address.parse().expect("address")],
                sent: 10,
                received: (10.0 * (100.0 - loss_pct) / 100.0) as u32,
                loss_pct,
                rtt_last_ms: Some(1.0),
                rtt_avg_ms: Some(1.0),
                rtt_best_ms: Some(1.0),
                rtt_worst_ms: Some(1.0),
                rtt_stddev_ms: Some(0.0),
            })
            .collect();
        let report = probes::TraceReport::new("198.18.2.2".parse().expect("target"), hops);
        let outcome = if report.hops.is_empty() {
            Outcome::failure(FailureKind::Resolve, "no address")
        } else {
            Outcome::Success
        };
        Record {
            probe: "trace".into(),
            observation: Observation {
                started_at: at,
                duration: Duration::from_secs(10),
                outcome,
                measurement: Measurement::Trace(report),
            },
            ..record(target, at, Vec::new())
        }
    }

    #[test]
    fn traces_are_stored_with_every_hop_and_their_verdict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lossy = trace_record(
            "far",
            t0,
            vec![
                ("198.18.0.1", 0.0),
                ("198.18.1.2", 0.0),
                ("198.18.2.2", 30.0),
            ],
        );
        let Measurement::Trace(report) = &lossy.observation.measurement else {
            unreachable!()
        };
        let hash = report.path_hash.clone();
        // A later trace that could not run has no hops: it is shown, but it is not a path.
        let failed = trace_record("far", t0 + Duration::from_secs(300), Vec::new());
        store.insert(&[lossy, failed]).expect("insert");

        let hashes = store.latest_path_hashes().expect("hashes");
        assert_eq!(
            hashes.get(&("trace".to_string(), "far".to_string())),
            Some(&hash)
        );
        let traces = store.latest_traces().expect("traces");
        assert_eq!(traces.len(), 1);
        assert_eq!(traces[0].failure.as_deref(), Some("no address"));
        assert_eq!(traces[0].verdict, None);

        let fields: String = store
            .conn
            .query_row(
                "SELECT fields FROM observations WHERE measurement = 'trace' ORDER BY id LIMIT 1",
                [],
                |row| row.get(0),
            )
            .expect("row");
        let fields: serde_json::Value = serde_json::from_str(&fields).expect("json");
        assert_eq!(fields["hops"].as_array().map(Vec::len), Some(3));
        assert_eq!(fields["hops"][2]["loss_pct"], 30.0);
        assert_eq!(fields["hops"][2]["addresses"][0], "198.18.2.2");
        assert_eq!(fields["reached"], true);
        assert_eq!(fields["path_changed"], false);
        assert_eq!(fields["verdict"]["verdict"], "loss_from");
        assert_eq!(fields["verdict"]["ttl"], 3);
        assert_eq!(
            fields["verdict_text"],
            "loss starts at hop 3, 198.18.2.2 (30% at the destination)"
        );
    }

    #[test]
    fn latest_checks_are_http_dns_and_tcp_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let t0 = SystemTime::now();
        let tcp = Record {
            probe: "tcp".into(),
            observation: Observation {
                started_at: t0,
                duration: Duration::from_millis(1),
                outcome: Outcome::failure(FailureKind::Refused, "connection refused"),
                measurement: Measurement::Tcp(probes::TcpStats {
                    connect_ms: None,
                    resolve_ms: Some(0.0),
                    address: Some("127.0.0.1:9".parse().expect("address")),
                }),
            },
            ..record("svc", t0, Vec::new())
        };
        store
            .insert(&[record("svc", t0, vec![Some(1.0)]), tcp])
            .expect("insert");
        let checks = store.latest_checks().expect("checks");
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].measurement, "tcp");
        assert!(!checks[0].success);
        assert_eq!(checks[0].fields["address"], "127.0.0.1:9");
        assert_eq!(store.latest_pings().expect("pings").len(), 1);
    }

    fn tcp_record(probe: &str, target: &str, at: SystemTime, ok: bool) -> Record {
        Record {
            probe: probe.into(),
            observation: Observation {
                started_at: at,
                duration: Duration::from_millis(1),
                outcome: if ok {
                    Outcome::Success
                } else {
                    Outcome::failure(FailureKind::Refused, "connection refused")
                },
                measurement: Measurement::Tcp(probes::TcpStats {
                    connect_ms: ok.then_some(1.0),
                    resolve_ms: Some(0.0),
                    address: Some("127.0.0.1:9".parse().expect("address")),
                }),
            },
            ..record(target, at, Vec::new())
        }
    }

    /// The overview reads the latest run of every check on every view: its cost must not grow
    /// with the history (a GROUP BY over every run of the retention did: 60 M rows at 1,000
    /// checks every 20 s for 14 days). Traces (the target and agent pages) likewise.
    #[test]
    fn latest_checks_and_traces_seek_whatever_the_history() {
        use rusqlite::StatementStatus;
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let cost = |runs: u64, sql: &str| {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut store = Store::open(dir.path()).expect("open");
            let records: Vec<Record> = (0..runs)
                .flat_map(|i| {
                    let at = t0 + Duration::from_secs(20 * i);
                    [
                        tcp_record("tcp", "a", at, true),
                        tcp_record("tcp", "b", at, i % 2 == 0),
                        tcp_record("tcp2", "a", at, false),
                        trace_record("a", at, vec![("198.18.0.1", 0.0)]),
                        trace_record("b", at, vec![("198.18.0.1", 0.0)]),
                    ]
                })
                .collect();
            store.insert(&records).expect("insert");
            let mut query = store.conn.prepare(sql).expect("prepare");
            let rows = query.query_map([], |_| Ok(())).expect("query").count();
            (rows, query.get_status(StatementStatus::VmStep))
        };
        for (what, sql, rows) in [
            (
                "checks",
                latest_observations("o.probe, o.target, o.fields", CHECKS, "TRUE"),
                3,
            ),
            (
                "traces",
                latest_observations("o.probe, o.target, o.fields", &["trace"], "TRUE"),
                2,
            ),
        ] {
            let (short_rows, short_steps) = cost(10, &sql);
            let (long_rows, long_steps) = cost(1_000, &sql);
            assert_eq!((short_rows, long_rows), (rows, rows), "{what}");
            assert!(
                long_steps <= short_steps + 50,
                "latest {what}: 100× the history costs {long_steps} VM steps instead of {short_steps}"
            );
        }
    }

    /// A restarted agent reads the last traced path of every target: one seek per (probe,
    /// target), not a GROUP BY over every trace of the retention.
    #[test]
    fn latest_path_hashes_seek_whatever_the_history() {
        use rusqlite::StatementStatus;
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let hops = |first: &'static str| vec![(first, 0.0), ("198.18.2.2", 0.0)];
        let hash = |record: &Record| match &record.observation.measurement {
            Measurement::Trace(report) => report.path_hash.clone(),
            _ => unreachable!(),
        };
        let cost = |runs: u64| {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut store = Store::open(dir.path()).expect("open");
            let mut records: Vec<Record> = (0..runs)
                .flat_map(|i| {
                    let at = t0 + Duration::from_secs(20 * i);
                    [
                        trace_record("a", at, hops("198.18.0.1")),
                        trace_record("b", at, hops("198.18.0.1")),
                        tcp_record("tcp", "a", at, true),
                    ]
                })
                .collect();
            // a's path changed, then its last trace could not run (no hops: not a path).
            let end = t0 + Duration::from_secs(20 * runs);
            let changed = trace_record("a", end, hops("198.18.0.9"));
            let expected = hash(&changed);
            records.push(changed);
            records.push(trace_record("a", end + Duration::from_secs(20), Vec::new()));
            store.insert(&records).expect("insert");
            let hashes = store.latest_path_hashes().expect("hashes");
            assert_eq!(hashes.len(), 2, "{hashes:?}");
            assert_eq!(hashes[&("trace".to_string(), "a".to_string())], expected);
            let mut query = store
                .conn
                .prepare(&latest_path_hashes_sql())
                .expect("prepare");
            assert_eq!(query.query_map([], |_| Ok(())).expect("query").count(), 2);
            query.get_status(StatementStatus::VmStep)
        };
        let (short_steps, long_steps) = (cost(10), cost(1_000));
        assert!(
            long_steps <= short_steps + 50,
            "100× the history costs {long_steps} VM steps instead of {short_steps}"
        );
    }

    #[test]
    fn latest_checks_are_the_latest_run_of_each_probe_and_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let later = t0 + Duration::from_secs(20);
        store
            .insert(&[
                tcp_record("tcp", "b", later, false),
                tcp_record("tcp", "b", t0, true),
                tcp_record("tcp", "a", t0, true),
                tcp_record("web", "a", later, false),
                trace_record("a", t0, vec![("198.18.0.1", 0.0)]),
                trace_record("a", later, vec![("198.18.0.9", 0.0)]),
                record("a", later, vec![Some(1.0)]),
            ])
            .expect("insert");
        let checks: Vec<_> = store
            .latest_checks()
            .expect("checks")
            .into_iter()
            .map(|c| (c.probe, c.target, c.timestamp_ns, c.success))
            .collect();
        let (t0_ns, later_ns) = (probes::unix_ns(t0), probes::unix_ns(later));
        assert_eq!(
            checks,
            [
                ("tcp".to_string(), "a".to_string(), t0_ns, true),
                ("tcp".to_string(), "b".to_string(), later_ns, false),
                ("web".to_string(), "a".to_string(), later_ns, false),
            ]
        );
        let traces = store.latest_traces().expect("traces");
        assert_eq!(traces.len(), 1);
        assert_eq!(traces[0].hops, [Some("198.18.0.9".to_string())]);
    }

    /// The overview draws a sparkline of every target on every view: from the 5-minute buckets
    /// (36 rows for 3 hours), never the 540 raw rounds of each target (540,000 rounds decoded
    /// per view at 1,000 targets).
    #[test]
    fn sparklines_read_one_bucket_per_five_minutes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let records: Vec<Record> = (0..540u64)
            .map(|i| {
                let rtts = if i == 100 {
                    vec![None, None]
                } else {
                    vec![Some(1.0), Some(2.0)]
                };
                record("a", t0 + Duration::from_secs(20 * i), rtts)
            })
            .collect();
        store.insert(&records).expect("insert");
        let (from, to) = (
            probes::unix_ns(t0),
            probes::unix_ns(t0) + 3 * 3_600_000_000_000,
        );
        let points = store
            .ping_sparkline("ping", "a", from, to)
            .expect("sparkline");
        assert_eq!(points.len(), 36, "{} points", points.len());
        assert!(points.iter().all(|p| p.step_ns == 300_000_000_000));
        assert_eq!(points.iter().map(|p| p.rounds).sum::<u32>(), 540);
        // Round 100 (33 min 20 s in) lost both echoes: 2 of the 30 echoes of bucket 6.
        let lossy: Vec<_> = points.iter().filter(|p| p.loss_pct > 0.0).collect();
        assert_eq!(lossy.len(), 1);
        assert!((lossy[0].loss_pct - 100.0 * 2.0 / 30.0).abs() < 1e-9);
    }

    #[test]
    fn read_only_open_creates_no_file_and_refuses_what_is_not_a_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = SystemTime::now();
        {
            let mut store = Store::open(dir.path()).expect("open");
            store
                .insert(&[record("a", t0, vec![Some(2.0)])])
                .expect("insert");
        }
        let files = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let before = files(dir.path());
        assert_eq!(before, [DB_FILE]);
        let store = Store::open_read_only(dir.path()).expect("read-only");
        assert_eq!(store.latest_pings().expect("query")[0].target, "a");
        drop(store);
        assert_eq!(files(dir.path()), before, "a read-only open created files");

        // Beside a running agent (its connection holds the -wal and -shm open) it reads both.
        let mut live = Store::open(dir.path()).expect("open");
        live.insert(&[record("b", t0, vec![Some(3.0)])])
            .expect("insert");
        let store = Store::open_read_only(dir.path()).expect("read-only beside a writer");
        assert_eq!(store.latest_pings().expect("query").len(), 2);
        drop(store);
        drop(live);

        let missing = Store::open_read_only(&dir.path().join("nope")).expect_err("missing");
        assert!(
            format!("{missing:#}").contains("cannot read the data directory"),
            "{missing:#}"
        );
        let empty = tempfile::tempdir().expect("tempdir");
        let error = Store::open_read_only(empty.path()).expect_err("no store");
        assert!(format!("{error:#}").contains("holds no store"), "{error:#}");
        std::fs::write(
            empty.path().join(DB_FILE),
            "not a database at all, just text",
        )
        .expect("write");
        let error = Store::open_read_only(empty.path()).expect_err("not sqlite");
        assert!(
            format!("{error:#}").contains("is not a vantage store"),
            "{error:#}"
        );
    }

    #[test]
    fn prune_enforces_retention_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        {
            let mut store = Store::open(dir.path()).expect("open");
            store
                .insert(&[
                    record(
                        "old",
                        now - Duration::from_secs(15 * 86_400),
                        vec![Some(1.0)],
                    ),
                    record(
                        "new",
                        now - Duration::from_secs(13 * 86_400),
                        vec![Some(1.0)],
                    ),
                ])
                .expect("insert");
            assert_eq!(
                store
                    .prune(
                        &Retention {
                            raw: Duration::from_secs(14 * 86_400),
                            ..DEFAULT_RETENTION
                        },
                        now
                    )
                    .expect("prune"),
                1
            );
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.count().expect("count"), 1);
        assert_eq!(store.latest_pings().expect("query")[0].target, "new");
    }
}
