//! What the checks share: resolving a host with an address-family preference, whether raw
//! sockets are allowed, and classifying socket errors into [`FailureKind`]s.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::observation::FailureKind;

/// Which address family to connect over when a name has addresses of both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpPreference {
    /// In the order the system resolver returns them (RFC 6724 on Linux).
    #[default]
    Any,
    /// IPv4 first, IPv6 only if the name has no IPv4 address.
    PreferV4,
    /// IPv6 first, IPv4 only if the name has no IPv6 address.
    PreferV6,
    /// IPv4 addresses only; a name without one fails to resolve.
    V4Only,
    /// IPv6 addresses only; a name without one fails to resolve.
    V6Only,
}

impl IpPreference {
    /// Filter and order `addrs` by this preference. Pure; the order within a family is kept.
    pub fn apply(self, addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
        if self == IpPreference::Any {
            return addrs;
        }
        let (v4, v6): (Vec<_>, Vec<_>) = addrs.into_iter().partition(SocketAddr::is_ipv4);
        match self {
            IpPreference::Any | IpPreference::PreferV4 => v4.into_iter().chain(v6).collect(),
            IpPreference::PreferV6 => v6.into_iter().chain(v4).collect(),
            IpPreference::V4Only => v4,
            IpPreference::V6Only => v6,
        }
    }

    /// Whether `ip` may be used at all under this preference.
    pub fn allows(self, ip: IpAddr) -> bool {
        match self {
            IpPreference::V4Only => ip.is_ipv4(),
            IpPreference::V6Only => ip.is_ipv6(),
            _ => true,
        }
    }
}

/// Resolve `host` (a name or an IP literal, IPv6 with or without brackets) with the system resolver,
/// ordered by `preference`. Returns the addresses and how long the lookup took (zero for literals).
pub async fn resolve(
    host: &str,
    port: u16,
    preference: IpPreference,
) -> (Result<Vec<SocketAddr>, String>, Duration) {
    if let Some(ip) = literal_ip(host) {
        let result = if preference.allows(ip) {
            Ok(vec![SocketAddr::new(ip, port)])
        } else {
            Err(format!(
                "{ip} is not allowed by the address family preference {preference:?}"
            ))
        };
        return (result, Duration::ZERO);
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let started = Instant::now();
    let looked_up = tokio::net::lookup_host((bare, port)).await;
    let took = started.elapsed();
    let result = match looked_up {
        Ok(addrs) => {
            let all: Vec<SocketAddr> = addrs.collect();
            let count = all.len();
            let kept = preference.apply(all);
            if kept.is_empty() {
                Err(format!(
                    "{bare} has no address usable with {preference:?} ({count} resolved)"
                ))
            } else {
                Ok(kept)
            }
        }
        Err(error) => Err(format!("resolving {bare}: {error}")),
    };
    (result, took)
}

/// `host` as an address, when it is one (`[…]` around an IPv6 address allowed): nothing to resolve.
pub fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The first address of `host` by `preference` (see [`resolve`]), for checks that measure one
/// address (ICMP rounds, DNS queries).
pub async fn resolve_one(host: &str, preference: IpPreference) -> Result<IpAddr, String> {
    let (resolved, _) = resolve(host, 0, preference).await;
    resolved?
        .first()
        .map(SocketAddr::ip)
        .ok_or_else(|| format!("{host} has no address"))
}

/// Whether this process may open raw sockets (`CAP_NET_RAW` in its effective set). Traces need
/// it (every protocol: trippy cannot trace over ping sockets); without it each trace is a failure
/// saying so.
pub fn has_cap_net_raw() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| effective_caps(&status).is_some_and(|caps| caps & CAP_NET_RAW != 0))
}

/// Bit 13 of the capability sets (linux/capability.h).
const CAP_NET_RAW: u64 = 1 << 13;

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// An error and its causes on one line, e.g. "error sending request for url (…): connection
/// refused"; a cause whose text is already there is left out.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The failure class of a socket error from connecting (or of an I/O error later on the connection).
pub fn classify_io_error(error: &io::Error) -> FailureKind {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => FailureKind::Refused,
        io::ErrorKind::TimedOut => FailureKind::Timeout,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            FailureKind::Unreachable
        }
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof => FailureKind::Protocol,
        _ => match error.raw_os_error() {
            // ENETUNREACH, EHOSTUNREACH, EHOSTDOWN (older std maps some of these to `Other`)
            Some(101 | 113 | 112) => FailureKind::Unreachable,
            Some(111) => FailureKind::Refused,
            Some(110) => FailureKind::Timeout,
            _ => FailureKind::Send,
        },
    }
}

/// Milliseconds as the schema stores them.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capability_check_agrees_with_opening_a_raw_socket() {
        // Independent of /proc: the kernel itself says whether this process may open one.
        let raw = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV4),
        );
        assert_eq!(has_cap_net_raw(), raw.is_ok(), "raw socket: {raw:?}");
    }

    #[test]
    fn an_error_chain_is_one_line_without_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("sending the request")]
        struct Quiet(#[source] io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("sending the request: {0}")]
        struct Repeats(#[source] io::Error);
        let refused = || io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
        let expected = "sending the request: connection refused";
        assert_eq!(error_chain(&Quiet(refused())), expected);
        assert_eq!(error_chain(&Repeats(refused())), expected);
    }

    #[test]
    fn the_effective_set_is_read_from_capeff() {
        let status =
            |eff: &str| format!("Name:\tvantage\nCapInh:\t0000000000002000\nCapEff:\t{eff}\n");
        let root = effective_caps(&status("000001ffffffffff")).expect("mask");
        assert_ne!(root & CAP_NET_RAW, 0);
        let setcap = effective_caps(&status("0000000000002000")).expect("mask");
        assert_eq!(setcap, CAP_NET_RAW);
        let none = effective_caps(&status("0000000000000000")).expect("mask");
        assert_eq!(none & CAP_NET_RAW, 0, "CapInh is not the effective set");
        assert_eq!(effective_caps("Name:\tvantage\n"), None);
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|a| a.parse().expect("socket address"))
            .collect()
    }

    #[test]
    fn preferences_filter_and_order_families() {
        let both = addrs(&[
            "[2001:db8::1]:80",
            "192.0.2.1:80",
            "[2001:db8::2]:80",
            "192.0.2.2:80",
        ]);
        assert_eq!(
            IpPreference::PreferV4.apply(both.clone()),
            addrs(&[
                "192.0.2.1:80",
                "192.0.2.2:80",
                "[2001:db8::1]:80",
                "[2001:db8::2]:80"
            ])
        );
        assert_eq!(
            IpPreference::PreferV6.apply(both.clone()),
            addrs(&[
                "[2001:db8::1]:80",
                "[2001:db8::2]:80",
                "192.0.2.1:80",
                "192.0.2.2:80"
            ])
        );
        assert_eq!(
            IpPreference::V4Only.apply(both.clone()),
            addrs(&["192.0.2.1:80", "192.0.2.2:80"])
        );
        assert_eq!(IpPreference::V6Only.apply(addrs(&["192.0.2.1:80"])), vec![]);
        assert_eq!(IpPreference::Any.apply(both.clone()), both);
    }

    #[test]
    fn socket_errors_map_to_failure_kinds() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(classify_io_error(&os(111)), FailureKind::Refused);
        assert_eq!(classify_io_error(&os(101)), FailureKind::Unreachable);
        assert_eq!(classify_io_error(&os(113)), FailureKind::Unreachable);
        assert_eq!(classify_io_error(&os(110)), FailureKind::Timeout);
        assert_eq!(classify_io_error(&os(104)), FailureKind::Protocol);
        assert_eq!(classify_io_error(&os(99)), FailureKind::Send);
    }

    #[tokio::test]
    async fn literals_resolve_without_a_lookup_and_respect_the_preference() {
        let (v6, took) = resolve("[::1]", 53, IpPreference::Any).await;
        assert_eq!(v6, Ok(addrs(&["[::1]:53"])));
        assert_eq!(took, Duration::ZERO);
        let (refused, _) = resolve("127.0.0.1", 53, IpPreference::V6Only).await;
        assert!(refused.is_err());
    }
}
