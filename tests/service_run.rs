//! `vantage run` with every service-check kind and a trace probe, against servers this test starts
//! on loopback (a small HTTP server, dnsmasq), and `vantage report` showing what was stored.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use support::{Agent, Dnsmasq, HttpServer, free_port, vantage};

/// (measurement, probe, success, fields) of every stored observation.
fn stored(data: &Path) -> Vec<(String, String, bool, serde_json::Value)> {
    let Ok(db) = Connection::open(data.join("vantage.db")) else {
        return Vec::new();
    };
    let Ok(mut query) =
        db.prepare("SELECT measurement, probe, success, fields FROM observations ORDER BY id")
    else {
        return Vec::new();
    };
    query
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, bool>(2)?,
                row.get::<_, String>(3)?,
            ))
        })
        .expect("rows")
        .map(|row| {
            let (measurement, probe, success, fields) = row.expect("row");
            let fields = serde_json::from_str(&fields).expect("fields");
            (measurement, probe, success, fields)
        })
        .collect()
}

#[test]
fn run_stores_http_dns_tcp_and_trace_results_that_report_shows() {
    let web = HttpServer::start();
    let dns = Dnsmasq::running();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("vantage.toml");
    let web_port = web.addr.port();
    let closed = free_port();
    std::fs::write(
        &config,
        format!(
            r#"
[agent]
name = "svc-agent"
site = "local"
data_dir = "{data}"

[[target]]
name = "web"
host = "127.0.0.1"
site = "local"

[[target]]
name = "resolver"
host = "127.0.0.1"
site = "local"

[[probe]]
name = "health"
kind = "http"
interval = "1s"
timeout = "900ms"
scheme = "http"
port = {web_port}
path = "/health"
expect_status = [200]
body_regex = '"status":\s*"up"'
header_matches = {{ "Content-Type" = "^application/json" }}
targets = ["web"]

[[probe]]
name = "broken-page"
kind = "http"
interval = "1s"
timeout = "900ms"
scheme = "http"
port = {web_port}
path = "/nothing"
targets = ["web"]

[[probe]]
name = "web-port"
kind = "tcp"
interval = "1s"
timeout = "500ms"
port = {web_port}
targets = ["web"]

[[probe]]
name = "closed-port"
kind = "tcp"
interval = "1s"
timeout = "500ms"
port = {closed}
targets = ["web"]

[[probe]]
name = "www"
kind = "dns"
interval = "1s"
timeout = "500ms"
port = {dns_port}
query = "www.vantage.test"
record_type = "A"
expect_answers = ["198.18.0.10"]
targets = ["resolver"]

[[probe]]
name = "path"
kind = "trace"
interval = "2s"
timeout = "100ms"
count = 3
targets = ["web"]
"#,
            data = data.display(),
            dns_port = dns.addr.port(),
        ),
    )
    .expect("config");
    let (code, out, err) = vantage(&["check", "--config", &config.to_string_lossy()]);
    assert_eq!(code, 0, "{out}{err}");

    let agent = Agent::start(&[], &config, dir.path().join("agent.log"));
    let start = Instant::now();
    let probes = [
        "health",
        "broken-page",
        "web-port",
        "closed-port",
        "www",
        "path",
    ];
    loop {
        let rows = stored(&data);
        let have = |probe: &str| rows.iter().filter(|r| r.1 == probe).count();
        if probes.iter().all(|p| have(p) >= 2) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not every probe ran twice: {rows:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.stop();

    let rows = stored(&data);
    let latest = |probe: &str| {
        rows.iter()
            .rev()
            .find(|r| r.1 == probe)
            .unwrap_or_else(|| panic!("{probe} in {rows:?}"))
    };
    let (measurement, _, ok, f) = latest("health");
    assert_eq!((measurement.as_str(), *ok), ("http", true), "{f}");
    assert_eq!(f["status_code"], 200);
    assert!(
        f["processing_ms"].is_number() && f["total_ms"].is_number(),
        "{f}"
    );
    let (_, _, ok, f) = latest("broken-page");
    assert!(!ok);
    assert_eq!(f["status_code"], 404);
    let (measurement, _, ok, f) = latest("web-port");
    assert_eq!((measurement.as_str(), *ok), ("tcp", true));
    assert_eq!(f["address"], web.addr.to_string());
    assert!(!latest("closed-port").2);
    let (measurement, _, ok, f) = latest("www");
    assert_eq!((measurement.as_str(), *ok), ("dns", true), "{f}");
    assert_eq!(f["records"], serde_json::json!(["198.18.0.10"]));
    assert_eq!(f["server"], dns.addr.to_string());
    let (measurement, _, ok, f) = latest("path");
    assert_eq!((measurement.as_str(), *ok), ("trace", true), "{f}");
    assert_eq!(f["hops"][0]["addresses"][0], "127.0.0.1");
    assert_eq!(f["hops"][0]["sent"], 3);
    assert_eq!(f["reached"], true);
    assert_eq!(f["path_changed"], false);
    assert_eq!(f["verdict"]["verdict"], "no_loss");
    assert_eq!(f["verdict_text"], "no loss to the destination");

    let (code, report, err) = vantage(&["report", "--config", &config.to_string_lossy()]);
    assert_eq!(code, 0, "{report}{err}");
    let (checks, traces) = report
        .split_once("PATH TRACES\n")
        .unwrap_or_else(|| panic!("a traces section: {report}"));
    let checks = checks
        .split_once("SERVICE CHECKS\n")
        .unwrap_or_else(|| panic!("a service checks section: {report}"))
        .1;
    let header = checks.lines().next().expect("header");
    for column in [
        "TARGET", "SITE", "PROBE", "KIND", "RESULT", "TIME MS", "DETAIL", "FAILURE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = |section: &str, probe: &str| -> String {
        section
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(probe))
            .unwrap_or_else(|| panic!("{probe} in {report}"))
            .to_string()
    };
    let health = row(checks, "health");
    assert!(
        health.contains(" http ") && health.contains(" ok ") && health.contains("HTTP 200"),
        "{health}"
    );
    let broken = row(checks, "broken-page");
    assert!(
        broken.contains("FAILED") && broken.contains("status 404, expected 2xx"),
        "{broken}"
    );
    let port = row(checks, "web-port");
    assert!(port.contains(" tcp ") && port.contains(" ok "), "{port}");
    let closed = row(checks, "closed-port");
    assert!(
        closed.contains("FAILED") && closed.contains("refused"),
        "{closed}"
    );
    let www = row(checks, "www");
    assert!(
        www.contains(" dns ") && www.contains(" ok ") && www.contains("NOERROR, 1 A answer"),
        "{www}"
    );
    let path = row(traces, "path");
    assert!(
        path.contains(" yes ")
            && path.contains(" same ")
            && path.contains("no loss to the destination"),
        "{path}"
    );
    assert!(path.ends_with("127.0.0.1"), "{path}");
}
