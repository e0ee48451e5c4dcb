//! Incidents end to end, on loopback inside a network namespace this test creates: the agent pings
//! 127.0.0.1, 127.0.0.2 and 127.0.0.3, and an nftables rule in the namespace drops the echo
//! requests to 127.0.0.3, so that target never answers. The agent must open exactly one incident
//! (for that target: not one for the agent, whose other targets answer), keep it — not re-open it,
//! not deliver it again — across a restart, and resolve it when the rule is removed.
//!
//! A second test cuts every echo ("our own uplink"): one agent-side incident, not one per target.
//! A third (no namespace) lists a store with a row this build cannot read.
//!
//! Needs root (network namespaces) and nftables (`apt-get install nftables`); without them it
//! fails, it never skips. The namespace and the agent are removed by Drop guards, also on panic.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vantage::incident::{IncidentDb, Status};

mod support;

use support::{Agent, VANTAGE};

/// A network namespace with only `lo` up, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "vt-incidents-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let added = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("`ip` (iproute2) must be installed: apt-get install iproute2");
        assert!(
            added.status.success(),
            "cannot create a network namespace (this test needs root): {}",
            String::from_utf8_lossy(&added.stderr)
        );
        let netns = Netns(name);
        netns.exec(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    fn exec(&self, command: &[&str]) {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(command)
            .output()
            .unwrap_or_else(|e| panic!("{command:?}: {e}"));
        assert!(
            output.status.success(),
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Drop echo requests to `address` as they arrive, so it never answers (a timeout, as a dead
    /// host looks, rather than a local send error).
    fn blackhole(&self, address: &str) {
        self.drop_matching(&format!("ip daddr {address} icmp type echo-request"));
    }

    /// Drop every echo request: as if the agent's own uplink were cut.
    fn cut_uplink(&self) {
        self.drop_matching("icmp type echo-request");
    }

    fn drop_matching(&self, matching: &str) {
        let rules = format!(
            "table inet vantage_test {{\n chain input {{\n  type filter hook input priority 0;\n  {matching} drop\n }}\n}}\n"
        );
        let path = std::env::temp_dir().join(format!("{}.nft", self.0));
        std::fs::write(&path, rules).expect("write nft rules");
        let nft = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-f"])
            .arg(&path)
            .output()
            .expect("run nft");
        let _ = std::fs::remove_file(&path);
        assert!(
            nft.status.success(),
            "nft failed (is nftables installed? apt-get install nftables): {}",
            String::from_utf8_lossy(&nft.stderr)
        );
    }

    fn restore(&self) {
        self.exec(&["nft", "delete", "table", "inet", "vantage_test"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn wait_for<T>(
    what: &str,
    limit: Duration,
    agent: &Agent,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
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

fn events(data: &Path, id: &str) -> Vec<String> {
    std::fs::read_to_string(data.join("incidents").join(id).join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("an event line");
            value["idempotency_key"]
                .as_str()
                .expect("idempotency_key")
                .to_string()
        })
        .collect()
}

fn vantage(args: &[&str]) -> Output {
    Command::new(VANTAGE)
        .args(args)
        .output()
        .expect("run vantage")
}

#[test]
fn one_incident_for_a_dead_target_survives_a_restart_and_resolves() {
    let netns = Netns::new();
    netns.blackhole("127.0.0.3");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[agent]
name = "e2e"
site = "lab"
data_dir = "{}"

[incidents]
status_updates = "30m"
history = "5m"

[[target]]
name = "lo-1"
host = "127.0.0.1"
site = "local"

[[target]]
name = "lo-2"
host = "127.0.0.2"
site = "local"

[[target]]
name = "dead"
host = "127.0.0.3"
site = "local"

[[probe]]
name = "ping"
kind = "icmp"
interval = "1s"
timeout = "300ms"
count = 5
spacing = "100ms"

[[rule]]
name = "loss"
kind = "loss"
above_pct = 20
echoes = 10
for = "2s"
clear_for = "3s"
min_hold = "3s"

[[rule]]
name = "uplink"
kind = "loss"
severity = "critical"
scope = "agent"
above_pct = 20
echoes = 10
for = "1s"
clear_for = "3s"
min_hold = "3s"
"#,
            data.display()
        ),
    )
    .expect("write config");

    // 1. The dead target opens one incident.
    let agent = Agent::start(
        &["ip", "netns", "exec", &netns.0],
        &config,
        dir.path().join("agent-1.log"),
    );
    let open = wait_for(
        "an incident to open",
        Duration::from_secs(30),
        &agent,
        || {
            let db = IncidentDb::open(&data).ok()?;
            let incidents = db.all().ok()?;
            incidents.into_iter().next()
        },
    );
    let id = open.id.clone();
    assert_eq!(open.key, "loss/target/dead");
    assert_eq!(open.status, Status::Open);
    assert_eq!(
        open.title,
        format!("{} [lab] 100% packet loss to dead", open.detected_at.date())
    );
    wait_for(
        "the draft to be delivered",
        Duration::from_secs(10),
        &agent,
        || (events(&data, &id) == [format!("{id}/opened")]).then_some(()),
    );
    let folder = data.join("incidents").join(&id);
    for file in ["incident.md", "incident.json", "chart.svg", "evidence.json"] {
        assert!(
            folder.join(file).is_file(),
            "{file} in {}",
            folder.display()
        );
    }
    // Let it run on: still one incident, nothing new for it.
    std::thread::sleep(Duration::from_secs(3));
    let first_log = agent.stop();
    assert!(first_log.contains("incident opened"), "{first_log}");

    // 2. Restart while it is open: resumed, not re-opened, not delivered again.
    let agent = Agent::start(
        &["ip", "netns", "exec", &netns.0],
        &config,
        dir.path().join("agent-2.log"),
    );
    wait_for(
        "the restarted agent to resume the incident",
        Duration::from_secs(10),
        &agent,
        || agent.log().contains("resumed").then_some(()),
    );
    std::thread::sleep(Duration::from_secs(6));
    {
        let db = IncidentDb::open(&data).expect("incidents.db");
        let all = db.all().expect("incidents");
        assert_eq!(all.len(), 1, "one incident after the restart: {all:#?}");
        assert_eq!(all[0].status, Status::Open);
        assert_eq!(db.events(&id).expect("events"), [format!("{id}/opened")]);
    }
    assert_eq!(events(&data, &id), [format!("{id}/opened")]);

    // 3. The target comes back: resolved, once.
    netns.restore();
    wait_for(
        "the incident to resolve",
        Duration::from_secs(30),
        &agent,
        || {
            let db = IncidentDb::open(&data).ok()?;
            let incident = db.get(&id).ok()??;
            (incident.status == Status::Resolved).then_some(())
        },
    );
    wait_for(
        "the resolution to be delivered",
        Duration::from_secs(10),
        &agent,
        || (events(&data, &id).len() == 2).then_some(()),
    );
    let second_log = agent.stop();
    assert!(!second_log.contains("incident opened"), "{second_log}");

    let db = IncidentDb::open(&data).expect("incidents.db");
    let all = db.all().expect("incidents");
    assert_eq!(all.len(), 1, "exactly one incident in all: {all:#?}");
    let resolved = &all[0];
    assert_eq!(resolved.status, Status::Resolved);
    assert!(resolved.duration_s.is_some_and(|s| s >= 3), "{resolved:#?}");
    assert_eq!(resolved.peak.value, Some(100.0));
    assert_eq!(
        events(&data, &id),
        [format!("{id}/opened"), format!("{id}/resolved")]
    );
    let deliveries = db.deliveries(Some(&id)).expect("deliveries");
    assert_eq!(deliveries.len(), 2, "{deliveries:#?}");
    for delivery in &deliveries {
        assert_eq!(delivery.sink, "directory");
        assert!(delivery.delivered, "{delivery:?}");
        assert_eq!(delivery.attempts, 1, "delivered exactly once: {delivery:?}");
    }

    // The draft reads as a status document: the evidence is there, with the healthy contrast.
    let md = std::fs::read_to_string(folder.join("incident.md")).expect("incident.md");
    for needle in [
        "| **Status** | DRAFT — resolved |",
        "| **Incident coordinator** | unassigned |",
        "## Impact",
        "100% packet loss on 1 of 1 targets: dead",
        "## Scope and localization",
        "All 2 other targets measured from this agent are healthy",
        "### Failing results",
        "| dead | ping | 127.0.0.3 | timeout |",
        "| lo-1 | local | ping | healthy | 0% |",
        "## Timeline (UTC)",
        "## Engage",
        "## Resolution",
        "Peak impact: 100% packet loss on 1 of 1 targets.",
    ] {
        assert!(md.contains(needle), "{needle:?} not in incident.md:\n{md}");
    }

    // The CLI shows it.
    let data_arg = data.to_str().expect("utf-8 path");
    let list = vantage(&["incidents", "list", "--data-dir", data_arg]);
    let list_text = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert_eq!(list_text.lines().count(), 2, "{list_text}");
    assert!(
        list_text.contains(&id) && list_text.contains("resolved"),
        "{list_text}"
    );
    let show = vantage(&["incidents", "show", &id, "--data-dir", data_arg]);
    assert!(show.status.success());
    assert_eq!(String::from_utf8_lossy(&show.stdout), md);
    let said = String::from_utf8_lossy(&show.stderr);
    assert!(
        said.contains("(sink directory: 2 of 2 events delivered)"),
        "where the events went, on stderr: {said}"
    );
    let missing = vantage(&["incidents", "show", "19700101-999", "--data-dir", data_arg]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn every_target_failing_is_one_agent_side_incident() {
    let netns = Netns::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("vantage.toml");
    let mut text = format!(
        "[agent]\nname = \"e2e\"\nsite = \"lab\"\ndata_dir = \"{}\"\n\n",
        data.display()
    );
    for i in 1..=4 {
        text.push_str(&format!(
            "[[target]]\nname = \"lo-{i}\"\nhost = \"127.0.0.{i}\"\nsite = \"local\"\n\n"
        ));
    }
    // The agent rule's `for` is shorter than the target rule's by more than one interval (1 s).
    text.push_str(
        r#"
[[probe]]
name = "ping"
kind = "icmp"
interval = "1s"
timeout = "300ms"
count = 5
spacing = "100ms"

[[rule]]
name = "loss"
kind = "loss"
above_pct = 20
echoes = 10
for = "4s"
clear_for = "3s"
min_hold = "3s"

[[rule]]
name = "uplink"
kind = "loss"
severity = "critical"
scope = "agent"
above_pct = 20
echoes = 10
for = "1s"
clear_for = "3s"
min_hold = "3s"
"#,
    );
    std::fs::write(&config, text).expect("write config");

    let agent = Agent::start(
        &["ip", "netns", "exec", &netns.0],
        &config,
        dir.path().join("agent.log"),
    );
    // Healthy first, then the uplink is cut.
    std::thread::sleep(Duration::from_secs(3));
    netns.cut_uplink();
    let open = wait_for(
        "the agent-side incident",
        Duration::from_secs(30),
        &agent,
        || {
            let db = IncidentDb::open(&data).ok()?;
            db.all().ok()?.into_iter().next()
        },
    );
    assert_eq!(open.key, "uplink/agent/agent");
    assert_eq!(open.severity, "critical");
    // The loss figure is the window's at detection: 100% once the window holds only echoes sent
    // after the cut, less when a round straddled it (a loaded machine detects that early).
    let prefix = format!("{} [lab] ", open.detected_at.date());
    let symptom = open
        .title
        .strip_prefix(&prefix)
        .and_then(|t| t.strip_suffix("% packet loss from this agent (agent-side: 4 of 4 targets)"))
        .and_then(|pct| pct.parse::<f64>().ok());
    assert!(
        symptom.is_some_and(|pct| pct > 20.0 && pct <= 100.0),
        "{}",
        open.title
    );
    // Long past the target rule's `for`: still only the one incident.
    std::thread::sleep(Duration::from_secs(8));
    netns.restore();
    wait_for(
        "the agent-side incident to resolve",
        Duration::from_secs(30),
        &agent,
        || {
            let db = IncidentDb::open(&data).ok()?;
            let incident = db.get(&open.id).ok()??;
            (incident.status == Status::Resolved).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let log = agent.stop();
    let db = IncidentDb::open(&data).expect("incidents.db");
    let all = db.all().expect("incidents");
    let keys: Vec<&str> = all.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        ["uplink/agent/agent"],
        "one incident, not one per target:\n{log}"
    );
    let md = std::fs::read_to_string(data.join("incidents").join(&open.id).join("incident.md"))
        .expect("incident.md");
    assert!(
        md.contains("the fault is most likely on the agent's side"),
        "{md}"
    );
}

#[test]
fn the_list_shows_every_incident_it_can_read_and_names_the_ones_it_cannot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/examples/incident.json"
    ))
    .expect("the example draft");
    let example: vantage::incident::Incident = serde_json::from_str(&example).expect("parse");
    let mut db = IncidentDb::open(dir.path()).expect("db");
    for (id, key) in [
        ("20261121-001", "a"),
        ("20261121-002", "b"),
        ("20261121-003", "c"),
        ("20261121-004", "d"),
    ] {
        let incident = vantage::incident::Incident {
            id: id.into(),
            key: key.into(),
            ..example.clone()
        };
        db.save(&incident, None, None).expect("save");
    }
    // Rows this build cannot read: one as a newer version might leave it, one damaged (bytes
    // that are not UTF-8 text).
    let sqlite = rusqlite::Connection::open(dir.path().join("incidents.db")).expect("sqlite");
    sqlite
        .execute(
            "UPDATE incidents SET data = '{\"from\": \"the future\"}' WHERE id = '20261121-002'",
            [],
        )
        .expect("a row from the future");
    sqlite
        .execute(
            "UPDATE incidents SET data = X'FF00FE' WHERE id = '20261121-004'",
            [],
        )
        .expect("a damaged row");

    let data_arg = dir.path().to_str().expect("utf-8 path");
    let list = vantage(&["incidents", "list", "--data-dir", data_arg]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&list.stdout),
        String::from_utf8_lossy(&list.stderr),
    );
    assert_eq!(list.status.code(), Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "a header and four incidents:\n{stdout}");
    assert!(lines[1].starts_with("20261121-004") && lines[1].contains('?'));
    assert!(lines[2].starts_with("20261121-003") && lines[2].contains(&example.title));
    assert!(lines[3].starts_with("20261121-002") && lines[3].contains('?'));
    assert!(lines[4].starts_with("20261121-001") && lines[4].contains(&example.title));
    assert!(
        stderr.contains("2 of 4 incidents") && stderr.contains("cannot read incident 20261121-004"),
        "{stderr}"
    );
}
