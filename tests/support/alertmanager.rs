//! A real Alertmanager (Debian `prometheus-alertmanager`) on a loopback port, and a small HTTP GET
//! for its API (plain HTTP/1.1, no second HTTP client in the tests).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ServerProcess, free_port, require_binary};

/// Alertmanager with one route to one webhook receiver (`notify`), grouping by `group_by`, a 5 s
/// `resolve_timeout` and 1 s group waits; killed on drop.
pub struct Alertmanager {
    _process: ServerProcess,
    pub url: String,
}

impl Alertmanager {
    pub fn start(dir: &Path, notify: &str, group_by: &[&str]) -> Alertmanager {
        let binary = require_binary("prometheus-alertmanager", "prometheus-alertmanager");
        std::fs::create_dir_all(dir.join("storage")).expect("alertmanager dir");
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  resolve_timeout: 5s\n\
                 route:\n  receiver: test\n  group_by: [{}]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: test\n    webhook_configs:\n      - url: {notify}\n        send_resolved: true\n",
                group_by.join(", ")
            ),
        )
        .expect("alertmanager.yml");
        let port = free_port();
        let process = ServerProcess::spawn(
            binary,
            vec![
                format!("--config.file={}", config.display()),
                format!("--storage.path={}", dir.join("storage").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--cluster.listen-address=".into(),
                "--log.level=warn".into(),
            ],
            dir.join("alertmanager.log"),
        );
        let am = Alertmanager {
            _process: process,
            url: format!("http://127.0.0.1:{port}"),
        };
        let start = Instant::now();
        while get(&format!("{}/-/ready", am.url)).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "Alertmanager was not ready within 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        am
    }

    /// Every active alert (`GET /api/v2/alerts`).
    pub fn alerts(&self) -> Vec<Value> {
        let text = get(&format!("{}/api/v2/alerts", self.url)).expect("GET /api/v2/alerts");
        let alerts: Value = serde_json::from_str(&text).expect("alerts JSON");
        alerts.as_array().expect("an array of alerts").clone()
    }

    /// The alert of incident `id`, if it is active.
    pub fn alert(&self, id: &str) -> Option<Value> {
        self.alerts()
            .into_iter()
            .find(|a| a["labels"]["incident_id"] == id)
    }

    /// The alert groups (`GET /api/v2/alerts/groups`): what Alertmanager notifies about, once each.
    pub fn groups(&self) -> Vec<Value> {
        let text =
            get(&format!("{}/api/v2/alerts/groups", self.url)).expect("GET /api/v2/alerts/groups");
        let groups: Value = serde_json::from_str(&text).expect("groups JSON");
        groups.as_array().expect("an array of groups").clone()
    }
}

/// The body of a 200 answer to `GET url` (plain HTTP/1.1 on loopback).
pub fn get(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/')?);
    let mut stream = TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // Go answers small bodies with Content-Length, larger ones chunked.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut text = String::new();
        let mut rest = body;
        loop {
            let (size, after) = rest.split_once("\r\n")?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                return Some(text);
            }
            text.push_str(after.get(..size)?);
            rest = after.get(size + 2..)?;
        }
    }
    Some(body.to_string())
}
