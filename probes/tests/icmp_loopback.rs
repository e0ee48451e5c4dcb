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
