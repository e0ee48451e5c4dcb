//! Incident events reach the outputs: `vantage run` with a TCP check of a loopback port that is
//! closed (connection refused → a `failures` rule opens an incident) and then opens (→ resolved)
//! writes `incident` points to a real InfluxDB 1.x, with the tags and fields of the README schema.

mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Influxd;

const VANTAGE: &str = env!("CARGO_BIN_EXE_vantage");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_events_become_incident_points_in_influxdb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = Influxd::start(&dir.path().join("influx"), "admin", "s3cret").await;
    influx.query("", "CREATE DATABASE vantage").await;
    let password = dir.path().join("influx.password");
    std::fs::write(&password, "s3cret\n").expect("password file");
    let port = support::free_port(); // closed until the "service" comes back below
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
name = "inc-agent"
site = "lab"
data_dir = "{data}"

[[target]]
name = "svc"
host = "127.0.0.1"

[[probe]]
name = "svc-tcp"
kind = "tcp"
port = {port}
interval = "500ms"
timeout = "300ms"

[[rule]]
name = "svc-down"
kind = "failures"
severity = "critical"
failures = 3
runs = 3
for = "1s"
clear_for = "1s"
min_hold = "2s"

[[output]]
name = "influx"
kind = "influxdb_v1"
url = "{url}"
db = "vantage"
username = "admin"
password_file = "{password}"
flush_interval = "200ms"
"#,
            data = dir.path().join("data").display(),
            url = influx.url,
            password = password.display(),
        ),
    )
    .expect("config");

    let agent = Command::new(VANTAGE)
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    let opened = wait_for_events(&influx, &["opened"]).await;
    // The service comes back: the incident resolves and says so in the output too.
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("listen on the checked port");
    let all = wait_for_events(&influx, &["opened", "resolved"]).await;
    drop(listener);
    support::terminate(&agent);
    let output = agent.wait_with_output().expect("agent exit");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");

    assert_eq!(opened.len(), 1, "{opened:#?}");
    let columns = |row: &serde_json::Value, name: &str| row[name].clone();
    for (row, event, state) in [
        (&all[0], "opened", "open"),
        (&all[1], "resolved", "resolved"),
    ] {
        assert_eq!(columns(row, "event"), event, "{row}");
        assert_eq!(columns(row, "state"), state, "{row}");
        assert_eq!(columns(row, "agent"), "inc-agent");
        assert_eq!(columns(row, "site"), "lab");
        assert_eq!(columns(row, "rule"), "svc-down");
        assert_eq!(columns(row, "severity"), "critical");
        assert_eq!(columns(row, "scope"), "target");
        assert_eq!(columns(row, "subject"), "svc");
        assert_eq!(columns(row, "targets"), "svc");
        assert_eq!(columns(row, "total_targets"), 1);
        assert_eq!(columns(row, "id"), all[0]["id"]);
        let title = columns(row, "title");
        assert!(
            title
                .as_str()
                .is_some_and(|t| t.contains("[lab] failing checks") && t.ends_with("to svc")),
            "{row}"
        );
    }
    assert_eq!(columns(&all[0], "affected"), 1);
    assert!(columns(&all[0], "duration_s").is_null(), "{}", all[0]);
    assert!(
        columns(&all[1], "duration_s")
            .as_i64()
            .is_some_and(|d| d >= 2),
        "{}",
        all[1]
    );
    assert!(
        columns(&all[0], "summary")
            .as_str()
            .is_some_and(|s| s.starts_with("Draft opened by agent inc-agent (lab)")),
        "{}",
        all[0]
    );
    // The point's time is the event's: the draft's detection time.
    let draft: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            dir.path()
                .join("data/incidents")
                .join(all[0]["id"].as_str().expect("id"))
                .join("incident.json"),
        )
        .expect("incident.json"),
    )
    .expect("draft json");
    let detected = humantime::parse_rfc3339(draft["detected_at"].as_str().expect("detected_at"))
        .expect("rfc3339");
    let detected_ns = detected
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_nanos();
    assert_eq!(all[0]["time"].as_u64().map(u128::from), Some(detected_ns));
}

/// The `incident` rows in InfluxDB (time order, as objects by column), once their events are
/// exactly `events`.
async fn wait_for_events(influx: &Influxd, events: &[&str]) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let answer = influx
            .query("vantage", "SELECT * FROM incident ORDER BY time")
            .await;
        let rows = rows(&answer);
        let seen: Vec<&str> = rows.iter().filter_map(|r| r["event"].as_str()).collect();
        if seen == events {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "incident events {seen:?}, waiting for {events:?}: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn rows(answer: &serde_json::Value) -> Vec<serde_json::Value> {
    let Some(series) = answer["results"][0]["series"][0].as_object() else {
        return Vec::new();
    };
    let columns: Vec<&str> = series["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    series["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|values| {
            columns
                .iter()
                .zip(values.as_array().expect("row"))
                .map(|(c, v)| (c.to_string(), v.clone()))
                .collect::<serde_json::Map<_, _>>()
                .into()
        })
        .collect()
}
