//! Converts a store of the old format in place: ping rounds kept as JSON text in `observations`
//! move to the compact [`series`](super::series) tables (rollups included), a chunk at a time.
//!
//! Each chunk is one transaction that inserts the rounds and deletes the same rows from
//! `observations`, and commits only if the counts match; an interrupted migration (killed,
//! disk full) resumes at the next open where it stopped, and nothing is converted twice. A row
//! whose fields cannot be read is moved to `ping_unconverted` as it was (never dropped) and
//! logged. The old rows' space is reused by new rows; `VACUUM` gives it back to the file system.
//! The agent converts at start, before it probes: every few seconds it logs the rounds converted,
//! of how many, and the time it expects still to take.

use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::params;

use super::Store;
use super::series::{self, Round, SeriesKey};

/// Rounds per transaction.
pub const CHUNK: usize = 5_000;

/// How often a long conversion logs its progress and the time it expects to take.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The time left to convert `total` rounds at the pace of the first `done` (whole seconds).
fn time_left(done: u64, total: u64, elapsed: Duration) -> Duration {
    if done == 0 {
        return Duration::ZERO;
    }
    let left = total.saturating_sub(done) as f64 * elapsed.as_secs_f64() / done as f64;
    Duration::from_secs(left.ceil() as u64)
}

/// Migrate every ping round left in `observations`, `chunk` rounds a transaction; with
/// `max_chunks`, stop after that many chunks (as an interrupted migration would). Returns how
/// many rounds were converted.
pub fn ping_rounds(
    store: &mut Store,
    chunk: usize,
    max_chunks: Option<usize>,
) -> anyhow::Result<u64> {
    let path = store.path.display().to_string();
    let total: u64 = store.conn.query_row(
        "SELECT COUNT(*) FROM observations WHERE measurement = 'ping'",
        [],
        |row| row.get(0),
    )?;
    if total == 0 {
        return Ok(0);
    }
    tracing::info!(store = %path, rounds = total, "converting ping rounds to the compact format");
    let (mut converted, mut unconverted, mut chunks) = (0u64, 0u64, 0usize);
    let (started, mut last_log) = (Instant::now(), Instant::now());
    while max_chunks.is_none_or(|max| chunks < max) {
        let (done, bad) = convert_chunk(store, chunk)
            .with_context(|| format!("cannot convert the ping rounds of {path} (the conversion resumes where it stopped at the next start)"))?;
        if done == 0 {
            break;
        }
        converted += done - bad;
        unconverted += bad;
        chunks += 1;
        if last_log.elapsed() >= PROGRESS_EVERY {
            last_log = Instant::now();
            let done = converted + unconverted;
            let left = time_left(done, total, started.elapsed());
            tracing::info!(
                store = %path,
                converted = done,
                of = total,
                rounds_per_s = (done as f64 / started.elapsed().as_secs_f64()).round(),
                about_left = %crate::config::format_duration(left),
                "converting ping rounds (the agent probes once it is done)"
            );
        }
    }
    if unconverted > 0 {
        tracing::error!(store = %path, unconverted, "ping rounds whose fields could not be read were kept as they were in the table ping_unconverted");
    }
    if max_chunks.is_some_and(|max| chunks >= max) {
        tracing::warn!(store = %path, converted, "conversion stopped early; it resumes at the next open");
        return Ok(converted);
    }
    tracing::info!(store = %path, converted, "ping rounds converted; `sqlite3 vantage.db VACUUM` (with the agent stopped) returns the space freed to the file system");
    Ok(converted)
}

/// Convert the oldest `chunk` ping rows; returns (rows moved, of which unconverted).
fn convert_chunk(store: &mut Store, chunk: usize) -> anyhow::Result<(u64, u64)> {
    let tx = store.conn.transaction()?;
    let rows: Vec<OldRow> = tx
        .prepare(
            "SELECT id, ts_ns, agent, site, probe, target, target_site, address, failure_kind,
                    failure, duration_ms, fields
             FROM observations WHERE measurement = 'ping' ORDER BY id LIMIT ?1",
        )?
        .query_map([chunk as i64], |row| {
            Ok(OldRow {
                id: row.get(0)?,
                ts_ns: row.get(1)?,
                series: SeriesKey {
                    agent: row.get(2)?,
                    site: row.get(3)?,
                    probe: row.get(4)?,
                    target: row.get(5)?,
                    target_site: row.get(6)?,
                    address: row.get(7)?,
                },
                failure_kind: row.get(8)?,
                failure: row.get(9)?,
                duration_ms: row.get(10)?,
                fields: row.get(11)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let Some(last) = rows.last().map(|row| row.id) else {
        return Ok((0, 0));
    };
    let rtts: Vec<Option<Vec<Option<f64>>>> = rows.iter().map(|row| row.rtts()).collect();
    let mut rounds = Vec::with_capacity(rows.len());
    let mut bad = 0u64;
    for (row, rtts) in rows.iter().zip(&rtts) {
        match rtts {
            Some(rtts) => rounds.push(Round {
                series: row.series.clone(),
                ts_ns: row.ts_ns,
                duration_ms: row.duration_ms.round() as i64,
                failure_kind: row.failure_kind.as_deref(),
                failure: row.failure.as_deref(),
                rtts_ms: rtts,
            }),
            None => {
                tx.execute(
                    "CREATE TABLE IF NOT EXISTS ping_unconverted AS
                     SELECT * FROM observations WHERE 0",
                    [],
                )?;
                tx.execute(
                    "INSERT INTO ping_unconverted SELECT * FROM observations WHERE id = ?1",
                    [row.id],
                )?;
                bad += 1;
            }
        }
    }
    let inserted = series::insert_rounds(&tx, &mut store.series, &rounds, true)?;
    let deleted = tx.execute(
        "DELETE FROM observations WHERE measurement = 'ping' AND id <= ?1",
        params![last],
    )?;
    anyhow::ensure!(
        inserted as u64 + bad == rows.len() as u64 && deleted == rows.len(),
        "{} rows read, {inserted} converted, {bad} kept unconverted, {deleted} deleted: counts differ, nothing changed",
        rows.len()
    );
    tx.commit()?;
    Ok((rows.len() as u64, bad))
}

/// A ping round as the old format kept it.
struct OldRow {
    id: i64,
    ts_ns: i64,
    series: SeriesKey,
    failure_kind: Option<String>,
    failure: Option<String>,
    duration_ms: f64,
    fields: String,
}

impl OldRow {
    /// Every echo in send order from the JSON fields' `rtts_ms`; `None` if unreadable.
    fn rtts(&self) -> Option<Vec<Option<f64>>> {
        let fields: serde_json::Value = serde_json::from_str(&self.fields).ok()?;
        fields
            .get("rtts_ms")?
            .as_array()?
            .iter()
            .map(|rtt| match rtt {
                serde_json::Value::Null => Some(None),
                rtt => rtt.as_f64().map(Some),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_follows_the_pace_so_far() {
        let minute = Duration::from_secs(60);
        assert_eq!(time_left(1_000, 4_000, minute), 3 * minute);
        assert_eq!(
            time_left(3, 10, Duration::from_secs(1)),
            Duration::from_secs(3)
        );
        assert_eq!(time_left(10, 10, minute), Duration::ZERO);
        assert_eq!(time_left(0, 10, minute), Duration::ZERO);
    }
}
