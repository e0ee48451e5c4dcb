//! Path traces through the routed lab (`lab` crate: agent → r1 → r2 → target in network
//! namespaces): the tracer runs on a thread that entered the agent's namespace, and the routers
//! drop, delay or stay silent. Needs root; fails (never skips) without it.

use std::fs::File;
use std::net::IpAddr;
use std::time::Duration;

use lab::{Lab, Router, addr};
use nix::sched::{CloneFlags, setns};
use probes::{
    LossVerdict, Measurement, Observation, TraceProtocol, TraceReport, TraceSettings,
    locate_latency_step, locate_loss, trace,
};

/// Run `settings` from the agent's namespace to the lab's target.
fn trace_from_agent(lab: &Lab, settings: &TraceSettings) -> Observation {
    let path = format!("/run/netns/{}", lab.agent().name());
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // setns(2) moves this thread only; the tracer's sockets are opened on it.
                let namespace = File::open(&path).expect("open the agent namespace");
                setns(&namespace, CloneFlags::CLONE_NEWNET).expect("enter the agent namespace");
                trace::run_blocking(settings, IpAddr::V4(addr::TARGET))
            })
            .join()
            .expect("tracer thread")
    })
}

fn report(obs: &Observation) -> &TraceReport {
    let Measurement::Trace(report) = &obs.measurement else {
        panic!("not a trace: {obs:?}")
    };
    report
}

fn settings(protocol: TraceProtocol, rounds: usize, round_ms: u64) -> TraceSettings {
    TraceSettings {
        protocol,
        rounds,
        round_duration: Duration::from_millis(round_ms),
        max_ttl: 8,
        ..TraceSettings::new(addr::TARGET.to_string())
    }
}

fn ip(a: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

/// The addresses answering at each TTL, `None` for a silent TTL.
fn path(report: &TraceReport) -> Vec<Option<IpAddr>> {
    report
        .hops
        .iter()
        .map(|h| h.addresses.first().copied())
        .collect()
}

/// Run `nft` commands in a router (the rules go with the namespace when the lab is dropped).
fn nft(lab: &Lab, router: Router, commands: &[&str]) {
    for command in commands {
        let mut args = vec!["nft"];
        args.extend(command.split_whitespace());
        lab.router(router).run(args);
    }
}

#[test]
fn a_clean_path_has_three_hops_over_every_protocol() {
    let lab = Lab::routed();
    for protocol in [TraceProtocol::Icmp, TraceProtocol::Udp, TraceProtocol::Tcp] {
        let obs = trace_from_agent(&lab, &settings(protocol, 5, 50));
        assert!(obs.is_success(), "{protocol:?}: {obs:?}");
        let r = report(&obs);
        assert_eq!(
            path(r),
            vec![
                Some(ip(addr::R1_AGENT_SIDE)),
                Some(ip(addr::R2_R1_SIDE)),
                Some(ip(addr::TARGET))
            ],
            "{protocol:?}: {r:?}"
        );
        assert!(
            r.hops.iter().all(|h| h.sent == 5 && h.received == 5),
            "{protocol:?}: {r:?}"
        );
        assert_eq!(locate_loss(r), LossVerdict::NoLoss, "{protocol:?}");
    }
}

#[test]
fn loss_injected_on_the_second_router_shows_from_hop_three() {
    let lab = Lab::routed();
    // UDP probes are answered by the target's port unreachables, which Linux rate-limits per
    // source (a burst of 6, then 1/s); switch that off so only the injected loss counts.
    lab.target()
        .run(["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"]);
    lab.inject_loss(Router::R2, 30);
    let rounds = 40;
    let obs = trace_from_agent(&lab, &settings(TraceProtocol::Udp, rounds, 50));
    let r = report(&obs);
    assert!(r.reached, "{r:?}");
    // Probes for hops 1 and 2 are never forwarded by r2; probes for hop 3 cross it both ways and
    // survive with probability 0.7² = 0.49. Bounds: ±4σ with n = rounds.
    assert_eq!(r.hops[0].loss_pct, 0.0, "{r:?}");
    assert_eq!(r.hops[1].loss_pct, 0.0, "{r:?}");
    let p = 0.51;
    let sigma = (p * (1.0 - p) / rounds as f64).sqrt() * 100.0;
    let loss = r.hops[2].loss_pct;
    assert!(
        (loss - 51.0).abs() <= 4.0 * sigma,
        "hop 3 loss {loss}% (expected 51 ± {:.0})",
        4.0 * sigma
    );
    let verdict = locate_loss(r);
    assert!(
        matches!(verdict, LossVerdict::LossFrom { ttl: 3, address: Some(a), .. } if a == ip(addr::TARGET)),
        "{verdict:?}"
    );
    assert!(
        verdict
            .to_string()
            .starts_with("loss starts at hop 3, 198.18.2.2"),
        "{verdict}"
    );
}

#[test]
fn delay_on_the_second_router_raises_rtt_from_hop_three_only() {
    let mut lab = Lab::routed();
    lab.inject_delay(Router::R2, Duration::from_millis(100));
    let obs = trace_from_agent(&lab, &settings(TraceProtocol::Icmp, 5, 300));
    let r = report(&obs);
    assert!(obs.is_success(), "{obs:?}");
    let avg = |i: usize| r.hops[i].rtt_avg_ms.unwrap_or_default();
    assert!(
        avg(0) < 50.0 && avg(1) < 50.0,
        "hops 1-2 not delayed: {r:?}"
    );
    assert!(
        (100.0..200.0).contains(&avg(2)),
        "hop 3 delayed by 100 ms: {r:?}"
    );
    assert!(r.hops[2].rtt_best_ms.is_some_and(|ms| ms >= 100.0), "{r:?}");
    let step = locate_latency_step(r).expect("a latency step");
    assert_eq!(
        (step.ttl, step.address),
        (3, Some(ip(addr::TARGET))),
        "{r:?}"
    );
    assert!((95.0..=110.0).contains(&step.rise_ms), "{step:?}");
}

/// r2 is slow to answer for itself only (its time-exceeded replies wait 100 ms; what it forwards
/// does not): its hop is slow, the target is not, and the verdict does not blame r2.
#[test]
fn a_router_slow_to_answer_for_itself_is_not_a_latency_step() {
    let mut lab = Lab::routed();
    // The lab's delay queue, fed from r2's own ICMP errors instead of what it forwards.
    lab.inject_delay(Router::R2, Duration::from_millis(100));
    let r2 = lab.router(Router::R2);
    r2.run(["iptables", "-w", "-F", "FORWARD"]);
    r2.run([
        "iptables",
        "-w",
        "-A",
        "OUTPUT",
        "-p",
        "icmp",
        "--icmp-type",
        "time-exceeded",
        "-j",
        "NFQUEUE",
        "--queue-num",
        "0",
    ]);
    let obs = trace_from_agent(&lab, &settings(TraceProtocol::Icmp, 5, 300));
    let r = report(&obs);
    assert!(obs.is_success(), "{obs:?}");
    assert!(
        r.hops[1].rtt_best_ms.is_some_and(|ms| ms >= 100.0),
        "r2's replies are slow: {r:?}"
    );
    assert!(
        r.hops[2].rtt_best_ms.is_some_and(|ms| ms < 50.0),
        "the target is not: {r:?}"
    );
    assert_eq!(locate_latency_step(r), None, "{r:?}");
    assert_eq!(probes::verdict_text(r), "no loss to the destination");
}

#[test]
fn a_silent_router_is_a_gap_not_a_loss() {
    let lab = Lab::routed();
    nft(
        &lab,
        Router::R1,
        &[
            "add table inet vtrace",
            "add chain inet vtrace out { type filter hook output priority 0 ; }",
            "add rule inet vtrace out icmp type time-exceeded drop",
        ],
    );
    let obs = trace_from_agent(&lab, &settings(TraceProtocol::Icmp, 5, 50));
    let r = report(&obs);
    assert!(obs.is_success(), "{obs:?}");
    assert_eq!(
        path(r),
        vec![None, Some(ip(addr::R2_R1_SIDE)), Some(ip(addr::TARGET))],
        "{r:?}"
    );
    assert_eq!(locate_loss(r), LossVerdict::NoLoss);
    assert!(probes::render_report(r, "agent").contains("  1.|-- ???"));
}

#[test]
fn a_router_rate_limiting_its_replies_is_not_called_loss() {
    let lab = Lab::routed();
    nft(
        &lab,
        Router::R1,
        &[
            "add table inet vtrace",
            "add chain inet vtrace out { type filter hook output priority 0 ; }",
            "add rule inet vtrace out icmp type time-exceeded numgen random mod 100 < 50 drop",
        ],
    );
    let obs = trace_from_agent(&lab, &settings(TraceProtocol::Icmp, 40, 50));
    let r = report(&obs);
    assert!(obs.is_success(), "{obs:?}");
    assert!(
        r.hops[0].loss_pct >= 10.0,
        "r1 drops about half its replies: {r:?}"
    );
    assert_eq!(r.hops[2].loss_pct, 0.0, "{r:?}");
    assert_eq!(
        locate_loss(r),
        LossVerdict::RateLimitedOnly { ttls: vec![1] }
    );
}

#[test]
fn a_blackholed_destination_is_unreached_after_the_last_router() {
    let lab = Lab::routed();
    lab.blackhole(Router::R2, ip(addr::TARGET));
    let obs = trace_from_agent(&lab, &settings(TraceProtocol::Icmp, 3, 100));
    assert!(!obs.is_success(), "{obs:?}");
    let r = report(&obs);
    assert!(!r.reached);
    assert_eq!(
        locate_loss(r),
        LossVerdict::Unreached {
            last_ttl: Some(2),
            last_address: Some(ip(addr::R2_R1_SIDE))
        },
        "{r:?}"
    );
    assert!(obs.duration < Duration::from_secs(3), "{:?}", obs.duration);
}
