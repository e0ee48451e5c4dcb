//! The Alertmanager and webhook payloads as pure functions, verbatim, and the outbox's re-send
//! hook: due at start, then every period, only once a sink has every pending event.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::outbox::Deliverer;
use super::*;
use crate::rules::{Impact, Metric, Peak, TargetImpact};

/// 2026-11-21 10:00:00 UTC.
fn at(seconds: u64) -> Timestamp {
    Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_255_200 + seconds))
}

fn incident() -> Incident {
    Incident {
        id: "20261121-001".into(),
        key: "loss/target/sjc1-core".into(),
        rule: RuleSummary {
            name: "loss".into(),
            condition: "loss above 20% over the last 100 echoes, for 1m".into(),
        },
        severity: "major".into(),
        scope: Scope::Target {
            target: "sjc1-core".into(),
        },
        agent: "scl3-probe-01".into(),
        site: "scl3".into(),
        status: Status::Open,
        title: "2026-11-21 [scl3] 34% packet loss to sjc1-core".into(),
        detected_at: at(0),
        updated_at: at(0),
        resolved_at: None,
        duration_s: None,
        impact: Impact {
            metric: Metric::LossPct,
            affected: vec![TargetImpact {
                probe: "ping".into(),
                target: "sjc1-core".into(),
                value: Some(34.0),
                baseline: None,
                failure: None,
            }],
            total_targets: 1,
            value: Some(34.0),
            worst: Some(34.0),
        },
        peak: Peak {
            value: Some(34.0),
            affected_targets: 1,
        },
        timeline: Vec::new(),
        status_updates: Vec::new(),
        trace: None,
        evidence: Evidence::default(),
        status_update_every_s: 1800,
        fleet: None,
        fleet_sites: None,
    }
}

fn resolved() -> Incident {
    Incident {
        status: Status::Resolved,
        updated_at: at(300),
        resolved_at: Some(at(300)),
        duration_s: Some(300),
        ..incident()
    }
}

const DRAFT: &str = "/var/lib/vantage/incidents/20261121-001/incident.md";

#[test]
fn an_open_alert_ends_four_resends_ahead_and_carries_the_draft() {
    let labels = BTreeMap::from([("team".to_string(), "neteng".to_string())]);
    let now = at(30).0;
    let alert = alertmanager::alert(
        &incident(),
        Path::new(DRAFT),
        &labels,
        now,
        Duration::from_secs(60),
    );
    assert_eq!(
        alert,
        json!({
            "labels": {
                "alertname": "loss",
                "rule": "loss",
                "severity": "major",
                "scope": "target",
                "subject": "sjc1-core",
                "agent": "scl3-probe-01",
                "site": "scl3",
                "incident_id": "20261121-001",
                "fleet_key": "target/sjc1-core",
                "team": "neteng",
            },
            "annotations": {
                "summary": "2026-11-21 [scl3] 34% packet loss to sjc1-core",
                "description": "34% packet loss on 1 of 1 targets: sjc1-core. Rule: loss above 20% over the last 100 echoes, for 1m.",
                "draft": DRAFT,
            },
            "startsAt": "2026-11-21T10:00:00Z",
            "endsAt": "2026-11-21T10:04:30Z",
        })
    );
}

#[test]
fn a_resolved_alert_ends_when_the_incident_resolved() {
    let alert = alertmanager::alert(
        &resolved(),
        Path::new(DRAFT),
        &BTreeMap::new(),
        at(900).0,
        Duration::from_secs(60),
    );
    assert_eq!(alert["startsAt"], "2026-11-21T10:00:00Z");
    assert_eq!(alert["endsAt"], "2026-11-21T10:05:00Z");
    assert_eq!(alert["labels"].as_object().map(|l| l.len()), Some(9));
}

fn event(kind: EventKind, key: &str, incident: Incident) -> OutboxEvent {
    OutboxEvent {
        seq: 0,
        idempotency_key: key.into(),
        event: kind,
        at: incident.updated_at,
        incident,
    }
}

#[test]
fn the_webhook_body_follows_the_documented_schema() {
    let opened = event(EventKind::Opened, "20261121-001/opened", incident());
    assert_eq!(
        webhook::body(&opened, Path::new(DRAFT)),
        json!({
            "schema_version": 1,
            "idempotency_key": "20261121-001/opened",
            "event": "opened",
            "at": "2026-11-21T10:00:00Z",
            "summary": "2026-11-21 [scl3] 34% packet loss to sjc1-core",
            "incident": {
                "id": "20261121-001",
                "key": "loss/target/sjc1-core",
                "rule": "loss",
                "condition": "loss above 20% over the last 100 echoes, for 1m",
                "severity": "major",
                "scope": "target",
                "subject": "sjc1-core",
                "agent": "scl3-probe-01",
                "site": "scl3",
                "status": "open",
                "title": "2026-11-21 [scl3] 34% packet loss to sjc1-core",
                "impact": "34% packet loss on 1 of 1 targets: sjc1-core",
                "detected_at": "2026-11-21T10:00:00Z",
                "resolved_at": null,
                "duration_s": null,
                "draft": DRAFT,
                "status_update": null,
            },
        })
    );
    let body = webhook::body(
        &event(EventKind::Resolved, "20261121-001/resolved", resolved()),
        Path::new(DRAFT),
    );
    assert_eq!(body["event"], "resolved");
    assert_eq!(body["at"], "2026-11-21T10:05:00Z");
    assert_eq!(body["incident"]["status"], "resolved");
    assert_eq!(body["incident"]["resolved_at"], "2026-11-21T10:05:00Z");
    assert_eq!(body["incident"]["duration_s"], 300);

    // A status-update event carries the text of the update it announces.
    let mut updating = incident();
    updating.status_updates.push(StatusUpdate {
        number: 1,
        at: at(1800),
        text: "Still 34% packet loss to sjc1-core.".into(),
    });
    let body = webhook::body(
        &event(
            EventKind::StatusUpdate,
            "20261121-001/status-update/1",
            updating,
        ),
        Path::new(DRAFT),
    );
    assert_eq!(body["event"], "status-update");
    assert_eq!(
        body["summary"],
        "2026-11-21 [scl3] 34% packet loss to sjc1-core"
    );
    assert_eq!(
        body["incident"]["status_update"],
        "Still 34% packet loss to sjc1-core."
    );
}

/// A sink that wants reminders: records events and refreshes, fails while `down`.
#[derive(Clone, Default)]
struct Reminded {
    log: Arc<Mutex<Vec<String>>>,
    down: Arc<Mutex<bool>>,
}

impl IncidentSink for Reminded {
    fn name(&self) -> &str {
        "reminded"
    }

    fn deliver(&mut self, event: &OutboxEvent) -> anyhow::Result<()> {
        if *self.down.lock().expect("lock") {
            anyhow::bail!("connection refused");
        }
        self.log
            .lock()
            .expect("lock")
            .push(event.idempotency_key.clone());
        Ok(())
    }

    fn refresh_every(&self) -> Option<Duration> {
        Some(Duration::from_millis(300))
    }

    fn refresh(&mut self, open: &mut dyn Iterator<Item = Incident>) -> anyhow::Result<()> {
        let ids: Vec<String> = open.map(|i| i.id).collect();
        self.log
            .lock()
            .expect("lock")
            .push(format!("refresh [{}]", ids.join(", ")));
        Ok(())
    }
}

#[test]
fn open_incidents_are_re_sent_periodically_but_never_ahead_of_a_pending_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Reminded::default();
    let mut deliverer = Deliverer::new(
        IncidentDb::open(dir.path()).expect("db"),
        vec![Box::new(sink.clone())],
    )
    .expect("deliverer");
    let log = || sink.log.lock().expect("lock").clone();

    // At start: a refresh at once (nothing open yet), as after a restart.
    deliverer.run_once().expect("pass");
    assert_eq!(log(), ["refresh []"]);

    // An incident opens while the sink is down: no reminder may overtake the pending event.
    let mut db = IncidentDb::open(dir.path()).expect("db");
    db.save(&incident(), None, Some(EventKind::Opened))
        .expect("save");
    *sink.down.lock().expect("lock") = true;
    std::thread::sleep(Duration::from_millis(350));
    deliverer.run_once().expect("pass");
    assert_eq!(log(), ["refresh []"]);

    // Back up: the event first, then the reminder; then one reminder per period.
    *sink.down.lock().expect("lock") = false;
    std::thread::sleep(outbox::FIRST_BACKOFF + Duration::from_millis(100));
    deliverer.run_once().expect("pass");
    deliverer.run_once().expect("pass");
    assert_eq!(
        log(),
        [
            "refresh []",
            "20261121-001/opened",
            "refresh [20261121-001]"
        ]
    );
    std::thread::sleep(Duration::from_millis(350));
    deliverer.run_once().expect("pass");
    assert_eq!(log().len(), 4);

    // Resolved: delivered once, and no longer in the reminders.
    db.save(&resolved(), None, Some(EventKind::Resolved))
        .expect("save");
    std::thread::sleep(Duration::from_millis(350));
    deliverer.run_once().expect("pass");
    assert_eq!(
        log()[4..],
        [
            "20261121-001/resolved".to_string(),
            "refresh []".to_string()
        ]
    );
}

#[test]
fn an_open_incident_that_cannot_be_read_is_skipped_and_the_others_are_re_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = IncidentDb::open(dir.path()).expect("db");
    let unreadable = Incident {
        id: "20261121-002".into(),
        key: "loss/target/sjc1-edge".into(),
        ..incident()
    };
    for incident in [incident(), unreadable] {
        db.save(&incident, None, Some(EventKind::Opened))
            .expect("save");
    }
    // A row this build cannot parse, as a newer version might leave it.
    rusqlite::Connection::open(dir.path().join("incidents.db"))
        .expect("sqlite")
        .execute(
            "UPDATE incidents SET data = '{\"from\": \"the future\"}' WHERE id = '20261121-002'",
            [],
        )
        .expect("corrupt one row");
    let sink = Reminded::default();
    let mut deliverer = Deliverer::new(db, vec![Box::new(sink.clone())]).expect("deliverer");

    deliverer
        .run_once()
        .expect("one unreadable incident must not fail the pass");
    assert_eq!(*sink.log.lock().expect("lock"), ["refresh [20261121-001]"]);
}

/// Answers every request 200 (one connection each) and records how many alerts each POST held.
fn alert_counter() -> (u16, Arc<Mutex<Vec<usize>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let counts = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&counts);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).expect("header") == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().expect("length");
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("body");
            let alerts: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("json");
            recorded.lock().expect("lock").push(alerts.len());
            let answer = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            stream.write_all(answer.as_bytes()).expect("answer");
        }
    });
    (port, counts)
}

#[test]
fn a_re_send_posts_the_open_alerts_in_batches() {
    use super::alertmanager::{AlertmanagerSink, RESEND_BATCH};
    use super::outbox::IncidentSink;
    use crate::config::{IncidentSinkConfig, IncidentSinkKind};
    let (port, counts) = alert_counter();
    let resend = Duration::from_secs(60);
    let config = IncidentSinkConfig {
        name: "am".into(),
        url: format!("http://127.0.0.1:{port}"),
        timeout: Duration::from_secs(10),
        token: None,
        kind: IncidentSinkKind::Alertmanager {
            labels: BTreeMap::new(),
            resend,
        },
    };
    let mut sink =
        AlertmanagerSink::new(&config, BTreeMap::new(), resend, "/drafts".into()).expect("sink");
    let open = 2 * RESEND_BATCH + 1;
    let mut incidents = (0..open).map(|i| Incident {
        id: format!("20261121-{i:04}"),
        ..incident()
    });

    sink.refresh(&mut incidents).expect("re-send");
    assert_eq!(
        *counts.lock().expect("lock"),
        [RESEND_BATCH, RESEND_BATCH, 1]
    );
}
