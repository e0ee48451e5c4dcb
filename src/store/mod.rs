//! The embedded store (default): every observation in SQLite under the data directory, kept for the
//! configured retention. One writer thread owns the connection; probes never wait on disk I/O
//! beyond a bounded channel.

pub mod writer;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use probes::{Measurement, Observation, Outcome};
use rusqlite::{Connection, params};
use serde::Serialize;

/// An observation with the tags that say who measured what (the schema's common tags).
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub agent: String,
    pub site: String,
    pub probe: String,
    pub target: String,
    pub target_site: String,
    /// The address actually probed, if the target resolved.
    pub address: Option<String>,
    pub observation: Observation,
}

/// The SQLite file inside the data directory.
pub const DB_FILE: &str = "vantage.db";

#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
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

impl Store {
    /// Open (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        // Canonical, so logs and errors name the directory plainly (no `config/../`).
        let path = data_dir
            .canonicalize()
            .unwrap_or_else(|_| data_dir.to_path_buf())
            .join(DB_FILE);
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open store {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
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
        .with_context(|| format!("cannot initialise store {}", path.display()))?;
        Ok(Store { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Persist records in one transaction, with their original timestamps.
    pub fn insert(&mut self, records: &[Record]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO observations (ts_ns, measurement, agent, site, probe, target, target_site,
                     address, success, failure_kind, failure, duration_ms, fields)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for r in records {
                let o = &r.observation;
                let (kind, message) = match &o.outcome {
                    Outcome::Success => (None, None),
                    Outcome::Failure { kind, message } => {
                        (Some(kind.as_str()), Some(message.as_str()))
                    }
                };
                let fields = match &o.measurement {
                    Measurement::Ping(stats) => serde_json::to_string(stats)?,
                    Measurement::Tcp(stats) => serde_json::to_string(stats)?,
                    Measurement::Http(stats) => serde_json::to_string(stats)?,
                    Measurement::Dns(stats) => serde_json::to_string(stats)?,
                    Measurement::Trace(report) => serde_json::to_string(report)?,
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
        }
        tx.commit()?;
        Ok(())
    }

    /// Delete observations older than `retention` before `now`; returns how many were removed.
    pub fn prune(&mut self, retention: Duration, now: SystemTime) -> anyhow::Result<usize> {
        let cutoff = now.checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH);
        let cutoff_ns = cutoff
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Ok(self
            .conn
            .execute("DELETE FROM observations WHERE ts_ns < ?1", [cutoff_ns])?)
    }

    pub fn count(&self) -> anyhow::Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM observations", [], |row| row.get(0))?)
    }

    /// The most recent ping round per (probe, target), ordered by probe then target.
    pub fn latest_pings(&self) -> anyhow::Result<Vec<LatestPing>> {
        let mut query = self.conn.prepare(
            "SELECT o.probe, o.target, o.target_site, o.address, o.ts_ns, o.failure, o.fields
             FROM observations o
             JOIN (SELECT MAX(id) AS id FROM observations WHERE measurement = 'ping'
                   GROUP BY probe, target) latest ON latest.id = o.id
             ORDER BY o.probe, o.target",
        )?;
        let rows = query.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, Option<String>>(5)?,
                row.get::<_, String>(6)?,
            ))
        })?;
        let mut latest = Vec::new();
        for row in rows {
            let (probe, target, target_site, address, timestamp_ns, failure, fields) = row?;
            let fields: serde_json::Value = serde_json::from_str(&fields).with_context(|| {
                format!(
                    "corrupt fields for {probe}/{target} in {}",
                    self.path.display()
                )
            })?;
            let number = |name: &str| fields.get(name).and_then(serde_json::Value::as_f64);
            latest.push(LatestPing {
                probe,
                target,
                target_site,
                address,
                timestamp_ns,
                failure,
                sent: number("sent").unwrap_or(0.0) as u32,
                loss_pct: number("loss_pct").unwrap_or(100.0),
                rtt_median_ms: number("rtt_median_ms"),
                rtt_p10_ms: number("rtt_p10_ms"),
                rtt_p90_ms: number("rtt_p90_ms"),
                rtt_max_ms: number("rtt_max_ms"),
            });
        }
        Ok(latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probes::{FailureKind, PingStats};

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
                    .prune(Duration::from_secs(14 * 86_400), now)
                    .expect("prune"),
                1
            );
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.count().expect("count"), 1);
        assert_eq!(store.latest_pings().expect("query")[0].target, "new");
    }
}
