//! ICMP echo packets in and out, as pure functions: building requests and deciding whether a
//! received datagram is one of *our* replies. Every rule for "is this ours?" lives here, so it can be
//! tested byte by byte without a socket.
//!
//! Every echo carries its send stamp and a tag: SipHash-2-4 (a keyed PRF made for short inputs)
//! under a 128-bit key random per process, over (destination, identifier, sequence, stamp). A host
//! that receives our echoes can copy their payloads, but cannot make a payload that verifies for
//! another destination or sequence: it cannot forge replies for a target it does not see echoes
//! for. A forger gets no feedback on a guess and pays a packet for each, so the 64-bit tag's 2^-64
//! per packet is far beyond reach. (HMAC-SHA256 did the same job at ten times the cost: 5% of
//! `vantage ping`'s CPU at 10,000 targets.) The rest of the 56-byte payload stays zero, like
//! ping(8)'s padding.

use std::net::IpAddr;

use aws_lc_rs::constant_time;
use pnet_packet::Packet;
use pnet_packet::icmp::{self, IcmpPacket, IcmpTypes};
use pnet_packet::icmpv6::{Icmpv6Packet, Icmpv6Types};
use pnet_packet::ipv4::Ipv4Packet;
use siphasher::sip::SipHasher24;

/// Bytes after the 8-byte ICMP header: like ping(8) and fping, 56, so a request is 64 bytes.
pub const PAYLOAD_LEN: usize = 56;
/// The payload starts with the send stamp (big-endian u64, opaque: the sender's choice; the client
/// puts the round's slot and generation there) ...
pub const STAMP_LEN: usize = 8;
/// ... followed by this many bytes of tag.
pub const TAG_LEN: usize = 8;

/// The per-process secret behind every echo's tag. Never leaves the process.
pub struct EchoKey(SipHasher24);

impl EchoKey {
    /// A fresh random key (rand's thread RNG: a CSPRNG seeded by the OS).
    pub fn random() -> Self {
        Self::from_secret(&rand::random::<[u8; 16]>())
    }

    pub fn from_secret(secret: &[u8; 16]) -> Self {
        EchoKey(SipHasher24::new_with_key(secret))
    }

    /// The tag of an echo to `destination`. Addresses are tagged in their 16-byte form (IPv4
    /// mapped), so every input has the same layout.
    fn tag(&self, destination: IpAddr, ident: u16, seq: u16, stamp: u64) -> [u8; TAG_LEN] {
        let address = match destination {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let mut message = [0u8; 16 + 2 + 2 + STAMP_LEN];
        message[..16].copy_from_slice(&address.octets());
        message[16..18].copy_from_slice(&ident.to_be_bytes());
        message[18..20].copy_from_slice(&seq.to_be_bytes());
        message[20..].copy_from_slice(&stamp.to_be_bytes());
        self.0.hash(&message).to_be_bytes()
    }
}

impl std::fmt::Debug for EchoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EchoKey(..)")
    }
}

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
    /// An echo reply carrying our identifier (raw sockets) and a tag that verifies for its source:
    /// the reply to the echo we sent to `from` with this sequence at `stamp`.
    EchoReply { from: IpAddr, seq: u16, stamp: u64 },
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
    /// Our identifier, but the payload's tag does not verify for this source and sequence: another
    /// process's echo with a colliding identifier, or a forgery (e.g. by a host that copied the
    /// payload of an echo we sent to it). The only kind the client counts as a rejected reply.
    BadTag,
}

/// An echo request to `destination`: 8-byte header + stamp + tag + zero padding. The checksum is
/// filled in for IPv4; for IPv6 (and IPv4 datagram sockets) the kernel computes it.
pub fn echo_request(
    destination: IpAddr,
    ident: u16,
    seq: u16,
    stamp: u64,
    key: &EchoKey,
) -> Vec<u8> {
    let mut buf = [0u8; 8 + PAYLOAD_LEN];
    write_echo_request(&mut buf, destination, ident, seq, stamp, key);
    buf.to_vec()
}

/// [`echo_request`] into a caller's buffer (the send loop's preallocated batch: no allocation).
pub fn write_echo_request(
    buf: &mut [u8; 8 + PAYLOAD_LEN],
    destination: IpAddr,
    ident: u16,
    seq: u16,
    stamp: u64,
    key: &EchoKey,
) {
    let family = match destination {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    };
    buf.fill(0);
    buf[0] = match family {
        Family::V4 => IcmpTypes::EchoRequest.0,
        Family::V6 => Icmpv6Types::EchoRequest.0,
    };
    buf[4..6].copy_from_slice(&ident.to_be_bytes());
    buf[6..8].copy_from_slice(&seq.to_be_bytes());
    buf[8..8 + STAMP_LEN].copy_from_slice(&stamp.to_be_bytes());
    let tag = key.tag(destination, ident, seq, stamp);
    buf[8 + STAMP_LEN..8 + STAMP_LEN + TAG_LEN].copy_from_slice(&tag);
    if family == Family::V4 {
        let checksum = IcmpPacket::new(&buf[..])
            .map(|p| icmp::checksum(&p))
            .unwrap_or(0);
        buf[2..4].copy_from_slice(&checksum.to_be_bytes());
    }
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
    key: &EchoKey,
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
            // Only the types we handle are checksummed: a raw socket also sees every echo request
            // (on loopback, each of our own), which costs nothing this way.
            let ours = [
                IcmpTypes::EchoReply,
                IcmpTypes::DestinationUnreachable,
                IcmpTypes::TimeExceeded,
            ];
            if !ours.contains(&packet.get_icmp_type()) {
                return Err(Rejected::NotForUs);
            }
            // Raw sockets get packets the kernel has not checksummed for us.
            if kind == SocketKind::Raw && icmp::checksum(&packet) != packet.get_checksum() {
                return Err(Rejected::BadChecksum);
            }
            match packet.get_icmp_type() {
                IcmpTypes::EchoReply => echo_reply(icmp_bytes, from, check_ident, ident, key),
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
                Icmpv6Types::EchoReply => echo_reply(datagram, from, check_ident, ident, key),
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
    key: &EchoKey,
) -> Result<Inbound, Rejected> {
    let their_ident = u16::from_be_bytes([icmp_bytes[4], icmp_bytes[5]]);
    if check_ident && their_ident != ident {
        return Err(Rejected::ForeignIdentifier);
    }
    // A reply shorter than the request we sent was cut somewhere: not a clean echo.
    if icmp_bytes.len() < 8 + PAYLOAD_LEN {
        return Err(Rejected::Truncated);
    }
    let seq = u16::from_be_bytes([icmp_bytes[6], icmp_bytes[7]]);
    let mut stamp = [0u8; STAMP_LEN];
    stamp.copy_from_slice(&icmp_bytes[8..8 + STAMP_LEN]);
    let stamp = u64::from_be_bytes(stamp);
    // Our own identifier, not the reply's: a datagram socket's kernel already matched it.
    let expected = key.tag(from, ident, seq, stamp);
    let carried = &icmp_bytes[8 + STAMP_LEN..8 + STAMP_LEN + TAG_LEN];
    constant_time::verify_slices_are_equal(&expected, carried).map_err(|_| Rejected::BadTag)?;
    Ok(Inbound::EchoReply { from, seq, stamp })
}

/// The first 8 bytes of the echo request a router quoted back: ours if it is an echo request with
/// our identifier. Routers need only quote 8 bytes, so there is no tag to check here.
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

    const ME: u16 = 0x1234;
    const STAMP: u64 = 123_456_789;
    const TARGET: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 2, 2));
    const OTHER_TARGET: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 2, 99));

    fn key() -> EchoKey {
        EchoKey::from_secret(&[7; 16])
    }

    /// The reply `from` sends to an echo request (its payload echoed back), as a raw IPv4 socket
    /// delivers it: IPv4 header + ICMP.
    fn raw_v4_reply_to(request: &[u8], from: IpAddr) -> Vec<u8> {
        let mut icmp = request.to_vec();
        icmp[0] = IcmpTypes::EchoReply.0;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let checksum = icmp::checksum(&IcmpPacket::new(&icmp).expect("header"));
        icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
        let IpAddr::V4(source) = from else {
            panic!("an IPv4 source, not {from}")
        };
        let mut ip = vec![0x45, 0, 0, 84, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&source.octets());
        ip.extend_from_slice(&[198, 18, 0, 2]);
        ip.extend_from_slice(&icmp);
        ip
    }

    /// `TARGET`'s reply to our echo `seq` to it.
    fn raw_v4_reply(ident: u16, seq: u16) -> Vec<u8> {
        raw_v4_reply_to(&echo_request(TARGET, ident, seq, STAMP, &key()), TARGET)
    }

    fn classify_from(datagram: &[u8], from: IpAddr) -> Result<Inbound, Rejected> {
        classify(datagram, from, Family::V4, SocketKind::Raw, ME, &key())
    }

    fn classify_v4(datagram: &[u8]) -> Result<Inbound, Rejected> {
        classify_from(datagram, TARGET)
    }

    #[test]
    fn our_reply_is_accepted_with_its_sequence_and_stamp() {
        assert_eq!(
            classify_v4(&raw_v4_reply(ME, 7)),
            Ok(Inbound::EchoReply {
                from: TARGET,
                seq: 7,
                stamp: STAMP
            })
        );
    }

    #[test]
    fn a_reply_to_another_process_is_rejected() {
        assert_eq!(
            classify_v4(&raw_v4_reply(ME + 1, 7)),
            Err(Rejected::ForeignIdentifier)
        );
        // Same identifier by coincidence, but tagged under another process's key.
        let theirs = echo_request(TARGET, ME, 7, STAMP, &EchoKey::from_secret(&[8; 16]));
        assert_eq!(
            classify_v4(&raw_v4_reply_to(&theirs, TARGET)),
            Err(Rejected::BadTag)
        );
    }

    /// Issue 11, item 8: a host that receives our echoes copies one into a reply from another
    /// target (or with another sequence or stamp); none of those verify.
    #[test]
    fn a_copied_payload_does_not_verify_for_another_target_sequence_or_stamp() {
        let seen = echo_request(TARGET, ME, 7, STAMP, &key());
        assert_eq!(
            classify_from(&raw_v4_reply_to(&seen, OTHER_TARGET), OTHER_TARGET),
            Err(Rejected::BadTag)
        );
        let with = |offset: usize, bytes: &[u8]| {
            let mut forged = seen.clone();
            forged[offset..offset + bytes.len()].copy_from_slice(bytes);
            classify_v4(&raw_v4_reply_to(&forged, TARGET))
        };
        assert_eq!(with(6, &8u16.to_be_bytes()), Err(Rejected::BadTag));
        assert_eq!(with(8, &(STAMP - 1).to_be_bytes()), Err(Rejected::BadTag));
        assert_eq!(
            with(8 + STAMP_LEN + TAG_LEN - 1, &[0x55]),
            Err(Rejected::BadTag)
        );
        // The untouched copy, from the target it was sent to, is that target's reply.
        assert!(classify_v4(&raw_v4_reply_to(&seen, TARGET)).is_ok());
    }

    #[test]
    fn echoes_differ_by_destination_sequence_and_stamp_under_one_key() {
        let key = key();
        let payload = |dest, seq, stamp| echo_request(dest, ME, seq, stamp, &key)[8..].to_vec();
        let base = payload(TARGET, 7, STAMP);
        assert_ne!(base, payload(OTHER_TARGET, 7, STAMP));
        assert_ne!(base, payload(TARGET, 8, STAMP));
        assert_ne!(base, payload(TARGET, 7, STAMP + 1));
        assert_eq!(
            base,
            payload(TARGET, 7, STAMP),
            "deterministic under one key"
        );
        assert_eq!(base.len(), PAYLOAD_LEN);
    }

    #[test]
    fn truncated_and_corrupted_packets_are_rejected() {
        let reply = raw_v4_reply(ME, 7);
        for cut in [0, 10, 20, 24, 27] {
            assert_eq!(
                classify_v4(&reply[..cut]),
                Err(Rejected::Truncated),
                "cut at {cut}"
            );
        }
        // Header intact but the payload cut short: checksum no longer matches.
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
        let mut ip = raw_v4_reply(ME, 7);
        ip[20] = IcmpTypes::EchoRequest.0;
        ip[22..24].copy_from_slice(&[0, 0]);
        let checksum = icmp::checksum(&IcmpPacket::new(&ip[20..]).expect("header"));
        ip[22..24].copy_from_slice(&checksum.to_be_bytes());
        assert_eq!(classify_v4(&ip), Err(Rejected::NotForUs));
    }

    #[test]
    fn a_datagram_socket_reply_needs_no_identifier_but_does_need_the_tag() {
        let from: IpAddr = "2001:db8::2".parse().expect("addr");
        let mut icmp = echo_request(from, ME, 3, STAMP, &key());
        icmp[0] = Icmpv6Types::EchoReply.0;
        // The kernel matched the identifier already; what the field holds does not matter.
        icmp[4..6].copy_from_slice(&999u16.to_be_bytes());
        assert_eq!(
            classify(&icmp, from, Family::V6, SocketKind::Datagram, ME, &key()),
            Ok(Inbound::EchoReply {
                from,
                seq: 3,
                stamp: STAMP
            })
        );
        let other_key = EchoKey::from_secret(&[9; 16]);
        assert_eq!(
            classify(
                &icmp,
                from,
                Family::V6,
                SocketKind::Datagram,
                ME,
                &other_key
            ),
            Err(Rejected::BadTag)
        );
    }

    #[test]
    fn a_routers_unreachable_names_the_target_and_sequence() {
        // ICMP type 3 code 1 (host unreachable) quoting our request's IPv4 header + 8 bytes.
        let request = echo_request(TARGET, ME, 9, STAMP, &key());
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
            classify(&ip, router, Family::V4, SocketKind::Raw, ME, &key()),
            Ok(Inbound::Unreachable {
                target: TARGET,
                seq: 9,
                reporter: router,
                code: 1
            })
        );
    }
}
