//! Tests of the fleet view in a draft: a Manager over a fake InfluxDB API (kept apart from
//! `fleet_view.rs`, so that module does not depend on the manager that depends on it).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use probes::{FailureKind, Measurement, Observation, Outcome, PingStats};

use super::fleet_view::*;
use crate::config::Config;
use crate::fleet::query::unix_ms;
use crate::incident::{IncidentDb, Manager, NoDiagnostics, Timestamp};
use crate::record::Record;
use crate::rules::Engine;

/// An InfluxDB stand-in on loopback: every view is empty, and the incidents query gets
/// `incidents` (an InfluxQL answer), which the test changes as it goes.
fn fake_store(incidents: Arc<Mutex<String>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = String::new();
            let mut reader = BufReader::new(&stream);
            while reader.read_line(&mut head).is_ok_and(|n| n > 2) {}
            let body = if head.contains("FROM+%22incident%22") {
                incidents.lock().expect("answer").clone()
            } else {
                r#"{"results":[]}"#.to_string()
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn config(port: u16, data: &Path) -> Config {
    Config::parse(
        &format!(
            r#"[agent]
name = "scl3-probe"
site = "scl3"
data_dir = "{}"

[[target]]
name = "aws-gw"
host = "198.19.0.1"

[[probe]]
name = "ping"
kind = "icmp"
interval = "10s"
count = 10

[[rule]]
name = "cloud-loss"
kind = "loss"
above_pct = 50
echoes = 10
for = "0s"

[[output]]
name = "store"
kind = "influxdb_v1"
url = "http://127.0.0.1:{port}"
db = "vantage"

[fleet]
output = "store"
"#,
            data.display()
        ),
        Path::new("vantage.toml"),
    )
    .expect("config")
}

fn lost_round() -> Record {
    Record {
        agent: "scl3-probe".into(),
        site: "scl3".into(),
        probe: "ping".into(),
        target: "aws-gw".into(),
        target_site: "aws".into(),
        address: None,
        observation: Observation {
            started_at: SystemTime::now(),
            duration: Duration::from_secs(1),
            outcome: Outcome::failure(FailureKind::Timeout, "no reply"),
            measurement: Measurement::Ping(PingStats::from_rtts(vec![None; 10])),
        },
    }
}

/// Tick until `done` says the draft is as expected (the lookups run on threads).
fn tick_until(
    manager: &mut Manager,
    wall: SystemTime,
    done: impl Fn(&crate::incident::Incident) -> bool,
) -> crate::incident::Incident {
    let start = std::time::Instant::now();
    loop {
        manager.tick(Duration::ZERO, wall).expect("tick");
        let open = manager.db().open_incidents().expect("open incidents");
        if let Some(draft) = open.into_iter().find(|d| done(d)) {
            return draft;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the draft never got there: {:#?}",
            manager.db().open_incidents()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fleet's incident opens after the site's draft: the next fleet view links it, with a
/// timeline line and an `updated` event, and the draft says which incident, since when, and
/// how many sites see it.
#[test]
fn a_fleet_incident_that_appears_later_is_linked_with_a_timeline_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let answer = Arc::new(Mutex::new(
        r#"{"results":[{"statement_id":0}]}"#.to_string(),
    ));
    let config = config(fake_store(Arc::clone(&answer)), dir.path());
    let mut engine = Engine::new(&config);
    let mut manager = Manager::new(
        IncidentDb::open(dir.path()).expect("db"),
        None,
        &config,
        Box::new(NoDiagnostics),
    )
    .with_fleet(FleetLookup::new(&config).expect("fleet lookup"));
    let wall = SystemTime::now();
    let mut transitions = engine.observe(Duration::ZERO, &lost_round());
    transitions.extend(engine.tick(Duration::ZERO));
    assert_eq!(transitions.len(), 1, "{transitions:#?}");
    manager.apply(&transitions[0], wall).expect("apply");
    let draft = tick_until(&mut manager, wall, |d| {
        d.fleet.as_ref().is_some_and(FleetEvidence::is_available)
    });
    assert!(draft.fleet.as_ref().expect("fleet").incidents.is_empty());

    // The fleet evaluator opens its incident for aws-gw (seen from 3 of 3 sites).
    let opened_ms = unix_ms(wall) - 5_000;
    *answer.lock().expect("answer") = serde_json::json!({"results": [{"statement_id": 0, "series": [{
        "name": "incident",
        "tags": {"fleet_key": "target/aws-gw", "rule": "cloud-unreachable", "agent": "fleet"},
        "columns": ["time", "id", "title", "sites_seeing", "sites_total", "event"],
        "values": [[opened_ms, "20261130-007", "2026-11-30 [fleet] 100% packet loss to aws-gw from 3 of 3 sites", 3, 3, "opened"]]
    }]}]})
    .to_string();
    let later = wall + REFRESH + Duration::from_secs(1);
    let draft = tick_until(&mut manager, later, |d| {
        d.fleet.as_ref().is_some_and(|f| !f.incidents.is_empty())
    });
    let link = format!(
        "Fleet incident: 2026-11-30 [fleet] 100% packet loss to aws-gw from 3 of 3 sites \
         (20261130-007, fleet key `target/aws-gw`), opened {} by the fleet evaluator `fleet` \
         — 3 of 3 sites see it",
        Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(opened_ms as u64)).display()
    );
    let last = draft.timeline.last().expect("timeline");
    assert_eq!(
        last.text,
        format!("Linked to the fleet's incident of this outage: {link}.")
    );
    assert_eq!(draft.updated_at.display(), Timestamp(later).display());
    let markdown = crate::incident::render::markdown(&draft);
    assert!(markdown.contains(&format!("**{link}**")), "{markdown}");

    // Asked again: the same incident is not linked twice.
    let again = later + REFRESH + Duration::from_secs(1);
    manager.tick(Duration::ZERO, again).expect("tick");
    std::thread::sleep(Duration::from_millis(500));
    manager.tick(Duration::ZERO, again).expect("tick");
    let draft = manager.db().open_incidents().expect("open").remove(0);
    let links = draft
        .timeline
        .iter()
        .filter(|e| e.text.starts_with("Linked to the fleet's incident"))
        .count();
    assert_eq!(links, 1, "{:#?}", draft.timeline);
}
