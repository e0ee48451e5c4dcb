//! # probes — how vantage measures
//!
//! Each probe kind takes a target and returns an [`Observation`]; network failures are observations
//! (with a [`FailureKind`]), never `Err`. Every kind has the same entry-point shape: an async
//! `run` (ICMP: [`IcmpClient::round`]) that takes a [`CancellationToken`] and returns promptly
//! once it fires: an ICMP round stops sending and returns what it measured, the other kinds
//! report [`Observation::stopped`] ([`unless_stopped`]). This crate knows nothing of config files, stores or rules:
//! those live in the `vantage` crate.
//!
//! ## Layout
//! - [`observation`]: [`Observation`], [`Outcome`], [`FailureKind`], [`Measurement`]
//! - [`stats`]: smokeping-style round statistics ([`PingStats`])
//! - [`icmp`]: echo rounds over shared raw or datagram ICMP sockets ([`IcmpClient`])
//! - [`dns`]: one DNS query to one explicit server ([`DnsCheck`] built from [`DnsSettings`])
//! - [`http`]: HTTP(S) checks with phase timings ([`HttpCheck`] built from [`HttpSettings`])
//! - [`tcp`]: TCP connect checks ([`tcp::run`] with [`TcpSettings`])
//! - [`trace`]: mtr-style path traces on trippy-core ([`trace::run`] with [`TraceSettings`]), the
//!   [`locate_loss`] and [`locate_latency_step`] verdicts ([`verdict_text`]) and the
//!   [`render_report`] table; traces need `CAP_NET_RAW` ([`trace::NEEDS_CAP_NET_RAW`])
//! - [`files`]: bounded reads of config-referenced files ([`read_small`]: regular files only)
//! - [`net`]: what the TCP and HTTP checks share: [`IpPreference`], resolution, error classes
//!
//! ## Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), probes::IcmpError> {
//! use std::time::Duration;
//! let client = probes::IcmpClient::new()?;
//! let plan = probes::RoundPlan { count: 5, spacing: Duration::from_millis(200), timeout: Duration::from_secs(1) };
//! let stop = tokio_util::sync::CancellationToken::new();
//! let observation = client.round("127.0.0.1".parse().expect("address"), plan, &stop).await;
//! if let probes::Measurement::Ping(stats) = &observation.measurement {
//!     println!("loss {}%, median {:?} ms", stats.loss_pct, stats.rtt_median_ms);
//!     assert_eq!(stats.sent, 5);
//! }
//! # Ok(()) }
//! ```

pub mod dns;
pub mod files;
pub mod http;
pub mod icmp;
pub mod net;
pub mod observation;
pub mod stats;
pub mod tcp;
pub mod trace;

pub use dns::{
    DnsCheck, DnsExpect, DnsRecordType, DnsSettings, DnsSettingsError, DnsStats, DnsTransport,
};
pub use files::{FileError, read_small, read_small_string};
pub use http::{
    AssertionResult, HeaderMatch, HttpCheck, HttpExpect, HttpSettings, HttpSettingsError, HttpStats,
};
pub use icmp::{IcmpClient, IcmpError, RoundPlan, Session as IcmpSession};
pub use net::IpPreference;
pub use observation::{
    FailureKind, Measurement, Observation, Outcome, STOPPED, unix_ns, unless_stopped,
};
pub use stats::PingStats;
pub use tcp::{TcpSettings, TcpStats};
pub use tokio_util::sync::CancellationToken;
pub use trace::{
    Hop, LatencyStep, LossVerdict, Path, TraceProtocol, TraceReport, TraceSettings,
    locate_latency_step, locate_loss, merge_path, render_report, same_path, verdict_text,
};
