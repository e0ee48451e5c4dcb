//! Smokeping-style ICMP echo rounds.
//!
//! One [`IcmpClient`] holds one socket per address family, shared by every round; a receive task per
//! socket hands each reply to the round waiting for it, keyed by (target address, sequence).
//!
//! A round holds one sequence number per echo for its whole length, so at most
//! [`MAX_OUTSTANDING_PER_ADDRESS`] echoes to one address can be told apart at a time: a round that
//! would need more fails at once with a clear message (`vantage check` refuses configs that could
//! get there). Replies must carry the tag of the echo they answer ([`packet`]); those that do not
//! are dropped and counted ([`IcmpClient::rejected_replies`]).
//!
//! Why not `surge-ping` (DESIGN.md's first choice): its matcher is private and ignores the payload,
//! so a colliding identifier from another process counts as ours and none of it can be unit-tested;
//! it also makes a `getsockname` call per received packet and a timer per echo. Here packet parsing
//! and building use `pnet_packet`, sockets `socket2`, and the "is this reply ours?" rules are pure
//! functions in [`packet`] with byte-level tests.

mod packet;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use packet::{EchoKey, Family, Inbound, Rejected, SocketKind, classify, echo_request};

use crate::observation::{FailureKind, Measurement, Observation, Outcome};
use crate::stats::PingStats;

/// Echoes to one address that can await replies at once: each needs its own 16-bit sequence number
/// (the identifier is one per socket), or two replies could not be told apart.
pub const MAX_OUTSTANDING_PER_ADDRESS: usize = 1 << 16;

/// How one round is paced: `count` echoes, one every `spacing`, each waited for up to `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundPlan {
    pub count: u32,
    pub spacing: Duration,
    pub timeout: Duration,
}

impl RoundPlan {
    /// The longest a round can take: last echo sent, plus its timeout.
    pub fn duration(&self) -> Duration {
        self.spacing * self.count.saturating_sub(1) + self.timeout
    }
}

/// The ICMP sockets could not be opened at all.
#[derive(Debug, thiserror::Error)]
pub enum IcmpError {
    #[error(
        "cannot open an ICMP socket: raw sockets need CAP_NET_RAW ({raw}) and unprivileged ICMP \
         sockets are not allowed for this group ({dgram}; net.ipv4.ping_group_range = \"{range}\").\n\
         Fix one of:\n  \
         sudo setcap cap_net_raw+ep \"$(command -v vantage)\"\n  \
         sudo sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"   (persist it in /etc/sysctl.d/)\n  \
         under systemd: AmbientCapabilities=CAP_NET_RAW in the unit's [Service] section"
    )]
    Permission {
        raw: io::Error,
        dgram: io::Error,
        range: String,
    },
    #[error("cannot open an ICMP socket: {0}")]
    Io(#[from] io::Error),
}

/// Shared ICMP sockets (one per address family) and the table of rounds waiting for replies.
///
/// Cheap to clone. Must be created inside a tokio runtime: it spawns one receive task per socket,
/// stopped when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct IcmpClient {
    v4: Arc<Endpoint>,
    v6: Arc<Endpoint>,
}

/// One family's socket, or why there is none (e.g. IPv6 disabled on the host).
#[derive(Debug)]
struct Endpoint {
    socket: Result<Arc<Shared>, String>,
    receiver: Option<JoinHandle<()>>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(task) = &self.receiver {
            task.abort();
        }
    }
}

#[derive(Debug)]
struct Shared {
    socket: UdpSocket,
    kind: SocketKind,
    family: Family,
    ident: u16,
    /// Tags every echo; random per socket, so per process.
    key: EchoKey,
    /// Send stamps in echoes are nanoseconds since this instant.
    epoch: Instant,
    waiting: Mutex<Waiting>,
    /// Echo replies with our identifier whose tag did not verify ([`Rejected::BadTag`]).
    rejected: AtomicU64,
}

/// The rounds waiting for replies: who holds each (address, sequence), and how many each address has.
#[derive(Debug, Default)]
struct Waiting {
    waiters: HashMap<(IpAddr, u16), Waiter>,
    held: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Waiter {
    index: usize,
    tx: mpsc::UnboundedSender<Arrival>,
}

/// A datagram matched to one echo of a round.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    index: usize,
    at: Instant,
    /// The send stamp an echo reply carried; None for an unreachable (quotes carry no stamp).
    stamp: Option<u64>,
    unreachable: Option<(IpAddr, u8)>,
}

impl IcmpClient {
    /// Open the sockets, preferring `preferred` (raw by default) and falling back to the other kind.
    /// Fails only if neither family can be opened; a missing IPv6 stack fails IPv6 rounds instead.
    pub fn new() -> Result<Self, IcmpError> {
        Self::with_socket_kind(SocketKind::Raw)
    }

    pub fn with_socket_kind(preferred: SocketKind) -> Result<Self, IcmpError> {
        let v4 = open(Family::V4, preferred);
        let v6 = open(Family::V6, preferred);
        if let (Err(v4_error), Err(_)) = (&v4, &v6) {
            return Err(match v4_error {
                OpenError::Permission { raw, dgram } => IcmpError::Permission {
                    raw: io::Error::new(raw.kind(), raw.to_string()),
                    dgram: io::Error::new(dgram.kind(), dgram.to_string()),
                    range: std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range")
                        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                        .unwrap_or_else(|_| "unknown".into()),
                },
                OpenError::Io(e) => IcmpError::Io(io::Error::new(e.kind(), e.to_string())),
            });
        }
        Ok(IcmpClient {
            v4: Arc::new(Endpoint::start(Family::V4, v4)),
            v6: Arc::new(Endpoint::start(Family::V6, v6)),
        })
    }

    /// Which kind of socket serves `family`, if any.
    pub fn socket_kind(&self, family: Family) -> Option<SocketKind> {
        self.endpoint(family).socket.as_ref().ok().map(|s| s.kind)
    }

    /// Echo replies rejected since the client was opened: our identifier, but a tag that does not
    /// verify for the address they came from (forged, or another process's by coincidence).
    pub fn rejected_replies(&self) -> u64 {
        [&self.v4, &self.v6]
            .iter()
            .filter_map(|endpoint| endpoint.socket.as_ref().ok())
            .map(|shared| shared.rejected.load(Ordering::Relaxed))
            .sum()
    }

    fn endpoint(&self, family: Family) -> &Endpoint {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// Run one round against `addr`. Never fails: send errors, unreachables and silence are all part
    /// of the returned [`Observation`]. When `stop` fires, no further echoes are sent, but replies to
    /// the ones already sent are still awaited, so what was measured is kept.
    pub async fn round(
        &self,
        addr: IpAddr,
        plan: RoundPlan,
        stop: &CancellationToken,
    ) -> Observation {
        let started_at = SystemTime::now();
        let started = Instant::now();
        let family = match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        };
        let endpoint = self.endpoint(family);
        let (rtts, failure) = match &endpoint.socket {
            Ok(shared) => run_round(shared, addr, plan, stop).await,
            Err(why) => (
                vec![None; plan.count as usize],
                Some(Outcome::failure(FailureKind::Send, why.clone())),
            ),
        };
        let stats = PingStats::from_rtts(rtts);
        let outcome = match failure {
            _ if stats.received > 0 => Outcome::Success,
            Some(failure) => failure,
            None if stats.sent == 0 => {
                Outcome::failure(FailureKind::Deadline, "stopped before the first echo")
            }
            None => Outcome::failure(
                FailureKind::Timeout,
                if stats.sent == 1 {
                    format!("no reply to the echo within {:?}", plan.timeout)
                } else {
                    format!(
                        "no reply to {} echoes within {:?} each",
                        stats.sent, plan.timeout
                    )
                },
            ),
        };
        Observation {
            started_at,
            duration: started.elapsed(),
            outcome,
            measurement: Measurement::Ping(stats),
        }
    }
}

enum OpenError {
    Permission { raw: io::Error, dgram: io::Error },
    Io(io::Error),
}

fn open(family: Family, preferred: SocketKind) -> Result<Shared, OpenError> {
    let other = match preferred {
        SocketKind::Raw => SocketKind::Datagram,
        SocketKind::Datagram => SocketKind::Raw,
    };
    let first = open_kind(family, preferred);
    let (socket, kind) = match first {
        Ok(socket) => (socket, preferred),
        Err(first_error) => match open_kind(family, other) {
            Ok(socket) => (socket, other),
            Err(second_error) => {
                let denied = |e: &io::Error| e.kind() == io::ErrorKind::PermissionDenied;
                return Err(if denied(&first_error) && denied(&second_error) {
                    let (raw, dgram) = match preferred {
                        SocketKind::Raw => (first_error, second_error),
                        SocketKind::Datagram => (second_error, first_error),
                    };
                    OpenError::Permission { raw, dgram }
                } else {
                    OpenError::Io(first_error)
                });
            }
        },
    };
    let ident = match kind {
        // The kernel uses a ping socket's local port as the identifier.
        SocketKind::Datagram => socket.local_addr().map(|a| a.port()).unwrap_or(0),
        SocketKind::Raw => rand::random(),
    };
    Ok(Shared {
        socket,
        kind,
        family,
        ident,
        key: EchoKey::random(),
        epoch: Instant::now(),
        waiting: Mutex::new(Waiting::default()),
        rejected: AtomicU64::new(0),
    })
}

fn open_kind(family: Family, kind: SocketKind) -> io::Result<UdpSocket> {
    let (domain, protocol, any) = match family {
        Family::V4 => (
            Domain::IPV4,
            Protocol::ICMPV4,
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ),
        Family::V6 => (
            Domain::IPV6,
            Protocol::ICMPV6,
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ),
    };
    let ty = match kind {
        SocketKind::Raw => Type::RAW,
        SocketKind::Datagram => Type::DGRAM,
    };
    let socket = Socket::new(domain, ty, Some(protocol))?;
    socket.set_nonblocking(true)?;
    // Kernel receive timestamps: RTTs that do not include our own scheduling delay (as fping).
    setsockopt(&socket, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)?;
    // Bursts of replies from thousands of targets must not overflow the default ~200 KiB buffer.
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    if kind == SocketKind::Datagram {
        socket.bind(&SocketAddr::new(any, 0).into())?;
    }
    // A socket2 socket of any type can be driven through tokio's datagram API.
    UdpSocket::from_std(std::net::UdpSocket::from(socket))
}

impl Endpoint {
    fn start(family: Family, opened: Result<Shared, OpenError>) -> Self {
        match opened {
            Ok(shared) => {
                let shared = Arc::new(shared);
                let receiver = tokio::spawn(receive(Arc::clone(&shared)));
                Endpoint {
                    socket: Ok(shared),
                    receiver: Some(receiver),
                }
            }
            Err(OpenError::Permission { raw, dgram }) => Endpoint {
                socket: Err(format!(
                    "no ICMP socket for {family:?}: raw: {raw}; datagram: {dgram}"
                )),
                receiver: None,
            },
            Err(OpenError::Io(e)) => Endpoint {
                socket: Err(format!("no ICMP socket for {family:?}: {e}")),
                receiver: None,
            },
        }
    }
}

/// Receive loop: classify every datagram and hand ours to the round waiting for it.
async fn receive(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    let mut control = nix::cmsg_space!(TimeSpec);
    let fd = shared.socket.as_raw_fd();
    loop {
        let read = shared
            .socket
            .async_io(Interest::READABLE, || {
                read_datagram(fd, &mut buf, &mut control)
            })
            .await;
        let (len, from, queued_for) = match read {
            Ok(received) => received,
            Err(error) => {
                tracing::warn!(%error, family = ?shared.family, "ICMP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // The kernel stamped the packet on arrival; back-date our clock by how long it sat in the
        // queue, so a slow wake-up of this task does not show up as network latency.
        let now = Instant::now();
        let at = queued_for.and_then(|q| now.checked_sub(q)).unwrap_or(now);
        let inbound = classify(
            &buf[..len],
            from,
            shared.family,
            shared.kind,
            shared.ident,
            &shared.key,
        );
        let (key, stamp, unreachable) = match inbound {
            Ok(Inbound::EchoReply { from, seq, stamp }) => ((from, seq), Some(stamp), None),
            Ok(Inbound::Unreachable {
                target,
                seq,
                reporter,
                code,
            }) => ((target, seq), None, Some((reporter, code))),
            Err(Rejected::BadTag) => {
                shared.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "rejected an echo reply whose tag does not verify");
                continue;
            }
            Err(reason) => {
                tracing::trace!(?reason, %from, "ignored ICMP datagram");
                continue;
            }
        };
        let waiting = shared
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match waiting.waiters.get(&key) {
            // A closed channel means the round already ended: the reply is late, drop it.
            Some(waiter) => drop(waiter.tx.send(Arrival {
                index: waiter.index,
                at,
                stamp,
                unreachable,
            })),
            None => {
                tracing::trace!(from = %key.0, seq = key.1, "reply nobody waits for (late or foreign)")
            }
        }
    }
}

/// One datagram, its source, and how long ago the kernel received it (from `SO_TIMESTAMPNS`).
#[allow(clippy::ptr_arg)] // nix's `recvmsg` takes the control buffer as a `Vec`
fn read_datagram(
    fd: RawFd,
    buf: &mut [u8],
    control: &mut Vec<u8>,
) -> io::Result<(usize, IpAddr, Option<Duration>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let message = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(control), MsgFlags::MSG_DONTWAIT)?;
    let from = message
        .address
        .as_ref()
        .and_then(|a| match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
            (Some(v4), _) => Some(IpAddr::V4(v4.ip())),
            (_, Some(v6)) => Some(IpAddr::V6(v6.ip())),
            _ => None,
        })
        .ok_or_else(|| io::Error::other("ICMP datagram without a source address"))?;
    let stamped = message.cmsgs().ok().and_then(|mut messages| {
        messages.find_map(|m| match m {
            ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
            _ => None,
        })
    });
    let queued_for = stamped.and_then(|ts| {
        let arrived = SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(ts.tv_sec()).ok()?,
                u32::try_from(ts.tv_nsec()).ok()?,
            );
        // A wall-clock step makes the difference meaningless; then use our own clock alone.
        SystemTime::now()
            .duration_since(arrived)
            .ok()
            .filter(|q| *q < Duration::from_secs(10))
    });
    Ok((message.bytes, from, queued_for))
}

/// The sequence numbers a round holds in the shared table; released when dropped, however the round
/// ends, so a reply arriving afterwards finds nobody and is discarded as late.
struct Registration<'a> {
    shared: &'a Shared,
    addr: IpAddr,
    seqs: Vec<u16>,
}

impl<'a> Registration<'a> {
    /// Take `count` sequence numbers for echoes to `addr`, or say why they cannot all be had.
    fn new(
        shared: &'a Shared,
        addr: IpAddr,
        count: usize,
        tx: mpsc::UnboundedSender<Arrival>,
    ) -> Result<Self, String> {
        let mut waiting = shared
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Waiting { waiters, held } = &mut *waiting;
        let already = held.get(&addr).copied().unwrap_or(0);
        if already + count > MAX_OUTSTANDING_PER_ADDRESS {
            return Err(format!(
                "cannot send {count} echoes to {addr}: {already} echoes to it already await \
                 replies, and at most {MAX_OUTSTANDING_PER_ADDRESS} can be told apart (16-bit \
                 sequence numbers); lower `count`, or probe {addr} from fewer probes or targets"
            ));
        }
        let mut seq: u16 = rand::random();
        let mut seqs = Vec::with_capacity(count);
        for index in 0..count {
            // Skip sequence numbers another round to the same address still holds. Enough are
            // free (checked above), so this takes at most one lap of the sequence space.
            loop {
                seq = seq.wrapping_add(1);
                if let Entry::Vacant(slot) = waiters.entry((addr, seq)) {
                    slot.insert(Waiter {
                        index,
                        tx: tx.clone(),
                    });
                    seqs.push(seq);
                    break;
                }
            }
        }
        *held.entry(addr).or_default() += count;
        Ok(Registration { shared, addr, seqs })
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut waiting = self
            .shared
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for seq in &self.seqs {
            waiting.waiters.remove(&(self.addr, *seq));
        }
        if let Entry::Occupied(mut held) = waiting.held.entry(self.addr) {
            *held.get_mut() = held.get().saturating_sub(self.seqs.len());
            if *held.get() == 0 {
                held.remove();
            }
        }
    }
}

/// Which echoes of a round were answered, and in time. Pure bookkeeping, tested on its own.
#[derive(Debug)]
pub struct RoundState {
    timeout: Duration,
    /// When each echo was sent, and the stamp it carried.
    sent_at: Vec<Option<(Instant, u64)>>,
    rtts: Vec<Option<f64>>,
}

/// What [`RoundState::accept`] made of a matched reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Counted,
    /// A second reply to an echo already answered.
    Duplicate,
    /// Arrived after that echo's timeout.
    Late,
    /// For an echo this round never sent.
    NotSent,
    /// Tagged by us, but for an earlier echo with the same sequence number (a late reply to a
    /// previous round, or a replay): its stamp is not this echo's.
    Stale,
}

impl RoundState {
    pub fn new(count: usize, timeout: Duration) -> Self {
        RoundState {
            timeout,
            sent_at: vec![None; count],
            rtts: vec![None; count],
        }
    }

    pub fn sent(&mut self, index: usize, at: Instant, stamp: u64) {
        self.sent_at[index] = Some((at, stamp));
    }

    /// A verified reply to echo `index`, received `at`, carrying `stamp`.
    pub fn accept(&mut self, index: usize, at: Instant, stamp: u64) -> Verdict {
        let Some(Some((sent, sent_stamp))) = self.sent_at.get(index) else {
            return Verdict::NotSent;
        };
        if stamp != *sent_stamp {
            return Verdict::Stale;
        }
        let rtt = at.saturating_duration_since(*sent);
        if self.rtts[index].is_some() {
            Verdict::Duplicate
        } else if rtt > self.timeout {
            Verdict::Late
        } else {
            self.rtts[index] = Some(rtt.as_secs_f64() * 1000.0);
            Verdict::Counted
        }
    }

    fn all_answered(&self, sent: usize) -> bool {
        self.rtts[..sent].iter().all(Option::is_some)
    }

    /// RTTs of the echoes actually sent, in send order.
    pub fn into_rtts(mut self, sent: usize) -> Vec<Option<f64>> {
        self.rtts.truncate(sent);
        self.rtts
    }
}

async fn run_round(
    shared: &Shared,
    addr: IpAddr,
    plan: RoundPlan,
    stop: &CancellationToken,
) -> (Vec<Option<f64>>, Option<Outcome>) {
    let count = plan.count as usize;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let registration = match Registration::new(shared, addr, count, tx) {
        Ok(registration) => registration,
        Err(message) => {
            return (
                Vec::new(),
                Some(Outcome::failure(FailureKind::Send, message)),
            );
        }
    };
    let mut state = RoundState::new(count, plan.timeout);
    let target = SocketAddr::new(addr, 0);
    let start = tokio::time::Instant::now();
    let mut sent = 0usize;
    let mut last_send = start;
    let mut failure = None;
    let mut stopping = false;

    loop {
        let sending = sent < count && !stopping;
        if !sending && state.all_answered(sent) {
            break;
        }
        let wake_at = if sending {
            start + plan.spacing * sent as u32
        } else {
            last_send + plan.timeout
        };
        tokio::select! {
            biased;
            Some(arrival) = rx.recv() => {
                match (arrival.unreachable, arrival.stamp) {
                    (Some((reporter, code)), _) => failure = Some(Outcome::failure(
                        FailureKind::Unreachable,
                        format!("{reporter} reports {addr} unreachable (ICMP code {code})"),
                    )),
                    (None, Some(stamp)) => {
                        let verdict = state.accept(arrival.index, arrival.at, stamp);
                        if verdict != Verdict::Counted {
                            tracing::debug!(%addr, ?verdict, "reply not counted");
                        }
                    }
                    (None, None) => {}
                }
            }
            () = stop.cancelled(), if sending => stopping = true,
            () = tokio::time::sleep_until(wake_at) => {
                if !sending {
                    break;
                }
                let now = tokio::time::Instant::now();
                let stamp = u64::try_from(now.into_std().duration_since(shared.epoch).as_nanos())
                    .unwrap_or(u64::MAX);
                let request = echo_request(addr, shared.ident, registration.seqs[sent], stamp, &shared.key);
                // The RTT starts now, not before the tag was computed.
                state.sent(sent, Instant::now(), stamp);
                if let Err(error) = shared.socket.send_to(&request, target).await {
                    // The echo counts as sent and lost: a local "no route" is part of the outage.
                    let kind = match error.raw_os_error() {
                        Some(101 | 113) => FailureKind::Unreachable, // ENETUNREACH, EHOSTUNREACH
                        _ => FailureKind::Send,
                    };
                    failure = Some(Outcome::failure(kind, format!("sending to {addr}: {error}")));
                }
                last_send = now;
                sent += 1;
            }
        }
    }
    drop(registration);
    (state.into_rtts(sent), failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_late_and_unsent_replies_are_not_counted() {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(100);
        let mut round = RoundState::new(3, timeout);
        round.sent(0, t0, 0);
        round.sent(1, t0, 1);
        assert_eq!(
            round.accept(0, t0 + Duration::from_millis(5), 0),
            Verdict::Counted
        );
        assert_eq!(
            round.accept(0, t0 + Duration::from_millis(6), 0),
            Verdict::Duplicate
        );
        assert_eq!(
            round.accept(1, t0 + Duration::from_millis(101), 1),
            Verdict::Late
        );
        assert_eq!(round.accept(2, t0, 2), Verdict::NotSent);
        assert_eq!(round.accept(7, t0, 7), Verdict::NotSent);
        let rtts = round.into_rtts(2);
        assert_eq!(rtts.len(), 2);
        assert!((rtts[0].unwrap_or_default() - 5.0).abs() < 1e-6);
        assert_eq!(rtts[1], None);
    }

    #[test]
    fn a_reply_slower_than_the_spacing_still_counts() {
        // Echo 0 answered after echo 1 was sent: RTT is what matters, not the send order.
        let t0 = Instant::now();
        let mut round = RoundState::new(2, Duration::from_secs(1));
        round.sent(0, t0, 0);
        round.sent(1, t0 + Duration::from_millis(10), 1);
        assert_eq!(
            round.accept(1, t0 + Duration::from_millis(11), 1),
            Verdict::Counted
        );
        assert_eq!(
            round.accept(0, t0 + Duration::from_millis(300), 0),
            Verdict::Counted
        );
        let rtts = round.into_rtts(2);
        assert!((rtts[0].unwrap_or_default() - 300.0).abs() < 1e-6);
    }

    #[test]
    fn a_reply_stamped_for_an_earlier_echo_with_the_same_sequence_is_stale() {
        let t0 = Instant::now();
        let mut round = RoundState::new(1, Duration::from_secs(1));
        round.sent(0, t0, 42);
        assert_eq!(
            round.accept(0, t0 + Duration::from_millis(1), 41),
            Verdict::Stale
        );
        assert_eq!(
            round.accept(0, t0 + Duration::from_millis(2), 42),
            Verdict::Counted
        );
        let rtts = round.into_rtts(1);
        assert!((rtts[0].unwrap_or_default() - 2.0).abs() < 1e-6);
    }

    #[test]
    fn round_duration_covers_the_last_echo_and_its_timeout() {
        let plan = RoundPlan {
            count: 20,
            spacing: Duration::from_millis(900),
            timeout: Duration::from_secs(2),
        };
        assert_eq!(plan.duration(), Duration::from_millis(19 * 900 + 2000));
    }
}
