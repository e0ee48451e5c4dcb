//! `[[incident_sink]]` end to end, on loopback: `vantage run` checks a TCP service on 127.0.0.1
//! that is down (its port closed), so a `failures` rule opens an incident; then the service comes
//! up and the incident resolves.
//!
//! - A real Alertmanager (`prometheus-alertmanager`, started here with a 5 s `resolve_timeout`)
//!   shows the alert with its labels and annotations, keeps it active long past the timeout and
//!   across an agent restart (the agent re-sends it every second), and notifies its own webhook
//!   receiver that it resolved, with `endsAt` = the time the incident resolved.
//! - A webhook receiver that is down when the incident opens and comes up later gets every event
//!   of the incident exactly once, in order, with the `Idempotency-Key` header equal to the body's
//!   key and the bearer token from `token_file`.
//!
//! Needs the Debian package `prometheus-alertmanager` (scripts/test installs it); without it the
//! test fails, it never skips. Every process and listener started here is stopped on drop.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use vantage::incident::{Incident, IncidentDb, Status};

use support::Agent;
use support::{Alertmanager, free_port, get};

/// One POST as it arrived: lower-case header names, the JSON body.
#[derive(Debug, Clone)]
struct Post {
    headers: Vec<(String, String)>,
    body: Value,
}

impl Post {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 server on a loopback listener that answers every request 200 and records every
/// POST, raw: a retried request is recorded again. One connection at a time, so the record is in
/// arrival order.
struct Receiver {
    port: u16,
    posts: Arc<Mutex<Vec<Post>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver's port");
        let posts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (recorded, stopping) = (Arc::clone(&posts), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(Some(post)) = stream.map(serve) {
                    recorded.lock().expect("lock").push(post);
                }
            }
        });
        Receiver {
            port,
            posts,
            stop,
            thread: Some(thread),
        }
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().expect("lock").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Read one request, answer 200; the request if it was a POST with a JSON body.
fn serve(stream: TcpStream) -> Option<Post> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    request_line.starts_with("POST ").then(|| Post {
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

fn wait_until<T>(
    what: &str,
    limit: Duration,
    agent: Option<&Agent>,
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
            agent.map(Agent::log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn incident(data: &Path, agent: &Agent, what: &str, status: Status) -> Incident {
    wait_until(what, Duration::from_secs(40), Some(agent), || {
        let db = IncidentDb::open(data).ok()?;
        let mut all = db.all().ok()?;
        assert!(all.len() <= 1, "one incident at most: {all:#?}");
        all.pop().filter(|i| i.status == status)
    })
}

/// An agent config: a TCP check of 127.0.0.1:`service`, a `failures` rule, and `sinks`.
fn write_config(dir: &Path, service: u16, status_updates: &str, sinks: &str) -> std::path::PathBuf {
    let config = dir.join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
name = "sinks-e2e"
site = "lab"
data_dir = "{data}"

[incidents]
status_updates = "{status_updates}"
history = "5m"

[[target]]
name = "svc"
host = "127.0.0.1"
site = "local"

[[probe]]
name = "port"
kind = "tcp"
interval = "1s"
timeout = "500ms"
port = {service}

[[rule]]
name = "service-down"
kind = "failures"
severity = "critical"
failures = 2
runs = 3
for = "1s"
clear_for = "2s"
min_hold = "2s"
{sinks}"#,
            data = dir.join("data").display(),
        ),
    )
    .expect("write config");
    config
}

fn timestamp(value: &Value) -> SystemTime {
    humantime::parse_rfc3339_weak(value.as_str().expect("a timestamp string"))
        .unwrap_or_else(|e| panic!("{value}: {e}"))
}

#[test]
fn alertmanager_keeps_the_alert_while_open_and_resolves_it_with_the_incident() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let notifications = Receiver::start(free_port());
    let am = Alertmanager::start(
        &dir.path().join("am"),
        &format!("http://127.0.0.1:{}/", notifications.port),
        &["incident_id"],
    );
    let service = free_port();
    let config = write_config(
        dir.path(),
        service,
        "30m",
        &format!(
            r#"
[[incident_sink]]
name = "am"
kind = "alertmanager"
url = "{}"
resend = "1s"
labels = {{ team = "neteng" }}
"#,
            am.url
        ),
    );

    // 1. The service is down: the incident opens and Alertmanager shows its alert.
    let agent = Agent::start(&[], &config, dir.path().join("agent-1.log"));
    let open = incident(&data, &agent, "the incident to open", Status::Open);
    let alert = wait_until("the alert", Duration::from_secs(20), Some(&agent), || {
        am.alert(&open.id)
    });
    let draft = data.join("incidents").join(&open.id).join("incident.md");
    assert_eq!(
        alert["labels"],
        serde_json::json!({
            "alertname": "service-down",
            "rule": "service-down",
            "severity": "critical",
            "scope": "target",
            "subject": "svc",
            "agent": "sinks-e2e",
            "site": "lab",
            "incident_id": open.id,
            "fleet_key": "target/svc",
            "team": "neteng",
        })
    );
    assert_eq!(alert["annotations"]["summary"], open.title.as_str());
    assert_eq!(
        alert["annotations"]["draft"],
        draft.display().to_string().as_str()
    );
    assert!(
        alert["annotations"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("svc") && d.contains("Rule: ")),
        "{alert:#}"
    );
    assert_eq!(timestamp(&alert["startsAt"]), open.detected_at.0);
    assert_eq!(alert["status"]["state"], "active");

    // 2. Past the 5 s resolve_timeout and the 4 s endsAt of one post, and across a restart:
    // still active, because it is re-sent.
    std::thread::sleep(Duration::from_secs(7));
    agent.stop();
    let agent = Agent::start(&[], &config, dir.path().join("agent-2.log"));
    std::thread::sleep(Duration::from_secs(7));
    let later = am.alert(&open.id).unwrap_or_else(|| {
        panic!(
            "the alert expired while the incident is open: {:?}; agent log:\n{}",
            get(&format!("{}/api/v2/alerts", am.url)),
            agent.log()
        )
    });
    assert_eq!(later["status"]["state"], "active");
    assert!(
        timestamp(&later["updatedAt"]) > timestamp(&alert["updatedAt"]),
        "re-sent: {alert:#} then {later:#}"
    );
    let statuses = || -> Vec<String> {
        notifications
            .posts()
            .iter()
            .map(|p| p.body["status"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    assert!(
        !statuses().contains(&"resolved".to_string()),
        "resolved too early: {:#?}",
        notifications.posts()
    );

    // 3. The service comes up: the incident resolves, and so does the alert, at that time.
    let _service = Receiver::start(service); // the TCP check connects: up
    let resolved = incident(&data, &agent, "the incident to resolve", Status::Resolved);
    let notice = wait_until(
        "Alertmanager's resolved notification",
        Duration::from_secs(20),
        Some(&agent),
        || {
            notifications
                .posts()
                .into_iter()
                .find(|p| p.body["status"] == "resolved")
        },
    );
    let ended = &notice.body["alerts"][0];
    assert_eq!(ended["labels"]["incident_id"], open.id.as_str());
    assert_eq!(
        timestamp(&ended["endsAt"]),
        resolved.resolved_at.expect("resolved_at").0
    );
    assert_eq!(statuses().first().map(String::as_str), Some("firing"));
    assert!(am.alert(&open.id).is_none(), "no longer active");
    agent.stop();
    let db = IncidentDb::open(&data).expect("incidents.db");
    for delivery in db.deliveries(Some(&open.id)).expect("deliveries") {
        assert!(delivery.delivered, "{delivery:?}");
    }
}

#[test]
fn a_webhook_that_comes_back_gets_every_event_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let hook_port = free_port();
    let service = free_port();
    let token = dir.path().join("webhook-token");
    let url = format!("http://127.0.0.1:{hook_port}/incidents");
    let config = write_config(
        dir.path(),
        service,
        "3s",
        &format!(
            r#"
[[incident_sink]]
name = "hook"
kind = "webhook"
url = "{url}"
timeout = "2s"
token_file = "{}"
"#,
            token.display()
        ),
    );

    // `vantage check` lists the sink, and says when its token cannot be read.
    let config_arg = config.to_str().expect("utf-8 path");
    let (code, stdout, _) = support::vantage(&["check", "--offline", "--config", config_arg]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "incident sink \"hook\": error: webhook, POST {url}: cannot read the token: secret file {}: No such file or directory",
            token.display()
        )),
        "{stdout}"
    );
    std::fs::write(&token, "t0ken-for-the-test\n").expect("token file");
    let (code, stdout, _) = support::vantage(&["check", "--offline", "--config", config_arg]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "incident sink \"hook\": ok: webhook, POST {url}\n"
        )),
        "{stdout}"
    );

    // 1. The incident opens while the receiver is down: delivery fails and is retried.
    let agent = Agent::start(&[], &config, dir.path().join("agent.log"));
    let open = incident(&data, &agent, "the incident to open", Status::Open);
    let failure = wait_until(
        "a failed delivery to the webhook",
        Duration::from_secs(20),
        Some(&agent),
        || {
            let db = IncidentDb::open(&data).ok()?;
            let deliveries = db.deliveries(Some(&open.id)).ok()?;
            deliveries
                .into_iter()
                .find(|d| d.sink == "hook" && d.attempts >= 2)
        },
    );
    assert!(!failure.delivered);
    let error = failure.last_error.expect("the error is kept");
    assert!(
        error.starts_with(&format!("incident sink \"hook\": POST {url}: ")),
        "{error}"
    );

    // 2. The receiver comes up, a status update or more is drafted, then the service comes back.
    let receiver = Receiver::start(hook_port);
    let keys = || -> Vec<String> {
        receiver
            .posts()
            .iter()
            .map(|p| {
                p.body["idempotency_key"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string()
            })
            .collect()
    };
    wait_until(
        "the opened event and a status update at the webhook",
        Duration::from_secs(30),
        Some(&agent),
        || {
            let keys = keys();
            (keys.contains(&format!("{}/opened", open.id))
                && keys.iter().any(|k| k.contains("/status-update/")))
            .then_some(())
        },
    );
    let _service = Receiver::start(service); // the TCP check connects: up
    incident(&data, &agent, "the incident to resolve", Status::Resolved);
    wait_until(
        "the resolved event at the webhook",
        Duration::from_secs(20),
        Some(&agent),
        || {
            keys()
                .contains(&format!("{}/resolved", open.id))
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    agent.stop();

    // Every event, once each, in the outbox's order; header and body agree.
    let db = IncidentDb::open(&data).expect("incidents.db");
    let queued = db.events(&open.id).expect("events");
    assert_eq!(keys(), queued, "every event exactly once, in order");
    assert_eq!(queued.first(), Some(&format!("{}/opened", open.id)));
    assert_eq!(queued.last(), Some(&format!("{}/resolved", open.id)));
    for post in receiver.posts() {
        let key = post.body["idempotency_key"].as_str().expect("key");
        assert_eq!(post.header("idempotency-key"), Some(key));
        assert_eq!(
            post.header("authorization"),
            Some("Bearer t0ken-for-the-test")
        );
        assert_eq!(post.header("content-type"), Some("application/json"));
        assert_eq!(post.body["schema_version"], 1);
        assert_eq!(post.body["incident"]["id"], open.id.as_str());
        let event = post.body["event"].as_str().expect("event");
        assert!(
            key.starts_with(&format!("{}/{event}", open.id)),
            "{key} {event}"
        );
    }
    let last = receiver.posts().pop().expect("posts");
    assert_eq!(last.body["incident"]["status"], "resolved");
    assert_eq!(
        last.body["incident"]["draft"],
        data.join("incidents")
            .join(&open.id)
            .join("incident.md")
            .display()
            .to_string()
            .as_str()
    );
    for delivery in db.deliveries(Some(&open.id)).expect("deliveries") {
        assert!(delivery.delivered, "{delivery:?}");
    }
}
