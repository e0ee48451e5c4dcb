//! Issue 14, the store's read side: `vantage report` (latest_pings), the drafts (ping_history) and
//! the page (ping_series) give the same figures as the rounds that were stored; ping_series picks
//! raw rounds, 5-minute or hourly buckets by span, and a coarser level once the finer one is
//! pruned; the retention keys of each level are read and validated.

#[allow(dead_code)]
#[path = "support/old_store.rs"]
mod old_store;

use std::path::Path;
use std::time::{Duration, SystemTime};

use probes::{Measurement, PingStats};
use vantage::config::Config;
use vantage::record::Record;
use vantage::store::codec::{ms_to_us, us_to_ms};
use vantage::store::{DEFAULT_RETENTION, PingPoint, Retention, Store};

const TARGETS: usize = 2;
const EVERY: Duration = Duration::from_secs(20);
const HOUR_NS: i64 = 3_600_000_000_000;

/// Two days of rounds of two targets, ending now; the records as the probe made them.
fn filled(dir: &Path) -> (Store, Vec<Record>, i64) {
    let mut store = Store::open(dir).expect("open");
    let rounds_per_target = 2 * 86_400 / EVERY.as_secs();
    let now = SystemTime::now();
    let start = now - EVERY * rounds_per_target as u32;
    let mut generator = old_store::Rounds::new(14);
    let mut records = Vec::new();
    for seq in 0..rounds_per_target {
        for target in 0..TARGETS {
            records.push(generator.round(target, seq, start + EVERY * seq as u32));
        }
    }
    for batch in records.chunks(2_000) {
        store.insert(batch).expect("insert");
    }
    (store, records, probes::unix_ns(now))
}

/// The RTTs of a record, to the microsecond (what the store keeps).
fn stored_rtts(record: &Record) -> Vec<Option<f64>> {
    let Measurement::Ping(stats) = &record.observation.measurement else {
        panic!("a ping record")
    };
    stats
        .rtts_ms
        .iter()
        .map(|rtt| rtt.map(|ms| us_to_ms(ms_to_us(ms))))
        .collect()
}

fn close(a: Option<f64>, b: Option<f64>, tolerance: f64) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= tolerance * b.abs().max(1e-9),
        (None, None) => true,
        _ => false,
    }
}

#[test]
fn report_drafts_and_page_agree_with_the_rounds_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, records, now) = filled(dir.path());
    let target = "target-1";
    let mine: Vec<&Record> = records.iter().filter(|r| r.target == target).collect();

    // 3 hours: raw rounds, the same as the drafts' history, figures as computed from the RTTs.
    let from = now - 3 * HOUR_NS;
    let page = store
        .ping_series("icmp", target, from, now)
        .expect("series");
    let drafts = store
        .ping_history("icmp", target, from, now)
        .expect("history");
    assert_eq!(page, drafts);
    let expected: Vec<&&Record> = mine
        .iter()
        .filter(|r| r.observation.timestamp_ns() >= from)
        .collect();
    assert_eq!(page.len(), expected.len());
    assert!(page.len() >= 539, "{} raw points in 3 h", page.len());
    for (point, record) in page.iter().zip(&expected) {
        let exact = PingStats::from_rtts(stored_rtts(record));
        let Measurement::Ping(probe) = &record.observation.measurement else {
            unreachable!()
        };
        assert_eq!(point.timestamp_ns, record.observation.timestamp_ns());
        assert_eq!(point.address, record.address);
        assert_eq!((point.rounds, point.step_ns), (1, 0));
        assert_eq!(point.sent, exact.sent);
        assert_eq!(point.loss_pct, exact.loss_pct);
        assert_eq!(point.rtt_median_ms, exact.rtt_median_ms);
        assert_eq!(point.rtt_p10_ms, exact.rtt_p10_ms);
        assert_eq!(point.rtt_p90_ms, exact.rtt_p90_ms);
        // Within the microsecond the store keeps of what the probe measured.
        assert!(close(point.rtt_p25_ms, probe.rtt_p25_ms, 1e-4));
        assert!(close(point.rtt_p75_ms, probe.rtt_p75_ms, 1e-4));
    }

    // `vantage report`: the latest round, the same figures as the page's last point.
    let latest = store.latest_pings().expect("latest");
    assert_eq!(latest.len(), TARGETS);
    let report = latest.iter().find(|l| l.target == target).expect("row");
    let last = page.last().expect("points");
    assert_eq!(report.timestamp_ns, last.timestamp_ns);
    assert_eq!(
        (
            report.sent,
            report.loss_pct,
            report.rtt_median_ms,
            report.rtt_p10_ms,
            report.rtt_p90_ms
        ),
        (
            last.sent,
            last.loss_pct,
            last.rtt_median_ms,
            last.rtt_p10_ms,
            last.rtt_p90_ms
        )
    );
    assert_eq!(report.address, last.address);

    // A young store (2 days) charted over 10 days: its 5-minute buckets, not the hourly ones
    // merely because the first hour bucket starts before the first 5-minute one.
    let ten_days = store
        .ping_series("icmp", target, now - 240 * HOUR_NS, now)
        .expect("10 days");
    assert!(ten_days.len() >= 576, "{} points", ten_days.len());
    assert!(ten_days.iter().all(|p| p.step_ns == 300_000_000_000));

    // 30 hours: 5-minute buckets; 30 days: hourly ones. Counts exact, percentiles over every RTT
    // of the bucket within the 1% the distribution keeps.
    for (span, step) in [
        (30 * HOUR_NS, 300_000_000_000),
        (30 * 24 * HOUR_NS, HOUR_NS),
    ] {
        let points = store
            .ping_series("icmp", target, now - span, now)
            .expect("rollup");
        assert!(!points.is_empty());
        for point in &points {
            assert_eq!(point.step_ns, step, "{point:?}");
            let inside: Vec<&&Record> = mine
                .iter()
                .filter(|r| {
                    let ts = r.observation.timestamp_ns();
                    ts >= point.timestamp_ns && ts < point.timestamp_ns + step
                })
                .collect();
            assert_eq!(point.rounds as usize, inside.len(), "{point:?}");
            let rtts: Vec<Option<f64>> = inside.iter().flat_map(|r| stored_rtts(r)).collect();
            let exact = PingStats::from_rtts(rtts);
            assert_eq!(point.sent, exact.sent);
            assert!((point.loss_pct - exact.loss_pct).abs() < 1e-9);
            for (got, want) in [
                (point.rtt_p10_ms, exact.rtt_p10_ms),
                (point.rtt_p25_ms, exact.rtt_p25_ms),
                (point.rtt_median_ms, exact.rtt_median_ms),
                (point.rtt_p75_ms, exact.rtt_p75_ms),
                (point.rtt_p90_ms, exact.rtt_p90_ms),
            ] {
                assert!(close(got, want, 0.0101), "{got:?} vs {want:?} in {point:?}");
            }
        }
        let rounds: u32 = points.iter().map(|p| p.rounds).sum();
        let first = points[0].timestamp_ns;
        let covered = mine
            .iter()
            .filter(|r| r.observation.timestamp_ns() >= first)
            .count();
        assert_eq!(rounds as usize, covered, "every round in one bucket");
    }
}

#[test]
fn a_pruned_level_gives_way_to_a_coarser_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, records, now) = filled(dir.path());
    let removed = store
        .prune(
            &Retention {
                raw: Duration::from_secs(86_400),
                five_min: Duration::from_secs(36 * 3600),
                ..DEFAULT_RETENTION
            },
            SystemTime::now(),
        )
        .expect("prune");
    let day_old = records
        .iter()
        .filter(|r| r.observation.timestamp_ns() < now - 24 * HOUR_NS)
        .count();
    assert!(
        removed >= day_old,
        "{removed} rows removed, {day_old} raw rounds a day old"
    );

    // Raw rounds of the last day are still there; of the day before only buckets.
    let recent = store
        .ping_series("icmp", "target-0", now - 2 * HOUR_NS, now)
        .expect("recent");
    assert!(recent.iter().all(|p| p.step_ns == 0) && recent.len() >= 359);
    let old = store
        .ping_series("icmp", "target-0", now - 40 * HOUR_NS, now - 37 * HOUR_NS)
        .expect("old");
    assert!(
        !old.is_empty(),
        "the hourly level still reaches back 40 hours"
    );
    assert!(
        old.iter().all(|p: &PingPoint| p.step_ns == HOUR_NS),
        "{old:?}"
    );
    let middle = store
        .ping_series("icmp", "target-0", now - 30 * HOUR_NS, now - 27 * HOUR_NS)
        .expect("middle");
    assert!(!middle.is_empty());
    assert!(
        middle.iter().all(|p| p.step_ns == 300_000_000_000),
        "{middle:?}"
    );
}

#[test]
fn each_level_has_its_retention_key() {
    let base = "[agent]\nsite = \"scl3\"\n";
    let target = "[[target]]\nname = \"sjc1-core\"\nhost = \"198.18.1.1\"\n";
    let config =
        Config::parse(&format!("{base}{target}"), Path::new("vantage.toml")).expect("defaults");
    assert_eq!(Retention::from(&config.agent), DEFAULT_RETENTION);
    assert_eq!(
        DEFAULT_RETENTION,
        Retention {
            raw: Duration::from_secs(14 * 86_400),
            five_min: Duration::from_secs(90 * 86_400),
            hour: Duration::from_secs(400 * 86_400),
        }
    );
    let config = Config::parse(
        &format!(
            "{base}retention = \"7d\"\nretention_5m = \"30d\"\nretention_1h = \"730d\"\n{target}"
        ),
        Path::new("vantage.toml"),
    )
    .expect("valid");
    assert_eq!(
        Retention::from(&config.agent),
        Retention {
            raw: Duration::from_secs(7 * 86_400),
            five_min: Duration::from_secs(30 * 86_400),
            hour: Duration::from_secs(730 * 86_400),
        }
    );
    // A coarser level kept for less than a finer one: tests/fixtures/config/retention_levels.toml.
}
