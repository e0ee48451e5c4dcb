//! The delivery rules against a real HTTP server (hyper, loopback) that answers by script:
//! 503 + Retry-After, 429, 413, 400 with one poison line in 5,000, 401/403 then 2xx after a token
//! rotation, a bounded spool, and a hand-off that never blocks. Exact counts throughout.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use support::{Received, ScriptedEndpoint, lines_of, ping_record};
use vantage::sinks::{OutputConfig, OutputStats, SecretSource, SinkOptions, Sinks};
use vantage::store::Record;

fn records(n: usize, poison_at: Option<usize>) -> Vec<Record> {
    let base = SystemTime::now() - Duration::from_secs(3600);
    (0..n)
        .map(|i| {
            let target = if Some(i) == poison_at {
                "poison".to_string()
            } else {
                format!("t{}", i % 10)
            };
            ping_record(&target, base + Duration::from_micros(i as u64), i as u64)
        })
        .collect()
}

fn output(url: &str) -> OutputConfig {
    let mut output = OutputConfig::influxdb_v2("scripted", url, "org", "bucket", None);
    output.flush_interval = Duration::from_secs(2);
    output.retry_initial = Duration::from_millis(100);
    output.retry_max = Duration::from_secs(1);
    output.auth_retry = Duration::from_millis(700);
    output.timeout = Duration::from_secs(5);
    output
}

fn options() -> SinkOptions {
    support::init_logs();
    let mut options = SinkOptions::new("test-agent", "lab");
    options.self_metrics_every = None;
    options
}

/// Offer every record, wait until the output resolved them all (delivered or dead-lettered), stop.
async fn deliver(dir: &Path, output: OutputConfig, records: &[Record]) -> OutputStats {
    let sinks = Sinks::start(dir, vec![output], options()).expect("start sinks");
    let handle = sinks.handle();
    for record in records {
        assert!(handle.offer(record), "hand-off refused a record");
    }
    let n = records.len() as u64;
    let start = Instant::now();
    loop {
        let stats = &sinks.stats()[0];
        if stats.delivered + stats.dead_letter >= n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not delivered in time: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = tokio::task::spawn_blocking(move || sinks.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown")
        .remove(0);
    assert_eq!(stats.spool_points, 0, "{stats:?}");
    stats
}

fn expected_lines(records: &[Record]) -> Vec<String> {
    records.iter().flat_map(lines_of).collect()
}

/// Every accepted line exactly once, in the order they were produced (timestamp order).
fn assert_exactly_once_in_order(accepted: &[String], expected: &[String]) {
    let unique: HashSet<&String> = accepted.iter().collect();
    assert_eq!(unique.len(), accepted.len(), "a line was delivered twice");
    assert_eq!(accepted.len(), expected.len());
    assert!(accepted == expected, "lines differ or are out of order");
}

fn gaps(requests: &[Received]) -> Vec<Duration> {
    requests
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_503_retry_after_is_a_floor() {
    let server = ScriptedEndpoint::start(Arc::new(|n, _: &Received| {
        if n < 2 {
            (503, vec![("retry-after", "2".into())], "maintenance".into())
        } else {
            (204, vec![], String::new())
        }
    }))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let records = records(100, None);
    let stats = deliver(dir.path(), output(&server.url), &records).await;

    let received = server.received();
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 204]
    );
    for gap in gaps(&received) {
        assert!(
            gap >= Duration::from_secs(2),
            "retried after {gap:?}, before Retry-After: 2"
        );
    }
    assert!(received.iter().all(|r| r.lines.len() == 100));
    assert!(
        received
            .iter()
            .all(|r| r.content_encoding.as_deref() == Some("gzip"))
    );
    assert_eq!(
        received[0].path_and_query,
        "/api/v2/write?org=org&bucket=bucket&precision=ns"
    );
    assert_exactly_once_in_order(&server.accepted_lines(), &expected_lines(&records));
    assert_eq!(
        (stats.delivered, stats.failed_requests, stats.dropped()),
        (100, 2, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_429_backs_off_exponentially_then_delivers() {
    let server = ScriptedEndpoint::start(Arc::new(|n, _: &Received| {
        if n < 4 {
            (429, vec![], "slow down".into())
        } else {
            (204, vec![], String::new())
        }
    }))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let records = records(50, None);
    let stats = deliver(dir.path(), output(&server.url), &records).await;

    let received = server.received();
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 429, 429, 429, 204]
    );
    // Equal jitter: retry k waits between half and all of 100 ms · 2^(k-1), capped at 1 s.
    for (k, gap) in gaps(&received).into_iter().enumerate() {
        let full = Duration::from_millis(100 * (1 << k)).min(Duration::from_secs(1));
        assert!(
            gap >= full / 2,
            "retry {} after {gap:?} < {:?}",
            k + 1,
            full / 2
        );
        assert!(
            gap < full + Duration::from_millis(1500),
            "retry {} after {gap:?}",
            k + 1
        );
    }
    assert_exactly_once_in_order(&server.accepted_lines(), &expected_lines(&records));
    assert_eq!((stats.delivered, stats.failed_requests), (50, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_413_splits_and_remembers_the_size() {
    const LIMIT: usize = 1000;
    let server = ScriptedEndpoint::start(Arc::new(|_, r: &Received| {
        if r.lines.len() > LIMIT {
            (413, vec![], "request entity too large".into())
        } else {
            (204, vec![], String::new())
        }
    }))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let all = records(10_000, None);
    let (first, second) = all.split_at(5000);
    let stats = deliver(dir.path(), output(&server.url), first).await;
    let received = server.received();
    // 5000 → 2×2500 → 4×1250 → 8×625: 7 answers 413, then 8 deliveries.
    let sizes: Vec<(usize, u16)> = received.iter().map(|r| (r.lines.len(), r.status)).collect();
    let mut expected = vec![
        (5000, 413),
        (2500, 413),
        (1250, 413),
        (625, 204),
        (625, 204),
    ];
    expected.extend([(1250, 413), (625, 204), (625, 204)]);
    expected.extend([(2500, 413), (1250, 413), (625, 204), (625, 204)]);
    expected.extend([(1250, 413), (625, 204), (625, 204)]);
    assert_eq!(sizes, expected);
    assert_exactly_once_in_order(&server.accepted_lines(), &expected_lines(first));
    assert_eq!((stats.delivered, stats.dead_letter), (5000, 0));

    // A new run learns again (the size is not persisted) — but within a run the next batches are
    // sent at the learned size: deliver the second half through the same sinks.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let sinks = Sinks::start(dir2.path(), vec![output(&server.url)], options()).expect("start");
    let handle = sinks.handle();
    for record in first {
        handle.offer(record);
    }
    support::wait_for("first half", Duration::from_secs(60), || {
        let done = sinks.stats()[0].delivered == 5000;
        async move { done }
    })
    .await;
    let before = server.received().len();
    for record in second {
        handle.offer(record);
    }
    support::wait_for("second half", Duration::from_secs(60), || {
        let done = sinks.stats()[0].delivered == 10_000;
        async move { done }
    })
    .await;
    tokio::task::spawn_blocking(move || sinks.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown");
    let later = &server.received()[before..];
    assert!(
        later
            .iter()
            .all(|r| r.status == 204 && r.lines.len() <= 625),
        "after a 413 the batches stay small: {:?}",
        later
            .iter()
            .map(|r| (r.lines.len(), r.status))
            .collect::<Vec<_>>()
    );
    assert_eq!(later.iter().map(|r| r.lines.len()).sum::<usize>(), 5000);
}

/// Requests to resolve a batch of `len` lines with one poison line at `poison`: the whole batch,
/// then at each level both halves, until the poison stands alone.
fn bisect_requests(len: usize, poison: usize) -> usize {
    let (mut lo, mut hi, mut requests) = (0, len, 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        requests += 2;
        if poison < mid {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_400_bisects_one_poison_line_into_the_dead_letters() {
    const MESSAGE: &str = r#"{"error":"partial write: field type conflict: input field \"sent\" on measurement \"ping\" is type integer, already exists as type float dropped=1"}"#;
    let server = ScriptedEndpoint::start(Arc::new(|_, r: &Received| {
        if r.lines.iter().any(|l| l.contains("target=poison")) {
            (400, vec![], MESSAGE.into())
        } else {
            (204, vec![], String::new())
        }
    }))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let poison = 3333;
    let records = records(5000, Some(poison));
    let stats = deliver(dir.path(), output(&server.url), &records).await;

    let received = server.received();
    assert_eq!(received[0].lines.len(), 5000);
    assert_eq!(received.len(), bisect_requests(5000, poison));
    assert_eq!(
        received.iter().filter(|r| r.status == 400).count(),
        bisect_requests(5000, poison).div_ceil(2)
    );
    let mut expected = expected_lines(&records);
    let poison_line = expected.remove(poison);
    assert_exactly_once_in_order(&server.accepted_lines(), &expected);
    assert_eq!((stats.delivered, stats.dead_letter), (4999, 1));

    let spool = vantage::sinks::Spool::open(dir.path()).expect("spool");
    let dead = spool.dead_letters("scripted").expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].line, poison_line);
    assert_eq!((dead[0].status, dead[0].message.as_str()), (400, MESSAGE));
    let totals = &spool.totals().expect("totals")[0];
    assert_eq!(
        (
            totals.accepted,
            totals.delivered,
            totals.dead_letter,
            totals.pending_points
        ),
        (5000, 4999, 1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_401_waits_for_a_rotated_token_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "old-token-value\n").expect("token");
    let server = ScriptedEndpoint::start(Arc::new(|_, r: &Received| {
        if r.authorization.as_deref() == Some("Token new-token-value") {
            (204, vec![], String::new())
        } else {
            (
                401,
                vec![],
                r#"{"code":"unauthorized","message":"unauthorized access"}"#.into(),
            )
        }
    }))
    .await;
    let mut config = output(&server.url);
    config.kind = vantage::sinks::OutputKind::InfluxdbV2 {
        org: "org".into(),
        bucket: "bucket".into(),
        token: Some(SecretSource::File(token_file.clone())),
    };
    let records = records(200, None);
    let sinks = Sinks::start(&dir.path().join("data"), vec![config], options()).expect("start");
    let handle = sinks.handle();
    for record in &records {
        handle.offer(record);
    }
    support::wait_for("two 401s", Duration::from_secs(30), || {
        let n = server.received().len();
        async move { n >= 2 }
    })
    .await;
    let during = sinks.stats().remove(0);
    assert_eq!(
        (during.delivered, during.spool_points),
        (0, 200),
        "{during:?}"
    );
    let error = during.last_error.clone().expect("an error is shown");
    assert!(error.contains("401"), "{error}");
    assert!(
        !error.contains("old-token-value"),
        "secret in an error: {error}"
    );
    std::fs::write(&token_file, "new-token-value\n").expect("rotate token");
    support::wait_for("delivery after rotation", Duration::from_secs(30), || {
        let done = sinks.stats()[0].delivered == 200;
        async move { done }
    })
    .await;
    let stats = tokio::task::spawn_blocking(move || sinks.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown")
        .remove(0);

    let received = server.received();
    let unauthorized = received.iter().filter(|r| r.status == 401).count();
    assert!(unauthorized >= 2);
    assert_eq!(
        received.len(),
        unauthorized + 1,
        "one request after the rotation"
    );
    assert!(
        received[..unauthorized]
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Token old-token-value"))
    );
    // Slowly: every retry after a 401 waits auth_retry (700 ms), not the 100 ms backoff.
    for gap in gaps(&received) {
        assert!(gap >= Duration::from_millis(700), "retried after {gap:?}");
    }
    assert_exactly_once_in_order(&server.accepted_lines(), &expected_lines(&records));
    assert_eq!(
        (stats.delivered, stats.auth_failures, stats.dropped()),
        (200, unauthorized as u64, 0)
    );
    let spool = vantage::sinks::Spool::open(&dir.path().join("data")).expect("spool");
    let recorded = spool.totals().expect("totals")[0]
        .last_error
        .clone()
        .expect("last error persisted");
    assert!(!recorded.contains("token-value"), "{recorded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_basic_auth_403_then_204_after_password_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "wrong").expect("password");
    // "vantage:right" in base64
    let good = "Basic dmFudGFnZTpyaWdodA==";
    let server = ScriptedEndpoint::start(Arc::new(move |_, r: &Received| {
        if r.authorization.as_deref() == Some(good) {
            (204, vec![], String::new())
        } else {
            (403, vec![], r#"{"error":"authorization failed"}"#.into())
        }
    }))
    .await;
    let mut config = OutputConfig::influxdb_v1(
        "v1",
        &server.url,
        "vantage",
        Some("vantage".into()),
        Some(SecretSource::File(password_file.clone())),
    );
    config.auth_retry = Duration::from_millis(300);
    config.flush_interval = Duration::from_millis(100);
    config.gzip = false;
    let records = records(20, None);
    let sinks = Sinks::start(&dir.path().join("data"), vec![config], options()).expect("start");
    for record in &records {
        sinks.handle().offer(record);
    }
    support::wait_for("a 403", Duration::from_secs(30), || {
        let n = server.received().len();
        async move { n >= 1 }
    })
    .await;
    std::fs::write(&password_file, "right\n").expect("rotate password");
    support::wait_for("delivery", Duration::from_secs(30), || {
        let done = sinks.stats()[0].delivered == 20;
        async move { done }
    })
    .await;
    tokio::task::spawn_blocking(move || sinks.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown");
    let received = server.received();
    assert_eq!(received[0].status, 403);
    assert_eq!(received.last().expect("requests").status, 204);
    assert_eq!(received[0].path_and_query, "/write?db=vantage&precision=ns");
    assert_eq!(received[0].content_encoding, None);
    assert_exactly_once_in_order(&server.accepted_lines(), &expected_lines(&records));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_bound_drops_the_oldest_and_counts_exactly() {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let open = Arc::clone(&open);
        ScriptedEndpoint::start(Arc::new(move |_, _: &Received| {
            if open.load(std::sync::atomic::Ordering::SeqCst) {
                (204, vec![], String::new())
            } else {
                (503, vec![], "down".into())
            }
        }))
        .await
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = output(&server.url);
    config.spool_max_bytes = 64 * 1024;
    config.flush_interval = Duration::from_millis(100);
    let records = records(2000, None);
    let expected = expected_lines(&records);
    let total_bytes: usize = expected.iter().map(String::len).sum();
    assert!(
        total_bytes > 4 * 64 * 1024,
        "the test must overflow the bound"
    );
    let sinks = Sinks::start(dir.path(), vec![config], options()).expect("start");
    for record in &records {
        sinks.handle().offer(record);
    }
    support::wait_for(
        "everything spooled, the bound enforced",
        Duration::from_secs(30),
        || {
            let s = sinks.stats().remove(0);
            async move { s.accepted == 2000 && s.spool_bytes <= 64 * 1024 }
        },
    )
    .await;
    let full = sinks.stats().remove(0);
    assert!(full.spool_bytes <= 64 * 1024, "{full:?}");
    assert!(full.dropped_spool_full > 0);
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    support::wait_for("drained", Duration::from_secs(30), || {
        let s = sinks.stats().remove(0);
        async move { s.spool_points == 0 }
    })
    .await;
    let stats = tokio::task::spawn_blocking(move || sinks.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown")
        .remove(0);
    let accepted = server.accepted_lines();
    let unique: HashSet<&String> = accepted.iter().collect();
    assert_eq!(unique.len(), accepted.len(), "delivered twice");
    assert!(accepted.iter().all(|l| expected.contains(l)));
    assert_eq!(stats.delivered, accepted.len() as u64);
    assert_eq!(
        stats.delivered + stats.dropped_spool_full,
        2000,
        "{stats:?}"
    );
    // Oldest first: the newest points all made it.
    for line in &expected[expected.len() - 100..] {
        assert!(unique.contains(line), "a new point was dropped");
    }
    let position: std::collections::HashMap<&String, usize> =
        expected.iter().enumerate().map(|(i, l)| (l, i)).collect();
    assert!(
        accepted
            .windows(2)
            .all(|w| position[&w[0]] < position[&w[1]]),
        "delivered out of order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_off_never_blocks_and_counts_every_drop() {
    let server =
        ScriptedEndpoint::start(Arc::new(|_, _: &Received| (204, vec![], String::new()))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = options();
    options.queue_capacity = 64;
    let sinks = Sinks::start(dir.path(), vec![output(&server.url)], options).expect("start");
    let handle = sinks.handle();
    let records = records(20_000, None);
    let mut slowest = Duration::ZERO;
    let mut queued = 0u64;
    for record in &records {
        let start = Instant::now();
        queued += u64::from(handle.offer(record));
        slowest = slowest.max(start.elapsed());
    }
    // try_send never waits; the bound only allows for the scheduler preempting this thread.
    assert!(
        slowest < Duration::from_millis(250),
        "an offer blocked for {slowest:?}"
    );
    let (offered, dropped) = sinks.offered();
    assert_eq!(offered, 20_000);
    assert!(
        dropped > 0,
        "the queue never filled; the test proves nothing"
    );
    assert_eq!(queued + dropped, 20_000);
    support::wait_for("delivery", Duration::from_secs(60), || {
        let s = sinks.stats().remove(0);
        async move { s.delivered == queued }
    })
    .await;
    let stats = tokio::task::spawn_blocking(move || sinks.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown")
        .remove(0);
    assert_eq!(stats.accepted, queued);
    assert_eq!(stats.dropped_unspooled, dropped);
    assert_eq!(server.accepted_lines().len() as u64, queued);
    let spool = vantage::sinks::Spool::open(dir.path()).expect("spool");
    let totals = &spool.totals().expect("totals")[0];
    assert_eq!(
        (totals.accepted, totals.dropped_unspooled, totals.delivered),
        (queued, dropped, queued),
        "the spool's own counters agree"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_drains_in_order_exactly_once_with_the_next_batch_prepared_in_flight() {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let open = Arc::clone(&open);
        ScriptedEndpoint::start(Arc::new(move |_, _: &Received| {
            if open.load(std::sync::atomic::Ordering::SeqCst) {
                (204, vec![], String::new())
            } else {
                (503, vec![], "down".into())
            }
        }))
        .await
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = output(&server.url);
    config.batch_size = 1000;
    let records = records(20_000, None);
    let mut options = options();
    options.queue_capacity = 20_000;
    let sinks = Sinks::start(dir.path(), vec![config], options).expect("start");
    for record in &records {
        assert!(sinks.handle().offer(record));
    }
    support::wait_for("the backlog spooled", Duration::from_secs(60), || {
        let s = sinks.stats().remove(0);
        async move { s.spool_points == 20_000 }
    })
    .await;
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    support::wait_for("drained", Duration::from_secs(60), || {
        let s = sinks.stats().remove(0);
        async move { s.spool_points == 0 }
    })
    .await;
    let stats = tokio::task::spawn_blocking(move || sinks.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown")
        .remove(0);
    assert_exactly_once_in_order(&server.accepted_lines(), &expected_lines(&records));
    let delivered: Vec<usize> = server
        .received()
        .iter()
        .filter(|r| r.status == 204)
        .map(|r| r.lines.len())
        .collect();
    assert_eq!(delivered, vec![1000; 20]);
    assert_eq!((stats.delivered, stats.dropped()), (20_000, 0));
}
