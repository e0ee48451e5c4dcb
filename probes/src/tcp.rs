//! TCP connect checks: can a handshake with `host:port` complete before the deadline?
//!
//! The host is resolved with the system resolver (ordered by [`IpPreference`]) and only the first
//! address is tried, so every run measures the same path; a name with several addresses is not
//! "up" merely because one of them answers. The connection is closed as soon as it is established.
//!
//! Classification: a reset is [`FailureKind::Refused`], an ICMP or local "no route" is
//! [`FailureKind::Unreachable`], silence until the deadline (a firewall dropping SYNs, a listener
//! whose accept queue is full) is [`FailureKind::Timeout`].

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::net::{IpPreference, classify_io_error, ms, resolve};
use crate::observation::{FailureKind, Measurement, Observation, Outcome};
use tokio_util::sync::CancellationToken;

/// What to connect to, and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSettings {
    /// A name or an IP literal.
    pub host: String,
    pub port: u16,
    /// Bounds the whole check, resolution included.
    pub timeout: Duration,
    pub ip: IpPreference,
}

impl TcpSettings {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        TcpSettings {
            host: host.into(),
            port,
            timeout: Duration::from_secs(5),
            ip: IpPreference::Any,
        }
    }
}

/// The `tcp` measurement. `success` and `failure` come from the observation's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct TcpStats {
    /// Handshake time; `None` when no connection was established.
    pub connect_ms: Option<f64>,
    /// Time the name lookup took (0 for an IP literal); `None` when it did not finish.
    pub resolve_ms: Option<f64>,
    /// The address the connection was attempted to.
    pub address: Option<SocketAddr>,
}

/// Run one TCP connect check. Never fails: every problem is part of the [`Observation`].
/// Returns promptly once `stop` fires ([`crate::unless_stopped`]).
pub async fn run(settings: &TcpSettings, stop: &CancellationToken) -> Observation {
    crate::unless_stopped(
        stop,
        || Measurement::Tcp(TcpStats::default()),
        connect_once(settings),
    )
    .await
}

async fn connect_once(settings: &TcpSettings) -> Observation {
    let started_at = SystemTime::now();
    let started = Instant::now();
    let mut stats = TcpStats {
        connect_ms: None,
        resolve_ms: None,
        address: None,
    };
    let deadline = tokio::time::Instant::now() + settings.timeout;
    let outcome = match tokio::time::timeout_at(deadline, attempt(settings, &mut stats)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            let phase = if stats.resolve_ms.is_none() {
                "resolving"
            } else {
                "connecting"
            };
            Outcome::failure(
                FailureKind::Timeout,
                format!(
                    "no answer within {:?} ({phase} {}:{})",
                    settings.timeout, settings.host, settings.port
                ),
            )
        }
    };
    Observation {
        started_at,
        duration: started.elapsed(),
        outcome,
        measurement: Measurement::Tcp(stats),
    }
}

async fn attempt(settings: &TcpSettings, stats: &mut TcpStats) -> Outcome {
    let (resolved, took) = resolve(&settings.host, settings.port, settings.ip).await;
    stats.resolve_ms = Some(ms(took));
    let addr = match resolved {
        Ok(addrs) => match addrs.first() {
            Some(addr) => *addr,
            None => {
                return Outcome::failure(
                    FailureKind::Resolve,
                    format!("{} has no address", settings.host),
                );
            }
        },
        Err(why) => return Outcome::failure(FailureKind::Resolve, why),
    };
    stats.address = Some(addr);
    let connecting = Instant::now();
    match tokio::net::TcpStream::connect(addr).await {
        Ok(stream) => {
            stats.connect_ms = Some(ms(connecting.elapsed()));
            drop(stream);
            Outcome::Success
        }
        Err(error) => Outcome::failure(
            classify_io_error(&error),
            format!("connecting to {addr}: {error}"),
        ),
    }
}
