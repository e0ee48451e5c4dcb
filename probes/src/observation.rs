//! What every probe returns: an [`Observation`]. Network failures are observations, not `Err`s —
//! a timeout, a refused connection or 100% loss is exactly the data an outage probe exists to record.

use std::future::Future;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::dns::DnsStats;
use crate::http::HttpStats;
use crate::stats::PingStats;
use crate::tcp::TcpStats;
use crate::trace::TraceReport;

/// One run of one probe against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Observation {
    /// Wall-clock time the measurement started; stores keep this as the point's timestamp.
    #[serde(serialize_with = "serialize_unix_ns")]
    pub started_at: SystemTime,
    /// How long the run took, from first packet to verdict.
    pub duration: Duration,
    pub outcome: Outcome,
    pub measurement: Measurement,
}

impl Observation {
    pub fn is_success(&self) -> bool {
        matches!(self.outcome, Outcome::Success)
    }

    /// The report of a run its stop token interrupted: not a measurement (see [`STOPPED`]).
    pub fn stopped(started_at: SystemTime, measurement: Measurement) -> Observation {
        Observation {
            started_at,
            duration: started_at.elapsed().unwrap_or_default(),
            outcome: Outcome::failure(FailureKind::Deadline, STOPPED),
            measurement,
        }
    }

    /// Whether the run was interrupted by its stop token ([`Observation::stopped`]).
    pub fn was_stopped(&self) -> bool {
        matches!(&self.outcome, Outcome::Failure { kind: FailureKind::Deadline, message } if message == STOPPED)
    }

    /// Nanoseconds since the Unix epoch of [`Observation::started_at`] (0 for clocks before 1970).
    pub fn timestamp_ns(&self) -> i64 {
        unix_ns(self.started_at)
    }
}

/// The message of a run interrupted by its stop token. It says nothing about the target (the
/// agent was shutting down or the probe was removed), so the agent does not store it.
pub const STOPPED: &str = "stopped before the run finished: the probe was shut down";

/// Every probe kind's entry point is `run(.., stop: &CancellationToken) -> Observation` and
/// returns promptly once `stop` fires; this is how the ones that cannot stop mid-way themselves
/// do it. `measure` is dropped (a TCP connect or HTTP exchange is cancelled with it) and the run
/// reports [`Observation::stopped`] with `empty`, the kind's empty measurement.
pub async fn unless_stopped(
    stop: &CancellationToken,
    empty: impl FnOnce() -> Measurement,
    measure: impl Future<Output = Observation>,
) -> Observation {
    let started_at = SystemTime::now();
    tokio::select! {
        // A run that finished as the stop came is a whole measurement: keep it.
        biased;
        observation = measure => observation,
        () = stop.cancelled() => Observation::stopped(started_at, empty()),
    }
}

/// Did the run meet its expectations? Partial loss is still a `Success`: whether 5% loss matters is
/// for rules to decide, not the probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure { kind: FailureKind, message: String },
}

impl Outcome {
    pub fn failure(kind: FailureKind, message: impl Into<String>) -> Self {
        Outcome::Failure {
            kind,
            message: message.into(),
        }
    }
}

/// A closed set of failure classes, stable enough to alert and graph on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// No answer within the deadline (for ICMP: every echo lost).
    Timeout,
    /// A router or the local stack said the destination cannot be reached.
    Unreachable,
    /// The target's name did not resolve.
    Resolve,
    /// The local system refused to send (permissions, no route, socket error).
    Send,
    /// The run was cut short by its deadline or by shutdown.
    Deadline,
    /// The peer actively refused: TCP reset on connect.
    Refused,
    /// The TLS handshake failed (certificate not trusted, name mismatch, protocol error).
    Tls,
    /// The peer answered, but not in a way the protocol allows (malformed HTTP or DNS).
    Protocol,
    /// The HTTP status code was not one of the expected ones.
    Status,
    /// The server redirected more often than the check allows (a loop, usually).
    Redirect,
    /// The response body was larger than the check is willing to read.
    BodyLimit,
    /// The DNS server answered with a response code other than the expected one
    /// (NXDOMAIN, SERVFAIL, REFUSED, ...).
    Rcode,
    /// The response arrived but did not meet an expectation of the check (body, header, answers,
    /// certificate lifetime, maximum duration).
    Assertion,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Resolve => "resolve",
            FailureKind::Send => "send",
            FailureKind::Deadline => "deadline",
            FailureKind::Refused => "refused",
            FailureKind::Tls => "tls",
            FailureKind::Protocol => "protocol",
            FailureKind::Status => "status",
            FailureKind::Redirect => "redirect",
            FailureKind::BodyLimit => "body_limit",
            FailureKind::Rcode => "rcode",
            FailureKind::Assertion => "assertion",
        }
    }
}

/// The typed result of each probe kind; field names follow the measurement schema.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Measurement {
    Ping(PingStats),
    Tcp(TcpStats),
    Http(HttpStats),
    Dns(DnsStats),
    Trace(TraceReport),
}

impl Measurement {
    /// The measurement name in the schema (`ping`, `trace`, `http`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Measurement::Ping(_) => "ping",
            Measurement::Tcp(_) => "tcp",
            Measurement::Http(_) => "http",
            Measurement::Dns(_) => "dns",
            Measurement::Trace(_) => "trace",
        }
    }
}

/// Nanoseconds since the Unix epoch, as the stores and line protocol keep time (0 before 1970,
/// `i64::MAX` after 2262).
pub fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn serialize_unix_ns<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(unix_ns(*t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_kind_names_match_their_serialized_form() {
        use FailureKind::*;
        let all = [
            Timeout,
            Unreachable,
            Resolve,
            Send,
            Deadline,
            Refused,
            Tls,
            Protocol,
            Status,
            Redirect,
            BodyLimit,
            Rcode,
            Assertion,
        ];
        for kind in all {
            let json = serde_json::to_value(kind).expect("serialize");
            assert_eq!(json.as_str(), Some(kind.as_str()), "{kind:?}");
        }
    }

    fn ping() -> Measurement {
        Measurement::Ping(PingStats::default())
    }

    #[tokio::test]
    async fn a_run_that_never_ends_is_reported_stopped_when_its_token_fires() {
        let stop = CancellationToken::new();
        stop.cancel();
        let observation = unless_stopped(&stop, ping, std::future::pending()).await;
        assert!(observation.was_stopped());
        assert!(!observation.is_success());
    }

    #[tokio::test]
    async fn a_run_that_finished_as_the_stop_came_is_kept() {
        let stop = CancellationToken::new();
        stop.cancel();
        let finished = Observation {
            started_at: SystemTime::now(),
            duration: Duration::from_millis(3),
            outcome: Outcome::Success,
            measurement: ping(),
        };
        let observation = unless_stopped(&stop, ping, async { finished }).await;
        assert!(observation.is_success());
        assert!(!observation.was_stopped());
    }

    #[test]
    fn only_the_stop_message_marks_a_stopped_run() {
        let deadline = Observation {
            started_at: SystemTime::now(),
            duration: Duration::ZERO,
            outcome: Outcome::failure(FailureKind::Deadline, "run exceeded its deadline"),
            measurement: ping(),
        };
        assert!(!deadline.was_stopped());
    }
}
