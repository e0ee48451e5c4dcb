//! `[[output]]` end to end: `vantage check` reaches the configured VictoriaMetrics, and every round
//! `vantage run` stores in SQLite also arrives there, once, with its original timestamp.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::VictoriaMetrics;

const VANTAGE: &str = env!("CARGO_BIN_EXE_vantage");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_round_reaches_the_configured_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = VictoriaMetrics::start(&dir.path().join("vm")).await;
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
name = "out-agent"
site = "lab"
data_dir = "{data}"

[[target]]
name = "lo-v4"
host = "127.0.0.1"

[[target]]
name = "lo-v6"
host = "::1"

[[probe]]
name = "ping"
kind = "icmp"
interval = "1s"
count = 3
spacing = "100ms"
timeout = "300ms"

[[output]]
name = "vm"
kind = "influxdb_v2"
url = "{url}"
org = "lab"
bucket = "vantage"
flush_interval = "200ms"
"#,
            data = dir.path().join("data").display(),
            url = vm.url,
        ),
    )
    .expect("config");

    let check = Command::new(VANTAGE)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("check");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(said.contains("output \"vm\": ok"), "{said}");

    let agent = Command::new(VANTAGE)
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    support::terminate(&agent);
    let output = agent.wait_with_output().expect("agent exit");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");

    // What the embedded store holds: round start times (ns) per target.
    let db = rusqlite::Connection::open(dir.path().join("data/vantage.db")).expect("store");
    let mut stored: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut query = db
        .prepare(
            "SELECT target, ts_ns FROM ping UNION ALL SELECT target, ts_ns FROM observations
             ORDER BY ts_ns",
        )
        .expect("query");
    let rows = query
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .expect("rows");
    for row in rows {
        let (target, ts) = row.expect("row");
        stored.entry(target).or_default().push(ts / 1_000_000); // VictoriaMetrics keeps ms
    }
    assert!(stored.values().all(|t| t.len() >= 3), "{stored:?}");

    // What VictoriaMetrics holds: `ping` field `sent` becomes the series `ping_sent`. Points written
    // in the last moment before the export may take VictoriaMetrics a second to make searchable.
    let mut delivered: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for _ in 0..20 {
        delivered.clear();
        for (labels, timestamps) in vm.export(r#"{__name__="ping_sent"}"#).await {
            let target = labels["target"].as_str().expect("target label").to_string();
            assert_eq!(labels["agent"], "out-agent");
            assert_eq!(labels["site"], "lab");
            delivered.entry(target).or_default().extend(timestamps);
        }
        for timestamps in delivered.values_mut() {
            timestamps.sort_unstable();
        }
        if delivered == stored {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        delivered, stored,
        "every stored round delivered exactly once, same timestamps; agent log:\n{log}"
    );
}
