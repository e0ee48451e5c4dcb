//! Drafts about service checks, end to end: `vantage run` checks a small HTTP server and dnsmasq
//! that this test starts on loopback; the server starts answering 503, then dnsmasq is killed. Each
//! `failures` rule must open a draft whose `incident.md` and `incident.json` list the failing runs
//! with their errors and phase timings, the check's history before the breach, and the other
//! checks of the agent as the contrast (web's TCP port still accepts while its app fails).
//!
//! Needs dnsmasq (`apt-get install dnsmasq-base`); without it the test fails, it never skips.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Agent, Dnsmasq, HttpServer, vantage};
use vantage::incident::{Incident, IncidentDb};

fn wait_for<T>(what: &str, agent: &Agent, mut probe: impl FnMut() -> Option<T>) -> T {
    let limit = Duration::from_secs(30);
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Successful runs of `probe` stored so far.
fn successes(data: &Path, probe: &str) -> u32 {
    let Ok(db) = rusqlite::Connection::open(data.join("vantage.db")) else {
        return 0;
    };
    db.query_row(
        "SELECT COUNT(*) FROM observations WHERE probe = ?1 AND success",
        [probe],
        |row| row.get(0),
    )
    .unwrap_or(0)
}

/// The incident with dedup key `key` once its draft is in the directory sink: (the incident as
/// `incident.json` has it, `incident.md`).
fn delivered_draft(data: &Path, key: &str, agent: &Agent) -> (Incident, String) {
    wait_for(&format!("the draft of {key}"), agent, || {
        let incident = IncidentDb::open(data)
            .ok()?
            .all()
            .ok()?
            .into_iter()
            .find(|i| i.key == key)?;
        let folder = data.join("incidents").join(&incident.id);
        let events = std::fs::read_to_string(folder.join("events.jsonl")).ok()?;
        if !events.contains(&format!("{}/opened", incident.id)) {
            return None;
        }
        let json = std::fs::read_to_string(folder.join("incident.json")).expect("incident.json");
        let md = std::fs::read_to_string(folder.join("incident.md")).expect("incident.md");
        Some((
            serde_json::from_str(&json).expect("incident.json parses"),
            md,
        ))
    })
}

/// The cells of the Markdown table rows of `md` that contain `marker`.
fn rows<'a>(md: &'a str, marker: &str) -> Vec<Vec<&'a str>> {
    md.lines()
        .filter(|line| line.starts_with('|') && line.contains(marker))
        .map(|line| line.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect()
}

/// The `### Failing checks` part of a draft.
fn failing_checks(md: &str) -> &str {
    let start = md
        .find("### Failing checks")
        .expect("a Failing checks section");
    let rest = &md[start..];
    &rest[..rest.find("### Other targets").unwrap_or(rest.len())]
}

/// `12.3 ms`, as the draft writes a measured time.
fn is_ms(cell: &str) -> bool {
    cell.strip_suffix(" ms")
        .is_some_and(|v| v.parse::<f64>().is_ok_and(|v| v >= 0.0))
}

#[test]
fn failing_http_and_dns_checks_become_drafts_with_their_phases_and_the_contrast() {
    let web = HttpServer::start();
    let dns = Dnsmasq::running();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[agent]
name = "svc-agent"
site = "local"
data_dir = "{data}"

[incidents]
history = "1m"

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
targets = ["web"]

[[probe]]
name = "web-port"
kind = "tcp"
interval = "1s"
timeout = "500ms"
port = {web_port}
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

[[rule]]
name = "web-down"
kind = "failures"
probes = ["health"]
failures = 3
runs = 5
for = "2s"
clear_for = "3s"
min_hold = "3s"

[[rule]]
name = "dns-down"
kind = "failures"
probes = ["www"]
failures = 3
runs = 5
for = "2s"
clear_for = "3s"
min_hold = "3s"
"#,
            data = data.display(),
            web_port = web.addr.port(),
            dns_port = dns.addr.port(),
        ),
    )
    .expect("config");
    let (code, out, err) = vantage(&["check", "--config", &config.to_string_lossy()]);
    assert_eq!(code, 0, "{out}{err}");

    let agent = Agent::start(&[], &config, dir.path().join("agent.log"));
    wait_for("a healthy history", &agent, || {
        (successes(&data, "health") >= 3 && successes(&data, "www") >= 3).then_some(())
    });

    // 1. The web app answers 503; its port still accepts connections.
    web.set_unavailable(true);
    let (incident, md) = delivered_draft(&data, "web-down/target/web", &agent);
    assert!(
        md.contains(&format!("# {}\n", incident.title)) && incident.title.contains("to web"),
        "{md}"
    );
    let evidence = &incident.evidence;
    assert!(evidence.series.is_empty(), "no ping series: {evidence:#?}");
    let series = &evidence.checks[0];
    assert_eq!(
        (series.probe.as_str(), series.kind.as_str()),
        ("health", "http")
    );
    assert!(
        series.runs.iter().filter(|r| r.success).count() >= 3,
        "the healthy runs before the breach: {series:#?}"
    );
    assert!(evidence.failing_checks.len() >= 3, "{evidence:#?}");
    let newest = &evidence.failing_checks[0].run;
    assert!(
        evidence
            .failing_checks
            .windows(2)
            .all(|w| w[0].run.at >= w[1].run.at)
    );
    assert_eq!(newest.failure_kind.as_deref(), Some("status"));
    assert_eq!(
        newest.failure.as_deref(),
        Some("status 503, expected [200]")
    );
    let figures = serde_json::to_value(&newest.figures).expect("json");
    assert_eq!(figures["status_code"], 503, "{figures}");
    for phase in ["connect_ms", "processing_ms", "total_ms"] {
        assert!(figures[phase].as_f64().is_some(), "{phase} in {figures}");
    }

    // The Markdown: the failing runs with every phase, and the contrast.
    assert!(
        md.contains(
            "| time (UTC) | target | probe | status | failure | resolve | connect | tls | processing | transfer | total |"
        ),
        "{md}"
    );
    let failing = rows(failing_checks(&md), "| web | health | 503 |");
    assert_eq!(failing.len(), evidence.failing_checks.len(), "{md}");
    for row in &failing {
        // time, target, probe, status, failure, resolve, connect, tls, processing, transfer, total
        assert_eq!(row[4], "status: status 503, expected [200]", "{row:?}");
        for phase in [5, 6, 8, 9, 10] {
            assert!(is_ms(row[phase]), "phase {phase} of {row:?}");
        }
        assert_eq!(row[7], "-", "no TLS over plain http: {row:?}");
    }
    let summary = format!(
        "**web** (health, http): {} runs, {} failed; median total_ms ",
        series.runs.len(),
        series.runs.iter().filter(|r| !r.success).count()
    );
    assert!(md.contains(&summary), "{summary:?} in {md}");
    assert!(
        md.contains("All 2 other service checks measured from this agent are healthy"),
        "{md}"
    );
    let port = rows(&md, "| web | local | web-port | tcp |");
    assert_eq!(port.len(), 1, "{md}");
    assert_eq!(&port[0][4..6], ["healthy", "connected"]);
    assert!(is_ms(port[0][6]), "{port:?}");
    let resolver = rows(&md, "| resolver | local | www | dns |");
    assert_eq!(&resolver[0][4..6], ["healthy", "NOERROR, 1 answer"], "{md}");

    // 2. The resolver dies while the app still fails.
    drop(dns);
    let (incident, md) = delivered_draft(&data, "dns-down/target/resolver", &agent);
    let failing = &incident.evidence.failing_checks;
    assert!(failing.len() >= 3, "{:#?}", incident.evidence);
    assert!(failing.iter().all(|f| f.probe == "www" && !f.run.success));
    let rows_dns = rows(failing_checks(&md), "| resolver | www |");
    assert_eq!(rows_dns.len(), failing.len(), "{md}");
    for (row, f) in rows_dns.iter().zip(failing) {
        // time, target, probe, server, rcode, answers, failure, latency
        let kind = f.run.failure_kind.as_deref().expect("a failure kind");
        assert!(row[6].starts_with(&format!("{kind}: ")), "{row:?}");
        assert!(row[6].len() > kind.len() + 2, "the error is shown: {row:?}");
    }
    assert!(md.contains("**resolver** (www, dns): "), "{md}");
    assert!(
        md.contains(
            "1 of 2 other service checks measured from this agent are healthy; the others are listed below"
        ),
        "{md}"
    );
    let health = rows(&md, "| web | local | health | http |");
    assert_eq!(&health[0][4..6], ["unhealthy", "503"], "{md}");

    let log = agent.stop();
    assert!(log.contains("incident opened"), "{log}");
}
