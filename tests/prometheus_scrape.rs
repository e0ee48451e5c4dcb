//! A real Prometheus (Debian `prometheus`) scrapes a real agent's `/metrics` in the routed lab:
//! the agent pings a clean hop and a target behind a lossy router, checks an HTTP server, and
//! spools for an output that is down. PromQL over Prometheus' HTTP API must return what the
//! agent's own files hold: the latest round's loss and RTT quantiles as in the SQLite store, the
//! HTTP check's success, and the spool depth as in the spool. Everything (agent, Prometheus, the
//! HTTP server) lives in the lab's agent namespace, on its loopback.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lab::{Lab, Router, addr};
use serde_json::Value;

const METRICS_PORT: u16 = 19798;
const PROMETHEUS_PORT: u16 = 19090;

/// Kills (by PID) what it holds when dropped, also when the test panics.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One PromQL instant query, from inside the agent namespace: the result vector.
fn query(lab: &Lab, promql: &str) -> Vec<Value> {
    let url = reqwest::Url::parse_with_params("http://x/api/v1/query", &[("query", promql)])
        .expect("url");
    let Ok(mut stream) = lab
        .agent()
        .inside(|| TcpStream::connect(("127.0.0.1", PROMETHEUS_PORT)))
    else {
        return Vec::new();
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let request = format!(
        "GET /api/v1/query?{} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
        url.query().unwrap_or("")
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return Vec::new();
    }
    let mut answer = Vec::new();
    let _ = stream.take(4 << 20).read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let Some((_, body)) = answer.split_once("\r\n\r\n") else {
        return Vec::new();
    };
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    json["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The value of the single series `promql` selects, if Prometheus has it.
fn scalar(lab: &Lab, promql: &str) -> Option<f64> {
    let result = query(lab, promql);
    match result.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// The HTTP server in the lab, stopped from inside the lab when dropped (its drop wakes its
/// accept loop by connecting to it, which only reaches it from inside the namespace).
struct ServerInLab<'a> {
    lab: &'a Lab,
    server: Option<support::HttpServer>,
}

impl Drop for ServerInLab<'_> {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.lab.agent().inside(move || drop(server));
        }
    }
}

fn write_config(dir: &Path, http_port: u16) -> std::path::PathBuf {
    let path = dir.join("vantage.toml");
    std::fs::write(
        &path,
        format!(
            r#"[agent]
name = "lab-agent"
site = "lab"
data_dir = "{data}"
listen = "127.0.0.1:{METRICS_PORT}"

[[target]]
name = "r1"
host = "{r1}"
site = "lab"

[[target]]
name = "far"
host = "{far}"
site = "remote"

[[target]]
name = "web"
host = "127.0.0.1"
site = "lab"

[[probe]]
name = "ping"
kind = "icmp"
interval = "2s"
count = 20
spacing = "50ms"
timeout = "500ms"
targets = ["r1", "far"]

[[probe]]
name = "page"
kind = "http"
interval = "2s"
timeout = "1s"
scheme = "http"
port = {http_port}
path = "/health"
targets = ["web"]

[[output]]
name = "down"
kind = "influxdb_v2"
url = "http://127.0.0.1:9"
org = "o"
bucket = "b"
"#,
            data = dir.join("data").display(),
            r1 = addr::R1_AGENT_SIDE,
            far = addr::TARGET,
        ),
    )
    .expect("write config");
    path
}

#[test]
fn prometheus_scrapes_what_the_store_and_spool_hold() {
    let prometheus = support::require_binary("prometheus", "prometheus");
    let lab = Lab::routed();
    // Both directions to `far` cross r2: about 36% of the echoes are lost.
    lab.inject_loss(Router::R2, 20);
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = lab
        .agent()
        .inside(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind in the lab");
    let server = ServerInLab {
        lab: &lab,
        server: Some(support::HttpServer::serve(listener)),
    };
    let http_port = server.server.as_ref().expect("server").addr.port();
    let config = write_config(dir.path(), http_port);
    let stall = dir.path().join("stall");

    let agent_log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let mut agent = Killed(
        lab.agent()
            .command(support::VANTAGE)
            .args(["run", "--config"])
            .arg(&config)
            .env("VANTAGE_TEST_STALL_FILE", &stall)
            .stdout(Stdio::null())
            .stderr(agent_log)
            .spawn()
            .expect("start the agent"),
    );
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: vantage\n    static_configs:\n      - targets: ['127.0.0.1:{METRICS_PORT}']\n"
        ),
    )
    .expect("prometheus config");
    let prometheus_log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
    let _prometheus = Killed(
        lab.agent()
            .command(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"))
            .stdout(Stdio::null())
            .stderr(prometheus_log)
            .spawn()
            .expect("start prometheus"),
    );
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();

    // A few rounds of each, then hold the scheduler still: the latest round stops changing.
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        agent.0.try_wait().expect("agent").is_none(),
        "the agent died:\n{}",
        log("agent.log")
    );
    std::fs::write(&stall, "").expect("stall the scheduler");
    std::thread::sleep(Duration::from_millis(2_500));

    let db = rusqlite::Connection::open(dir.path().join("data/vantage.db")).expect("store");
    // Ping rounds are compact rows: read them through the store, as the report and drafts do.
    let store = vantage::store::Store::open_read_only(&dir.path().join("data")).expect("store");
    let latest_round = |probe: &str, target: &str| -> (i64, Value) {
        let round = store
            .ping_history(probe, target, 0, i64::MAX)
            .expect("rounds")
            .pop()
            .expect("a stored round");
        let fields = serde_json::json!({
            "loss_pct": round.loss_pct,
            "rtt_p10_ms": round.rtt_p10_ms,
            "rtt_p25_ms": round.rtt_p25_ms,
            "rtt_median_ms": round.rtt_median_ms,
            "rtt_p75_ms": round.rtt_p75_ms,
            "rtt_p90_ms": round.rtt_p90_ms,
        });
        (round.timestamp_ns, fields)
    };
    let latest = |probe: &str, target: &str| -> (i64, Value, bool) {
        db.query_row(
            "SELECT ts_ns, fields, success FROM observations WHERE probe = ?1 AND target = ?2
             ORDER BY ts_ns DESC LIMIT 1",
            [probe, target],
            |r| {
                let fields: String = r.get(1)?;
                Ok((
                    r.get(0)?,
                    serde_json::from_str(&fields).expect("fields are JSON"),
                    r.get(2)?,
                ))
            },
        )
        .expect("a stored round")
    };
    let selector = |probe: &str, target: &str| {
        format!(
            r#"{{job="vantage",agent="lab-agent",site="lab",probe="{probe}",target="{target}"}}"#
        )
    };

    // Prometheus has scraped since the last round: its timestamp is the store's.
    let (far_ts, far_fields) = latest_round("ping", "far");
    let start = Instant::now();
    loop {
        let scraped = scalar(
            &lab,
            &format!("vantage_check_timestamp_seconds{}", selector("ping", "far")),
        );
        if scraped.is_some_and(|s| (s - far_ts as f64 / 1e9).abs() < 1e-3) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "Prometheus never scraped the round of {far_ts} (last: {scraped:?}):\n{}\n{}",
            log("agent.log"),
            log("prometheus.log")
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    for target in ["far", "r1"] {
        let (_, fields) = latest_round("ping", target);
        let loss = scalar(
            &lab,
            &format!("vantage_ping_loss_ratio{}", selector("ping", target)),
        )
        .expect("loss series");
        let stored_loss = fields["loss_pct"].as_f64().expect("loss_pct") / 100.0;
        assert!(
            (loss - stored_loss).abs() < 1e-9,
            "{target}: {loss} vs {stored_loss}"
        );
        for (quantile, field) in [
            ("0.1", "rtt_p10_ms"),
            ("0.25", "rtt_p25_ms"),
            ("0.5", "rtt_median_ms"),
            ("0.75", "rtt_p75_ms"),
            ("0.9", "rtt_p90_ms"),
        ] {
            let selector =
                selector("ping", target).replace('}', &format!(r#",quantile="{quantile}"}}"#));
            let scraped = scalar(&lab, &format!("vantage_ping_rtt_seconds{selector}"))
                .unwrap_or_else(|| panic!("{target}: no p{quantile} series"));
            // The store keeps whole microseconds; /metrics the round as measured.
            let stored = fields[field].as_f64().expect("a stored quantile") / 1000.0;
            assert!(
                (scraped - stored).abs() <= 1e-6,
                "{target} q{quantile}: {scraped} vs {stored}"
            );
        }
    }
    // The lossy path is visible as such, the clean hop as clean.
    let far_loss = far_fields["loss_pct"].as_f64().expect("loss");
    assert!(
        far_loss > 0.0,
        "no loss behind r2 in this round: {far_fields}"
    );

    let (_, web_fields, web_success) = latest("page", "web");
    assert!(web_success, "the HTTP check failed: {web_fields}");
    assert_eq!(
        scalar(
            &lab,
            &format!("vantage_check_success{}", selector("page", "web"))
        ),
        Some(1.0)
    );

    // The spool depth, as the spool holds it (only the self-metrics, every 10 s, add to it now).
    let start = Instant::now();
    loop {
        let spooled = vantage::sinks::Spool::open_read_only(&dir.path().join("data"))
            .expect("spool")
            .expect("a spool")
            .totals()
            .expect("totals")[0]
            .pending_points as f64;
        let scraped = scalar(
            &lab,
            r#"vantage_output_spool_points{job="vantage",output="down"}"#,
        );
        if scraped == Some(spooled) && spooled > 0.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "spool depth: Prometheus {scraped:?}, spool {spooled}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(server);
    support::terminate(&agent.0);
    let status = agent.0.wait().expect("agent exit");
    assert!(status.success(), "{}", log("agent.log"));
}
