//! Ping rounds, the bulk of the store, in compact typed rows, and their rollups.
//!
//! - `series` interns the tags of a ping series (probe, target, agent, site, target_site,
//!   address) as an integer id.
//! - `ping_rounds` (raw; `WITHOUT ROWID`, keyed by series and start time): one row per round
//!   with `sent`, `received`, the failure, and every RTT in a varint blob ([`codec`]). The
//!   percentiles are computed from the blob when read, exactly as the probe computed them (to
//!   the microsecond).
//! - `ping_5m` and `ping_1h`: per series and 5-minute or 1-hour bucket, the rounds, echoes sent
//!   and received, and the distribution of every RTT received ([`codec::Histogram`], 1% wide
//!   buckets): enough for the median and the p10–p90 / p25–p75 smoke. The writer updates the
//!   buckets the rounds it inserts fall in (no scan); each level has its own retention.
//! - The view `ping` joins raw rounds with their tags for ad-hoc SQL.
//!
//! The overview's sparklines ([`Store::ping_sparkline`]) read 5-minute buckets: one row per
//! bucket per target, not every round. [`Store::ping_series`] picks the level a chart needs: raw
//! up to [`RAW_SPAN`], 5-minute buckets up to [`FIVE_MIN_SPAN`], hourly beyond, and a coarser
//! level when the finer one has been pruned past the start of the span.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use probes::PingStats;
use rusqlite::{OptionalExtension, Transaction, params};

use super::codec::{self, Histogram};
use super::{LatestPing, PingPoint, Store};
use crate::config::{self, AgentConfig};

pub(super) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS series (
        id          INTEGER PRIMARY KEY,
        probe       TEXT NOT NULL,
        target      TEXT NOT NULL,
        agent       TEXT NOT NULL,
        site        TEXT NOT NULL,
        target_site TEXT NOT NULL,
        address     TEXT NOT NULL, -- '' when the target did not resolve
        UNIQUE (probe, target, agent, site, target_site, address)
    );
    CREATE TABLE IF NOT EXISTS ping_rounds (
        series       INTEGER NOT NULL,
        ts_ns        INTEGER NOT NULL,
        duration_ms  INTEGER NOT NULL,
        sent         INTEGER NOT NULL,
        received     INTEGER NOT NULL,
        failure_kind TEXT,
        failure      TEXT,
        rtts         BLOB NOT NULL,
        PRIMARY KEY (series, ts_ns)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS ping_5m (
        series    INTEGER NOT NULL,
        bucket_ns INTEGER NOT NULL,
        rounds    INTEGER NOT NULL,
        sent      INTEGER NOT NULL,
        received  INTEGER NOT NULL,
        rtts      BLOB NOT NULL,
        PRIMARY KEY (series, bucket_ns)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS ping_1h (
        series    INTEGER NOT NULL,
        bucket_ns INTEGER NOT NULL,
        rounds    INTEGER NOT NULL,
        sent      INTEGER NOT NULL,
        received  INTEGER NOT NULL,
        rtts      BLOB NOT NULL,
        PRIMARY KEY (series, bucket_ns)
    ) WITHOUT ROWID;
    CREATE VIEW IF NOT EXISTS ping AS
        SELECT r.ts_ns, s.agent, s.site, s.probe, s.target, s.target_site,
               NULLIF(s.address, '') AS address, r.failure_kind IS NULL AS success,
               r.failure_kind, r.failure, r.duration_ms, r.sent, r.received, r.rtts
        FROM ping_rounds r JOIN series s ON s.id = r.series;";

/// The latest round of every series, by probe and target.
pub(super) const LATEST_PINGS: &str = "
    SELECT s.probe, s.target, s.target_site, s.address, r.ts_ns, r.failure_kind,
           r.failure, r.rtts
    FROM series s JOIN ping_rounds r ON r.series = s.id
         AND r.ts_ns = (SELECT MAX(ts_ns) FROM ping_rounds WHERE series = s.id)
    ORDER BY s.probe, s.target, r.ts_ns";

/// Spans up to this are drawn from raw rounds.
pub const RAW_SPAN: Duration = Duration::from_secs(6 * 3600);
/// Spans up to this (and beyond [`RAW_SPAN`]) are drawn from 5-minute buckets; longer ones from
/// hourly buckets.
pub const FIVE_MIN_SPAN: Duration = Duration::from_secs(14 * 86_400);

/// How long each level is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw: Duration,
    pub five_min: Duration,
    pub hour: Duration,
}

pub const DEFAULT_RETENTION: Retention = Retention {
    raw: config::DEFAULT_RETENTION,
    five_min: config::DEFAULT_RETENTION_5M,
    hour: config::DEFAULT_RETENTION_1H,
};

impl From<&AgentConfig> for Retention {
    fn from(agent: &AgentConfig) -> Self {
        Retention {
            raw: agent.retention,
            five_min: agent.retention_5m,
            hour: agent.retention_1h,
        }
    }
}

impl Default for Retention {
    fn default() -> Self {
        DEFAULT_RETENTION
    }
}

/// A rollup level: its table and bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Level {
    Raw,
    FiveMin,
    Hour,
}

impl Level {
    const ROLLUPS: [Level; 2] = [Level::FiveMin, Level::Hour];

    fn table(self) -> &'static str {
        match self {
            Level::Raw => "ping_rounds",
            Level::FiveMin => "ping_5m",
            Level::Hour => "ping_1h",
        }
    }

    fn time_column(self) -> &'static str {
        match self {
            Level::Raw => "ts_ns",
            Level::FiveMin | Level::Hour => "bucket_ns",
        }
    }

    fn step_ns(self) -> i64 {
        match self {
            Level::Raw => 0,
            Level::FiveMin => 300_000_000_000,
            Level::Hour => 3_600_000_000_000,
        }
    }

    fn retention(self, retention: &Retention) -> Duration {
        match self {
            Level::Raw => retention.raw,
            Level::FiveMin => retention.five_min,
            Level::Hour => retention.hour,
        }
    }

    fn coarser(self) -> Option<Level> {
        match self {
            Level::Raw => Some(Level::FiveMin),
            Level::FiveMin => Some(Level::Hour),
            Level::Hour => None,
        }
    }
}

/// The tags of one ping series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SeriesKey {
    pub probe: String,
    pub target: String,
    pub agent: String,
    pub site: String,
    pub target_site: String,
    pub address: Option<String>,
}

/// One ping round to store.
pub(super) struct Round<'a> {
    pub series: SeriesKey,
    pub ts_ns: i64,
    pub duration_ms: i64,
    pub failure_kind: Option<&'a str>,
    pub failure: Option<&'a str>,
    pub rtts_ms: &'a [Option<f64>],
}

/// Rounds, echoes and RTT distribution of one rollup bucket.
#[derive(Debug, Default)]
struct Bucket {
    rounds: u64,
    sent: u64,
    received: u64,
    rtts: Histogram,
}

impl Bucket {
    fn merge(&mut self, other: &Bucket) {
        self.rounds += other.rounds;
        self.sent += other.sent;
        self.received += other.received;
        self.rtts.merge(&other.rtts);
    }
}

/// The id of `key`'s series, created if new; `cache` spares the lookup for known ones.
fn series_id(
    tx: &Transaction<'_>,
    cache: &mut HashMap<SeriesKey, i64>,
    key: &SeriesKey,
) -> anyhow::Result<i64> {
    if let Some(id) = cache.get(key) {
        return Ok(*id);
    }
    let address = key.address.as_deref().unwrap_or("");
    let tags = params![
        key.probe,
        key.target,
        key.agent,
        key.site,
        key.target_site,
        address
    ];
    tx.prepare_cached(
        "INSERT INTO series (probe, target, agent, site, target_site, address)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
    )?
    .execute(tags)?;
    let id = tx
        .prepare_cached(
            "SELECT id FROM series WHERE probe = ?1 AND target = ?2 AND agent = ?3 AND site = ?4
             AND target_site = ?5 AND address = ?6",
        )?
        .query_row(tags, |row| row.get(0))?;
    cache.insert(key.clone(), id);
    Ok(id)
}

/// Insert `rounds` and update their rollup buckets, in `tx`; returns how many rounds were
/// inserted (all of them). A second round of one series starting at the same nanosecond is
/// stored 1 ns later rather than lost. Without `keep_raw` only the rollups are updated: what
/// the store holds of rounds older than the raw retention once pruned.
pub(super) fn insert_rounds(
    tx: &Transaction<'_>,
    cache: &mut HashMap<SeriesKey, i64>,
    rounds: &[Round<'_>],
    keep_raw: bool,
) -> anyhow::Result<usize> {
    let mut buckets: HashMap<(Level, i64, i64), Bucket> = HashMap::new();
    let mut insert = tx.prepare_cached(
        "INSERT INTO ping_rounds (series, ts_ns, duration_ms, sent, received, failure_kind,
             failure, rtts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
    )?;
    for round in rounds {
        let id = series_id(tx, cache, &round.series)?;
        let sent = round.rtts_ms.len() as u64;
        let received = round.rtts_ms.iter().flatten().count() as u64;
        let blob = codec::encode_rtts(round.rtts_ms);
        let mut ts_ns = round.ts_ns;
        while keep_raw
            && insert.execute(params![
                id,
                ts_ns,
                round.duration_ms,
                sent,
                received,
                round.failure_kind,
                round.failure,
                blob
            ])? == 0
        {
            ts_ns = ts_ns
                .checked_add(1)
                .context("a round's start time overflows")?;
        }
        let mut this = Bucket {
            rounds: 1,
            sent,
            received,
            rtts: Histogram::default(),
        };
        round
            .rtts_ms
            .iter()
            .flatten()
            .for_each(|rtt| this.rtts.add_ms(*rtt));
        for level in Level::ROLLUPS {
            let start = ts_ns - ts_ns.rem_euclid(level.step_ns());
            buckets.entry((level, id, start)).or_default().merge(&this);
        }
    }
    for ((level, id, start), mut bucket) in buckets {
        let table = level.table();
        let stored = tx
            .prepare_cached(&format!(
                "SELECT rounds, sent, received, rtts FROM {table} WHERE series = ?1 AND bucket_ns = ?2"
            ))?
            .query_row(params![id, start], |row| {
                Ok((
                    row.get::<_, u64>(0)?,
                    row.get::<_, u64>(1)?,
                    row.get::<_, u64>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                ))
            })
            .optional()?;
        if let Some((rounds, sent, received, rtts)) = stored {
            let rtts = Histogram::decode(&rtts).with_context(|| {
                format!("corrupt RTT distribution in {table} (series {id}, bucket {start})")
            })?;
            bucket.merge(&Bucket {
                rounds,
                sent,
                received,
                rtts,
            });
        }
        tx.prepare_cached(&format!(
            "INSERT OR REPLACE INTO {table} (series, bucket_ns, rounds, sent, received, rtts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        ))?
        .execute(params![
            id,
            start,
            bucket.rounds,
            bucket.sent,
            bucket.received,
            bucket.rtts.encode()
        ])?;
    }
    Ok(rounds.len())
}

/// A raw round read back: its figures, computed from its RTTs as the probe computed them.
fn raw_point(
    timestamp_ns: i64,
    address: String,
    failure_kind: Option<String>,
    failure: Option<String>,
    rtts: &[u8],
) -> anyhow::Result<(PingPoint, PingStats)> {
    let rtts = codec::decode_rtts(rtts)
        .with_context(|| format!("corrupt RTTs in the ping round at {timestamp_ns} ns"))?;
    let stats = PingStats::from_rtts(rtts);
    let point = PingPoint {
        timestamp_ns,
        address: (!address.is_empty()).then_some(address),
        failure_kind,
        failure,
        sent: stats.sent,
        loss_pct: stats.loss_pct,
        rtt_p10_ms: stats.rtt_p10_ms,
        rtt_p25_ms: stats.rtt_p25_ms,
        rtt_median_ms: stats.rtt_median_ms,
        rtt_p75_ms: stats.rtt_p75_ms,
        rtt_p90_ms: stats.rtt_p90_ms,
        rounds: 1,
        step_ns: 0,
    };
    Ok((point, stats))
}

impl Store {
    /// Delete what each level keeps longer than its retention before `now`, series by series
    /// (each an index range, never a scan), and old service checks and traces; returns how many
    /// rows were removed.
    pub fn prune(&mut self, retention: &Retention, now: SystemTime) -> anyhow::Result<usize> {
        let cutoff = |keep: Duration| {
            probes::unix_ns(now.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH))
        };
        let tx = self.conn.transaction()?;
        let mut removed = tx.execute(
            "DELETE FROM observations WHERE ts_ns < ?1",
            [cutoff(retention.raw)],
        )?;
        let ids: Vec<i64> = tx
            .prepare("SELECT id FROM series")?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        for level in [Level::Raw, Level::FiveMin, Level::Hour] {
            let mut delete = tx.prepare(&format!(
                "DELETE FROM {} WHERE series = ?1 AND {} < ?2",
                level.table(),
                level.time_column()
            ))?;
            let before = cutoff(level.retention(retention));
            for id in &ids {
                removed += delete.execute(params![id, before])?;
            }
        }
        tx.commit()?;
        Ok(removed)
    }

    /// The raw ping rounds of one (probe, target) from `from_ns` to `to_ns` (inclusive), oldest
    /// first: the evidence an incident draft shows.
    pub fn ping_history(
        &self,
        probe: &str,
        target: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> anyhow::Result<Vec<PingPoint>> {
        let mut query = self.conn.prepare_cached(
            "SELECT r.ts_ns, s.address, r.failure_kind, r.failure, r.rtts
             FROM series s JOIN ping_rounds r ON r.series = s.id
             WHERE s.probe = ?1 AND s.target = ?2 AND r.ts_ns BETWEEN ?3 AND ?4
             ORDER BY r.ts_ns",
        )?;
        let rows = query.query_map(params![probe, target, from_ns, to_ns], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, Vec<u8>>(4)?,
            ))
        })?;
        let mut points = Vec::new();
        for row in rows {
            let (ts, address, kind, failure, rtts) = row?;
            let (point, _) = raw_point(ts, address, kind, failure, &rtts)
                .with_context(|| format!("{probe}/{target} in {}", self.path.display()))?;
            points.push(point);
        }
        Ok(points)
    }

    /// The ping history of one (probe, target) from `from_ns` to `to_ns` (inclusive) at the level
    /// that suits the span (see the module docs): raw rounds, or one point per 5-minute or
    /// 1-hour bucket (its `timestamp_ns` the bucket's start, `step_ns` its width, `rounds` how
    /// many rounds it holds, percentiles over every RTT of those rounds). Oldest first.
    pub fn ping_series(
        &self,
        probe: &str,
        target: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> anyhow::Result<Vec<PingPoint>> {
        let span = u64::try_from(to_ns.saturating_sub(from_ns)).unwrap_or(0);
        let mut level = if span <= RAW_SPAN.as_nanos() as u64 {
            Level::Raw
        } else if span <= FIVE_MIN_SPAN.as_nanos() as u64 {
            Level::FiveMin
        } else {
            Level::Hour
        };
        // A finer level pruned past the start: a coarser one that reaches further back.
        while let Some(coarser) = level.coarser() {
            let oldest = self.oldest(level, probe, target)?;
            let coarser_oldest = self.oldest(coarser, probe, target)?;
            // The coarser level's first bucket starts at most one step before the finer
            // level's first row unless the finer one was pruned.
            match (oldest, coarser_oldest) {
                (Some(oldest), Some(coarser_oldest))
                    if oldest > from_ns
                        && coarser_oldest < oldest.saturating_sub(coarser.step_ns()) =>
                {
                    level = coarser
                }
                (None, Some(_)) => level = coarser,
                _ => break,
            }
        }
        if level == Level::Raw {
            return self.ping_history(probe, target, from_ns, to_ns);
        }
        self.rollup(level, probe, target, from_ns, to_ns, true)
    }

    /// The overview's sparkline of one (probe, target) from `from_ns` to `to_ns`: its 5-minute
    /// buckets (one row per bucket, however many rounds: the overview draws every target), with
    /// the median and loss only (what a sparkline draws).
    pub fn ping_sparkline(
        &self,
        probe: &str,
        target: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> anyhow::Result<Vec<PingPoint>> {
        self.rollup(Level::FiveMin, probe, target, from_ns, to_ns, false)
    }

    /// The start of the oldest row of `level` for (probe, target).
    fn oldest(&self, level: Level, probe: &str, target: &str) -> anyhow::Result<Option<i64>> {
        let (table, time) = (level.table(), level.time_column());
        let mut query = self.conn.prepare_cached(&format!(
            "SELECT MIN((SELECT MIN({time}) FROM {table} WHERE series = s.id))
             FROM series s WHERE s.probe = ?1 AND s.target = ?2"
        ))?;
        Ok(query.query_row(params![probe, target], |row| row.get(0))?)
    }

    /// The buckets of `level` whose start is within `[from_ns, to_ns]`, the series of one
    /// (probe, target) merged per bucket; the median only unless `smoke` (p10–p90 too).
    fn rollup(
        &self,
        level: Level,
        probe: &str,
        target: &str,
        from_ns: i64,
        to_ns: i64,
        smoke: bool,
    ) -> anyhow::Result<Vec<PingPoint>> {
        let table = level.table();
        // The bucket that holds `from_ns` too.
        let from_bucket = from_ns - from_ns.rem_euclid(level.step_ns());
        let mut query = self.conn.prepare_cached(&format!(
            "SELECT b.bucket_ns, s.address, b.rounds, b.sent, b.received, b.rtts
             FROM series s JOIN {table} b ON b.series = s.id
             WHERE s.probe = ?1 AND s.target = ?2 AND b.bucket_ns BETWEEN ?3 AND ?4
             ORDER BY b.bucket_ns"
        ))?;
        let rows = query.query_map(params![probe, target, from_bucket, to_ns], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, u64>(2)?,
                row.get::<_, u64>(3)?,
                row.get::<_, u64>(4)?,
                row.get::<_, Vec<u8>>(5)?,
            ))
        })?;
        let mut merged: Vec<(i64, Option<String>, Bucket)> = Vec::new();
        for row in rows {
            let (start, address, rounds, sent, received, rtts) = row?;
            let rtts = Histogram::decode(&rtts).with_context(|| {
                format!(
                    "corrupt RTT distribution in {table} for {probe}/{target} at {start} ns in {}",
                    self.path.display()
                )
            })?;
            let bucket = Bucket {
                rounds,
                sent,
                received,
                rtts,
            };
            let address = (!address.is_empty()).then_some(address);
            match merged.last_mut() {
                Some((last, last_address, into)) if *last == start => {
                    into.merge(&bucket);
                    if *last_address != address {
                        *last_address = None;
                    }
                }
                _ => merged.push((start, address, bucket)),
            }
        }
        Ok(merged
            .into_iter()
            .map(|(timestamp_ns, address, b)| PingPoint {
                timestamp_ns,
                address,
                failure_kind: None,
                failure: None,
                sent: u32::try_from(b.sent).unwrap_or(u32::MAX),
                loss_pct: if b.sent == 0 {
                    100.0
                } else {
                    100.0 * b.sent.saturating_sub(b.received) as f64 / b.sent as f64
                },
                rtt_p10_ms: smoke.then(|| b.rtts.percentile_ms(10.0)).flatten(),
                rtt_p25_ms: smoke.then(|| b.rtts.percentile_ms(25.0)).flatten(),
                rtt_median_ms: b.rtts.percentile_ms(50.0),
                rtt_p75_ms: smoke.then(|| b.rtts.percentile_ms(75.0)).flatten(),
                rtt_p90_ms: smoke.then(|| b.rtts.percentile_ms(90.0)).flatten(),
                rounds: u32::try_from(b.rounds).unwrap_or(u32::MAX),
                step_ns: level.step_ns(),
            })
            .collect())
    }

    /// The most recent ping round per (probe, target), ordered by probe then target.
    pub fn latest_pings(&self) -> anyhow::Result<Vec<LatestPing>> {
        let mut query = self.conn.prepare(LATEST_PINGS)?;
        let rows = query.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, Option<String>>(5)?,
                row.get::<_, Option<String>>(6)?,
                row.get::<_, Vec<u8>>(7)?,
            ))
        })?;
        let mut latest: Vec<LatestPing> = Vec::new();
        for row in rows {
            let (probe, target, target_site, address, ts, kind, failure, rtts) = row?;
            let (point, stats) = raw_point(ts, address, kind, failure, &rtts)
                .with_context(|| format!("{probe}/{target} in {}", self.path.display()))?;
            let ping = LatestPing {
                probe,
                target,
                target_site,
                address: point.address,
                timestamp_ns: point.timestamp_ns,
                failure: point.failure,
                sent: point.sent,
                loss_pct: point.loss_pct,
                rtt_median_ms: point.rtt_median_ms,
                rtt_p10_ms: point.rtt_p10_ms,
                rtt_p90_ms: point.rtt_p90_ms,
                rtt_max_ms: stats.rtt_max_ms,
            };
            // Several series of one (probe, target) (another address): the latest wins.
            match latest.last_mut() {
                Some(last) if last.probe == ping.probe && last.target == ping.target => {
                    *last = ping
                }
                _ => latest.push(ping),
            }
        }
        Ok(latest)
    }
}
