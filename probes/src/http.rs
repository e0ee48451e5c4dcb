//! HTTP(S) checks with blackbox_exporter's phases: resolve, connect, tls, processing, transfer.
//!
//! ## How the phases are timed (and why this way)
//! Go's blackbox_exporter gets its phases from `net/http/httptrace` callbacks (DNSStart/DNSDone,
//! ConnectDone, TLSHandshakeStart/Done, GotFirstResponseByte). reqwest has no such trace API, and
//! doing DNS, TCP and TLS by hand would mean a second HTTP client stack beside the one every sink
//! uses. So the check stays on reqwest/hyper/rustls and observes each phase from the inside, through
//! hooks reqwest and rustls do offer:
//! - **resolve**: our own [`reqwest::dns::Resolve`] (system resolver, [`IpPreference`] applied) times
//!   every lookup. IP-literal URLs skip it (0 ms).
//! - **connect**: a tower layer on reqwest's connector (`ClientBuilder::connector_layer`) marks when a
//!   connection is asked for and when it is ready (TCP, or TCP + TLS for https).
//! - **tls**: the handshake begins when rustls builds its ClientHello, which is the moment it asks
//!   the client's session store for a ticket and a key-share hint; a per-run
//!   [`ClientSessionStore`] that never resumes records that instant. TLS = ready − that instant, and
//!   connect = that instant − end of resolution. The same per-run certificate verifier wrapper
//!   records the earliest `notAfter` of the presented chain (blackbox's
//!   `probe_ssl_earliest_cert_expiry`), also when verification then fails: so the chain is read
//!   before it is trusted, with `x509-parser` (a certificate it cannot read has no expiry).
//! - **processing**: connection ready → response headers (time to first byte, roughly).
//! - **transfer**: headers → last body byte (after decompression).
//!
//! Every run builds its own client: a fresh connection (no pool, no TLS resumption), no retries,
//! no proxy, HTTP/1.1. Redirects are followed by this module, not by reqwest, so that each hop is
//! counted against [`HttpSettings::max_redirects`] and its phases are added to the totals (as
//! blackbox does); a hop to the same origin keeps the request headers, a hop to another origin
//! drops `Authorization` and `Cookie`.
//!
//! A check that starts at a public address does not follow redirects into internal ones (loopback,
//! link-local such as the cloud metadata service 169.254.169.254, RFC 1918 private, carrier-grade
//! NAT, IPv6 unique local, unspecified; IPv4-mapped IPv6 counts as its IPv4 address) unless
//! [`HttpSettings::follow_private_redirects`] is set: the probe would otherwise fetch (and time,
//! and match against) the agent's own network on a remote server's say-so. "Public" is every
//! other address, special-purpose ranges such as 198.18.0.0/15 (benchmarking) included. The start
//! is judged by the address its connection reached; a redirect target by its literal host before
//! any connection, or by every address its name resolves to, in the resolver the connection then
//! uses (so a name that resolves to 169.254.169.254 is caught too, DNS rebinding included).
//!
//! ## Safety
//! One deadline ([`HttpSettings::timeout`]) bounds the whole check, a server trickling a byte a
//! second included; the body is read chunk by chunk and abandoned past
//! [`HttpSettings::max_body_bytes`] counted after gzip decompression. Only what the body
//! expectations need is kept ([`BodySeen`]): nothing without any, a window the length of the
//! longest `body_contains` text for those, the whole body (up to the cap) only for a regex.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use regex::Regex;
use reqwest::header::{AUTHORIZATION, COOKIE, HOST, HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode, Url};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, NamedGroup, SignatureScheme};
use serde::Serialize;

use crate::net::{IpPreference, classify_io_error, error_chain as chain, ms};
use crate::observation::{FailureKind, Measurement, Observation, Outcome};
use tokio_util::sync::CancellationToken;

/// Everything one HTTP check does and expects. Build an [`HttpCheck`] from it once; run that often.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    pub url: String,
    /// `GET` unless set.
    pub method: String,
    /// Request headers, in order. A `Host` header here wins over the URL's.
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Bounds the whole check: every hop, every phase, the body.
    pub timeout: Duration,
    /// Hard cap on body bytes read (after decompression); more is a [`FailureKind::BodyLimit`].
    /// The body is kept in memory (up to this) only when [`HttpExpect::body_matches`] is set.
    pub max_body_bytes: u64,
    /// Redirects followed before giving up with [`FailureKind::Redirect`]; 0 = do not follow, a 3xx
    /// is then the final response (and fails the default status expectation).
    pub max_redirects: u32,
    pub ip: IpPreference,
    /// TLS server name (SNI and certificate name) instead of the URL's host. The connection still
    /// goes to the URL's host, and the `Host` header stays the URL's unless set in `headers`.
    pub server_name: Option<String>,
    /// PEM file of CA certificates to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Follow redirects from a public address into loopback, link-local or private ones (see the
    /// module docs); off: such a redirect is a [`FailureKind::Redirect`].
    pub follow_private_redirects: bool,
    pub expect: HttpExpect,
}

impl HttpSettings {
    pub fn new(url: impl Into<String>) -> Self {
        HttpSettings {
            url: url.into(),
            method: "GET".to_owned(),
            headers: Vec::new(),
            body: None,
            timeout: Duration::from_secs(10),
            max_body_bytes: 1 << 20,
            max_redirects: 10,
            ip: IpPreference::Any,
            server_name: None,
            ca_file: None,
            follow_private_redirects: false,
            expect: HttpExpect::default(),
        }
    }
}

/// What makes a response a success. The default: any 2xx status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpExpect {
    /// Accepted status codes of the final response; empty = 200..=299.
    pub status_codes: Vec<u16>,
    /// Substrings the body must contain (searched as the body streams past).
    pub body_contains: Vec<String>,
    /// Regexes (the `regex` crate's syntax) the body must match. With any, the whole body (up to
    /// [`HttpSettings::max_body_bytes`]) is kept in memory to run them on.
    pub body_matches: Vec<String>,
    /// Response headers that must be present with a value matching the regex.
    pub headers: Vec<HeaderMatch>,
    /// The whole check must take at most this long.
    pub max_total: Option<Duration>,
    /// The earliest-expiring certificate of the chain must have at least this many days left.
    pub min_cert_expiry_days: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub regex: String,
}

/// Settings that cannot work, found before any run.
#[derive(Debug, thiserror::Error)]
pub enum HttpSettingsError {
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("invalid header {name:?}: {reason}")]
    Header { name: String, reason: String },
    #[error("invalid regex {regex:?}: {reason}")]
    Regex { regex: String, reason: String },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("CA file {0}")]
    CaFileRead(crate::files::FileError),
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// A validated, ready-to-run HTTP check. Cheap to run repeatedly; each run is independent.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    settings: HttpSettings,
    url: Url,
    method: Method,
    headers: HeaderMap,
    body_matches: Vec<Regex>,
    header_matches: Vec<(HeaderName, Regex)>,
    verifier: Arc<dyn ServerCertVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// The `http` measurement. Phase fields are `None` when the phase did not happen (`tls_ms` for
/// plain HTTP, everything after a failed connect). `success` and `failure` come from the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct HttpStats {
    /// The request method (the `method` tag).
    pub method: String,
    pub status_code: Option<u16>,
    pub resolve_ms: Option<f64>,
    pub connect_ms: Option<f64>,
    pub tls_ms: Option<f64>,
    pub processing_ms: Option<f64>,
    pub transfer_ms: Option<f64>,
    pub total_ms: f64,
    /// Body bytes read after decompression (at most `max_body_bytes`).
    pub body_bytes: u64,
    /// Days until the earliest `notAfter` of the presented chain (negative: expired).
    pub cert_expiry_days: Option<f64>,
    pub redirects: u32,
    /// Where the last request went.
    pub final_url: String,
}

impl HttpCheck {
    pub fn new(settings: HttpSettings) -> Result<Self, HttpSettingsError> {
        let url_error = |reason: String| HttpSettingsError::Url {
            url: settings.url.clone(),
            reason,
        };
        let url = Url::parse(&settings.url).map_err(|e| url_error(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(url_error("scheme must be http or https".to_owned()));
        }
        if url.host_str().is_none() {
            return Err(url_error("no host".to_owned()));
        }
        let method = Method::from_bytes(settings.method.as_bytes())
            .map_err(|_| HttpSettingsError::Method(settings.method.clone()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let header_error = |reason: String| HttpSettingsError::Header {
                name: name.clone(),
                reason,
            };
            let name_parsed =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| header_error(e.to_string()))?;
            let value = HeaderValue::from_str(value).map_err(|e| header_error(e.to_string()))?;
            headers.append(name_parsed, value);
        }
        let regex = |pattern: &str| {
            Regex::new(pattern).map_err(|e| HttpSettingsError::Regex {
                regex: pattern.to_owned(),
                reason: e.to_string(),
            })
        };
        let body_matches = settings
            .expect
            .body_matches
            .iter()
            .map(|p| regex(p))
            .collect::<Result<_, _>>()?;
        let header_matches = settings
            .expect
            .headers
            .iter()
            .map(|m| {
                let name = HeaderName::from_bytes(m.name.as_bytes()).map_err(|e| {
                    HttpSettingsError::Header {
                        name: m.name.clone(),
                        reason: e.to_string(),
                    }
                })?;
                Ok((name, regex(&m.regex)?))
            })
            .collect::<Result<_, HttpSettingsError>>()?;
        if let Some(name) = &settings.server_name {
            ServerName::try_from(name.as_str())
                .map_err(|_| HttpSettingsError::ServerName(name.clone()))?;
        }

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match &settings.ca_file {
            Some(path) => {
                let ca_error = |reason: String| HttpSettingsError::CaFile {
                    path: path.clone(),
                    reason,
                };
                let mut roots = rustls::RootCertStore::empty();
                let pem = crate::files::read_small(path, crate::files::CA_BUNDLE_LIMIT)
                    .map_err(HttpSettingsError::CaFileRead)?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    roots
                        .add(cert.map_err(|e| ca_error(e.to_string()))?)
                        .map_err(|e| ca_error(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(ca_error("no certificates in it".to_owned()));
                }
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| HttpSettingsError::Tls(e.to_string()))?
            }
            None => Arc::new(
                rustls_platform_verifier::Verifier::new(Arc::clone(&provider))
                    .map_err(|e| HttpSettingsError::Tls(e.to_string()))?,
            ),
        };
        Ok(HttpCheck {
            settings,
            url,
            method,
            headers,
            body_matches,
            header_matches,
            verifier,
            provider,
        })
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// Run the check once. Never fails: every problem is part of the [`Observation`].
    /// Returns promptly once `stop` fires ([`crate::unless_stopped`]).
    pub async fn run(&self, stop: &CancellationToken) -> Observation {
        crate::unless_stopped(stop, || self.empty_measurement(), async {
            self.run_detailed().await.0
        })
        .await
    }

    /// As [`HttpCheck::run`] without a stop token (`vantage http`), and every expectation's
    /// result (empty when no complete response arrived: nothing could be checked). The
    /// observation's outcome is the first that failed.
    pub async fn run_detailed(&self) -> (Observation, Vec<AssertionResult>) {
        let (observation, assertions, _) = self.run_seeing_body().await;
        (observation, assertions)
    }

    /// What a run that measured nothing reports: the request it was going to make.
    pub fn empty_measurement(&self) -> Measurement {
        Measurement::Http(HttpStats {
            method: self.method.to_string(),
            final_url: self.url.to_string(),
            ..HttpStats::default()
        })
    }

    /// As [`HttpCheck::run_detailed`], and what was kept of the body.
    async fn run_seeing_body(&self) -> (Observation, Vec<AssertionResult>, BodySeen) {
        let started_at = SystemTime::now();
        let started = Instant::now();
        let recorder = Recorder::default();
        let mut stats = HttpStats {
            method: self.method.to_string(),
            final_url: self.url.to_string(),
            ..HttpStats::default()
        };
        let mut body = BodySeen::for_expect(&self.settings.expect);
        let exchange = self.exchange(&recorder, &mut stats, &mut body);
        let result = tokio::time::timeout(self.settings.timeout, exchange).await;
        stats.cert_expiry_days = recorder.cert_expiry_days();
        stats.body_bytes = body.bytes;
        let mut assertions = Vec::new();
        let outcome = match result {
            Ok(Ok(response)) => {
                let (outcome, results) = self.judge(&response, &body, &stats, started.elapsed());
                assertions = results;
                outcome
            }
            Ok(Err(failure)) => failure,
            Err(_) => {
                // The exchange was dropped mid-phase: fold what the recorder saw into the totals.
                let phase = recorder.close_hop(&mut stats, Instant::now());
                Outcome::failure(
                    FailureKind::Timeout,
                    format!(
                        "no complete response within {:?} (during {phase})",
                        self.settings.timeout
                    ),
                )
            }
        };
        stats.total_ms = ms(started.elapsed());
        let observation = Observation {
            started_at,
            duration: started.elapsed(),
            outcome,
            measurement: Measurement::Http(stats),
        };
        (observation, assertions, body)
    }

    /// A client for one hop; `refuse_internal`: its resolver refuses names with internal addresses.
    fn client(
        &self,
        recorder: &Recorder,
        pins: HashMap<String, String>,
        refuse_internal: bool,
    ) -> Result<reqwest::Client, Outcome> {
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Outcome::failure(FailureKind::Tls, e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RecordingVerifier {
                inner: Arc::clone(&self.verifier),
                recorder: recorder.clone(),
            }))
            .with_no_client_auth();
        tls.resumption = Resumption::store(Arc::new(HandshakeStartStore(recorder.clone())));
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(Arc::new(TimedResolver {
                recorder: recorder.clone(),
                preference: self.settings.ip,
                pins,
                refuse_internal,
            }))
            .connector_layer(TimingLayer(recorder.clone()))
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .pool_max_idle_per_host(0)
            .no_proxy()
            .http1_only()
            .referer(false)
            .user_agent(concat!("vantage-probes/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Outcome::failure(FailureKind::Send, format!("building the HTTP client: {e}"))
            })
    }

    /// Request, follow redirects, read the body. `Err` is the failure outcome of a hop.
    async fn exchange(
        &self,
        recorder: &Recorder,
        stats: &mut HttpStats,
        body: &mut BodySeen,
    ) -> Result<Response, Outcome> {
        let mut url = self.url.clone();
        let mut method = self.method.clone();
        let mut headers = self.headers.clone();
        let mut request_body = self.settings.body.clone();
        // Set once the first hop answered: it reached a public address, so the redirects it
        // starts may not lead into internal ones.
        let mut guard_redirects = false;
        loop {
            let (request_url, pins) = self.connect_url(&url, &mut headers)?;
            if let Some(ip) = literal_ip(&request_url)
                && !self.settings.ip.allows(ip)
            {
                return Err(Outcome::failure(
                    FailureKind::Resolve,
                    format!(
                        "{ip} is not allowed by the address family preference {:?}",
                        self.settings.ip
                    ),
                ));
            }
            let client = self.client(recorder, pins, guard_redirects)?;
            let mut request = client
                .request(method.clone(), request_url)
                .headers(headers.clone());
            if let Some(bytes) = &request_body {
                request = request.body(bytes.clone());
            }
            recorder.open_hop(Instant::now());
            let sent = request.send().await;
            let headers_at = Instant::now();
            let response = match sent {
                Ok(response) => response,
                Err(error) => {
                    let phase = recorder.close_hop(stats, headers_at);
                    return Err(classify_request_error(&error, phase));
                }
            };
            recorder.close_hop(stats, headers_at);
            if stats.redirects == 0 {
                // No peer address (never for a TCP connection) counts as public: refuse.
                guard_redirects = !self.settings.follow_private_redirects
                    && response
                        .remote_addr()
                        .is_none_or(|peer| internal_range(peer.ip()).is_none());
            }
            let status = response.status();
            stats.status_code = Some(status.as_u16());
            stats.final_url = url.to_string();

            if status.is_redirection() && self.settings.max_redirects > 0 {
                if let Some(next) = redirect_target(&url, response.headers()) {
                    if stats.redirects >= self.settings.max_redirects {
                        return Err(Outcome::failure(
                            FailureKind::Redirect,
                            format!(
                                "still redirected after {} redirects (to {next})",
                                stats.redirects
                            ),
                        ));
                    }
                    stats.redirects += 1;
                    if guard_redirects
                        && let Some(ip) = literal_ip(&next)
                        && let Some(range) = internal_range(ip)
                    {
                        return Err(Outcome::failure(
                            FailureKind::Redirect,
                            format!(
                                "redirect to {next} refused: {ip} is {range}; {PRIVATE_REDIRECT_HINT}"
                            ),
                        ));
                    }
                    if next.origin() != url.origin() {
                        headers.remove(AUTHORIZATION);
                        headers.remove(COOKIE);
                        headers.remove(HOST);
                    }
                    let keeps_method = matches!(
                        status,
                        StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
                    );
                    if !keeps_method && method != Method::HEAD {
                        method = Method::GET;
                        request_body = None;
                    }
                    drop(response);
                    url = next;
                    continue;
                }
            }
            recorder.with(|t| t.transfer_from = Some(headers_at));
            return self.read_body(response, headers_at, stats, body).await;
        }
    }

    /// The URL to hand reqwest for `url`, and the resolver pins that go with it: with a server
    /// name override, the host becomes the override (so SNI and verification use it) and the
    /// override resolves to the URL's real host; the `Host` header keeps the real host.
    fn connect_url(
        &self,
        url: &Url,
        headers: &mut HeaderMap,
    ) -> Result<(Url, HashMap<String, String>), Outcome> {
        let mut pins = HashMap::new();
        let Some(server_name) = &self.settings.server_name else {
            return Ok((url.clone(), pins));
        };
        let Some(host) = url.host_str() else {
            return Ok((url.clone(), pins));
        };
        let original_host = self.url.host_str().unwrap_or_default();
        if url.scheme() != "https"
            || host.eq_ignore_ascii_case(server_name)
            || !host.eq_ignore_ascii_case(original_host)
        {
            return Ok((url.clone(), pins));
        }
        if !headers.contains_key(HOST) {
            let authority = match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            let value = HeaderValue::from_str(&authority).map_err(|e| {
                Outcome::failure(FailureKind::Send, format!("Host header {authority:?}: {e}"))
            })?;
            headers.insert(HOST, value);
        }
        let mut rewritten = url.clone();
        rewritten.set_host(Some(server_name)).map_err(|e| {
            Outcome::failure(
                FailureKind::Send,
                format!("server name {server_name:?}: {e}"),
            )
        })?;
        pins.insert(server_name.to_ascii_lowercase(), host.to_owned());
        Ok((rewritten, pins))
    }

    async fn read_body(
        &self,
        mut response: reqwest::Response,
        headers_at: Instant,
        stats: &mut HttpStats,
        body: &mut BodySeen,
    ) -> Result<Response, Outcome> {
        let cap = self.settings.max_body_bytes;
        let needles = &self.settings.expect.body_contains;
        let result = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room =
                        usize::try_from(cap.saturating_sub(body.bytes)).unwrap_or(usize::MAX);
                    if chunk.len() > room {
                        body.take(&chunk[..room], needles);
                        break Err(Outcome::failure(
                            FailureKind::BodyLimit,
                            format!("body larger than {cap} bytes (after decompression)"),
                        ));
                    }
                    body.take(&chunk, needles);
                }
                Ok(None) => break Ok(()),
                Err(error) => {
                    break Err(Outcome::failure(
                        FailureKind::Protocol,
                        format!("reading the body: {}", chain(&error)),
                    ));
                }
            }
        };
        stats.body_bytes = body.bytes;
        stats.transfer_ms = Some(ms(headers_at.elapsed()));
        result?;
        Ok(Response {
            status: response.status(),
            headers: response.headers().clone(),
        })
    }

    /// Apply every expectation to a complete response: one [`AssertionResult`] per expectation,
    /// in a fixed order (status, headers, body substrings, body regexes, certificate, time). The
    /// outcome is the first one that failed.
    fn judge(
        &self,
        response: &Response,
        body: &BodySeen,
        stats: &HttpStats,
        elapsed: Duration,
    ) -> (Outcome, Vec<AssertionResult>) {
        let expect = &self.settings.expect;
        let mut results: Vec<(AssertionResult, Option<(FailureKind, String)>)> = Vec::new();
        let mut check = |assertion: String, failure: Option<(FailureKind, String)>, ok: String| {
            let detail = match &failure {
                Some((_, message)) => message.clone(),
                None => ok,
            };
            results.push((
                AssertionResult {
                    assertion,
                    passed: failure.is_none(),
                    detail,
                },
                failure,
            ));
        };

        let code = response.status.as_u16();
        let status_ok = if expect.status_codes.is_empty() {
            response.status.is_success()
        } else {
            expect.status_codes.contains(&code)
        };
        let wanted = if expect.status_codes.is_empty() {
            "2xx".to_owned()
        } else {
            format!("{:?}", expect.status_codes)
        };
        check(
            format!("status is {wanted}"),
            (!status_ok).then(|| {
                (
                    FailureKind::Status,
                    format!("status {code}, expected {wanted}"),
                )
            }),
            format!("status {code}"),
        );
        for (name, regex) in &self.header_matches {
            let values: Vec<String> = response
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            let matched = values.iter().find(|v| regex.is_match(v));
            check(
                format!("header {name} matches /{regex}/"),
                matched.is_none().then(|| {
                    (
                        FailureKind::Assertion,
                        format!("no header {name} matching /{regex}/"),
                    )
                }),
                format!("{name}: {}", matched.cloned().unwrap_or_default()),
            );
        }
        for (needle, found) in expect.body_contains.iter().zip(&body.found) {
            check(
                format!("body contains {needle:?}"),
                (!found).then(|| {
                    (
                        FailureKind::Assertion,
                        format!("body does not contain {needle:?}"),
                    )
                }),
                "found".to_owned(),
            );
        }
        if !self.body_matches.is_empty() {
            let text = String::from_utf8_lossy(body.kept.as_deref().unwrap_or_default());
            for regex in &self.body_matches {
                check(
                    format!("body matches /{regex}/"),
                    (!regex.is_match(&text)).then(|| {
                        (
                            FailureKind::Assertion,
                            format!("body does not match /{regex}/"),
                        )
                    }),
                    "matched".to_owned(),
                );
            }
        }
        if let Some(min_days) = expect.min_cert_expiry_days {
            let assertion = format!("certificate valid for at least {min_days} days");
            match stats.cert_expiry_days_hint(self.url.scheme()) {
                CertDays::Plain => check(assertion, None, "plain HTTP: no certificate".to_owned()),
                CertDays::Missing => check(
                    assertion,
                    Some((
                        FailureKind::Assertion,
                        "no certificate to check the expiry of".to_owned(),
                    )),
                    String::new(),
                ),
                CertDays::Days(days) => check(
                    assertion,
                    (days < min_days).then(|| {
                        (
                            FailureKind::Assertion,
                            format!(
                                "certificate expires in {days:.1} days, expected at least {min_days}"
                            ),
                        )
                    }),
                    format!("expires in {days:.1} days"),
                ),
            }
        }
        if let Some(max) = expect.max_total {
            check(
                format!("total time at most {max:?}"),
                (elapsed > max).then(|| {
                    (
                        FailureKind::Assertion,
                        format!("took {elapsed:?}, expected at most {max:?}"),
                    )
                }),
                format!("took {elapsed:?}"),
            );
        }
        let outcome = results
            .iter()
            .find_map(|(_, failure)| failure.clone())
            .map_or(Outcome::Success, |(kind, message)| {
                Outcome::failure(kind, message)
            });
        (outcome, results.into_iter().map(|(r, _)| r).collect())
    }
}

/// One expectation of an HTTP check and whether the response met it ([`HttpCheck::run_detailed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssertionResult {
    /// What was expected, e.g. `status is 2xx`, `body contains "ok"`.
    pub assertion: String,
    pub passed: bool,
    /// What was found (`status 200`), or why it failed.
    pub detail: String,
}

/// What [`HttpCheck::judge`] needs of a response once its body is read.
#[derive(Debug)]
struct Response {
    status: StatusCode,
    headers: HeaderMap,
}

enum CertDays {
    Plain,
    Missing,
    Days(f64),
}

impl HttpStats {
    fn cert_expiry_days_hint(&self, scheme: &str) -> CertDays {
        match self.cert_expiry_days {
            Some(days) => CertDays::Days(days),
            None if scheme == "https" => CertDays::Missing,
            None => CertDays::Plain,
        }
    }
}

/// What the body expectations need of a body, gathered as it streams past: the body itself only
/// when a regex must run on it; for `body_contains`, which texts were seen.
#[derive(Debug, Default)]
struct BodySeen {
    /// Bytes read, after decompression.
    bytes: u64,
    /// The body (up to the cap), kept only for [`HttpExpect::body_matches`].
    kept: Option<Vec<u8>>,
    /// Per [`HttpExpect::body_contains`] entry: seen yet?
    found: Vec<bool>,
    /// The body's last bytes, one short of the longest text not yet seen: a text split across
    /// chunks is found when the next chunk arrives.
    tail: Vec<u8>,
}

impl BodySeen {
    fn for_expect(expect: &HttpExpect) -> Self {
        BodySeen {
            kept: (!expect.body_matches.is_empty()).then(Vec::new),
            found: vec![false; expect.body_contains.len()],
            ..BodySeen::default()
        }
    }

    /// The next chunk of the body; `needles` are the `body_contains` texts.
    fn take(&mut self, chunk: &[u8], needles: &[String]) {
        self.bytes += chunk.len() as u64;
        if let Some(kept) = &mut self.kept {
            kept.extend_from_slice(chunk);
        }
        let longest_missing = needles
            .iter()
            .zip(&self.found)
            .filter(|(_, found)| !**found)
            .map(|(needle, _)| needle.len())
            .max();
        let Some(longest) = longest_missing else {
            self.tail = Vec::new();
            return;
        };
        let keep = longest.saturating_sub(1);
        // Where the previous chunks end and this one begins: the only place the chunk alone misses.
        let mut seam = std::mem::take(&mut self.tail);
        seam.extend_from_slice(&chunk[..chunk.len().min(keep)]);
        for (needle, found) in needles.iter().zip(&mut self.found) {
            let needle = needle.as_bytes();
            *found = *found || contains(chunk, needle) || contains(&seam, needle);
        }
        if chunk.len() >= keep {
            seam.clear();
            seam.extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            seam.drain(..seam.len().saturating_sub(keep));
        }
        self.tail = seam;
    }

    /// Bytes of memory held for the body.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.kept.as_ref().map_or(0, Vec::capacity) + self.tail.capacity()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

fn literal_ip(url: &Url) -> Option<std::net::IpAddr> {
    url.host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Which internal range `ip` is in (`None`: public), for redirects from a public address.
fn internal_range(ip: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_private() {
                Some("private (RFC 1918)")
            } else if a == 100 && (64..128).contains(&b) {
                Some("carrier-grade NAT (100.64.0.0/10)")
            } else if v4.is_unspecified() {
                Some("unspecified (this host)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique local (fc00::/7)")
            } else if v6.is_unspecified() {
                Some("unspecified (this host)")
            } else {
                None
            }
        }
    }
}

/// Why a redirect into an internal address was refused, and how to allow it.
const PRIVATE_REDIRECT_HINT: &str = "the check started at a public address, and follows \
    redirects into internal ones only with follow_private_redirects = true (vantage http: \
    --follow-private-redirects)";

/// The absolute URL a 3xx response points to, if it has a usable `Location`.
fn redirect_target(base: &Url, headers: &HeaderMap) -> Option<Url> {
    let location = headers.get(LOCATION)?.to_str().ok()?;
    let next = base.join(location).ok()?;
    matches!(next.scheme(), "http" | "https").then_some(next)
}

/// Classify a failed request by the phase it died in and the errors in its cause chain.
fn classify_request_error(error: &reqwest::Error, phase: Phase) -> Outcome {
    let message = chain(error);
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut io_kind = None;
    while let Some(cause) = source {
        if cause.downcast_ref::<ResolveFailed>().is_some() {
            return Outcome::failure(FailureKind::Resolve, message);
        }
        if let Some(refused) = cause.downcast_ref::<InternalRedirect>() {
            return Outcome::failure(FailureKind::Redirect, refused.to_string());
        }
        if cause.downcast_ref::<rustls::Error>().is_some() {
            return Outcome::failure(FailureKind::Tls, message);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return Outcome::failure(FailureKind::Tls, message);
            }
            io_kind.get_or_insert(classify_io_error(io));
        }
        source = cause.source();
    }
    let kind = match (phase, io_kind) {
        (Phase::Resolve, _) => FailureKind::Resolve,
        (Phase::Tls, _) => FailureKind::Tls,
        (Phase::Connect, Some(kind)) => kind,
        (Phase::Connect, None) => FailureKind::Send,
        (Phase::Processing | Phase::Transfer, _) => FailureKind::Protocol,
    };
    Outcome::failure(kind, message)
}

/// The `notAfter` of a DER certificate, in seconds since the Unix epoch; `None` if it does not
/// parse. It reads the server's chain before (and whether or not) it is trusted, so it uses
/// `x509-parser`, made for untrusted input, and leaves extensions unparsed (expiry needs none).
pub fn cert_not_after(der: &[u8]) -> Option<i64> {
    use x509_parser::certificate::X509CertificateParser;
    use x509_parser::nom::Parser;
    let (_, cert) = X509CertificateParser::new()
        .with_deep_parse_extensions(false)
        .parse(der)
        .ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The phase a hop was in when it ended (or was cut off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Resolve,
    Connect,
    Tls,
    Processing,
    Transfer,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Resolve => "resolve",
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Processing => "processing",
            Phase::Transfer => "transfer",
        })
    }
}

/// Instants of one hop, written by the hooks, folded into [`HttpStats`] when the hop ends.
#[derive(Debug, Default, Clone, Copy)]
struct HopTimes {
    sent: Option<Instant>,
    resolve: Option<(Instant, Option<Instant>)>,
    connect_start: Option<Instant>,
    tls_start: Option<Instant>,
    ready: Option<Instant>,
}

#[derive(Debug, Default)]
struct Timeline {
    hop: HopTimes,
    /// Earliest `notAfter` seen in any presented chain, Unix seconds.
    not_after: Option<i64>,
    /// When the final response's headers arrived: the body is being read since.
    transfer_from: Option<Instant>,
}

/// Shared by the hooks of one run.
#[derive(Debug, Default, Clone)]
struct Recorder(Arc<Mutex<Timeline>>);

impl Recorder {
    fn with<T>(&self, f: impl FnOnce(&mut Timeline) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn open_hop(&self, now: Instant) {
        self.with(|t| {
            t.hop = HopTimes {
                sent: Some(now),
                ..HopTimes::default()
            }
        });
    }

    /// Add the current hop's phases to `stats` (up to `end`); returns the phase it ended in.
    fn close_hop(&self, stats: &mut HttpStats, end: Instant) -> Phase {
        let (hop, transfer_from) =
            self.with(|t| (std::mem::take(&mut t.hop), t.transfer_from.take()));
        let add = |field: &mut Option<f64>, from: Instant, to: Instant| {
            *field = Some(field.unwrap_or(0.0) + ms(to.saturating_duration_since(from)));
        };
        if let Some(from) = transfer_from {
            stats.transfer_ms = Some(ms(end.saturating_duration_since(from)));
            return Phase::Transfer;
        }
        let Some(sent) = hop.sent else {
            return Phase::Resolve;
        };
        let mut phase = Phase::Connect;
        let mut connect_from = hop.connect_start.unwrap_or(sent);
        if let Some((start, done)) = hop.resolve {
            match done {
                Some(done) => {
                    add(&mut stats.resolve_ms, start, done);
                    connect_from = done;
                }
                None => {
                    add(&mut stats.resolve_ms, start, end);
                    return Phase::Resolve;
                }
            }
        } else if hop.connect_start.is_some() {
            // An IP literal: nothing to resolve.
            stats.resolve_ms.get_or_insert(0.0);
        }
        let Some(_) = hop.connect_start else {
            return phase;
        };
        match (hop.tls_start, hop.ready) {
            (Some(tls), ready) => {
                add(&mut stats.connect_ms, connect_from, tls);
                add(&mut stats.tls_ms, tls, ready.unwrap_or(end));
                if ready.is_none() {
                    return Phase::Tls;
                }
            }
            (None, Some(ready)) => add(&mut stats.connect_ms, connect_from, ready),
            (None, None) => {
                add(&mut stats.connect_ms, connect_from, end);
                return phase;
            }
        }
        if let Some(ready) = hop.ready {
            add(&mut stats.processing_ms, ready, end);
            phase = Phase::Processing;
        }
        phase
    }

    fn cert_expiry_days(&self) -> Option<f64> {
        let not_after = self.with(|t| t.not_after)?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        Some((not_after as f64 - now) / 86_400.0)
    }
}

/// Resolution failed; a distinct type so the error chain says which phase it was.
#[derive(Debug)]
struct ResolveFailed(String);

impl fmt::Display for ResolveFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ResolveFailed {}

/// The system resolver, timed, with the family preference and the server-name pins applied.
struct TimedResolver {
    recorder: Recorder,
    preference: IpPreference,
    /// lower-case name → host to resolve instead (server name override).
    pins: HashMap<String, String>,
    /// A redirect from a public address: a name with any internal address is refused.
    refuse_internal: bool,
}

/// A redirect target resolved to an internal address; see the module docs.
#[derive(Debug)]
struct InternalRedirect(String);

impl fmt::Display for InternalRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InternalRedirect {}

impl reqwest::dns::Resolve for TimedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let recorder = self.recorder.clone();
        let preference = self.preference;
        let refuse_internal = self.refuse_internal;
        let host = self
            .pins
            .get(&name.as_str().to_ascii_lowercase())
            .cloned()
            .unwrap_or_else(|| name.as_str().to_owned());
        Box::pin(async move {
            let start = Instant::now();
            recorder.with(|t| t.hop.resolve = Some((start, None)));
            let (result, took) = crate::net::resolve(&host, 0, preference).await;
            recorder.with(|t| t.hop.resolve = Some((start, Some(start + took))));
            let addrs: Vec<SocketAddr> =
                result.map_err(|why| -> Box<dyn std::error::Error + Send + Sync> {
                    Box::new(ResolveFailed(why))
                })?;
            if refuse_internal
                && let Some((ip, range)) = addrs
                    .iter()
                    .find_map(|a| Some((a.ip(), internal_range(a.ip())?)))
            {
                return Err(Box::new(InternalRedirect(format!(
                    "redirect to {host} refused: it resolves to {ip}, which is {range}; \
                     {PRIVATE_REDIRECT_HINT}"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Marks when reqwest asks for a connection and when it has one (TCP, plus TLS for https).
#[derive(Clone, Debug)]
struct TimingLayer(Recorder);

impl<S> tower_layer::Layer<S> for TimingLayer {
    type Service = TimingService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TimingService {
            inner,
            recorder: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct TimingService<S> {
    inner: S,
    recorder: Recorder,
}

impl<S, R> tower_service::Service<R> for TimingService<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let recorder = self.recorder.clone();
        recorder.with(|t| t.hop.connect_start = Some(Instant::now()));
        let connecting = self.inner.call(request);
        Box::pin(async move {
            let connected = connecting.await;
            if connected.is_ok() {
                recorder.with(|t| t.hop.ready = Some(Instant::now()));
            }
            connected
        })
    }
}

/// A session store that never resumes and notes when rustls starts a handshake: building the
/// ClientHello is when rustls looks up tickets and key-share hints.
#[derive(Debug)]
struct HandshakeStartStore(Recorder);

impl HandshakeStartStore {
    fn mark(&self) {
        self.0.with(|t| {
            t.hop.tls_start.get_or_insert_with(Instant::now);
        });
    }
}

impl ClientSessionStore for HandshakeStartStore {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        self.mark();
        None
    }
    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.mark();
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(&self, _: ServerName<'static>, _: Tls13ClientSessionValue) {}
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.mark();
        None
    }
}

/// Delegates verification; records the earliest `notAfter` of the presented chain first.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    recorder: Recorder,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let earliest = std::iter::once(end_entity)
            .chain(intermediates)
            .filter_map(|c| cert_not_after(c))
            .min();
        if let Some(earliest) = earliest {
            self.recorder.with(|t| {
                t.not_after = Some(t.not_after.map_or(earliest, |seen| seen.min(earliest)))
            });
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate's DER, valid until `not_after`.
    fn cert_until(not_after: time::OffsetDateTime) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["x.test".to_owned()]).expect("params");
        params.not_after = not_after;
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn not_after_is_read_from_utc_and_generalized_time() {
        // RFC 5280: UTCTime up to 2049, GeneralizedTime from 2050.
        let utc = cert_until(rcgen::date_time_ymd(2038, 1, 19));
        assert_eq!(cert_not_after(&utc), Some(2_147_472_000));
        let generalized = cert_until(rcgen::date_time_ymd(2050, 1, 1));
        assert_eq!(cert_not_after(&generalized), Some(2_524_608_000));
        assert_eq!(cert_not_after(b"not a certificate"), None);
        assert_eq!(cert_not_after(&utc[..utc.len() / 2]), None, "truncated");
    }

    #[test]
    fn a_non_ascii_not_after_is_no_expiry_not_a_panic() {
        let mut der = cert_until(rcgen::date_time_ymd(2038, 1, 19));
        // Validity: SEQUENCE of two 13-byte UTCTimes; put a 3-byte UTF-8 character in notAfter,
        // so that byte offsets no longer fall on character boundaries.
        let validity = der
            .windows(4)
            .position(|w| w == [0x30, 0x1e, 0x17, 0x0d])
            .expect("a UTCTime validity");
        let not_after = validity + 2 + 15 + 2;
        der[not_after + 1..not_after + 4].copy_from_slice("€".as_bytes());
        assert_eq!(cert_not_after(&der), None);
    }

    #[test]
    fn body_contains_finds_texts_split_across_chunks_keeping_only_a_short_tail() {
        let needles = [
            "hello world".to_owned(),
            "!".to_owned(),
            "absent".to_owned(),
        ];
        let expect = HttpExpect {
            body_contains: needles.to_vec(),
            ..HttpExpect::default()
        };
        let mut seen = BodySeen::for_expect(&expect);
        for chunk in ["xxhel", "l", "o w", "orld and much more text after it", "!"] {
            seen.take(chunk.as_bytes(), &needles);
            assert!(seen.tail.len() < "hello world".len(), "{seen:?}");
        }
        assert_eq!(seen.found, [true, true, false]);
        assert_eq!(seen.bytes, 42);
        assert_eq!(seen.kept, None);
    }

    /// A loopback server answering every request with `size` bytes of `.` ending in `THE END`.
    async fn serve_large_body(size: usize) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
                    );
                    stream.write_all(head.as_bytes()).await?;
                    let block = vec![b'.'; 1 << 16];
                    let mut left = size - "THE END".len();
                    while left > 0 {
                        let n = left.min(block.len());
                        stream.write_all(&block[..n]).await?;
                        left -= n;
                    }
                    stream.write_all(b"THE END").await?;
                    stream.shutdown().await
                });
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_body_is_kept_in_memory_only_for_a_regex() {
        let run = |size: usize, expect: HttpExpect| async move {
            let addr = serve_large_body(size).await;
            let check = HttpCheck::new(HttpSettings {
                max_body_bytes: size as u64,
                timeout: Duration::from_secs(60),
                expect,
                ..HttpSettings::new(format!("http://{addr}/"))
            })
            .expect("settings");
            let (observation, _, seen) = check.run_seeing_body().await;
            assert_eq!(observation.outcome, Outcome::Success, "{observation:?}");
            let Measurement::Http(stats) = observation.measurement else {
                panic!("not http: {observation:?}");
            };
            assert_eq!(stats.body_bytes, size as u64);
            seen.held()
        };
        let counted_only = run(64 << 20, HttpExpect::default()).await;
        assert_eq!(counted_only, 0, "no body expectation: nothing kept");
        let searched = run(
            64 << 20,
            HttpExpect {
                body_contains: vec!["THE END".to_owned()],
                ..HttpExpect::default()
            },
        )
        .await;
        assert!(searched < 64, "body_contains kept {searched} bytes");
        let matched = run(
            1 << 20,
            HttpExpect {
                body_matches: vec!["THE END$".to_owned()],
                ..HttpExpect::default()
            },
        )
        .await;
        assert!(
            matched >= 1 << 20,
            "a regex needs the whole body: {matched}"
        );
    }

    #[test]
    fn internal_ranges_are_told_from_public_addresses() {
        let range = |ip: &str| internal_range(ip.parse().expect("ip"));
        for (ip, expected) in [
            ("169.254.169.254", "link-local"),
            ("::ffff:169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("::1", "loopback"),
            ("10.1.2.3", "private (RFC 1918)"),
            ("172.16.0.1", "private (RFC 1918)"),
            ("172.31.255.255", "private (RFC 1918)"),
            ("192.168.1.1", "private (RFC 1918)"),
            ("100.64.0.1", "carrier-grade NAT (100.64.0.0/10)"),
            ("100.127.255.255", "carrier-grade NAT (100.64.0.0/10)"),
            ("fc00::1", "unique local (fc00::/7)"),
            ("fd00:18::2", "unique local (fc00::/7)"),
            ("0.0.0.0", "unspecified (this host)"),
            ("::", "unspecified (this host)"),
        ] {
            assert_eq!(range(ip), Some(expected), "{ip}");
        }
        for public in [
            "172.32.0.1",
            "172.15.255.255",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.0.1",
            "198.18.0.2",
            "192.0.2.1",
            "fec0::1",
            "2001:db8::1",
            "::ffff:198.18.0.2",
        ] {
            assert_eq!(range(public), None, "{public}");
        }
    }

    #[test]
    fn redirect_targets_resolve_relative_locations_and_refuse_other_schemes() {
        let base = Url::parse("https://example.test/a/b?q=1").expect("url");
        let with = |location: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(LOCATION, HeaderValue::from_str(location).expect("value"));
            redirect_target(&base, &headers).map(|u| u.to_string())
        };
        assert_eq!(with("/c").as_deref(), Some("https://example.test/c"));
        assert_eq!(with("d").as_deref(), Some("https://example.test/a/d"));
        assert_eq!(
            with("http://other.test/").as_deref(),
            Some("http://other.test/")
        );
        assert_eq!(with("ftp://other.test/"), None);
        assert_eq!(redirect_target(&base, &HeaderMap::new()), None);
    }

    #[test]
    fn a_hop_cut_off_during_tls_reports_the_tls_phase_and_its_time_so_far() {
        let recorder = Recorder::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        recorder.open_hop(t0);
        recorder.with(|t| {
            t.hop.resolve = Some((at(0), Some(at(10))));
            t.hop.connect_start = Some(at(0));
            t.hop.tls_start = Some(at(30));
        });
        let mut stats = HttpStats::default();
        assert_eq!(recorder.close_hop(&mut stats, at(100)), Phase::Tls);
        assert_eq!(stats.resolve_ms, Some(10.0));
        assert_eq!(stats.connect_ms, Some(20.0));
        assert_eq!(stats.tls_ms, Some(70.0));
        assert_eq!(stats.processing_ms, None);
    }

    #[test]
    fn phases_of_several_hops_add_up() {
        let recorder = Recorder::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut stats = HttpStats::default();
        for base in [0, 100] {
            recorder.open_hop(at(base));
            recorder.with(|t| {
                t.hop.connect_start = Some(at(base));
                t.hop.ready = Some(at(base + 5));
            });
            assert_eq!(
                recorder.close_hop(&mut stats, at(base + 50)),
                Phase::Processing
            );
        }
        assert_eq!(stats.resolve_ms, Some(0.0), "IP literal");
        assert_eq!(stats.connect_ms, Some(10.0));
        assert_eq!(stats.tls_ms, None);
        assert_eq!(stats.processing_ms, Some(90.0));
    }
}
