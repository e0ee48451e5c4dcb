//! TCP connect checks against loopback listeners: open, closed and unresponsive ports.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use probes::{
    FailureKind, IpPreference, Measurement, Observation, Outcome, TcpSettings, TcpStats, tcp,
};
use socket2::{Domain, Socket, Type};

fn stats(obs: &Observation) -> &TcpStats {
    let Measurement::Tcp(stats) = &obs.measurement else {
        panic!("not a tcp measurement: {obs:?}")
    };
    stats
}

fn failure_kind(obs: &Observation) -> Option<FailureKind> {
    match &obs.outcome {
        Outcome::Success => None,
        Outcome::Failure { kind, .. } => Some(*kind),
    }
}

fn settings(addr: SocketAddr, timeout: Duration) -> TcpSettings {
    TcpSettings {
        timeout,
        ..TcpSettings::new(addr.ip().to_string(), addr.port())
    }
}

#[tokio::test]
async fn an_open_port_connects() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let obs = tcp::run(
            &settings(addr, Duration::from_secs(2)),
            &probes::CancellationToken::new(),
        )
        .await;
        assert!(obs.is_success(), "{obs:?}");
        let s = stats(&obs);
        assert_eq!(s.address, Some(addr));
        assert!(
            s.connect_ms.is_some_and(|ms| ms > 0.0 && ms < 1000.0),
            "{s:?}"
        );
        assert_eq!(s.resolve_ms, Some(0.0), "an IP literal needs no lookup");
    }
}

#[tokio::test]
async fn a_name_is_resolved_and_timed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let check = TcpSettings {
        ip: IpPreference::V4Only,
        ..TcpSettings::new("localhost", port)
    };
    let obs = tcp::run(&check, &probes::CancellationToken::new()).await;
    assert!(obs.is_success(), "{obs:?}");
    assert_eq!(
        stats(&obs).address,
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    );
}

#[tokio::test]
async fn a_closed_port_is_refused() {
    // Bind then drop: the port is (almost certainly) closed right afterwards.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let obs = tcp::run(
        &settings(addr, Duration::from_secs(2)),
        &probes::CancellationToken::new(),
    )
    .await;
    assert_eq!(failure_kind(&obs), Some(FailureKind::Refused), "{obs:?}");
    assert_eq!(stats(&obs).connect_ms, None);
    assert!(obs.duration < Duration::from_secs(1));
}

#[tokio::test]
async fn a_listener_that_never_accepts_times_out_at_the_deadline() {
    // Linux drops SYNs to a listener whose accept queue is full; with a backlog of 0 one queued
    // connection fills it. Fill it (retrying until a connect hangs), then probe.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    socket.listen(0).expect("listen");
    let addr = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..16 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(error)) => panic!("filling the accept queue: {error}"),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(
        full,
        "the accept queue never filled ({} connections)",
        fillers.len()
    );

    let started = Instant::now();
    let obs = tcp::run(
        &settings(addr, Duration::from_millis(700)),
        &probes::CancellationToken::new(),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(failure_kind(&obs), Some(FailureKind::Timeout), "{obs:?}");
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    assert_eq!(stats(&obs).connect_ms, None);
    drop(socket);
}

#[tokio::test]
async fn an_address_outside_the_family_preference_is_a_resolve_failure() {
    // (No lookup of a bogus name here: that would send a DNS query off this machine.)
    let check = TcpSettings {
        ip: IpPreference::V6Only,
        ..TcpSettings::new("127.0.0.1", 80)
    };
    let obs = tcp::run(&check, &probes::CancellationToken::new()).await;
    assert_eq!(failure_kind(&obs), Some(FailureKind::Resolve), "{obs:?}");
}
