//! Path traces to loopback over ICMP, UDP and TCP through trippy-core (raw sockets: run as root).

use std::time::Duration;

use probes::{
    CancellationToken, LossVerdict, Measurement, Observation, TraceProtocol, TraceReport,
    TraceSettings, locate_loss, trace,
};

fn report(obs: &Observation) -> &TraceReport {
    let Measurement::Trace(report) = &obs.measurement else {
        panic!("not a trace: {obs:?}")
    };
    report
}

fn quick(target: &str, protocol: TraceProtocol) -> TraceSettings {
    TraceSettings {
        protocol,
        rounds: 3,
        round_duration: Duration::from_millis(100),
        max_ttl: 5,
        ..TraceSettings::new(target)
    }
}

#[tokio::test]
async fn loopback_is_one_hop_away_over_every_protocol() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tcp_port = listener.local_addr().expect("addr").port();
    for (protocol, port) in [
        (TraceProtocol::Icmp, None),
        (TraceProtocol::Udp, None),
        (TraceProtocol::Tcp, Some(tcp_port)),
    ] {
        let settings = TraceSettings {
            port,
            ..quick("127.0.0.1", protocol)
        };
        let obs = trace::run(&settings, &CancellationToken::new()).await;
        assert!(
            obs.is_success(),
            "{protocol:?} (needs root for raw sockets): {obs:?}"
        );
        let r = report(&obs);
        assert!(r.reached, "{protocol:?}: {r:?}");
        assert_eq!(r.hops.len(), 1, "{protocol:?}: {r:?}");
        let hop = &r.hops[0];
        assert_eq!(
            hop.addresses,
            vec!["127.0.0.1".parse::<std::net::IpAddr>().expect("ip")],
            "{protocol:?}"
        );
        assert_eq!((hop.sent, hop.received), (3, 3), "{protocol:?}: {hop:?}");
        assert!(
            hop.rtt_avg_ms.is_some_and(|ms| ms < 100.0),
            "{protocol:?}: {hop:?}"
        );
        assert_eq!(locate_loss(r), LossVerdict::NoLoss);
        assert!(
            obs.duration < settings.max_duration() + Duration::from_secs(1),
            "{:?}",
            obs.duration
        );
    }
}

#[tokio::test]
async fn ipv6_loopback_is_traced_too() {
    let obs = trace::run(
        &quick("::1", TraceProtocol::Icmp),
        &CancellationToken::new(),
    )
    .await;
    assert!(obs.is_success(), "{obs:?}");
    assert!(report(&obs).reached);
}

#[tokio::test]
async fn the_report_renders_as_an_mtr_table() {
    let obs = trace::run(
        &quick("127.0.0.1", TraceProtocol::Icmp),
        &CancellationToken::new(),
    )
    .await;
    let table = probes::render_report(report(&obs), "loopback");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("HOST: loopback")
            && lines[0].ends_with("Loss%   Snt   Last   Avg  Best  Wrst StDev")
    );
    assert!(
        lines[1].starts_with("  1.|-- 127.0.0.1") && lines[1].contains("0.0%     3"),
        "{table}"
    );
}

/// trippy cannot be interrupted, but the run returns once its stop token fires (the agent's stop
/// does not wait out a 12-round trace) and says it was stopped. (The test runtime still waits
/// for trippy's thread when it drops: `vantage run` does not, see `cli::agent`.)
#[tokio::test]
async fn a_stopped_trace_returns_at_once() {
    let settings = TraceSettings {
        rounds: 12,
        round_duration: Duration::from_secs(1),
        ..quick("127.0.0.1", TraceProtocol::Icmp)
    };
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stopper.cancel();
    });
    let started = std::time::Instant::now();
    let obs = trace::run(&settings, &stop).await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the stop was not honoured: {:?} (the trace lasts {:?})",
        started.elapsed(),
        settings.max_duration()
    );
    assert!(obs.was_stopped(), "{obs:?}");
}
