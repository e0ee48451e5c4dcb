//! Incidents from the real agent (`vantage run`) in the routed lab (`lab` crate: agent → r1 → r2 →
//! target in network namespaces), as issue 5 asks them to be proven:
//!
//! 1. 30% loss on the link into r2: within 30 s exactly one draft, whose path-trace verdict names
//!    r2's hop; it survives a restart of the agent (no second `opened`, no event delivered twice)
//!    and resolves when the loss stops. Its draft is then read like a human would read it, and
//!    with `VANTAGE_EXAMPLE_DIR` set it is copied there (that is how `docs/examples/` was made).
//! 2. The agent's own uplink cut, with six targets: one agent-side incident, none per target.
//! 3. 1% background loss for four minutes: no incident, while the agent really measured loss.
//! 5. 16 targets under a per-target and a group loss rule, loss on the link into r2 (issue 11):
//!    every draft — 16 per target and the group's — within 30 s of the fault, each detected when
//!    its target's window breached (not when its trace finished).
//! 6. SIGTERM while the path trace at breach runs: the agent exits within 3 s, and the incident
//!    is recorded (without the trace) rather than lost.
//!
//! Every echo goes to addresses inside the lab. Needs root; fails (never skips) without it.

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use lab::{Lab, Router, addr};
use support::Agent;
use vantage::incident::{Incident, IncidentDb, Status};

/// One echo a second per target, the cadence issue 5 names.
const PING: &str = r#"
[[probe]]
name = "ping"
kind = "icmp"
interval = "1s"
count = 1
timeout = "900ms"
"#;

/// The per-target loss rule of scenarios 1 and 3. At one echo a second, a window of 20 echoes and
/// "above 20%" (5 lost of 20) — figures from a simulation of the window, 20,000 runs each:
/// - 30% each way (51% of echoes lost) opens 12 s after the loss starts (median), within 21 s in
///   99.3% of runs; the 20-round path trace at breach (8.1 s) and delivery (≤ 0.5 s) come on top
///   (scenario 1 times the agent's part from the window's breach);
/// - 1% each way (2% of echoes) reaches 5 of 20 in 0.2% of 4-minute runs per target.
///
/// Clear at or below 5% (1 of 20) for 10 s: the window must first let the lossy echoes go.
const LOSS_RULE: &str = r#"
[[rule]]
name = "loss"
kind = "loss"
severity = "major"
above_pct = 20
clear_below_pct = 5
echoes = 20
for = "1s"
clear_for = "10s"
min_hold = "10s"
"#;

/// The agent's data dir, config and logs, in a temporary directory.
struct Setup {
    dir: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
}

impl Setup {
    /// `[agent]` (name lab-agent, site lab) followed by `rest`.
    fn new(rest: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let config = dir.path().join("vantage.toml");
        let text = format!(
            "[agent]\nname = \"lab-agent\"\nsite = \"lab\"\ndata_dir = \"{}\"\n\n\
             [incidents]\nhistory = \"5m\"\n{rest}",
            data.display()
        );
        std::fs::write(&config, text).expect("write config");
        Setup { dir, data, config }
    }

    /// `vantage run` in the lab's agent namespace; `log` names its log file.
    fn start(&self, lab: &Lab, log: &str) -> Agent {
        let netns = ["ip", "netns", "exec", lab.agent().name()];
        Agent::start(&netns, &self.config, self.dir.path().join(log))
    }

    fn incidents(&self) -> Vec<Incident> {
        IncidentDb::open(&self.data)
            .and_then(|db| db.all())
            .unwrap_or_default()
    }

    fn folder(&self, id: &str) -> PathBuf {
        self.data.join("incidents").join(id)
    }

    /// The idempotency keys in the directory sink's `events.jsonl`, in the order received.
    fn delivered(&self, id: &str) -> Vec<String> {
        std::fs::read_to_string(self.folder(id).join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let event: serde_json::Value = serde_json::from_str(line).expect("an event line");
                event["idempotency_key"]
                    .as_str()
                    .expect("idempotency_key")
                    .to_string()
            })
            .collect()
    }

    /// (rounds, echoes sent, echoes received) of `target`'s ping rounds in `[from, to)`.
    fn echoes(&self, target: &str, from: SystemTime, to: SystemTime) -> (i64, i64, i64) {
        let db = rusqlite::Connection::open(self.data.join("vantage.db")).expect("store");
        db.query_row(
            "SELECT COUNT(*), COALESCE(SUM(sent), 0), COALESCE(SUM(received), 0)
             FROM ping WHERE target = ?1 AND probe = 'ping' AND ts_ns >= ?2 AND ts_ns < ?3",
            rusqlite::params![target, unix_ns(from), unix_ns(to)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("query the store")
    }
}

impl Setup {
    /// When `target`'s ping window of `echoes` (one echo a round) first held `lost` lost echoes,
    /// counting from `from`: the start of the round that made it so.
    fn window_breached(
        &self,
        target: &str,
        from: SystemTime,
        echoes: usize,
        lost: i64,
    ) -> SystemTime {
        let db = rusqlite::Connection::open(self.data.join("vantage.db")).expect("store");
        let mut query = db
            .prepare(
                "SELECT ts_ns, sent - received FROM ping
                 WHERE target = ?1 AND probe = 'ping' AND ts_ns >= ?2 ORDER BY ts_ns",
            )
            .expect("query");
        let rounds: Vec<(i64, i64)> = query
            .query_map(rusqlite::params![target, unix_ns(from)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("query the store")
            .collect::<Result<_, _>>()
            .expect("rows");
        for end in 0..rounds.len() {
            let window = &rounds[end.saturating_sub(echoes - 1)..=end];
            if window.iter().map(|(_, lost)| lost).sum::<i64>() >= lost {
                return SystemTime::UNIX_EPOCH + Duration::from_nanos(rounds[end].0 as u64);
            }
        }
        panic!("{target}: the window never breached: {rounds:?}");
    }
}

use probes::unix_ns;

/// Detected within a second before (times in a draft are whole seconds) and 4 s after the window's
/// breach: the rule's `for` (1 s), its next tick (≤ 1 s) and a margin.
fn assert_detected_near_breach(target: &str, detected: SystemTime, breached: SystemTime) {
    assert!(
        detected + Duration::from_secs(1) >= breached
            && detected <= breached + Duration::from_secs(4),
        "{target}: detected at {}, but its window breached at {}",
        humantime::format_rfc3339_millis(detected),
        humantime::format_rfc3339_millis(breached)
    );
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

/// `p` ± 4σ for the loss of `n` echoes, each lost with probability `p` (a bound that cannot flake).
fn loss_bounds(p: f64, n: f64) -> (f64, f64) {
    let spread = 4.0 * (p * (1.0 - p) / n).sqrt();
    (p - spread, p + spread)
}

/// Scenario 1 (and the draft of scenario 4 is its draft).
#[test]
fn loss_on_the_second_router_is_one_draft_naming_its_hop_across_a_restart() {
    let lab = Lab::routed();
    let setup = Setup::new(&format!(
        r#"
[[target]]
name = "far"
host = "{far}"
site = "remote"

[[target]]
name = "r1"
host = "{r1}"
site = "lab"
{PING}
[[probe]]
name = "path"
kind = "trace"
interval = "30s"
count = 5
timeout = "1s"
targets = ["far"]
{LOSS_RULE}"#,
        far = addr::TARGET,
        r1 = addr::R1_AGENT_SIDE,
    ));
    let agent = setup.start(&lab, "agent-1.log");
    // Some clean history first, so the draft shows the "before".
    std::thread::sleep(Duration::from_secs(8));
    assert!(setup.incidents().is_empty(), "{:#?}", setup.incidents());

    // 30% each way on the r1–r2 link: r2's replies and the target's cross it twice, so both lose
    // 1 − 0.7² = 51%.
    const LOST: f64 = 1.0 - 0.7 * 0.7;
    let injected = Instant::now();
    let injected_at = SystemTime::now();
    lab.inject_link_loss(Router::R2, 30);
    // How soon 5 of 20 echoes are lost is the dice's (within 21 s in 99.3% of runs, so a fixed
    // 30 s from the fault failed about one run in a hundred); the agent's part is timed from
    // the window's breach below.
    let (id, draft) = wait_for("a draft", Duration::from_secs(60), &agent, || {
        let incident = setup.incidents().into_iter().next()?;
        let md = std::fs::read_to_string(setup.folder(&incident.id).join("incident.md")).ok()?;
        Some((incident.id, md))
    });
    let written = SystemTime::now();
    eprintln!(
        "draft {id} written {:?} after the loss began",
        injected.elapsed()
    );
    let incidents = setup.incidents();
    assert_eq!(incidents.len(), 1, "exactly one draft: {incidents:#?}");
    assert_eq!(incidents[0].key, "loss/target/far");
    // Detected within the rule's `for` and a tick of the window's breach (times in the draft are
    // whole seconds), and the draft, with its 20-round trace at breach, within 20 s of that.
    let breached = setup.window_breached("far", injected_at, 20, 5);
    let detected = incidents[0].detected_at.0;
    assert_detected_near_breach("far", detected, breached);
    let drafting = written.duration_since(detected).unwrap_or_default();
    assert!(
        drafting <= Duration::from_secs(20),
        "the draft took {drafting:?} from detection"
    );
    assert!(draft.contains("| **Status** | DRAFT — open |"), "{draft}");
    let verdict = loss_start_verdict(&draft);
    assert!(draft.contains(&verdict), "{verdict:?} not in:\n{draft}");
    wait_for(
        "the opening delivered",
        Duration::from_secs(10),
        &agent,
        || {
            setup
                .delivered(&id)
                .contains(&format!("{id}/opened"))
                .then_some(())
        },
    );

    // Restart while it is open: resumed, not re-opened, nothing delivered again.
    let log = agent.stop();
    assert!(log.contains("incident opened"), "{log}");
    let agent = setup.start(&lab, "agent-2.log");
    wait_for(
        "the incident resumed",
        Duration::from_secs(15),
        &agent,
        || {
            agent
                .log()
                .contains("incident still open after restart; resumed")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(6));
    let incidents = setup.incidents();
    assert_eq!(
        incidents.len(),
        1,
        "one incident after the restart: {incidents:#?}"
    );
    assert_eq!(incidents[0].status, Status::Open);

    // The loss stops: resolved (the window lets the lossy echoes go, then clear_for 10 s).
    lab.inject_link_loss(Router::R2, 0);
    let cleared_at = SystemTime::now();
    wait_for(
        "the resolution delivered",
        Duration::from_secs(60),
        &agent,
        || {
            setup
                .delivered(&id)
                .contains(&format!("{id}/resolved"))
                .then_some(())
        },
    );
    let log = agent.stop();
    assert!(
        !log.contains("incident opened"),
        "re-opened after the restart:\n{log}"
    );

    let incidents = setup.incidents();
    assert_eq!(
        incidents.len(),
        1,
        "exactly one incident in all: {incidents:#?}"
    );
    let incident = &incidents[0];
    assert_eq!(incident.status, Status::Resolved);
    // The duration spans the restart (the agent was down for part of it): it is the wall time
    // from detection to resolution, not only the time since the agent came back.
    let wall_open = incident
        .resolved_at
        .and_then(|r| r.0.duration_since(incident.detected_at.0).ok())
        .map(|d| d.as_secs_f64());
    assert!(
        incident
            .duration_s
            .zip(wall_open)
            .is_some_and(|(s, wall)| s >= 10 && (s as f64 - wall).abs() <= 2.0),
        "duration {:?} s, wall {wall_open:?} s: {incident:#?}",
        incident.duration_s
    );
    assert!(
        incident.timeline.iter().any(|e| e.event == "restarted"),
        "the restart is in the timeline: {:#?}",
        incident.timeline
    );
    let delivered = setup.delivered(&id);
    let unique: HashSet<&String> = delivered.iter().collect();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "an event delivered twice: {delivered:?}"
    );
    assert_eq!(
        delivered.first(),
        Some(&format!("{id}/opened")),
        "{delivered:?}"
    );
    assert_eq!(
        delivered.last(),
        Some(&format!("{id}/resolved")),
        "{delivered:?}"
    );
    let opened = delivered.iter().filter(|k| k.ends_with("/opened")).count();
    assert_eq!(opened, 1, "{delivered:?}");
    let db = IncidentDb::open(&setup.data).expect("incidents.db");
    assert_eq!(
        db.events(&id).expect("outbox"),
        delivered,
        "the outbox holds what was delivered"
    );

    // What the agent measured while the link was lossy agrees with the injected loss.
    let (rounds, sent, received) = setup.echoes("far", injected_at, cleared_at);
    assert!(rounds >= 20, "{rounds} rounds under loss");
    let measured = 1.0 - received as f64 / sent as f64;
    let (low, high) = loss_bounds(LOST, sent as f64);
    assert!(
        (low..=high).contains(&measured),
        "measured {measured:.3} over {sent} echoes, expected {LOST:.2} ({low:.3}..{high:.3})"
    );

    let folder = setup.folder(&id);
    draft_reads_like_a_human(&folder, incident, LOST);
    if let Some(example) = std::env::var_os("VANTAGE_EXAMPLE_DIR") {
        let example = Path::new(&example);
        std::fs::create_dir_all(example).expect("create VANTAGE_EXAMPLE_DIR");
        for file in ["incident.md", "incident.json", "evidence.json", "chart.svg"] {
            std::fs::copy(folder.join(file), example.join(file)).expect("copy the example");
        }
    }
}

/// The Loss% of hop `n`, `address`, in the mtr-style trace of a draft.
fn trace_hop_loss(md: &str, n: u8, address: std::net::Ipv4Addr) -> f64 {
    let prefix = format!("{n:>3}.|-- {address} ");
    let line = md
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no hop {n} {address} in:\n{md}"));
    line[prefix.len()..]
        .split_whitespace()
        .next()
        .and_then(|loss| loss.strip_suffix('%'))
        .and_then(|loss| loss.parse().ok())
        .unwrap_or_else(|| panic!("no Loss% in {line:?}"))
}

/// The verdict line a draft of loss on the r1–r2 link must carry, given what its trace sampled.
///
/// Hop 2 (r2) and the target lose alike (51%), so the verdict names hop 2 — unless the 20 rounds
/// happened to sample hop 2 under half the target's loss (about one trace in 60), when loss no
/// longer persists back to it and the verdict must name the target, hop 3. Written out here, not
/// taken from `probes::locate_loss`, so that a wrong rule there still fails this test.
fn loss_start_verdict(md: &str) -> String {
    let r2 = trace_hop_loss(md, 2, addr::R2_R1_SIDE);
    let target = trace_hop_loss(md, 3, addr::TARGET);
    let (hop, address) = if r2 >= target / 2.0 && r2 >= 5.0 {
        (2, addr::R2_R1_SIDE)
    } else {
        eprintln!("hop 2 sampled {r2}% against the target's {target}%: the verdict names hop 3");
        (3, addr::TARGET)
    };
    format!("- Path trace verdict: **loss starts at hop {hop}, {address} (")
}

/// Scenario 4: the resolved draft of scenario 1, read section by section and figure by figure.
/// `lost`: the probability that one echo through the lossy link is lost.
fn draft_reads_like_a_human(folder: &Path, incident: &Incident, lost: f64) {
    let md = std::fs::read_to_string(folder.join("incident.md")).expect("incident.md");
    let lines: Vec<&str> = md.lines().collect();

    // Title: `YYYY-MM-DD [site] <symptom> <scope>`; the figure is the window's loss at open (or at
    // an update: the loss doubled).
    let title =
        regex::Regex::new(r"^# (\d{4}-\d{2}-\d{2}) \[lab\] (\d+(?:\.\d)?)% packet loss to far$")
            .expect("regex");
    let caps = title
        .captures(lines[0])
        .unwrap_or_else(|| panic!("title {:?}", lines[0]));
    assert_eq!(&caps[1], incident.detected_at.date());
    let titled: f64 = caps[2].parse().expect("a figure");
    // It opened on "above 20% of 20 echoes"; a window of 20 is at most 4σ above the mean.
    let (_, window_high) = loss_bounds(lost, 20.0);
    assert!(
        titled > 20.0 && titled <= 100.0 * window_high,
        "{titled}% in the title"
    );

    for line in [
        "| **Status** | DRAFT — resolved |",
        "| **Severity** | major |",
        "| **Incident coordinator** | unassigned |",
        "| **Dedup key** | `loss/target/far` |",
        "## Impact",
        "## Symptoms",
        "## Scope and localization",
        "## Evidence",
        "### Latency and loss",
        "### Other targets from this agent",
        "## Timeline (UTC)",
        "## Engage",
        "## Status updates (drafts)",
        "## Resolution",
        "- Scope: target `far` — 1 of 1 targets affected.",
        "- [ ] File a bug with this draft (attach `incident.md`, `chart.svg`, `evidence.json`).",
        "- [ ] Cc the owners of the faulty segment: `far` and the path to it.",
        "- [ ] Set the channel topic to the bug number.",
        "![latency and loss](chart.svg)",
    ] {
        assert!(
            lines.contains(&line),
            "{line:?} not a line of incident.md:\n{md}"
        );
    }
    assert!(
        md.contains("| **Detected at** | ") && md.contains("| **Duration** | "),
        "{md}"
    );
    assert!(
        md.contains("- The one other target measured from this agent is healthy"),
        "the healthy contrast (r1): {md}"
    );

    // The path trace at breach: mtr-style, hop 2 is r2, and the verdict names it.
    let rounds = vantage::incident::diagnostics::ROUNDS as f64;
    let (low, high) = loss_bounds(lost, rounds);
    assert_eq!(
        trace_hop_loss(&md, 1, addr::R1_AGENT_SIDE),
        0.0,
        "the agent–r1 link is clean:\n{md}"
    );
    for (n, address) in [(2, addr::R2_R1_SIDE), (3, addr::TARGET)] {
        let loss = trace_hop_loss(&md, n, address);
        assert!(
            (100.0 * low..=100.0 * high).contains(&loss),
            "hop {n}: {loss}% over {rounds} rounds, expected {:.0}% ± 4σ:\n{md}",
            100.0 * lost
        );
    }
    let verdict = loss_start_verdict(&md);
    assert!(md.contains(&verdict), "{verdict:?} not in:\n{md}");

    // The peak: the worst 20-echo window while open, from the opening figure up to 4σ above.
    let peak = regex::Regex::new(r"(?m)^Peak: (\d+(?:\.\d)?)% packet loss on 1 of 1 targets\.$")
        .expect("regex");
    let peak: f64 = peak
        .captures(&md)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or_else(|| panic!("no peak in:\n{md}"));
    assert!(
        titled <= peak && peak <= 100.0 * window_high,
        "peak {peak}%, {titled}% in the title"
    );

    // Timeline: the breach, the opening, the resolution, in order.
    let timeline = regex::Regex::new(r"^- \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} — ").expect("regex");
    let entries: Vec<&&str> = lines.iter().filter(|l| timeline.is_match(l)).collect();
    assert!(entries.len() >= 3, "{entries:#?}");
    assert!(
        entries
            .last()
            .is_some_and(|e| e.contains("Resolved after ")),
        "{entries:#?}"
    );
    assert!(
        md.contains("Peak impact: ") && md.contains("packet loss on 1 of 1 targets"),
        "{md}"
    );

    let svg = std::fs::read_to_string(folder.join("chart.svg")).expect("chart.svg");
    let chart = roxmltree::Document::parse(&svg).expect("chart.svg is XML");
    assert_eq!(chart.root_element().tag_name().name(), "svg");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(folder.join("incident.json")).expect("incident.json"),
    )
    .expect("incident.json is JSON");
    assert_eq!(json["status"], "resolved");
    assert_eq!(json["title"], lines[0].trim_start_matches("# "));
}

/// Scenario 2.
#[test]
fn the_agents_own_uplink_cut_is_one_agent_side_incident() {
    let lab = Lab::routed();
    let targets = lab::target_addresses(6);
    let mut config = String::new();
    for (i, host) in targets.iter().enumerate() {
        config.push_str(&format!(
            "[[target]]\nname = \"t{i}\"\nhost = \"{host}\"\nsite = \"remote\"\n\n"
        ));
    }
    config.push_str(PING);
    // The agent rule's `for` is shorter than the target rule's by more than one interval (1 s),
    // so that it wins the race; every echo of a cut uplink fails, so both windows fill at once.
    config.push_str(
        r#"
[[rule]]
name = "loss"
kind = "loss"
above_pct = 20
clear_below_pct = 5
echoes = 20
for = "5s"
clear_for = "10s"
min_hold = "10s"

[[rule]]
name = "uplink"
kind = "loss"
severity = "critical"
scope = "agent"
above_pct = 20
clear_below_pct = 5
echoes = 20
for = "1s"
clear_for = "10s"
min_hold = "10s"
"#,
    );
    let setup = Setup::new(&config);
    let agent = setup.start(&lab, "agent.log");
    std::thread::sleep(Duration::from_secs(5));
    assert!(setup.incidents().is_empty(), "{:#?}", setup.incidents());

    // The agent's only link goes down (its default route with it): every send fails at once.
    let cut = Instant::now();
    lab.agent().run(["ip", "link", "set", "r1", "down"]);
    let open = wait_for(
        "the agent-side incident",
        Duration::from_secs(40),
        &agent,
        || setup.incidents().into_iter().next(),
    );
    eprintln!(
        "agent-side incident {} opened {:?} after the cut",
        open.id,
        cut.elapsed()
    );
    assert_eq!(open.key, "uplink/agent/agent");
    assert_eq!(open.severity, "critical");
    // The figure is the windows' mean loss when it opened: they were still filling with lost echoes.
    let title = regex::Regex::new(&format!(
        r"^{} \[lab\] \d+(\.\d)?% packet loss from this agent \(agent-side: 6 of 6 targets\)$",
        open.detected_at.date()
    ))
    .expect("regex");
    assert!(title.is_match(&open.title), "{}", open.title);
    // Well past the target rule's `for`: still that one incident.
    std::thread::sleep(Duration::from_secs(12));
    let keys: Vec<String> = setup.incidents().into_iter().map(|i| i.key).collect();
    assert_eq!(
        keys,
        ["uplink/agent/agent"],
        "one incident, none per target"
    );

    // The uplink comes back: the agent-side incident resolves, and no target opens one on its way.
    lab.agent().run(["ip", "link", "set", "r1", "up"]);
    lab.agent().run([
        "ip",
        "route",
        "add",
        "default",
        "via",
        &addr::R1_AGENT_SIDE.to_string(),
    ]);
    wait_for("the resolution", Duration::from_secs(60), &agent, || {
        let incident = setup.incidents().into_iter().next()?;
        (incident.status == Status::Resolved).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let log = agent.stop();
    let keys: Vec<String> = setup.incidents().into_iter().map(|i| i.key).collect();
    assert_eq!(keys, ["uplink/agent/agent"], "{log}");
    let md = std::fs::read_to_string(setup.folder(&open.id).join("incident.md")).expect("md");
    assert!(
        md.contains("the fault is most likely on the agent's side"),
        "{md}"
    );
}

/// Scenario 5 (issue 11): a fault behind which 16 targets breach together. The path traces at
/// breach run at once, off the rules thread, so no draft waits for another's trace (they were
/// about 8 s apart, the group's 145 s late), and each draft is stamped with its detection time.
#[test]
fn sixteen_targets_breaching_together_are_all_drafted_within_30_s() {
    const TARGETS: usize = 16;
    let lab = Lab::routed();
    let mut config = String::new();
    for (i, host) in lab::target_addresses(TARGETS).iter().enumerate() {
        config.push_str(&format!(
            "[[target]]\nname = \"t{i:02}\"\nhost = \"{host}\"\nsite = \"remote\"\n\
             labels = {{ group = \"remote\" }}\n\n"
        ));
    }
    config.push_str(PING);
    config.push_str(LOSS_RULE);
    config.push_str(
        r#"
[[rule]]
name = "group-loss"
kind = "loss"
severity = "critical"
scope = "group"
group_by = "group"
above_pct = 20
clear_below_pct = 5
echoes = 20
for = "1s"
clear_for = "10s"
min_hold = "10s"
"#,
    );
    let setup = Setup::new(&config);
    let agent = setup.start(&lab, "agent.log");
    std::thread::sleep(Duration::from_secs(8));
    assert!(setup.incidents().is_empty(), "{:#?}", setup.incidents());

    // 50% each way on the r1–r2 link: 75% of echoes lost, so every window breaches within ~10 s.
    let injected = Instant::now();
    let injected_at = SystemTime::now();
    lab.inject_link_loss(Router::R2, 50);
    let drafted = wait_for(
        "17 drafts within 30 s of the fault",
        Duration::from_secs(30),
        &agent,
        || {
            let incidents = setup.incidents();
            let written = incidents
                .iter()
                .filter(|i| setup.folder(&i.id).join("incident.md").exists())
                .count();
            (written == TARGETS + 1).then_some(incidents)
        },
    );
    eprintln!("17 drafts written {:?} after the fault", injected.elapsed());
    let log = agent.stop();

    let mut keys: Vec<&str> = drafted.iter().map(|i| i.key.as_str()).collect();
    keys.sort_unstable();
    let mut expected: Vec<String> = (0..TARGETS)
        .map(|i| format!("loss/target/t{i:02}"))
        .collect();
    expected.insert(0, "group-loss/group/group=remote".into());
    assert_eq!(keys, expected, "{log}");
    // Hop 2 answers a probe only when both directions of the link pass it (25%): in about one
    // trace in 300 it answers none of 20, and then the verdict can only say the loss starts there
    // or at the next hop (16 traces: ~5% of runs).
    let verdict = format!("loss starts at hop 2, {}", addr::R2_R1_SIDE);
    let hop_2_silent = "or at the silent hop 2 before it";
    let mut latest_breach = injected_at;
    for incident in drafted.iter().filter(|i| i.key.starts_with("loss/")) {
        let trace = incident.trace.as_ref().expect("a trace at breach");
        assert!(
            trace.verdict_text.contains(&verdict) || trace.verdict_text.contains(hop_2_silent),
            "{}: {}",
            incident.key,
            trace.verdict_text
        );
        // When the target's window of 20 echoes first held more than 20% lost (5 of 20): the
        // round that made it so started then, and its lost echo counted 0.9 s later; the engine
        // opens after `for` (1 s) at its next tick (≤ 1 s). Times in the draft are whole seconds.
        let target = incident.key.trim_start_matches("loss/target/");
        let breached = setup.window_breached(target, injected_at, 20, 5);
        latest_breach = latest_breach.max(breached);
        assert_detected_near_breach(target, incident.detected_at.0, breached);
    }
    let group = drafted
        .iter()
        .find(|i| i.key.starts_with("group-loss/"))
        .expect("the group's draft");
    assert!(
        group.detected_at.0 + Duration::from_secs(1) >= injected_at
            && group.detected_at.0 <= latest_breach + Duration::from_secs(4),
        "the group detected at {}, after every target's window breached ({})",
        group.detected_at.rfc3339(),
        humantime::format_rfc3339_millis(latest_breach)
    );
    assert!(group.trace.is_some(), "{group:#?}");
}

/// Scenario 6 (issue 11): stopping took 17 s while a breach trace ran. The trace is not waited
/// for; the opening is recorded without it, and delivered at the next start at the latest.
#[test]
fn sigterm_during_the_trace_at_breach_exits_at_once_and_keeps_the_incident() {
    let lab = Lab::routed();
    let setup = Setup::new(&format!(
        "[[target]]\nname = \"far\"\nhost = \"{far}\"\nsite = \"remote\"\n{PING}{LOSS_RULE}",
        far = addr::TARGET,
    ));
    let agent = setup.start(&lab, "agent.log");
    std::thread::sleep(Duration::from_secs(3));
    lab.inject_link_loss(Router::R2, 50);
    wait_for("the breach", Duration::from_secs(30), &agent, || {
        agent
            .log()
            .contains("breach: gathering evidence for the draft")
            .then_some(())
    });
    // The 20-round trace (8 s) has just begun.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !agent.log().contains("path traces at breach"),
        "{}",
        agent.log()
    );
    let stopping = Instant::now();
    let log = agent.stop();
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "stopping took {took:?}:\n{log}"
    );
    let incidents = setup.incidents();
    assert_eq!(incidents.len(), 1, "{log}");
    let notes: Vec<&str> = incidents[0]
        .timeline
        .iter()
        .filter(|e| e.event == "diagnostics")
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(
        notes,
        ["Path trace to far: not finished when the draft was written; not attached."]
    );
    let db = IncidentDb::open(&setup.data).expect("incidents.db");
    assert_eq!(
        db.events(&incidents[0].id).expect("outbox"),
        [format!("{}/opened", incidents[0].id)]
    );
}

/// Scenario 3: four minutes of 1% loss each way on the link into r2 (2% of echoes) open nothing.
#[test]
fn one_percent_background_loss_for_four_minutes_opens_no_incident() {
    const SOAK: Duration = Duration::from_secs(240);
    const LOST: f64 = 1.0 - 0.99 * 0.99;
    let lab = Lab::routed();
    let targets = lab::target_addresses(2);
    let mut config = String::new();
    for (i, host) in targets.iter().enumerate() {
        config.push_str(&format!(
            "[[target]]\nname = \"t{i}\"\nhost = \"{host}\"\nsite = \"remote\"\n\n"
        ));
    }
    config.push_str(PING);
    config.push_str(LOSS_RULE);
    let setup = Setup::new(&config);
    lab.inject_link_loss(Router::R2, 1);
    let started_at = SystemTime::now();
    let agent = setup.start(&lab, "agent.log");
    let start = Instant::now();
    while start.elapsed() < SOAK {
        std::thread::sleep(Duration::from_secs(10));
        let incidents = setup.incidents();
        assert!(
            incidents.is_empty(),
            "an incident after {:?} of 1% loss: {incidents:#?}",
            start.elapsed()
        );
    }
    let log = agent.stop();
    assert!(log.contains("rules engine started"), "{log}");
    assert!(setup.incidents().is_empty(), "{:#?}", setup.incidents());

    // It really measured: about one round a second per target, and some of the loss.
    let (mut rounds, mut sent, mut received) = (0, 0, 0);
    for i in 0..targets.len() {
        let (r, s, v) = setup.echoes(&format!("t{i}"), started_at, SystemTime::now());
        assert!(r >= 200, "t{i}: {r} rounds in {SOAK:?}");
        rounds += r;
        sent += s;
        received += v;
    }
    let measured = 1.0 - received as f64 / sent as f64;
    let (_, high) = loss_bounds(LOST, sent as f64);
    eprintln!(
        "soak: {rounds} rounds, {sent} echoes, {} lost",
        sent - received
    );
    assert!(
        sent > received && measured <= high,
        "lost {} of {sent} echoes ({measured:.4}); expected {LOST:.4}, at most {high:.4}",
        sent - received
    );
}
