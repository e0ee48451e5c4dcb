//! mtr-style path traces: where along the path does it hurt?
//!
//! The engine is `trippy-core` (pinned to an exact version: its API is explicitly unstable),
//! wrapped behind our own types so nothing of it leaks into the rest of vantage:
//! [`TraceSettings`] in, a [`TraceReport`] (one [`Hop`] per TTL) out. On top of the report sit pure
//! functions: [`locate_loss`] (the first hop where loss begins *and persists* to the destination),
//! [`locate_latency_step`] (the hop where latency steps up and stays up, in [`latency`]),
//! [`verdict_text`] (both in words) and [`render_report`] (an `mtr --report` table).
//!
//! ## Privileges
//! trippy needs raw sockets (`CAP_NET_RAW`) on Linux: its unprivileged mode sends over ping
//! sockets with `IP_HDRINCL`, which Linux refuses (IPv4), and cannot match the replies to what it
//! sent (IPv6; the kernel rewrites the echo identifier). So a trace without the capability is
//! refused up front with [`NEEDS_CAP_NET_RAW`], a `send` failure, never run to a false "not reached".
//!
//! ## Flow-stable probing
//! Under ECMP, routers hash a packet's flow fields to pick a path; a classic traceroute varies
//! those fields per probe and so stitches several paths into one. Here:
//! - UDP keeps both ports fixed and carries the probe's sequence number in the UDP checksum
//!   (Paris traceroute) over IPv4, or in the IPv6 payload length (Dublin traceroute) over IPv6.
//! - ICMP echo keeps the identifier fixed; only the sequence (and so the checksum) varies, which
//!   ECMP hashes on addresses and protocol do not look at.
//! - TCP: trippy keeps the destination port fixed and carries the sequence in the *source port*,
//!   so TCP traces are not flow-stable; prefer UDP or ICMP where ECMP matters.
//!
//! Reading loss at the destination: ICMP echo replies are not rate-limited by Linux hosts, but UDP
//! probes are answered with ICMP port unreachables, which are (a burst of 6, then one a second
//! per source by default). Measure loss with ICMP; use UDP for flow-stable path discovery.
//!
//! The tracer is synchronous (trippy runs its own send/receive loop); [`run`] moves it to a
//! blocking thread, [`run_blocking`] runs it on the caller's thread (e.g. a thread that has entered
//! a network namespace). A run lasts at most `rounds × round_duration + grace`.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

mod latency;

pub use latency::{
    LATENCY_STEP_JITTER_FACTOR, LatencyStep, MIN_LATENCY_STEP_MS, locate_latency_step,
};

use crate::net::{IpPreference, resolve};
use crate::observation::{FailureKind, Measurement, Observation, Outcome};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TraceProtocol {
    #[default]
    Icmp,
    Udp,
    Tcp,
}

/// One path trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// A name or an IP literal.
    pub target: String,
    pub ip: IpPreference,
    pub protocol: TraceProtocol,
    /// Probes per hop (mtr's `-c`).
    pub rounds: usize,
    /// How long one round (one probe per TTL) takes at least and at most.
    pub round_duration: Duration,
    /// How long to wait for late replies after the target answered in a round.
    pub grace: Duration,
    pub first_ttl: u8,
    pub max_ttl: u8,
    /// Destination port for UDP (default 33434) and TCP (default 80).
    pub port: Option<u16>,
    /// Whether this process may open raw sockets (CAP_NET_RAW). Without it the trace is refused
    /// (see the module docs): trippy cannot trace over Linux ping sockets.
    pub privileged: bool,
}

impl TraceSettings {
    pub fn new(target: impl Into<String>) -> Self {
        TraceSettings {
            target: target.into(),
            ip: IpPreference::Any,
            protocol: TraceProtocol::Icmp,
            rounds: 10,
            round_duration: Duration::from_secs(1),
            grace: Duration::from_millis(100),
            first_ttl: 1,
            max_ttl: 30,
            port: None,
            privileged: true,
        }
    }

    /// The longest a run can take once the target is resolved.
    pub fn max_duration(&self) -> Duration {
        self.round_duration * u32::try_from(self.rounds).unwrap_or(u32::MAX) + self.grace
    }
}

/// The `trace` measurement, with one `trace_hop` per entry of `hops`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceReport {
    pub target: IpAddr,
    /// Hops from the first TTL to the destination (or to the last TTL that answered, plus one
    /// silent hop after it when the destination was not reached).
    pub hops: Vec<Hop>,
    pub reached: bool,
    /// FNV-1a 64 of the responding addresses per TTL (silent TTLs as `*`), in hex: equal hashes,
    /// same path. Stable across runs and versions.
    pub path_hash: String,
    /// Whether `path_hash` differs from the previous trace of the same target. One trace cannot
    /// know: always `false` here, set by whoever keeps the previous hash (the agent's trace probe).
    pub path_changed: bool,
}

/// A trace that did not run: no target address, no hops.
impl Default for TraceReport {
    fn default() -> Self {
        TraceReport::new(IpAddr::from([0, 0, 0, 0]), Vec::new())
    }
}

/// One TTL of a trace (the `trace_hop` measurement). Serialized with `address` too, the first of
/// `addresses` (null for a silent hop), as `trace_hop` has it in the outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    pub ttl: u8,
    /// Every address that answered for this TTL (more than one: the path changed, or ECMP).
    pub addresses: Vec<IpAddr>,
    pub sent: u32,
    pub received: u32,
    pub loss_pct: f64,
    pub rtt_last_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_best_ms: Option<f64>,
    pub rtt_worst_ms: Option<f64>,
    pub rtt_stddev_ms: Option<f64>,
}

impl Hop {
    fn is_silent(&self) -> bool {
        self.received == 0
    }
}

impl Serialize for Hop {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut hop = serializer.serialize_struct("Hop", 11)?;
        hop.serialize_field("ttl", &self.ttl)?;
        hop.serialize_field("address", &self.addresses.first())?;
        hop.serialize_field("addresses", &self.addresses)?;
        hop.serialize_field("sent", &self.sent)?;
        hop.serialize_field("received", &self.received)?;
        hop.serialize_field("loss_pct", &self.loss_pct)?;
        hop.serialize_field("rtt_last_ms", &self.rtt_last_ms)?;
        hop.serialize_field("rtt_avg_ms", &self.rtt_avg_ms)?;
        hop.serialize_field("rtt_best_ms", &self.rtt_best_ms)?;
        hop.serialize_field("rtt_worst_ms", &self.rtt_worst_ms)?;
        hop.serialize_field("rtt_stddev_ms", &self.rtt_stddev_ms)?;
        hop.end()
    }
}

impl TraceReport {
    pub fn new(target: IpAddr, hops: Vec<Hop>) -> Self {
        let reached = hops.iter().any(|h| h.addresses.contains(&target));
        let path_hash = path_hash(&hops);
        TraceReport {
            target,
            hops,
            reached,
            path_hash,
            path_changed: false,
        }
    }

    /// The hop the destination answered at, if it did.
    pub fn destination(&self) -> Option<&Hop> {
        self.hops
            .iter()
            .find(|h| h.addresses.contains(&self.target))
    }
}

/// The addresses that answered at each TTL, first TTL first (empty: silent): what a trace says
/// about the path, for [`same_path`].
pub type Path = Vec<Vec<IpAddr>>;

impl TraceReport {
    pub fn path(&self) -> Path {
        self.hops.iter().map(|h| h.addresses.clone()).collect()
    }
}

/// Whether `current` is the same path as `previous`, reading a silent TTL as "unknown", not as a
/// change: under loss a hop or the destination often misses every probe of a trace, and that
/// says nothing about the route. Different when a TTL that answered in both answered from no
/// common address, or when both reached the destination at different TTLs with a hop answering
/// in between (only silent TTLs in between: the destination's probes at the sooner TTL were all
/// lost, and a probe sent beyond it answered). (A hash of the
/// path cannot tell a silent hop from a new one; this is why the agent keeps the hops.)
pub fn same_path(previous: &[Vec<IpAddr>], current: &[Vec<IpAddr>], destination: IpAddr) -> bool {
    let reached_at = |path: &[Vec<IpAddr>]| {
        path.iter()
            .position(|addresses| addresses.contains(&destination))
    };
    if let (Some(a), Some(b)) = (reached_at(previous), reached_at(current))
        && a != b
    {
        // The destination answered later in one trace only because every probe at the TTL
        // where the other met it was lost (trippy's probes beyond it got through): if nothing
        // answered in between, that is loss, not a longer path.
        let (sooner, later, longer) = if a < b {
            (a, b, current)
        } else {
            (b, a, previous)
        };
        if longer[sooner..later]
            .iter()
            .any(|addresses| !addresses.is_empty())
        {
            return false;
        }
    }
    previous.iter().zip(current).all(|(before, now)| {
        before.is_empty() || now.is_empty() || before.iter().any(|a| now.contains(a))
    })
}

/// [`same_path`]'s reference for the next trace: `current`, with the silent TTLs filled from
/// `previous` (the same path, known better).
pub fn merge_path(previous: &[Vec<IpAddr>], current: &[Vec<IpAddr>]) -> Path {
    let mut merged: Path = current.to_vec();
    for (ttl, before) in previous.iter().enumerate() {
        match merged.get_mut(ttl) {
            Some(now) if now.is_empty() => now.clone_from(before),
            Some(_) => {}
            None => merged.push(before.clone()),
        }
    }
    merged
}

fn path_hash(hops: &[Hop]) -> String {
    let mut text = String::new();
    for hop in hops {
        let mut addresses: Vec<String> = hop.addresses.iter().map(IpAddr::to_string).collect();
        addresses.sort();
        let joined = if addresses.is_empty() {
            "*".to_owned()
        } else {
            addresses.join(",")
        };
        let _ = write!(text, "{}:{joined};", hop.ttl);
    }
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Why a trace without `CAP_NET_RAW` is refused, and how to grant it.
pub const NEEDS_CAP_NET_RAW: &str = "path traces need raw sockets (CAP_NET_RAW), which this process lacks; the tracer (trippy) cannot trace over Linux ping sockets, so net.ipv4.ping_group_range does not help: run as root, or grant the capability with `sudo setcap cap_net_raw+ep \"$(command -v vantage)\"` (systemd: AmbientCapabilities=CAP_NET_RAW)";

/// Run one trace on a blocking thread. Never fails: errors are part of the [`Observation`].
///
/// Returns promptly once `stop` fires ([`crate::unless_stopped`]). trippy's tracer cannot be
/// interrupted, so its thread runs on to the end of the trace (at most
/// [`TraceSettings::max_duration`]) and its report is dropped; the agent does not wait for it
/// when it exits.
pub async fn run(settings: &TraceSettings, stop: &CancellationToken) -> Observation {
    crate::unless_stopped(
        stop,
        || Measurement::Trace(TraceReport::default()),
        trace_once(settings),
    )
    .await
}

async fn trace_once(settings: &TraceSettings) -> Observation {
    let started_at = SystemTime::now();
    let started = Instant::now();
    if !settings.privileged {
        let why = NEEDS_CAP_NET_RAW.to_owned();
        return failed(started_at, started, None, FailureKind::Send, why);
    }
    let (resolved, _) = resolve(&settings.target, 0, settings.ip).await;
    let target = match resolved.map(|addrs| addrs.first().map(|a| a.ip())) {
        Ok(Some(target)) => target,
        Ok(None) => {
            return failed(
                started_at,
                started,
                None,
                FailureKind::Resolve,
                "no address".to_owned(),
            );
        }
        Err(why) => return failed(started_at, started, None, FailureKind::Resolve, why),
    };
    let settings = settings.clone();
    match tokio::task::spawn_blocking(move || trace(&settings, target)).await {
        Ok(Ok(report)) => finish(started_at, started, report),
        Ok(Err(why)) => failed(started_at, started, Some(target), FailureKind::Send, why),
        Err(join) => failed(
            started_at,
            started,
            Some(target),
            FailureKind::Send,
            format!("tracer thread: {join}"),
        ),
    }
}

/// Run one trace to an address on the calling thread (blocking).
pub fn run_blocking(settings: &TraceSettings, target: IpAddr) -> Observation {
    let started_at = SystemTime::now();
    let started = Instant::now();
    match trace(settings, target) {
        Ok(report) => finish(started_at, started, report),
        Err(why) => failed(started_at, started, Some(target), FailureKind::Send, why),
    }
}

fn finish(started_at: SystemTime, started: Instant, report: TraceReport) -> Observation {
    let outcome = if report.reached {
        Outcome::Success
    } else {
        let last = report.hops.iter().rev().find(|h| !h.is_silent());
        let message = match last {
            Some(hop) => format!(
                "{} not reached; the last hop that answered is {} ({})",
                report.target,
                hop.ttl,
                join_addresses(&hop.addresses)
            ),
            None => format!("{} not reached; no hop answered", report.target),
        };
        Outcome::failure(FailureKind::Timeout, message)
    };
    Observation {
        started_at,
        duration: started.elapsed(),
        outcome,
        measurement: Measurement::Trace(report),
    }
}

fn failed(
    started_at: SystemTime,
    started: Instant,
    target: Option<IpAddr>,
    kind: FailureKind,
    why: String,
) -> Observation {
    let target = target.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    Observation {
        started_at,
        duration: started.elapsed(),
        outcome: Outcome::failure(kind, why),
        measurement: Measurement::Trace(TraceReport::new(target, Vec::new())),
    }
}

/// A per-run identity — the ICMP echo identifier and the UDP source port trippy matches replies
/// by — that no other trace of this process holds while fewer than 20,000 run at once, so
/// concurrent traces (an incident traces up to 16 targets together) never take each other's
/// replies. Drawn at random they collided (16 concurrent traces: one run in 550). It starts at a
/// random point so that two processes on one host rarely share it.
fn next_trace_identity() -> (u16, u16) {
    use std::sync::atomic::{AtomicU32, Ordering};
    const PORTS: u32 = 20_000;
    static NEXT: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
    let n = NEXT
        .get_or_init(|| AtomicU32::new(rand::random()))
        .fetch_add(1, Ordering::Relaxed);
    // 1..=65535: to trippy, identifier 0 matches any reply. Both walk their whole ranges.
    let id = (n % u32::from(u16::MAX)) as u16 + 1;
    let port = 40_000 + (n % PORTS) as u16;
    (id, port)
}

fn trace(settings: &TraceSettings, target: IpAddr) -> Result<TraceReport, String> {
    use trippy_core::{Builder, MultipathStrategy, Port, PortDirection, PrivilegeMode, Protocol};

    if !settings.privileged {
        return Err(NEEDS_CAP_NET_RAW.to_owned());
    }

    let (trace_id, src_port) = next_trace_identity();
    let (protocol, strategy, ports) = match settings.protocol {
        TraceProtocol::Icmp => (
            Protocol::Icmp,
            MultipathStrategy::Classic,
            PortDirection::None,
        ),
        TraceProtocol::Udp => {
            let strategy = if target.is_ipv4() {
                MultipathStrategy::Paris
            } else {
                MultipathStrategy::Dublin
            };
            let dest = Port(settings.port.unwrap_or(33434));
            (
                Protocol::Udp,
                strategy,
                PortDirection::FixedBoth(Port(src_port), dest),
            )
        }
        TraceProtocol::Tcp => (
            Protocol::Tcp,
            MultipathStrategy::Classic,
            PortDirection::FixedDest(Port(settings.port.unwrap_or(80))),
        ),
    };
    let tracer = Builder::new(target)
        .protocol(protocol)
        .multipath_strategy(strategy)
        .port_direction(ports)
        .privilege_mode(PrivilegeMode::Privileged)
        .trace_identifier(trace_id)
        .first_ttl(settings.first_ttl)
        .max_ttl(settings.max_ttl)
        .max_rounds(Some(settings.rounds.max(1)))
        .min_round_duration(settings.round_duration)
        .max_round_duration(settings.round_duration)
        .grace_duration(settings.grace)
        .max_samples(settings.rounds.max(1))
        .max_flows(1)
        .build()
        .map_err(|e| format!("tracer settings: {e}"))?;
    tracer.run().map_err(|e| format!("tracer: {e}"))?;
    let state = tracer.snapshot();
    if let Some(error) = state.error() {
        return Err(format!("tracer: {error}"));
    }
    Ok(report_from(target, state.hops()))
}

fn report_from(target: IpAddr, hops: &[trippy_core::Hop]) -> TraceReport {
    let mut ours: Vec<Hop> = hops
        .iter()
        .map(|hop| {
            let received = u32::try_from(hop.total_recv()).unwrap_or(u32::MAX);
            let any = received > 0;
            let mut addresses: Vec<IpAddr> = hop.addrs().copied().collect();
            addresses.sort();
            Hop {
                ttl: hop.ttl(),
                addresses,
                sent: u32::try_from(hop.total_sent()).unwrap_or(u32::MAX),
                received,
                loss_pct: hop.loss_pct(),
                rtt_last_ms: hop.last_ms(),
                rtt_avg_ms: any.then(|| hop.avg_ms()),
                rtt_best_ms: hop.best_ms(),
                rtt_worst_ms: hop.worst_ms(),
                rtt_stddev_ms: any.then(|| hop.stddev_ms()),
            }
        })
        .collect();
    // Keep up to the destination; without it, up to the last answer plus one silent hop.
    let end = match ours.iter().position(|h| h.addresses.contains(&target)) {
        Some(destination) => destination + 1,
        None => ours
            .iter()
            .rposition(|h| !h.is_silent())
            .map_or(ours.len().min(1), |last| (last + 2).min(ours.len())),
    };
    ours.truncate(end);
    TraceReport::new(target, ours)
}

/// Where the loss is, read the way an experienced engineer reads mtr.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum LossVerdict {
    /// The destination answered every probe (or too few were lost to count).
    NoLoss,
    /// Loss begins at `ttl` and persists to the destination. `silent_before`: the hops just before
    /// it that answered no probe at all, so the loss may as well begin at one of them.
    LossFrom {
        ttl: u8,
        address: Option<IpAddr>,
        destination_loss_pct: f64,
        silent_before: Vec<u8>,
    },
    /// Some routers drop replies to probes addressed to *them* (ICMP rate limiting), but the hops
    /// after them and the destination are clean: not packet loss on the path.
    RateLimitedOnly { ttls: Vec<u8> },
    /// The destination never answered; the path goes silent after `last_ttl` (None: no hop
    /// answered at all).
    Unreached {
        last_ttl: Option<u8>,
        last_address: Option<IpAddr>,
    },
}

impl fmt::Display for LossVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossVerdict::NoLoss => f.write_str("no loss to the destination"),
            LossVerdict::LossFrom {
                ttl,
                address,
                destination_loss_pct,
                silent_before,
            } => {
                write!(f, "loss starts at hop {ttl}")?;
                if let Some(address) = address {
                    write!(f, ", {address}")?;
                }
                write!(f, " ({destination_loss_pct:.0}% at the destination)")?;
                if !silent_before.is_empty() {
                    write!(f, ", or at the silent {} before it", hops(silent_before))?;
                }
                Ok(())
            }
            LossVerdict::RateLimitedOnly { ttls } => {
                let verb = if ttls.len() == 1 {
                    "rate-limits its"
                } else {
                    "rate-limit their"
                };
                write!(
                    f,
                    "no loss to the destination; {} only {verb} own ICMP replies",
                    hops(ttls)
                )
            }
            LossVerdict::Unreached {
                last_ttl: Some(ttl),
                last_address,
            } => {
                write!(
                    f,
                    "destination not reached; the path goes silent after hop {ttl}"
                )?;
                if let Some(address) = last_address {
                    write!(f, ", {address}")?;
                }
                Ok(())
            }
            LossVerdict::Unreached { last_ttl: None, .. } => {
                f.write_str("destination not reached; no hop answered")
            }
        }
    }
}

/// "hop 2" or "hops 2, 3".
fn hops(ttls: &[u8]) -> String {
    let list: Vec<String> = ttls.iter().map(u8::to_string).collect();
    let plural = if ttls.len() == 1 { "" } else { "s" };
    format!("hop{plural} {}", list.join(", "))
}

/// Loss below this at the destination is not called loss (1 probe in 20 = 5%).
pub const LOSS_THRESHOLD_PCT: f64 = 5.0;

/// Locate where loss begins. Pure.
///
/// Loss at an intermediate hop is a statement about that router's replies to probes *addressed to
/// it*, which routers rate-limit; only loss that is still there at the destination is loss on the
/// path. So: if the destination is clean, lossy hops before it are [`LossVerdict::RateLimitedOnly`].
/// If the destination loses at least [`LOSS_THRESHOLD_PCT`], walk back from it while the hops keep
/// losing at least half as much as the destination does; the earliest such answering hop is where
/// the loss starts. Silent hops say nothing and are skipped; those just before the start are named
/// with it, since the loss may as well begin there.
pub fn locate_loss(report: &TraceReport) -> LossVerdict {
    let Some(destination_index) = report
        .hops
        .iter()
        .position(|h| h.addresses.contains(&report.target))
    else {
        let last = report.hops.iter().rev().find(|h| !h.is_silent());
        return LossVerdict::Unreached {
            last_ttl: last.map(|h| h.ttl),
            last_address: last.and_then(|h| h.addresses.first().copied()),
        };
    };
    let destination = &report.hops[destination_index];
    let lossy = |hop: &Hop, threshold: f64| !hop.is_silent() && hop.loss_pct >= threshold;
    if destination.loss_pct < LOSS_THRESHOLD_PCT {
        let ttls: Vec<u8> = report.hops[..destination_index]
            .iter()
            .filter(|h| lossy(h, LOSS_THRESHOLD_PCT))
            .map(|h| h.ttl)
            .collect();
        return if ttls.is_empty() {
            LossVerdict::NoLoss
        } else {
            LossVerdict::RateLimitedOnly { ttls }
        };
    }
    let persisting = (destination.loss_pct / 2.0).max(LOSS_THRESHOLD_PCT.min(destination.loss_pct));
    let mut start = destination;
    // Silent hops met since `start`, nearest first.
    let mut silent = Vec::new();
    for hop in report.hops[..destination_index].iter().rev() {
        if hop.is_silent() {
            silent.push(hop.ttl);
        } else if hop.loss_pct >= persisting {
            start = hop;
            silent.clear();
        } else {
            break;
        }
    }
    silent.reverse();
    LossVerdict::LossFrom {
        ttl: start.ttl,
        address: start.addresses.first().copied(),
        destination_loss_pct: destination.loss_pct,
        silent_before: silent,
    }
}

/// A trace's verdict in words: where loss starts ([`locate_loss`]), and where latency steps up
/// ([`locate_latency_step`]) when it does, e.g. "no loss to the destination; latency rises by
/// 120 ms at hop 2, 198.18.1.2". Pure.
pub fn verdict_text(report: &TraceReport) -> String {
    let loss = locate_loss(report);
    match locate_latency_step(report) {
        Some(step) => format!("{loss}; {step}"),
        None => loss.to_string(),
    }
}

/// An `mtr --report` table. Pure; `host` is the name printed in the header (mtr prints the local
/// host name there). Silent hops print as `???`; further addresses of a hop on lines of their own.
pub fn render_report(report: &TraceReport, host: &str) -> String {
    const WIDTH: usize = 30;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "HOST: {host:<WIDTH$}Loss%   Snt   Last   Avg  Best  Wrst StDev"
    );
    let rtt = |v: Option<f64>| v.unwrap_or(0.0);
    for hop in &report.hops {
        let first = hop
            .addresses
            .first()
            .map_or_else(|| "???".to_owned(), IpAddr::to_string);
        let _ = writeln!(
            out,
            "{:>3}.|-- {first:<width$}{:>5.1}% {:>5} {:>6.1} {:>5.1} {:>5.1} {:>5.1} {:>5.1}",
            hop.ttl,
            hop.loss_pct,
            hop.sent,
            rtt(hop.rtt_last_ms),
            rtt(hop.rtt_avg_ms),
            rtt(hop.rtt_best_ms),
            rtt(hop.rtt_worst_ms),
            rtt(hop.rtt_stddev_ms),
            width = WIDTH - 3,
        );
        for other in hop.addresses.iter().skip(1) {
            let _ = writeln!(out, "    |   `- {other}");
        }
    }
    out
}

fn join_addresses(addresses: &[IpAddr]) -> String {
    if addresses.is_empty() {
        "???".to_owned()
    } else {
        addresses
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "198.18.2.2";

    /// A hop with `loss` percent of 20 probes lost and RTTs around `rtt` ms; `addr` None = silent.
    fn hop(ttl: u8, addr: Option<&str>, loss: f64) -> Hop {
        let sent = 20u32;
        let received = (f64::from(sent) * (100.0 - loss) / 100.0).round() as u32;
        let answered = addr.is_some() && received > 0;
        let rtt = f64::from(ttl) * 1.5;
        Hop {
            ttl,
            addresses: addr
                .map(|a| vec![a.parse().expect("address")])
                .unwrap_or_default(),
            sent,
            received: if addr.is_some() { received } else { 0 },
            loss_pct: if addr.is_some() { loss } else { 100.0 },
            rtt_last_ms: answered.then_some(rtt),
            rtt_avg_ms: answered.then_some(rtt + 0.1),
            rtt_best_ms: answered.then_some(rtt - 0.2),
            rtt_worst_ms: answered.then_some(rtt + 0.7),
            rtt_stddev_ms: answered.then_some(0.25),
        }
    }

    fn report(hops: Vec<Hop>) -> TraceReport {
        TraceReport::new(TARGET.parse().expect("target"), hops)
    }

    fn ip(a: &str) -> Option<IpAddr> {
        Some(a.parse().expect("address"))
    }

    #[test]
    fn loss_verdicts() {
        let r1 = "198.18.0.1";
        let r2 = "198.18.1.2";
        let r3 = "198.18.1.9";
        let cases: Vec<(&str, Vec<Hop>, LossVerdict)> = vec![
            (
                "clean path",
                vec![
                    hop(1, Some(r1), 0.0),
                    hop(2, Some(r2), 0.0),
                    hop(3, Some(TARGET), 0.0),
                ],
                LossVerdict::NoLoss,
            ),
            (
                "loss from the hop after r2 to the end",
                vec![
                    hop(1, Some(r1), 0.0),
                    hop(2, Some(r2), 0.0),
                    hop(3, Some(TARGET), 30.0),
                ],
                LossVerdict::LossFrom {
                    ttl: 3,
                    address: ip(TARGET),
                    destination_loss_pct: 30.0,
                    silent_before: vec![],
                },
            ),
            (
                "loss that starts mid-path and persists",
                vec![
                    hop(1, Some(r1), 0.0),
                    hop(2, Some(r2), 25.0),
                    hop(3, Some(r3), 20.0),
                    hop(4, Some(TARGET), 30.0),
                ],
                LossVerdict::LossFrom {
                    ttl: 2,
                    address: ip(r2),
                    destination_loss_pct: 30.0,
                    silent_before: vec![],
                },
            ),
            (
                "the classic misreading: a rate-limiting router, clean after it",
                vec![
                    hop(1, Some(r1), 0.0),
                    hop(2, Some(r2), 60.0),
                    hop(3, Some(TARGET), 0.0),
                ],
                LossVerdict::RateLimitedOnly { ttls: vec![2] },
            ),
            (
                "a rate-limiting router before the real loss point is not the start",
                vec![
                    hop(1, Some(r1), 70.0),
                    hop(2, Some(r2), 0.0),
                    hop(3, Some(r3), 20.0),
                    hop(4, Some(TARGET), 20.0),
                ],
                LossVerdict::LossFrom {
                    ttl: 3,
                    address: ip(r3),
                    destination_loss_pct: 20.0,
                    silent_before: vec![],
                },
            ),
            (
                "a silent hop in the middle of a clean path",
                vec![
                    hop(1, Some(r1), 0.0),
                    hop(2, None, 100.0),
                    hop(3, Some(TARGET), 0.0),
                ],
                LossVerdict::NoLoss,
            ),
            (
                "a silent hop inside the lossy stretch is skipped",
                vec![
                    hop(1, Some(r1), 0.0),
                    hop(2, Some(r2), 40.0),
                    hop(3, None, 100.0),
                    hop(4, Some(TARGET), 40.0),
                ],
                LossVerdict::LossFrom {
                    ttl: 2,
                    address: ip(r2),
                    destination_loss_pct: 40.0,
                    silent_before: vec![],
                },
            ),
            (
                "a silent hop just before the loss may be where it starts",
                vec![
                    hop(1, Some(r1), 0.0),
                    hop(2, None, 100.0),
                    hop(3, Some(TARGET), 65.0),
                ],
                LossVerdict::LossFrom {
                    ttl: 3,
                    address: ip(TARGET),
                    destination_loss_pct: 65.0,
                    silent_before: vec![2],
                },
            ),
            (
                "silent hops from the start of the path",
                vec![
                    hop(1, None, 100.0),
                    hop(2, None, 100.0),
                    hop(3, Some(r3), 50.0),
                    hop(4, Some(TARGET), 50.0),
                ],
                LossVerdict::LossFrom {
                    ttl: 3,
                    address: ip(r3),
                    destination_loss_pct: 50.0,
                    silent_before: vec![1, 2],
                },
            ),
            (
                "a little noise below the threshold is no loss",
                vec![hop(1, Some(r1), 0.0), hop(2, Some(TARGET), 0.0)],
                LossVerdict::NoLoss,
            ),
            (
                "the path goes silent",
                vec![
                    hop(1, Some(r1), 0.0),
                    hop(2, Some(r2), 0.0),
                    hop(3, None, 100.0),
                ],
                LossVerdict::Unreached {
                    last_ttl: Some(2),
                    last_address: ip(r2),
                },
            ),
            (
                "nothing answered",
                vec![hop(1, None, 100.0)],
                LossVerdict::Unreached {
                    last_ttl: None,
                    last_address: None,
                },
            ),
        ];
        for (name, hops, expected) in cases {
            assert_eq!(locate_loss(&report(hops)), expected, "{name}");
        }
    }

    #[test]
    fn verdicts_read_like_a_sentence() {
        let verdict = LossVerdict::LossFrom {
            ttl: 3,
            address: ip(TARGET),
            destination_loss_pct: 20.0,
            silent_before: vec![],
        };
        assert_eq!(
            verdict.to_string(),
            "loss starts at hop 3, 198.18.2.2 (20% at the destination)"
        );
        let maybe_earlier = |silent_before: Vec<u8>| LossVerdict::LossFrom {
            ttl: 3,
            address: ip(TARGET),
            destination_loss_pct: 65.0,
            silent_before,
        };
        assert_eq!(
            maybe_earlier(vec![2]).to_string(),
            "loss starts at hop 3, 198.18.2.2 (65% at the destination), or at the silent hop 2 \
             before it"
        );
        assert_eq!(
            maybe_earlier(vec![1, 2]).to_string(),
            "loss starts at hop 3, 198.18.2.2 (65% at the destination), or at the silent hops 1, \
             2 before it"
        );
        assert_eq!(
            LossVerdict::RateLimitedOnly { ttls: vec![2] }.to_string(),
            "no loss to the destination; hop 2 only rate-limits its own ICMP replies"
        );
        assert_eq!(
            LossVerdict::RateLimitedOnly { ttls: vec![2, 4] }.to_string(),
            "no loss to the destination; hops 2, 4 only rate-limit their own ICMP replies"
        );
        assert_eq!(
            LossVerdict::Unreached {
                last_ttl: Some(2),
                last_address: ip("198.18.1.2")
            }
            .to_string(),
            "destination not reached; the path goes silent after hop 2, 198.18.1.2"
        );
    }

    #[test]
    fn a_hop_serializes_its_first_address_as_address() {
        let mut ecmp = hop(2, Some("198.18.1.2"), 0.0);
        ecmp.addresses.push(ip("198.18.1.3").expect("address"));
        let json = serde_json::to_value(report(vec![ecmp, hop(3, None, 100.0)])).expect("JSON");
        assert_eq!(json["hops"][0]["address"], "198.18.1.2");
        assert_eq!(
            json["hops"][0]["addresses"],
            serde_json::json!(["198.18.1.2", "198.18.1.3"])
        );
        assert_eq!(json["hops"][0]["sent"], 20);
        assert!(json["hops"][1]["address"].is_null(), "{json}");
    }

    #[test]
    fn the_verdict_text_says_where_latency_steps_up() {
        let slow = |mut h: Hop| {
            for rtt in [
                &mut h.rtt_last_ms,
                &mut h.rtt_avg_ms,
                &mut h.rtt_best_ms,
                &mut h.rtt_worst_ms,
            ] {
                *rtt = rtt.map(|ms| ms + 119.5); // best: 1.3 ms at hop 1, 122.3 at hop 2
            }
            h
        };
        let delayed = report(vec![
            hop(1, Some("198.18.0.1"), 0.0),
            slow(hop(2, Some("198.18.1.2"), 0.0)),
            slow(hop(3, Some(TARGET), 0.0)),
        ]);
        assert_eq!(
            verdict_text(&delayed),
            "no loss to the destination; latency rises by 121 ms at hop 2, 198.18.1.2"
        );
        let flat = report(vec![
            hop(1, Some("198.18.0.1"), 0.0),
            hop(2, Some(TARGET), 0.0),
        ]);
        assert_eq!(verdict_text(&flat), "no loss to the destination");
    }

    /// trippy cannot trace over Linux ping sockets: without CAP_NET_RAW a trace is a send failure
    /// saying so, never a trace that "did not reach" its target.
    #[tokio::test]
    async fn an_unprivileged_trace_is_refused_not_unreached() {
        for target in ["127.0.0.1", "::1"] {
            let settings = TraceSettings {
                privileged: false,
                rounds: 1,
                round_duration: Duration::from_millis(10),
                ..TraceSettings::new(target)
            };
            let ip: IpAddr = target.parse().expect("address");
            for observation in [
                run(&settings, &CancellationToken::new()).await,
                run_blocking(&settings, ip),
            ] {
                match &observation.outcome {
                    Outcome::Failure { kind, message } => {
                        assert_eq!(*kind, FailureKind::Send, "{message}");
                        assert_eq!(message, NEEDS_CAP_NET_RAW);
                    }
                    Outcome::Success => panic!("an unprivileged trace to {target} succeeded"),
                }
            }
        }
        assert!(NEEDS_CAP_NET_RAW.contains("setcap cap_net_raw+ep"));
    }

    #[test]
    fn mtr_report_golden() {
        let mut ecmp = hop(2, Some("198.18.1.2"), 0.0);
        ecmp.addresses.push(ip("198.18.1.3").expect("address"));
        let r = report(vec![
            hop(1, Some("198.18.0.1"), 0.0),
            ecmp,
            hop(3, None, 100.0),
            hop(4, Some(TARGET), 15.0),
        ]);
        let expected = "\
HOST: agent                         Loss%   Snt   Last   Avg  Best  Wrst StDev
  1.|-- 198.18.0.1                   0.0%    20    1.5   1.6   1.3   2.2   0.2
  2.|-- 198.18.1.2                   0.0%    20    3.0   3.1   2.8   3.7   0.2
    |   `- 198.18.1.3
  3.|-- ???                        100.0%    20    0.0   0.0   0.0   0.0   0.0
  4.|-- 198.18.2.2                  15.0%    20    6.0   6.1   5.8   6.7   0.2
";
        assert_eq!(render_report(&r, "agent"), expected);
    }

    #[test]
    fn concurrent_traces_never_share_an_identifier_or_a_source_port() {
        let ids: Vec<(u16, u16)> = (0..20_000).map(|_| next_trace_identity()).collect();
        let distinct_ids: std::collections::HashSet<u16> = ids.iter().map(|(i, _)| *i).collect();
        let distinct_ports: std::collections::HashSet<u16> = ids.iter().map(|(_, p)| *p).collect();
        assert_eq!(distinct_ids.len(), 20_000);
        assert_eq!(distinct_ports.len(), 20_000);
        assert!(
            ids.iter()
                .all(|(i, p)| *i != 0 && (40_000..60_000).contains(p))
        );
    }

    #[test]
    fn a_silent_hop_is_unknown_not_a_new_path() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("address") };
        let (r1, r2, alt, far) = (
            vec![ip("198.18.0.1")],
            vec![ip("198.18.1.2")],
            vec![ip("198.18.3.1")],
            vec![ip("198.18.2.2")],
        );
        let dest = ip("198.18.2.2");
        let silent = Vec::new();
        let base = vec![r1.clone(), r2.clone(), far.clone()];
        let cases: [(&str, Path, bool); 8] = [
            ("identical", base.clone(), true),
            (
                "the destination silent (loss)",
                vec![r1.clone(), r2.clone(), silent.clone()],
                true,
            ),
            (
                "a router silent",
                vec![r1.clone(), silent.clone(), far.clone()],
                true,
            ),
            (
                "another router at TTL 2",
                vec![r1.clone(), alt.clone(), far.clone()],
                false,
            ),
            (
                "the destination one hop sooner",
                vec![r1.clone(), far.clone()],
                false,
            ),
            (
                "the destination one hop later",
                vec![r1.clone(), r2.clone(), alt.clone(), far.clone()],
                false,
            ),
            (
                "ECMP: one of two addresses again",
                vec![
                    r1.clone(),
                    vec![ip("198.18.1.2"), ip("198.18.9.9")],
                    far.clone(),
                ],
                true,
            ),
            (
                "every probe at the destination's TTL lost, one beyond it answered (loss)",
                vec![r1.clone(), r2.clone(), silent.clone(), far.clone()],
                true,
            ),
        ];
        for (case, current, same) in cases {
            assert_eq!(same_path(&base, &current, dest), same, "{case}");
            // And back: the next trace compared with this one.
            assert_eq!(same_path(&current, &base, dest), same, "{case}, reversed");
        }
        // The reference keeps what a silent TTL did not say.
        let merged = merge_path(&base, &[r1.clone(), silent.clone(), silent.clone()]);
        assert_eq!(merged, base);
        assert_eq!(
            merge_path(&base, &[r1.clone(), silent]),
            base,
            "a trace that stopped short (destination lost) keeps the known tail"
        );
        assert_eq!(
            merge_path(&base, &[r1.clone(), r2.clone(), alt.clone()]),
            vec![r1, r2, alt],
            "a TTL that answered replaces what was known"
        );
    }

    #[test]
    fn the_path_hash_changes_with_the_path_only() {
        let a = report(vec![
            hop(1, Some("198.18.0.1"), 0.0),
            hop(2, Some(TARGET), 0.0),
        ]);
        let same_path_other_loss = report(vec![
            hop(1, Some("198.18.0.1"), 50.0),
            hop(2, Some(TARGET), 10.0),
        ]);
        let other = report(vec![
            hop(1, Some("198.18.0.9"), 0.0),
            hop(2, Some(TARGET), 0.0),
        ]);
        assert_eq!(a.path_hash, same_path_other_loss.path_hash);
        assert_ne!(a.path_hash, other.path_hash);
        assert_eq!(a.path_hash.len(), 16);
        assert!(a.reached && a.destination().is_some_and(|h| h.ttl == 2));
    }
}
