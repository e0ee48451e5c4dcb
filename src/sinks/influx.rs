//! The HTTP side of an output: one write request per batch to the InfluxDB v2 write API
//! (`/api/v2/write`, which InfluxDB 3 and VictoriaMetrics also serve) or the v1 API (`/write`), and
//! what the answer means for the points in it ([`Answer`]). The retry policy lives in
//! `deliver.rs`; this file only classifies.
//!
//! Secrets are read from their source on every request (a rotated token file is picked up on the
//! next attempt), put in a header marked sensitive, and never formatted into a message; an answer
//! that echoes them has them redacted before it becomes a message.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use flate2::Compression;
use flate2::write::GzEncoder;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode, Url};

use super::redact::Redactor;
use super::spool::SpooledPoint;
use crate::config::output::{OutputConfig, OutputKind, Secret, SecretSource};
use base64::Engine as _;

/// Longest `Retry-After` honoured; a bigger one (or a date far ahead) is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How much of an error body is kept for logs and dead letters.
const MAX_MESSAGE: usize = 1024;
/// Of an error answer's body, at most this much is read: only its start goes into a message, and
/// a broken or hostile endpoint may send a body without end.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// What a write request's answer means for the points in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx: the points are in the store.
    Delivered,
    /// 5xx, 429, or no answer at all (connection refused, timeout): try the same points again
    /// later, no sooner than `retry_after` if the server said so.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// 401/403, or the secret could not be read: try again slowly, loudly, re-reading the secret.
    Unauthorized {
        status: Option<u16>,
        message: String,
    },
    /// 413: the batch is too big; split it.
    TooLarge { message: String },
    /// 400: some line in the batch is bad; bisect to find it.
    BadRequest { message: String },
    /// Any other 4xx (e.g. 404: database or bucket not found): nothing we can fix by retrying
    /// soon; retry slowly and loudly so nothing is lost while a human fixes the store or config.
    NeedsHuman { status: u16, message: String },
}

/// Sends batches to one output.
#[derive(Debug, Clone)]
pub struct Writer {
    client: reqwest::Client,
    endpoint: Url,
    auth: Auth,
    gzip: bool,
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    Token(SecretSource),
    Basic {
        username: String,
        password: Option<SecretSource>,
    },
}

impl Writer {
    pub fn new(config: &OutputConfig) -> anyhow::Result<Writer> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("vantage/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        let (endpoint, auth) = endpoint(config)?;
        Ok(Writer {
            client,
            endpoint,
            auth,
            gzip: config.gzip,
        })
    }

    /// The write URL (no secrets in it).
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// Send `points` as one request and classify the answer.
    pub async fn write(&self, points: &[SpooledPoint]) -> Answer {
        let body = match self.body(points) {
            Ok(body) => body,
            Err(e) => {
                return Answer::Retry {
                    reason: format!("cannot compress the batch: {e}"),
                    retry_after: None,
                };
            }
        };
        self.send(body).await
    }

    /// Send an empty write: proves the URL, the database/bucket and the credentials without
    /// writing anything (`vantage check`).
    pub async fn probe(&self) -> Answer {
        self.send(Vec::new()).await
    }

    async fn send(&self, body: Vec<u8>) -> Answer {
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8");
        if self.gzip && !body.is_empty() {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        let (request, redactor) = match self.authorize(request) {
            Ok(authorized) => authorized,
            Err(message) => {
                return Answer::Unauthorized {
                    status: None,
                    message,
                };
            }
        };
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(e) => {
                return Answer::Retry {
                    reason: redactor.redact(&describe_reqwest_error(&e)),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Answer::Delivered;
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let message = redactor.redact(&error_body(response).await);
        let message = truncate(message.trim());
        classify(status, message, retry_after)
    }

    fn body(&self, points: &[SpooledPoint]) -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        let size: usize = points.iter().map(|p| p.line.len() + 1).sum();
        if self.gzip {
            let mut encoder = GzEncoder::new(Vec::with_capacity(size / 4), Compression::fast());
            for point in points {
                encoder.write_all(&point.line)?;
                encoder.write_all(b"\n")?;
            }
            encoder.finish()
        } else {
            let mut body = Vec::with_capacity(size);
            for point in points {
                body.extend_from_slice(&point.line);
                body.push(b'\n');
            }
            Ok(body)
        }
    }

    /// `request` with its credentials, read fresh from the secrets' sources, and a redactor for
    /// every form of the secrets it carries; Err names the source.
    fn authorize(&self, request: RequestBuilder) -> Result<(RequestBuilder, Redactor), String> {
        authorize_with(&self.auth, request)
    }
}

/// `request` with the credentials `config`'s writes carry (read fresh from their sources), and a
/// redactor for them: the fleet's queries go to the same store as the same user.
pub(crate) fn authorize_as(
    config: &OutputConfig,
    request: RequestBuilder,
) -> Result<(RequestBuilder, Redactor), String> {
    let (_, auth) = endpoint(config).map_err(|e| e.to_string())?;
    authorize_with(&auth, request)
}

fn authorize_with(
    auth: &Auth,
    request: RequestBuilder,
) -> Result<(RequestBuilder, Redactor), String> {
    Ok(match auth {
        Auth::None => (request, Redactor::default()),
        Auth::Token(source) => {
            let token = read_secret(source)?;
            let value = format!("Token {}", token.expose());
            let mut header = HeaderValue::from_str(&value).map_err(|_| {
                "the token contains characters an HTTP header cannot carry".to_string()
            })?;
            header.set_sensitive(true);
            let redactor = Redactor::default().with(token.expose()).with(value);
            (request.header(AUTHORIZATION, header), redactor)
        }
        Auth::Basic { username, password } => {
            let password = password.as_ref().map(read_secret).transpose()?;
            let password = password.as_ref().map_or("", Secret::expose);
            // reqwest encodes and marks the header sensitive; a sink may echo either form.
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            let redactor = Redactor::default().with(password).with(encoded);
            (request.basic_auth(username, Some(password)), redactor)
        }
    })
}

fn read_secret(source: &SecretSource) -> Result<Secret, String> {
    source.read().map_err(|e| e.to_string())
}

/// The write endpoint and the credentials' sources for `config`.
fn endpoint(config: &OutputConfig) -> anyhow::Result<(Url, Auth)> {
    let mut url = Url::parse(&config.url)
        .with_context(|| format!("output {:?}: url is not a URL", config.name))?;
    let (path, auth): (&[&str], Auth) = match &config.kind {
        OutputKind::InfluxdbV2 { token, .. } => (
            &["api", "v2", "write"],
            token.clone().map_or(Auth::None, Auth::Token),
        ),
        OutputKind::InfluxdbV1 {
            username, password, ..
        } => (
            &["write"],
            match username {
                Some(username) => Auth::Basic {
                    username: username.clone(),
                    password: password.clone(),
                },
                None => Auth::None,
            },
        ),
    };
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("output {:?}: url cannot be a base", config.name))?
        .pop_if_empty()
        .extend(path);
    {
        let mut query = url.query_pairs_mut();
        match &config.kind {
            OutputKind::InfluxdbV2 { org, bucket, .. } => {
                query.append_pair("org", org).append_pair("bucket", bucket);
            }
            OutputKind::InfluxdbV1 { db, rp, .. } => {
                query.append_pair("db", db);
                if let Some(rp) = rp {
                    query.append_pair("rp", rp);
                }
            }
        }
        query.append_pair("precision", "ns");
    }
    Ok((url, auth))
}

/// The rules: what each status means for the batch.
pub fn classify(status: StatusCode, message: String, retry_after: Option<Duration>) -> Answer {
    match status.as_u16() {
        200..=299 => Answer::Delivered,
        401 | 403 => Answer::Unauthorized {
            status: Some(status.as_u16()),
            message,
        },
        413 => Answer::TooLarge { message },
        400 => Answer::BadRequest { message },
        429 | 500..=599 => Answer::Retry {
            reason: format!("{status}: {message}"),
            retry_after,
        },
        other => Answer::NeedsHuman {
            status: other,
            message,
        },
    }
}

/// `Retry-After` as seconds or an HTTP date, capped at an hour.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let wait = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(text)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The delay before retry number `failures` (1-based): exponential from `initial`, capped at `max`,
/// scaled by `jitter` in [0.5, 1] ("equal jitter"), never below `floor` (a server's `Retry-After`).
pub fn backoff(
    failures: u32,
    initial: Duration,
    max: Duration,
    jitter: f64,
    floor: Option<Duration>,
) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exponent).min(max);
    let delay = base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    delay.max(floor.unwrap_or(Duration::ZERO))
}

/// A reqwest error's chain, e.g. "error sending request for url (…): connection refused". URLs
/// carry no secrets (credentials never go in the URL; `OutputConfig::validate` rejects them).
pub(crate) fn describe_reqwest_error(error: &reqwest::Error) -> String {
    let mut text = probes::net::error_chain(error);
    if error.is_timeout() {
        text.push_str(" (timed out)");
    }
    text
}

/// The start of an error answer's body: at most [`MAX_ERROR_BODY`] bytes are read, then the
/// connection is dropped.
pub(crate) async fn error_body(response: reqwest::Response) -> String {
    let (body, _) = read_at_most(response, MAX_ERROR_BODY).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// How reading a body ended (see [`read_at_most`]).
#[derive(Debug)]
pub(crate) enum BodyEnd {
    /// The whole body, within the limit.
    Whole,
    /// There was more than the limit; the connection is dropped unread.
    TooLarge,
    /// The body broke off (the connection closed or reset mid-body, or the client's timeout
    /// fired): what was read is only a part.
    Broken(reqwest::Error),
}

/// At most `limit` bytes of `response`'s body, and how it ended: a broken or hostile server may
/// send one without end, and a slow one may break off (each is told apart in the caller's error).
pub(crate) async fn read_at_most(
    mut response: reqwest::Response,
    limit: usize,
) -> (Vec<u8>, BodyEnd) {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return (body, BodyEnd::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return (body, BodyEnd::Whole),
            Err(e) => return (body, BodyEnd::Broken(e)),
        }
    }
    // Exactly `limit` read: more only if another chunk comes.
    let end = match response.chunk().await {
        Ok(None) => BodyEnd::Whole,
        Ok(Some(_)) => BodyEnd::TooLarge,
        Err(e) => BodyEnd::Broken(e),
    };
    (body, end)
}

pub(crate) fn truncate(text: &str) -> String {
    if text.len() <= MAX_MESSAGE {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_a_path_prefix_and_carry_no_secret() {
        let v2 = OutputConfig::influxdb_v2(
            "x",
            "https://influx.example/prefix/",
            "net ops",
            "vantage",
            Some(SecretSource::Env("TOKEN".into())),
        );
        assert_eq!(
            endpoint(&v2).expect("v2").0.as_str(),
            "https://influx.example/prefix/api/v2/write?org=net+ops&bucket=vantage&precision=ns"
        );
        let mut v1 = OutputConfig::influxdb_v1(
            "y",
            "http://127.0.0.1:8086",
            "vantage",
            Some("u".into()),
            None,
        );
        if let OutputKind::InfluxdbV1 { rp, .. } = &mut v1.kind {
            *rp = Some("two_weeks".into());
        }
        assert_eq!(
            endpoint(&v1).expect("v1").0.as_str(),
            "http://127.0.0.1:8086/write?db=vantage&rp=two_weeks&precision=ns"
        );
    }

    #[test]
    fn statuses_map_to_the_rules() {
        let c = |code: u16| classify(StatusCode::from_u16(code).expect("code"), "m".into(), None);
        assert_eq!(c(204), Answer::Delivered);
        assert!(matches!(c(503), Answer::Retry { .. }));
        assert!(matches!(c(429), Answer::Retry { .. }));
        assert!(matches!(
            c(401),
            Answer::Unauthorized {
                status: Some(401),
                ..
            }
        ));
        assert!(matches!(
            c(403),
            Answer::Unauthorized {
                status: Some(403),
                ..
            }
        ));
        assert!(matches!(c(413), Answer::TooLarge { .. }));
        assert!(matches!(c(400), Answer::BadRequest { .. }));
        assert!(matches!(c(404), Answer::NeedsHuman { status: 404, .. }));
    }

    #[test]
    fn retry_after_is_seconds_or_a_date_and_a_floor() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let h = |s: &str| HeaderValue::from_str(s).expect("header");
        assert_eq!(
            parse_retry_after(&h("7"), now),
            Some(Duration::from_secs(7))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&h(&later), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after(&h("soon"), now), None);
        assert_eq!(parse_retry_after(&h("999999"), now), Some(MAX_RETRY_AFTER));
        let s = Duration::from_secs;
        assert_eq!(backoff(1, s(1), s(60), 1.0, None), s(1));
        assert_eq!(backoff(3, s(1), s(60), 1.0, None), s(4));
        assert_eq!(backoff(3, s(1), s(60), 0.0, None), s(2));
        assert_eq!(backoff(30, s(1), s(60), 1.0, None), s(60));
        assert_eq!(backoff(1, s(1), s(60), 1.0, Some(s(5))), s(5));
    }

    #[test]
    fn basic_auth_is_encoded_and_sensitive() {
        let writer = |password: Option<SecretSource>| Writer {
            client: reqwest::Client::new(),
            endpoint: Url::parse("http://198.18.0.1:8086/write").expect("url"),
            auth: Auth::Basic {
                username: "Aladdin".into(),
                password,
            },
            gzip: false,
        };
        let header = |writer: Writer| {
            let request = writer
                .authorize(writer.client.post(writer.endpoint.clone()))
                .expect("credentials")
                .0
                .build()
                .expect("request");
            request.headers()[AUTHORIZATION].clone()
        };
        let secret = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(secret.path(), "open sesame\n").expect("write secret");
        let with_password = header(writer(Some(SecretSource::File(secret.path().into()))));
        assert_eq!(with_password, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(with_password.is_sensitive());
        assert_eq!(header(writer(None)), "Basic QWxhZGRpbjo=", "`Aladdin:`");
    }
}
