//! Issue 11, item 8: a probed host forges echo replies for another target. The routed lab (`lab`
//! crate) runs the client in the agent's namespace; a forger in the target's namespace sees every
//! echo sent to the live target, and answers, with each one's identifier and payload, for a dead
//! address on every sequence number, with the dead address as source. Needs root; fails (never
//! skips) without it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lab::{Lab, addr};
use probes::{CancellationToken, IcmpClient, Measurement, Observation, RoundPlan};
use socket2::{Domain, Protocol, Socket, Type};

const ECHOES: u32 = 20;

/// The forger's sockets, opened in the target's namespace: one that sees incoming ICMP, one that
/// sends IPv4 packets with a header of its own making (any source address).
fn forger_sockets(lab: &Lab) -> (UdpSocket, Socket) {
    lab.target().inside(|| {
        let listen = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).expect("raw");
        listen
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        // IPPROTO_RAW: the header is ours (IP_HDRINCL); the kernel fills in its checksum.
        let send = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))).expect("raw");
        // std's datagram API reads a raw socket as well, into an initialised buffer.
        (UdpSocket::from(listen), send)
    })
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo reply "from" `source` to the agent, with `ident`, `seq` and `payload`.
fn forged_reply(source: Ipv4Addr, ident: [u8; 2], seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![0u8, 0, 0, 0, ident[0], ident[1]];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let total = u16::try_from(20 + icmp.len()).expect("small packet");
    let mut packet = vec![0x45, 0];
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&addr::AGENT.octets());
    packet.extend_from_slice(&icmp);
    packet
}

/// Watch echoes to the live target; once all `ECHOES` of its round were seen (so every echo to the
/// dead one has gone out too), answer for `dead` on every sequence number with the last echo's
/// identifier and payload, paced so the routers' queues keep up. Returns how many were sent.
fn forge(listen: UdpSocket, send: Socket, dead: Ipv4Addr, stop: Arc<AtomicBool>) -> u64 {
    let mut buf = [0u8; 2048];
    let mut seen = 0;
    let mut sent = 0;
    let to = SocketAddr::new(IpAddr::V4(addr::AGENT), 0).into();
    while !stop.load(Ordering::Relaxed) {
        let Ok(len) = listen.recv(&mut buf) else {
            continue; // read timeout: look at the stop flag
        };
        let packet = &buf[..len];
        let header = usize::from(packet[0] & 0x0f) * 4;
        let echo_to_live = packet.len() >= header + 8
            && packet[16..20] == addr::TARGET.octets()
            && packet[header] == 8;
        if !echo_to_live {
            continue;
        }
        seen += 1;
        if seen < ECHOES {
            continue;
        }
        let ident = [packet[header + 4], packet[header + 5]];
        let payload = packet[header + 8..].to_vec();
        for seq in 0..=u16::MAX {
            let reply = forged_reply(dead, ident, seq, &payload);
            if send.send_to(&reply, &to).is_ok() {
                sent += 1;
            }
            if seq % 128 == 127 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        break;
    }
    sent
}

fn stats(observation: &Observation) -> (u32, u32) {
    let Measurement::Ping(stats) = &observation.measurement else {
        panic!("not a ping: {observation:?}")
    };
    (stats.sent, stats.received)
}

#[test]
fn replies_forged_from_copied_echoes_for_another_target_are_rejected_and_counted() {
    let lab = Lab::routed();
    // On the r2–target link, owned by nobody: echoes to it are never answered.
    let dead = addr::NOBODY;
    let (listen, send) = forger_sockets(&lab);
    let stop = Arc::new(AtomicBool::new(false));
    let forger = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || forge(listen, send, dead, stop))
    };

    let plan = RoundPlan {
        count: ECHOES,
        spacing: Duration::from_millis(20),
        timeout: Duration::from_secs(4),
    };
    let (live, forged, rejected) = lab.agent().inside(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let client = IcmpClient::new().expect("ICMP socket (run as root)");
            let never = CancellationToken::new();
            let (live, forged) = tokio::join!(
                client.round(IpAddr::V4(addr::TARGET), plan, &never),
                client.round(IpAddr::V4(dead), plan, &never),
            );
            (live, forged, client.rejected_replies())
        })
    });
    stop.store(true, Ordering::Relaxed);
    let forged_sent = forger.join().expect("forger thread");

    assert!(
        forged_sent > 60_000,
        "the forger must have answered on (nearly) every sequence number, sent {forged_sent}"
    );
    assert_eq!(stats(&live), (ECHOES, ECHOES), "the live target: {live:?}");
    assert_eq!(
        stats(&forged),
        (ECHOES, 0),
        "no forged reply may count for the dead target: {forged:?}"
    );
    assert!(!forged.is_success(), "{forged:?}");
    // Each forged reply that reaches the client is rejected and counted. Not all of them do on a
    // loaded machine (queues overflow, or they arrive after the rounds ended): a third, typically.
    assert!(
        rejected >= 1_000,
        "rejected {rejected} of {forged_sent} forged replies"
    );
}
