//! The lab itself, checked with fping from the agent namespace: reachability, cleanup, and that the
//! injected loss and delay are what they claim to be.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use lab::{Lab, Router, addr};

/// Per-echo RTTs in ms (None = lost) from `fping -C count -q -p period_ms target` in the agent ns.
fn fping(lab: &Lab, target: &str, count: u32, period_ms: u32) -> Vec<Option<f64>> {
    let out = lab.agent().exec([
        "fping",
        "-C",
        &count.to_string(),
        "-q",
        "-p",
        &period_ms.to_string(),
        "-t",
        "1000",
        target,
    ]);
    // `-C` prints "<target> : 0.05 0.04 - 0.06" on stderr; exit 1 means some loss.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with(target))
        .unwrap_or_else(|| panic!("no fping line for {target}: {stderr}"));
    line.split(" : ")
        .nth(1)
        .expect("fping -C line has a ' : '")
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect()
}

fn median(rtts: &[Option<f64>]) -> f64 {
    let mut got: Vec<f64> = rtts.iter().flatten().copied().collect();
    assert!(!got.is_empty(), "no echo answered");
    got.sort_by(f64::total_cmp);
    got[got.len() / 2]
}

#[test]
fn every_lab_address_answers_over_both_families() {
    let lab = Lab::routed();
    let range = lab::target_addresses(300);
    for target in [
        addr::TARGET.to_string(),
        range[0].to_string(),
        range[299].to_string(),
        addr::TARGET_V6.to_string(),
        "fd00:19::1234".to_string(),
    ] {
        let rtts = fping(&lab, &target, 3, 20);
        assert!(rtts.iter().all(Option::is_some), "{target}: {rtts:?}");
    }
}

#[test]
fn dropping_the_lab_removes_its_namespaces() {
    let names: Vec<String> = {
        let lab = Lab::routed();
        [
            lab.agent(),
            lab.router(Router::R1),
            lab.router(Router::R2),
            lab.target(),
        ]
        .iter()
        .map(|ns| ns.name().to_owned())
        .collect()
    };
    for name in names {
        assert!(
            !Path::new("/run/netns").join(&name).exists(),
            "{name} still exists"
        );
    }
}

#[test]
fn a_panicking_test_still_removes_its_lab() {
    let mut names = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lab = Lab::routed();
        lab.inject_delay(Router::R2, Duration::from_millis(5));
        names.extend([lab.agent(), lab.router(Router::R2)].map(|ns| ns.name().to_owned()));
        panic!("a test failing with its lab up");
    }));
    assert!(outcome.is_err());
    assert_eq!(names.len(), 2);
    for name in names {
        assert!(
            !Path::new("/run/netns").join(&name).exists(),
            "{name} still exists"
        );
    }
}

#[test]
fn loss_drops_both_directions() {
    let lab = Lab::routed();
    lab.inject_loss(Router::R2, 50);
    let n = 400;
    let rtts = fping(&lab, &addr::TARGET.to_string(), n, 2);
    let loss = rtts.iter().filter(|r| r.is_none()).count() as f64 / f64::from(n);
    // 50% each way: an echo survives with 0.5² = 25%, so 75% loss; 4σ = 4·sqrt(.75·.25/400) ≈ 8.7%.
    assert!((loss - 0.75).abs() < 0.087, "loss {loss}");
    lab.clear_loss(Router::R2);
    assert!(
        fping(&lab, &addr::TARGET.to_string(), 20, 2)
            .iter()
            .all(Option::is_some)
    );
}

#[test]
fn link_loss_hits_the_router_itself_both_ways() {
    let lab = Lab::routed();
    lab.inject_link_loss(Router::R2, 50);
    let n = 400;
    let loss = |target: std::net::Ipv4Addr| {
        let rtts = fping(&lab, &target.to_string(), n, 2);
        rtts.iter().filter(|r| r.is_none()).count() as f64 / f64::from(n)
    };
    // r2's own replies cross the lossy r1–r2 link twice, as the target's do: 75% ± 4σ (8.7%).
    for target in [addr::R2_R1_SIDE, addr::TARGET] {
        let lost = loss(target);
        assert!((lost - 0.75).abs() < 0.087, "{target}: loss {lost}");
    }
    assert_eq!(loss(addr::R1_AGENT_SIDE), 0.0, "the agent–r1 link is clean");
    lab.inject_link_loss(Router::R2, 0);
    assert_eq!(loss(addr::TARGET), 0.0, "cleared");
}

#[test]
fn blackhole_and_unreachable_route() {
    let lab = Lab::routed();
    let hole: IpAddr = lab::target_addresses(7)[6].into();
    lab.blackhole(Router::R2, hole);
    assert!(
        fping(&lab, &hole.to_string(), 3, 20)
            .iter()
            .all(Option::is_none)
    );
    lab.add_unreachable_route(Router::R2, "198.18.9.0/24");
    let out = lab
        .agent()
        .exec(["fping", "-c", "1", "-t", "500", "198.18.9.9"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Host Unreachable"), "{stderr}");
}

#[test]
fn delay_raises_the_rtt_by_the_delay_and_clears() {
    let mut lab = Lab::routed();
    let target = addr::TARGET.to_string();
    let base = median(&fping(&lab, &target, 50, 10));
    lab.inject_delay(Router::R1, Duration::from_millis(30));
    // 10 ms spacing with a 30 ms delay: three echoes are held at once, each for its own 30 ms.
    let delayed = fping(&lab, &target, 50, 10);
    assert!(delayed.iter().all(Option::is_some), "{delayed:?}");
    let rise = median(&delayed) - base;
    assert!((rise - 30.0).abs() < 3.0, "rise {rise} ms (base {base} ms)");
    assert!(lab.delayed_packets(Router::R1) >= 50);
    lab.inject_delay(Router::R1, Duration::from_millis(10));
    let rise = median(&fping(&lab, &target, 20, 10)) - base;
    assert!(
        (rise - 10.0).abs() < 3.0,
        "rise after changing the delay {rise} ms"
    );
    lab.clear_delay(Router::R1);
    let rise = median(&fping(&lab, &target, 20, 10)) - base;
    assert!(rise.abs() < 3.0, "rise after clearing {rise} ms");
}

#[test]
fn delay_over_ipv6_too() {
    let mut lab = Lab::routed();
    let target = addr::TARGET_V6.to_string();
    let base = median(&fping(&lab, &target, 20, 10));
    lab.inject_delay(Router::R2, Duration::from_millis(20));
    let rise = median(&fping(&lab, &target, 20, 10)) - base;
    assert!((rise - 20.0).abs() < 3.0, "rise {rise} ms");
}
