//! Smokeping-style ICMP echo rounds.
//!
//! One [`IcmpClient`] holds one socket per address family (raw, or unprivileged datagram), shared
//! by every round. Each socket has one loop ([`drive`], on a thread of its own) that runs every
//! round on it from its deadlines ([`engine`], [`deadlines`]: a FIFO lane per spacing or timeout, a
//! heap for the rest): due echoes are built into a preallocated batch and sent in `sendmmsg` calls
//! of four (`SEND_CHUNK`: each echo is timed at its share of its call), replies read with
//! `recvmmsg` and timed by the kernel's receive stamps (`SO_TIMESTAMPNS`). Per round there is one
//! slot in an array and one message each way (its start, its result); nothing per echo is
//! allocated, locked or spawned. [`IcmpClient::rounds`] starts many rounds as one batch (`vantage
//! ping`'s target list): one message for all of them, and no task, channel or stop token per round.
//! While echoes are due more often than every 5 ms, the loop's passes are that far apart
//! (`engine::COALESCE`): one wake-up and one `recvmmsg` for many echoes. The socket buffers grow
//! with the offered echo rate; when `net.core.rmem_max`/`wmem_max` caps them, one warning names the
//! sysctl.
//!
//! A round holds one sequence number per echo for its whole length, so at most
//! [`MAX_OUTSTANDING_PER_ADDRESS`] echoes to one address can await replies at a time: a round that
//! would need more fails at once with a clear message (`vantage check` refuses configs that could
//! get there). Replies must carry the tag of the echo they answer ([`packet`]); those that do not
//! are dropped and counted ([`IcmpClient::rejected_replies`]).
//!
//! Why not `surge-ping` (DESIGN.md's first choice): its matcher is private and ignores the payload,
//! so a colliding identifier from another process counts as ours and none of it can be unit-tested;
//! it also makes a `getsockname` call per received packet and a timer per echo. Here packet parsing
//! and building use `pnet_packet`, sockets `socket2`, and the "is this reply ours?" rules are pure
//! functions in [`packet`] with byte-level tests.

mod deadlines;
mod engine;
mod packet;

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, getsockopt,
    recvmmsg, sendmmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;
use rustix::net::sockopt::{Ipv4PathMtuDiscovery, set_ip_mtu_discover};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use engine::{BATCH, BatchRequest, Command, Engine, Request, RoundEnd, SendBatch};
pub use packet::{
    EchoKey, Family, Inbound, Rejected, SocketKind, classify, echo_request, write_echo_request,
};

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

/// Shared ICMP sockets (one per address family), each driven by one loop.
///
/// Cheap to clone. Each socket's loop runs on a thread of its own (a single-threaded tokio
/// runtime), started with its family's first round and stopped when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct IcmpClient {
    v4: Arc<Endpoint>,
    v6: Arc<Endpoint>,
}

/// One family's socket loop, or why there is none (e.g. IPv6 disabled on the host). The loop ends
/// when this is dropped (its command channel closes).
#[derive(Debug)]
struct Endpoint {
    socket: Result<Handle, String>,
}

/// What the rounds' side holds of a socket loop.
#[derive(Debug)]
struct Handle {
    kind: SocketKind,
    commands: mpsc::UnboundedSender<Command>,
    /// Echo replies with our identifier whose tag did not verify ([`Rejected::BadTag`]).
    rejected: Arc<AtomicU64>,
    /// The loop's thread starts with the family's first round: a family no round uses (IPv6 in
    /// most `vantage ping` runs) costs an open socket, not a thread and a runtime.
    started: Once,
    idle: Mutex<Option<IdleLoop>>,
}

/// A socket loop not started yet: what its thread will own.
#[derive(Debug)]
struct IdleLoop {
    family: Family,
    engine: Engine,
    socket: std::net::UdpSocket,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl Handle {
    /// Send a command to the loop, starting the loop with the first round. A loop that could not
    /// start has dropped its receiver, so the send fails and the round ends as `loop_gone`.
    fn send(&self, command: Command) -> Result<(), mpsc::error::SendError<Command>> {
        if matches!(command, Command::Start(_) | Command::StartBatch(_)) {
            self.started.call_once(|| {
                if let Some(idle) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    idle.start();
                }
            });
        }
        self.commands.send(command)
    }
}

impl IdleLoop {
    /// The loop on a thread of its own: its batches hold raw pointers (nix's `MultiHeaders`, not
    /// `Send`), and it never competes with the caller's runtime for a worker.
    fn start(self) {
        let family = self.family;
        let spawned = std::thread::Builder::new()
            .name(format!("icmp-{family:?}").to_lowercase())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(async move {
                        drive(self.engine, self.socket, family, self.commands).await
                    }),
                    Err(error) => tracing::error!(%error, ?family, "ICMP socket loop"),
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, ?family, "no thread for the ICMP socket loop");
        }
    }
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
            .map(|handle| handle.rejected.load(Ordering::Relaxed))
            .sum()
    }

    fn endpoint(&self, family: Family) -> &Endpoint {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// Run one round against `addr`, starting now. Never fails: send errors, unreachables and
    /// silence are all part of the returned [`Observation`]. When `stop` fires, no further echoes
    /// are sent, but replies to the ones already sent are still awaited, so what was measured is
    /// kept.
    pub async fn round(
        &self,
        addr: IpAddr,
        plan: RoundPlan,
        stop: &CancellationToken,
    ) -> Observation {
        self.round_at(addr, plan, Instant::now(), stop).await
    }

    /// [`IcmpClient::round`], with its first echo at `start` (e.g. to spread many targets' rounds
    /// over one interval without a timer each).
    pub async fn round_at(
        &self,
        addr: IpAddr,
        plan: RoundPlan,
        start: Instant,
        stop: &CancellationToken,
    ) -> Observation {
        let now = Instant::now();
        let started_at = SystemTime::now() + start.saturating_duration_since(now);
        let family = match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        };
        let end = match &self.endpoint(family).socket {
            Ok(handle) => run_round(handle, addr, plan, start, stop).await,
            Err(why) => no_socket(why, plan),
        };
        observation(end, plan, started_at, start.max(now))
    }

    /// Hand each family's rounds (id, address, start) to its socket loop as one batch. A round
    /// that cannot start (no socket for its family, or the loop is gone) ends at once on `results`.
    fn start_batches(
        &self,
        by_family: [Vec<(u32, IpAddr, Instant)>; 2],
        plan: RoundPlan,
        stop: &CancellationToken,
        results: &engine::Results,
    ) {
        for (family, targets) in [Family::V4, Family::V6].into_iter().zip(by_family) {
            if targets.is_empty() {
                continue;
            }
            let handle = match &self.endpoint(family).socket {
                Ok(handle) => handle,
                Err(why) => {
                    for (id, ..) in targets {
                        let _ = results.send((id, no_socket(why, plan)));
                    }
                    continue;
                }
            };
            let request = BatchRequest {
                targets,
                plan,
                stop: stop.clone(),
                results: results.clone(),
            };
            if let Err(refused) = handle.send(Command::StartBatch(request))
                && let Command::StartBatch(request) = refused.0
            {
                for (id, ..) in request.targets {
                    let _ = results.send((id, loop_gone()));
                }
            }
        }
    }

    /// Tell both socket loops that a stop token fired (they look at every round's).
    fn tell_stopped(&self) {
        for endpoint in [&self.v4, &self.v6] {
            if let Ok(handle) = &endpoint.socket {
                let _ = handle.send(Command::Stopped);
            }
        }
    }

    /// Rounds of one plan to many targets, the `i`-th starting at `targets[i].1`: handed to the
    /// socket loops as one batch, so there is no task, channel or timer per target on either side
    /// (at 10,000 targets those were most of `vantage ping`'s memory). Yields each round's
    /// observation with its index as it ends; `stop` works as for [`IcmpClient::round`].
    pub fn rounds(
        &self,
        targets: &[(IpAddr, Instant)],
        plan: RoundPlan,
        stop: &CancellationToken,
    ) -> Rounds {
        let (results, receiver) = mpsc::unbounded_channel();
        let mut by_family = [Vec::new(), Vec::new()];
        for (index, &(addr, start)) in targets.iter().enumerate() {
            let index = u32::try_from(index).expect("fewer than 2^32 targets");
            by_family[usize::from(addr.is_ipv6())].push((index, addr, start));
        }
        self.start_batches(by_family, plan, stop, &results);
        Rounds {
            client: self.clone(),
            receiver,
            plan,
            stop: stop.clone(),
            stop_told: false,
            starts: targets.iter().map(|&(_, start)| start).collect(),
            ended: vec![false; targets.len()],
            left: targets.len(),
            wall: SystemTime::now(),
            now: Instant::now(),
        }
    }
}

/// The rounds of [`IcmpClient::rounds`], as they end.
#[derive(Debug)]
pub struct Rounds {
    client: IcmpClient,
    receiver: mpsc::UnboundedReceiver<(u32, RoundEnd)>,
    plan: RoundPlan,
    stop: CancellationToken,
    stop_told: bool,
    starts: Vec<Instant>,
    ended: Vec<bool>,
    left: usize,
    /// The clocks when the batch was asked for: a round's wall-clock start is `wall` plus its
    /// start's distance from `now`.
    wall: SystemTime,
    now: Instant,
}

impl Rounds {
    /// The next round to end (its index in the target list, and what it measured); None once
    /// every round has been yielded.
    pub async fn next(&mut self) -> Option<(usize, Observation)> {
        if self.left == 0 {
            return None;
        }
        loop {
            let received = if self.stop_told {
                self.receiver.recv().await
            } else {
                tokio::select! {
                    received = self.receiver.recv() => received,
                    () = self.stop.cancelled() => {
                        self.stop_told = true;
                        self.client.tell_stopped();
                        continue;
                    }
                }
            };
            return Some(match received {
                Some((index, end)) => self.ended(index as usize, end),
                // A socket loop went away with rounds running: they end here, failed.
                None => {
                    let index = self.ended.iter().position(|ended| !ended)?;
                    self.ended(index, loop_gone())
                }
            });
        }
    }

    /// [`Rounds::next`] if a round has already ended, without waiting.
    pub fn try_next(&mut self) -> Option<(usize, Observation)> {
        let (index, end) = self.receiver.try_recv().ok()?;
        Some(self.ended(index as usize, end))
    }

    fn ended(&mut self, index: usize, end: RoundEnd) -> (usize, Observation) {
        self.ended[index] = true;
        self.left -= 1;
        let start = self.starts[index];
        let started_at = self.wall + start.saturating_duration_since(self.now);
        (
            index,
            observation(end, self.plan, started_at, start.max(self.now)),
        )
    }
}

/// Rounds of one plan started as their targets come due, all ending on one stream: the agent's
/// loop per ICMP probe ([`IcmpClient::session`]). Like [`Rounds`], no task, channel, timer or stop
/// token per target; unlike it, rounds can be started and cancelled at any time.
#[derive(Debug)]
pub struct Session {
    client: IcmpClient,
    plan: RoundPlan,
    stop: CancellationToken,
    stop_told: bool,
    /// Cloned into every start: the engine answers each round on it, tagged with its id.
    results: mpsc::UnboundedSender<(u32, RoundEnd)>,
    receiver: mpsc::UnboundedReceiver<(u32, RoundEnd)>,
    /// Rounds started and not yet yielded: id -> (its address, when it started, on both clocks).
    running: HashMap<u32, (IpAddr, Instant, SystemTime)>,
    /// How many of `running` are IPv4, IPv6.
    per_family: [usize; 2],
}

impl IcmpClient {
    /// A [`Session`] of rounds of `plan`; `stop` works as for [`IcmpClient::round`], for every
    /// round of the session.
    pub fn session(&self, plan: RoundPlan, stop: &CancellationToken) -> Session {
        let (results, receiver) = mpsc::unbounded_channel();
        Session {
            client: self.clone(),
            plan,
            stop: stop.clone(),
            stop_told: false,
            results,
            receiver,
            running: HashMap::new(),
            per_family: [0, 0],
        }
    }
}

impl Session {
    /// Start a round now for each (id, address); each id's end is yielded once by
    /// [`Session::next`]. An id must not be reused while its round runs.
    pub fn start(&mut self, rounds: &[(u32, IpAddr)]) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut by_family = [Vec::new(), Vec::new()];
        for &(id, addr) in rounds {
            by_family[usize::from(addr.is_ipv6())].push((id, addr, now));
            if self.running.insert(id, (addr, now, wall)).is_none() {
                self.per_family[usize::from(addr.is_ipv6())] += 1;
            }
        }
        self.client
            .start_batches(by_family, self.plan, &self.stop, &self.results);
    }

    /// These rounds send no more echoes (replies to those sent are still awaited); their ends are
    /// still yielded. Unknown or ended ids are ignored.
    pub fn cancel(&mut self, ids: &[u32]) {
        for family in [Family::V4, Family::V6] {
            let indices: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|id| {
                    self.running
                        .get(id)
                        .is_some_and(|(addr, ..)| addr.is_ipv6() == (family == Family::V6))
                })
                .collect();
            if indices.is_empty() {
                continue;
            }
            if let Ok(handle) = &self.client.endpoint(family).socket {
                let results = self.results.clone();
                let _ = handle.send(Command::Cancel { results, indices });
            }
        }
    }

    /// Rounds started and not yet yielded.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// The next round to end (its id, and what it measured); waits forever while none runs, so
    /// that it can sit in a `select!` beside the starts.
    pub async fn next(&mut self) -> (u32, Observation) {
        loop {
            let received = if self.stop_told {
                self.receiver.recv().await
            } else {
                tokio::select! {
                    received = self.receiver.recv() => received,
                    () = self.stop.cancelled() => {
                        self.stop_told = true;
                        self.client.tell_stopped();
                        continue;
                    }
                    // A socket loop that went away takes its rounds with it.
                    family = self.client.lost_loop(self.per_family.map(|n| n > 0)),
                        if !self.running.is_empty() => {
                        let on_family = |(id, (addr, ..)): (&u32, &(IpAddr, Instant, SystemTime))| {
                            (addr.is_ipv6() == (family == Family::V6)).then_some(*id)
                        };
                        match self.running.iter().find_map(on_family) {
                            Some(id) => Some((id, loop_gone())),
                            None => continue,
                        }
                    }
                }
            };
            // The session holds a sender itself: the channel never closes.
            let Some((id, end)) = received else {
                continue;
            };
            let Some((addr, start, started_at)) = self.running.remove(&id) else {
                continue; // already ended as its loop went away
            };
            self.per_family[usize::from(addr.is_ipv6())] -= 1;
            return (id, observation(end, self.plan, started_at, start));
        }
    }
}

impl IcmpClient {
    /// Resolves when the socket loop of a family in `watch` (IPv4, IPv6) is gone: its socket
    /// failed, or it panicked (otherwise it runs until the last clone of the client is dropped).
    async fn lost_loop(&self, watch: [bool; 2]) -> Family {
        let closed = |endpoint: &Endpoint, watched: bool| {
            let handle = endpoint.socket.as_ref().ok().filter(|_| watched);
            let handle = handle.map(|h| h.commands.clone());
            async move {
                match handle {
                    Some(commands) => commands.closed().await,
                    None => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            () = closed(&self.v4, watch[0]) => Family::V4,
            () = closed(&self.v6, watch[1]) => Family::V6,
        }
    }
}

/// A round on a family without a socket: every echo lost, and why.
fn no_socket(why: &str, plan: RoundPlan) -> RoundEnd {
    RoundEnd {
        rtts: vec![None; plan.count as usize],
        failure: Some(Outcome::failure(FailureKind::Send, why.to_string())),
    }
}

fn loop_gone() -> RoundEnd {
    RoundEnd {
        rtts: Vec::new(),
        failure: Some(Outcome::failure(
            FailureKind::Send,
            "the ICMP socket loop has stopped",
        )),
    }
}

/// A round's end as an observation: `began` is when it started (or was asked for, if later).
fn observation(
    end: RoundEnd,
    plan: RoundPlan,
    started_at: SystemTime,
    began: Instant,
) -> Observation {
    let stats = PingStats::from_rtts(end.rtts);
    let outcome = match end.failure {
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
        duration: began.elapsed(),
        outcome,
        measurement: Measurement::Ping(stats),
    }
}

/// Hand the round to its socket's loop and wait for its end, telling the loop when `stop` fires.
async fn run_round(
    handle: &Handle,
    addr: IpAddr,
    plan: RoundPlan,
    start: Instant,
    stop: &CancellationToken,
) -> RoundEnd {
    let (reply, mut done) = oneshot::channel();
    let request = Request {
        addr,
        plan,
        start,
        stop: stop.clone(),
        reply,
    };
    if handle.send(Command::Start(request)).is_err() {
        return loop_gone();
    }
    tokio::select! {
        end = &mut done => return end.unwrap_or_else(|_| loop_gone()),
        () = stop.cancelled() => {
            let _ = handle.send(Command::Stopped);
        }
    }
    done.await.unwrap_or_else(|_| loop_gone())
}

enum OpenError {
    Permission { raw: io::Error, dgram: io::Error },
    Io(io::Error),
}

/// An opened socket, before its loop starts.
struct Opened {
    socket: std::net::UdpSocket,
    kind: SocketKind,
    ident: u16,
}

fn open(family: Family, preferred: SocketKind) -> Result<Opened, OpenError> {
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
    Ok(Opened {
        socket,
        kind,
        ident,
    })
}

fn open_kind(family: Family, kind: SocketKind) -> io::Result<std::net::UdpSocket> {
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
    if family == Family::V4 {
        // Don't fragment: an echo is far below any MTU, and a DF packet's IP ID is 0 instead of
        // one drawn per packet from the kernel's hashed, shared ID table (`__ip_select_ident`,
        // 2.6% of `vantage ping`'s CPU at 10,000 targets).
        set_ip_mtu_discover(&socket, Ipv4PathMtuDiscovery::DO)?;
    }
    if kind == SocketKind::Datagram {
        socket.bind(&SocketAddr::new(any, 0).into())?;
    }
    // A socket2 socket of any type can be driven through tokio's datagram API.
    Ok(std::net::UdpSocket::from(socket))
}

impl Endpoint {
    fn start(family: Family, opened: Result<Opened, OpenError>) -> Self {
        match opened {
            Ok(Opened {
                socket,
                kind,
                ident,
            }) => {
                let rejected = Arc::new(AtomicU64::new(0));
                let engine = Engine::new(
                    family,
                    kind,
                    ident,
                    EchoKey::random(),
                    Arc::clone(&rejected),
                );
                let (commands, receiver) = mpsc::unbounded_channel();
                Endpoint {
                    socket: Ok(Handle {
                        kind,
                        commands,
                        rejected,
                        started: Once::new(),
                        idle: Mutex::new(Some(IdleLoop {
                            family,
                            engine,
                            socket,
                            commands: receiver,
                        })),
                    }),
                }
            }
            Err(OpenError::Permission { raw, dgram }) => Endpoint {
                socket: Err(format!(
                    "no ICMP socket for {family:?}: raw: {raw}; datagram: {dgram}"
                )),
            },
            Err(OpenError::Io(e)) => Endpoint {
                socket: Err(format!("no ICMP socket for {family:?}: {e}")),
            },
        }
    }
}

/// Receive buffer wanted per echo/s offered: 250 ms of replies at 2 KiB of kernel memory each (an
/// skb's truesize; on loopback a raw socket also queues every echo request), so a stall of the
/// loop that long (a loaded machine) loses nothing. Memory is only used while replies queue.
const RECV_BYTES_PER_ECHO_PER_S: f64 = 0.25 * 2048.0;
/// Send buffer: 10 ms of echoes (sends leave in batches, one per timer tick).
const SEND_BYTES_PER_ECHO_PER_S: f64 = 0.01 * 2048.0;
/// What the client asked for before it sized buffers by rate: bursts of replies from thousands of
/// targets must not overflow the default ~200 KiB.
const MIN_BUFFER: usize = 8 << 20;
const MAX_BUFFER: usize = 256 << 20;

/// The socket buffers' sizes, grown with the offered rate.
#[derive(Debug, Default)]
struct Buffers {
    /// The offered rate the buffers were last sized for.
    sized_for: f64,
    warned_recv: bool,
    warned_send: bool,
}

impl Buffers {
    /// Grow the buffers when the rate offered grew by a quarter since the last sizing.
    fn fit(&mut self, socket: &impl AsFd, family: Family, offered_per_s: f64) {
        if self.sized_for > 0.0 && offered_per_s <= self.sized_for * 1.25 {
            return;
        }
        self.sized_for = offered_per_s.max(1.0);
        let want = |per: f64| ((offered_per_s * per) as usize).clamp(MIN_BUFFER, MAX_BUFFER);
        let (recv, send) = (
            want(RECV_BYTES_PER_ECHO_PER_S),
            want(SEND_BYTES_PER_ECHO_PER_S),
        );
        let granted = grow(socket, Direction::Recv, recv);
        if granted < recv && !self.warned_recv {
            self.warned_recv = true;
            tracing::warn!(
                "ICMP {family:?} receive buffer capped at {granted} bytes by net.core.rmem_max; \
                 {offered_per_s:.0} echoes/s need {recv}: replies may be dropped in bursts. \
                 Fix: sysctl -w net.core.rmem_max={recv}"
            );
        }
        let granted = grow(socket, Direction::Send, send);
        if granted < send && !self.warned_send {
            self.warned_send = true;
            tracing::warn!(
                "ICMP {family:?} send buffer capped at {granted} bytes by net.core.wmem_max; \
                 {offered_per_s:.0} echoes/s need {send}: echoes may leave late. \
                 Fix: sysctl -w net.core.wmem_max={send}"
            );
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Recv,
    Send,
}

/// Ask for at least `want` bytes of buffer (never shrink it); returns what the kernel granted.
/// With CAP_NET_ADMIN the `*BUFFORCE` options pass the sysctl cap.
fn grow(socket: &impl AsFd, direction: Direction, want: usize) -> usize {
    let current = || match direction {
        Direction::Recv => getsockopt(socket, sockopt::RcvBuf).unwrap_or(0),
        Direction::Send => getsockopt(socket, sockopt::SndBuf).unwrap_or(0),
    };
    if current() >= want {
        return current();
    }
    // The kernel doubles what it is asked for (bookkeeping overhead) and reports the double.
    let _ = match direction {
        Direction::Recv => setsockopt(socket, sockopt::RcvBuf, &(want / 2)),
        Direction::Send => setsockopt(socket, sockopt::SndBuf, &(want / 2)),
    };
    if current() < want {
        let _ = match direction {
            Direction::Recv => setsockopt(socket, sockopt::RcvBufForce, &(want / 2)),
            Direction::Send => setsockopt(socket, sockopt::SndBufForce, &(want / 2)),
        };
    }
    current()
}

/// Datagram bytes read per slot of a receive batch: an echo reply is 64–84 bytes, an unreachable
/// quoting our echo under 600; anything longer is cut and then rejected by [`classify`].
const RECV_SLOT: usize = 2048;
/// At most this many receive batches per drain (a flood must not stop the sends for long).
const RECV_BATCHES_MAX: usize = 1024;
/// At most this many between two send batches of a pass: twice what one send batch can bring
/// back, so a pass keeps up with its replies while a flood of foreign datagrams delays each send
/// batch by two reads at most (the pass's own drain takes the rest).
const RECV_BATCHES_BETWEEN_SENDS: usize = 2;

/// The loop of one socket: commands from rounds, due echoes out, replies in, until every client
/// clone is gone.
///
/// The socket is in the runtime's epoll set only while the loop waits on it ([`Registration`]):
/// registered for good, every datagram arriving and every echo's buffer freed after sending woke
/// the thread, though a busy loop reads only at its next pass (24,000 wake-ups for 50,000 echoes,
/// against fping's 2,300).
async fn drive(
    mut engine: Engine,
    socket: std::net::UdpSocket,
    family: Family,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let fd = socket.as_raw_fd();
    let mut buffers = Buffers::default();
    buffers.fit(&socket, family, 0.0);
    let mut outgoing = SendBatch::new();
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut recv_headers =
        MultiHeaders::<SockaddrStorage>::preallocate(BATCH, Some(nix::cmsg_space!(TimeSpec)));
    let mut recv_slots = Box::new([[0u8; RECV_SLOT]; BATCH]);
    let idle = Duration::from_secs(3600);
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    let mut registration = Registration::Off(socket);
    // Set when the send buffer is full: wait for the socket to be writable before sending again.
    let mut blocked = false;
    let mut last_pass = Instant::now();
    loop {
        let coalesce = engine.coalesce();
        let now = Instant::now();
        if engine.next_deadline().is_some_and(|at| at <= now) && now >= last_pass + coalesce {
            last_pass = now;
            // Out of the epoll set for the pass: on a short path the replies arrive inside the
            // send calls, and each one (and each sent echo's freed buffer) would run the epoll
            // callback under the socket's wait-queue lock, for a wake-up the pass never needs
            // (2-3% of `vantage ping --burst`'s CPU at 1,000 targets, against 0.4% of fping's).
            registration = match registration.set(false) {
                Ok(registration) => registration,
                Err(error) => {
                    tracing::warn!(%error, ?family, "ICMP socket failed");
                    return;
                }
            };
            // Replies already queued count before any round is ended at its deadline: a loop
            // woken late must not call them lost.
            let now = Instant::now();
            let (headers, slots) = (&mut recv_headers, &mut recv_slots);
            receive_queued(fd, headers, slots, &mut engine, family, now).await;
            if !blocked {
                let batch = (&mut outgoing, &mut send_headers);
                let (headers, slots) = (&mut recv_headers, &mut recv_slots);
                let drain = |engine: &mut Engine| drain_queued(fd, headers, slots, engine);
                blocked = send_due(&mut engine, fd, batch, now, drain);
                if blocked {
                    registration.would_block(Interest::WRITABLE);
                }
            }
        }
        // Busy (a pass due within `coalesce`): echoes due until then go out together, and replies
        // are read at that pass rather than woken for one by one; their kernel stamps keep their
        // RTTs exact, and the receive buffer holds far more than one pass's worth.
        let (wake, listen) = match engine.next_deadline() {
            Some(at) => {
                let wake = at.max(last_pass + coalesce);
                (
                    wake,
                    wake.saturating_duration_since(Instant::now()) > coalesce,
                )
            }
            None => (Instant::now() + idle, true),
        };
        engine.send_ended();
        registration = match registration.set(listen || blocked) {
            Ok(registration) => registration,
            Err(error) => {
                tracing::warn!(%error, ?family, "ICMP socket failed");
                return;
            }
        };
        sleep.as_mut().reset(wake.into());
        tokio::select! {
            biased;
            ready = registration.ready(Interest::READABLE), if listen => {
                if let Err(error) = ready {
                    tracing::warn!(%error, ?family, "ICMP socket failed");
                    return;
                }
                // Readable: read what is there now (a stream of replies must not hold up sends).
                let now = Instant::now();
                let (headers, slots) = (&mut recv_headers, &mut recv_slots);
                if receive_queued(fd, headers, slots, &mut engine, family, now).await {
                    registration.would_block(Interest::READABLE);
                }
            }
            command = commands.recv() => {
                let Some(command) = command else { return };
                engine.command(command);
                while let Ok(command) = commands.try_recv() {
                    engine.command(command);
                }
                engine.apply_stops(Instant::now());
                buffers.fit(&registration, family, engine.offered_per_s());
            }
            writable = registration.ready(Interest::WRITABLE), if blocked => {
                if let Err(error) = writable {
                    tracing::warn!(%error, ?family, "ICMP socket failed");
                    return;
                }
                blocked = false;
            }
            () = &mut sleep => {}
        }
    }
}

/// The socket, in the runtime's epoll set only while the loop waits on it (tokio registers a
/// socket for both directions, edge-triggered: a registered socket wakes the thread for every
/// datagram and every freed send buffer).
enum Registration {
    Off(std::net::UdpSocket),
    On(UdpSocket),
}

impl AsFd for Registration {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Registration::Off(socket) => socket.as_fd(),
            Registration::On(socket) => socket.as_fd(),
        }
    }
}

impl Registration {
    /// Enter or leave the epoll set. Entering reports what is already ready, so nothing is missed.
    fn set(self, on: bool) -> io::Result<Self> {
        Ok(match (self, on) {
            (Registration::Off(socket), true) => Registration::On(UdpSocket::from_std(socket)?),
            (Registration::On(socket), false) => Registration::Off(socket.into_std()?),
            (unchanged, _) => unchanged,
        })
    }

    /// Ready for `interest` (never, while out of the epoll set).
    async fn ready(&self, interest: Interest) -> io::Result<()> {
        match self {
            Registration::On(socket) => socket.ready(interest).await.map(drop),
            _ => std::future::pending().await,
        }
    }

    /// The kernel said "would block" to a call made outside tokio: forget tokio's readiness flag,
    /// so the next wait is for a new edge.
    fn would_block(&self, interest: Interest) {
        if let Registration::On(socket) = self {
            let _ = socket.try_io(interest, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
        }
    }
}

/// Read what the socket holds, a batch per `recvmmsg`, until it is empty or holds only datagrams
/// that arrived after `until`: everything that arrived before a round's deadline is counted before
/// the round is ended, however far behind the loop is. (A flood of foreign datagrams ends the
/// drain after [`RECV_BATCHES_MAX`] batches.) Returns true when the socket was found empty.
async fn receive_queued(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    slots: &mut [[u8; RECV_SLOT]; BATCH],
    engine: &mut Engine,
    family: Family,
    until: Instant,
) -> bool {
    for _ in 0..RECV_BATCHES_MAX {
        match receive_batch(fd, headers, slots, engine) {
            Ok((n, last)) if n == BATCH && last.is_none_or(|at| at < until) => continue,
            Ok(_) => return false,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
            Err(error) => {
                tracing::warn!(%error, ?family, "ICMP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                return false;
            }
        }
    }
    false
}

/// Read what the socket holds now (at most [`RECV_BATCHES_BETWEEN_SENDS`] batches), without
/// waiting, between the send batches of a long pass. Errors are left to the pass's next
/// [`receive_queued`], which logs them.
fn drain_queued(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    slots: &mut [[u8; RECV_SLOT]; BATCH],
    engine: &mut Engine,
) {
    for _ in 0..RECV_BATCHES_BETWEEN_SENDS {
        match receive_batch(fd, headers, slots, engine) {
            Ok((n, _)) if n == BATCH => continue,
            _ => return,
        }
    }
}

/// Send every echo due by `pass` (when this pass began), a batch per `sendmmsg`. Returns true when
/// the send buffer is full (the echoes left stay due).
///
/// Only what was due when the pass began: a loop that is behind (sending takes longer than the
/// schedule gives it) would otherwise never leave this function to read replies, and the socket's
/// receive queue would overflow (10,000 targets at 50k echoes/s lost 38% of their replies).
/// `between_batches` reads what has arrived after each batch: a long pass (a burst to 20,000
/// targets) otherwise filled the receive queue before reading it and lost 38% of the replies.
fn send_due(
    engine: &mut Engine,
    fd: RawFd,
    (batch, headers): (&mut SendBatch, &mut MultiHeaders<SockaddrStorage>),
    pass: Instant,
    mut between_batches: impl FnMut(&mut Engine),
) -> bool {
    // The pass's first echo goes out alone, timed by its own call. After the loop slept, the
    // first packet through the kernel's send path costs several times what the next ones do
    // (cold caches), and timing a batch's echoes at their share of the call spread that cost over
    // all of them: at 10k echoes/s the lab's median RTT read 40-48 µs against fping's 13.
    let mut first_of_pass = true;
    loop {
        if !first_of_pass {
            between_batches(engine);
        }
        engine.due(pass, batch);
        if batch.len == 0 {
            return false;
        }
        let mut k = 0;
        while k < batch.len {
            let end = if first_of_pass {
                k + 1
            } else {
                (k + SEND_CHUNK).min(batch.len)
            };
            // The RTT starts here, after the tags were computed.
            let at = Instant::now();
            let sent = send_batch(fd, headers, batch, k, end).map_err(io::Error::from);
            first_of_pass = false;
            match sent {
                Ok(n) => {
                    // The kernel sends a batch's echoes one after the other, and on a short path
                    // (loopback, a lab of namespaces) it even handles the first replies before
                    // the call returns: each echo left at its share of the call, not at its start
                    // (one start time for the batch made RTTs at 10k echoes/s 8× too long).
                    let took = at.elapsed();
                    for (j, i) in (k..k + n).enumerate() {
                        engine.sent(batch, i, left_at(at, took, j, n), None);
                    }
                    k += n.max(1).min(batch.len - k);
                    if n == 0 {
                        // Nothing taken and no error: treat as full, as EAGAIN.
                        for i in k - 1..batch.len {
                            engine.unsent(batch, i);
                        }
                        return true;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    for i in k..batch.len {
                        engine.unsent(batch, i);
                    }
                    return true;
                }
                Err(error) => {
                    // The first echo of the rest was refused (e.g. no route): it counts as sent
                    // and lost; the others are tried again.
                    let errno = error
                        .raw_os_error()
                        .map(nix::Error::from_raw)
                        .unwrap_or(nix::Error::EIO);
                    engine.sent(batch, k, at, Some(errno));
                    k += 1;
                }
            }
        }
    }
}

/// Echoes per `sendmmsg` call. Each echo is timed at its share of its call ([`left_at`]), which
/// is only as good as the call's echoes cost alike; they do not when the kernel does other work
/// inside the call (a lab's forwarding and the target's answer, a softirq, a preemption). With 64
/// per call, 7–12% of the RTTs at 1,000 targets in bursts through the lab read 0 (the reply
/// arrived before the estimated send), against none of fping's (one timed `sendto` per echo).
/// Four per call: 0.2–0.5% read 0 and the error is bounded by a call of four echoes, for 3–5%
/// more CPU per echo; one per call (exact) cost 9–18% more.
const SEND_CHUNK: usize = 4;

/// When the `j`-th of `n` echoes that one `sendmmsg` call sent (from `at`, for `took`) left: its
/// share of the call.
fn left_at(at: Instant, took: Duration, j: usize, n: usize) -> Instant {
    at + took.mul_f64(j as f64 / n.max(1) as f64)
}

fn send_batch(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    batch: &SendBatch,
    from: usize,
    end: usize,
) -> nix::Result<usize> {
    let slices = batch.packets.each_ref().map(|p| [IoSlice::new(p)]);
    let sent = sendmmsg(
        fd,
        headers,
        &slices[from..end],
        &batch.addrs[from..end],
        [] as [ControlMessage; 0],
        MsgFlags::MSG_DONTWAIT,
    )?;
    Ok(sent.count())
}

/// Read up to [`BATCH`] datagrams with one `recvmmsg` and hand each to the engine, timed by its
/// kernel receive stamp. Returns how many were read, and when the last one arrived.
fn receive_batch(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    slots: &mut [[u8; RECV_SLOT]; BATCH],
    engine: &mut Engine,
) -> io::Result<(usize, Option<Instant>)> {
    let mut slices = slots.each_mut().map(|s| [IoSliceMut::new(s)]);
    let messages = recvmmsg(fd, headers, slices.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?;
    // One clock pair per batch: a datagram's arrival is now, minus how long it was queued.
    let (now, wall_now) = clock_pair(Instant::now, || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    });
    let mut read = 0;
    let mut last = None;
    for message in messages {
        read += 1;
        let from = message.address.as_ref().and_then(|a| {
            match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                (Some(v4), _) => Some(IpAddr::V4(v4.ip())),
                (_, Some(v6)) => Some(IpAddr::V6(v6.ip())),
                _ => None,
            }
        });
        let Some(from) = from else {
            tracing::trace!("ICMP datagram without a source address");
            continue;
        };
        let stamp = message.cmsgs().ok().and_then(|mut cmsgs| {
            cmsgs.find_map(|m| match m {
                ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
                _ => None,
            })
        });
        let at = stamp
            .and_then(|ts| {
                let stamp = Duration::new(
                    u64::try_from(ts.tv_sec()).ok()?,
                    u32::try_from(ts.tv_nsec()).ok()?,
                );
                engine::queued_for(stamp, wall_now)
            })
            .and_then(|queued| now.checked_sub(queued))
            .unwrap_or(now);
        last = Some(at);
        let datagram = message.iovs().next().unwrap_or(&[]);
        let received = engine.receive(datagram, from, at);
        tracing::trace!(%from, ?received, "ICMP datagram");
    }
    Ok((read, last))
}

/// The monotonic and the wall clock, read as a pair to turn kernel receive stamps (wall) into
/// arrival instants: the wall clock first. A thread preempted between the two reads then places
/// an arrival late by the pause (an RTT reads long), never early: read the other way round, a
/// 214 µs pause made an echo beat a 30 ms injected delay (29.79 ms).
fn clock_pair(
    monotonic: impl FnOnce() -> Instant,
    wall: impl FnOnce() -> Duration,
) -> (Instant, Duration) {
    let wall = wall();
    (monotonic(), wall)
}

/// Which echoes of a round were answered, and in time. Pure bookkeeping, tested on its own.
#[derive(Debug)]
pub struct RoundState {
    timeout: Duration,
    /// When the earliest echo was sent: echoes keep their send times as offsets from it.
    base: Option<Instant>,
    /// One allocation per round: every round of `vantage ping` at 10,000 targets is alive at once.
    echoes: Box<[Echo]>,
}

/// An echo in 16 bytes (it was 40: an `Instant`, a stamp and an `Option<Duration>`). At 10,000
/// targets every round of 20 echoes is alive at once: 8 MB of the agent's heap, now 3.2 MB.
#[derive(Debug, Clone, Copy)]
struct Echo {
    /// The stamp it carried.
    stamp: u64,
    /// [`NOT_SENT`]; [`ANSWERED`] | its RTT in ns; or when it was sent, in ns after
    /// [`RoundState::base`]. One word for both: once the RTT is known, the send time is not read.
    time: u64,
}

const NOT_SENT: u64 = u64::MAX;
const ANSWERED: u64 = 1 << 63;
/// 292 years: more than a monotonic clock can tell apart, and below both flags.
const MAX_NANOS: u64 = ANSWERED - 2;

impl Default for Echo {
    fn default() -> Self {
        Echo {
            stamp: 0,
            time: NOT_SENT,
        }
    }
}

impl Echo {
    fn sent_after_base(&self) -> Option<u64> {
        (self.time < ANSWERED).then_some(self.time)
    }

    fn rtt(&self) -> Option<Duration> {
        (self.time != NOT_SENT && self.time >= ANSWERED)
            .then(|| Duration::from_nanos(self.time & !ANSWERED))
    }
}

/// Whole nanoseconds, exact (an `Instant` has no finer grain) up to [`MAX_NANOS`].
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).map_or(MAX_NANOS, |n| n.min(MAX_NANOS))
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
            base: None,
            echoes: vec![Echo::default(); count].into_boxed_slice(),
        }
    }

    pub fn sent(&mut self, index: usize, at: Instant, stamp: u64) {
        let base = match self.base {
            Some(base) if base <= at => base,
            Some(base) => {
                // Sent before the base (the engine never does): move the base back, offsets up.
                let shift = nanos(base - at);
                for echo in self.echoes.iter_mut() {
                    if let Some(offset) = echo.sent_after_base() {
                        echo.time = offset.saturating_add(shift).min(MAX_NANOS);
                    }
                }
                self.base = Some(at);
                at
            }
            None => {
                self.base = Some(at);
                at
            }
        };
        let echo = &mut self.echoes[index];
        echo.stamp = stamp;
        // A resent echo already answered keeps its RTT (its send time would not be read again).
        if echo.rtt().is_none() {
            echo.time = nanos(at - base);
        }
    }

    /// A verified reply to echo `index`, received `at`, carrying `stamp`.
    pub fn accept(&mut self, index: usize, at: Instant, stamp: u64) -> Verdict {
        let Some(echo) = self.echoes.get_mut(index) else {
            return Verdict::NotSent;
        };
        if echo.time == NOT_SENT {
            return Verdict::NotSent;
        }
        if stamp != echo.stamp {
            return Verdict::Stale;
        }
        // No send time left: it was answered (and a sent echo always has a base).
        let (Some(offset), Some(base)) = (echo.sent_after_base(), self.base) else {
            return Verdict::Duplicate;
        };
        let rtt = at.saturating_duration_since(base + Duration::from_nanos(offset));
        if rtt > self.timeout {
            Verdict::Late
        } else {
            echo.time = ANSWERED | nanos(rtt);
            Verdict::Counted
        }
    }

    pub(crate) fn all_answered(&self, sent: usize) -> bool {
        self.echoes[..sent].iter().all(|echo| echo.rtt().is_some())
    }

    /// RTTs of the echoes actually sent, in send order, in ms.
    pub fn into_rtts(self, sent: usize) -> Vec<Option<f64>> {
        self.echoes[..sent]
            .iter()
            .map(|echo| echo.rtt().map(|rtt| rtt.as_secs_f64() * 1000.0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread preempted between reading the two clocks (here 214 µs after every read) must
    /// place a datagram's arrival late, not early: an RTT under the true one let an echo beat
    /// the lab's injected delay.
    #[test]
    fn a_pause_between_the_clock_reads_never_places_an_arrival_early() {
        let origin = Instant::now();
        let wall_origin = Duration::from_secs(1_800_000_000);
        let pause = Duration::from_micros(214);
        let elapsed = std::cell::Cell::new(Duration::from_millis(50));
        let read = || {
            let now = elapsed.get();
            elapsed.set(now + pause);
            now
        };
        let (now, wall) = clock_pair(|| origin + read(), || wall_origin + read());
        let arrived = Duration::from_millis(40);
        let queued = engine::queued_for(wall_origin + arrived, wall).expect("queued");
        let at = now.checked_sub(queued).expect("after the origin");
        assert!(
            at >= origin + arrived,
            "placed {:?} early",
            (origin + arrived) - at
        );
        assert!(
            at - (origin + arrived) <= pause,
            "late by more than the pause"
        );
    }

    /// The 64th echo of a batch leaves at the end of the call, not at its start: on a lab path
    /// the kernel forwards each echo (and stamps its reply) inside the call, and timing every
    /// echo from the call's start made the RTTs at 10,000 echoes/s 68 µs instead of fping's 9.
    #[test]
    fn an_echo_of_a_batch_leaves_at_its_share_of_the_call() {
        let at = Instant::now();
        let took = Duration::from_micros(640);
        assert_eq!(left_at(at, took, 0, 64), at);
        assert_eq!(left_at(at, took, 32, 64), at + Duration::from_micros(320));
        assert_eq!(left_at(at, took, 63, 64), at + Duration::from_micros(630));
        assert_eq!(left_at(at, took, 0, 0), at, "an empty call");
    }

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

    /// 10,000 rounds of 20 echoes are alive at once in `vantage ping`: 40 bytes an echo was
    /// 8 MB of the agent's heap, 16 is 3.2 MB.
    #[test]
    fn an_echo_fits_in_16_bytes() {
        assert!(size_of::<Echo>() <= 16, "{} bytes", size_of::<Echo>());
    }

    #[test]
    fn an_rtt_keeps_its_nanoseconds_and_a_late_send_its_offset() {
        let t0 = Instant::now();
        let mut round = RoundState::new(3, Duration::from_secs(600));
        round.sent(0, t0, 7);
        round.sent(1, t0 + Duration::from_nanos(1), 7);
        round.sent(2, t0 + Duration::from_secs(600), 7);
        let rtt = Duration::from_nanos(1_234_567_891);
        let long = Duration::from_secs(599) + Duration::from_nanos(999_999_999);
        let at = t0 + Duration::from_nanos(1) + rtt;
        assert_eq!(round.accept(1, at, 7), Verdict::Counted);
        let at = t0 + Duration::from_secs(600) + Duration::from_nanos(3);
        assert_eq!(round.accept(2, at, 7), Verdict::Counted);
        assert_eq!(round.accept(0, t0 + long, 7), Verdict::Counted);
        let rtts = round.into_rtts(3);
        // Bit for bit what the ms of a `Duration` were.
        assert_eq!(rtts[0], Some(long.as_secs_f64() * 1000.0));
        assert_eq!(rtts[1], Some(rtt.as_secs_f64() * 1000.0));
        assert_eq!(
            rtts[2],
            Some(Duration::from_nanos(3).as_secs_f64() * 1000.0)
        );
    }

    #[test]
    fn an_echo_sent_before_the_first_one_is_timed_from_its_own_send() {
        let t0 = Instant::now();
        let mut round = RoundState::new(2, Duration::from_secs(1));
        round.sent(1, t0 + Duration::from_millis(10), 1);
        round.sent(0, t0, 0);
        assert_eq!(
            round.accept(1, t0 + Duration::from_millis(12), 1),
            Verdict::Counted
        );
        assert_eq!(
            round.accept(0, t0 + Duration::from_millis(1001), 0),
            Verdict::Late
        );
        assert_eq!(
            round.accept(0, t0 + Duration::from_millis(3), 0),
            Verdict::Counted
        );
        let expected = |ms| Some(Duration::from_millis(ms).as_secs_f64() * 1000.0);
        assert_eq!(round.into_rtts(2), vec![expected(3), expected(2)]);
    }

    /// IPv4 echoes go out with DF set: the kernel then gives them IP ID 0 instead of drawing one
    /// per packet from its hashed, shared ID table.
    #[test]
    fn ipv4_echoes_are_sent_with_dont_fragment() {
        let opened = open(Family::V4, SocketKind::Raw)
            .unwrap_or_else(|_| panic!("a raw ICMP socket: run as root or with CAP_NET_RAW"));
        assert_eq!(
            rustix::net::sockopt::ip_mtu_discover(&opened.socket).expect("IP_MTU_DISCOVER"),
            Ipv4PathMtuDiscovery::DO
        );
    }

    /// The buffers follow the offered rate up, never down, and what is kept is what the kernel
    /// reports (as root, past `net.core.rmem_max` with `SO_RCVBUFFORCE`).
    #[tokio::test]
    async fn socket_buffers_grow_with_the_offered_rate() {
        let opened = open(Family::V4, SocketKind::Raw)
            .unwrap_or_else(|_| panic!("a raw ICMP socket: run as root or with CAP_NET_RAW"));
        let socket = opened.socket;
        let recv = || getsockopt(&socket, sockopt::RcvBuf).expect("SO_RCVBUF");
        let mut buffers = Buffers::default();
        buffers.fit(&socket, Family::V4, 0.0);
        assert!(recv() >= MIN_BUFFER, "{} < {MIN_BUFFER}", recv());
        let rate = 100_000.0;
        buffers.fit(&socket, Family::V4, rate);
        let wanted = (rate * RECV_BYTES_PER_ECHO_PER_S) as usize;
        assert!(recv() >= wanted, "{} < {wanted} at {rate}/s", recv());
        let grown = recv();
        buffers.fit(&socket, Family::V4, 10.0);
        assert_eq!(recv(), grown, "a lower rate does not shrink the buffer");
    }

    /// A family's socket loop starts with its first round: an IPv4-only run starts no IPv6
    /// thread, and its IPv4 loop only when the round goes out.
    #[tokio::test]
    async fn a_socket_loop_starts_with_its_family_s_first_round() {
        let client = IcmpClient::new()
            .unwrap_or_else(|e| panic!("an ICMP socket: run as root or with CAP_NET_RAW: {e}"));
        let started = |family| match &client.endpoint(family).socket {
            Ok(handle) => handle.started.is_completed(),
            Err(why) => panic!("no {family:?} socket: {why}"),
        };
        assert!(!started(Family::V4) && !started(Family::V6));
        let plan = RoundPlan {
            count: 1,
            spacing: Duration::from_millis(10),
            timeout: Duration::from_secs(1),
        };
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let observation = client
            .round(localhost, plan, &CancellationToken::new())
            .await;
        assert!(observation.is_success(), "{observation:?}");
        assert!(
            started(Family::V4),
            "the IPv4 loop runs after an IPv4 round"
        );
        assert!(!started(Family::V6), "no IPv6 round, no IPv6 loop");
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
