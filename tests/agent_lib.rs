//! The agent as a library, in-process: `Agent::start` a configuration on loopback, watch it with
//! `snapshot`, `stop` it, and find everything it measured stored and the incident it opened
//! drafted; and an agent whose incident state cannot be opened refuses to start.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use vantage::agent::{Agent, Snapshot};
use vantage::config::Config;

/// A configuration with a TCP check of `open_port` (accepting) and of `closed_port` (refused),
/// and a `failures` rule on the refused one.
fn write_config(dir: &Path, open_port: u16, closed_port: u16) -> Config {
    let path = dir.join("vantage.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[agent]
name = "lib-agent"
site = "local"
data_dir = "{data}"

[[target]]
name = "up"
host = "127.0.0.1"
site = "local"

[[target]]
name = "down"
host = "127.0.0.1"
site = "local"

[[probe]]
name = "open-port"
kind = "tcp"
interval = "1s"
timeout = "500ms"
port = {open_port}
targets = ["up"]

[[probe]]
name = "closed-port"
kind = "tcp"
interval = "1s"
timeout = "500ms"
port = {closed_port}
targets = ["down"]

[[rule]]
name = "down-refuses"
kind = "failures"
probes = ["closed-port"]
failures = 2
runs = 3
for = "1s"
clear_for = "2s"
min_hold = "2s"
"#,
            data = dir.join("data").display(),
        ),
    )
    .expect("write the config");
    Config::load(&path).unwrap_or_else(|errors| panic!("{errors}"))
}

/// Poll `ready` on the agent's snapshot for up to 30 s.
async fn wait_for(
    agent: &Agent,
    what: &str,
    ready: impl Fn(&Snapshot, &Path) -> bool,
    data: &Path,
) {
    let start = Instant::now();
    loop {
        let snapshot = agent.snapshot();
        if ready(&snapshot, data) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}; last snapshot: {snapshot:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Folders of the directory sink that hold an `opened` event.
fn opened_drafts(data: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(data.join("incidents")) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_to_string(e.path().join("events.jsonl"))
                .is_ok_and(|events| events.contains("/opened"))
        })
        .count()
}

fn stored_rows(data: &Path) -> u64 {
    let db = rusqlite::Connection::open(data.join("vantage.db")).expect("open the store");
    db.query_row(
        "SELECT (SELECT COUNT(*) FROM observations) + (SELECT COUNT(*) FROM ping_rounds)",
        [],
        |row| row.get(0),
    )
    .expect("count observations")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_in_process_measures_evaluates_and_drains_on_stop() {
    let open = TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        open.local_addr().expect("addr").port(),
        closed_port,
    );
    let data = dir.path().join("data");

    let agent = Agent::start(config).await.expect("the agent starts");
    assert_eq!(agent.snapshot().jobs, 2);
    wait_for(
        &agent,
        "runs of both checks, and the draft of the refused one",
        |s, data| s.observations >= 4 && s.failures >= 2 && opened_drafts(data) == 1,
        &data,
    )
    .await;
    let running = agent.snapshot();
    assert!(running.stored > 0 && running.evaluated > 0, "{running:#?}");
    assert_eq!(running.rules_dropped, 0, "{running:#?}");
    assert!(
        running.failures < running.observations,
        "the open port succeeds: {running:#?}"
    );

    let summary = agent.stop().await.expect("a clean stop");
    assert!(summary.observations >= running.observations, "{summary:#?}");
    assert_eq!(
        summary.stored, summary.observations,
        "everything measured is stored: {summary:#?}"
    );
    assert_eq!(stored_rows(&data), summary.stored);
    assert_eq!(summary.rules_dropped, 0);
    assert!(summary.outputs.is_empty(), "no outputs configured");
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_its_incident_state_does_not_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), 9, 9);
    let data = dir.path().join("data");
    // A directory where the incident state's SQLite file should be: it cannot be opened.
    std::fs::create_dir_all(data.join("incidents.db")).expect("mkdir");

    let started = Instant::now();
    let error = match Agent::start(config).await {
        Ok(agent) => {
            let snapshot = agent.snapshot();
            let _ = agent.stop().await;
            panic!("the agent started without its incident state: {snapshot:#?}");
        }
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("incident")
            && error.contains(&data.join("incidents.db").display().to_string()),
        "the error names the incident state and its file: {error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it fails at once"
    );
    assert_eq!(stored_rows(&data), 0, "nothing was probed");
}
