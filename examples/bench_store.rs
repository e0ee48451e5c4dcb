//! Benchmark of the embedded store's size (figures in BENCHMARKS.md): fills a store with N targets
//! × M days of realistic 20-echo rounds, one every 20 s per target (the default probe), in the
//! compact format and in the old one (every round a JSON text in `observations`, the format before
//! issue 14), then converts the old store in place. Prints bytes per raw round (indexes included),
//! per rollup row, per target per day, and per target per year with the default retentions.
//!
//! `cargo run --release --example bench_store -- [--targets N] [--days D]`
//! Bounded: N × D × 4,320 rounds (default 20 × 2 = 172,800), then it stops.

#[allow(dead_code)]
#[path = "../tests/support/old_store.rs"]
mod old_store;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use vantage::store::{DEFAULT_RETENTION, Store};

const ROUND_EVERY: Duration = Duration::from_secs(20);
const ROUNDS_PER_DAY: f64 = 86_400.0 / 20.0;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: cannot parse {v}"))
        })
        .unwrap_or(default)
}

/// Bytes of each table and index of the SQLite file at `path` (pages, free space included).
fn bytes_by_table(path: &Path) -> BTreeMap<String, u64> {
    let db = rusqlite::Connection::open(path).expect("open");
    let mut query = db
        .prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
        .expect("dbstat (SQLITE_ENABLE_DBSTAT_VTAB)");
    query
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn rows(path: &Path, table: &str) -> u64 {
    let db = rusqlite::Connection::open(path).expect("open");
    db.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
        row.get(0)
    })
    .expect("count")
}

/// Bytes per row of `observations` (its indexes included) and of its JSON fields, for `records`
/// stored alone in a store in `dir`.
fn row_bytes(dir: &Path, records: &[vantage::record::Record]) -> (f64, f64) {
    let mut store = Store::open(dir).expect("store");
    store.insert(records).expect("insert");
    let path = store.path().to_path_buf();
    drop(store);
    let tables = bytes_by_table(&path);
    let bytes: u64 = [
        "observations",
        "observations_by_time",
        "observations_by_target",
    ]
    .iter()
    .map(|name| tables.get(*name).copied().unwrap_or(0))
    .sum();
    let db = rusqlite::Connection::open(&path).expect("open");
    let json: f64 = db
        .query_row("SELECT AVG(LENGTH(fields)) FROM observations", [], |row| {
            row.get(0)
        })
        .expect("avg");
    (bytes as f64 / records.len() as f64, json)
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn main() {
    let targets: usize = arg("--targets", 20);
    let days: f64 = arg("--days", 2.0);
    let per_target = (days * ROUNDS_PER_DAY) as u64;
    let total = per_target * targets as u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let (new_dir, old_dir) = (dir.path().join("new"), dir.path().join("old"));
    std::fs::create_dir_all(&old_dir).expect("mkdir");
    let old_path = old_dir.join("vantage.db");
    println!(
        "{targets} targets x {per_target} rounds ({days} days at one round per 20 s) = {total} rounds of 20 echoes"
    );

    let start = SystemTime::now() - ROUND_EVERY * per_target as u32;
    let mut store = Store::open(&new_dir).expect("store");
    let mut old = old_store::open(&old_path);
    let mut rounds = old_store::Rounds::new(0x5eed);
    let (mut new_time, mut old_time) = (Duration::ZERO, Duration::ZERO);
    let mut batch = Vec::with_capacity(2_000);
    for seq in 0..per_target {
        let at = start + ROUND_EVERY * seq as u32;
        for target in 0..targets {
            batch.push(rounds.round(target, seq, at));
            if batch.len() == 2_000 || (seq + 1 == per_target && target + 1 == targets) {
                let t = Instant::now();
                store.insert(&batch).expect("insert");
                new_time += t.elapsed();
                let t = Instant::now();
                old_store::insert(&mut old, &batch);
                old_time += t.elapsed();
                batch.clear();
            }
        }
    }
    let new_path = store.path().to_path_buf();
    drop(store); // the last connection checkpoints the WAL into the file
    drop(old);

    let new_tables = bytes_by_table(&new_path);
    let old_tables = bytes_by_table(&old_path);
    let table = |name: &str| new_tables.get(name).copied().unwrap_or(0) as f64;
    let raw = table("ping_rounds") / rows(&new_path, "ping_rounds") as f64;
    let five = table("ping_5m") / rows(&new_path, "ping_5m") as f64;
    let hour = table("ping_1h") / rows(&new_path, "ping_1h") as f64;
    let old_round = file_size(&old_path) as f64 / total as f64;
    let new_round = file_size(&new_path) as f64 / total as f64;

    println!("\nbytes by table (dbstat):");
    for (name, bytes) in new_tables.iter().chain(&old_tables) {
        println!("  {name:<24} {bytes:>12}");
    }
    println!(
        "\nold format: {} bytes, {old_round:.0} bytes per round (indexes included), insert {:.0} rounds/s",
        file_size(&old_path),
        total as f64 / old_time.as_secs_f64()
    );
    println!(
        "new format: {} bytes, {new_round:.1} bytes per round with its rollups; raw rows {raw:.1} bytes per round (WITHOUT ROWID: the key is the index), insert {:.0} rounds/s",
        file_size(&new_path),
        total as f64 / new_time.as_secs_f64()
    );
    println!("rollup rows: 5 min {five:.0} bytes, 1 h {hour:.0} bytes");

    let day = |per_row: f64, rows_per_day: f64| per_row * rows_per_day;
    let (raw_day, five_day, hour_day) =
        (day(raw, ROUNDS_PER_DAY), day(five, 288.0), day(hour, 24.0));
    let days_of = |d: Duration| d.as_secs_f64() / 86_400.0;
    let r = DEFAULT_RETENTION;
    let year = raw_day * days_of(r.raw).min(365.0)
        + five_day * days_of(r.five_min).min(365.0)
        + hour_day * days_of(r.hour).min(365.0);
    println!(
        "\nper target per day: old {:.2} MB; new raw {:.2} MB + 5 min {:.3} MB + 1 h {:.4} MB",
        old_round * ROUNDS_PER_DAY / 1e6,
        raw_day / 1e6,
        five_day / 1e6,
        hour_day / 1e6
    );
    println!(
        "per target, a year of history with the default retentions (raw {:.0} d, 5 min {:.0} d, 1 h {:.0} d): new {:.2} MB; old (raw only, {:.0} d) {:.1} MB",
        days_of(r.raw),
        days_of(r.five_min),
        days_of(r.hour),
        year / 1e6,
        days_of(r.raw),
        old_round * ROUNDS_PER_DAY * days_of(r.raw) / 1e6
    );

    // Charts: the 30-hour and full-span series of one target.
    let store = Store::open(&new_dir).expect("reopen");
    let now = probes::unix_ns(SystemTime::now());
    for span in [
        Duration::from_secs(3 * 3600),
        Duration::from_secs(30 * 3600),
        Duration::from_secs((days * 86_400.0) as u64),
    ] {
        let t = Instant::now();
        let points = store
            .ping_series("icmp", "target-0", now - span.as_nanos() as i64, now)
            .expect("series");
        println!(
            "ping_series over {:>6.1} h: {} points in {:.1} ms",
            span.as_secs_f64() / 3600.0,
            points.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    drop(store);

    // Service checks and traces keep their JSON fields in `observations`: their size per row.
    let (checks, traces) = (2_000u32, 300u32);
    let mut records = Vec::new();
    for i in 0..checks {
        let mut record = rounds.round(0, u64::from(i), start + ROUND_EVERY * i);
        record.probe = "https".into();
        let ms = |base: f64| Some(base + f64::from(i % 97) * 0.013_457);
        record.observation.measurement = probes::Measurement::Http(probes::HttpStats {
            method: "GET".into(),
            status_code: Some(200),
            resolve_ms: ms(0.4),
            connect_ms: ms(1.2),
            tls_ms: ms(3.4),
            processing_ms: ms(12.0),
            transfer_ms: ms(0.3),
            total_ms: 17.3 + f64::from(i % 89) * 0.021_3,
            body_bytes: 5_120,
            cert_expiry_days: Some(61.234_567),
            redirects: 0,
            final_url: "https://www.example.net/health".into(),
        });
        records.push(record);
    }
    for i in 0..traces {
        let mut record = rounds.round(0, u64::from(i), start + Duration::from_secs(300) * i);
        record.probe = "trace".into();
        let hops = (1..=12u8)
            .map(|ttl| probes::Hop {
                ttl,
                addresses: vec![format!("198.18.{ttl}.1").parse().expect("address")],
                sent: 10,
                received: 10,
                loss_pct: 0.0,
                rtt_last_ms: Some(f64::from(ttl) * 1.234_567),
                rtt_avg_ms: Some(f64::from(ttl) * 1.245_678),
                rtt_best_ms: Some(f64::from(ttl) * 1.123_456),
                rtt_worst_ms: Some(f64::from(ttl) * 1.345_678),
                rtt_stddev_ms: Some(0.123_456),
            })
            .collect();
        record.observation.measurement = probes::Measurement::Trace(probes::TraceReport::new(
            "198.18.12.1".parse().expect("address"),
            hops,
        ));
        records.push(record);
    }
    let (http, trace) = records.split_at(checks as usize);
    let (http_row, http_json) = row_bytes(&dir.path().join("http"), http);
    let (trace_row, trace_json) = row_bytes(&dir.path().join("trace"), trace);
    println!(
        "\nservice checks and traces (JSON fields in observations, indexes included): http {http_row:.0} bytes per run ({http_json:.0} of JSON), {:.2} MB per check per day at 20 s; trace (12 hops) {trace_row:.0} bytes per run ({trace_json:.0} of JSON), {:.2} MB per trace probe per day at 5 min",
        http_row * ROUNDS_PER_DAY / 1e6,
        trace_row * 288.0 / 1e6
    );

    // The old store converted in place.
    let t = Instant::now();
    let migrated = Store::open(&old_dir).expect("migrate");
    let took = t.elapsed();
    let count = migrated.count().expect("count");
    assert_eq!(count, total, "every round converted");
    println!(
        "\nmigration of the old store: {total} rounds in {:.1} s ({:.0} rounds/s), all {count} there",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
}
