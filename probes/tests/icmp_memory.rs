//! Memory per round when many rounds run at once (`vantage ping` at 10,000 targets): the growth
//! of the process's anonymous resident memory while every round is alive, sampled from /proc.
//! Real echoes to loopback addresses (127.1.0.0/16); needs root or CAP_NET_RAW, fails without it.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use probes::{CancellationToken, IcmpClient, Measurement, RoundPlan};

/// The process's anonymous resident memory (heap, stacks), in bytes.
fn rss_anon() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/self/status");
    kb * 1024
}

/// Resident bytes a running round may add, over the process's footprint before the rounds: the
/// round's state in the socket loop, its echoes' send times and RTTs, and its share of the batch.
/// A task, channel or stop token per round (what `vantage ping` had: 2 KiB per target, 33 MB peak
/// RSS at 10,000) does not fit.
const BYTES_PER_ROUND: usize = 1000;

#[tokio::test(flavor = "current_thread")]
async fn a_batch_of_rounds_holds_a_few_hundred_bytes_per_round() {
    let client = IcmpClient::new().expect("ICMP socket (run as root or with CAP_NET_RAW)");
    // Warm up the socket loop (its batches and buffers are allocated once).
    let warm = client
        .round(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            RoundPlan {
                count: 1,
                spacing: Duration::from_millis(1),
                timeout: Duration::from_millis(500),
            },
            &CancellationToken::new(),
        )
        .await;
    assert!(warm.is_success(), "{warm:?}");

    let n = 5_000u32;
    let plan = RoundPlan {
        count: 3,
        spacing: Duration::from_millis(400),
        timeout: Duration::from_millis(400),
    };
    let before = rss_anon();
    let peak = Arc::new(AtomicUsize::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_anon(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // Starts spread over one spacing, as `vantage ping` does (12,500 echoes/s); each round runs
    // two spacings or more, so at the last start every round is alive.
    let start = Instant::now();
    let targets: Vec<(IpAddr, Instant)> = (0..n)
        .map(|i| {
            let addr = Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
            (IpAddr::V4(addr), start + plan.spacing / n * i)
        })
        .collect();
    let mut rounds = client.rounds(&targets, plan, &CancellationToken::new());
    let mut seen = vec![false; n as usize];
    let mut received = 0;
    while let Some((index, observation)) = rounds.next().await {
        assert!(!seen[index], "round {index} ended twice");
        seen[index] = true;
        let Measurement::Ping(stats) = &observation.measurement else {
            panic!("not a ping: {observation:?}")
        };
        assert_eq!(stats.sent, plan.count, "round {index}: {observation:?}");
        received += stats.received;
    }
    assert!(seen.iter().all(|s| *s), "every round ended once");
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let peak = peak.load(Ordering::Relaxed) - before;
    let per_round = peak / n as usize;
    eprintln!("{n} rounds: peak {peak} bytes over the start, {per_round} per round");
    // Loopback answers every echo; some lost to a loaded machine (a debug build, a raw socket
    // that also queues every request) say nothing about memory.
    assert!(received >= n * plan.count / 2, "{received} replies");
    assert!(
        per_round <= BYTES_PER_ROUND,
        "{per_round} bytes per running round (peak {peak} for {n}), over {BYTES_PER_ROUND}"
    );
}
