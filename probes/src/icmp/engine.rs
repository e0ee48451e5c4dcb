//! The per-socket state machine behind [`super::IcmpClient`]: every round on one socket, in compact
//! arrays, driven by one loop ([`super::drive`]) from its deadlines ([`super::deadlines`]). No
//! locks, no task, timer or channel per round or echo; echoes are built into a preallocated batch
//! and go out in a few `sendmmsg` calls.
//!
//! A round lives in a slot of [`Engine::slots`]. Every echo of a round carries the same stamp:
//! the slot's index and generation, under the echo's tag ([`super::packet`]). A verified reply
//! therefore names its round directly (an array index, no table lookup), and a reply for a round
//! that already ended names an old generation and is dropped as late. The sequence number gives the
//! echo within the round (`seq - base_seq`).
//!
//! Pure bookkeeping: time is passed in, sockets are the caller's; tested on its own below.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::SockaddrStorage;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::deadlines::Deadlines;
use super::packet::{
    EchoKey, Family, Inbound, PAYLOAD_LEN, Rejected, SocketKind, classify, write_echo_request,
};
use super::{MAX_OUTSTANDING_PER_ADDRESS, RoundPlan, RoundState, Verdict};
use crate::observation::{FailureKind, Outcome};

/// Echoes built per batch (sent a few per `sendmmsg`), and datagrams read per `recvmmsg`.
pub(super) const BATCH: usize = 64;
/// The loop's passes (sends, then reads) are at least this far apart while echoes are due more
/// often (or half the shortest spacing, so no round's echoes bunch up): at 10,000 echoes/s, a
/// wake-up per 50 echoes rather than per 10, and one `recvmmsg` for their replies.
pub(super) const COALESCE: Duration = Duration::from_millis(5);
/// Bytes of one echo request.
pub(super) const REQUEST_LEN: usize = 8 + PAYLOAD_LEN;

/// Where a batch's rounds end, each with its index in the batch.
pub(super) type Results = mpsc::UnboundedSender<(u32, RoundEnd)>;

/// A round asked of the engine.
#[derive(Debug)]
pub(super) struct Request {
    pub addr: IpAddr,
    pub plan: RoundPlan,
    /// When the first echo goes out.
    pub start: Instant,
    pub stop: CancellationToken,
    pub reply: oneshot::Sender<RoundEnd>,
}

/// Many rounds with one plan, asked at once (`vantage ping`'s whole target list): no task,
/// channel or stop token per round; each round's end goes out on `results` with its index.
#[derive(Debug)]
pub(super) struct BatchRequest {
    /// (index in the caller's list, address, when its first echo goes out).
    pub targets: Vec<(u32, IpAddr, Instant)>,
    pub plan: RoundPlan,
    pub stop: CancellationToken,
    pub results: mpsc::UnboundedSender<(u32, RoundEnd)>,
}

/// What the loop is told by the rounds' callers.
#[derive(Debug)]
pub(super) enum Command {
    Start(Request),
    StartBatch(BatchRequest),
    /// Some round's stop token fired: look at every round's token.
    Stopped,
    /// These rounds of the batches answering on `results` send no more echoes (a [`super::Session`]
    /// dropping targets on a reload); their ends still go out.
    Cancel {
        results: Results,
        indices: Vec<u32>,
    },
}

/// How a round ended: the RTT of every echo sent, in send order, and its failure if any.
#[derive(Debug, Default)]
pub(super) struct RoundEnd {
    pub rtts: Vec<Option<f64>>,
    pub failure: Option<Outcome>,
}

/// Who waits for a round's end.
#[derive(Debug)]
enum Owner {
    One {
        stop: CancellationToken,
        reply: oneshot::Sender<RoundEnd>,
    },
    /// Round `index` of batch `batch` (a key of [`Engine::batches`]).
    Batch { batch: u32, index: u32 },
}

/// A batch's shared stop token and results channel, until its last round ends.
#[derive(Debug)]
struct BatchOwner {
    stop: CancellationToken,
    results: mpsc::UnboundedSender<(u32, RoundEnd)>,
    running: usize,
}

/// A running round. Kept small (its destination is built per send): at 10,000 targets every
/// round is alive at once, and this is most of `vantage ping`'s memory.
#[derive(Debug)]
struct Round {
    addr: IpAddr,
    plan: RoundPlan,
    start: Instant,
    base_seq: u16,
    stamp: u64,
    state: RoundState,
    sent: usize,
    last_send: Instant,
    /// The one deadline of this round the heap holds that is current (others are stale).
    deadline: Instant,
    stopping: bool,
    failure: Option<Outcome>,
    owner: Owner,
}

impl Round {
    fn sending(&self) -> bool {
        self.sent < self.plan.count as usize && !self.stopping
    }
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    round: Option<Round>,
}

/// Echoes ready to send: packets, destinations, and whose each one is.
#[derive(Debug)]
pub(super) struct SendBatch {
    pub packets: Box<[[u8; REQUEST_LEN]; BATCH]>,
    pub addrs: Box<[Option<SockaddrStorage>; BATCH]>,
    owners: [(u32, u32, Instant); BATCH],
    pub len: usize,
}

impl SendBatch {
    pub fn new() -> Self {
        let now = Instant::now();
        SendBatch {
            packets: Box::new([[0; REQUEST_LEN]; BATCH]),
            addrs: Box::new([None; BATCH]),
            owners: [(0, 0, now); BATCH],
            len: 0,
        }
    }
}

/// Every round of one socket.
#[derive(Debug)]
pub(super) struct Engine {
    family: Family,
    kind: SocketKind,
    ident: u16,
    key: EchoKey,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// (when, slot, generation): a round's next send or its end. Entries whose round moved on
    /// are skipped when they come up.
    deadlines: Deadlines,
    /// Echoes each address's rounds hold (at most [`MAX_OUTSTANDING_PER_ADDRESS`]).
    held: HashMap<IpAddr, usize>,
    batches: HashMap<u32, BatchOwner>,
    next_batch: u32,
    /// Echoes per second the running rounds offer, to size the socket buffers.
    offered_per_s: f64,
    /// The shortest spacing of the rounds started since the engine was last idle.
    min_spacing: Option<Duration>,
    rejected: Arc<AtomicU64>,
    stop_pending: bool,
    /// [`Command::Cancel`]s not yet applied: (whose, which).
    cancels: Vec<(Results, Vec<u32>)>,
    /// Ends of batches' rounds, sent together when the loop is about to wait
    /// ([`Engine::send_ended`]): one wake-up of a batch's reader per pass, not one per round
    /// (6,500 wake-ups of `vantage ping`'s main thread for 10,000 targets).
    ended: Vec<(u32, u32, RoundEnd)>,
}

impl Engine {
    pub fn new(
        family: Family,
        kind: SocketKind,
        ident: u16,
        key: EchoKey,
        rejected: Arc<AtomicU64>,
    ) -> Self {
        Engine {
            family,
            kind,
            ident,
            key,
            slots: Vec::new(),
            free: Vec::new(),
            deadlines: Deadlines::default(),
            held: HashMap::new(),
            batches: HashMap::new(),
            next_batch: 0,
            offered_per_s: 0.0,
            min_spacing: None,
            rejected,
            stop_pending: false,
            cancels: Vec::new(),
            ended: Vec::new(),
        }
    }

    pub fn offered_per_s(&self) -> f64 {
        self.offered_per_s
    }

    /// How far apart the loop's passes may be: [`COALESCE`], or half the shortest spacing.
    pub fn coalesce(&self) -> Duration {
        self.min_spacing
            .map_or(Duration::ZERO, |spacing| COALESCE.min(spacing / 2))
    }

    /// Take one command. Stops are only noted: [`Engine::apply_stops`] looks at every round once
    /// for however many arrived together (a SIGINT stops every round at once).
    pub fn command(&mut self, command: Command) {
        match command {
            Command::Start(request) => {
                let Request {
                    addr,
                    plan,
                    start,
                    stop,
                    reply,
                } = request;
                if stop.is_cancelled() {
                    let _ = reply.send(RoundEnd::default());
                    return;
                }
                if let Err(end) = self.start(addr, plan, start, Owner::One { stop, reply }) {
                    self.deliver(end.0, end.1);
                }
            }
            Command::StartBatch(request) => self.start_batch(request),
            Command::Stopped => self.stop_pending = true,
            Command::Cancel {
                results,
                mut indices,
            } => {
                indices.sort_unstable();
                self.cancels.push((results, indices));
            }
        }
    }

    pub fn apply_stops(&mut self, now: Instant) {
        if std::mem::take(&mut self.stop_pending) {
            self.stopped(now);
        }
        if !self.cancels.is_empty() {
            self.cancelled(now);
        }
    }

    fn start_batch(&mut self, request: BatchRequest) {
        let BatchRequest {
            targets,
            plan,
            stop,
            results,
        } = request;
        if stop.is_cancelled() {
            for (index, ..) in targets {
                let _ = results.send((index, RoundEnd::default()));
            }
            return;
        }
        let batch = self.next_batch;
        self.next_batch = self.next_batch.wrapping_add(1);
        self.batches.insert(
            batch,
            BatchOwner {
                stop,
                results,
                running: targets.len(),
            },
        );
        for (index, addr, start) in targets {
            if let Err((owner, end)) = self.start(addr, plan, start, Owner::Batch { batch, index })
            {
                self.deliver(owner, end);
            }
        }
    }

    /// Start a round, or hand back its owner with why it cannot run.
    fn start(
        &mut self,
        addr: IpAddr,
        plan: RoundPlan,
        start: Instant,
        owner: Owner,
    ) -> Result<(), (Owner, RoundEnd)> {
        let count = plan.count as usize;
        let already = self.held.get(&addr).copied().unwrap_or(0);
        if already + count > MAX_OUTSTANDING_PER_ADDRESS {
            let message = format!(
                "cannot send {count} echoes to {addr}: {already} echoes to it already await \
                 replies, and at most {MAX_OUTSTANDING_PER_ADDRESS} can be told apart (16-bit \
                 sequence numbers); lower `count`, or probe {addr} from fewer probes or targets"
            );
            let end = RoundEnd {
                rtts: Vec::new(),
                failure: Some(Outcome::failure(FailureKind::Send, message)),
            };
            return Err((owner, end));
        }
        if count == 0 {
            return Err((owner, RoundEnd::default()));
        }
        *self.held.entry(addr).or_default() += count;
        self.offered_per_s += 1.0 / plan.spacing.as_secs_f64().max(1e-3);
        self.min_spacing = Some(
            self.min_spacing
                .map_or(plan.spacing, |s| s.min(plan.spacing)),
        );
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.round = Some(Round {
            addr,
            plan,
            start,
            base_seq: rand::random(),
            stamp: (u64::from(slot.generation) << 32) | u64::from(index),
            state: RoundState::new(count, plan.timeout),
            sent: 0,
            last_send: start,
            deadline: start,
            stopping: false,
            failure: None,
            owner,
        });
        self.deadlines.push((start, index, slot.generation), None);
        Ok(())
    }

    /// Whether a round's caller stopped it or went away.
    fn abandoned(&self, owner: &Owner) -> bool {
        match owner {
            Owner::One { stop, reply } => stop.is_cancelled() || reply.is_closed(),
            Owner::Batch { batch, .. } => self
                .batches
                .get(batch)
                .is_none_or(|b| b.stop.is_cancelled() || b.results.is_closed()),
        }
    }

    /// Hand a round's end to whoever waits for it (a batch's: at [`Engine::send_ended`]).
    fn deliver(&mut self, owner: Owner, end: RoundEnd) {
        match owner {
            Owner::One { reply, .. } => {
                let _ = reply.send(end);
            }
            Owner::Batch { batch, index } => self.ended.push((batch, index, end)),
        }
    }

    /// Send the batches' round ends that [`Engine::deliver`] kept, and let go of the batches
    /// whose last round ended.
    pub fn send_ended(&mut self) {
        let mut ended = std::mem::take(&mut self.ended);
        for (batch, index, end) in ended.drain(..) {
            if let Some(waiting) = self.batches.get_mut(&batch) {
                let _ = waiting.results.send((index, end));
                waiting.running -= 1;
                if waiting.running == 0 {
                    self.batches.remove(&batch);
                }
            }
        }
        self.ended = ended;
    }

    /// Rounds whose stop token fired send no more echoes; those already sent are still awaited.
    fn stopped(&mut self, now: Instant) {
        for index in 0..self.slots.len() {
            let cancelled = match &self.slots[index].round {
                Some(round) if !round.stopping => match &round.owner {
                    Owner::One { stop, .. } => stop.is_cancelled(),
                    Owner::Batch { batch, .. } => self
                        .batches
                        .get(batch)
                        .is_none_or(|b| b.stop.is_cancelled()),
                },
                _ => false,
            };
            if cancelled {
                self.stop_round(index as u32, now);
            }
        }
    }

    /// The rounds named by [`Command::Cancel`]s: one pass over the slots for all of them (a reload
    /// is rare, and may drop thousands of targets at once).
    fn cancelled(&mut self, now: Instant) {
        let cancels = std::mem::take(&mut self.cancels);
        for index in 0..self.slots.len() {
            let named = match &self.slots[index].round {
                Some(Round {
                    stopping: false,
                    owner: Owner::Batch { batch, index },
                    ..
                }) => self.batches.get(batch).is_some_and(|owner| {
                    cancels.iter().any(|(results, indices)| {
                        owner.results.same_channel(results) && indices.binary_search(index).is_ok()
                    })
                }),
                _ => false,
            };
            if named {
                self.stop_round(index as u32, now);
            }
        }
    }

    /// Send no more echoes for this round: it ends now if nothing sent awaits a reply, else when
    /// the last echo sent times out.
    fn stop_round(&mut self, index: u32, now: Instant) {
        let Some(round) = &mut self.slots[index as usize].round else {
            return;
        };
        round.stopping = true;
        if round.sent == 0 || round.state.all_answered(round.sent) {
            self.finish(index);
        } else {
            let end = round.last_send + round.plan.timeout;
            self.reschedule(index, end.max(now), None);
        }
    }

    /// `delay`: `at` is an echo's send time plus this fixed delay (see [`Deadlines::push`]).
    fn reschedule(&mut self, index: u32, at: Instant, delay: Option<Duration>) {
        let slot = &mut self.slots[index as usize];
        if let Some(round) = &mut slot.round {
            round.deadline = at;
            self.deadlines.push((at, index, slot.generation), delay);
        }
    }

    /// When the loop must next wake for a send or a round's end.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some((at, index, generation)) = self.deadlines.peek() {
            if self.current(at, index, generation) {
                return Some(at);
            }
            self.deadlines.pop();
        }
        None
    }

    fn current(&self, at: Instant, index: u32, generation: u32) -> bool {
        let slot = &self.slots[index as usize];
        slot.generation == generation && slot.round.as_ref().is_some_and(|r| r.deadline == at)
    }

    /// End the rounds whose time is up and build the echoes due by `now` into `batch` (until it is
    /// full). The caller sends them and reports with [`Engine::sent`] or [`Engine::unsent`].
    pub fn due(&mut self, now: Instant, batch: &mut SendBatch) {
        batch.len = 0;
        while batch.len < BATCH {
            let Some((at, index, generation)) = self.deadlines.peek() else {
                break;
            };
            if at > now {
                break;
            }
            self.deadlines.pop();
            if !self.current(at, index, generation) {
                continue;
            }
            let abandoned = match &self.slots[index as usize].round {
                Some(round) => round.sending() && self.abandoned(&round.owner),
                None => continue,
            };
            let Some(round) = &mut self.slots[index as usize].round else {
                continue;
            };
            if abandoned {
                // Its caller stopped or went away: nothing more to send.
                round.stopping = true;
            }
            if !round.sending() {
                let end = round.last_send + round.plan.timeout;
                if round.sent == 0 || round.state.all_answered(round.sent) || now >= end {
                    self.finish(index);
                } else {
                    self.reschedule(index, end, None);
                }
                continue;
            }
            let seq = round.base_seq.wrapping_add(round.sent as u16);
            let k = batch.len;
            write_echo_request(
                &mut batch.packets[k],
                round.addr,
                self.ident,
                seq,
                round.stamp,
                &self.key,
            );
            batch.addrs[k] = Some(SockaddrStorage::from(SocketAddr::new(round.addr, 0)));
            batch.owners[k] = (index, generation, at);
            batch.len += 1;
        }
    }

    /// Echo `k` of `batch` left at `at` (`error`: the kernel refused it; it counts as sent and
    /// lost, like an echo the network dropped, and names the round's failure).
    pub fn sent(&mut self, batch: &SendBatch, k: usize, at: Instant, error: Option<nix::Error>) {
        let (index, generation, _) = batch.owners[k];
        let slot = &mut self.slots[index as usize];
        if slot.generation != generation {
            return;
        }
        let Some(round) = &mut slot.round else { return };
        round.state.sent(round.sent, at, round.stamp);
        round.sent += 1;
        round.last_send = at;
        if let Some(error) = error {
            let kind = match error {
                nix::Error::ENETUNREACH | nix::Error::EHOSTUNREACH => FailureKind::Unreachable,
                _ => FailureKind::Send,
            };
            let message = format!("sending to {}: {}", round.addr, error.desc());
            round.failure = Some(Outcome::failure(kind, message));
        }
        // The next send is due a spacing after this one was (they leave in deadline order); the
        // end, a timeout after this echo left.
        let (next, delay) = if round.sending() {
            let spacing = round.plan.spacing;
            (round.start + spacing * round.sent as u32, spacing)
        } else {
            (at + round.plan.timeout, round.plan.timeout)
        };
        self.reschedule(index, next, Some(delay));
    }

    /// Echo `k` of `batch` could not go out yet (the send buffer is full): it stays due, untouched.
    pub fn unsent(&mut self, batch: &SendBatch, k: usize) {
        let (index, generation, at) = batch.owners[k];
        if self.slots[index as usize].generation == generation {
            self.deadlines.push((at, index, generation), None);
        }
    }

    /// A datagram received at `at` from `from`: counted if it is a reply to a running round's echo.
    /// Returns what became of it, for tests and trace logs.
    pub fn receive(&mut self, datagram: &[u8], from: IpAddr, at: Instant) -> Received {
        match classify(
            datagram,
            from,
            self.family,
            self.kind,
            self.ident,
            &self.key,
        ) {
            Ok(Inbound::EchoReply { from, seq, stamp }) => self.reply(from, seq, stamp, at),
            Ok(Inbound::Unreachable {
                target,
                seq,
                reporter,
                code,
            }) => {
                // Routers quote only 8 bytes (no stamp): find the round by address. A scan, but
                // unreachables are rate-limited by every router (1,000/s by default on Linux).
                let mut matched = false;
                for slot in &mut self.slots {
                    let Some(round) = &mut slot.round else {
                        continue;
                    };
                    if round.addr == target
                        && usize::from(seq.wrapping_sub(round.base_seq)) < round.sent
                    {
                        round.failure = Some(Outcome::failure(
                            FailureKind::Unreachable,
                            format!("{reporter} reports {target} unreachable (ICMP code {code})"),
                        ));
                        matched = true;
                    }
                }
                if matched {
                    Received::Unreachable
                } else {
                    Received::NoRound
                }
            }
            Err(Rejected::BadTag) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "rejected an echo reply whose tag does not verify");
                Received::Rejected(Rejected::BadTag)
            }
            Err(reason) => Received::Rejected(reason),
        }
    }

    fn reply(&mut self, from: IpAddr, seq: u16, stamp: u64, at: Instant) -> Received {
        let index = stamp as u32;
        let generation = (stamp >> 32) as u32;
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return Received::NoRound;
        };
        if slot.generation != generation {
            return Received::NoRound;
        }
        let Some(round) = &mut slot.round else {
            return Received::NoRound;
        };
        if round.addr != from {
            // The tag covers the address, so this cannot verify; checked all the same.
            return Received::NoRound;
        }
        let echo = usize::from(seq.wrapping_sub(round.base_seq));
        let verdict = round.state.accept(echo, at, stamp);
        if verdict != Verdict::Counted {
            tracing::debug!(%from, ?verdict, "reply not counted");
        } else if !round.sending() && round.state.all_answered(round.sent) {
            self.finish(index);
        }
        Received::Reply(verdict)
    }

    fn finish(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        let Some(round) = slot.round.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        if self.free.len() == self.slots.len() {
            self.min_spacing = None;
        }
        let count = round.plan.count as usize;
        if let Some(held) = self.held.get_mut(&round.addr) {
            *held = held.saturating_sub(count);
            if *held == 0 {
                self.held.remove(&round.addr);
            }
        }
        self.offered_per_s =
            (self.offered_per_s - 1.0 / round.plan.spacing.as_secs_f64().max(1e-3)).max(0.0);
        let end = RoundEnd {
            rtts: round.state.into_rtts(round.sent),
            failure: round.failure,
        };
        self.deliver(round.owner, end);
    }

    /// Rounds running now.
    #[cfg(test)]
    fn running(&self) -> usize {
        self.slots.iter().filter(|s| s.round.is_some()).count()
    }
}

/// What [`Engine::receive`] made of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Received {
    Reply(Verdict),
    Unreachable,
    /// Ours, but for no running round (late: its round ended).
    NoRound,
    Rejected(Rejected),
}

/// How long a datagram sat in the socket queue, from its kernel receive stamp and the wall clock
/// read with `now`; None when the clocks disagree (a wall-clock step) or there is no stamp.
pub(super) fn queued_for(stamp: Duration, wall_now: Duration) -> Option<Duration> {
    wall_now
        .checked_sub(stamp)
        .filter(|q| *q < Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::icmp::packet::EchoKey;
    use pnet_packet::icmp::{self as icmp_packet, IcmpPacket, IcmpTypes};

    const TARGET: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 2, 2));
    const IDENT: u16 = 0x4242;

    fn engine() -> Engine {
        Engine::new(
            Family::V4,
            SocketKind::Raw,
            IDENT,
            EchoKey::from_secret(&[3; 16]),
            Arc::new(AtomicU64::new(0)),
        )
    }

    fn plan(count: u32) -> RoundPlan {
        RoundPlan {
            count,
            spacing: Duration::from_millis(10),
            timeout: Duration::from_millis(100),
        }
    }

    fn start(
        engine: &mut Engine,
        addr: IpAddr,
        plan: RoundPlan,
        at: Instant,
    ) -> oneshot::Receiver<RoundEnd> {
        let (reply, done) = oneshot::channel();
        engine.command(Command::Start(Request {
            addr,
            plan,
            start: at,
            stop: CancellationToken::new(),
            reply,
        }));
        done
    }

    /// The datagram a raw IPv4 socket delivers when the target answers echo `k` of `batch`.
    fn reply_to(batch: &SendBatch, k: usize, from: IpAddr) -> Vec<u8> {
        let mut icmp = batch.packets[k].to_vec();
        icmp[0] = IcmpTypes::EchoReply.0;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let checksum = icmp_packet::checksum(&IcmpPacket::new(&icmp).expect("header"));
        icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
        let IpAddr::V4(source) = from else {
            panic!("IPv4 only")
        };
        let mut ip = vec![0x45, 0, 0, 84, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&source.octets());
        ip.extend_from_slice(&[198, 18, 0, 2]);
        ip.extend_from_slice(&icmp);
        ip
    }

    /// Send everything due at `now`, all accepted by the kernel.
    fn send_all(engine: &mut Engine, batch: &mut SendBatch, now: Instant) -> usize {
        engine.due(now, batch);
        for k in 0..batch.len {
            engine.sent(batch, k, now, None);
        }
        batch.len
    }

    #[test]
    fn a_reply_for_a_round_that_already_ended_is_not_counted_in_the_next() {
        let mut engine = engine();
        let mut batch = SendBatch::new();
        let t0 = Instant::now();
        let mut first = start(&mut engine, TARGET, plan(1), t0);
        assert_eq!(send_all(&mut engine, &mut batch, t0), 1);
        let late = reply_to(&batch, 0, TARGET);
        // The round times out; a new round to the same target takes the same slot.
        engine.due(t0 + Duration::from_millis(100), &mut batch);
        assert_eq!(batch.len, 0);
        let ended = first
            .try_recv()
            .expect("the first round ended at its timeout");
        assert_eq!(ended.rtts, vec![None]);
        let t1 = t0 + Duration::from_millis(100);
        let mut second = start(&mut engine, TARGET, plan(1), t1);
        assert_eq!(send_all(&mut engine, &mut batch, t1), 1);
        // The first round's reply arrives now: its slot's generation moved on.
        assert_eq!(
            engine.receive(&late, TARGET, t1 + Duration::from_millis(1)),
            Received::NoRound
        );
        let on_time = reply_to(&batch, 0, TARGET);
        assert_eq!(
            engine.receive(&on_time, TARGET, t1 + Duration::from_millis(2)),
            Received::Reply(Verdict::Counted)
        );
        let ended = second.try_recv().expect("all answered: the round ended");
        assert_eq!(ended.rtts.len(), 1);
        assert!((ended.rtts[0].unwrap_or_default() - 2.0).abs() < 1e-6);
        assert_eq!(engine.running(), 0);
    }

    #[test]
    fn a_full_send_buffer_delays_echoes_without_losing_or_double_counting_them() {
        let mut engine = engine();
        let mut batch = SendBatch::new();
        let t0 = Instant::now();
        let mut rounds: Vec<_> = (0..3)
            .map(|i| {
                let addr = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 0, i + 1));
                (addr, start(&mut engine, addr, plan(2), t0))
            })
            .collect();
        engine.due(t0, &mut batch);
        assert_eq!(batch.len, 3);
        // The kernel took the first echo, then said EAGAIN.
        engine.sent(&batch, 0, t0, None);
        engine.unsent(&batch, 1);
        engine.unsent(&batch, 2);
        // Writable again 3 ms later: the two echoes left go out then, first echo of each round.
        let t1 = t0 + Duration::from_millis(3);
        assert_eq!(engine.next_deadline(), Some(t0));
        engine.due(t1, &mut batch);
        assert_eq!(batch.len, 2);
        let seqs: Vec<u16> = (0..2)
            .map(|k| u16::from_be_bytes([batch.packets[k][6], batch.packets[k][7]]))
            .collect();
        for k in 0..2 {
            engine.sent(&batch, k, t1, None);
        }
        let replies: Vec<_> = (0..2)
            .map(|k| reply_to(&batch, k, rounds[k + 1].0))
            .collect();
        for (k, reply) in replies.iter().enumerate() {
            assert_eq!(
                engine.receive(reply, rounds[k + 1].0, t1 + Duration::from_millis(1)),
                Received::Reply(Verdict::Counted)
            );
        }
        assert_ne!(seqs[0], seqs[1].wrapping_add(1), "distinct rounds");
        // Everything else runs its course: second echoes, then the timeouts.
        let mut now = t1;
        while let Some(next) = engine.next_deadline() {
            now = next.max(now);
            send_all(&mut engine, &mut batch, now);
        }
        let ended: Vec<RoundEnd> = rounds
            .iter_mut()
            .map(|(_, done)| done.try_recv().expect("ended"))
            .collect();
        for end in &ended {
            assert_eq!(end.rtts.len(), 2, "both echoes sent, once each: {end:?}");
        }
        // The echo the kernel took at once was never answered; the two delayed ones were, and
        // their RTTs start when they really left (t1), not when they were first due (t0).
        assert_eq!(ended[0].rtts, vec![None, None]);
        for end in &ended[1..] {
            assert!(
                (end.rtts[0].unwrap_or_default() - 1.0).abs() < 1e-6,
                "{end:?}"
            );
        }
    }

    #[test]
    fn a_stop_ends_sending_but_awaits_the_echoes_already_sent() {
        let mut engine = engine();
        let mut batch = SendBatch::new();
        let t0 = Instant::now();
        let stop = CancellationToken::new();
        let (reply, mut done) = oneshot::channel();
        engine.command(Command::Start(Request {
            addr: TARGET,
            plan: plan(5),
            start: t0,
            stop: stop.clone(),
            reply,
        }));
        assert_eq!(send_all(&mut engine, &mut batch, t0), 1);
        let answer = reply_to(&batch, 0, TARGET);
        stop.cancel();
        engine.command(Command::Stopped);
        engine.apply_stops(t0 + Duration::from_millis(1));
        assert_eq!(
            send_all(&mut engine, &mut batch, t0 + Duration::from_millis(10)),
            0
        );
        assert!(done.try_recv().is_err(), "the echo sent is still awaited");
        assert_eq!(
            engine.receive(&answer, TARGET, t0 + Duration::from_millis(12)),
            Received::Reply(Verdict::Counted)
        );
        let ended = done.try_recv().expect("answered: the round ended");
        assert_eq!(ended.rtts.len(), 1);
        assert_eq!(engine.running(), 0);
    }

    #[test]
    fn a_batch_ends_each_round_under_its_index_and_stops_as_one() {
        let mut engine = engine();
        let mut batch = SendBatch::new();
        let t0 = Instant::now();
        let stop = CancellationToken::new();
        let (results, mut ended) = mpsc::unbounded_channel();
        let addrs: Vec<IpAddr> = (1..=3)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 0, i)))
            .collect();
        engine.command(Command::StartBatch(BatchRequest {
            // Indices as the caller numbered its list (not 0..n), starts 1 ms apart.
            targets: addrs
                .iter()
                .enumerate()
                .map(|(i, &addr)| (10 + i as u32, addr, t0 + Duration::from_millis(i as u64)))
                .collect(),
            plan: plan(5),
            stop: stop.clone(),
            results,
        }));
        // A round of another caller, on the same socket, must not be stopped with the batch.
        let mut alone = start(&mut engine, TARGET, plan(2), t0);
        let t2 = t0 + Duration::from_millis(2);
        assert_eq!(
            send_all(&mut engine, &mut batch, t2),
            4,
            "first echo of each"
        );
        let answers: Vec<(IpAddr, Vec<u8>)> = (0..batch.len)
            .map(|k| {
                let to = match batch.addrs[k].and_then(|a| a.as_sockaddr_in().map(|v4| v4.ip())) {
                    Some(ip) => IpAddr::V4(ip),
                    None => panic!("an IPv4 destination"),
                };
                (to, reply_to(&batch, k, to))
            })
            .collect();
        stop.cancel();
        engine.command(Command::Stopped);
        engine.apply_stops(t2);
        // The batch's rounds await their first replies and send nothing more.
        let mut now = t2;
        for (from, answer) in &answers {
            now += Duration::from_millis(1);
            assert_eq!(
                engine.receive(answer, *from, now),
                Received::Reply(Verdict::Counted)
            );
        }
        assert!(
            ended.try_recv().is_err(),
            "ends wait for the end of the pass, to go out together"
        );
        engine.send_ended();
        let mut got = Vec::new();
        while let Ok((index, end)) = ended.try_recv() {
            got.push((index, end.rtts.len(), end.rtts[0].is_some()));
        }
        got.sort();
        assert_eq!(got, vec![(10, 1, true), (11, 1, true), (12, 1, true)]);
        assert!(ended.is_closed(), "the batch is gone with its last round");
        // The other caller's round goes on: its second echo is sent at 10 ms.
        assert!(alone.try_recv().is_err());
        assert_eq!(
            send_all(&mut engine, &mut batch, t0 + Duration::from_millis(10)),
            1
        );
        assert_eq!(engine.running(), 1);
    }

    /// Passes coalesce at high rates, but never so far apart that a round's own echoes would go
    /// out together (1 ms spacing: no coalescing), and not at all once the engine is idle.
    #[test]
    fn passes_coalesce_by_at_most_half_the_shortest_spacing() {
        let mut engine = engine();
        let mut batch = SendBatch::new();
        let t0 = Instant::now();
        assert_eq!(engine.coalesce(), Duration::ZERO);
        let slow = RoundPlan {
            spacing: Duration::from_millis(100),
            ..plan(1)
        };
        let _slow = start(&mut engine, TARGET, slow, t0);
        assert_eq!(engine.coalesce(), COALESCE);
        let fast = RoundPlan {
            spacing: Duration::from_millis(1),
            ..plan(1)
        };
        let other = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 0, 1));
        let _fast = start(&mut engine, other, fast, t0);
        assert_eq!(engine.coalesce(), Duration::from_micros(500));
        // Both rounds send their echo, then time out: the engine is idle again.
        send_all(&mut engine, &mut batch, t0);
        while let Some(next) = engine.next_deadline() {
            send_all(&mut engine, &mut batch, next);
        }
        assert_eq!(engine.running(), 0);
        assert_eq!(engine.coalesce(), Duration::ZERO);
    }

    #[test]
    fn garbage_and_foreign_datagrams_between_replies_change_nothing() {
        let mut engine = engine();
        let mut batch = SendBatch::new();
        let t0 = Instant::now();
        let mut done = start(&mut engine, TARGET, plan(1), t0);
        send_all(&mut engine, &mut batch, t0);
        let reply = reply_to(&batch, 0, TARGET);
        let at = t0 + Duration::from_millis(1);
        assert!(matches!(
            engine.receive(&[], TARGET, at),
            Received::Rejected(_)
        ));
        assert!(matches!(
            engine.receive(&[0x45; 19], TARGET, at),
            Received::Rejected(_)
        ));
        // An IPv6 datagram on the IPv4 socket, and our reply claimed by another source.
        let v6: IpAddr = "fd00::2".parse().expect("addr");
        assert!(matches!(
            engine.receive(&reply[20..], v6, at),
            Received::Rejected(_)
        ));
        let other = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 2, 3));
        assert_eq!(
            engine.receive(&reply_to(&batch, 0, other), other, at),
            Received::Rejected(Rejected::BadTag)
        );
        assert_eq!(engine.rejected.load(Ordering::Relaxed), 1);
        assert_eq!(
            engine.receive(&reply, TARGET, at),
            Received::Reply(Verdict::Counted)
        );
        assert_eq!(
            engine.receive(&reply, TARGET, at),
            Received::NoRound,
            "the round ended with its last reply; a duplicate finds nothing"
        );
        let ended = done.try_recv().expect("ended");
        assert!((ended.rtts[0].unwrap_or_default() - 1.0).abs() < 1e-6);
    }
}
