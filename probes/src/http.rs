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
//!   `probe_ssl_earliest_cert_expiry`), also when verification then fails.
//! - **processing**: connection ready → response headers (time to first byte, roughly).
//! - **transfer**: headers → last body byte (after decompression).
//!
//! Every run builds its own client: a fresh connection (no pool, no TLS resumption), no retries,
//! no proxy, HTTP/1.1. Redirects are followed by this module, not by reqwest, so that each hop is
//! counted against [`HttpSettings::max_redirects`] and its phases are added to the totals (as
//! blackbox does); a hop to the same origin keeps the request headers, a hop to another origin
//! drops `Authorization` and `Cookie`.
//!
//! ## Safety
//! One deadline ([`HttpSettings::timeout`]) bounds the whole check, a server trickling a byte a
//! second included; the body is read chunk by chunk and abandoned past
//! [`HttpSettings::max_body_bytes`] counted after gzip decompression, so a gzip bomb costs at most
//! that much memory.

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

use crate::net::{IpPreference, classify_io_error, ms};
use crate::observation::{FailureKind, Measurement, Observation, Outcome};

/// Everything one HTTP check does and expects. Build an [`HttpCheck`] from it once; run that often.
#[derive(Debug, Clone)]
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
            expect: HttpExpect::default(),
        }
    }
}

/// What makes a response a success. The default: any 2xx status.
#[derive(Debug, Clone, Default)]
pub struct HttpExpect {
    /// Accepted status codes of the final response; empty = 200..=299.
    pub status_codes: Vec<u16>,
    /// Substrings the body must contain.
    pub body_contains: Vec<String>,
    /// Regexes (the `regex` crate's syntax) the body must match.
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
    pub async fn run(&self) -> Observation {
        self.run_detailed().await.0
    }

    /// As [`HttpCheck::run`], and every expectation's result (empty when no complete response
    /// arrived: nothing could be checked). The observation's outcome is the first that failed.
    pub async fn run_detailed(&self) -> (Observation, Vec<AssertionResult>) {
        let started_at = SystemTime::now();
        let started = Instant::now();
        let recorder = Recorder::default();
        let mut stats = HttpStats {
            method: self.method.to_string(),
            final_url: self.url.to_string(),
            ..HttpStats::default()
        };
        let mut body = Vec::new();
        let exchange = self.exchange(&recorder, &mut stats, &mut body);
        let result = tokio::time::timeout(self.settings.timeout, exchange).await;
        stats.cert_expiry_days = recorder.cert_expiry_days();
        stats.body_bytes = body.len() as u64;
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
        (observation, assertions)
    }

    fn client(
        &self,
        recorder: &Recorder,
        pins: HashMap<String, String>,
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
        body: &mut Vec<u8>,
    ) -> Result<Response, Outcome> {
        let mut url = self.url.clone();
        let mut method = self.method.clone();
        let mut headers = self.headers.clone();
        let mut request_body = self.settings.body.clone();
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
            let client = self.client(recorder, pins)?;
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
        body: &mut Vec<u8>,
    ) -> Result<Response, Outcome> {
        let cap = self.settings.max_body_bytes;
        let result = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = usize::try_from(cap.saturating_sub(body.len() as u64))
                        .unwrap_or(usize::MAX);
                    if chunk.len() > room {
                        body.extend_from_slice(&chunk[..room]);
                        break Err(Outcome::failure(
                            FailureKind::BodyLimit,
                            format!("body larger than {cap} bytes (after decompression)"),
                        ));
                    }
                    body.extend_from_slice(&chunk);
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
        stats.body_bytes = body.len() as u64;
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
        body: &[u8],
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
        for needle in &expect.body_contains {
            check(
                format!("body contains {needle:?}"),
                (!contains(body, needle.as_bytes())).then(|| {
                    (
                        FailureKind::Assertion,
                        format!("body does not contain {needle:?}"),
                    )
                }),
                "found".to_owned(),
            );
        }
        if !self.body_matches.is_empty() {
            let text = String::from_utf8_lossy(body);
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn literal_ip(url: &Url) -> Option<std::net::IpAddr> {
    url.host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The absolute URL a 3xx response points to, if it has a usable `Location`.
fn redirect_target(base: &Url, headers: &HeaderMap) -> Option<Url> {
    let location = headers.get(LOCATION)?.to_str().ok()?;
    let next = base.join(location).ok()?;
    matches!(next.scheme(), "http" | "https").then_some(next)
}

/// An error and its causes on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
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

/// Classify a failed request by the phase it died in and the errors in its cause chain.
fn classify_request_error(error: &reqwest::Error, phase: Phase) -> Outcome {
    let message = chain(error);
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut io_kind = None;
    while let Some(cause) = source {
        if cause.downcast_ref::<ResolveFailed>().is_some() {
            return Outcome::failure(FailureKind::Resolve, message);
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

/// Earliest `notAfter` of a DER certificate, in seconds since the Unix epoch. A minimal walk of
/// `Certificate → TBSCertificate → Validity`, enough for expiry and nothing else.
pub fn cert_not_after(der: &[u8]) -> Option<i64> {
    let (_, cert, _) = der_tlv(der)?;
    let (_, mut tbs, _) = der_tlv(cert)?;
    let (tag, _, rest) = der_tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest; // explicit version
    }
    let (_, _, rest) = der_tlv(tbs)?; // serialNumber
    let (_, _, rest) = der_tlv(rest)?; // signature algorithm
    let (_, _, rest) = der_tlv(rest)?; // issuer
    let (tag, validity, _) = der_tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_not_before) = der_tlv(validity)?;
    let (tag, not_after, _) = der_tlv(after_not_before)?;
    let text = std::str::from_utf8(not_after).ok()?;
    match tag {
        0x17 if text.len() == 13 => {
            // UTCTime YYMMDDHHMMSSZ; RFC 5280: YY >= 50 is 19YY
            let yy: i64 = text[0..2].parse().ok()?;
            let year = if yy >= 50 { 1900 + yy } else { 2000 + yy };
            unix_from_parts(year, &text[2..12])
        }
        0x18 if text.len() == 15 => unix_from_parts(text[0..4].parse().ok()?, &text[4..14]),
        _ => None,
    }
}

/// `MMDDHHMMSS` of `year` to Unix seconds (UTC).
fn unix_from_parts(year: i64, rest: &str) -> Option<i64> {
    let field = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// One DER TLV: (tag, contents, rest). Single-byte tags only, which is all X.509 needs here.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let len = input[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        input = &input[count..];
        len
    };
    (input.len() >= len).then(|| (tag, &input[..len], &input[len..]))
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
}

impl reqwest::dns::Resolve for TimedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let recorder = self.recorder.clone();
        let preference = self.preference;
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

    #[test]
    fn not_after_is_read_from_utc_and_generalized_time() {
        assert_eq!(unix_from_parts(1970, "0101000000"), Some(0));
        assert_eq!(unix_from_parts(2000, "0301000000"), Some(951_868_800));
        assert_eq!(unix_from_parts(2038, "0119031408"), Some(2_147_483_648));
        assert_eq!(unix_from_parts(2024, "1301000000"), None);
    }

    #[test]
    fn der_lengths_in_long_form_are_read() {
        let mut long = vec![0x04, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7u8, 256));
        long.push(0xff);
        let (tag, contents, rest) = der_tlv(&long).expect("tlv");
        assert_eq!((tag, contents.len(), rest), (0x04, 256, &[0xff][..]));
        assert_eq!(der_tlv(&[0x04, 0x05, 1, 2]), None, "truncated");
        assert_eq!(cert_not_after(b"not a certificate"), None);
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
