//! Incidents in process: a store with an hour of history, the engine and the manager on top, and
//! the draft read the way a person reads it (sections, figures), the chart parsed back as XML,
//! the outbox retried while a sink is down, and a restart that neither re-opens nor re-sends.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use probes::{FailureKind, Measurement, Observation, Outcome, PingStats};

use super::outbox::Deliverer;
use super::*;
use crate::config::Config;
use crate::rules::{Engine, Transition, TransitionKind};
use crate::store::{Record, Store};

/// 2026-11-21 10:00:00 UTC.
const T0: u64 = 1_795_255_200;

fn wall(t: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + t)
}

const CONFIG: &str = r#"
[agent]
name = "scl3-probe-01"
site = "scl3"

[incidents]
status_updates = "30m"
history = "10m"

[[target]]
name = "aws-a"
host = "198.18.10.1"
site = "aws-us-east-1"
labels = { group = "aws-us-east-1" }
[[target]]
name = "aws-b"
host = "198.18.10.2"
site = "aws-us-east-1"
labels = { group = "aws-us-east-1" }
[[target]]
name = "aws-c"
host = "198.18.10.3"
site = "aws-us-east-1"
labels = { group = "aws-us-east-1" }
[[target]]
name = "aws-d"
host = "198.18.10.4"
site = "aws-us-east-1"
labels = { group = "aws-us-east-1" }
[[target]]
name = "sjc1-core"
host = "198.18.1.1"
site = "sjc1"
labels = { group = "west" }

[[probe]]
name = "ping"
kind = "icmp"
interval = "20s"
timeout = "1s"
count = 10
spacing = "1s"

[[rule]]
name = "cloud-loss"
kind = "loss"
scope = "group"
group_by = "group"
above_pct = 20
echoes = 20
for = "40s"
clear_for = "1m"
min_hold = "5m"
"#;

fn config() -> Config {
    Config::parse(CONFIG, Path::new("vantage.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// A round of 10 echoes with `lost` of them lost (the first ones), RTTs around `rtt`.
fn record(target: &str, t: u64, lost: usize, rtt: f64) -> Record {
    let rtts: Vec<Option<f64>> = (0..10)
        .map(|i| (i >= lost).then_some(rtt + i as f64 * 0.5))
        .collect();
    let stats = PingStats::from_rtts(rtts);
    let outcome = if stats.received == 0 {
        Outcome::failure(FailureKind::Timeout, "no reply within 1s")
    } else {
        Outcome::Success
    };
    Record {
        agent: "scl3-probe-01".into(),
        site: "scl3".into(),
        probe: "ping".into(),
        target: target.into(),
        target_site: if target.starts_with("aws") {
            "aws-us-east-1".into()
        } else {
            "sjc1".into()
        },
        address: Some("198.18.10.1".into()),
        observation: Observation {
            started_at: wall(t),
            duration: Duration::from_secs(10),
            outcome,
            measurement: Measurement::Ping(stats),
        },
    }
}

/// What each target sees at time `t`: aws-a, -b and -c lose 3–4 of 10 echoes from t=600 to
/// t=1200 (and aws-c everything from 900 to 960), aws-d and sjc1-core are fine.
fn round(target: &str, t: u64) -> Record {
    let breach = (600..1200).contains(&t);
    match target {
        "aws-a" | "aws-b" if breach => record(target, t, 3 + (t as usize / 20) % 2, 70.0),
        "aws-c" if (900..960).contains(&t) => record(target, t, 10, 0.0),
        "aws-c" if breach => record(target, t, 4, 72.0),
        "sjc1-core" => record(target, t, 0, 12.0),
        _ => record(target, t, 0, 68.0),
    }
}

const TARGETS: [&str; 5] = ["aws-a", "aws-b", "aws-c", "aws-d", "sjc1-core"];

/// Drive store + engine + manager from `from` to `to` (seconds; a round every 20 s).
fn drive(
    store: &mut Store,
    engine: &mut Engine,
    manager: &mut Manager,
    from: u64,
    to: u64,
) -> Vec<Transition> {
    drive_with(store, engine, manager, from, to, |t| {
        TARGETS.iter().map(|target| round(target, t)).collect()
    })
}

/// As [`drive`], with the records of each 20 s step from `records`.
fn drive_with(
    store: &mut Store,
    engine: &mut Engine,
    manager: &mut Manager,
    from: u64,
    to: u64,
    records: impl Fn(u64) -> Vec<Record>,
) -> Vec<Transition> {
    let mut all = Vec::new();
    for t in (from..to).step_by(20) {
        let records = records(t);
        store.insert(&records).expect("insert");
        let mut transitions = Vec::new();
        for record in &records {
            transitions.extend(engine.observe(Duration::from_secs(t), record));
        }
        transitions.extend(engine.tick(Duration::from_secs(t)));
        for transition in &transitions {
            manager.apply(transition, wall(t)).expect("apply");
        }
        manager
            .tick(Duration::from_secs(t), wall(t))
            .expect("status updates");
        all.extend(transitions);
    }
    all
}

/// A fresh data directory with the test config's store, engine and manager, driven from 0 to
/// `to` seconds.
struct Driven {
    dir: tempfile::TempDir,
    config: Config,
    store: Store,
    engine: Engine,
    manager: Manager,
}

fn driven(to: u64) -> Driven {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config();
    let mut store = Store::open(dir.path()).expect("store");
    let mut engine = Engine::new(&config);
    let mut manager = new_manager(dir.path(), &config);
    drive(&mut store, &mut engine, &mut manager, 0, to);
    Driven {
        dir,
        config,
        store,
        engine,
        manager,
    }
}

fn new_manager(dir: &Path, config: &Config) -> Manager {
    Manager::new(
        IncidentDb::open(dir).expect("incidents.db"),
        Some(Store::open(dir).expect("store")),
        config,
        Box::new(NoDiagnostics),
    )
}

/// A sink that records what it got, and fails while `down` is set.
#[derive(Clone, Default)]
struct Recorder {
    got: Arc<Mutex<Vec<String>>>,
    down: Arc<Mutex<bool>>,
}

impl IncidentSink for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn deliver(&mut self, event: &OutboxEvent) -> anyhow::Result<()> {
        if *self.down.lock().expect("lock") {
            anyhow::bail!("connection refused");
        }
        self.got
            .lock()
            .expect("lock")
            .push(event.idempotency_key.clone());
        Ok(())
    }
}

/// The text of a `## name` section of a Markdown document.
fn section(md: &str, name: &str) -> String {
    let start = md
        .find(&format!("\n## {name}\n"))
        .unwrap_or_else(|| panic!("no section {name:?} in:\n{md}"));
    let rest = &md[start + name.len() + 5..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_string()
}

#[test]
fn a_group_breach_becomes_one_draft_with_the_evidence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config();
    let mut store = Store::open(dir.path()).expect("store");
    let mut engine = Engine::new(&config);
    let mut manager = new_manager(dir.path(), &config);
    let transitions = drive(&mut store, &mut engine, &mut manager, 0, 1000);
    let kinds: Vec<String> = transitions
        .iter()
        .map(|t| format!("{} {}", t.kind.as_str(), t.key))
        .collect();
    assert_eq!(
        kinds,
        ["opened cloud-loss/group/group=aws-us-east-1"],
        "one incident for the group, not one per target"
    );

    let db = IncidentDb::open(dir.path()).expect("db");
    let incidents = db.all().expect("incidents");
    assert_eq!(incidents.len(), 1);
    let incident = &incidents[0];
    assert_eq!(incident.id, "20261121-001");
    // Breaching from t=620 (two lossy rounds fill the 20-echo window: 35–40%), so detected at
    // t=660 after `for` (40 s).
    assert_eq!(
        incident.title,
        "2026-11-21 [scl3] 36.7% packet loss to aws-us-east-1 (3 of 4 targets)"
    );
    assert_eq!(incident.detected_at.display(), "2026-11-21 10:11:00 UTC");

    let md = render::markdown(incident);
    let open_section = |name: &str| section(&md, name);
    assert!(md.starts_with(&format!("# {}\n", incident.title)), "{md}");
    assert!(md.contains("| **Status** | DRAFT — open |"));
    assert!(md.contains("| **Severity** | major |"));
    assert!(md.contains(
        "| **Detected at** | 2026-11-21 10:11:00 UTC by agent `scl3-probe-01` (site scl3) |"
    ));
    assert!(md.contains("| **Incident coordinator** | unassigned |"));
    assert!(md.contains("| **Dedup key** | `cloud-loss/group/group=aws-us-east-1` |"));
    let impact = open_section("Impact");
    assert!(
        impact.contains("36.7% packet loss on average (worst 40%) on 3 of 4 targets of the `group=aws-us-east-1` group: aws-a, aws-b, aws-c (now)."),
        "{impact}"
    );
    let symptoms = open_section("Symptoms");
    assert!(symptoms.contains("| aws-c | ping | 40% |  |"), "{symptoms}");
    let scope = open_section("Scope and localization");
    assert!(
        scope.contains("group `group=aws-us-east-1` — 3 of 4 targets affected"),
        "{scope}"
    );
    assert!(
        scope.contains("All 2 other targets measured from this agent are healthy"),
        "{scope}"
    );
    assert!(scope.contains("Path trace: none attached"), "{scope}");
    let evidence = open_section("Evidence");
    // The window starts `history` (10 min) before detection.
    assert!(
        evidence.contains("Window: 2026-11-21 10:01:00 UTC to 2026-11-21 10:11:00 UTC"),
        "{evidence}"
    );
    assert!(
        evidence.contains("**aws-a** (ping): 31 rounds, 4 with loss"),
        "{evidence}"
    );
    assert!(
        evidence.contains("| 10:09:40–10:10:00 | 2 | 15% | 71.6 ms | 70.1 ms–73.1 ms | 0 |"),
        "the rounds pooled per row, the breach in the last ones: {evidence}"
    );
    assert!(
        evidence.contains("| 10:10:20–10:11:00 | 3 | 36.7% | 73.2 ms | 72.2 ms–74.2 ms | 0 |"),
        "{evidence}"
    );
    assert!(
        evidence.contains("| sjc1-core | sjc1 | ping | healthy | 0% | 14.2 ms |"),
        "{evidence}"
    );
    assert!(
        evidence.contains("| aws-d | aws-us-east-1 | ping | healthy |"),
        "{evidence}"
    );
    let timeline = open_section("Timeline (UTC)");
    assert!(
        timeline.contains("- 2026-11-21 10:10:20 — Rule `cloud-loss` breached"),
        "{timeline}"
    );
    assert!(
        timeline.contains("- 2026-11-21 10:11:00 — Draft opened by agent scl3-probe-01 (scl3)"),
        "{timeline}"
    );
    let engage = open_section("Engage");
    for item in [
        "- [ ] File a bug with this draft",
        "- [ ] Cc the owners of the faulty segment: the `group=aws-us-east-1` targets",
        "- [ ] Set the channel topic to the bug number.",
        "- [ ] Send a status update every 30m",
    ] {
        assert!(engage.contains(item), "{item:?} in {engage}");
    }
    assert!(!md.contains("## Resolution"));

    // The same data as JSON.
    let json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(incident).expect("json")).expect("parse");
    assert_eq!(json["status"], "open");
    assert_eq!(json["detected_at"], "2026-11-21T10:11:00Z");
    assert_eq!(json["scope"]["kind"], "group");
    assert_eq!(json["impact"]["affected"].as_array().map(Vec::len), Some(3));
    assert_eq!(json["trace"], serde_json::Value::Null);

    // aws-c loses everything for a minute: not a doubling (36.7% → 56.7%), but the failures show.
    // Then the group recovers: resolved, with duration and peak, after a status update.
    let transitions = drive(&mut store, &mut engine, &mut manager, 1000, 3000);
    let kinds: Vec<String> = transitions
        .iter()
        .map(|t| format!("{} {}", t.kind.as_str(), t.key))
        .collect();
    assert_eq!(kinds, ["resolved cloud-loss/group/group=aws-us-east-1"]);
    let incident = db.get("20261121-001").expect("get").expect("the incident");
    assert_eq!(incident.status, Status::Resolved);
    assert_eq!(incident.status_updates.len(), 0, "resolved within 30m");
    let md = render::markdown(&incident);
    assert!(md.contains("| **Status** | DRAFT — resolved |"));
    assert!(md.contains("| **Duration** | 10m 20s |"), "{md}");
    assert!(
        md.contains("| 10:15:00 | aws-c | ping | 198.18.10.1 | timeout | no reply within 1s |"),
        "{md}"
    );
    assert!(section(&md, "Resolution").contains(
        "Resolved after 10m 20s: the clear conditions held. Peak impact: 56.7% packet loss on 3 of 4 targets."
    ), "{md}");
    assert_eq!(
        db.events("20261121-001").expect("events"),
        ["20261121-001/opened", "20261121-001/resolved"]
    );
}

#[test]
fn status_updates_every_period_while_open_and_a_restart_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config();
    config.incidents.status_updates = Duration::from_secs(120);
    let mut store = Store::open(dir.path()).expect("store");
    let mut engine = Engine::new(&config);
    let mut manager = new_manager(dir.path(), &config);
    // Open at t=660; status updates at 780, 900; restart at 920.
    drive(&mut store, &mut engine, &mut manager, 0, 920);
    let db = IncidentDb::open(dir.path()).expect("db");
    let id = "20261121-001";
    assert_eq!(
        db.events(id).expect("events"),
        [
            "20261121-001/opened",
            "20261121-001/status-update/1",
            "20261121-001/status-update/2"
        ]
    );
    let incident = db.get(id).expect("get").expect("incident");
    let update = &incident.status_updates[1];
    assert_eq!(update.number, 2);
    assert!(update.text.starts_with(&incident.title), "{}", update.text);
    assert!(
        update.text.contains("Status update 2 at 10:15 UTC"),
        "{}",
        update.text
    );
    assert!(
        update.text.contains("Ongoing for 4m since 10:11 UTC."),
        "{}",
        update.text
    );
    assert!(
        update.text.contains("Next update by 10:17 UTC."),
        "{}",
        update.text
    );
    assert!(render::markdown(&incident).contains("### Update 2 — 10:15:00 UTC"));

    // Restart: a fresh engine and manager (the monotonic clock starts again at 0).
    let mut engine = Engine::new(&config);
    let mut manager = new_manager(dir.path(), &config);
    assert_eq!(
        manager
            .resume(&mut engine, Duration::ZERO, wall(920))
            .expect("resume"),
        1
    );
    assert_eq!(engine.firing(), ["cloud-loss/group/group=aws-us-east-1"]);
    // Still breaching for five minutes: no second `opened`, no new incident; then it clears.
    let mut shifted_store = store;
    let transitions = {
        let mut all = Vec::new();
        for t in (920..1800).step_by(20) {
            let records: Vec<Record> = TARGETS.iter().map(|target| round(target, t)).collect();
            shifted_store.insert(&records).expect("insert");
            let mut now = Vec::new();
            for record in &records {
                now.extend(engine.observe(Duration::from_secs(t - 920), record));
            }
            now.extend(engine.tick(Duration::from_secs(t - 920)));
            for transition in &now {
                manager.apply(transition, wall(t)).expect("apply");
            }
            manager
                .tick(Duration::from_secs(t - 920), wall(t))
                .expect("status updates");
            all.extend(now);
        }
        all
    };
    assert!(
        transitions.iter().all(|t| t.kind != TransitionKind::Opened),
        "{transitions:#?}"
    );
    assert_eq!(db.all().expect("all").len(), 1);
    // The duration spans the restart: the wall-clock time open before it, plus the engine's
    // monotonic time after it.
    let incident = db.get(id).expect("get").expect("incident");
    assert_eq!(incident.status, Status::Resolved);
    let resolved = incident.resolved_at.expect("resolved_at").0;
    let wall_open = resolved
        .duration_since(incident.detected_at.0)
        .expect("resolved after detected");
    assert_eq!(incident.duration_s, Some(wall_open.as_secs()));
    assert!(
        incident
            .timeline
            .iter()
            .any(|e| e.event == "restarted" && e.at == Timestamp(wall(920))),
        "{:#?}",
        incident.timeline
    );
    // Updates keep their period across the restart: the third is due 120 s after the second
    // (t=900, so 10:17:00), not 120 s after the restart (10:17:20); and so on until it resolves.
    let times: Vec<String> = incident
        .status_updates
        .iter()
        .map(|u| u.at.time())
        .collect();
    assert_eq!(
        times,
        ["10:13:00", "10:15:00", "10:17:00", "10:19:00", "10:21:00"]
    );
    assert_eq!(
        db.events(id).expect("events")[3..],
        [
            "20261121-001/status-update/3",
            "20261121-001/status-update/4",
            "20261121-001/status-update/5",
            "20261121-001/resolved"
        ],
        "the restart itself is no event"
    );
}

#[test]
fn the_outbox_retries_a_sink_that_is_down_and_delivers_each_event_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config();
    let recorder = Recorder::default();
    let sinks: Vec<Box<dyn IncidentSink>> = vec![
        Box::new(recorder.clone()),
        Box::new(DirectorySink::new(dir.path().join(DIRECTORY))),
    ];
    let mut deliverer =
        Deliverer::new(IncidentDb::open(dir.path()).expect("db"), sinks).expect("deliverer");
    *recorder.down.lock().expect("lock") = true;

    let mut store = Store::open(dir.path()).expect("store");
    let mut engine = Engine::new(&config);
    let mut manager = new_manager(dir.path(), &config);
    drive(&mut store, &mut engine, &mut manager, 0, 3000);

    // The recorder is down: the directory still gets everything, in order.
    assert_eq!(deliverer.run_once().expect("deliver"), 2);
    assert!(recorder.got.lock().expect("lock").is_empty());
    let progress: Vec<String> = IncidentDb::open(dir.path())
        .expect("db")
        .sink_progress("20261121-001")
        .expect("progress")
        .iter()
        .map(|p| format!("{} {}/{} {:?}", p.sink, p.delivered, p.events, p.last_error))
        .collect();
    assert_eq!(
        progress,
        [
            "directory 2/2 None",
            "recorder 0/2 Some(\"connection refused\")"
        ]
    );
    // Retried with backoff: nothing while backing off, then everything once it is back.
    assert_eq!(deliverer.run_once().expect("deliver"), 0);
    *recorder.down.lock().expect("lock") = false;
    std::thread::sleep(outbox::FIRST_BACKOFF + Duration::from_millis(100));
    assert_eq!(deliverer.run_once().expect("deliver"), 2);
    assert_eq!(deliverer.run_once().expect("deliver"), 0, "nothing twice");
    assert_eq!(
        *recorder.got.lock().expect("lock"),
        ["20261121-001/opened", "20261121-001/resolved"]
    );
    let deliveries = IncidentDb::open(dir.path())
        .expect("db")
        .deliveries(None)
        .expect("deliveries");
    let summary: Vec<String> = deliveries
        .iter()
        .map(|d| {
            format!(
                "{} {} attempts={} delivered={} error={}",
                d.idempotency_key,
                d.sink,
                d.attempts,
                d.delivered,
                d.last_error.as_deref().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "20261121-001/opened directory attempts=1 delivered=true error=-",
            "20261121-001/opened recorder attempts=2 delivered=true error=-",
            "20261121-001/resolved directory attempts=1 delivered=true error=-",
            "20261121-001/resolved recorder attempts=1 delivered=true error=-",
        ]
    );

    // A redelivery (a crash between delivering and marking) does not duplicate the event log.
    let db = IncidentDb::open(dir.path()).expect("db");
    let incident = db.get("20261121-001").expect("get").expect("incident");
    let event = OutboxEvent {
        seq: 1,
        idempotency_key: "20261121-001/opened".into(),
        event: EventKind::Opened,
        at: incident.detected_at,
        incident: incident.clone(),
    };
    let mut directory = DirectorySink::new(dir.path().join(DIRECTORY));
    directory.deliver(&event).expect("again");
    let folder = directory.folder("20261121-001");
    let log = std::fs::read_to_string(folder.join("events.jsonl")).expect("events.jsonl");
    assert_eq!(log.lines().count(), 2, "{log}");
    for file in ["incident.md", "incident.json", "chart.svg", "evidence.json"] {
        assert!(folder.join(file).is_file(), "{file}");
    }
}

/// After a mass outage the outbox holds tens of thousands of delivered events, and every poll
/// (two a second, per sink) walked all of them again: 0.3 s a poll at 100,000. A poll now starts
/// after what the sink has got, and still finds what comes later or what failed.
#[test]
fn a_poll_reads_only_what_the_sink_has_not_got() {
    const EVENTS: usize = 300;
    let Driven { dir, .. } = driven(3000);
    let mut db = IncidentDb::open(dir.path()).expect("db");
    let incident = db.get("20261121-001").expect("get").expect("incident");
    let mut update = || {
        db.save(&incident, None, Some(EventKind::Updated))
            .expect("save");
    };
    for _ in 0..EVENTS {
        update();
    }
    let recorder = Recorder::default();
    let mut deliverer = Deliverer::new(
        IncidentDb::open(dir.path()).expect("db"),
        vec![Box::new(recorder.clone())],
    )
    .expect("deliverer");
    // The sink is registered after the first two events: it gets what comes from then on.
    let mut delivered = 0;
    while let n @ 1.. = deliverer.run_once().expect("deliver") {
        delivered += n;
    }
    assert_eq!(delivered, 0, "registered after these events");
    for _ in 0..EVENTS {
        update();
    }
    while let n @ 1.. = deliverer.run_once().expect("deliver") {
        delivered += n;
    }
    assert_eq!(delivered, EVENTS);

    let idle_poll_steps = |deliverer: &mut Deliverer| {
        deliverer.db().pending_steps();
        assert_eq!(deliverer.run_once().expect("deliver"), 0);
        deliverer.db().pending_steps()
    };
    let idle = idle_poll_steps(&mut deliverer);
    assert!(
        idle < 50,
        "an idle poll took {idle} steps: it walked the {EVENTS} delivered events"
    );
    // After a restart, once the first poll has seen that everything is delivered.
    let mut deliverer = Deliverer::new(
        IncidentDb::open(dir.path()).expect("db"),
        vec![Box::new(recorder.clone())],
    )
    .expect("deliverer");
    assert_eq!(deliverer.run_once().expect("deliver"), 0);
    let idle = idle_poll_steps(&mut deliverer);
    assert!(
        idle < 50,
        "an idle poll after a restart took {idle} steps: it walked the {EVENTS} delivered events"
    );
    // What comes later, and what failed and is retried, are still found.
    update();
    *recorder.down.lock().expect("lock") = true;
    assert_eq!(deliverer.run_once().expect("deliver"), 0);
    *recorder.down.lock().expect("lock") = false;
    update();
    std::thread::sleep(outbox::FIRST_BACKOFF + Duration::from_millis(100));
    assert_eq!(deliverer.run_once().expect("deliver"), 2);
    let got = recorder.got.lock().expect("lock").clone();
    let unique: std::collections::BTreeSet<&String> = got.iter().collect();
    assert_eq!((got.len(), unique.len()), (EVENTS + 2, EVENTS + 2));
    assert_eq!(
        got.last().map(String::as_str),
        Some(&*format!("20261121-001/updated/{}", 2 * EVENTS + 2))
    );
}

#[test]
fn the_chart_parses_back_with_bands_median_loss_and_marks() {
    let Driven { dir, .. } = driven(3000);
    let incident = IncidentDb::open(dir.path())
        .expect("db")
        .get("20261121-001")
        .expect("get")
        .expect("incident");
    let svg = chart::render(&incident);
    let doc = roxmltree::Document::parse(&svg).expect("the chart is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let panels = incident.evidence.series.len();
    assert_eq!(panels, 3, "one panel per affected target");
    assert_eq!(
        root.attribute("height"),
        Some(format!("{}", 50 + 3 * 200).as_str())
    );
    let class = |name: &str| {
        doc.descendants()
            .filter(|n| n.attribute("class") == Some(name))
            .collect::<Vec<_>>()
    };
    let title = doc
        .descendants()
        .find(|n| n.has_tag_name("title"))
        .and_then(|n| n.text());
    assert_eq!(title, Some(incident.title.as_str()));
    assert_eq!(class("panel").len(), 3);
    assert!(class("smoke-p10-p90").len() >= 3 && class("smoke-p25-p75").len() >= 3);
    for polygon in class("smoke-p10-p90") {
        let points = polygon.attribute("points").expect("points");
        assert!(points.split(' ').count() >= 3, "{points}");
    }
    let medians = class("median");
    assert!(
        medians.len() > 100,
        "a median segment per round: {}",
        medians.len()
    );
    let colours: std::collections::BTreeSet<&str> = medians
        .iter()
        .filter_map(|m| m.attribute("stroke"))
        .collect();
    // Green before and after, orange for 30–40% loss.
    assert!(colours.contains(chart::loss_colour(0.0)), "{colours:?}");
    assert!(colours.contains(chart::loss_colour(35.0)), "{colours:?}");
    // aws-c's minute of total loss: full-height red bars.
    let red_bars = class("loss")
        .into_iter()
        .filter(|r| r.attribute("fill") == Some(chart::loss_colour(100.0)))
        .count();
    assert_eq!(red_bars, 3, "aws-c lost every echo of 3 rounds");
    assert_eq!(class("detected").len(), 6, "a line and a label per panel");
    assert_eq!(class("resolved").len(), 6);
    let labels: Vec<&str> = class("panel-title")
        .iter()
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(labels, ["aws-a (ping)", "aws-b (ping)", "aws-c (ping)"]);

    // The time axis: five labels per panel; it starts at the window, or at the first data point
    // when the store has nothing older (an agent started just before the breach).
    let x_labels = |svg: &str| -> Vec<String> {
        let doc = roxmltree::Document::parse(svg).expect("xml");
        doc.descendants()
            .filter(|n| n.attribute("class") == Some("x-label"))
            .filter_map(|n| n.text().map(String::from))
            .collect()
    };
    let axis = x_labels(&svg);
    assert_eq!(axis.len(), 15, "{axis:?}");
    assert_eq!(axis[0], "10:01:00", "the window's start: {axis:?}");
    let mut without_history = incident.clone();
    without_history.evidence.window_from = Some(Timestamp(wall(0) - Duration::from_secs(3600)));
    let axis = x_labels(&chart::render(&without_history));
    assert_eq!(
        axis[0], "10:01:00",
        "the first data point, not 09:00: {axis:?}"
    );
}

#[test]
fn svg_text_is_escaped() {
    assert_eq!(chart::escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    let mut svg = chart::Svg::default();
    svg.text("t", 0.0, 0.0, "start", "<script>&");
    let doc = svg.finish(10.0, 10.0, "x & y");
    let parsed = roxmltree::Document::parse(&doc).expect("well-formed");
    let texts: Vec<&str> = parsed.descendants().filter_map(|n| n.text()).collect();
    assert!(
        texts.contains(&"<script>&") && texts.contains(&"x & y"),
        "{texts:?}"
    );
}

#[test]
fn titles_name_symptom_and_scope() {
    use crate::rules::{Impact, Metric, Scope, TargetImpact};
    let member = |target: &str, value: f64| TargetImpact {
        probe: "ping".into(),
        target: target.into(),
        value: Some(value),
        baseline: None,
        failure: None,
    };
    let impact = |affected: Vec<TargetImpact>, total, metric| {
        let values: Vec<f64> = affected.iter().filter_map(|m| m.value).collect();
        Impact {
            metric,
            value: Some(values.iter().sum::<f64>() / values.len() as f64),
            worst: values.iter().copied().reduce(f64::max),
            affected,
            total_targets: total,
        }
    };
    let loss = impact(
        vec![member("a", 30.0), member("b", 34.0), member("c", 38.0)],
        4,
        Metric::LossPct,
    );
    let group = Scope::Group {
        label: "group".into(),
        value: "aws-us-east-1".into(),
    };
    assert_eq!(
        format!(
            "{} {}",
            render::symptom(&loss),
            render::scope_phrase(&group, &loss)
        ),
        "34% packet loss to aws-us-east-1 (3 of 4 targets)"
    );
    let all = impact(
        vec![member("a", 100.0), member("b", 100.0)],
        2,
        Metric::LossPct,
    );
    assert_eq!(
        format!(
            "{} {}",
            render::symptom(&all),
            render::scope_phrase(&Scope::Agent, &all)
        ),
        "100% packet loss from this agent (agent-side: 2 of 2 targets)"
    );
    let mut slow = impact(
        vec![member("a", 180.0)],
        1,
        Metric::LatencyMs(crate::config::LatencyField::Median),
    );
    slow.affected[0].baseline = Some(58.0);
    assert_eq!(
        format!(
            "{} {}",
            render::symptom(&slow),
            render::scope_phrase(&Scope::Target { target: "a".into() }, &slow)
        ),
        "high latency (rtt_median_ms 180 ms, 3.1× its baseline of 58.0 ms) to a"
    );
    assert_eq!(render::human_duration(Duration::from_secs(4200)), "1h 10m");
    assert_eq!(render::human_duration(Duration::from_secs(200)), "3m 20s");
    assert_eq!(render::human_duration(Duration::from_secs(45)), "45s");
}

#[test]
fn an_open_incident_whose_rule_left_the_config_is_resolved_at_start() {
    let Driven { dir, config, .. } = driven(700);
    let db = IncidentDb::open(dir.path()).expect("db");
    assert_eq!(db.open_incidents().expect("open").len(), 1);

    let mut without_rules = config.clone();
    without_rules.rules.clear();
    let mut engine = Engine::new(&without_rules);
    let mut manager = new_manager(dir.path(), &without_rules);
    assert_eq!(
        manager
            .resume(&mut engine, Duration::ZERO, wall(800))
            .expect("resume"),
        0
    );
    let incident = db.get("20261121-001").expect("get").expect("incident");
    assert_eq!(incident.status, Status::Resolved);
    assert!(
        incident
            .timeline
            .last()
            .is_some_and(|e| e.text.contains("no longer in the config")),
        "{:#?}",
        incident.timeline
    );
    assert_eq!(
        db.events("20261121-001").expect("events"),
        ["20261121-001/opened", "20261121-001/resolved"]
    );
}

/// A reload reads only the drafts it resolves: a mass outage leaves 10,000 open, and reading
/// every one at once took 300 MB (`scripts/bench-aftermath`). A draft it keeps is not even
/// parsed: here one this build cannot read.
#[test]
fn a_reload_reads_only_the_drafts_it_resolves() {
    let Driven {
        dir,
        config,
        mut engine,
        mut manager,
        ..
    } = driven(700);
    let open = IncidentDb::open(dir.path())
        .expect("db")
        .open_keys()
        .expect("open");
    assert_eq!(open.len(), 1);
    let kept = open[0].1.replace("aws-us-east-1", "west");
    assert!(engine.alert_keys().any(|k| k == kept), "{kept}");
    rusqlite::Connection::open(dir.path().join("incidents.db"))
        .expect("sqlite")
        .execute(
            "INSERT INTO incidents (id, seq, key, status, opened_ns, data)
             VALUES ('20261121-999', 999, ?1, 'open', 0, '{\"from\": \"a later build\"}')",
            [&kept],
        )
        .expect("insert");
    let resolved = manager
        .reconfigure(&mut engine, &config, Box::new(NoDiagnostics), wall(800))
        .expect("a reload that keeps both reads neither");
    assert!(resolved.is_empty(), "{resolved:?}");
}

#[test]
fn each_event_is_one_incident_point_that_influxdata_parses_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config();
    IncidentDb::open(dir.path())
        .expect("db")
        .register_sink("points")
        .expect("register");
    let mut store = Store::open(dir.path()).expect("store");
    let mut engine = Engine::new(&config);
    let mut manager = new_manager(dir.path(), &config);
    drive(&mut store, &mut engine, &mut manager, 0, 3000);
    let events = IncidentDb::open(dir.path())
        .expect("db")
        .pending("points", 0, 100)
        .expect("events")
        .events;
    let lines: Vec<String> = events
        .iter()
        .map(|e| outputs::incident_point(e).line().expect("a line"))
        .collect();
    let joined = lines.join("\n");
    let parsed: Vec<_> = influxdb_line_protocol::parse_lines(&joined)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {joined}"));
    assert_eq!(parsed.len(), 2, "{joined}");
    let tag = |line: &influxdb_line_protocol::ParsedLine, key: &str| {
        line.series
            .tag_set
            .as_ref()
            .and_then(|tags| tags.iter().find(|(k, _)| k.as_str() == key))
            .map(|(_, v)| v.to_string())
    };
    let field = |line: &influxdb_line_protocol::ParsedLine, key: &str| {
        line.field_set
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v.to_string())
    };
    for (line, (event, state)) in parsed
        .iter()
        .zip([("opened", "open"), ("resolved", "resolved")])
    {
        assert_eq!(line.series.measurement.as_str(), "incident");
        assert_eq!(tag(line, "event").as_deref(), Some(event));
        assert_eq!(tag(line, "rule").as_deref(), Some("cloud-loss"));
        assert_eq!(tag(line, "scope").as_deref(), Some("group"));
        assert_eq!(tag(line, "severity").as_deref(), Some("major"));
        assert_eq!(tag(line, "site").as_deref(), Some("scl3"));
        assert_eq!(
            tag(line, "fleet_key").as_deref(),
            Some("group/group=aws-us-east-1")
        );
        assert_eq!(field(line, "id").as_deref(), Some("20261121-001"));
        assert_eq!(field(line, "state").as_deref(), Some(state));
        assert_eq!(
            field(line, "subject").as_deref(),
            Some("group=aws-us-east-1")
        );
        assert_eq!(field(line, "total_targets").as_deref(), Some("4i"));
    }
    let opened = &parsed[0];
    assert_eq!(
        field(opened, "targets").as_deref(),
        Some("aws-a,aws-b,aws-c")
    );
    assert_eq!(field(opened, "affected").as_deref(), Some("3i"));
    assert!(
        field(opened, "summary").is_some_and(|s| s.starts_with("Draft opened by agent")),
        "{joined}"
    );
    assert!(field(opened, "duration_s").is_none(), "{joined}");
    assert_eq!(opened.timestamp, Some(events[0].at.unix_ns()));
    let resolved = &parsed[1];
    assert!(field(resolved, "duration_s").is_some(), "{joined}");
}

const SERVICE_CONFIG: &str = r#"
[agent]
name = "scl3-probe-01"
site = "scl3"

[incidents]
status_updates = "30m"
history = "10m"

[[target]]
name = "web"
host = "198.18.20.1"
site = "sjc1"
[[target]]
name = "api"
host = "198.18.20.2"
site = "sjc1"
[[target]]
name = "resolver"
host = "198.18.20.53"
site = "sjc1"

[[probe]]
name = "health"
kind = "http"
interval = "20s"
timeout = "5s"
scheme = "http"
path = "/health"
expect_status = [200]
targets = ["web", "api"]

[[probe]]
name = "www"
kind = "dns"
interval = "20s"
timeout = "1s"
query = "www.vantage.test"
record_type = "A"
targets = ["resolver"]

[[probe]]
name = "web-port"
kind = "tcp"
interval = "20s"
timeout = "1s"
port = 80
targets = ["web"]

[[rule]]
name = "web-down"
kind = "failures"
probes = ["health"]
failures = 3
runs = 5
for = "20s"
clear_for = "1m"
min_hold = "5m"
"#;

fn service_record(
    probe: &str,
    target: &str,
    t: u64,
    outcome: Outcome,
    measurement: Measurement,
) -> Record {
    Record {
        agent: "scl3-probe-01".into(),
        site: "scl3".into(),
        probe: probe.into(),
        target: target.into(),
        target_site: "sjc1".into(),
        address: Some(format!(
            "198.18.20.{}",
            if target == "resolver" { 53 } else { 1 }
        )),
        observation: Observation {
            started_at: wall(t),
            duration: Duration::from_millis(15),
            outcome,
            measurement,
        },
    }
}

/// What the service checks see at `t`: `web` answers 503 from t=600 to t=1200 (its port still
/// accepts connections), `api` and the resolver are fine throughout.
fn service_round(t: u64) -> Vec<Record> {
    let http = |target: &str| {
        let failing = target == "web" && (600..1200).contains(&t);
        let stats = probes::HttpStats {
            method: "GET".into(),
            status_code: Some(if failing { 503 } else { 200 }),
            resolve_ms: Some(0.0),
            connect_ms: Some(0.5),
            tls_ms: None,
            processing_ms: Some(if failing { 2.0 } else { 12.0 }),
            transfer_ms: Some(0.1),
            total_ms: if failing { 2.6 } else { 12.6 },
            ..Default::default()
        };
        let outcome = if failing {
            Outcome::failure(FailureKind::Status, "status 503, expected [200]")
        } else {
            Outcome::Success
        };
        service_record("health", target, t, outcome, Measurement::Http(stats))
    };
    let dns = probes::DnsStats {
        server: "198.18.20.53:53".into(),
        record_type: "A".into(),
        rcode: Some("NOERROR".into()),
        latency_ms: Some(4.2),
        answers: 1,
        records: vec!["198.18.0.10".into()],
        authoritative: true,
        truncated: false,
    };
    let tcp = probes::TcpStats {
        connect_ms: Some(0.3),
        resolve_ms: Some(0.0),
        address: Some("198.18.20.1:80".parse().expect("address")),
    };
    vec![
        http("web"),
        http("api"),
        service_record(
            "www",
            "resolver",
            t,
            Outcome::Success,
            Measurement::Dns(dns),
        ),
        service_record(
            "web-port",
            "web",
            t,
            Outcome::Success,
            Measurement::Tcp(tcp),
        ),
    ]
}

#[test]
fn a_failing_http_check_becomes_a_draft_with_its_phases_and_the_healthy_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config =
        Config::parse(SERVICE_CONFIG, Path::new("vantage.toml")).unwrap_or_else(|e| panic!("{e}"));
    let mut store = Store::open(dir.path()).expect("store");
    let mut engine = Engine::new(&config);
    let mut manager = new_manager(dir.path(), &config);
    let transitions = drive_with(
        &mut store,
        &mut engine,
        &mut manager,
        0,
        1000,
        service_round,
    );
    let kinds: Vec<String> = transitions
        .iter()
        .map(|t| format!("{} {}", t.kind.as_str(), t.key))
        .collect();
    assert_eq!(kinds, ["opened web-down/target/web"]);
    let db = IncidentDb::open(dir.path()).expect("db");
    let incident = db.get("20261121-001").expect("get").expect("incident");
    assert_eq!(
        incident.title,
        "2026-11-21 [scl3] failing checks (80% of runs) to web"
    );
    let md = render::markdown(&incident);
    let scope = section(&md, "Scope and localization");
    assert!(
        scope.contains("All 3 other service checks measured from this agent are healthy"),
        "{scope}"
    );
    let evidence = section(&md, "Evidence");
    assert!(
        !evidence.contains("### Latency and loss") && !evidence.contains("### Failing results"),
        "no ping history to show: {evidence}"
    );
    // The check's history: healthy before the breach, 503s since 10:10:00.
    assert!(
        evidence.contains(
            "**web** (health, http): 31 runs, 4 failed; median total_ms 12.6 ms over the successful runs."
        ),
        "{evidence}"
    );
    assert!(
        evidence.contains("| 10:09:40 | ok | 200 | 12.6 ms |  |"),
        "{evidence}"
    );
    assert!(
        evidence
            .contains("| 10:10:00 | failed | 503 | 2.6 ms | status: status 503, expected [200] |"),
        "{evidence}"
    );
    // The failing runs, newest first, with every phase.
    assert!(
        evidence.contains(
            "**http**\n\n| time (UTC) | target | probe | status | failure | resolve | connect | tls | processing | transfer | total |"
        ),
        "{evidence}"
    );
    let failing: Vec<&str> = evidence
        .lines()
        .filter(|l| l.contains("| web | health | 503 |"))
        .collect();
    assert_eq!(
        failing,
        [
            "| 10:11:00 | web | health | 503 | status: status 503, expected [200] | 0.0 ms | 0.5 ms | - | 2.0 ms | 0.1 ms | 2.6 ms |",
            "| 10:10:40 | web | health | 503 | status: status 503, expected [200] | 0.0 ms | 0.5 ms | - | 2.0 ms | 0.1 ms | 2.6 ms |",
            "| 10:10:20 | web | health | 503 | status: status 503, expected [200] | 0.0 ms | 0.5 ms | - | 2.0 ms | 0.1 ms | 2.6 ms |",
            "| 10:10:00 | web | health | 503 | status: status 503, expected [200] | 0.0 ms | 0.5 ms | - | 2.0 ms | 0.1 ms | 2.6 ms |",
        ]
    );
    // The contrast: the other http target, the resolver, and web's own port, which still accepts.
    assert!(
        evidence.contains("3 of 3 healthy (latest check run succeeded)."),
        "{evidence}"
    );
    for row in [
        "| api | sjc1 | health | http | healthy | 200 | 12.6 ms |  | 10:11:00 |",
        "| web | sjc1 | web-port | tcp | healthy | connected | 0.3 ms |  | 10:11:00 |",
        "| resolver | sjc1 | www | dns | healthy | NOERROR, 1 answer | 4.2 ms |  | 10:11:00 |",
    ] {
        assert!(evidence.contains(row), "{row:?} in {evidence}");
    }

    // The same data as JSON.
    let json = serde_json::to_value(&incident).expect("json");
    let checks = &json["evidence"]["checks"];
    assert_eq!(checks.as_array().map(Vec::len), Some(1), "{checks}");
    assert_eq!(checks[0]["kind"], "http");
    assert_eq!(checks[0]["runs"].as_array().map(Vec::len), Some(31));
    let newest = &json["evidence"]["failing_checks"][0];
    assert_eq!(newest["target"], "web");
    assert_eq!(newest["run"]["at"], "2026-11-21T10:11:00Z");
    assert_eq!(newest["run"]["failure_kind"], "status");
    assert_eq!(newest["run"]["figures"]["kind"], "http");
    assert_eq!(newest["run"]["figures"]["status_code"], 503);
    assert_eq!(newest["run"]["figures"]["processing_ms"], 2.0);
    assert_eq!(
        json["evidence"]["other_checks"][2]["figures"]["records"][0],
        "198.18.0.10"
    );
    assert_eq!(json["evidence"]["series"], serde_json::json!([]));

    // Resolved at 10:22:20, the draft still shows the failures (30, the newest 20 listed), and
    // the chart has a panel for the check with every failed run in the window as a red bar.
    drive_with(
        &mut store,
        &mut engine,
        &mut manager,
        1000,
        3000,
        service_round,
    );
    let incident = db.get("20261121-001").expect("get").expect("incident");
    assert_eq!(incident.status, Status::Resolved);
    let md = render::markdown(&incident);
    assert!(
        md.contains("**web** (health, http): 65 runs, 30 failed;"),
        "{md}"
    );
    assert_eq!(
        md.lines()
            .filter(|l| l.contains("| web | health | 503 |"))
            .count(),
        evidence::MAX_FAILURES
    );
    let svg = chart::render(&incident);
    let doc = roxmltree::Document::parse(&svg).expect("well-formed chart");
    let class = |name: &str| {
        doc.descendants()
            .filter(|n| n.attribute("class") == Some(name))
            .collect::<Vec<_>>()
    };
    let labels: Vec<&str> = class("panel-title")
        .iter()
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(labels, ["web (health: http total_ms, failed runs red)"]);
    assert_eq!(class("loss").len(), 30, "a red bar per failed run");
    assert_eq!(
        class("median").len(),
        34,
        "the total time of the 35 successful runs: a segment between each two"
    );
}

/// An incident as saved before service checks were gathered: it must still load, and render.
#[test]
fn an_incident_saved_before_service_check_evidence_still_loads() {
    let old = r#"{
      "id": "20261120-003", "key": "loss/target/dead",
      "rule": {"name": "loss", "condition": "loss above 20% over the last 10 echoes (clears at or below 10%), for 2s"},
      "severity": "major", "scope": {"kind": "target", "target": "dead"},
      "agent": "e2e", "site": "lab", "status": "resolved",
      "title": "2026-11-20 [lab] 100% packet loss to dead",
      "detected_at": "2026-11-20T09:00:00Z", "updated_at": "2026-11-20T09:05:00Z",
      "resolved_at": "2026-11-20T09:05:00Z", "duration_s": 300,
      "impact": {"metric": "loss_pct", "affected": [], "total_targets": 3, "value": null, "worst": null},
      "peak": {"value": 100.0, "affected_targets": 1},
      "timeline": [{"at": "2026-11-20T09:00:00Z", "event": "opened", "text": "Draft opened."}],
      "status_updates": [], "trace": null,
      "evidence": {
        "window_from": "2026-11-20T08:55:00Z", "window_to": "2026-11-20T09:05:00Z",
        "series": [{"probe": "ping", "target": "dead", "points": [
          {"timestamp_ns": 1795251600000000000, "address": "127.0.0.3", "failure_kind": "timeout",
           "failure": "no reply within 300ms", "sent": 5, "loss_pct": 100.0, "rtt_p10_ms": null,
           "rtt_p25_ms": null, "rtt_median_ms": null, "rtt_p75_ms": null, "rtt_p90_ms": null}]}],
        "failing": [{"at": "2026-11-20T09:00:00Z", "probe": "ping", "target": "dead",
          "address": "127.0.0.3", "kind": "timeout", "error": "no reply within 300ms", "loss_pct": 100.0}],
        "others": [{"probe": "ping", "target": "lo-1", "target_site": "local", "healthy": true,
          "loss_pct": 0.0, "rtt_median_ms": 0.05, "failure": null, "last_seen": "2026-11-20T09:05:00Z"}]
      },
      "status_update_every_s": 1800
    }"#;
    let incident: Incident = serde_json::from_str(old).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(incident.evidence.series[0].points.len(), 1);
    assert!(incident.evidence.checks.is_empty());
    assert!(incident.evidence.failing_checks.is_empty());
    assert!(incident.evidence.other_checks.is_empty());
    let md = render::markdown(&incident);
    let evidence = section(&md, "Evidence");
    assert!(
        evidence
            .contains("| 09:00:00 | dead | ping | 127.0.0.3 | timeout | no reply within 300ms |"),
        "{evidence}"
    );
    assert!(
        evidence.contains("1 of 1 healthy (latest round answered with under 5% loss)."),
        "{evidence}"
    );
    assert!(!evidence.contains("### Service checks"), "{evidence}");
}

#[test]
fn a_new_path_to_an_affected_target_is_an_update_with_the_path() {
    let Driven {
        dir, mut manager, ..
    } = driven(700); // open since t=660
    let trace = |target: &str, changed: bool| {
        let hop = |ttl: u8, address: Option<&str>| probes::trace::Hop {
            ttl,
            addresses: address
                .into_iter()
                .map(|a| a.parse().expect("address"))
                .collect(),
            sent: 10,
            received: if address.is_some() { 10 } else { 0 },
            loss_pct: if address.is_some() { 0.0 } else { 100.0 },
            rtt_last_ms: None,
            rtt_avg_ms: None,
            rtt_best_ms: None,
            rtt_worst_ms: None,
            rtt_stddev_ms: None,
        };
        let mut report = probes::trace::TraceReport::new(
            "198.18.10.1".parse().expect("address"),
            vec![
                hop(1, Some("198.18.0.1")),
                hop(2, None),
                hop(3, Some("198.18.10.1")),
            ],
        );
        report.path_changed = changed;
        let mut record = round(target, 700);
        record.probe = "path".into();
        record.observation.measurement = Measurement::Trace(report);
        record
    };
    let db = IncidentDb::open(dir.path()).expect("db");
    let id = "20261121-001";
    // The same path again, or a new path to a target outside the incident: nothing.
    manager
        .path_changed(&trace("aws-a", false), wall(700))
        .expect("same path");
    manager
        .path_changed(&trace("sjc1-core", true), wall(700))
        .expect("other target");
    assert_eq!(db.events(id).expect("events"), ["20261121-001/opened"]);
    // A new path to an affected target: an update, with the path in the timeline.
    manager
        .path_changed(&trace("aws-a", true), wall(710))
        .expect("path change");
    assert_eq!(
        db.events(id).expect("events"),
        ["20261121-001/opened", "20261121-001/updated/1"]
    );
    let incident = db.get(id).expect("get").expect("incident");
    let last = incident.timeline.last().expect("an entry");
    assert_eq!(last.at, Timestamp(wall(710)));
    assert_eq!(
        last.text,
        "The path to aws-a changed (trace probe `path`): 3 hops, 198.18.0.1 → ??? → 198.18.10.1."
    );
}

/// The whole status document, byte for byte, for a fixed incident (deterministic times): opened
/// by group loss, two status updates, resolved. A change to the renderer shows up as a diff to
/// review here; `UPDATE_GOLDEN=1` rewrites the file (never in CI).
#[test]
fn the_status_document_matches_the_golden_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config();
    config.incidents.status_updates = Duration::from_secs(120);
    let mut store = Store::open(dir.path()).expect("store");
    let mut engine = Engine::new(&config);
    let mut manager = new_manager(dir.path(), &config);
    drive(&mut store, &mut engine, &mut manager, 0, 1600);
    let incident = IncidentDb::open(dir.path())
        .expect("db")
        .get("20261121-001")
        .expect("get")
        .expect("incident");
    assert!(incident.resolved_at.is_some(), "the fixture resolves");
    let mut incident = incident;
    incident.fleet = Some(golden_fleet_view(&incident));
    let md = render::markdown(&incident);

    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/incident/golden/incident.md");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "UPDATE_GOLDEN in CI would make this test pass whatever it renders"
        );
        std::fs::write(&golden, &md).expect("write the golden file");
    }
    let expected = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (create it with UPDATE_GOLDEN=1)", golden.display()));
    if md != expected {
        let (line, (got, want)) = md
            .lines()
            .zip(expected.lines())
            .enumerate()
            .find(|(_, (got, want))| got != want)
            .unwrap_or((
                md.lines().count().min(expected.lines().count()),
                ("(end)", "(end)"),
            ));
        panic!(
            "the status document differs from {} at line {}:\n  rendered: {got}\n  golden:   {want}\n\
             review the change, then rewrite the file with UPDATE_GOLDEN=1\n--- rendered ---\n{md}",
            golden.display(),
            line + 1
        );
    }
}

/// Diagnostics that are not done until the test says so.
#[derive(Clone, Default)]
struct Gate(Arc<std::sync::atomic::AtomicBool>);

impl Diagnostics for Gate {
    fn start(&self, _key: &str, _targets: &[(String, String)]) -> Box<dyn PendingDiagnosis> {
        Box::new(self.clone())
    }
}

impl PendingDiagnosis for Gate {
    fn poll(&mut self, force: bool) -> Option<Diagnosis> {
        (force || self.0.load(std::sync::atomic::Ordering::Relaxed)).then(|| Diagnosis {
            trace: None,
            notes: vec!["Gate: diagnosed.".into()],
        })
    }
}

/// The events of the one incident in `dir`, as `kind`s in outbox order.
fn event_kinds(dir: &Path) -> Vec<String> {
    let db = IncidentDb::open(dir).expect("db");
    let incidents = db.all().expect("incidents");
    let Some(incident) = incidents.first() else {
        return Vec::new();
    };
    db.events(&incident.id)
        .expect("events")
        .iter()
        .map(|key| key.split('/').nth(1).expect("kind").to_string())
        .collect()
}

/// Issue 11: the disk was full when the breach began; the opening was lost until a restart. It
/// is kept and recorded once the database takes writes again — with the detection time, and the
/// delay in its timeline — and the resolution that came meanwhile follows it, in order.
#[test]
fn a_transition_the_database_refused_is_recorded_in_order_once_it_can_be() {
    let Driven {
        dir,
        mut store,
        mut engine,
        mut manager,
        ..
    } = driven(600);
    manager.db().set_full(true);
    // Opened at t=660, resolved at t=1500; the database refuses both.
    let kinds: Vec<&str> = drive(&mut store, &mut engine, &mut manager, 600, 1600)
        .iter()
        .map(|t| t.kind.as_str())
        .collect();
    assert_eq!(kinds, ["opened", "resolved"]);
    assert_eq!(manager.queued(), 2);
    assert!(event_kinds(dir.path()).is_empty());

    manager.db().set_full(false);
    manager
        .tick(Duration::from_secs(1600), wall(1600))
        .expect("tick");
    assert_eq!(manager.queued(), 0);
    assert_eq!(event_kinds(dir.path()), ["opened", "resolved"]);
    let incident = IncidentDb::open(dir.path())
        .and_then(|db| db.all())
        .expect("incidents")
        .remove(0);
    assert_eq!(incident.detected_at, Timestamp(wall(660)));
    assert_eq!(incident.status, Status::Resolved);
    let delays: Vec<String> = incident
        .timeline
        .iter()
        .filter(|e| e.event == "delayed")
        .map(|e| format!("{} {}", e.at.time(), e.text))
        .collect();
    assert_eq!(
        delays,
        [
            "10:26:40 Recorded 15m 40s after detection: incident state could not be written: database or disk is full.",
            "10:26:40 Recorded 5m 20s after detection: incident state could not be written: database or disk is full."
        ],
        "{:#?}",
        incident.timeline
    );
}

/// Issue 11: evidence was gathered on the rules thread, one incident at a time. Now an opening
/// waits for its diagnostics without holding up the rules, a later transition of the same key
/// waits behind it, and the draft says when the breach was detected, not when it was written.
#[test]
fn an_opening_waits_for_its_diagnostics_and_keeps_the_detection_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config();
    let mut store = Store::open(dir.path()).expect("store");
    let mut engine = Engine::new(&config);
    let gate = Gate::default();
    let mut manager = Manager::new(
        IncidentDb::open(dir.path()).expect("incidents.db"),
        Some(Store::open(dir.path()).expect("store")),
        &config,
        Box::new(gate.clone()),
    );
    let kinds: Vec<&str> = drive(&mut store, &mut engine, &mut manager, 0, 1600)
        .iter()
        .map(|t| t.kind.as_str())
        .collect();
    assert_eq!(kinds, ["opened", "resolved"]);
    assert_eq!(
        manager.queued(),
        2,
        "both wait for the opening's diagnostics"
    );
    assert!(event_kinds(dir.path()).is_empty());

    gate.0.store(true, std::sync::atomic::Ordering::Relaxed);
    manager
        .tick(Duration::from_secs(1600), wall(1600))
        .expect("tick");
    assert_eq!(event_kinds(dir.path()), ["opened", "resolved"]);
    let incident = IncidentDb::open(dir.path())
        .and_then(|db| db.all())
        .expect("incidents")
        .remove(0);
    assert_eq!(incident.detected_at.display(), "2026-11-21 10:11:00 UTC");
    let timeline: Vec<String> = incident
        .timeline
        .iter()
        .map(|e| format!("{} {}", e.at.time(), e.event))
        .collect();
    assert_eq!(
        timeline,
        [
            "10:10:20 breach",
            "10:11:00 opened",
            "10:11:00 diagnostics",
            "10:21:20 resolved"
        ]
    );
}

/// Stopping does not wait for diagnostics: what is waiting is recorded without them.
#[test]
fn stopping_records_an_opening_without_waiting_for_its_diagnostics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config();
    let mut store = Store::open(dir.path()).expect("store");
    let mut engine = Engine::new(&config);
    let mut manager = Manager::new(
        IncidentDb::open(dir.path()).expect("incidents.db"),
        Some(Store::open(dir.path()).expect("store")),
        &config,
        Box::new(Gate::default()),
    );
    drive(&mut store, &mut engine, &mut manager, 0, 700);
    assert_eq!(manager.queued(), 1);
    manager.stop(wall(700));
    assert_eq!(manager.queued(), 0);
    assert_eq!(event_kinds(dir.path()), ["opened"]);
}

/// What the fleet's store said for the golden incident: two more sites, one healthy with a trace,
/// one silent for 4 minutes.
fn golden_fleet_view(incident: &Incident) -> FleetEvidence {
    use crate::fleet::query::{PeerHop, PeerTrace, SiteFigures, unix_ms};
    use crate::fleet::{FleetView, verdict::verdict};
    let until = unix_ms(incident.detected_at.0);
    let target = incident.impact.affected_targets()[0].to_string();
    let row = |site: &str, sent: u64, received: u64, last: i64| SiteFigures {
        site: site.into(),
        agent: format!("agent-{site}"),
        target: target.clone(),
        sent,
        received,
        rounds: sent / 10,
        failed_rounds: 0,
        median_ms: (received > 0).then_some(12.5),
        check_runs: 0,
        check_failures: 0,
        last_report_ms: Some(until - last),
        trace: None,
    };
    let mut healthy = row("sjc1", 120, 120, 2_000);
    healthy.trace = Some(PeerTrace {
        at_ms: until - 30_000,
        hops: ["198.18.11.1", "198.18.20.1", "198.19.0.1"]
            .iter()
            .enumerate()
            .map(|(i, a)| PeerHop {
                ttl: i as u32 + 1,
                address: Some((*a).into()),
                loss_pct: Some(0.0),
            })
            .collect(),
    });
    let view = FleetView {
        from_ms: until - 120_000,
        until_ms: until,
        rows: vec![
            row(&incident.site, 120, 60, 1_000),
            healthy,
            row("iad1", 0, 0, 240_000),
        ],
        site_last_report_ms: [("iad1".to_string(), until - 240_000)].into(),
    };
    let targets = vec![target];
    FleetEvidence {
        at: incident.detected_at,
        verdict: Some(verdict(&view, Some(&incident.site), &targets, until)),
        targets,
        view: Some(view),
        unavailable: None,
        incidents: Vec::new(),
    }
}

#[test]
fn a_fleet_incident_read_from_the_store_stays_one_line_of_text_in_the_draft() {
    // Every string here comes from the shared store's tags and fields: whoever can write there
    // must not be able to add lines to a draft, end its code spans or send terminal escapes.
    let hostile = crate::fleet::FleetIncident {
        fleet_key: "target/x`\n## Verdict\nall fine".into(),
        rule: "r`\x1b[2J".into(),
        evaluator: "fleet\r\nEngage: nobody".into(),
        id: Some("1\n2".into()),
        title: Some("t | \x1b]0;pwned\x07".into()),
        opened_ms: 0,
        sites_seeing: Some(1),
        sites_total: Some(3),
    };
    let line = render::fleet_incident_line(&hostile);
    assert!(!line.chars().any(char::is_control), "{line:?}");
    assert!(
        line.contains("fleet key `target/x' ## Verdict all fine`"),
        "{line:?}"
    );
    assert!(
        line.contains("evaluator `fleet  Engage: nobody`"),
        "{line:?}"
    );
    assert!(line.contains("t \\| "), "{line:?}");
    let untitled = crate::fleet::FleetIncident {
        title: None,
        ..hostile
    };
    let line = render::fleet_incident_line(&untitled);
    assert!(!line.chars().any(char::is_control), "{line:?}");
    assert!(line.contains("rule `r' [2J`"), "{line:?}");
}

/// Diagnostics not done until the test says so, counting how often they are asked.
#[derive(Clone, Default)]
struct CountingGate {
    open: Arc<std::sync::atomic::AtomicBool>,
    polls: Arc<std::sync::atomic::AtomicUsize>,
}

impl Diagnostics for CountingGate {
    fn start(&self, _key: &str, _targets: &[(String, String)]) -> Box<dyn PendingDiagnosis> {
        Box::new(self.clone())
    }
}

impl PendingDiagnosis for CountingGate {
    fn poll(&mut self, force: bool) -> Option<Diagnosis> {
        use std::sync::atomic::Ordering::Relaxed;
        self.polls.fetch_add(1, Relaxed);
        (force || self.open.load(Relaxed)).then(Diagnosis::default)
    }
}

/// A mass outage: every one of 300 targets breaches its per-target rule at once (a link cut with
/// no agent-scope rule, or a region holding under its share of the targets). At 10,000 targets
/// this made every opening re-poll every waiting one (quadratic: 50 million polls), listed all
/// 9,999 others in each draft (4 MB of state and 6 MB of files per draft; 1.9 GB for the first
/// 500), and held the rules thread until it dropped observations. Now each opening is polled a
/// bounded number of times, recording yields to the rules each tick, and each draft lists at
/// most MAX_CONTRAST others and counts the rest.
#[test]
fn a_mass_outage_opens_every_draft_with_bounded_work_and_a_bounded_contrast() {
    use std::sync::atomic::Ordering::Relaxed;
    const N: usize = 300;
    let mut toml = String::from(
        "[agent]\nname = \"scl3-probe-01\"\nsite = \"scl3\"\n\n\
         [[probe]]\nname = \"ping\"\nkind = \"icmp\"\ninterval = \"20s\"\ntimeout = \"1s\"\n\
         count = 10\nspacing = \"1s\"\n\n\
         [[rule]]\nname = \"target-loss\"\nkind = \"loss\"\nabove_pct = 30\nechoes = 20\n\
         for = \"40s\"\nclear_for = \"1m\"\nmin_hold = \"5m\"\n",
    );
    for i in 0..N {
        toml += &format!(
            "\n[[target]]\nname = \"t{i:03}\"\nhost = \"198.18.{}.{}\"\nsite = \"sjc1\"\n",
            i / 250,
            i % 250 + 1
        );
    }
    let config = Config::parse(&toml, Path::new("vantage.toml")).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = config.targets.iter().map(|t| t.name.clone()).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(dir.path()).expect("store");
    let mut engine = Engine::new(&config);
    let gate = CountingGate::default();
    let mut manager = Manager::new(
        IncidentDb::open(dir.path()).expect("incidents.db"),
        Some(Store::open(dir.path()).expect("store")),
        &config,
        Box::new(gate.clone()),
    );
    // Fine until t=600, then every echo of every target lost: all breach in the same round.
    let opened = drive_with(&mut store, &mut engine, &mut manager, 0, 700, |t| {
        names
            .iter()
            .map(|n| record(n, t, if t >= 600 { 10 } else { 0 }, 12.0))
            .collect()
    })
    .iter()
    .filter(|t| t.kind == TransitionKind::Opened)
    .count();
    assert_eq!(opened, N, "every target's rule opens");
    assert_eq!(manager.queued(), N, "all wait for their diagnostics");
    // One poll at its opening and one per tick since (three rounds: t=640, 660, 680); before,
    // each opening polled every one waiting: N² / 2.
    let polls = gate.polls.load(Relaxed);
    assert!(
        polls <= 4 * N,
        "{polls} polls of the waiting diagnostics for {N} openings ({:.1} each): every opening \
         re-polled every other one",
        polls as f64 / N as f64
    );

    gate.open.store(true, Relaxed);
    // Recording yields to the rules engine: with no time to spare, one draft per tick.
    manager.set_record_budget(Duration::ZERO);
    manager
        .tick(Duration::from_secs(700), wall(700))
        .expect("tick");
    assert_eq!(manager.queued(), N - 1, "one draft recorded, the rest wait");
    manager.set_record_budget(Duration::from_millis(400));
    let mut ticks = 0;
    while manager.queued() > 0 {
        ticks += 1;
        assert!(
            ticks <= 120,
            "{} drafts still waiting after 120 ticks",
            manager.queued()
        );
        manager
            .tick(Duration::from_secs(700), wall(700))
            .expect("tick");
    }
    let incidents = IncidentDb::open(dir.path())
        .and_then(|db| db.all())
        .expect("incidents");
    assert_eq!(incidents.len(), N);
    for incident in &incidents {
        let evidence = &incident.evidence;
        assert!(
            evidence.others.len() <= evidence::MAX_CONTRAST,
            "{} lists {} other targets",
            incident.id,
            evidence.others.len()
        );
        assert_eq!(evidence.contrast_counts(), (0, N - 1), "{}", incident.id);
        assert_eq!(evidence.series.len(), 1, "{}", incident.id);
    }
    let md = render::markdown(&incidents[0]);
    assert!(
        md.contains(&format!(
            "{} more not listed (0 of them healthy)",
            N - 1 - evidence::MAX_CONTRAST
        )),
        "{md}"
    );
}

/// A real opening (the golden scenario's), and a manager on the same state whose diagnostics
/// never finish: every opening applied to it waits.
fn an_opening_and_a_waiting_manager(dir: &Path) -> (Transition, Manager) {
    let config = config();
    let mut store = Store::open(dir).expect("store");
    let mut engine = Engine::new(&config);
    let mut manager = new_manager(dir, &config);
    let opened = drive(&mut store, &mut engine, &mut manager, 0, 1600)
        .into_iter()
        .find(|t| t.kind == TransitionKind::Opened)
        .expect("an opening");
    let waiting = Manager::new(
        IncidentDb::open(dir).expect("incidents.db"),
        Some(Store::open(dir).expect("store")),
        &config,
        Box::new(Gate::default()),
    );
    (opened, waiting)
}

/// A mass outage at 10,000 targets that heals before its drafts are all written holds an opening
/// and a resolution of every target at once: the queue's old bound of 10,000 dropped 4,432
/// openings (never drafted). All 20,000 wait now, in order.
#[test]
fn ten_thousand_openings_and_their_resolutions_all_wait_without_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (opened, mut waiting) = an_opening_and_a_waiting_manager(dir.path());
    for i in 0..10_000 {
        let mut transition = opened.clone();
        transition.key = format!("{}-{i}", opened.key);
        waiting.apply(&transition, wall(700)).expect("apply");
        transition.kind = TransitionKind::Resolved;
        waiting.apply(&transition, wall(900)).expect("apply");
    }
    assert_eq!(waiting.queued(), 20_000);
}

/// A stop records what still waits within its budget, and logs the rest as lost, rather than
/// running into the unit's TimeoutStopSec (a mass outage at 10,000 targets left 5,329
/// resolutions to record at a stop: 32 s; twice that would have been killed mid-way, unlogged).
#[test]
fn a_stop_records_what_waits_within_its_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (opened, mut waiting) = an_opening_and_a_waiting_manager(dir.path());
    for i in 0..3 {
        let mut transition = opened.clone();
        transition.key = format!("{}-{i}", opened.key);
        waiting.apply(&transition, wall(700)).expect("apply");
    }
    assert_eq!(waiting.queued(), 3);
    // No time to spare: the one a stop always records, the other two logged as lost.
    waiting.set_stop_budget(Duration::ZERO);
    waiting.stop(wall(700));
    assert_eq!(waiting.queued(), 2);
}
