//! The store's old format (before issue 14: every ping round a JSON text in `observations`),
//! written exactly as that code wrote it, and a generator of realistic 20-echo rounds: what the
//! migration test converts and the store benchmark (`examples/bench_store.rs`) measures.

use std::path::Path;
use std::time::{Duration, SystemTime};

use probes::{FailureKind, Measurement, Observation, Outcome, PingStats};
use rusqlite::{Connection, params};
use vantage::record::Record;

/// The old schema, as `Store::open` created it.
pub const OLD_SCHEMA: &str = "
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
        ON observations (measurement, probe, target, ts_ns);";

/// Open (creating) an old-format store at `path` (the `vantage.db` file).
pub fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open the old-format store");
    conn.execute_batch(OLD_SCHEMA).expect("old schema");
    conn
}

/// Insert ping records as the old `Store::insert` did, in one transaction.
pub fn insert(conn: &mut Connection, records: &[Record]) {
    let tx = conn.transaction().expect("transaction");
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO observations (ts_ns, measurement, agent, site, probe, target, target_site,
                     address, success, failure_kind, failure, duration_ms, fields)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .expect("prepare");
        for r in records {
            let o = &r.observation;
            let Measurement::Ping(stats) = &o.measurement else {
                panic!("the old-format writer writes ping rounds only");
            };
            let (kind, message) = match &o.outcome {
                Outcome::Success => (None, None),
                Outcome::Failure { kind, message } => (Some(kind.as_str()), Some(message.as_str())),
            };
            insert
                .execute(params![
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
                    serde_json::to_string(stats).expect("json"),
                ])
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
}

/// A deterministic generator of realistic rounds: per target a base RTT of 1–200 ms, each echo a
/// little above it (nanosecond precision, as the ICMP probe measures), now and then a spike, about
/// 1% of echoes lost and now and then a round that loses everything.
pub struct Rounds {
    seed: u64,
    pub echoes: usize,
}

impl Rounds {
    pub fn new(seed: u64) -> Rounds {
        Rounds {
            seed: seed | 1,
            echoes: 20,
        }
    }

    fn next(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    /// Round `seq` of target number `target` (named `target-N`), started at `at`.
    pub fn round(&mut self, target: usize, seq: u64, at: SystemTime) -> Record {
        let base_ns = 1_000_000 + (target as u64 * 7_919_993) % 199_000_000;
        let dead = self.next() % 500 == 0;
        let rtts: Vec<Option<f64>> = (0..self.echoes)
            .map(|_| {
                let r = self.next();
                if dead || r % 100 == 0 {
                    return None;
                }
                // Jitter: up to 2% of the base plus 0–400 µs; a spike of up to 5x now and then.
                let mut ns = base_ns + (r >> 8) % (base_ns / 50 + 1) + (r >> 24) % 400_000;
                if r % 97 == 0 {
                    ns += (r >> 32) % (base_ns * 4);
                }
                Some(ns as f64 / 1e6)
            })
            .collect();
        let stats = PingStats::from_rtts(rtts);
        let outcome = if stats.received == 0 {
            Outcome::failure(FailureKind::Timeout, "no reply")
        } else {
            Outcome::Success
        };
        Record {
            agent: "scl3-probe-01".into(),
            site: "scl3".into(),
            probe: "icmp".into(),
            target: format!("target-{target}"),
            target_site: "sjc1".into(),
            address: Some(format!("198.18.{}.{}", target / 250, target % 250 + 1)),
            observation: Observation {
                started_at: at,
                duration: Duration::from_millis(1_000 + seq % 7),
                outcome,
                measurement: Measurement::Ping(stats),
            },
        }
    }
}
