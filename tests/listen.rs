//! The health and metrics listener (`[agent] listen`) and `vantage run`'s systemd contract, on
//! loopback: `/healthz` follows a stalled scheduler (the test hook) both ways; the listener's
//! bounds (header size, request body, connection cap, GET only) and credentials hold; a bind
//! beyond loopback without credentials is warned about; READY=1, WATCHDOG=1 (only while the
//! scheduler runs) and STOPPING=1 reach a fake notify socket.

mod support;

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vantage::agent::Agent;
use vantage::config::Config;

/// An agent checking a TCP port that accepts, every second, with `extra` in its `[agent]`.
fn config(dir: &Path, open_port: u16, extra: &str) -> Config {
    let path = dir.join("vantage.toml");
    let text = format!(
        r#"
[agent]
name = "listen-agent"
site = "local"
data_dir = "{data}"
{extra}

[[target]]
name = "up"
host = "127.0.0.1"
site = "local"

[[probe]]
name = "open-port"
kind = "tcp"
interval = "1s"
timeout = "500ms"
port = {open_port}
"#,
        data = dir.join("data").display(),
    );
    std::fs::write(&path, &text).expect("write config");
    Config::load(&path).unwrap_or_else(|errors| panic!("config must load:\n{errors}"))
}

async fn get(url: &str) -> (u16, String) {
    let answer = reqwest::get(url).await.expect("GET");
    let status = answer.status().as_u16();
    (status, answer.text().await.expect("body"))
}

/// One raw HTTP/1.1 exchange on a new connection: the status code, or 0 if the server closed
/// the connection without an answer.
async fn raw(address: std::net::SocketAddr, request: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buffer).await {
            if n == 0 || answer.len() > 64 * 1024 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_503_while_the_scheduler_is_stalled_and_200_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = TcpListener::bind("127.0.0.1:0").expect("peer");
    let port = peer.local_addr().expect("addr").port();
    let agent = Agent::start(config(dir.path(), port, r#"listen = "127.0.0.1:0""#))
        .await
        .expect("start");
    let base = format!("http://{}", agent.listen_address().expect("listening"));
    let healthz = format!("{base}/healthz");
    let readyz = format!("{base}/readyz");

    assert_eq!(get(&healthz).await, (200, "ok\n".to_string()));
    support::wait_for(
        "ready (first round stored)",
        Duration::from_secs(10),
        || async { get(&readyz).await.0 == 200 },
    )
    .await;

    agent.stall_scheduler_for_test(true);
    let stalled = Instant::now();
    support::wait_for("/healthz 503", Duration::from_secs(15), || async {
        get(&healthz).await.0 == 503
    })
    .await;
    let (_, reason) = get(&healthz).await;
    assert!(
        reason.contains("the scheduler has started no run"),
        "{reason}"
    );
    assert_eq!(get(&readyz).await.0, 503, "not live is not ready");
    // Three intervals (1 s), with the 2 s floor: not before 3 s of silence.
    assert!(
        stalled.elapsed() >= Duration::from_secs(2),
        "{:?}",
        stalled.elapsed()
    );

    agent.stall_scheduler_for_test(false);
    support::wait_for("/healthz 200 again", Duration::from_secs(10), || async {
        get(&healthz).await.0 == 200
    })
    .await;
    assert_eq!(get(&readyz).await.0, 200);
    agent.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_is_bounded_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = TcpListener::bind("127.0.0.1:0").expect("peer");
    let port = peer.local_addr().expect("addr").port();
    let agent = Agent::start(config(dir.path(), port, r#"listen = "127.0.0.1:0""#))
        .await
        .expect("start");
    let address = agent.listen_address().expect("listening");

    assert_eq!(
        raw(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await,
        200
    );
    // Only GET and HEAD.
    let client = reqwest::Client::new();
    let post = client
        .post(format!("http://{address}/metrics"))
        .body("x")
        .send()
        .await
        .expect("POST");
    assert_eq!(post.status().as_u16(), 405);
    let head = client
        .head(format!("http://{address}/metrics"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status().as_u16(), 200);
    // Headers beyond 8 KiB: 431, and nothing read into memory beyond the buffer.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(raw(address, big.as_bytes()).await, 431);
    // A declared body over the limit, or a chunked one: 413 without reading it.
    assert_eq!(
        raw(
            address,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
        )
        .await,
        413
    );
    assert_eq!(
        raw(
            address,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .await,
        413
    );

    // 64 idle connections hold every permit (the client's pooled one closed first): the next
    // one waits unanswered...
    drop(client);
    let mut idle = Vec::new();
    for _ in 0..vantage::web::MAX_CONNECTIONS {
        idle.push(
            tokio::net::TcpStream::connect(address)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let code = raw(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        (code, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        !waiting.is_finished(),
        "the 65th connection was served at once"
    );
    // ... until one of them goes.
    drop(idle.pop());
    let (code, waited) = waiting.await.expect("waiting request");
    assert_eq!(code, 200);
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    drop(idle);
    agent.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_credentials_configured_every_request_needs_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = TcpListener::bind("127.0.0.1:0").expect("peer");
    let port = peer.local_addr().expect("addr").port();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").expect("token file");
    let agent = Agent::start(config(
        dir.path(),
        port,
        &format!(
            "listen = \"127.0.0.1:0\"\nlisten_token_file = \"{}\"",
            token.display()
        ),
    ))
    .await
    .expect("start");
    let url = format!(
        "http://{}/metrics",
        agent.listen_address().expect("listening")
    );
    let client = reqwest::Client::new();
    let status = |auth: Option<&'static str>| {
        let mut request = client.get(&url);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        async move { request.send().await.expect("GET").status().as_u16() }
    };
    assert_eq!(status(None).await, 401);
    assert_eq!(status(Some("Bearer wrong")).await, 401);
    assert_eq!(status(Some("Bearer s3cret-token")).await, 200);
    // Rotated in place: the new token works at once, the old one no longer.
    std::fs::write(&token, "rotated").expect("rotate");
    assert_eq!(status(Some("Bearer s3cret-token")).await, 401);
    assert_eq!(status(Some("Bearer rotated")).await, 200);
    // The web page is served by the same listener, behind the same credentials.
    let page = format!("http://{}/", agent.listen_address().expect("listening"));
    let overview = |auth: Option<&'static str>| {
        let mut request = client.get(&page);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        async move {
            let answer = request.send().await.expect("GET /");
            (answer.status().as_u16(), answer.text().await.expect("body"))
        }
    };
    assert_eq!(overview(None).await.0, 401);
    let (code, html) = overview(Some("Bearer rotated")).await;
    assert_eq!(code, 200, "{html}");
    assert!(
        html.contains("<title>Overview — vantage</title>"),
        "the overview page: {html}"
    );
    agent.stop().await.expect("stop");

    // Basic auth, as Prometheus's `basic_auth` sends it.
    let dir = tempfile::tempdir().expect("tempdir");
    let password = dir.path().join("password");
    std::fs::write(&password, "pw").expect("password file");
    let agent = Agent::start(config(
        dir.path(),
        port,
        &format!(
            "listen = \"127.0.0.1:0\"\nlisten_username = \"prom\"\nlisten_password_file = \"{}\"",
            password.display()
        ),
    ))
    .await
    .expect("start");
    let url = format!(
        "http://{}/healthz",
        agent.listen_address().expect("listening")
    );
    let basic = |user: &str, pw: &str| client.get(&url).basic_auth(user, Some(pw)).send();
    assert_eq!(
        basic("prom", "pw").await.expect("GET").status().as_u16(),
        200
    );
    assert_eq!(
        basic("prom", "nope").await.expect("GET").status().as_u16(),
        401
    );
    assert_eq!(
        basic("other", "pw").await.expect("GET").status().as_u16(),
        401
    );
    let none = client.get(&url).send().await.expect("GET");
    assert_eq!(none.status().as_u16(), 401);
    assert_eq!(
        none.headers()["www-authenticate"].to_str().expect("ascii"),
        "Basic realm=\"vantage\""
    );
    agent.stop().await.expect("stop");
}

#[test]
fn a_bind_beyond_loopback_without_credentials_is_warned_about_and_a_busy_port_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = TcpListener::bind("127.0.0.1:0").expect("peer");
    let port = peer.local_addr().expect("addr").port();
    // 0.0.0.0: every address of this host (only loopback is used by the test).
    config(
        dir.path(),
        port,
        &format!("listen = \"0.0.0.0:{}\"", support::free_port()),
    );
    let agent = support::Agent::start(
        &[],
        &dir.path().join("vantage.toml"),
        dir.path().join("log"),
    );
    let start = Instant::now();
    while !agent.log().contains("serving /healthz") && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = agent.stop();
    assert!(
        log.contains(
            "the health and metrics listener is reachable from other hosts without credentials"
        ),
        "{log}"
    );

    // The same port, taken: the start fails and says which key to change.
    let busy = TcpListener::bind("127.0.0.1:0").expect("busy port");
    let busy_port = busy.local_addr().expect("addr").port();
    config(
        dir.path(),
        port,
        &format!("listen = \"127.0.0.1:{busy_port}\""),
    );
    let output = Command::new(support::VANTAGE)
        .args(["run", "--config"])
        .arg(dir.path().join("vantage.toml"))
        .stdout(Stdio::null())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{busy_port} (`[agent] listen`)"
        )),
        "{stderr}"
    );
}

/// Datagrams received on the fake notify socket within `wait`.
fn receive(socket: &UnixDatagram, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match socket.recv(&mut buffer) {
            Ok(n) => messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned()),
            Err(_) => break,
        }
    }
    messages
}

fn count(messages: &[String], line: &str) -> usize {
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == line))
        .count()
}

/// Kills (by PID) the agent it holds when dropped, also when an assertion fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_watchdog_is_pinged_only_while_the_scheduler_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = TcpListener::bind("127.0.0.1:0").expect("peer");
    let port = peer.local_addr().expect("addr").port();
    config(dir.path(), port, "");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("fake notify socket");
    let stall = dir.path().join("stall");
    // systemd sets WATCHDOG_PID to the service's PID; the shell's PID is vantage's after exec.
    let mut child = Killed(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "WATCHDOG_PID=$$ exec {} run --config {}",
                support::VANTAGE,
                dir.path().join("vantage.toml").display()
            ))
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "400000")
            .env("VANTAGE_TEST_STALL_FILE", &stall)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
            .spawn()
            .expect("vantage run"),
    );

    let first = receive(&socket, Duration::from_secs(3));
    assert_eq!(count(&first, "READY=1"), 1, "{first:?}");
    assert!(
        first
            .iter()
            .any(|m| m.contains("STATUS=probing 1 (probe, target) pairs")),
        "{first:?}"
    );
    let live = receive(&socket, Duration::from_secs(2));
    // Every 200 ms (half of WATCHDOG_USEC): about 10 in 2 s.
    assert!(count(&live, "WATCHDOG=1") >= 5, "{live:?}");

    std::fs::write(&stall, "").expect("stall the scheduler");
    // It takes 3 s (the 2 s floor, or 3 intervals of 1 s) to call the scheduler stuck.
    let _noticing = receive(&socket, Duration::from_secs(4));
    let stalled = receive(&socket, Duration::from_secs(2));
    assert_eq!(count(&stalled, "WATCHDOG=1"), 0, "{stalled:?}");
    assert!(
        stalled
            .iter()
            .any(|m| m.contains("STATUS=not live: the scheduler has started no run")),
        "{stalled:?}"
    );

    std::fs::remove_file(&stall).expect("resume");
    let resumed = receive(&socket, Duration::from_secs(3));
    assert!(count(&resumed, "WATCHDOG=1") >= 3, "{resumed:?}");

    support::terminate(&child.0);
    let last = receive(&socket, Duration::from_secs(5));
    assert_eq!(count(&last, "STOPPING=1"), 1, "{last:?}");
    let status = child.0.wait().expect("exit");
    assert!(status.success(), "{status:?}");
}

/// The agent page summarises the configuration running now: after a reload, the new one (it
/// showed the start-up one until a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_page_shows_the_configuration_of_the_last_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = TcpListener::bind("127.0.0.1:0").expect("peer");
    let port = peer.local_addr().expect("addr").port();
    let mut agent = Agent::start(config(dir.path(), port, r#"listen = "127.0.0.1:0""#))
        .await
        .expect("start");
    let page = format!(
        "http://{}/agent",
        agent.listen_address().expect("listening")
    );
    let probe_row = |interval: &str| format!("<td>open-port</td><td>tcp</td><td>{interval}</td>");
    let (code, before) = get(&page).await;
    assert_eq!(code, 200, "{before}");
    assert!(before.contains(&probe_row("1s")), "{before}");

    let path = dir.path().join("vantage.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replace(r#"interval = "1s""#, r#"interval = "2s""#),
    )
    .expect("write config");
    let reloaded = Config::load(&path).unwrap_or_else(|errors| panic!("{errors}"));
    let report = agent.reconfigure(reloaded).await.expect("reload");
    assert_eq!(report.jobs.changed, ["open-port/up"], "{report:?}");

    let (code, after) = get(&page).await;
    assert_eq!(code, 200, "{after}");
    assert!(after.contains(&probe_row("2s")), "{after}");
    assert!(!after.contains(&probe_row("1s")), "{after}");
    agent.stop().await.expect("stop");
}
