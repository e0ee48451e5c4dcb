//! The web page's render times (BENCHMARKS.md, "Web page"): fill a store with TARGETS targets and
//! DAYS days of ping rounds at one round per 20 s (20 echoes each), then time the overview and a
//! target page (charts at 3 h, 30 h, 10 d, 30 d) through `vantage serve`'s router over loopback,
//! 11 requests each (median, best, worst).
//!
//!     cargo run --release --example bench_web -- [TARGETS [DAYS [DIR]]]
//!
//! Defaults: 1,000 targets, 30 days (130 M rounds). The store holds what the default retentions
//! keep at day DAYS: rounds of the last 14 days raw (with their rollups), older ones in the
//! 5-minute and hourly rollups only — written by the store's own rollup code
//! (`Store::insert_rollups_only`) rather than inserted raw and pruned. The fill goes six hours
//! at a time, one series after the other, with no journal or fsync (see `fill`): about 25
//! minutes on one core. About 5 GB at the defaults: check `df` first. A complete store in DIR is
//! reused as it is (fill once, time many).

use std::time::{Duration, Instant, SystemTime};

use probes::{Measurement, Observation, Outcome, PingStats};
use vantage::store::{DEFAULT_RETENTION, Record, Store};
use vantage::web::pages::{PageSource, router};

const ROUND: Duration = Duration::from_secs(20);
/// Requests timed per page (the first one included: every page view opens its own connection).
const REQUESTS: usize = 11;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let targets: usize = args.first().map_or(Ok(1000), |a| a.parse())?;
    let days: u64 = args.get(1).map_or(Ok(30), |a| a.parse())?;
    let dir = args.get(2).map_or_else(
        || std::env::temp_dir().join("vantage-bench-web"),
        Into::into,
    );
    let now = SystemTime::now();
    if !dir.join(vantage::store::DB_FILE).exists() {
        fill(&dir, targets, days, now)?;
    }
    let bytes = std::fs::metadata(dir.join(vantage::store::DB_FILE))?.len();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = router(PageSource::new(&dir, None)?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        println!(
            "store: {targets} targets x {days} days, {:.1} MB ({})",
            bytes as f64 / 1e6,
            dir.display()
        );
        for (name, path) in [("overview", "/"), ("target t0000 (30 d)", "/targets/t0000")] {
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            let mut times = Vec::new();
            let mut size = 0;
            for _ in 0..REQUESTS {
                let start = Instant::now();
                let response = http.get(format!("http://{addr}{path}")).send().await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "{path}: {}",
                    response.status()
                );
                size = response.bytes().await?.len();
                times.push(start.elapsed());
            }
            times.sort();
            println!(
                "{name}: median {:.0} ms, best {:.0} ms, worst {:.0} ms of {REQUESTS} ({} KiB of HTML; load average before: {})",
                times[REQUESTS / 2].as_secs_f64() * 1e3,
                times[0].as_secs_f64() * 1e3,
                times[REQUESTS - 1].as_secs_f64() * 1e3,
                size / 1024,
                load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
            );
        }
        anyhow::Ok(())
    })
}

/// Rounds per series per chunk of the fill: six hours.
const CHUNK_ROUNDS: u64 = 6 * 3600 / 20;
/// Rounds per transaction.
const BATCH: usize = 100_000;

/// The fill, oldest first in six-hour chunks; within a chunk one series after the other (its
/// 1,080 rounds in key order), 100,000 rounds a transaction; a little loss on every 50th round.
/// Rounds older than the default raw retention go into the rollups only (what pruning leaves).
/// Filled in `DIR.filling` with no journal and no fsync, renamed to DIR when complete (an
/// interrupted fill is never timed), then reopened once by `Store::open` (the product's WAL).
fn fill(dir: &std::path::Path, targets: usize, days: u64, now: SystemTime) -> anyhow::Result<()> {
    let filling = dir.with_extension("filling");
    if filling.exists() {
        std::fs::remove_dir_all(&filling)?;
    }
    let mut store = Store::open(&filling)?;
    store.unsafe_bulk_fill_settings(FILL_CACHE_MIB)?;
    let rounds = days * 86_400 / ROUND.as_secs();
    let first_raw = rounds.saturating_sub(DEFAULT_RETENTION.raw.as_secs() / ROUND.as_secs());
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for (phase, keep_raw) in [(0..first_raw, false), (first_raw..rounds, true)] {
        let phase_started = Instant::now();
        let phase_rounds = (phase.end - phase.start) * targets as u64;
        for chunk in phase.clone().step_by(CHUNK_ROUNDS as usize) {
            for t in 0..targets {
                for round in chunk..(chunk + CHUNK_ROUNDS).min(phase.end) {
                    let at = now - ROUND * (rounds - round) as u32;
                    batch.push(record(t, round, at));
                    if batch.len() == BATCH {
                        insert(&mut store, &batch, keep_raw)?;
                        batch.clear();
                    }
                }
            }
        }
        insert(&mut store, &batch, keep_raw)?;
        batch.clear();
        let seconds = phase_started.elapsed().as_secs_f64();
        println!(
            "filled {phase_rounds} rounds {} in {seconds:.0} s ({:.0} rounds/s)",
            if keep_raw {
                "raw (with their rollups)"
            } else {
                "into the rollups only"
            },
            phase_rounds as f64 / seconds
        );
    }
    drop(store);
    // The product's settings back (WAL), as an agent's store has them.
    drop(Store::open(&filling)?);
    std::fs::rename(&filling, dir)?;
    println!(
        "filled {} rounds in {:.0} s in all",
        rounds * targets as u64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The page cache of the fill: the rollups and the B-trees' inner pages stay in memory.
const FILL_CACHE_MIB: u32 = 4096;

/// Round `round` of target `t`: 20 echoes of 1–25 ms, a quarter lost on every 50th round.
fn record(t: usize, round: u64, at: SystemTime) -> Record {
    let base = 1.0 + (t % 50) as f64 * 0.5;
    let rtts = (0..20)
        .map(|i| (round % 50 != 7 || i % 4 != 0).then_some(base + (i as f64) * 0.05))
        .collect();
    Record {
        agent: "bench".into(),
        site: "lab".into(),
        probe: "ping".into(),
        target: format!("t{t:04}"),
        target_site: format!("site{}", t % 10),
        address: Some("198.18.2.2".into()),
        observation: Observation {
            started_at: at,
            duration: Duration::from_millis(500),
            outcome: Outcome::Success,
            measurement: Measurement::Ping(PingStats::from_rtts(rtts)),
        },
    }
}

fn insert(store: &mut Store, batch: &[Record], keep_raw: bool) -> anyhow::Result<()> {
    if keep_raw {
        store.insert(batch)
    } else {
        store.insert_rollups_only(batch)
    }
}
