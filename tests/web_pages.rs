//! The web page after a real lab run (issue 14): the agent (`vantage run`) in the routed lab with
//! 30% loss at r2, an incident opened by the loss rule, a reroute around r2 (a path change), and
//! a failing HTTP check; then `vantage serve` on its data directory and headless Chromium loads
//! every page. The DOM must hold the figures `vantage report` prints for the same store (parsed
//! from its output), and the charts must be drawn (non-empty series of the expected classes).
//! Screenshots are saved; with `VANTAGE_SCREENSHOT_DIR` set they are copied there (that is how
//! `docs/screenshots/` was made). Needs root and the Debian package `chromium`; fails without.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use lab::{Lab, Router};
use support::{Agent, HttpServer, Served, dump_dom, screenshot, vantage};

fn step(what: &str) {
    eprintln!("web_pages: {what}");
}

fn wait_until(what: &str, limit: Duration, agent: &Agent, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many traces since `from_ns` took the path around r2 (agent → r1 → far).
fn rerouted_traces(data: &Path, far: &str, from_ns: i64) -> i64 {
    rusqlite::Connection::open(data.join("vantage.db"))
        .and_then(|db| {
            db.query_row(
                "SELECT COUNT(*) FROM observations WHERE measurement = 'trace' AND ts_ns > ?2
                 AND json_array_length(fields, '$.hops') = 2
                 AND json_extract(fields, '$.hops[1].addresses[0]') = ?1",
                rusqlite::params![far, from_ns],
                |r| r.get(0),
            )
        })
        .unwrap_or(0)
}

/// How many stored traces flagged a new path.
fn path_changes(data: &Path) -> usize {
    rusqlite::Connection::open(data.join("vantage.db"))
        .and_then(|db| {
            db.query_row(
                "SELECT COUNT(*) FROM observations WHERE measurement = 'trace'
                 AND json_extract(fields, '$.path_changed') = 1",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .unwrap_or(0) as usize
}

/// The `<tr ...>...</tr>` whose opening tag holds all of `attributes`.
fn row<'a>(dom: &'a str, attributes: &[&str]) -> &'a str {
    dom.match_indices("<tr ")
        .map(|(at, _)| {
            let end = dom[at..].find("</tr>").map_or(dom.len(), |e| at + e);
            &dom[at..end]
        })
        .find(|row| {
            let tag = &row[..row.find('>').unwrap_or(row.len())];
            attributes.iter().all(|a| tag.contains(a))
        })
        .unwrap_or_else(|| panic!("no row with {attributes:?} in the page:\n{dom}"))
}

/// The `points="..."` of every `<polygon>`/`<polyline>` of `class`.
fn points<'a>(svg: &'a str, class: &str) -> Vec<&'a str> {
    let marker = format!("class=\"{class}\" points=\"");
    svg.match_indices(&marker)
        .map(|(at, _)| {
            let rest = &svg[at + marker.len()..];
            &rest[..rest.find('"').unwrap_or(0)]
        })
        .collect()
}

#[test]
fn after_a_lab_run_every_page_shows_what_the_store_holds() {
    let lab = Lab::routed();
    let far = "198.19.0.7";
    let listener = lab
        .target()
        .inside(|| TcpListener::bind("198.18.2.2:0").expect("bind in the target namespace"));
    let web = HttpServer::serve(listener);
    let web_port = web.addr.port();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
name = "lab-agent"
site = "lab"
data_dir = "{data}"

[incidents]
history = "5m"

[[target]]
name = "far"
host = "{far}"
site = "remote"
labels = {{ team = "neteng" }}

[[target]]
name = "web"
host = "198.18.2.2"
site = "dc"

[[probe]]
name = "ping"
kind = "icmp"
interval = "1s"
timeout = "400ms"
count = 10
spacing = "30ms"

[[probe]]
name = "path"
kind = "trace"
interval = "2s"
timeout = "200ms"
count = 5
max_ttl = 8
targets = ["far"]

[[probe]]
name = "health"
kind = "http"
interval = "1s"
timeout = "900ms"
scheme = "http"
port = {web_port}
path = "/health"
targets = ["web"]

[[probe]]
name = "broken-page"
kind = "http"
interval = "1s"
timeout = "900ms"
scheme = "http"
port = {web_port}
path = "/nothing"
expect_status = [200]
targets = ["web"]

[[rule]]
name = "loss"
kind = "loss"
probes = ["ping"]
targets = ["far"]
above_pct = 20
echoes = 20
for = "2s"
clear_for = "5s"
min_hold = "5s"
"#,
            data = data.display()
        ),
    )
    .expect("config");
    // 30% of what r2 forwards is dropped both ways: about half the echoes to far are lost.
    lab.inject_loss(Router::R2, 30);
    let netns = ["ip", "netns", "exec", lab.agent().name()];
    let agent = Agent::start(&netns, &config, dir.path().join("agent.log"));
    let incidents = data.join("incidents");
    wait_until("an incident draft", Duration::from_secs(45), &agent, || {
        std::fs::read_dir(&incidents)
            .ok()
            .and_then(|mut entries| entries.next())
            .and_then(Result::ok)
            .is_some_and(|folder| folder.path().join("incident.md").exists())
    });
    step("reroute");
    let rerouted = probes::unix_ns(lab.reroute_around_r2());
    wait_until(
        "two traces around r2",
        Duration::from_secs(30),
        &agent,
        || rerouted_traces(&data, far, rerouted) >= 2,
    );
    step("stop");
    agent.stop();

    let data_arg = data.to_str().expect("path");
    let (code, report, stderr) = vantage(&["report", "--data-dir", data_arg]);
    assert_eq!(code, 0, "{stderr}");
    let served = Served::start(&[
        "--data-dir",
        data_arg,
        "--config",
        config.to_str().expect("path"),
    ]);

    // Overview: each ping row's loss and median, and each check's result and time, as the report
    // prints them (TARGET SITE PROBE LOSS% SNT MEDIAN ... / TARGET SITE PROBE KIND RESULT TIME).
    step("overview");
    let overview = dump_dom(&served.url("/"));
    let (pings, rest) = report
        .split_once("SERVICE CHECKS")
        .expect("checks in the report");
    let checks = rest.split("PATH TRACES").next().unwrap_or_default();
    let mut seen = 0;
    for line in pings.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        let (target, probe, loss, median) = (cells[0], cells[2], cells[3], cells[5]);
        let row = row(
            &overview,
            &[
                &format!("data-target=\"{target}\""),
                &format!("data-probe=\"{probe}\""),
            ],
        );
        assert!(
            row.contains(&format!("<td class=\"num loss\">{loss}</td>")),
            "{line}\n{row}"
        );
        assert!(
            row.contains(&format!("<td class=\"num median\">{median}</td>")),
            "{line}\n{row}"
        );
        assert!(
            points(row, "sparkline-median")
                .iter()
                .any(|p| !p.is_empty()),
            "{row}"
        );
        seen += 1;
    }
    assert_eq!(seen, 2, "both targets' ping rows:\n{report}");
    let mut failed = 0;
    for line in checks.lines().skip(2).filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        let (target, probe, result, time) = (cells[0], cells[2], cells[4], cells[5]);
        let row = row(
            &overview,
            &[
                &format!("data-target=\"{target}\""),
                &format!("data-probe=\"{probe}\""),
            ],
        );
        assert!(row.contains(&format!(">{result}</td>")), "{line}\n{row}");
        assert!(
            row.contains(&format!("<td class=\"num time\">{time}</td>")),
            "{line}\n{row}"
        );
        failed += usize::from(result == "FAILED");
    }
    assert!(failed >= 1, "the broken page fails:\n{report}");
    assert!(
        overview.contains("id=\"open-incidents\"") || overview.contains("/incidents/"),
        "{overview}"
    );
    // Problems first: far (loss) comes before web... within their sites; the failing check first.
    let checks_table = &overview[overview.find("class=\"checks\"").expect("checks table")..];
    assert!(
        checks_table.find("broken-page") < checks_table.find(">health<"),
        "the failing check first"
    );

    // Target page: four charts with smoke, median and loss; the mtr table; the path change.
    step("target far");
    let target = dump_dom(&served.url("/targets/far"));
    let charts: Vec<&str> = target.split("<figure class=\"chart\"").skip(1).collect();
    assert_eq!(charts.len(), 4, "3 h, 30 h, 10 d, 30 d:\n{target}");
    for chart in &charts {
        assert!(chart.contains("<svg"), "{chart}");
        let smoke = points(chart, "smoke-p10-p90");
        assert!(
            !smoke.is_empty() && smoke.iter().all(|p| p.split(' ').count() >= 3),
            "{chart}"
        );
        assert!(!points(chart, "smoke-p25-p75").is_empty(), "{chart}");
        assert!(chart.contains("class=\"median\""), "{chart}");
        assert!(
            chart.contains("class=\"loss\""),
            "the injected loss: {chart}"
        );
    }
    let mtr = &target[target.find("class=\"mtr\"").expect("mtr table")..];
    assert!(mtr.contains(far), "the latest trace reaches far: {mtr}");
    assert!(
        !mtr[..mtr.find("</table>").unwrap_or(mtr.len())].contains("198.18.1.2"),
        "around r2: {mtr}"
    );
    // Every change the store holds is listed (loss also changes a traced path, when the target's
    // replies are lost), up to the page's 50.
    let changes = &target[target.find("class=\"path-changes\"").expect("path changes")..];
    let changes = &changes[..changes.find("</table>").unwrap_or(changes.len())];
    let stored = path_changes(&data);
    assert!(stored >= 1, "the reroute is a path change");
    assert_eq!(
        changes.matches("<tr>").count() - 1,
        stored.min(50),
        "{changes}"
    );
    assert!(
        target.contains("class=\"incident-open\"") || target.contains("/incidents/"),
        "{target}"
    );

    step("target web");
    let web_page = dump_dom(&served.url("/targets/web"));
    assert!(
        web_page.contains("class=\"http-failed\""),
        "the broken page's runs: {web_page}"
    );
    assert!(
        web_page.contains("class=\"http-phase-processing\""),
        "stacked phases: {web_page}"
    );

    // Incidents: the list and the draft, rendered, with its chart inline and its files.
    step("incidents");
    let list = dump_dom(&served.url("/incidents"));
    let id = std::fs::read_dir(&incidents)
        .expect("drafts")
        .next()
        .expect("a draft")
        .expect("entry")
        .file_name()
        .to_string_lossy()
        .into_owned();
    assert!(
        list.contains(&format!("href=\"/incidents/{id}\"")),
        "{list}"
    );
    assert!(list.contains("packet loss to far"), "{list}");
    let draft = dump_dom(&served.url(&format!("/incidents/{id}")));
    assert!(draft.contains("<h2>Timeline (UTC)</h2>"), "{draft}");
    assert!(
        draft.contains("class=\"median\""),
        "the chart inline: {draft}"
    );
    assert!(
        draft.contains(&format!("/incidents/{id}/files/evidence.json")),
        "{draft}"
    );

    // Agent: every probe, the config summary.
    step("agent");
    let agent_page = dump_dom(&served.url("/agent"));
    for probe in ["ping", "path", "health", "broken-page"] {
        row(&agent_page, &[&format!("data-probe=\"{probe}\"")]);
    }
    assert!(agent_page.contains("team=neteng"), "{agent_page}");

    step("screenshots");
    let shots = tempfile::tempdir().expect("screenshots");
    for (name, path, height) in [
        ("overview", "/".to_string(), 900),
        ("target", "/targets/far".to_string(), 2200),
        ("incidents", "/incidents".to_string(), 500),
        ("incident", format!("/incidents/{id}"), 2400),
        ("agent", "/agent".to_string(), 1100),
    ] {
        let file = shots.path().join(format!("{name}.png"));
        screenshot(&served.url(&path), &file, 1280, height);
        if let Ok(out) = std::env::var("VANTAGE_SCREENSHOT_DIR") {
            std::fs::copy(&file, Path::new(&out).join(format!("{name}.png"))).expect("copy");
        }
    }
}
