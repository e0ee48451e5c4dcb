//! The fleet query module against the real stores (InfluxDB 1.x from Debian's `influxdb`,
//! VictoriaMetrics from `victoria-metrics`): three sites' points written through the write APIs
//! the outputs use, then one [`FleetStore::query`] per dialect must give the same per-site figures,
//! last reports and latest traces. Also: a stopped store, a store that does not answer in time,
//! and wrong credentials are each a clear reason, within the budget, without the secret.

mod support;

use std::time::{Duration, Instant, SystemTime};

use probes::trace::{Hop, TraceReport};
use probes::{FailureKind, HttpStats, Measurement, Observation, Outcome, PingStats};
use vantage::config::{FleetConfig, FleetDialect, OutputConfig, OutputKind, SecretSource};
use vantage::fleet::{FleetIncident, FleetRequest, FleetStore, FleetView};
use vantage::store::Record;

use support::{Influxd, VictoriaMetrics, http, lines_of, with_query};

const SITES: [(&str, &str); 3] = [
    ("scl3", "agent-scl3"),
    ("sjc1", "agent-sjc1"),
    ("iad1", "agent-iad1"),
];

fn record(site: usize, target: &str, at: SystemTime, measurement: Measurement, ok: bool) -> Record {
    Record {
        agent: SITES[site].1.into(),
        site: SITES[site].0.into(),
        probe: "ping".into(),
        target: target.into(),
        target_site: "cloud".into(),
        address: Some("198.19.0.1".into()),
        observation: Observation {
            started_at: at,
            duration: Duration::from_millis(500),
            outcome: if ok {
                Outcome::Success
            } else {
                Outcome::failure(FailureKind::Timeout, "no reply")
            },
            measurement,
        },
    }
}

fn hop(ttl: u8, address: &str, loss_pct: f64) -> Hop {
    Hop {
        ttl,
        addresses: vec![address.parse().expect("address")],
        sent: 10,
        received: 10 - (loss_pct / 10.0) as u32,
        loss_pct,
        rtt_last_ms: Some(1.0),
        rtt_avg_ms: Some(1.0),
        rtt_best_ms: Some(1.0),
        rtt_worst_ms: Some(1.0),
        rtt_stddev_ms: Some(0.0),
    }
}

/// The lines of the scenario, and the window to ask about. 60 rounds of 10 echoes per site to
/// `aws-gw` in the last 60 s: scl3 loses 5 echoes of every 10 (and 10 whole rounds), sjc1 and iad1
/// none; RTT medians 10, 20, 30 ms. iad1 stopped reporting 4 minutes ago. An HTTP check per site
/// (sjc1's fails twice). One trace per site (scl3 has an older, longer one too).
fn scenario(now: SystemTime) -> (Vec<String>, FleetRequest) {
    let mut lines = Vec::new();
    for (site, (name, _)) in SITES.iter().enumerate() {
        // iad1's rounds ended 4 minutes before now; the others' run up to now.
        let end = if *name == "iad1" {
            now - Duration::from_secs(240)
        } else {
            now
        };
        for i in 0..60u64 {
            let at = end - Duration::from_secs(60 - i);
            let rtt = 10.0 * (site + 1) as f64;
            let rtts: Vec<Option<f64>> = (0..10)
                .map(|e| match (site, i) {
                    (0, i) if i < 10 => None,
                    (0, _) if e % 2 == 0 => None,
                    _ => Some(rtt),
                })
                .collect();
            let stats = PingStats::from_rtts(rtts);
            let ok = stats.received > 0;
            lines.extend(lines_of(&record(
                site,
                "aws-gw",
                at,
                Measurement::Ping(stats),
                ok,
            )));
        }
        for i in 0..5u64 {
            let at = end - Duration::from_secs(50 - 10 * i);
            let failed = *name == "sjc1" && i < 2;
            let stats = HttpStats {
                status_code: Some(if failed { 503 } else { 200 }),
                total_ms: 5.0,
                ..HttpStats::default()
            };
            let mut r = record(site, "aws-gw", at, Measurement::Http(stats), !failed);
            r.probe = "web".into();
            lines.extend(lines_of(&r));
        }
        let transit = if *name == "iad1" {
            "198.18.22.1"
        } else {
            "198.18.20.1"
        };
        let edge = format!("198.18.1{site}.1");
        if *name == "scl3" {
            let old = TraceReport::new(
                "198.19.0.1".parse().expect("address"),
                vec![
                    hop(1, &edge, 0.0),
                    hop(2, "198.18.99.1", 0.0),
                    hop(3, transit, 0.0),
                    hop(4, "198.19.0.1", 0.0),
                ],
            );
            let mut r = record(
                site,
                "aws-gw",
                end - Duration::from_secs(50),
                Measurement::Trace(old),
                true,
            );
            r.probe = "trace".into();
            lines.extend(lines_of(&r));
        }
        let report = TraceReport::new(
            "198.19.0.1".parse().expect("address"),
            vec![
                hop(1, &edge, 0.0),
                hop(2, transit, 0.0),
                hop(3, "198.19.0.1", if *name == "iad1" { 0.0 } else { 50.0 }),
            ],
        );
        let mut r = record(
            site,
            "aws-gw",
            end - Duration::from_secs(20),
            Measurement::Trace(report),
            true,
        );
        r.probe = "trace".into();
        lines.extend(lines_of(&r));
        // The agent's self-metrics point.
        lines.push(format!(
            "agent,agent={},output=central,site={name} observations=1i {}",
            SITES[site].1,
            end.duration_since(SystemTime::UNIX_EPOCH)
                .expect("now")
                .as_nanos()
        ));
        // Another target nobody asks about.
        let stats = PingStats::from_rtts(vec![Some(1.0)]);
        lines.extend(lines_of(&record(
            site,
            "other",
            end - Duration::from_secs(5),
            Measurement::Ping(stats),
            true,
        )));
    }
    let request = FleetRequest {
        targets: vec!["aws-gw".into()],
        from: now - Duration::from_secs(61),
        until: now,
    };
    (lines, request)
}

/// The fleet evaluator's `incident` points (as `src/incident/outputs.rs` writes them): aws-gw's
/// incident opened 30 s ago by 2 of 3 sites, updated 10 s ago to 3 of 3; scl3's site incident
/// opened and resolved; and an agent's own aws-gw incident (no `role=fleet`), which is no fleet
/// incident.
fn incident_lines(now: SystemTime) -> Vec<String> {
    let ns = |ago: u64| {
        (now - Duration::from_secs(ago))
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("now")
            .as_nanos()
    };
    let point = |agent: &str,
                 rule: &str,
                 key: &str,
                 event: &str,
                 role: &str,
                 id: &str,
                 seeing: u32,
                 ago: u64| {
        format!(
            "incident,agent={agent},site={agent},rule={rule},severity=critical,scope=group,event={event},fleet_key={key}{role} \
             id=\"{id}\",state=\"{state}\",title=\"2026-11-30 [fleet] 100% packet loss to aws-gw\",summary=\"x\",subject=\"s\",targets=\"aws-gw\",affected=1i,total_targets=1i,value=100,sites_seeing={seeing}i,sites_total=3i {}",
            ns(ago),
            state = if event == "resolved" {
                "resolved"
            } else {
                "open"
            },
        )
    };
    vec![
        point(
            "fleet",
            "cloud-unreachable",
            "target/aws-gw",
            "opened",
            ",role=fleet",
            "20261130-007",
            2,
            30,
        ),
        point(
            "fleet",
            "cloud-unreachable",
            "target/aws-gw",
            "updated",
            ",role=fleet",
            "20261130-007",
            3,
            10,
        ),
        point(
            "fleet",
            "site-unreachable",
            "site/scl3",
            "opened",
            ",role=fleet",
            "20261130-006",
            2,
            50,
        ),
        point(
            "fleet",
            "site-unreachable",
            "site/scl3",
            "resolved",
            ",role=fleet",
            "20261130-006",
            2,
            40,
        ),
        point(
            "agent-scl3",
            "cloud-loss",
            "target/aws-gw",
            "opened",
            "",
            "20261130-001",
            0,
            30,
        ),
    ]
}

/// Exactly aws-gw's fleet incident is open, opened 30 s ago, seen from 3 of 3 sites.
fn check_incidents(incidents: &[FleetIncident], now: SystemTime, with_strings: bool) {
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    let incident = &incidents[0];
    assert_eq!(
        (
            incident.fleet_key.as_str(),
            incident.rule.as_str(),
            incident.evaluator.as_str(),
            incident.opened_ms,
            incident.sites_seeing,
            incident.sites_total
        ),
        (
            "target/aws-gw",
            "cloud-unreachable",
            "fleet",
            ms(now - Duration::from_secs(30)),
            Some(3),
            Some(3)
        )
    );
    // VictoriaMetrics drops string fields.
    assert_eq!(
        incident.id.as_deref(),
        with_strings.then_some("20261130-007")
    );
}

fn fleet_keys() -> Vec<String> {
    vec!["target/aws-gw".into(), "site/scl3".into()]
}

fn ms(at: SystemTime) -> i64 {
    vantage::fleet::query::unix_ms(at)
}

/// The figures both dialects must give for [`scenario`].
fn check(view: &FleetView, now: SystemTime, dialect: &str) {
    let sites: Vec<&str> = view.rows.iter().map(|r| r.site.as_str()).collect();
    assert_eq!(sites, ["iad1", "scl3", "sjc1"], "{dialect}: {view:#?}");
    let row = |site: &str| view.rows.iter().find(|r| r.site == site).expect("row");
    let (iad1, scl3, sjc1) = (row("iad1"), row("scl3"), row("sjc1"));
    assert!(view.rows.iter().all(|r| r.target == "aws-gw"));
    assert_eq!(
        (scl3.sent, scl3.received, scl3.rounds, scl3.failed_rounds),
        (600, 250, 60, 10),
        "{dialect}"
    );
    assert_eq!(scl3.loss_pct().map(f64::round), Some(58.0), "{dialect}");
    assert_eq!(
        (sjc1.sent, sjc1.received, sjc1.failed_rounds),
        (600, 600, 0),
        "{dialect}"
    );
    assert_eq!(sjc1.median_ms, Some(20.0), "{dialect}");
    assert_eq!(scl3.median_ms, Some(10.0), "{dialect}");
    assert_eq!((sjc1.check_runs, sjc1.check_failures), (5, 2), "{dialect}");
    assert_eq!((scl3.check_runs, scl3.check_failures), (5, 0), "{dialect}");
    assert_eq!(sjc1.failures(), 2, "{dialect}");
    // iad1: nothing in the window, but its last report is there (4 minutes ago).
    assert_eq!((iad1.sent, iad1.rounds), (0, 0), "{dialect}");
    let last = iad1.last_report_ms.expect("iad1's last report");
    assert!(
        (ms(now) - last - 240_000).abs() <= 1_000,
        "{dialect}: iad1 last {last}"
    );
    let scl3_last = scl3.last_report_ms.expect("scl3's last report");
    assert!(ms(now) - scl3_last <= 2_000, "{dialect}");
    assert_eq!(
        view.site_last_report_ms.len(),
        3,
        "{dialect}: {:?}",
        view.site_last_report_ms
    );
    // The latest traces, only their own hops.
    let hops = |r: &vantage::fleet::SiteFigures| -> Vec<String> {
        r.trace
            .as_ref()
            .expect("trace")
            .hops
            .iter()
            .map(|h| h.address.clone().unwrap_or_default())
            .collect()
    };
    assert_eq!(
        hops(scl3),
        ["198.18.10.1", "198.18.20.1", "198.19.0.1"],
        "{dialect}"
    );
    assert_eq!(
        hops(sjc1),
        ["198.18.11.1", "198.18.20.1", "198.19.0.1"],
        "{dialect}"
    );
    assert_eq!(
        hops(iad1),
        ["198.18.12.1", "198.18.22.1", "198.19.0.1"],
        "{dialect}"
    );
    assert_eq!(
        scl3.trace.as_ref().expect("trace").hops[2].loss_pct,
        Some(50.0),
        "{dialect}"
    );
}

fn fleet(dialect: FleetDialect, url: &str, output: &str, timeout: Duration) -> FleetConfig {
    FleetConfig {
        output: output.into(),
        dialect,
        query_url: url.into(),
        timeout,
        is_a_site: true,
    }
}

fn v1_output(url: &str, user: &str, password_file: &std::path::Path) -> OutputConfig {
    let mut output = output_base(url);
    output.kind = OutputKind::InfluxdbV1 {
        db: "vantage".into(),
        rp: None,
        username: Some(user.into()),
        password: Some(SecretSource::File(password_file.into())),
    };
    output
}

fn output_base(url: &str) -> OutputConfig {
    OutputConfig {
        name: "central".into(),
        url: url.into(),
        kind: OutputKind::InfluxdbV2 {
            org: "netops".into(),
            bucket: "vantage".into(),
            token: None,
        },
        gzip: false,
        batch_size: 5000,
        flush_interval: Duration::from_secs(1),
        spool_max_bytes: 1 << 20,
        timeout: Duration::from_secs(5),
        retry_initial: Duration::from_secs(1),
        retry_max: Duration::from_secs(1),
        auth_retry: Duration::from_secs(1),
    }
}

async fn write(url: reqwest::Url, auth: Option<(&str, &str)>, lines: &[String]) {
    let mut request = http().post(url).body(lines.join("\n"));
    if let Some((user, password)) = auth {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.expect("write");
    assert!(
        response.status().is_success(),
        "write: {:?}",
        response.text().await
    );
}

#[tokio::test]
async fn influxql_gives_every_sites_figures_from_influxdb_1x() {
    support::init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let (user, password) = ("admin", "fleet-s3cret");
    let influx = Influxd::start(dir.path(), user, password).await;
    influx.query("", "CREATE DATABASE vantage").await;
    let now = SystemTime::now();
    let (mut lines, request) = scenario(now);
    lines.extend(incident_lines(now));
    write(
        with_query(
            &format!("{}/write", influx.url),
            &[("db", "vantage"), ("precision", "ns")],
        ),
        Some((user, password)),
        &lines,
    )
    .await;
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, password).expect("password file");
    let output = v1_output(&influx.url, user, &password_file);
    let store = FleetStore::new(
        &fleet(
            FleetDialect::Influxql,
            &influx.url,
            "central",
            Duration::from_secs(3),
        ),
        &output,
    )
    .expect("store");
    let view = store.query(&request).await.expect("fleet view");
    check(&view, now, "InfluxQL");
    let (view, incidents) = store
        .query_with_incidents(&request, &fleet_keys())
        .await
        .expect("fleet view and incidents");
    check(&view, now, "InfluxQL");
    check_incidents(&incidents, now, true);

    // Wrong password: a reason naming the store's answer, never the secret.
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, "not-the-pass").expect("password file");
    let wrong = v1_output(&influx.url, user, &wrong_file);
    let store_wrong = FleetStore::new(
        &fleet(
            FleetDialect::Influxql,
            &influx.url,
            "central",
            Duration::from_secs(3),
        ),
        &wrong,
    )
    .expect("store");
    let error = store_wrong
        .query(&request)
        .await
        .expect_err("unauthorized")
        .to_string();
    assert!(error.contains("401"), "{error}");
    assert!(!error.contains("not-the-pass"), "{error}");
}

#[tokio::test]
async fn promql_gives_every_sites_figures_from_victoriametrics() {
    support::init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = VictoriaMetrics::start(dir.path()).await;
    let now = SystemTime::now();
    let (mut lines, request) = scenario(now);
    lines.extend(incident_lines(now));
    write(
        with_query(
            &format!("{}/api/v2/write", vm.url),
            &[
                ("org", "netops"),
                ("bucket", "vantage"),
                ("precision", "ns"),
            ],
        ),
        None,
        &lines,
    )
    .await;
    http()
        .get(format!("{}/internal/force_flush", vm.url))
        .send()
        .await
        .expect("flush");
    let store = FleetStore::new(
        &fleet(
            FleetDialect::Promql,
            &vm.url,
            "central",
            Duration::from_secs(3),
        ),
        &output_base(&vm.url),
    )
    .expect("store");
    // VictoriaMetrics makes new series searchable within a second or so.
    let deadline = Instant::now() + Duration::from_secs(15);
    let view = loop {
        let view = store.query(&request).await.expect("fleet view");
        // Every series of the scenario: the rows, their traces and each site's self-metrics
        // (CI once saw the view before sjc1's and scl3's `agent` series were searchable).
        let complete = view.rows.len() == 3
            && view.rows.iter().all(|r| r.trace.is_some())
            && view.site_last_report_ms.len() == 3;
        if complete || Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    check(&view, now, "PromQL");
    let deadline = Instant::now() + Duration::from_secs(15);
    let incidents = loop {
        let (_, incidents) = store
            .query_with_incidents(&request, &fleet_keys())
            .await
            .expect("fleet view and incidents");
        let complete = incidents.len() == 1 && incidents[0].sites_seeing == Some(3);
        if complete || Instant::now() > deadline {
            break incidents;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    check_incidents(&incidents, now, false);
}

#[tokio::test]
async fn a_store_that_is_down_or_slow_is_a_reason_within_the_budget() {
    let store_at = |dialect, url: &str, budget| {
        FleetStore::new(&fleet(dialect, url, "central", budget), &output_base(url)).expect("store")
    };
    // Down: nothing listens.
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let request = FleetRequest {
        targets: vec!["aws-gw".into()],
        from: SystemTime::now() - Duration::from_secs(60),
        until: SystemTime::now(),
    };
    for dialect in [FleetDialect::Influxql, FleetDialect::Promql] {
        let store = store_at(dialect, &url, Duration::from_secs(2));
        let error = store.query(&request).await.expect_err("down").to_string();
        assert!(error.contains(&url) && error.contains("onnect"), "{error}");
        // The endpoint is named once; the query (the URL's query string) is not repeated.
        assert!(
            !error.contains("SELECT") && !error.contains("query="),
            "{error}"
        );
    }

    // Slow: accepts, never answers → the budget, not the store, ends the wait.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let store = store_at(FleetDialect::Influxql, &url, Duration::from_millis(800));
    let started = Instant::now();
    let error = store.query(&request).await.expect_err("slow").to_string();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        error.contains("did not answer within 800ms") || error.contains("timed out"),
        "{error}"
    );
    drop(listener);

    // Not JSON, and a body without end: reasons, bounded.
    let server = support::ScriptedEndpoint::start(std::sync::Arc::new(
        |n, _r: &support::Received| match n {
            0 => (200, vec![], "<html>proxy login</html>".to_string()),
            _ => (200, vec![], "x".repeat(5 << 20)),
        },
    ))
    .await;
    let store = store_at(FleetDialect::Influxql, &server.url, Duration::from_secs(3));
    let error = store.query(&request).await.expect_err("html").to_string();
    assert!(error.contains("not the JSON expected"), "{error}");
    let error = store.query(&request).await.expect_err("huge").to_string();
    assert!(error.contains("larger than 4 MiB"), "{error}");

    // A body that breaks off (headers promise 1,000 bytes, 10 come, the connection closes) is
    // told as such, with its cause — not as an answer too large.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"results\"")
                .await;
            let _ = socket.shutdown().await;
        }
    });
    let store = store_at(FleetDialect::Influxql, &url, Duration::from_secs(3));
    let error = store.query(&request).await.expect_err("broken").to_string();
    assert!(
        error.contains("the answer broke off after 10 bytes: ") && !error.contains("larger than"),
        "{error}"
    );
    server.abort();
}
