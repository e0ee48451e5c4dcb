//! The multi-site lab itself: every site reaches the targets, the other sites and the store (through
//! the management network); each fault hits exactly the sites it should.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use lab::fleet::{FleetLab, SHARED_TRANSIT, Site};

/// How many of `count` echoes from `site` to `target` were answered (fping, 20 ms apart).
fn answered(lab: &FleetLab, site: Site, target: &str, count: u32) -> usize {
    let out = lab.agent(site).exec([
        "fping",
        "-C",
        &count.to_string(),
        "-q",
        "-p",
        "20",
        "-t",
        "300",
        target,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with(target))
        .unwrap_or_else(|| panic!("no fping line for {target}: {stderr}"));
    line.split(" : ")
        .nth(1)
        .expect("fping -C line")
        .split_whitespace()
        .filter(|v| *v != "-")
        .count()
}

/// The hop addresses of a traceroute-like walk: fping with TTL 1, 2, 3; who answered each.
fn hops(lab: &FleetLab, site: Site, target: &str) -> Vec<String> {
    (1..=3)
        .map(|ttl| {
            let out = lab.agent(site).exec([
                "fping",
                "-H",
                &ttl.to_string(),
                "-c",
                "1",
                "-t",
                "500",
                target,
            ]);
            // "ICMP Time Exceeded from 198.18.10.1 for ICMP Echo sent to …", or a reply line.
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            match text.split(" from ").nth(1) {
                Some(rest) => rest.split(' ').next().unwrap_or("").to_string(),
                None if text.contains("bytes,") => target.to_string(),
                None => format!("? {text}"),
            }
        })
        .collect()
}

/// The mean RTT in ms of 3 echoes from `site` to `target`.
fn mean_rtt(lab: &FleetLab, site: Site, target: &str) -> f64 {
    let out = lab
        .agent(site)
        .exec(["fping", "-c", "3", "-p", "300", "-t", "1000", "-q", target]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    // "198.19.0.1 : xmt/rcv/%loss = 3/3/0%, min/avg/max = 100.1/100.2/100.3"
    text.split("min/avg/max = ")
        .nth(1)
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RTT in {text}"))
}

#[test]
fn every_site_reaches_the_targets_the_mesh_and_the_store() {
    let mut lab = FleetLab::build();
    for site in Site::ALL {
        assert_eq!(
            answered(&lab, site, "198.19.0.1", 3),
            3,
            "{site:?} → target"
        );
        for peer in Site::ALL.into_iter().filter(|p| *p != site) {
            let peer_addr = peer.agent_addr().to_string();
            assert_eq!(
                answered(&lab, site, &peer_addr, 3),
                3,
                "{site:?} → {peer:?}"
            );
        }
    }
    // The traces: scl3 and sjc1 share transit-a's hop, iad1 does not.
    let scl3 = hops(&lab, Site::Scl3, "198.19.0.1");
    let sjc1 = hops(&lab, Site::Sjc1, "198.19.0.1");
    let iad1 = hops(&lab, Site::Iad1, "198.19.0.1");
    assert_eq!(
        scl3[..3],
        ["198.18.10.1", &SHARED_TRANSIT.to_string(), "198.19.0.1"]
    );
    assert_eq!(
        sjc1[..3],
        ["198.18.11.1", &SHARED_TRANSIT.to_string(), "198.19.0.1"]
    );
    assert_eq!(iad1[..3], ["198.18.12.1", "198.18.22.1", "198.19.0.1"]);

    // The store on the host's loopback, reached from every agent through the management network.
    let store = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = store.local_addr().expect("addr").port();
    let url = lab.expose_store(port);
    assert_eq!(url, format!("http://198.18.200.1:{port}"));
    let server = std::thread::spawn(move || {
        for _ in Site::ALL {
            let (mut conn, _) = store.accept().expect("accept");
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).expect("read");
            conn.write_all(&buf).expect("echo");
        }
    });
    for site in Site::ALL {
        let reply = lab.agent(site).inside(|| {
            let mut conn = std::net::TcpStream::connect(("198.18.200.1", port)).expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            conn.write_all(site.name().as_bytes()).expect("write");
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).expect("read the echo");
            buf
        });
        assert_eq!(&reply, site.name().as_bytes());
    }
    server.join().expect("store thread");
}

#[test]
fn each_fault_hits_the_sites_it_should() {
    let lab = FleetLab::build();
    // A cut uplink: scl3 reaches nothing, the others everything — and scl3 still reaches the
    // management network.
    lab.cut_uplink(Site::Scl3, true);
    assert_eq!(answered(&lab, Site::Scl3, "198.19.0.1", 3), 0);
    assert_eq!(answered(&lab, Site::Sjc1, "198.19.0.1", 3), 3);
    assert_eq!(answered(&lab, Site::Iad1, "198.19.0.1", 3), 3);
    assert_eq!(answered(&lab, Site::Scl3, "198.18.200.1", 3), 3);
    lab.cut_uplink(Site::Scl3, false);
    assert_eq!(answered(&lab, Site::Scl3, "198.19.0.1", 3), 3);

    // The shared transit segment: scl3 and sjc1 lose, iad1 does not.
    lab.shared_transit_loss(100);
    assert_eq!(answered(&lab, Site::Scl3, "198.19.0.1", 3), 0);
    assert_eq!(answered(&lab, Site::Sjc1, "198.19.0.1", 3), 0);
    assert_eq!(answered(&lab, Site::Iad1, "198.19.0.1", 3), 3);
    lab.shared_transit_loss(0);

    // One target down: that address only, from every site.
    lab.target_down(std::net::Ipv4Addr::new(198, 19, 0, 7), true);
    for site in Site::ALL {
        assert_eq!(answered(&lab, site, "198.19.0.7", 3), 0, "{site:?}");
        assert_eq!(answered(&lab, site, "198.19.0.8", 3), 3, "{site:?}");
    }
    lab.target_down(std::net::Ipv4Addr::new(198, 19, 0, 7), false);
    assert_eq!(answered(&lab, Site::Iad1, "198.19.0.7", 3), 3);
}

#[test]
fn shared_transit_delay_adds_to_scl3_and_sjc1_only() {
    let mut lab = FleetLab::build();
    lab.shared_transit_delay(Duration::from_millis(100));
    let rtt = |lab: &FleetLab, site: Site| mean_rtt(lab, site, "198.19.0.1");
    assert!(rtt(&lab, Site::Scl3) >= 100.0);
    assert!(rtt(&lab, Site::Sjc1) >= 100.0);
    assert!(rtt(&lab, Site::Iad1) < 50.0);
    lab.shared_transit_delay(Duration::ZERO);
    assert!(rtt(&lab, Site::Scl3) < 50.0);
}
