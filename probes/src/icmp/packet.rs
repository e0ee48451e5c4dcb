//! ICMP echo packets in and out, as pure functions: building requests and deciding whether a
//! received datagram is one of *our* replies. Every rule for "is this ours?" lives here, so it can be
//! tested byte by byte without a socket.

use std::net::IpAddr;

use pnet_packet::Packet;
use pnet_packet::icmp::{self, IcmpPacket, IcmpTypes};
use pnet_packet::icmpv6::{Icmpv6Packet, Icmpv6Types};
use pnet_packet::ipv4::Ipv4Packet;

/// Bytes after the 8-byte ICMP header: like ping(8) and fping, 56, so a request is 64 bytes.
pub const PAYLOAD_LEN: usize = 56;
/// The payload starts with this many bytes of per-socket random nonce; a reply that does not echo
/// it back was not sent by this socket, even if identifier and sequence happen to collide.
pub const NONCE_LEN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// How the kernel hands us packets: raw sockets (CAP_NET_RAW) see every ICMP packet with the IPv4
/// header in front; datagram "ping" sockets see only replies to their own identifier, without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Raw,
    Datagram,
}

/// What a received datagram means for a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// An echo reply carrying our identifier (raw sockets) and our nonce.
    EchoReply { from: IpAddr, seq: u16 },
    /// A router's destination-unreachable (or time-exceeded) about one of our echoes to `target`.
    Unreachable {
        target: IpAddr,
        seq: u16,
        reporter: IpAddr,
        code: u8,
    },
}

/// Why a received datagram is not counted. Logged at trace level, never counted as a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Truncated,
    BadChecksum,
    /// Some other ICMP message (echo requests, neighbour discovery, router adverts, ...).
    NotForUs,
    /// An echo reply for another process's identifier.
    ForeignIdentifier,
    /// Identifier and sequence may match, but the payload is not the one we sent.
    ForeignPayload,
}

/// An echo request: 8-byte header + nonce + zero padding. The checksum is filled in for IPv4; for
/// IPv6 (and IPv4 datagram sockets) the kernel computes it.
pub fn echo_request(family: Family, ident: u16, seq: u16, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + PAYLOAD_LEN];
    buf[0] = match family {
        Family::V4 => IcmpTypes::EchoRequest.0,
        Family::V6 => Icmpv6Types::EchoRequest.0,
    };
    buf[4..6].copy_from_slice(&ident.to_be_bytes());
    buf[6..8].copy_from_slice(&seq.to_be_bytes());
    buf[8..8 + NONCE_LEN].copy_from_slice(nonce);
    if family == Family::V4 {
        let checksum = IcmpPacket::new(&buf)
            .map(|p| icmp::checksum(&p))
            .unwrap_or(0);
        buf[2..4].copy_from_slice(&checksum.to_be_bytes());
    }
    buf
}

/// Decide whether `datagram`, received from `from` on a socket of `kind`, is ours.
///
/// `ident` is our echo identifier; it is only checked on raw sockets (for datagram sockets the kernel
/// rewrites it and already delivers only our replies).
pub fn classify(
    datagram: &[u8],
    from: IpAddr,
    family: Family,
    kind: SocketKind,
    ident: u16,
    nonce: &[u8; NONCE_LEN],
) -> Result<Inbound, Rejected> {
    let check_ident = kind == SocketKind::Raw;
    match family {
        Family::V4 => {
            let icmp_bytes = if kind == SocketKind::Raw {
                let ip = Ipv4Packet::new(datagram).ok_or(Rejected::Truncated)?;
                let header_len = usize::from(ip.get_header_length()) * 4;
                if header_len < 20 || datagram.len() < header_len {
                    return Err(Rejected::Truncated);
                }
                &datagram[header_len..]
            } else {
                datagram
            };
            let packet = IcmpPacket::new(icmp_bytes).ok_or(Rejected::Truncated)?;
            if icmp_bytes.len() < 8 {
                return Err(Rejected::Truncated);
            }
            // Raw sockets get packets the kernel has not checksummed for us.
            if kind == SocketKind::Raw && icmp::checksum(&packet) != packet.get_checksum() {
                return Err(Rejected::BadChecksum);
            }
            match packet.get_icmp_type() {
                IcmpTypes::EchoReply => echo_reply(icmp_bytes, from, check_ident, ident, nonce),
                IcmpTypes::DestinationUnreachable | IcmpTypes::TimeExceeded => {
                    let quoted = packet.payload().get(4..).ok_or(Rejected::Truncated)?;
                    let ip = Ipv4Packet::new(quoted).ok_or(Rejected::Truncated)?;
                    let header_len = usize::from(ip.get_header_length()) * 4;
                    let echo = quoted
                        .get(header_len..header_len + 8)
                        .ok_or(Rejected::Truncated)?;
                    quoted_echo(echo, IcmpTypes::EchoRequest.0, check_ident, ident).map(|seq| {
                        Inbound::Unreachable {
                            target: IpAddr::V4(ip.get_destination()),
                            seq,
                            reporter: from,
                            code: packet.get_icmp_code().0,
                        }
                    })
                }
                _ => Err(Rejected::NotForUs),
            }
        }
        Family::V6 => {
            let packet = Icmpv6Packet::new(datagram).ok_or(Rejected::Truncated)?;
            if datagram.len() < 8 {
                return Err(Rejected::Truncated);
            }
            match packet.get_icmpv6_type() {
                Icmpv6Types::EchoReply => echo_reply(datagram, from, check_ident, ident, nonce),
                Icmpv6Types::DestinationUnreachable | Icmpv6Types::TimeExceeded => {
                    // 8-byte error header, the quoted 40-byte IPv6 header, then our echo header.
                    let quoted_ip = datagram.get(8..48).ok_or(Rejected::Truncated)?;
                    let echo = datagram.get(48..56).ok_or(Rejected::Truncated)?;
                    let mut dst = [0u8; 16];
                    dst.copy_from_slice(&quoted_ip[24..40]);
                    quoted_echo(echo, Icmpv6Types::EchoRequest.0, check_ident, ident).map(|seq| {
                        Inbound::Unreachable {
                            target: IpAddr::from(dst),
                            seq,
                            reporter: from,
                            code: packet.get_icmpv6_code().0,
                        }
                    })
                }
                _ => Err(Rejected::NotForUs),
            }
        }
    }
}

fn echo_reply(
    icmp_bytes: &[u8],
    from: IpAddr,
    check_ident: bool,
    ident: u16,
    nonce: &[u8; NONCE_LEN],
) -> Result<Inbound, Rejected> {
    let their_ident = u16::from_be_bytes([icmp_bytes[4], icmp_bytes[5]]);
    if check_ident && their_ident != ident {
        return Err(Rejected::ForeignIdentifier);
    }
    // A reply shorter than the request we sent was cut somewhere: not a clean echo.
    if icmp_bytes.len() < 8 + PAYLOAD_LEN {
        return Err(Rejected::Truncated);
    }
    if &icmp_bytes[8..8 + NONCE_LEN] != nonce {
        return Err(Rejected::ForeignPayload);
    }
    let seq = u16::from_be_bytes([icmp_bytes[6], icmp_bytes[7]]);
    Ok(Inbound::EchoReply { from, seq })
}

/// The first 8 bytes of the echo request a router quoted back: ours if it is an echo request with
/// our identifier. Routers need only quote 8 bytes, so there is no nonce to check here.
fn quoted_echo(
    echo: &[u8],
    request_type: u8,
    check_ident: bool,
    ident: u16,
) -> Result<u16, Rejected> {
    if echo[0] != request_type {
        return Err(Rejected::NotForUs);
    }
    if check_ident && u16::from_be_bytes([echo[4], echo[5]]) != ident {
        return Err(Rejected::ForeignIdentifier);
    }
    Ok(u16::from_be_bytes([echo[6], echo[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; NONCE_LEN] = *b"vantage!";
    const ME: u16 = 0x1234;
    const TARGET: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 2, 2));

    /// An echo reply as a raw IPv4 socket delivers it: IPv4 header + ICMP.
    fn raw_v4_reply(ident: u16, seq: u16, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
        let mut icmp = echo_request(Family::V4, ident, seq, nonce);
        icmp[0] = IcmpTypes::EchoReply.0;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let checksum = icmp::checksum(&IcmpPacket::new(&icmp).expect("header"));
        icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
        let mut ip = vec![
            0x45, 0, 0, 84, 0, 0, 0, 0, 64, 1, 0, 0, 198, 18, 2, 2, 198, 18, 0, 2,
        ];
        ip.extend_from_slice(&icmp);
        ip
    }

    fn classify_v4(datagram: &[u8]) -> Result<Inbound, Rejected> {
        classify(datagram, TARGET, Family::V4, SocketKind::Raw, ME, &NONCE)
    }

    #[test]
    fn our_reply_is_accepted_with_its_sequence() {
        assert_eq!(
            classify_v4(&raw_v4_reply(ME, 7, &NONCE)),
            Ok(Inbound::EchoReply {
                from: TARGET,
                seq: 7
            })
        );
    }

    #[test]
    fn a_reply_to_another_process_is_rejected() {
        assert_eq!(
            classify_v4(&raw_v4_reply(ME + 1, 7, &NONCE)),
            Err(Rejected::ForeignIdentifier)
        );
        // Same identifier by coincidence, but not our payload.
        assert_eq!(
            classify_v4(&raw_v4_reply(ME, 7, b"someone!")),
            Err(Rejected::ForeignPayload)
        );
    }

    #[test]
    fn truncated_and_corrupted_packets_are_rejected() {
        let reply = raw_v4_reply(ME, 7, &NONCE);
        for cut in [0, 10, 20, 24, 27] {
            assert_eq!(
                classify_v4(&reply[..cut]),
                Err(Rejected::Truncated),
                "cut at {cut}"
            );
        }
        // Header intact but the nonce cut short: checksum no longer matches.
        for cut in [30, 32, 40] {
            assert!(classify_v4(&reply[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = reply.clone();
        flipped[40] ^= 0xff;
        assert_eq!(classify_v4(&flipped), Err(Rejected::BadChecksum));
        // An IPv4 header claiming more length than the datagram has.
        let mut bad_ihl = reply;
        bad_ihl[0] = 0x4f;
        assert!(classify_v4(&bad_ihl[..50]).is_err());
    }

    #[test]
    fn our_own_echo_request_seen_on_a_raw_socket_is_not_a_reply() {
        let mut ip = raw_v4_reply(ME, 7, &NONCE);
        ip[20] = IcmpTypes::EchoRequest.0;
        ip[22..24].copy_from_slice(&[0, 0]);
        let checksum = icmp::checksum(&IcmpPacket::new(&ip[20..]).expect("header"));
        ip[22..24].copy_from_slice(&checksum.to_be_bytes());
        assert_eq!(classify_v4(&ip), Err(Rejected::NotForUs));
    }

    #[test]
    fn a_datagram_socket_reply_needs_no_identifier_but_does_need_the_nonce() {
        let mut icmp = echo_request(Family::V6, 999, 3, &NONCE);
        icmp[0] = Icmpv6Types::EchoReply.0;
        let from: IpAddr = "2001:db8::2".parse().expect("addr");
        assert_eq!(
            classify(&icmp, from, Family::V6, SocketKind::Datagram, ME, &NONCE),
            Ok(Inbound::EchoReply { from, seq: 3 })
        );
        assert_eq!(
            classify(
                &icmp,
                from,
                Family::V6,
                SocketKind::Datagram,
                ME,
                b"12345678"
            ),
            Err(Rejected::ForeignPayload)
        );
    }

    #[test]
    fn a_routers_unreachable_names_the_target_and_sequence() {
        // ICMP type 3 code 1 (host unreachable) quoting our request's IPv4 header + 8 bytes.
        let request = echo_request(Family::V4, ME, 9, &NONCE);
        let quoted_ip = [
            0x45, 0, 0, 84, 0, 0, 0, 0, 63, 1, 0, 0, 198, 18, 0, 2, 198, 18, 2, 2,
        ];
        let mut icmp = vec![3, 1, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted_ip);
        icmp.extend_from_slice(&request[..8]);
        let checksum = icmp::checksum(&IcmpPacket::new(&icmp).expect("header"));
        icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
        let mut ip = vec![
            0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0, 198, 18, 1, 1, 198, 18, 0, 2,
        ];
        ip.extend_from_slice(&icmp);
        let router: IpAddr = "198.18.1.1".parse().expect("addr");
        assert_eq!(
            classify(&ip, router, Family::V4, SocketKind::Raw, ME, &NONCE),
            Ok(Inbound::Unreachable {
                target: TARGET,
                seq: 9,
                reporter: router,
                code: 1
            })
        );
    }
}
