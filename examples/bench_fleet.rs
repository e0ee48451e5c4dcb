//! Benchmark of the fleet evaluator's read (figures in BENCHMARKS.md): S sites, each reached by
//! the others through one mesh target, and a target rule over T cloud targets that every site
//! probes. One read feeds a reading per (site, target) pair, S × (S + T) of them, all healthy;
//! prints the evaluator's start and the time per read. Nothing is read from the store (its
//! `[[output]]` is only named) and nothing is sent.
//!
//! `cargo run --release --example bench_fleet -- [--sites S] [--targets T] [--reads K]`
//! Bounded: K reads (default 20), then it stops.

use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use vantage::config::evaluator::EvaluatorConfig;
use vantage::evaluator::{Evaluator, Reading};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => default,
        Some(i) => match args.get(i + 1).map(|v| v.parse()) {
            Some(Ok(value)) if value > 0 => value,
            _ => {
                eprintln!("bench_fleet: {name} needs a positive count");
                std::process::exit(2);
            }
        },
    }
}

fn main() {
    let (sites, targets, reads) = (
        arg("--sites", 50),
        arg("--targets", 1000),
        arg("--reads", 20),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut toml = format!(
        "[evaluator]\ndata_dir = \"{}\"\ninterval = \"10s\"\nwindow = \"1m\"\n\n",
        dir.path().display()
    );
    for s in 0..sites {
        writeln!(
            toml,
            "[[site]]\nname = \"s{s}\"\ntargets = [\"s{s}-agent\"]\n"
        )
        .expect("write");
    }
    let cloud: Vec<String> = (0..targets).map(|t| format!("\"c{t}\"")).collect();
    writeln!(
        toml,
        "[[rule]]\nname = \"site-down\"\nscope = \"site\"\nmin_sites = 2\nkind = \"loss\"\n\
         above_pct = 90\nfor = \"30s\"\n\n\
         [[rule]]\nname = \"cloud-down\"\nscope = \"target\"\ntargets = [{}]\nsites_pct = 50\n\
         kind = \"loss\"\nabove_pct = 50\nfor = \"1m\"\n\n\
         [[output]]\nname = \"store\"\nkind = \"influxdb_v1\"\nurl = \"http://127.0.0.1:9\"\n\
         db = \"vantage\"\n\n[fleet]\noutput = \"store\"\n",
        cloud.join(", ")
    )
    .expect("write");
    let config = EvaluatorConfig::parse(&toml, Path::new("bench.toml")).expect("config");

    let started = Instant::now();
    let mut evaluator = Evaluator::new(&config);
    let start_ms = started.elapsed().as_secs_f64() * 1e3;

    let mut readings = Vec::new();
    for s in 0..sites {
        let mesh = (0..sites)
            .filter(|o| *o != s)
            .map(|o| format!("s{o}-agent"));
        let cloud = (0..targets).map(|t| format!("c{t}"));
        for target in mesh.chain(cloud) {
            readings.push(Reading {
                site: format!("s{s}"),
                target,
                loss_pct: Some(0.0),
                median_ms: Some(2.0),
            });
        }
    }
    let mut per_read = Vec::new();
    for k in 0..reads {
        let now = Duration::from_secs(10 * k as u64);
        let started = Instant::now();
        let transitions = evaluator.read(now, SystemTime::now(), &readings);
        per_read.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(transitions.is_empty(), "a healthy fleet: {transitions:?}");
    }
    per_read.sort_by(f64::total_cmp);
    println!(
        "sites {sites}, cloud targets {targets}, readings per read {}: start {start_ms:.1} ms; \
         per read: median {:.1} ms, min {:.1}, max {:.1} ({reads} reads)",
        readings.len(),
        per_read[per_read.len() / 2],
        per_read[0],
        per_read[per_read.len() - 1],
    );
}
