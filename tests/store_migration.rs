//! Issue 14, the migration: a store of the old format (every ping round a JSON text in
//! `observations`, written as that code wrote it) is converted in place when opened, without
//! losing a round; a conversion interrupted half-way resumes and converts nothing twice.

#[allow(dead_code)]
#[path = "support/old_store.rs"]
mod old_store;

use std::path::Path;
use std::time::{Duration, SystemTime};

use probes::Measurement;
use vantage::record::Record;
use vantage::store::codec::{decode_rtts, ms_to_us, us_to_ms};
use vantage::store::{DB_FILE, Store};

const TARGETS: usize = 3;
const ROUNDS: u64 = 400;

/// An old-format store in `dir` with [`TARGETS`] × [`ROUNDS`] rounds, a TCP check, and a ping
/// row whose fields are not JSON; the rounds as the probe made them.
fn old_format(dir: &Path) -> Vec<Record> {
    let mut db = old_store::open(&dir.join(DB_FILE));
    let start = SystemTime::now() - Duration::from_secs(20 * ROUNDS);
    let mut generator = old_store::Rounds::new(7);
    let mut records = Vec::new();
    for seq in 0..ROUNDS {
        for target in 0..TARGETS {
            records.push(generator.round(target, seq, start + Duration::from_secs(20 * seq)));
        }
    }
    // The same start time twice in one series: kept, 1 ns apart.
    let mut twin = records[0].clone();
    twin.observation.duration = Duration::from_millis(999);
    records.push(twin);
    for batch in records.chunks(500) {
        old_store::insert(&mut db, batch);
    }
    db.execute_batch(
        "INSERT INTO observations (ts_ns, measurement, agent, site, probe, target, target_site,
             address, success, failure_kind, failure, duration_ms, fields)
         VALUES (1, 'tcp', 'a', 's', 'tcp', 'svc', 'r', '198.18.0.9:80', 1, NULL, NULL, 1.5,
                 '{\"connect_ms\":1.5}'),
                (2, 'ping', 'a', 's', 'icmp', 'broken', 'r', NULL, 1, NULL, NULL, 1.0, 'not json');",
    )
    .expect("a check and a corrupt round");
    records
}

/// (target, ts_ns, address, success, failure_kind, sent, received, rtts) as the `ping` view has it.
type StoredRound = (
    String,
    i64,
    Option<String>,
    bool,
    Option<String>,
    u32,
    u32,
    Vec<u8>,
);

/// Every round of `records` is in the store once, with its RTTs (to the microsecond), loss
/// positions, failure and figures.
fn assert_all_converted(store: &Store, records: &[Record]) {
    let db = rusqlite::Connection::open(store.path()).expect("open");
    let mut query = db
        .prepare(
            "SELECT target, ts_ns, address, success, failure_kind, sent, received, rtts
             FROM ping WHERE target LIKE 'target-%' ORDER BY target, ts_ns",
        )
        .expect("query");
    let mut stored: Vec<StoredRound> = query
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(stored.len(), records.len(), "every round, once");
    let mut expected: Vec<&Record> = records.iter().collect();
    expected.sort_by_key(|r| (r.target.clone(), r.observation.timestamp_ns()));
    // The twin was stored 1 ns after its first.
    let twin = stored
        .iter()
        .position(|s| s.0 == records[0].target && s.1 == records[0].observation.timestamp_ns() + 1)
        .expect("the round with the same start time");
    stored[twin].1 -= 1;
    for (row, record) in stored.iter().zip(&expected) {
        let Measurement::Ping(stats) = &record.observation.measurement else {
            unreachable!()
        };
        assert_eq!(row.0, record.target);
        assert_eq!(row.1, record.observation.timestamp_ns());
        assert_eq!(row.2, record.address);
        assert_eq!(row.3, record.observation.is_success());
        assert_eq!(row.4.is_some(), !record.observation.is_success());
        assert_eq!((row.5, row.6), (stats.sent, stats.received));
        let rtts = decode_rtts(&row.7).expect("rtts");
        let want: Vec<Option<f64>> = stats
            .rtts_ms
            .iter()
            .map(|rtt| rtt.map(|ms| us_to_ms(ms_to_us(ms))))
            .collect();
        assert_eq!(rtts, want, "{}", row.0);
    }

    // Figures from the API: as the probe computed them, to the microsecond.
    for target in 0..TARGETS {
        let name = format!("target-{target}");
        let points = store
            .ping_history("icmp", &name, 0, i64::MAX)
            .expect("history");
        let mine: Vec<&Record> = expected
            .iter()
            .copied()
            .filter(|r| r.target == name)
            .collect();
        assert_eq!(points.len(), mine.len());
        for (point, record) in points.iter().zip(mine) {
            let Measurement::Ping(stats) = &record.observation.measurement else {
                unreachable!()
            };
            assert_eq!(point.loss_pct, stats.loss_pct);
            for (got, want) in [
                (point.rtt_p10_ms, stats.rtt_p10_ms),
                (point.rtt_p25_ms, stats.rtt_p25_ms),
                (point.rtt_median_ms, stats.rtt_median_ms),
                (point.rtt_p75_ms, stats.rtt_p75_ms),
                (point.rtt_p90_ms, stats.rtt_p90_ms),
            ] {
                assert_eq!(got.is_some(), want.is_some());
                if let (Some(got), Some(want)) = (got, want) {
                    assert!((got - want).abs() <= 0.0005, "{got} vs {want}");
                }
            }
        }
    }
    // The rollups hold every round too.
    let rolled: (u64, u64) = db
        .query_row("SELECT SUM(rounds), SUM(sent) FROM ping_5m", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("5 min");
    let raw: (u64, u64) = db
        .query_row("SELECT COUNT(*), SUM(sent) FROM ping_rounds", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("raw");
    assert_eq!(rolled, raw);
    let hourly: (u64, u64) = db
        .query_row("SELECT SUM(rounds), SUM(sent) FROM ping_1h", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("1 h");
    assert_eq!(hourly, raw);
}

fn left_in_old_table(dir: &Path) -> (u64, u64) {
    let db = rusqlite::Connection::open(dir.join(DB_FILE)).expect("open");
    db.query_row(
        "SELECT (SELECT COUNT(*) FROM observations WHERE measurement = 'ping'),
                (SELECT COUNT(*) FROM observations WHERE measurement = 'tcp')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("count")
}

#[test]
fn an_old_store_is_converted_in_place_without_losing_a_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = old_format(dir.path());
    let store = Store::open(dir.path()).expect("open converts");
    assert_all_converted(&store, &records);
    assert_eq!(left_in_old_table(dir.path()), (0, 1), "the check stays");
    assert_eq!(store.latest_checks().expect("checks").len(), 1);
    // The unreadable round is kept as it was, not dropped.
    let db = rusqlite::Connection::open(store.path()).expect("open");
    let kept: String = db
        .query_row(
            "SELECT fields FROM ping_unconverted WHERE target = 'broken'",
            [],
            |r| r.get(0),
        )
        .expect("kept");
    assert_eq!(kept, "not json");
    assert_eq!(store.count().expect("count"), records.len() as u64 + 1);
}

#[test]
fn a_conversion_interrupted_half_way_resumes_and_converts_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = old_format(dir.path());
    let total = records.len() as u64 + 1; // and the corrupt one
    {
        // Two chunks of 300, then the process is gone.
        let store = Store::open_migrating(dir.path(), 300, Some(2)).expect("half-way");
        assert_eq!(left_in_old_table(dir.path()), (total - 600, 1));
        // Nothing missing mid-way: every round in one table or the other, and the check.
        assert_eq!(store.count().expect("count"), total + 1);
    }
    let store = Store::open(dir.path()).expect("resumes");
    assert_eq!(left_in_old_table(dir.path()), (0, 1));
    assert_all_converted(&store, &records);
}
