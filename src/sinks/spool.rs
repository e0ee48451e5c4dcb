//! The durable spool: every point bound for an output is a row in `DATA_DIR/spool.db` (SQLite, WAL)
//! before it is sent, and is deleted only after the output answered 2xx. One row per point and
//! output, read oldest first (timestamp, then arrival), so a batch can be split (413) or bisected
//! (400) down to the line and delivery is in timestamp order per output.
//!
//! Counters that must survive restarts (accepted, delivered, dropped, dead-lettered; the last error)
//! live in the `outputs` table and change in the same transaction as the rows they count, so
//! `accepted = delivered + dead_letter + dropped_spool_full + pending` holds for every output at every
//! commit, and every point offered to the sinks is either accepted or counted in `dropped_unspooled`.
//!
//! Durability: WAL with `synchronous = NORMAL`, so a commit survives the process being killed
//! (SIGKILL, OOM, panic) but may be lost if the *machine* loses power — the outages this spool is for
//! are the store's, not the agent host's.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};

/// The spool's file inside the data directory.
pub const SPOOL_FILE: &str = "spool.db";

/// Each output's oldest waiting point: a seek in `points_in_order` per output.
const OLDEST_PENDING: &str =
    "SELECT o.name, (SELECT MIN(p.ts_ns) FROM points p WHERE p.output = o.id)
     FROM outputs o ORDER BY o.name";

/// A connection to the spool. Each thread opens its own; SQLite serialises writers.
#[derive(Debug)]
pub struct Spool {
    conn: Connection,
    path: PathBuf,
}

/// One spooled point of one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledPoint {
    pub id: i64,
    pub ts_ns: i64,
    /// One line of line protocol, without the newline.
    pub line: Vec<u8>,
}

/// A line the output rejected (400) on its own, kept with the server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub ts_ns: i64,
    pub line: String,
    pub status: u16,
    pub message: String,
    pub at_ns: i64,
}

/// What `vantage report` and the self-metrics show per output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputTotals {
    pub name: String,
    /// Points written to the spool for this output, since the spool was created.
    pub accepted: u64,
    pub delivered: u64,
    /// Never written to the spool: the hand-off queue was full or the disk refused the write.
    pub dropped_unspooled: u64,
    /// Written, then dropped oldest-first to keep the spool under `spool_max_bytes`.
    pub dropped_spool_full: u64,
    pub dead_letter: u64,
    pub pending_points: u64,
    pub pending_bytes: u64,
    pub oldest_pending_ts_ns: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ns: Option<i64>,
    pub last_delivery_ns: Option<i64>,
}

pub(crate) fn now_ns() -> i64 {
    probes::unix_ns(SystemTime::now())
}

impl OutputTotals {
    /// Every point lost before delivery, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_unspooled + self.dropped_spool_full
    }
}

impl Spool {
    /// Open (creating if needed) `DATA_DIR/spool.db`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Spool> {
        crate::config::data_dir::create(data_dir)?;
        let path = data_dir.join(SPOOL_FILE);
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open spool {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 30000;
             PRAGMA journal_size_limit = 67108864;
             CREATE TABLE IF NOT EXISTS outputs (
                 id               INTEGER PRIMARY KEY,
                 name             TEXT NOT NULL UNIQUE,
                 accepted         INTEGER NOT NULL DEFAULT 0,
                 delivered        INTEGER NOT NULL DEFAULT 0,
                 dropped_unspooled  INTEGER NOT NULL DEFAULT 0,
                 dropped_spool_full INTEGER NOT NULL DEFAULT 0,
                 dead_letter      INTEGER NOT NULL DEFAULT 0,
                 last_error       TEXT,
                 last_error_ns    INTEGER,
                 last_delivery_ns INTEGER
             );
             CREATE TABLE IF NOT EXISTS points (
                 id     INTEGER PRIMARY KEY AUTOINCREMENT,
                 output INTEGER NOT NULL,
                 ts_ns  INTEGER NOT NULL,
                 line   BLOB NOT NULL
             );
             CREATE INDEX IF NOT EXISTS points_in_order ON points (output, ts_ns, id);
             CREATE TABLE IF NOT EXISTS dead_letters (
                 id      INTEGER PRIMARY KEY,
                 output  INTEGER NOT NULL,
                 ts_ns   INTEGER NOT NULL,
                 line    BLOB NOT NULL,
                 status  INTEGER NOT NULL,
                 message TEXT NOT NULL,
                 at_ns   INTEGER NOT NULL
             );",
        )
        .with_context(|| format!("cannot initialise spool {}", path.display()))?;
        Ok(Spool { conn, path })
    }

    /// Open an existing spool read-only (for `vantage report`); None when there is none.
    pub fn open_read_only(data_dir: &Path) -> anyhow::Result<Option<Spool>> {
        let path = data_dir.join(SPOOL_FILE);
        if !path.exists() {
            return Ok(None);
        }
        // Creates no -wal or -shm beside a copied spool (the web page may run as root).
        let conn = crate::store::open_sqlite_read_only(&path)
            .with_context(|| format!("cannot open spool {}", path.display()))?;
        Ok(Some(Spool { conn, path }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id of output `name`, registering it on first use.
    pub fn output_id(&mut self, name: &str) -> anyhow::Result<i64> {
        self.conn
            .execute("INSERT OR IGNORE INTO outputs (name) VALUES (?1)", [name])?;
        Ok(self
            .conn
            .query_row("SELECT id FROM outputs WHERE name = ?1", [name], |row| {
                row.get(0)
            })?)
    }

    /// Persist `points` (timestamp, line) for every output in `outputs`, and count `dropped_before`
    /// points lost upstream (hand-off queue full, failed writes) against each as `dropped_unspooled`,
    /// in one transaction: all or nothing.
    pub fn append(
        &mut self,
        outputs: &[i64],
        points: &[(i64, Vec<u8>)],
        dropped_before: u64,
    ) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO points (output, ts_ns, line) VALUES (?1, ?2, ?3)")?;
            let mut count = tx.prepare_cached(
                "UPDATE outputs SET accepted = accepted + ?2, dropped_unspooled = dropped_unspooled + ?3
                 WHERE id = ?1",
            )?;
            for &output in outputs {
                for (ts_ns, line) in points {
                    insert.execute(params![output, ts_ns, line])?;
                }
                count.execute(params![output, points.len() as i64, dropped_before as i64])?;
            }
        }
        tx.commit()
    }

    /// Count `dropped` points against every output in `outputs` (used at shutdown, when they could
    /// not be written).
    pub fn count_dropped(&mut self, outputs: &[i64], dropped: u64) -> rusqlite::Result<()> {
        self.append(outputs, &[], dropped)
    }

    /// Points and bytes of line protocol waiting for `output`.
    pub fn pending(&self, output: i64) -> rusqlite::Result<(u64, u64)> {
        self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(line)), 0) FROM points WHERE output = ?1",
            [output],
            |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
        )
    }

    /// Per output (by name): the timestamp of its oldest waiting point, if one waits. One index
    /// seek per output, for what is read often (`/metrics`); [`Spool::totals`] counts and sums
    /// every waiting point (a second per call at half a full spool).
    pub fn oldest_pending(&self) -> rusqlite::Result<Vec<(String, Option<i64>)>> {
        let mut query = self.conn.prepare_cached(OLDEST_PENDING)?;
        let rows = query.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect()
    }

    /// Timestamp of the oldest point waiting for `output`.
    pub fn oldest_pending_ts(&self, output: i64) -> rusqlite::Result<Option<i64>> {
        self.conn.query_row(
            "SELECT MIN(ts_ns) FROM points WHERE output = ?1",
            [output],
            |row| row.get(0),
        )
    }

    /// Up to `limit` of the oldest points waiting for `output`, oldest first.
    pub fn oldest(&self, output: i64, limit: usize) -> rusqlite::Result<Vec<SpooledPoint>> {
        let mut query = self.conn.prepare_cached(
            "SELECT id, ts_ns, line FROM points WHERE output = ?1 ORDER BY ts_ns, id LIMIT ?2",
        )?;
        let rows = query.query_map(params![output, limit as i64], |row| {
            Ok(SpooledPoint {
                id: row.get(0)?,
                ts_ns: row.get(1)?,
                line: row.get(2)?,
            })
        })?;
        rows.collect()
    }

    /// Drop the oldest points of `output` until at least `bytes_to_free` bytes are gone, skipping
    /// `in_flight` ones (being sent right now); counted as dropped. Returns (points, bytes) removed.
    pub fn drop_oldest(
        &mut self,
        output: i64,
        bytes_to_free: u64,
        in_flight: &HashSet<i64>,
    ) -> rusqlite::Result<(u64, u64)> {
        let tx = self.conn.transaction()?;
        let mut victims = Vec::new();
        let mut freed = 0u64;
        {
            let mut query = tx.prepare_cached(
                "SELECT id, length(line) FROM points WHERE output = ?1 ORDER BY ts_ns, id",
            )?;
            let mut rows = query.query([output])?;
            while freed < bytes_to_free {
                let Some(row) = rows.next()? else { break };
                let id: i64 = row.get(0)?;
                if in_flight.contains(&id) {
                    continue;
                }
                freed += row.get::<_, i64>(1)? as u64;
                victims.push(id);
            }
        }
        {
            let mut delete = tx.prepare_cached("DELETE FROM points WHERE id = ?1")?;
            for id in &victims {
                delete.execute([id])?;
            }
            tx.execute(
                "UPDATE outputs SET dropped_spool_full = dropped_spool_full + ?2 WHERE id = ?1",
                params![output, victims.len() as i64],
            )?;
        }
        tx.commit()?;
        Ok((victims.len() as u64, freed))
    }

    /// Remove points the output acknowledged (2xx) and count them delivered. Returns (points,
    /// bytes) actually removed.
    pub fn remove_delivered(
        &mut self,
        output: i64,
        points: &[SpooledPoint],
    ) -> rusqlite::Result<(u64, u64)> {
        let tx = self.conn.transaction()?;
        let (mut removed, mut bytes) = (0u64, 0u64);
        {
            let mut delete = tx.prepare_cached("DELETE FROM points WHERE id = ?1")?;
            for point in points {
                if delete.execute([point.id])? == 1 {
                    removed += 1;
                    bytes += point.line.len() as u64;
                }
            }
            tx.execute(
                "UPDATE outputs SET delivered = delivered + ?2, last_delivery_ns = ?3 WHERE id = ?1",
                params![output, removed as i64, now_ns()],
            )?;
        }
        tx.commit()?;
        Ok((removed, bytes))
    }

    /// Move one point the output rejected on its own (400) to the dead-letter table, with the
    /// server's status and message. Returns whether the point was still pending.
    pub fn dead_letter(
        &mut self,
        output: i64,
        point: &SpooledPoint,
        status: u16,
        message: &str,
    ) -> rusqlite::Result<bool> {
        let tx = self.conn.transaction()?;
        let removed = tx.execute("DELETE FROM points WHERE id = ?1", [point.id])? == 1;
        if removed {
            tx.execute(
                "INSERT INTO dead_letters (output, ts_ns, line, status, message, at_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![output, point.ts_ns, point.line, status, message, now_ns()],
            )?;
            tx.execute(
                "UPDATE outputs SET dead_letter = dead_letter + 1 WHERE id = ?1",
                [output],
            )?;
        }
        tx.commit()?;
        Ok(removed)
    }

    /// The dead letters of output `name`, oldest first.
    pub fn dead_letters(&self, name: &str) -> rusqlite::Result<Vec<DeadLetter>> {
        let mut query = self.conn.prepare(
            "SELECT d.ts_ns, d.line, d.status, d.message, d.at_ns FROM dead_letters d
             JOIN outputs o ON o.id = d.output WHERE o.name = ?1 ORDER BY d.id",
        )?;
        let rows = query.query_map([name], |row| {
            Ok(DeadLetter {
                ts_ns: row.get(0)?,
                line: String::from_utf8_lossy(&row.get::<_, Vec<u8>>(1)?).into_owned(),
                status: row.get(2)?,
                message: row.get(3)?,
                at_ns: row.get(4)?,
            })
        })?;
        rows.collect()
    }

    /// Remember the output's latest delivery error (shown by `vantage report`).
    pub fn record_error(&mut self, output: i64, message: &str) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE outputs SET last_error = ?2, last_error_ns = ?3 WHERE id = ?1",
            params![output, message, now_ns()],
        )?;
        Ok(())
    }

    /// Totals of every output that ever used this spool, by name.
    pub fn totals(&self) -> anyhow::Result<Vec<OutputTotals>> {
        let mut query = self.conn.prepare(
            "SELECT id, name, accepted, delivered, dropped_unspooled, dropped_spool_full, dead_letter,
                    last_error, last_error_ns, last_delivery_ns FROM outputs ORDER BY name",
        )?;
        let outputs = query
            .query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    OutputTotals {
                        name: row.get(1)?,
                        accepted: row.get::<_, i64>(2)? as u64,
                        delivered: row.get::<_, i64>(3)? as u64,
                        dropped_unspooled: row.get::<_, i64>(4)? as u64,
                        dropped_spool_full: row.get::<_, i64>(5)? as u64,
                        dead_letter: row.get::<_, i64>(6)? as u64,
                        last_error: row.get(7)?,
                        last_error_ns: row.get(8)?,
                        last_delivery_ns: row.get(9)?,
                        ..OutputTotals::default()
                    },
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut totals = Vec::with_capacity(outputs.len());
        for (id, mut t) in outputs {
            (t.pending_points, t.pending_bytes) = self.pending(id)?;
            t.oldest_pending_ts_ns = self.oldest_pending_ts(id)?;
            totals.push(t);
        }
        Ok(totals)
    }

    /// Totals of one output by id.
    pub fn totals_of(&self, output: i64) -> anyhow::Result<OutputTotals> {
        let name: Option<String> = self
            .conn
            .query_row("SELECT name FROM outputs WHERE id = ?1", [output], |row| {
                row.get(0)
            })
            .optional()?;
        let name = name.with_context(|| format!("no output {output} in the spool"))?;
        self.totals()?
            .into_iter()
            .find(|t| t.name == name)
            .with_context(|| format!("no output {name:?} in the spool"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(range: std::ops::Range<i64>) -> Vec<(i64, Vec<u8>)> {
        range
            .map(|i| (i, format!("ping,target=t{i} sent=1i {i}").into_bytes()))
            .collect()
    }

    #[test]
    fn oldest_first_by_timestamp_and_counters_balance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path()).expect("open");
        let (a, b) = (
            spool.output_id("a").expect("a"),
            spool.output_id("b").expect("b"),
        );
        assert_eq!(spool.output_id("a").expect("again"), a);
        let mut points = lines(0..10);
        points.reverse(); // arrival order differs from timestamp order
        spool.append(&[a, b], &points, 3).expect("append");
        let batch = spool.oldest(a, 4).expect("oldest");
        assert_eq!(
            batch.iter().map(|p| p.ts_ns).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(spool.remove_delivered(a, &batch).expect("remove").0, 4);
        // Removing again (a retry after a lost answer) counts nothing twice.
        assert_eq!(spool.remove_delivered(a, &batch).expect("again").0, 0);
        assert!(
            spool
                .dead_letter(a, &spool.oldest(a, 1).expect("next")[0], 400, "bad")
                .expect("dl")
        );
        let totals = spool.totals().expect("totals");
        let ta = &totals[0];
        assert_eq!(
            (
                ta.accepted,
                ta.delivered,
                ta.dropped_unspooled,
                ta.dead_letter,
                ta.pending_points
            ),
            (10, 4, 3, 1, 5)
        );
        assert_eq!(ta.oldest_pending_ts_ns, Some(5));
        assert_eq!(
            ta.accepted,
            ta.delivered + ta.dead_letter + ta.pending_points
        );
        assert_eq!(totals[1].pending_points, 10);
        let dead = spool.dead_letters("a").expect("dead letters");
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].ts_ns, dead[0].status, dead[0].message.as_str()),
            (4, 400, "bad")
        );
        assert_eq!(dead[0].line, "ping,target=t4 sent=1i 4");
    }

    /// `/metrics` needs only each output's oldest waiting point, and asked [`Spool::totals`],
    /// which counts and sums every waiting point: a second a scrape at 2,000,000 points.
    #[test]
    fn the_oldest_waiting_point_per_output_is_a_seek_not_a_walk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path()).expect("open");
        let a = spool.output_id("a").expect("a");
        spool.output_id("b").expect("b");
        spool.append(&[a], &lines(3..10), 0).expect("append");
        assert_eq!(
            spool.oldest_pending().expect("oldest"),
            [("a".to_string(), Some(3)), ("b".to_string(), None)]
        );
        let mut plan = spool
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {OLDEST_PENDING}"))
            .expect("explain");
        let steps: Vec<String> = plan
            .query_map([], |r| r.get(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        assert!(
            steps
                .iter()
                .any(|s| s.contains("USING COVERING INDEX points_in_order"))
                && !steps.iter().any(|s| s.starts_with("SCAN p")),
            "{steps:?}"
        );
    }

    #[test]
    fn drop_oldest_skips_points_in_flight_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut spool = Spool::open(dir.path()).expect("open");
            let a = spool.output_id("a").expect("a");
            spool.append(&[a], &lines(0..10), 0).expect("append");
            let in_flight: HashSet<i64> = spool
                .oldest(a, 2)
                .expect("oldest")
                .iter()
                .map(|p| p.id)
                .collect();
            let one = spool.oldest(a, 1).expect("one")[0].line.len() as u64;
            let (points, bytes) = spool.drop_oldest(a, 3 * one, &in_flight).expect("drop");
            assert_eq!((points, bytes), (3, 3 * one));
            let left: Vec<i64> = spool
                .oldest(a, 100)
                .expect("left")
                .iter()
                .map(|p| p.ts_ns)
                .collect();
            assert_eq!(left, [0, 1, 5, 6, 7, 8, 9]);
        }
        let spool = Spool::open(dir.path()).expect("reopen");
        let t = &spool.totals().expect("totals")[0];
        assert_eq!(
            (t.accepted, t.dropped_spool_full, t.pending_points),
            (10, 3, 7)
        );
        assert_eq!(
            t.accepted,
            t.delivered + t.dead_letter + t.dropped_spool_full + t.pending_points
        );
        let ro = Spool::open_read_only(dir.path())
            .expect("read-only")
            .expect("exists");
        assert_eq!(ro.totals().expect("totals")[0].pending_points, 7);
    }
}
