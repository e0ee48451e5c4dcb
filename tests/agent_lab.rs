//! `vantage run` inside the routed lab: the agent in the agent namespace probes a healthy target, a
//! target behind a lossy router and an address nobody answers; every round lands in SQLite and
//! `vantage report` shows them. A dead target is a recorded failure, never a stopped agent.

use std::process::{Command, Stdio};
use std::time::Duration;

use lab::{Lab, Router, addr};

const VANTAGE: &str = env!("CARGO_BIN_EXE_vantage");

#[test]
fn agent_in_the_lab_stores_what_report_shows() {
    let lab = Lab::routed();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("lab.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
name = "lab-agent"
site = "lab"
data_dir = "{data}"

[[target]]
name = "r1"
host = "{r1}"
site = "lab"

[[target]]
name = "far"
host = "{far}"
site = "remote"

[[target]]
name = "nobody"
host = "{nobody}"
site = "remote"

[[probe]]
name = "ping"
kind = "icmp"
interval = "2s"
count = 10
spacing = "100ms"
timeout = "500ms"
"#,
            data = dir.path().join("data").display(),
            r1 = addr::R1_AGENT_SIDE,
            far = addr::TARGET,
            nobody = addr::NOBODY,
        ),
    )
    .expect("write config");
    // Both directions to `far` cross r2: expected loss 1 - 0.8² = 36%.
    lab.inject_loss(Router::R2, 20);

    let agent = lab
        .agent()
        .command(VANTAGE)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent in the lab");
    std::thread::sleep(Duration::from_millis(9_500));
    let term = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .expect("SIGTERM");
    assert!(term.success());
    let output = agent.wait_with_output().expect("agent exit");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the agent must survive a dead target: {log}"
    );

    let db = rusqlite::Connection::open(dir.path().join("data/vantage.db")).expect("store");
    let totals = |target: &str| -> (i64, i64, i64) {
        db.query_row(
            "SELECT COUNT(*), SUM(sent), SUM(received) FROM ping WHERE target = ?1",
            [target],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("query")
    };
    let (rounds, sent, received) = totals("r1");
    assert!(rounds >= 4, "r1: {rounds} rounds in 9.5 s at 2 s");
    assert_eq!(sent, received, "r1 is one clean hop away");

    let (rounds, sent, received) = totals("far");
    assert!(
        rounds >= 4 && sent >= 40,
        "far: {rounds} rounds, {sent} echoes"
    );
    let loss = 1.0 - received as f64 / sent as f64;
    let bound = 4.0 * (0.36f64 * 0.64 / sent as f64).sqrt();
    assert!(
        (loss - 0.36).abs() <= bound,
        "far: measured loss {loss:.3}, expected 0.36 ± {bound:.3}"
    );

    let (rounds, _, received) = totals("nobody");
    assert!(rounds >= 4, "nobody: {rounds} rounds");
    assert_eq!(received, 0);
    let failures: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM ping WHERE target = 'nobody' AND success = 0
             AND failure_kind IN ('timeout', 'unreachable')",
            [],
            |r| r.get(0),
        )
        .expect("query");
    // Silence is a timeout; once r2's neighbour discovery gives up, r2 says "host unreachable".
    assert_eq!(failures, rounds, "every silent round is a recorded failure");

    let report = Command::new(VANTAGE)
        .args(["report", "--config"])
        .arg(&config)
        .output()
        .expect("report");
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let text = String::from_utf8_lossy(&report.stdout);
    let row = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in:\n{text}"))
            .to_string()
    };
    assert!(row("r1").contains(" 0.0% "), "{text}");
    let nobody = row("nobody");
    assert!(
        nobody.contains("100.0%")
            && (nobody.contains("no reply") || nobody.contains("unreachable")),
        "{nobody}"
    );
    assert!(row("far").contains("remote"), "{text}");
}
