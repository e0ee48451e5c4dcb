//! The web page's render times (BENCHMARKS.md, "Web page"): fill a store with TARGETS targets and
//! DAYS days of ping rounds at one round per 20 s (20 echoes each), then time the overview and a
//! target page (charts at 3 h, 30 h, 10 d, 30 d) through `vantage serve`'s router over loopback.
//!
//!     cargo run --release --example bench_web -- [TARGETS [DAYS [DIR]]]
//!
//! Defaults: 1,000 targets, 30 days (130 M rounds). The store holds what the default retentions
//! keep at day DAYS: rounds of the last 14 days raw (with their rollups), older ones in the
//! 5-minute and hourly rollups only — written by the store's own rollup code
//! (`Store::insert_rollups_only`) rather than inserted raw and pruned. About 5 GB at the
//! defaults: check `df` first. An existing store in DIR is reused as it is (fill once, time many).

use std::time::{Duration, Instant, SystemTime};

use probes::{Measurement, Observation, Outcome, PingStats};
use vantage::store::{DEFAULT_RETENTION, Record, Store};
use vantage::web::pages::{PageSource, router};

const ROUND: Duration = Duration::from_secs(20);

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
            let mut times = Vec::new();
            let mut size = 0;
            for _ in 0..5 {
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
                "{name}: median {:.0} ms, best {:.0} ms, worst {:.0} ms ({} KiB of HTML)",
                times[2].as_secs_f64() * 1e3,
                times[0].as_secs_f64() * 1e3,
                times[4].as_secs_f64() * 1e3,
                size / 1024
            );
        }
        anyhow::Ok(())
    })
}

/// Rounds oldest first, one transaction per 20,000 rounds; a little loss on every 50th round.
/// Rounds older than the default raw retention go into the rollups only (what pruning leaves).
fn fill(dir: &std::path::Path, targets: usize, days: u64, now: SystemTime) -> anyhow::Result<()> {
    let mut store = Store::open(dir)?;
    let rounds = days * 86_400 / ROUND.as_secs();
    let raw_rounds = DEFAULT_RETENTION.raw.as_secs() / ROUND.as_secs();
    let started = Instant::now();
    let mut raw_started = None;
    let mut batch = Vec::with_capacity(20_000);
    for round in 0..rounds {
        let at = now - ROUND * (rounds - round) as u32;
        for t in 0..targets {
            let base = 1.0 + (t % 50) as f64 * 0.5;
            let rtts = (0..20)
                .map(|i| (round % 50 != 7 || i % 4 != 0).then_some(base + (i as f64) * 0.05))
                .collect();
            batch.push(Record {
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
            });
            if batch.len() == batch.capacity() {
                insert(&mut store, &batch, rounds - round > raw_rounds)?;
                batch.clear();
            }
        }
        if rounds - round == raw_rounds + 1 {
            insert(&mut store, &batch, true)?;
            batch.clear();
            println!(
                "filled {} rounds into the rollups only in {:.0} s",
                (round + 1) * targets as u64,
                started.elapsed().as_secs_f64()
            );
            raw_started = Some(Instant::now());
        }
    }
    insert(&mut store, &batch, false)?;
    let raw_rounds = raw_rounds.min(rounds) * targets as u64;
    let raw_time = raw_started.unwrap_or(started).elapsed().as_secs_f64();
    println!(
        "filled {raw_rounds} raw rounds in {raw_time:.0} s ({:.0} rounds/s); {} rounds in {:.0} s in all",
        raw_rounds as f64 / raw_time,
        rounds * targets as u64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn insert(store: &mut Store, batch: &[Record], rollups_only: bool) -> anyhow::Result<()> {
    if rollups_only {
        store.insert_rollups_only(batch)
    } else {
        store.insert(batch)
    }
}
