//! The sink tests' servers: real stores from Debian packages (VictoriaMetrics, InfluxDB 1.x)
//! started on loopback with Drop guards, a scripted HTTP endpoint, synthetic records.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use probes::{FailureKind, Measurement, Observation, Outcome, PingStats};
use vantage::store::Record;

use super::process::{free_port, require_binary, terminate, wait_for};

/// Show the sinks' logs in a failing test's output (RUST_LOG overrides the level).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("vantage=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// `url` with `params` as its query string (reqwest's `form`/`json` features are not enabled).
pub fn with_query(url: &str, params: &[(&str, &str)]) -> reqwest::Url {
    reqwest::Url::parse_with_params(url, params).expect("url")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// A server process we started; killed (by PID) when dropped, also when the test panics.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl ServerProcess {
    pub fn spawn(binary: PathBuf, args: Vec<String>, log: PathBuf) -> ServerProcess {
        let mut server = ServerProcess {
            child: None,
            binary,
            args,
            log,
        };
        server.start();
        server
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log file");
        let child = Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// SIGTERM and wait (SIGKILL after 20 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// VictoriaMetrics (`victoria-metrics` package) on a loopback port, data in `dir`.
#[derive(Debug)]
pub struct VictoriaMetrics {
    pub process: ServerProcess,
    pub url: String,
}

impl VictoriaMetrics {
    pub async fn start(dir: &Path) -> VictoriaMetrics {
        let binary = require_binary("victoria-metrics", "victoria-metrics");
        let port = free_port();
        std::fs::create_dir_all(dir).expect("vm dir");
        let args = vec![
            format!("-storageDataPath={}", dir.join("data").display()),
            format!("-httpListenAddr=127.0.0.1:{port}"),
            "-loggerLevel=WARN".into(),
            "-search.latencyOffset=0s".into(),
            "-retentionPeriod=10y".into(),
        ];
        let vm = VictoriaMetrics {
            process: ServerProcess::spawn(binary, args, dir.join("vm.log")),
            url: format!("http://127.0.0.1:{port}"),
        };
        vm.wait_ready().await;
        vm
    }

    pub async fn wait_ready(&self) {
        let client = http();
        let url = format!("{}/health", self.url);
        wait_for("VictoriaMetrics /health", Duration::from_secs(30), || {
            let request = client.get(&url).send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
    }

    pub async fn restart(&mut self) {
        self.process.start();
        self.wait_ready().await;
    }

    /// Every raw sample of the series matching `selector`: (labels, timestamps in ms).
    pub async fn export(&self, selector: &str) -> Vec<(serde_json::Value, Vec<i64>)> {
        let client = http();
        client
            .get(format!("{}/internal/force_flush", self.url))
            .send()
            .await
            .expect("force_flush");
        let text = client
            .get(with_query(
                &format!("{}/api/v1/export", self.url),
                &[("match[]", selector), ("start", "0")],
            ))
            .send()
            .await
            .expect("export")
            .text()
            .await
            .expect("export body");
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).expect("export line");
                let timestamps = v["timestamps"]
                    .as_array()
                    .expect("timestamps")
                    .iter()
                    .map(|t| t.as_i64().expect("timestamp"))
                    .collect();
                (v["metric"].clone(), timestamps)
            })
            .collect()
    }
}

/// InfluxDB 1.x (`influxdb` package) on loopback ports, with auth enabled and one admin user.
#[derive(Debug)]
pub struct Influxd {
    pub process: ServerProcess,
    pub url: String,
    pub user: String,
    pub password: String,
}

impl Influxd {
    pub async fn start(dir: &Path, user: &str, password: &str) -> Influxd {
        let binary = require_binary("influxd", "influxdb");
        let (http_port, rpc_port) = (free_port(), free_port());
        std::fs::create_dir_all(dir).expect("influx dir");
        let config = dir.join("influxdb.conf");
        std::fs::write(
            &config,
            format!(
                r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = true
  log-enabled = false
  pprof-enabled = false
"#,
                d = dir.display()
            ),
        )
        .expect("influx config");
        let influx = Influxd {
            process: ServerProcess::spawn(
                binary,
                vec!["run".into(), "-config".into(), config.display().to_string()],
                dir.join("influxd.log"),
            ),
            url: format!("http://127.0.0.1:{http_port}"),
            user: user.into(),
            password: password.into(),
        };
        influx.wait_ready().await;
        // With no user yet, InfluxDB lets anyone create the first admin.
        let created = http()
            .post(with_query(
                &format!("{}/query", influx.url),
                &[(
                    "q",
                    &format!(
                        "CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES"
                    ),
                )],
            ))
            .send()
            .await
            .expect("create user");
        assert!(created.status().is_success(), "create user: {created:?}");
        influx
    }

    pub async fn wait_ready(&self) {
        let client = http();
        let url = format!("{}/ping", self.url);
        wait_for("influxd /ping", Duration::from_secs(30), || {
            let request = client.get(&url).send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
    }

    pub async fn restart(&mut self) {
        self.process.start();
        self.wait_ready().await;
    }

    /// Run InfluxQL as the admin; returns the JSON answer.
    pub async fn query(&self, db: &str, q: &str) -> serde_json::Value {
        let response = http()
            .post(with_query(
                &format!("{}/query", self.url),
                &[("db", db), ("q", q), ("epoch", "ns")],
            ))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .expect("influx query");
        assert!(response.status().is_success(), "query {q}: {response:?}");
        serde_json::from_str(&response.text().await.expect("influx body")).expect("influx json")
    }
}

/// A synthetic ping round, as the scheduler would hand it over.
pub fn ping_record(target: &str, at: SystemTime, seq: u64) -> Record {
    let rtts = if seq % 50 == 49 {
        vec![None, None, None]
    } else {
        vec![Some(1.0 + (seq % 7) as f64 * 0.25), None, Some(2.5)]
    };
    let stats = PingStats::from_rtts(rtts);
    let outcome = if stats.received == 0 {
        Outcome::failure(FailureKind::Timeout, "no reply")
    } else {
        Outcome::Success
    };
    Record {
        agent: "test-agent".into(),
        site: "lab".into(),
        probe: "icmp".into(),
        target: target.into(),
        target_site: "remote".into(),
        address: Some(if seq % 2 == 0 { "127.0.0.1" } else { "::1" }.into()),
        observation: Observation {
            started_at: at,
            duration: Duration::from_millis(1000),
            outcome,
            measurement: Measurement::Ping(stats),
        },
    }
}

/// The lines `record` becomes (what a server must receive).
pub fn lines_of(record: &Record) -> Vec<String> {
    vantage::sinks::line_protocol::encode(record)
        .iter()
        .filter_map(|p| p.line())
        .collect()
}

/// One request the scripted endpoint received, and what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path_and_query: String,
    pub authorization: Option<String>,
    pub content_encoding: Option<String>,
    pub lines: Vec<String>,
    pub status: u16,
}

/// What the scripted endpoint answers: (status, headers, body) for request number `n` (0-based).
pub type Script =
    dyn Fn(usize, &Received) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync;

/// A real HTTP/1.1 server (hyper) on loopback that answers write requests by script and records them.
pub struct ScriptedEndpoint {
    pub url: String,
    pub log: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ScriptedEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedEndpoint")
            .field("url", &self.url)
            .finish()
    }
}

impl Drop for ScriptedEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedEndpoint {
    pub async fn start(script: Arc<Script>) -> ScriptedEndpoint {
        use http_body_util::{BodyExt, Full};
        use hyper::body::Bytes;
        use hyper::service::service_fn;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind scripted endpoint");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let task = {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let log = Arc::clone(&log);
                    let script = Arc::clone(&script);
                    tokio::spawn(async move {
                        let service =
                            service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                                let log = Arc::clone(&log);
                                let script = Arc::clone(&script);
                                async move {
                                    let header = |name: &str| {
                                        request
                                            .headers()
                                            .get(name)
                                            .and_then(|v| v.to_str().ok())
                                            .map(String::from)
                                    };
                                    let authorization = header("authorization");
                                    let content_encoding = header("content-encoding");
                                    let path_and_query = request
                                        .uri()
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default();
                                    let body = request
                                        .into_body()
                                        .collect()
                                        .await
                                        .expect("request body")
                                        .to_bytes();
                                    let text = if content_encoding.as_deref() == Some("gzip") {
                                        use std::io::Read;
                                        let mut text = String::new();
                                        flate2::read::GzDecoder::new(&body[..])
                                            .read_to_string(&mut text)
                                            .expect("gzip body");
                                        text
                                    } else {
                                        String::from_utf8(body.to_vec()).expect("utf-8 body")
                                    };
                                    let mut received = Received {
                                        at: Instant::now(),
                                        path_and_query,
                                        authorization,
                                        content_encoding,
                                        lines: text.lines().map(String::from).collect(),
                                        status: 0,
                                    };
                                    let mut log = log.lock().expect("log lock");
                                    let (status, headers, body) = script(log.len(), &received);
                                    received.status = status;
                                    log.push(received);
                                    drop(log);
                                    let mut response = hyper::Response::builder().status(status);
                                    for (name, value) in headers {
                                        response = response.header(name, value);
                                    }
                                    Ok::<_, std::convert::Infallible>(
                                        response
                                            .body(Full::new(Bytes::from(body)))
                                            .expect("response"),
                                    )
                                }
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        ScriptedEndpoint { url, log, task }
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.lock().expect("log lock").clone()
    }

    /// Lines of every request answered 2xx, in arrival order.
    pub fn accepted_lines(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(|r| r.lines)
            .collect()
    }
}
