//! Real echoes to loopback through the shared client, over both socket kinds and both families.

use std::time::Duration;

use probes::icmp::{Family, SocketKind};
use probes::{CancellationToken, IcmpClient, Measurement, RoundPlan};

fn plan(count: u32) -> RoundPlan {
    RoundPlan {
        count,
        spacing: Duration::from_millis(5),
        timeout: Duration::from_millis(500),
    }
}

#[tokio::test]
async fn loopback_round_answers_every_echo() {
    let client = IcmpClient::new().expect("ICMP socket (run as root or with CAP_NET_RAW)");
    for addr in ["127.0.0.1", "::1"] {
        let obs = client
            .round(
                addr.parse().expect("addr"),
                plan(10),
                &CancellationToken::new(),
            )
            .await;
        let Measurement::Ping(stats) = &obs.measurement else {
            panic!("not a ping: {obs:?}")
        };
        assert_eq!((stats.sent, stats.received), (10, 10), "{addr}: {obs:?}");
        assert!(obs.is_success());
        assert!(stats.rtt_max_ms.unwrap_or(f64::MAX) < 500.0);
    }
}

#[tokio::test]
async fn concurrent_rounds_to_the_same_address_do_not_steal_each_others_replies() {
    let client = IcmpClient::new().expect("ICMP socket");
    let stop = CancellationToken::new();
    let addr = "127.0.0.1".parse().expect("addr");
    let (a, b) = tokio::join!(
        client.round(addr, plan(50), &stop),
        client.round(addr, plan(50), &stop)
    );
    for obs in [a, b] {
        let Measurement::Ping(stats) = &obs.measurement else {
            panic!("not a ping: {obs:?}")
        };
        assert_eq!((stats.sent, stats.received), (50, 50));
    }
}

#[tokio::test]
async fn stopping_a_round_keeps_what_was_measured() {
    let client = IcmpClient::new().expect("ICMP socket");
    let stop = CancellationToken::new();
    let slow = RoundPlan {
        count: 100,
        spacing: Duration::from_millis(20),
        timeout: Duration::from_millis(500),
    };
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stopper.cancel();
    });
    let obs = client
        .round("127.0.0.1".parse().expect("addr"), slow, &stop)
        .await;
    let Measurement::Ping(stats) = &obs.measurement else {
        panic!("not a ping: {obs:?}")
    };
    assert!(stats.sent > 3 && stats.sent < 100, "sent {}", stats.sent);
    assert_eq!(
        stats.received, stats.sent,
        "every echo sent before the stop is still awaited"
    );
}

#[tokio::test]
async fn datagram_sockets_work_where_ping_group_range_allows() {
    // Allow ping sockets for every group for the duration of the test, then put the host back.
    const RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";
    let before = std::fs::read_to_string(RANGE).expect("read ping_group_range");
    std::fs::write(RANGE, "0 2147483647").expect("set ping_group_range (needs root)");
    let client = IcmpClient::with_socket_kind(SocketKind::Datagram);
    std::fs::write(RANGE, before.trim()).expect("restore ping_group_range");
    let client = client.expect("datagram ICMP socket");
    assert_eq!(client.socket_kind(Family::V4), Some(SocketKind::Datagram));
    let obs = client
        .round(
            "127.0.0.1".parse().expect("addr"),
            plan(5),
            &CancellationToken::new(),
        )
        .await;
    let Measurement::Ping(stats) = &obs.measurement else {
        panic!("not a ping: {obs:?}")
    };
    assert_eq!((stats.sent, stats.received), (5, 5), "{obs:?}");
}

/// Issue 11, item 4: a round needing more sequence numbers than its address had free looped over
/// them forever under the table's lock (the whole client froze). Now it fails at once, naming the
/// limit, and rounds that fit keep working. Run on a thread of its own so a hang fails the test.
#[test]
fn more_echoes_to_one_address_than_sequence_numbers_fail_at_once() {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let client = IcmpClient::new().expect("ICMP socket");
            let addr = "127.0.0.1".parse().expect("addr");
            let plan = |count| RoundPlan {
                count,
                spacing: Duration::from_millis(1),
                timeout: Duration::from_millis(300),
            };
            let never = CancellationToken::new();
            let alone = client.round(addr, plan(65_537), &never).await;
            // Two rounds that fit alone but not together: the second fails, the first runs on.
            let stop = CancellationToken::new();
            let first = client.round(addr, plan(40_000), &stop);
            let second = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let second = client.round(addr, plan(30_000), &never).await;
                stop.cancel();
                second
            };
            let (first, second) = tokio::join!(first, second);
            // The first round's numbers are free again once it ended: this one registers (and,
            // stopped already, sends nothing).
            let stopped = CancellationToken::new();
            stopped.cancel();
            let after = client.round(addr, plan(30_000), &stopped).await;
            let _ = done.send((alone, first, second, after));
        });
    });
    let (alone, first, second, after) = result
        .recv_timeout(Duration::from_secs(30))
        .expect("the rounds hung (issue 11, item 4)");
    let failure = |obs: &probes::Observation| match &obs.outcome {
        probes::Outcome::Failure { kind, message } => (*kind, message.clone()),
        other => panic!("expected a failure, got {other:?}: {obs:?}"),
    };
    let sent_received = |obs: &probes::Observation| match &obs.measurement {
        Measurement::Ping(stats) => (stats.sent, stats.received),
        _ => panic!("not a ping: {obs:?}"),
    };

    let (kind, message) = failure(&alone);
    assert_eq!(kind, probes::FailureKind::Send, "{message}");
    assert!(
        message.contains("65537 echoes") && message.contains("65536"),
        "{message}"
    );
    assert_eq!(sent_received(&alone), (0, 0));

    let (kind, message) = failure(&second);
    assert_eq!(kind, probes::FailureKind::Send, "{message}");
    assert!(
        message.contains("40000 echoes to it already await"),
        "{message}"
    );
    assert_eq!(sent_received(&second), (0, 0));

    let (sent, received) = sent_received(&first);
    assert!(sent > 10 && sent < 40_000, "first round: {first:?}");
    assert_eq!(received, sent, "first round: {first:?}");

    let (kind, message) = failure(&after);
    assert_eq!(kind, probes::FailureKind::Deadline, "{message}");
}

/// A loop that falls behind its send schedule (100,000 echoes/s offered to 20,000 loopback
/// addresses, more than a debug build sends) still reads replies between its sends: the first
/// rounds end while the later ones are still waiting to send. It used to send until nothing was
/// due, reading nothing, so replies piled up in the socket until its buffer overflowed.
#[tokio::test]
async fn a_loop_behind_its_sends_still_reads_replies_between_them() {
    let client = IcmpClient::new().expect("ICMP socket (run as root or with CAP_NET_RAW)");
    let n = 20_000u32;
    let plan = RoundPlan {
        count: 1,
        spacing: Duration::from_millis(1),
        timeout: Duration::from_secs(1),
    };
    // The first echo after the batch is set up (slow in a debug build), so the schedule starts
    // on time and the loop falls behind while sending, not before.
    let t0 = std::time::Instant::now() + Duration::from_millis(500);
    let spread = Duration::from_millis(200);
    let targets: Vec<(std::net::IpAddr, std::time::Instant)> = (0..n)
        .map(|i| {
            let addr = std::net::Ipv4Addr::new(127, 2, (i / 250) as u8, (i % 250 + 1) as u8);
            (addr.into(), t0 + spread / n * i)
        })
        .collect();
    let mut rounds = client.rounds(&targets, plan, &CancellationToken::new());
    let mut first = None;
    let mut last = t0;
    let mut answered = 0;
    while let Some((_, observation)) = rounds.next().await {
        let now = std::time::Instant::now();
        first.get_or_insert(now);
        last = now;
        answered += u32::from(observation.is_success());
    }
    let (first, last) = (first.expect("rounds ended") - t0, last - t0);
    assert!(answered > 0, "no round answered");
    assert!(
        first * 2 < last,
        "the first round ended after {first:?}, the last after {last:?}: no replies were read \
         while echoes were being sent"
    );
}

/// The agent's loop per ICMP probe: rounds started at different times on one session, one of
/// them cancelled (a reload dropping its target), all of them yielded once by id.
#[tokio::test]
async fn a_session_starts_and_cancels_rounds_by_id_and_yields_each_once() {
    let client = IcmpClient::new().expect("ICMP socket");
    let stop = CancellationToken::new();
    let paced = RoundPlan {
        count: 20,
        spacing: Duration::from_millis(20),
        timeout: Duration::from_millis(500),
    };
    let mut session = client.session(paced, &stop);
    let (v4, v6) = ("127.0.0.1".parse().expect("v4"), "::1".parse().expect("v6"));
    session.start(&[(7, v4), (8, v6)]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    session.start(&[(9, v4)]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    session.cancel(&[9, 12345]);
    assert_eq!(session.running(), 3);
    let mut ended = std::collections::BTreeMap::new();
    while session.running() > 0 {
        let (id, obs) = tokio::time::timeout(Duration::from_secs(5), session.next())
            .await
            .expect("every round ends");
        let Measurement::Ping(stats) = obs.measurement else {
            panic!("not a ping: {id}")
        };
        assert!(
            ended.insert(id, (stats.sent, stats.received)).is_none(),
            "{id} twice"
        );
    }
    assert_eq!(ended[&7], (20, 20));
    assert_eq!(ended[&8], (20, 20));
    let (sent, received) = ended[&9];
    assert!(
        sent < 10 && sent == received,
        "the cancelled round went on: {sent} sent"
    );

    // A stop ends the rest of a round early (and a start after it runs nothing).
    session.start(&[(10, v4)]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.cancel();
    let (id, obs) = tokio::time::timeout(Duration::from_secs(5), session.next())
        .await
        .expect("the stopped round ends");
    let Measurement::Ping(stats) = obs.measurement else {
        panic!("not a ping")
    };
    assert_eq!(id, 10);
    assert!(stats.sent < 20, "{} sent after the stop", stats.sent);
    session.start(&[(11, v4)]);
    let (id, obs) = tokio::time::timeout(Duration::from_secs(5), session.next())
        .await
        .expect("a round started after the stop ends at once");
    assert_eq!(id, 11);
    assert!(matches!(obs.measurement, Measurement::Ping(s) if s.sent == 0));
}
