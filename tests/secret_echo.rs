//! A sink that echoes the credentials it was sent ("500: you sent: Bearer …") must not get them
//! into the agent's log, the spool's `last_error`, `vantage report`, `vantage incidents show` or
//! incidents.db. `vantage run` writes to two outputs (a v2 token and v1 basic auth) and one
//! webhook, all on a loopback server that answers every request 500 with the request's
//! `Authorization` header in the body, while a `failures` rule opens an incident.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Agent, free_port, vantage};

const V2_TOKEN: &str = "v2-t0ken-7f3a9c";
const V1_PASSWORD: &str = "v1-passw0rd-51d2";
const HOOK_TOKEN: &str = "h00k-t0ken-c84e";

/// Answers every request `500` with `you sent: <Authorization>`; counts the requests that carried one.
struct Echo {
    port: u16,
    authorized: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let authorized = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (Arc::clone(&authorized), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(stream) = stream {
                    let count = Arc::clone(&count);
                    std::thread::spawn(move || echo(stream, &count));
                }
            }
        });
        Echo {
            port,
            authorized,
            stop,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn echo(stream: TcpStream, authorized: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let (mut authorization, mut length) = (String::new(), 0usize);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("authorization:") {
            authorization = line["authorization:".len()..].trim().to_string();
        } else if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let _ = reader.take(length as u64).read_to_end(&mut Vec::new());
    if !authorization.is_empty() {
        authorized.fetch_add(1, Ordering::Relaxed);
    }
    let body = format!("you sent: {authorization}");
    let response = format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(response.as_bytes());
}

fn write_config(dir: &Path, echo: u16) -> std::path::PathBuf {
    let secret = |name: &str, value: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{value}\n")).expect("secret file");
        path.display().to_string()
    };
    let (v2, v1, hook) = (
        secret("v2-token", V2_TOKEN),
        secret("v1-password", V1_PASSWORD),
        secret("hook-token", HOOK_TOKEN),
    );
    let config = dir.join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
name = "echo"
site = "lab"
data_dir = "{data}"

[[target]]
name = "svc"
host = "127.0.0.1"
site = "local"

[[probe]]
name = "port"
kind = "tcp"
interval = "1s"
timeout = "500ms"
port = {closed}

[[rule]]
name = "service-down"
kind = "failures"
severity = "critical"
failures = 2
runs = 3
for = "1s"

[[output]]
name = "v2"
kind = "influxdb_v2"
url = "http://127.0.0.1:{echo}"
org = "lab"
bucket = "vantage"
token_file = "{v2}"
flush_interval = "1s"
retry_initial = "200ms"
retry_max = "1s"

[[output]]
name = "v1"
kind = "influxdb_v1"
url = "http://127.0.0.1:{echo}"
db = "vantage"
username = "vantage"
password_file = "{v1}"
flush_interval = "1s"
retry_initial = "200ms"
retry_max = "1s"

[[incident_sink]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:{echo}/incidents"
timeout = "2s"
token_file = "{hook}"
"#,
            data = dir.join("data").display(),
            closed = free_port(),
        ),
    )
    .expect("write config");
    config
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [V2_TOKEN, V1_PASSWORD, HOOK_TOKEN, &basic_credentials()] {
        assert!(!text.contains(secret), "{what} holds a secret:\n{text}");
    }
}

/// The base64 of `vantage:V1_PASSWORD`, as basic auth sends it.
fn basic_credentials() -> String {
    let output = std::process::Command::new("base64")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(format!("vantage:{V1_PASSWORD}").as_bytes())?;
            child.wait_with_output()
        })
        .expect("run base64");
    String::from_utf8(output.stdout)
        .expect("base64 output")
        .trim()
        .to_string()
}

/// Every byte of every file in `dir` (the SQLite files and their -wal), as lossy text.
fn all_files(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            text.push_str(&String::from_utf8_lossy(
                &std::fs::read(&path).expect("read"),
            ));
        }
    }
    text
}

#[test]
fn echoed_credentials_are_redacted_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Echo::start();
    let config = write_config(dir.path(), server.port);
    let config_arg = config.to_str().expect("utf-8 path");
    let agent = Agent::start(&[], &config, dir.path().join("agent.log"));

    // Both outputs and the webhook have been answered (echoing their credentials) several times.
    let start = Instant::now();
    let spool_errors = loop {
        let (_, report, _) = vantage(&["report", "--config", config_arg]);
        let (_, list, _) = vantage(&["incidents", "list", "--config", config_arg]);
        let log = agent.log();
        let hook_failed = log.contains("incident sink \"hook\"") && log.contains("500");
        let errors = spool_last_errors(&data);
        if errors.len() == 2 && errors.iter().all(|e| e.contains("you sent")) && hook_failed {
            assert!(list.contains("failing checks"), "{list}");
            break errors;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "no echoed failures yet ({} requests with credentials); spool: {errors:?}\nreport:\n{report}\nlog:\n{log}",
            server.authorized.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(server.authorized.load(Ordering::Relaxed) >= 3);
    for error in &spool_errors {
        // The v2 header is redacted whole; basic auth keeps its scheme: `Basic ***`.
        assert!(
            error.contains("you sent: ***") || error.contains("you sent: Basic ***"),
            "{error}"
        );
    }

    let (_, report, report_err) = vantage(&["report", "--config", config_arg]);
    let (_, list, _) = vantage(&["incidents", "list", "--config", config_arg]);
    // The first column of the first row below the header.
    let id = list
        .lines()
        .nth(1)
        .and_then(|row| row.split_whitespace().next())
        .unwrap_or_else(|| panic!("an incident id in:\n{list}"))
        .to_string();
    let (_, show, show_err) = vantage(&["incidents", "show", &id, "--config", config_arg]);
    let log = agent.stop();
    assert!(log.contains("you sent: ***"), "{log}");
    assert_no_secret("the agent's log", &log);
    assert_no_secret("vantage report", &format!("{report}{report_err}"));
    assert_no_secret("vantage incidents show", &format!("{show}{show_err}"));
    assert_no_secret("the spool's last_error", &spool_errors.join("\n"));
    let files = all_files(&data);
    assert!(files.contains("you sent: ***"), "the errors are stored");
    assert_no_secret("the data directory's files", &files);
}

fn spool_last_errors(data: &Path) -> Vec<String> {
    let Ok(db) = rusqlite::Connection::open(data.join("spool.db")) else {
        return Vec::new();
    };
    let Ok(mut query) =
        db.prepare("SELECT last_error FROM outputs WHERE last_error IS NOT NULL ORDER BY name")
    else {
        return Vec::new();
    };
    query
        .query_map([], |row| row.get(0))
        .and_then(|rows| rows.collect())
        .unwrap_or_default()
}
