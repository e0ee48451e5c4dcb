//! Benchmark of the InfluxDB sink (run by `scripts/bench-influx`; figures in BENCHMARKS.md):
//! 1. encoding throughput: synthetic ping records → line protocol, points/s;
//! 2. spool fill: a backlog of N points written to the SQLite spool, points/s;
//! 3. drain: VictoriaMetrics (Debian package `victoria-metrics`, started here on loopback) comes up
//!    and the backlog drains through the v2 write API; points/s, and the count in VictoriaMetrics is
//!    checked.
//!
//!    Then VictoriaMetrics' own ingest ceiling on this machine: pre-built bodies posted back to back.
//! 4. the same drain into a null endpoint (an in-process HTTP server that answers 204 to everything):
//!    the ceiling of vantage's own side (spool read, gzip, HTTP, spool delete).
//!
//! `cargo run --release --example bench_influx -- [--points N] [--batch B] [--no-gzip]`
//! Bounded: one backlog, one drain, stops by itself (gives up after 10 minutes).

// The sink tests' stores (tests/support), without the parts that need the test binary.
#[allow(dead_code)]
#[path = "../tests/support/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "../tests/support/stores.rs"]
mod stores;

use std::time::{Duration, Instant, SystemTime};

use vantage::sinks::line_protocol::encode;
use vantage::sinks::{OutputConfig, SinkOptions, Sinks, Spool};

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value for {name}")))
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let points: u64 = arg("--points", 1_000_000);
    let batch: usize = arg("--batch", 5_000);
    let gzip = !std::env::args().any(|a| a == "--no-gzip");
    const TARGETS: u64 = 1000;
    let start_ts = SystemTime::now() - Duration::from_secs(3 * 3600);
    let record = |i: u64| {
        stores::ping_record(
            &format!("target-{:04}", i % TARGETS),
            start_ts + Duration::from_secs(i / TARGETS) + Duration::from_micros(i % TARGETS),
            i,
        )
    };

    // 1. Encoding: records built up front, then encode() + line() timed alone.
    let sample: Vec<_> = (0..100_000).map(record).collect();
    let t = Instant::now();
    let (mut lines, mut bytes) = (0u64, 0u64);
    for _ in 0..10 {
        for r in &sample {
            for p in encode(r) {
                let line = p.line().expect("line");
                bytes += line.len() as u64;
                lines += 1;
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "encode: {lines} points in {secs:.2} s = {:.0} points/s ({:.0} MB/s of line protocol, {:.0} bytes/point)",
        lines as f64 / secs,
        bytes as f64 / secs / 1e6,
        bytes as f64 / lines as f64
    );

    // 2. The backlog: `points` points in the spool, as an outage would leave them.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("agent-data");
    let t = Instant::now();
    fill(&data, points, &record);
    let secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(data.join("spool.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "spool fill: {points} points (record → encode → SQLite) in {secs:.2} s = {:.0} points/s; spool.db {:.0} MB",
        points as f64 / secs,
        size as f64 / 1e6
    );

    // 3. The store returns: drain to VictoriaMetrics.
    let vm = stores::VictoriaMetrics::start(&dir.path().join("vm")).await;
    drain(&data, &vm.url, "VictoriaMetrics", batch, gzip).await;
    let client = stores::http();
    client
        .get(format!("{}/internal/force_flush", vm.url))
        .send()
        .await
        .expect("flush");
    let answer = client
        .get(stores::with_query(
            &format!("{}/api/v1/query", vm.url),
            &[("query", "sum(count_over_time(ping_sent[4h]))")],
        ))
        .send()
        .await
        .expect("query")
        .text()
        .await
        .expect("query body");
    let json: serde_json::Value = serde_json::from_str(&answer).expect("json");
    let stored: f64 = json["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    println!("VictoriaMetrics holds {stored} ping_sent samples (expected {points})");
    assert_eq!(stored as u64, points, "every point arrived exactly once");

    // 3b. VictoriaMetrics' own ceiling here: 200,000 more points in pre-built gzip bodies of
    // `batch` lines, posted back to back by a plain client (no spool, no encoding on the clock).
    let bodies: Vec<Vec<u8>> = (points..points + 200_000)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|chunk| {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            for &i in chunk {
                for p in encode(&record(i)) {
                    gz.write_all(p.line().expect("line").as_bytes())
                        .expect("gzip");
                    gz.write_all(b"\n").expect("gzip");
                }
            }
            gz.finish().expect("gzip")
        })
        .collect();
    let url = format!(
        "{}/api/v2/write?org=lab&bucket=vantage&precision=ns",
        vm.url
    );
    let t = Instant::now();
    for body in bodies {
        let answer = client
            .post(&url)
            .header("content-encoding", "gzip")
            .body(body)
            .send()
            .await
            .expect("post");
        assert!(answer.status().is_success(), "{answer:?}");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "VictoriaMetrics alone: 200000 points in pre-built gzip bodies of {batch}, back to back, in {secs:.2} s = {:.0} points/s",
        200_000.0 / secs
    );
    drop(vm);

    // 4. The same backlog into an endpoint that costs nothing: vantage's own ceiling.
    let null = stores::ScriptedEndpoint::start(std::sync::Arc::new(|_, _: &stores::Received| {
        (204, vec![], String::new())
    }))
    .await;
    let data = dir.path().join("agent-data-2");
    fill(&data, points, &record);
    drain(&data, &null.url, "a null endpoint", batch, gzip).await;
}

fn fill(data: &std::path::Path, points: u64, record: &dyn Fn(u64) -> vantage::store::Record) {
    {
        let mut spool = Spool::open(data).expect("spool");
        let id = spool.output_id("vm").expect("output");
        let mut chunk = Vec::with_capacity(5000);
        for i in 0..points {
            let r = record(i);
            for p in encode(&r) {
                chunk.push((p.timestamp_ns, p.line().expect("line").into_bytes()));
            }
            if chunk.len() >= 5000 {
                spool.append(&[id], &chunk, 0).expect("append");
                chunk.clear();
            }
        }
        spool.append(&[id], &chunk, 0).expect("append");
    }
}

async fn drain(data: &std::path::Path, url: &str, what: &str, batch: usize, gzip: bool) {
    let mut output = OutputConfig::influxdb_v2("vm", url, "lab", "vantage", None);
    output.batch_size = batch;
    output.gzip = gzip;
    let mut options = SinkOptions::new("bench", "lab");
    options.self_metrics_every = None;
    let t = Instant::now();
    let sinks = Sinks::start(data, vec![output], options).expect("start sinks");
    loop {
        let s = sinks.stats().remove(0);
        if s.spool_points == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "drain too slow: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let stats = tokio::task::spawn_blocking(move || sinks.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown")
        .remove(0);
    println!(
        "drain: {} points to {what} (v2 API, batch {batch}, gzip {gzip}) in {secs:.2} s = {:.0} points/s over {} requests",
        stats.delivered,
        stats.delivered as f64 / secs,
        stats.requests
    );
}
