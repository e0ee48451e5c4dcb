//! DNS checks: one query for one name and record type to one explicit server, over UDP or TCP.
//!
//! ## One query, nothing hidden
//! A probe must report what the server said, so NXDOMAIN, SERVFAIL and silence are recorded
//! failures with the response code, never retried into a success. `hickory-resolver`'s `Resolver`
//! is built for the opposite: its name-server pool retransmits a UDP query (up to three datagrams,
//! at 1.2 × the smoothed RTT) and moves on to the next server, its cache and hosts file can answer
//! without asking, and search domains rewrite the name. None of that can be switched off through
//! `ResolverOpts` in 0.26 (`attempts` is no longer read). So this module uses the client layer the
//! resolver is built on, `hickory-net` (re-exported as `hickory_resolver::net`, no extra
//! dependency): exactly one datagram (or one TCP connection), no cache, no hosts file, the name
//! taken as fully qualified, the raw response code and answer section kept.
//!
//! One check talks to one server; checking several servers is several checks, each with its own
//! `server` tag, so a failure names the server that failed.
//!
//! ## Junk answers
//! `hickory-net` logs a WARN for every datagram it ignores (wrong id, wrong source, forged
//! question): a hostile or broken server can make one query log thousands of lines. A query runs
//! under [`JunkCounter`], which lets the first such warning through and sums up the rest in one
//! line when the query ends.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tracing::instrument::WithSubscriber as _;

use std::pin::Pin;

use futures_core::Stream;
use hickory_resolver::net::DnsHandle;
use hickory_resolver::net::client::Client;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::tcp::TcpClientStream;
use hickory_resolver::net::udp::UdpClientStream;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::{DnsRequestOptions, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use regex::Regex;
use serde::Serialize;

use crate::net::{classify_io_error, ms};
use crate::observation::{FailureKind, Measurement, Observation, Outcome};
use tokio_util::sync::CancellationToken;

/// The record types a check can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsRecordType {
    A,
    Aaaa,
    Cname,
    Mx,
    Txt,
    Soa,
    Ns,
}

impl DnsRecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsRecordType::A => "A",
            DnsRecordType::Aaaa => "AAAA",
            DnsRecordType::Cname => "CNAME",
            DnsRecordType::Mx => "MX",
            DnsRecordType::Txt => "TXT",
            DnsRecordType::Soa => "SOA",
            DnsRecordType::Ns => "NS",
        }
    }

    fn wire(self) -> RecordType {
        match self {
            DnsRecordType::A => RecordType::A,
            DnsRecordType::Aaaa => RecordType::AAAA,
            DnsRecordType::Cname => RecordType::CNAME,
            DnsRecordType::Mx => RecordType::MX,
            DnsRecordType::Txt => RecordType::TXT,
            DnsRecordType::Soa => RecordType::SOA,
            DnsRecordType::Ns => RecordType::NS,
        }
    }
}

impl FromStr for DnsRecordType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let all = [
            DnsRecordType::A,
            DnsRecordType::Aaaa,
            DnsRecordType::Cname,
            DnsRecordType::Mx,
            DnsRecordType::Txt,
            DnsRecordType::Soa,
            DnsRecordType::Ns,
        ];
        all.into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unsupported record type {s:?} (A, AAAA, CNAME, MX, TXT, SOA, NS)")
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsTransport {
    #[default]
    Udp,
    Tcp,
}

/// One DNS check. Build a [`DnsCheck`] from it once; run that often.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    /// The server to ask (address and port).
    pub server: SocketAddr,
    pub transport: DnsTransport,
    /// The name to look up; always taken as fully qualified (no search domains).
    pub name: String,
    pub record_type: DnsRecordType,
    /// Bounds the whole check, TCP connect included. No retransmission happens within it.
    pub timeout: Duration,
    /// Set the RD bit (ask a resolver to recurse); clear it to query an authoritative server.
    pub recursion_desired: bool,
    pub expect: DnsExpect,
}

impl DnsSettings {
    pub fn new(server: SocketAddr, name: impl Into<String>, record_type: DnsRecordType) -> Self {
        DnsSettings {
            server,
            transport: DnsTransport::Udp,
            name: name.into(),
            record_type,
            timeout: Duration::from_secs(5),
            recursion_desired: true,
            expect: DnsExpect::default(),
        }
    }
}

/// What makes an answer a success. The default: rcode NOERROR, anything in the answer section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DnsExpect {
    /// Accepted response codes by name (`NOERROR`, `NXDOMAIN`, ...); empty = `NOERROR` only.
    pub rcodes: Vec<String>,
    /// At least this many records of the asked type.
    pub min_answers: Option<u32>,
    /// Each of these must equal one of the answers (as rendered in [`DnsStats::records`];
    /// names compare case-insensitively, a trailing dot optional).
    pub answers_include: Vec<String>,
    /// Each regex must match at least one of the answers.
    pub answers_match: Vec<String>,
}

/// Settings that cannot work, found before any run.
#[derive(Debug, thiserror::Error)]
pub enum DnsSettingsError {
    #[error("invalid name {name:?}: {reason}")]
    Name { name: String, reason: String },
    #[error(
        "unknown response code {0:?} (NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, ...)"
    )]
    Rcode(String),
    #[error("invalid regex {regex:?}: {reason}")]
    Regex { regex: String, reason: String },
}

/// A validated, ready-to-run DNS check.
#[derive(Debug, Clone)]
pub struct DnsCheck {
    settings: DnsSettings,
    name: Name,
    rcodes: Vec<u16>,
    answers_match: Vec<Regex>,
}

/// The `dns` measurement. `server` and `record_type` are the schema's tags; `success` and
/// `failure` come from the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct DnsStats {
    pub server: String,
    pub record_type: String,
    /// `None` when no response arrived.
    pub rcode: Option<String>,
    /// Query sent → response received (TCP: connect included); `None` without a response.
    pub latency_ms: Option<f64>,
    /// Records in the answer section (CNAMEs on the way included).
    pub answers: u32,
    /// The answers of the asked type, rendered as in zone files (`198.18.0.1`,
    /// `10 mail.example.`, `"v=spf1 -all"`).
    pub records: Vec<String>,
    pub authoritative: bool,
    pub truncated: bool,
}

impl DnsCheck {
    pub fn new(settings: DnsSettings) -> Result<Self, DnsSettingsError> {
        let name = Name::from_str(&settings.name)
            .map(|mut n| {
                n.set_fqdn(true);
                n
            })
            .map_err(|e| DnsSettingsError::Name {
                name: settings.name.clone(),
                reason: e.to_string(),
            })?;
        let rcodes = settings
            .expect
            .rcodes
            .iter()
            .map(|r| rcode_from_name(r).ok_or_else(|| DnsSettingsError::Rcode(r.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let answers_match = settings
            .expect
            .answers_match
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| DnsSettingsError::Regex {
                    regex: p.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(DnsCheck {
            settings,
            name,
            rcodes,
            answers_match,
        })
    }

    pub fn settings(&self) -> &DnsSettings {
        &self.settings
    }

    /// Run the check once. Never fails: every problem is part of the [`Observation`].
    /// Returns promptly once `stop` fires ([`crate::unless_stopped`]).
    pub async fn run(&self, stop: &CancellationToken) -> Observation {
        crate::unless_stopped(stop, || self.empty_measurement(), self.query_once()).await
    }

    /// What a run that measured nothing reports: the server and record type it was going to ask.
    pub fn empty_measurement(&self) -> Measurement {
        Measurement::Dns(DnsStats {
            server: self.settings.server.to_string(),
            record_type: self.settings.record_type.as_str().to_owned(),
            ..DnsStats::default()
        })
    }

    async fn query_once(&self) -> Observation {
        let started_at = SystemTime::now();
        let started = Instant::now();
        let mut stats = DnsStats {
            server: self.settings.server.to_string(),
            record_type: self.settings.record_type.as_str().to_owned(),
            rcode: None,
            latency_ms: None,
            answers: 0,
            records: Vec::new(),
            authoritative: false,
            truncated: false,
        };
        let timeout = self.settings.timeout;
        let outcome = match tokio::time::timeout(timeout, self.query(&mut stats)).await {
            Ok(Ok(())) => self.judge(&stats),
            Ok(Err(failure)) => failure,
            Err(_) => Outcome::failure(
                FailureKind::Timeout,
                format!("no response from {} within {timeout:?}", stats.server),
            ),
        };
        Observation {
            started_at,
            duration: started.elapsed(),
            outcome,
            measurement: Measurement::Dns(stats),
        }
    }

    async fn query(&self, stats: &mut DnsStats) -> Result<(), Outcome> {
        let counter = Arc::new(JunkCounter::new());
        let dispatch = tracing::Dispatch::new(Arc::clone(&counter));
        let result = self
            .exchange(stats, &dispatch)
            .with_subscriber(dispatch.clone())
            .await;
        let ignored = counter.ignored.load(Ordering::Relaxed);
        if ignored > 1 {
            tracing::warn!(
                server = %self.settings.server,
                name = %self.settings.name,
                "{} more datagrams ignored during this query, as the one logged above",
                ignored - 1
            );
        }
        result
    }

    async fn exchange(
        &self,
        stats: &mut DnsStats,
        dispatch: &tracing::Dispatch,
    ) -> Result<(), Outcome> {
        let server = self.settings.server;
        let timeout = self.settings.timeout;
        let provider = TokioRuntimeProvider::default();
        let sent = Instant::now();
        let (client, background) = match self.settings.transport {
            DnsTransport::Udp => {
                // `max_retries` counts datagrams in flight in all: 1 = a single datagram.
                let stream = UdpClientStream::builder(server, provider)
                    .with_timeout(Some(timeout))
                    .with_max_retries(1)
                    .build();
                let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
                (
                    client,
                    tokio::spawn(background.with_subscriber(dispatch.clone())),
                )
            }
            DnsTransport::Tcp => {
                let (connecting, handle) =
                    TcpClientStream::new(server, None, Some(timeout), provider);
                let stream = connecting.await.map_err(|e| failure_from(&e, server))?;
                let (client, background) =
                    Client::<TokioRuntimeProvider>::with_timeout(stream, handle, timeout);
                (
                    client,
                    tokio::spawn(background.with_subscriber(dispatch.clone())),
                )
            }
        };
        // The background task owns the socket; stop it however this function ends.
        let _background = AbortOnDrop(background);
        let mut options = DnsRequestOptions::default();
        options.use_edns = true;
        options.recursion_desired = self.settings.recursion_desired;
        let query = Query::query(self.name.clone(), self.settings.record_type.wire());
        let mut responses = client.lookup(query, options);
        let first = std::future::poll_fn(|cx| Pin::new(&mut responses).poll_next(cx)).await;
        let response = match first {
            Some(Ok(response)) => response,
            Some(Err(error)) => return Err(failure_from(&error, server)),
            None => return Err(failure_from(&NetError::Timeout, server)),
        };
        stats.latency_ms = Some(ms(sent.elapsed()));
        let code: u16 = response.metadata.response_code.into();
        stats.rcode = Some(rcode_name(code));
        stats.authoritative = response.metadata.authoritative;
        stats.truncated = response.metadata.truncation;
        stats.answers = u32::try_from(response.answers.len()).unwrap_or(u32::MAX);
        stats.records = response
            .answers
            .iter()
            .filter(|r| r.record_type() == self.settings.record_type.wire())
            .map(|r| render(&r.data))
            .collect();
        Ok(())
    }

    fn judge(&self, stats: &DnsStats) -> Outcome {
        let rcode = stats.rcode.as_deref().unwrap_or("none");
        let accepted = if self.rcodes.is_empty() {
            rcode == "NOERROR"
        } else {
            self.rcodes.iter().any(|code| rcode_name(*code) == rcode)
        };
        if !accepted {
            let wanted = if self.rcodes.is_empty() {
                "NOERROR".to_owned()
            } else {
                self.rcodes
                    .iter()
                    .map(|c| rcode_name(*c))
                    .collect::<Vec<_>>()
                    .join("|")
            };
            return Outcome::failure(
                FailureKind::Rcode,
                format!(
                    "{rcode} for {} {}, expected {wanted}",
                    self.name, stats.record_type
                ),
            );
        }
        let expect = &self.settings.expect;
        let count = u32::try_from(stats.records.len()).unwrap_or(u32::MAX);
        if let Some(min) = expect.min_answers
            && count < min
        {
            return Outcome::failure(
                FailureKind::Assertion,
                format!(
                    "{count} {} answers, expected at least {min}",
                    stats.record_type
                ),
            );
        }
        for wanted in &expect.answers_include {
            if !stats.records.iter().any(|r| same_answer(r, wanted)) {
                return Outcome::failure(
                    FailureKind::Assertion,
                    format!("no answer {wanted:?} among {:?}", stats.records),
                );
            }
        }
        for regex in &self.answers_match {
            if !stats.records.iter().any(|r| regex.is_match(r)) {
                return Outcome::failure(
                    FailureKind::Assertion,
                    format!("no answer matching /{regex}/ among {:?}", stats.records),
                );
            }
        }
        Outcome::Success
    }
}

/// The subscriber one query runs under: everything goes to the subscriber that was in place,
/// except `hickory` WARN events after the first, which are only counted.
struct JunkCounter {
    inner: tracing::Dispatch,
    ignored: AtomicU64,
}

impl JunkCounter {
    fn new() -> JunkCounter {
        JunkCounter {
            inner: tracing::dispatcher::get_default(Clone::clone),
            ignored: AtomicU64::new(0),
        }
    }
}

impl tracing::Subscriber for JunkCounter {
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.inner.new_span(span)
    }
    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        self.inner.record(span, values);
    }
    fn record_follows_from(&self, span: &tracing::span::Id, follows: &tracing::span::Id) {
        self.inner.record_follows_from(span, follows);
    }
    fn event(&self, event: &tracing::Event<'_>) {
        let metadata = event.metadata();
        if *metadata.level() == tracing::Level::WARN
            && metadata.target().starts_with("hickory")
            && self.ignored.fetch_add(1, Ordering::Relaxed) > 0
        {
            return;
        }
        self.inner.event(event);
    }
    fn enter(&self, span: &tracing::span::Id) {
        self.inner.enter(span);
    }
    fn exit(&self, span: &tracing::span::Id) {
        self.inner.exit(span);
    }
    fn clone_span(&self, id: &tracing::span::Id) -> tracing::span::Id {
        self.inner.clone_span(id)
    }
    fn try_close(&self, id: tracing::span::Id) -> bool {
        self.inner.try_close(id)
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A failed exchange, classified. A response with an error rcode is not a failure here (the
/// client hands those back as responses); this is for silence, sockets and garbage.
fn failure_from(error: &NetError, server: SocketAddr) -> Outcome {
    let kind = match error {
        NetError::Timeout => FailureKind::Timeout,
        NetError::Io(io) => classify_io_error(io),
        NetError::Dns(DnsError::ResponseCode(_) | DnsError::NoRecordsFound(_)) => {
            FailureKind::Rcode
        }
        NetError::Proto(_) => FailureKind::Protocol,
        _ => FailureKind::Send,
    };
    Outcome::failure(kind, format!("querying {server}: {error}"))
}

/// Zone-file style rendering; TXT as one quoted string of its joined character-strings.
fn render(data: &RData) -> String {
    match data {
        RData::TXT(txt) => {
            let joined: String = txt
                .txt_data
                .iter()
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect();
            format!("{joined:?}")
        }
        other => other.to_string(),
    }
}

fn same_answer(answer: &str, wanted: &str) -> bool {
    let trim = |s: &str| s.trim().trim_end_matches('.').to_ascii_lowercase();
    answer == wanted || trim(answer) == trim(wanted)
}

const RCODES: [(u16, &str); 11] = [
    (0, "NOERROR"),
    (1, "FORMERR"),
    (2, "SERVFAIL"),
    (3, "NXDOMAIN"),
    (4, "NOTIMP"),
    (5, "REFUSED"),
    (6, "YXDOMAIN"),
    (7, "YXRRSET"),
    (8, "NXRRSET"),
    (9, "NOTAUTH"),
    (10, "NOTZONE"),
];

/// The mnemonic of a response code (`RCODE16` for ones without a common name).
pub fn rcode_name(code: u16) -> String {
    RCODES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or_else(|| format!("RCODE{code}"), |(_, n)| (*n).to_owned())
}

fn rcode_from_name(name: &str) -> Option<u16> {
    let upper = name.trim().to_ascii_uppercase();
    RCODES
        .iter()
        .find(|(_, n)| *n == upper)
        .map(|(c, _)| *c)
        .or_else(|| upper.strip_prefix("RCODE").and_then(|n| n.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rcode_names_round_trip() {
        for code in 0..=10 {
            assert_eq!(rcode_from_name(&rcode_name(code)), Some(code));
        }
        assert_eq!(rcode_name(16), "RCODE16");
        assert_eq!(rcode_from_name("nxdomain"), Some(3));
        assert_eq!(rcode_from_name("bogus"), None);
    }

    #[test]
    fn answers_compare_names_loosely_and_data_exactly() {
        assert!(same_answer("10 mail.vantage.test.", "10 MAIL.vantage.test"));
        assert!(same_answer("198.18.0.10", "198.18.0.10"));
        assert!(!same_answer("198.18.0.10", "198.18.0.1"));
    }

    #[test]
    fn record_types_parse_case_insensitively() {
        assert_eq!("aaaa".parse::<DnsRecordType>(), Ok(DnsRecordType::Aaaa));
        assert!("PTR".parse::<DnsRecordType>().is_err());
    }

    /// A server that answers a query with `junk` datagrams of the wrong id, then the answer.
    async fn junk_server(junk: usize) -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = socket.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut query = [0u8; 512];
            let (len, client) = socket.recv_from(&mut query).await.expect("query");
            let mut answer = query[..len].to_vec();
            answer[2] |= 0x80; // QR: a response, with the question as asked and no answers
            let mut wrong = answer.clone();
            wrong[0] ^= 0xff;
            for _ in 0..junk {
                socket.send_to(&wrong, client).await.expect("send junk");
            }
            socket.send_to(&answer, client).await.expect("send answer");
        });
        addr
    }

    #[derive(Clone, Default)]
    struct Log(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Log {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn junk_datagrams_log_one_warning_and_a_count_per_query() {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let server = junk_server(100).await;
        let mut settings = DnsSettings::new(server, "junk.vantage.test", DnsRecordType::A);
        settings.timeout = Duration::from_secs(5);
        let observation = DnsCheck::new(settings)
            .expect("settings")
            .run(&CancellationToken::new())
            .await;
        assert!(observation.is_success(), "{observation:?}");
        let text = String::from_utf8(log.0.lock().expect("log lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("ignoring response with wrong message id"),
            "{text}"
        );
        assert!(
            lines[1]
                .contains("99 more datagrams ignored during this query, as the one logged above"),
            "{text}"
        );
    }

    #[test]
    fn invalid_settings_are_reported_before_any_run() {
        let server = SocketAddr::from(([127, 0, 0, 1], 53));
        let mut settings = DnsSettings::new(server, "example.test", DnsRecordType::A);
        settings.expect.rcodes = vec!["NOERROR".into(), "NOSUCH".into()];
        assert!(
            matches!(DnsCheck::new(settings.clone()), Err(DnsSettingsError::Rcode(r)) if r == "NOSUCH")
        );
        settings.expect.rcodes = vec![];
        settings.expect.answers_match = vec!["(".into()];
        assert!(matches!(
            DnsCheck::new(settings),
            Err(DnsSettingsError::Regex { .. })
        ));
    }
}
