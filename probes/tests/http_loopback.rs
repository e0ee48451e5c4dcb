//! HTTP checks against real servers started here on loopback: plain and TLS (with a test CA),
//! phase timings, expectations, redirects, and hostile servers (endless body, trickle, redirect
//! loop, gzip bomb) that must each end within the deadline with a classified failure. Redirects
//! from a public address into internal ones run in a lab namespace, where the agent's 198.18.0.2
//! is the public start (needs root; fails, never skips, without it).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use probes::{
    CancellationToken, FailureKind, HeaderMatch, HttpCheck, HttpSettings, HttpStats, IpPreference,
    Measurement, Observation, Outcome,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::rustls;

/// What the server does for a request, by path.
enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        delay: Duration,
    },
    /// 200 with a body that never ends.
    Endless,
    /// 200, then the body one byte a second.
    TrickleBody,
    /// The status line one byte a second.
    TrickleHeaders,
    /// An endless gzip stream of zeros (~1000:1).
    GzipBomb,
}

fn ok(body: &str) -> Reply {
    Reply::Full {
        status: 200,
        headers: vec![],
        body: body.as_bytes().to_vec(),
        delay: Duration::ZERO,
    }
}

/// The request as the server saw it, for replies that echo it.
struct Request {
    method: String,
    path: String,
    head: String,
    body: Vec<u8>,
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A loopback server; stops (with every connection) when dropped, also when a test panics.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(bind: &str, tls: Option<Arc<rustls::ServerConfig>>, handler: Handler) -> Server {
        let listener = TcpListener::bind(bind).await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            // Dropping the JoinSet (when this task is aborted) aborts every connection too.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = Arc::clone(&handler);
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, handler).await;
                            }
                        }
                        None => serve(stream, handler).await,
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Server { addr, task }
    }

    async fn plain(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Server {
        Server::start("127.0.0.1:0", None, Arc::new(handler)).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, handler: Handler) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 65_536 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let mut first = head.split_whitespace();
    let request = Request {
        method: first.next().unwrap_or_default().to_owned(),
        path: first.next().unwrap_or_default().to_owned(),
        head: head.clone(),
        body,
    };
    let _ = respond(&mut stream, handler(&request)).await;
}

async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, reply: Reply) -> std::io::Result<()> {
    match reply {
        Reply::Full {
            status,
            headers,
            body,
            delay,
        } => {
            tokio::time::sleep(delay).await;
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
            stream.shutdown().await
        }
        Reply::Endless => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .await?;
            let block = vec![b'x'; 16 * 1024];
            loop {
                stream.write_all(&block).await?;
            }
        }
        Reply::TrickleBody => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                .await?;
            loop {
                stream.write_all(b".").await?;
                stream.flush().await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Reply::TrickleHeaders => {
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" {
                stream.write_all(&[*byte]).await?;
                stream.flush().await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(())
        }
        Reply::GzipBomb => {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n",
                )
                .await?;
            // gzip header, then one fully flushed deflate segment of 1 MiB of zeros, repeated
            // forever: each copy stands alone, so the stream is valid for as long as it goes on.
            stream
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])
                .await?;
            let segment = zeros_segment();
            loop {
                stream.write_all(&segment).await?;
            }
        }
    }
}

fn zeros_segment() -> Vec<u8> {
    let mut compress = flate2::Compress::new(flate2::Compression::best(), false);
    let input = vec![0u8; 1 << 20];
    let mut out = Vec::with_capacity(8 << 10);
    compress
        .compress_vec(&input, &mut out, flate2::FlushCompress::Full)
        .expect("deflate");
    assert!(
        compress.total_in() == input.len() as u64 && out.len() < 8 << 10,
        "one call compresses it all"
    );
    out
}

/// A test CA and leaf certificates it signs; the CA PEM lives in a temp file for `ca_file`.
struct TestPki {
    ca_key: rcgen::KeyPair,
    ca_params: rcgen::CertificateParams,
    ca_file: tempfile::NamedTempFile,
}

impl TestPki {
    fn new() -> TestPki {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "vantage test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let mut ca_file = tempfile::NamedTempFile::new().expect("temp file");
        ca_file
            .write_all(ca_cert.pem().as_bytes())
            .expect("write CA");
        TestPki {
            ca_key,
            ca_params,
            ca_file,
        }
    }

    /// A server config presenting a leaf for `names`, valid for `days` more days.
    fn server(&self, names: &[&str], days: i64) -> Arc<rustls::ServerConfig> {
        self.server_with(names, days, |_| {})
    }

    /// As [`TestPki::server`], with the leaf's DER changed by `patch` after signing.
    fn server_with(
        &self,
        names: &[&str],
        days: i64,
        patch: impl FnOnce(&mut Vec<u8>),
    ) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let mut leaf = params
            .signed_by(&key, &issuer)
            .expect("sign leaf")
            .der()
            .to_vec();
        patch(&mut leaf);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.into()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .expect("server config");
        Arc::new(config)
    }

    fn ca_path(&self) -> std::path::PathBuf {
        self.ca_file.path().to_path_buf()
    }
}

fn stats(obs: &Observation) -> &HttpStats {
    let Measurement::Http(stats) = &obs.measurement else {
        panic!("not an http measurement: {obs:?}")
    };
    stats
}

fn failure(obs: &Observation) -> Option<(FailureKind, &str)> {
    match &obs.outcome {
        Outcome::Success => None,
        Outcome::Failure { kind, message } => Some((*kind, message.as_str())),
    }
}

async fn run(settings: HttpSettings) -> Observation {
    HttpCheck::new(settings)
        .expect("valid settings")
        .run(&CancellationToken::new())
        .await
}

/// A check against a server that never answers returns as soon as its stop token fires, not at
/// its timeout: the agent's stop does not wait for it.
#[tokio::test]
async fn a_stopped_check_returns_at_once_and_says_so() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/slow", listener.local_addr().expect("address"));
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket); // accepted, never answered
        }
    });
    let mut settings = HttpSettings::new(url);
    settings.timeout = Duration::from_secs(30);
    let check = HttpCheck::new(settings).expect("valid settings");
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stopper.cancel();
    });
    let started = Instant::now();
    let observation = check.run(&stop).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stop was not honoured: the run took {:?}",
        started.elapsed()
    );
    assert!(observation.was_stopped(), "{:?}", observation.outcome);
    match &observation.measurement {
        Measurement::Http(stats) => assert!(stats.final_url.ends_with("/slow"), "{stats:?}"),
        other => panic!("not an HTTP measurement: {other:?}"),
    }
    silent.abort();
}

#[tokio::test]
async fn plain_http_times_connect_processing_and_transfer() {
    let server = Server::plain(|_| ok("hello")).await;
    let obs = run(HttpSettings::new(server.url("/"))).await;
    assert!(obs.is_success(), "{obs:?}");
    let s = stats(&obs);
    assert_eq!(s.status_code, Some(200));
    assert_eq!(s.body_bytes, 5);
    assert_eq!(s.resolve_ms, Some(0.0), "an IP literal is not resolved");
    assert!(s.connect_ms.is_some_and(|ms| ms > 0.0), "{s:?}");
    assert_eq!(s.tls_ms, None);
    assert!(s.processing_ms.is_some_and(|ms| ms > 0.0), "{s:?}");
    assert!(s.transfer_ms.is_some_and(|ms| ms >= 0.0), "{s:?}");
    let phases =
        s.connect_ms.unwrap_or(0.0) + s.processing_ms.unwrap_or(0.0) + s.transfer_ms.unwrap_or(0.0);
    assert!(
        s.total_ms >= phases,
        "total {} < sum of phases {phases}",
        s.total_ms
    );
    assert_eq!(s.redirects, 0);
}

#[tokio::test]
async fn a_name_is_resolved_in_its_own_phase() {
    let server = Server::plain(|_| ok("hello")).await;
    let url = format!("http://localhost:{}/", server.addr.port());
    let obs = run(HttpSettings {
        ip: IpPreference::V4Only,
        ..HttpSettings::new(url)
    })
    .await;
    assert!(obs.is_success(), "{obs:?}");
    assert!(stats(&obs).resolve_ms.is_some_and(|ms| ms > 0.0), "{obs:?}");
}

#[tokio::test]
async fn a_server_slow_to_answer_shows_in_processing() {
    let server = Server::plain(|_| Reply::Full {
        status: 200,
        headers: vec![],
        body: b"late".to_vec(),
        delay: Duration::from_millis(300),
    })
    .await;
    let obs = run(HttpSettings::new(server.url("/"))).await;
    assert!(obs.is_success(), "{obs:?}");
    let s = stats(&obs);
    let processing = s.processing_ms.unwrap_or_default();
    assert!(
        (300.0..1000.0).contains(&processing),
        "processing {processing} ms"
    );
    assert!(s.connect_ms.unwrap_or(f64::MAX) < 100.0, "{s:?}");
}

#[tokio::test]
async fn https_with_a_custom_ca_times_tls_and_reads_the_certificate_expiry() {
    let pki = TestPki::new();
    let server = Server::start(
        "127.0.0.1:0",
        Some(pki.server(&["localhost"], 10)),
        Arc::new(|_| ok("secure")),
    )
    .await;
    let url = format!("https://localhost:{}/", server.addr.port());
    let settings = HttpSettings {
        ca_file: Some(pki.ca_path()),
        ip: IpPreference::V4Only,
        ..HttpSettings::new(url)
    };
    let obs = run(settings.clone()).await;
    assert!(obs.is_success(), "{obs:?}");
    let s = stats(&obs);
    for (name, phase) in [
        ("resolve", s.resolve_ms),
        ("connect", s.connect_ms),
        ("tls", s.tls_ms),
        ("processing", s.processing_ms),
    ] {
        assert!(
            phase.is_some_and(|ms| ms > 0.0),
            "{name} phase missing or zero: {s:?}"
        );
    }
    let days = s.cert_expiry_days.unwrap_or_default();
    assert!((9.9..10.1).contains(&days), "cert_expiry_days {days}");

    let mut strict = settings;
    strict.expect.min_cert_expiry_days = Some(30.0);
    let obs = run(strict).await;
    assert_eq!(
        failure(&obs).map(|f| f.0),
        Some(FailureKind::Assertion),
        "{obs:?}"
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_failure_with_its_expiry_still_recorded() {
    let pki = TestPki::new();
    let server = Server::start(
        "127.0.0.1:0",
        Some(pki.server(&["localhost"], 100)),
        Arc::new(|_| ok("x")),
    )
    .await;
    let url = format!("https://localhost:{}/", server.addr.port());
    // No ca_file: the system roots do not know the test CA.
    let obs = run(HttpSettings {
        ip: IpPreference::V4Only,
        ..HttpSettings::new(url)
    })
    .await;
    assert_eq!(
        failure(&obs).map(|f| f.0),
        Some(FailureKind::Tls),
        "{obs:?}"
    );
    let s = stats(&obs);
    assert!(s.cert_expiry_days.is_some_and(|d| d > 99.0), "{s:?}");
    assert!(s.tls_ms.is_some(), "{s:?}");
    assert_eq!(s.status_code, None);
}

#[tokio::test]
async fn a_certificate_with_a_non_ascii_expiry_is_a_tls_failure_not_a_panic() {
    let pki = TestPki::new();
    // The leaf's notAfter UTCTime gets a 3-byte UTF-8 character where digits belong (which also
    // breaks its signature): the expiry is unreadable and the chain untrusted.
    let hostile = pki.server_with(&["localhost"], 10, |der| {
        let validity = der
            .windows(4)
            .position(|w| w == [0x30, 0x1e, 0x17, 0x0d])
            .expect("a UTCTime validity");
        let not_after = validity + 2 + 15 + 2;
        der[not_after + 1..not_after + 4].copy_from_slice("€".as_bytes());
    });
    let server = Server::start("127.0.0.1:0", Some(hostile), Arc::new(|_| ok("x"))).await;
    let url = format!("https://localhost:{}/", server.addr.port());
    let obs = run(HttpSettings {
        ca_file: Some(pki.ca_path()),
        ip: IpPreference::V4Only,
        ..HttpSettings::new(url)
    })
    .await;
    assert_eq!(
        failure(&obs).map(|f| f.0),
        Some(FailureKind::Tls),
        "{obs:?}"
    );
    let s = stats(&obs);
    assert_eq!(s.cert_expiry_days, None, "{s:?}");
    assert_eq!(s.status_code, None);
}

#[tokio::test]
async fn a_server_name_override_sets_sni_and_verification_but_not_the_host_header() {
    let pki = TestPki::new();
    let server = Server::start(
        "127.0.0.1:0",
        Some(pki.server(&["probe.test"], 100)),
        Arc::new(|r: &Request| ok(&r.head)),
    )
    .await;
    let url = format!("https://{}/", server.addr);
    let plain = HttpSettings {
        ca_file: Some(pki.ca_path()),
        ..HttpSettings::new(url)
    };
    let obs = run(plain.clone()).await;
    assert_eq!(
        failure(&obs).map(|f| f.0),
        Some(FailureKind::Tls),
        "the cert does not name the IP: {obs:?}"
    );

    let mut with_name = plain;
    with_name.server_name = Some("probe.test".to_owned());
    with_name.expect.body_contains = vec![format!("host: {}", server.addr)];
    let obs = run(with_name).await;
    assert!(obs.is_success(), "{obs:?}");
    assert_eq!(
        stats(&obs).resolve_ms,
        Some(0.0),
        "the pinned address needs no lookup"
    );
}

#[tokio::test]
async fn expectations_on_status_headers_body_and_time() {
    let server = Server::plain(|r: &Request| match r.path.as_str() {
        "/missing" => Reply::Full {
            status: 404,
            headers: vec![],
            body: b"nope".to_vec(),
            delay: Duration::ZERO,
        },
        "/slow" => Reply::Full {
            status: 200,
            headers: vec![],
            body: vec![],
            delay: Duration::from_millis(200),
        },
        _ => Reply::Full {
            status: 200,
            headers: vec![("X-Version".into(), "build-1234".into())],
            body: b"status: healthy, items=42".to_vec(),
            delay: Duration::ZERO,
        },
    })
    .await;
    let base = |path: &str| HttpSettings::new(server.url(path));
    let with = |path: &str, edit: &dyn Fn(&mut HttpSettings)| {
        let mut s = base(path);
        edit(&mut s);
        s
    };
    let cases: Vec<(&str, HttpSettings, Option<FailureKind>)> = vec![
        ("2xx by default", base("/"), None),
        (
            "404 is not 2xx",
            base("/missing"),
            Some(FailureKind::Status),
        ),
        (
            "404 when expected",
            with("/missing", &|s| s.expect.status_codes = vec![404]),
            None,
        ),
        (
            "200 when only 204 expected",
            with("/", &|s| s.expect.status_codes = vec![204]),
            Some(FailureKind::Status),
        ),
        (
            "body substring",
            with("/", &|s| s.expect.body_contains = vec!["healthy".into()]),
            None,
        ),
        (
            "missing substring",
            with("/", &|s| s.expect.body_contains = vec!["degraded".into()]),
            Some(FailureKind::Assertion),
        ),
        (
            "body regex",
            with("/", &|s| s.expect.body_matches = vec![r"items=\d+".into()]),
            None,
        ),
        (
            "body regex miss",
            with("/", &|s| s.expect.body_matches = vec![r"items=0\b".into()]),
            Some(FailureKind::Assertion),
        ),
        (
            "header regex",
            with("/", &|s| {
                s.expect.headers = vec![HeaderMatch {
                    name: "x-version".into(),
                    regex: r"^build-\d+$".into(),
                }]
            }),
            None,
        ),
        (
            "header missing",
            with("/", &|s| {
                s.expect.headers = vec![HeaderMatch {
                    name: "x-other".into(),
                    regex: ".*".into(),
                }]
            }),
            Some(FailureKind::Assertion),
        ),
        (
            "fast enough",
            with("/", &|s| s.expect.max_total = Some(Duration::from_secs(2))),
            None,
        ),
        (
            "too slow",
            with("/slow", &|s| {
                s.expect.max_total = Some(Duration::from_millis(100))
            }),
            Some(FailureKind::Assertion),
        ),
    ];
    for (name, settings, expected) in cases {
        let obs = run(settings).await;
        assert_eq!(failure(&obs).map(|f| f.0), expected, "{name}: {obs:?}");
    }
}

#[tokio::test]
async fn gzip_bodies_are_decompressed_and_counted_after_decompression() {
    let text = "hello gzip world, ".repeat(100);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).expect("gzip");
    let gzipped = encoder.finish().expect("gzip");
    assert!(gzipped.len() < text.len() / 4);
    let server = Server::plain(move |r: &Request| {
        assert!(
            r.head
                .to_ascii_lowercase()
                .contains("accept-encoding: gzip"),
            "{}",
            r.head
        );
        Reply::Full {
            status: 200,
            headers: vec![("Content-Encoding".into(), "gzip".into())],
            body: gzipped.clone(),
            delay: Duration::ZERO,
        }
    })
    .await;
    let mut settings = HttpSettings::new(server.url("/"));
    settings.expect.body_contains = vec!["hello gzip world".into()];
    let obs = run(settings).await;
    assert!(obs.is_success(), "{obs:?}");
    assert_eq!(stats(&obs).body_bytes, text.len() as u64);
}

#[tokio::test]
async fn method_headers_and_body_are_sent() {
    let server = Server::plain(|r: &Request| {
        ok(&format!(
            "{} {} {}",
            r.method,
            r.head.to_ascii_lowercase(),
            String::from_utf8_lossy(&r.body)
        ))
    })
    .await;
    let mut settings = HttpSettings::new(server.url("/submit"));
    settings.method = "POST".into();
    settings.headers = vec![("X-Probe".into(), "vantage".into())];
    settings.body = Some(b"ping=1".to_vec());
    settings.expect.body_contains =
        vec!["POST ".into(), "x-probe: vantage".into(), "ping=1".into()];
    let obs = run(settings).await;
    assert!(obs.is_success(), "{obs:?}");
}

#[tokio::test]
async fn redirects_are_followed_counted_and_limited() {
    let server = Server::plain(|r: &Request| {
        let n: u32 = r
            .path
            .strip_prefix("/r/")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if n == 0 {
            ok("arrived")
        } else {
            let location = format!("/r/{}", n - 1);
            Reply::Full {
                status: 302,
                headers: vec![("Location".into(), location)],
                body: vec![],
                delay: Duration::ZERO,
            }
        }
    })
    .await;
    let settings = |max_redirects| HttpSettings {
        max_redirects,
        ..HttpSettings::new(server.url("/r/3"))
    };

    let obs = run(settings(5)).await;
    assert!(obs.is_success(), "{obs:?}");
    let s = stats(&obs);
    assert_eq!((s.redirects, s.body_bytes), (3, 7));
    assert!(s.final_url.ends_with("/r/0"), "{s:?}");
    assert!(s.processing_ms.is_some(), "{s:?}");

    let obs = run(settings(2)).await;
    assert_eq!(
        failure(&obs).map(|f| f.0),
        Some(FailureKind::Redirect),
        "{obs:?}"
    );
    assert_eq!(stats(&obs).redirects, 2);

    let obs = run(settings(0)).await;
    assert_eq!(
        failure(&obs).map(|f| f.0),
        Some(FailureKind::Status),
        "not following: the 302 is final: {obs:?}"
    );
    assert_eq!(stats(&obs).status_code, Some(302));
}

fn redirect_to(location: String) -> Reply {
    Reply::Full {
        status: 302,
        headers: vec![("Location".into(), location)],
        body: vec![],
        delay: Duration::ZERO,
    }
}

#[test]
fn redirects_from_a_public_address_into_internal_ones_need_the_option() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let lab = lab::Lab::routed();
    lab.agent().inside(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let hits = Arc::new(AtomicUsize::new(0));
            let counted: Handler = {
                let hits = Arc::clone(&hits);
                Arc::new(move |_| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    ok("internal")
                })
            };
            let loopback = Server::start("127.0.0.1:0", None, Arc::clone(&counted)).await;
            let ula = Server::start("[fd00:18::2]:0", None, counted).await;
            let (port, ula_port) = (loopback.addr.port(), ula.addr.port());
            let public = Server::start(
                &format!("{}:0", lab::addr::AGENT),
                None,
                Arc::new(move |r: &Request| {
                    redirect_to(match r.path.as_str() {
                        "/to-loopback" => format!("http://127.0.0.1:{port}/"),
                        // A name, not a literal: caught where it resolves (to 127.0.0.1).
                        "/to-name" => format!("http://localhost:{port}/"),
                        "/to-ula" => format!("http://[fd00:18::2]:{ula_port}/"),
                        "/via-public" => "/to-loopback".to_owned(),
                        _ => return ok("public"),
                    })
                }),
            )
            .await;
            let cases = [
                ("/to-loopback", "127.0.0.1 is loopback"),
                ("/to-name", "resolves to 127.0.0.1, which is loopback"),
                ("/to-ula", "fd00:18::2 is unique local"),
                ("/via-public", "127.0.0.1 is loopback"),
            ];
            for (path, why) in cases {
                let obs = run(HttpSettings::new(format!("http://{}{path}", public.addr))).await;
                let (kind, message) = failure(&obs).unwrap_or_else(|| panic!("{path}: {obs:?}"));
                assert_eq!(kind, FailureKind::Redirect, "{path}: {obs:?}");
                assert!(message.contains(why), "{path}: {message}");
                assert!(
                    message.contains("follow_private_redirects = true"),
                    "{message}"
                );
                assert_eq!(stats(&obs).status_code, Some(302), "{path}: {obs:?}");
            }
            assert_eq!(
                hits.load(Ordering::SeqCst),
                0,
                "an internal server was reached"
            );

            for (path, _) in cases {
                let obs = run(HttpSettings {
                    follow_private_redirects: true,
                    ..HttpSettings::new(format!("http://{}{path}", public.addr))
                })
                .await;
                assert!(obs.is_success(), "{path}: {obs:?}");
            }
            assert_eq!(hits.load(Ordering::SeqCst), cases.len());

            // An internal start may redirect anywhere internal (loopback to ULA here).
            let internal_start = Server::start(
                "127.0.0.1:0",
                None,
                Arc::new(move |_: &Request| {
                    redirect_to(format!("http://[fd00:18::2]:{ula_port}/"))
                }),
            )
            .await;
            let obs = run(HttpSettings::new(internal_start.url("/"))).await;
            assert!(obs.is_success(), "{obs:?}");
        });
    });
}

#[tokio::test]
async fn a_refused_connection_is_classified() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let obs = run(HttpSettings::new(format!("http://{addr}/"))).await;
    assert_eq!(
        failure(&obs).map(|f| f.0),
        Some(FailureKind::Refused),
        "{obs:?}"
    );
    assert_eq!(stats(&obs).processing_ms, None);
}

#[tokio::test]
async fn ipv6_literals_work_and_family_preferences_are_enforced() {
    let server = Server::start("[::1]:0", None, Arc::new(|_| ok("six"))).await;
    let url = format!("http://[::1]:{}/", server.addr.port());
    let obs = run(HttpSettings::new(url.clone())).await;
    assert!(obs.is_success(), "{obs:?}");
    let obs = run(HttpSettings {
        ip: IpPreference::V4Only,
        ..HttpSettings::new(url)
    })
    .await;
    assert_eq!(
        failure(&obs).map(|f| f.0),
        Some(FailureKind::Resolve),
        "{obs:?}"
    );
}

// --- hostile servers: each must end by the deadline, classified, with memory bounded ---

fn hostile(url: String, timeout: Duration) -> HttpSettings {
    HttpSettings {
        timeout,
        ..HttpSettings::new(url)
    }
}

#[tokio::test]
async fn an_endless_body_stops_at_the_byte_cap() {
    let server = Server::plain(|_| Reply::Endless).await;
    let started = Instant::now();
    let obs = run(hostile(server.url("/"), Duration::from_secs(5))).await;
    assert_eq!(
        failure(&obs).map(|f| f.0),
        Some(FailureKind::BodyLimit),
        "{obs:?}"
    );
    assert_eq!(
        stats(&obs).body_bytes,
        1 << 20,
        "exactly the default cap is kept"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_gzip_bomb_is_cut_at_the_cap_after_decompression() {
    let server = Server::plain(|_| Reply::GzipBomb).await;
    let started = Instant::now();
    let settings = HttpSettings {
        max_body_bytes: 4 << 20,
        ..hostile(server.url("/"), Duration::from_secs(5))
    };
    let obs = run(settings).await;
    assert_eq!(
        failure(&obs).map(|f| f.0),
        Some(FailureKind::BodyLimit),
        "{obs:?}"
    );
    assert_eq!(stats(&obs).body_bytes, 4 << 20);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The process never held more than a small multiple of the cap (an unbounded read of this
    // stream would reach gigabytes). Other tests share the process, hence the loose bound.
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(hwm_kib < 512 * 1024, "peak RSS {hwm_kib} KiB");
}

#[tokio::test]
async fn a_body_trickling_a_byte_a_second_ends_at_the_deadline() {
    let server = Server::plain(|_| Reply::TrickleBody).await;
    let started = Instant::now();
    let obs = run(hostile(server.url("/"), Duration::from_millis(1500))).await;
    let elapsed = started.elapsed();
    let (kind, message) = failure(&obs).expect("must fail");
    assert_eq!(kind, FailureKind::Timeout, "{obs:?}");
    assert!(message.contains("transfer"), "{message}");
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_millis(2500),
        "{elapsed:?}"
    );
    let s = stats(&obs);
    assert!(s.body_bytes >= 1 && s.body_bytes <= 3, "{s:?}");
    assert!(s.transfer_ms.is_some_and(|ms| ms > 1000.0), "{s:?}");
}

#[tokio::test]
async fn headers_trickling_a_byte_a_second_end_at_the_deadline() {
    let server = Server::plain(|_| Reply::TrickleHeaders).await;
    let started = Instant::now();
    let obs = run(hostile(server.url("/"), Duration::from_millis(1500))).await;
    let elapsed = started.elapsed();
    let (kind, message) = failure(&obs).expect("must fail");
    assert_eq!(kind, FailureKind::Timeout, "{obs:?}");
    assert!(message.contains("processing"), "{message}");
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    assert!(
        stats(&obs).processing_ms.is_some_and(|ms| ms > 1000.0),
        "{obs:?}"
    );
}

#[tokio::test]
async fn a_redirect_loop_ends_with_a_redirect_failure() {
    let server = Server::plain(|_| Reply::Full {
        status: 301,
        headers: vec![("Location".into(), "/loop".into())],
        body: vec![],
        delay: Duration::ZERO,
    })
    .await;
    let started = Instant::now();
    let obs = run(hostile(server.url("/loop"), Duration::from_secs(5))).await;
    assert_eq!(
        failure(&obs).map(|f| f.0),
        Some(FailureKind::Redirect),
        "{obs:?}"
    );
    assert_eq!(stats(&obs).redirects, 10, "the default limit");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn invalid_settings_are_reported_before_any_run() {
    let bad = |edit: &dyn Fn(&mut HttpSettings)| {
        let mut s = HttpSettings::new("http://127.0.0.1/");
        edit(&mut s);
        HttpCheck::new(s).map(|_| ()).map_err(|e| e.to_string())
    };
    assert!(bad(&|_| {}).is_ok());
    assert!(bad(&|s| s.url = "ftp://127.0.0.1/".into()).is_err_and(|e| e.contains("scheme")));
    assert!(bad(&|s| s.url = "not a url".into()).is_err());
    assert!(bad(&|s| s.method = "GE T".into()).is_err());
    assert!(bad(&|s| s.expect.body_matches = vec!["(".into()]).is_err_and(|e| e.contains("regex")));
    assert!(
        bad(&|s| s.ca_file = Some("/nonexistent/ca.pem".into()))
            .is_err_and(|e| e.contains("CA file"))
    );
}
