//! The service-check and trace tests' peers: a small HTTP server on loopback and dnsmasq on a
//! loopback port, stopped when their handles are dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An HTTP/1.1 server on 127.0.0.1 (threads of this test process), with fixed routes:
/// - `/health`: 200, `Content-Type: application/json`, body `{"status": "up"}`
/// - `/slow`: as `/health`, 300 ms before the headers
/// - `/moved`: 302 to `/health`
/// - anything else: 404
///
/// and every route 503 while [`HttpServer::set_unavailable`] says so.
pub struct HttpServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    unavailable: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        HttpServer::serve(listener)
    }

    /// Serve on `listener` (e.g. one bound inside a network namespace).
    pub fn serve(listener: TcpListener) -> HttpServer {
        let addr = listener.local_addr().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let unavailable = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let down = Arc::clone(&unavailable);
        // A non-blocking accept polled every 10 ms: a blocking one could only be woken by a
        // connection, and none can reach a listener bound inside a lab namespace from here.
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let down = down.load(Ordering::Relaxed);
                        std::thread::spawn(move || respond(stream, down));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        HttpServer {
            addr,
            stop,
            unavailable,
            thread: Some(thread),
        }
    }

    /// Answer every request with `503 Service Unavailable` (or serve the routes again).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::Relaxed);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn respond(stream: TcpStream, unavailable: bool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let json = ("200 OK", "application/json", "{\"status\": \"up\"}", "");
    let (status, content_type, body, extra) = match path {
        _ if unavailable => ("503 Service Unavailable", "text/plain", "down", ""),
        "/health" => json,
        "/slow" => {
            std::thread::sleep(Duration::from_millis(300));
            json
        }
        "/moved" => ("302 Found", "text/plain", "moved", "Location: /health\r\n"),
        _ => ("404 Not Found", "text/plain", "no such page", ""),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(response.as_bytes());
}

/// dnsmasq (Debian package `dnsmasq-base`) as an authoritative server for `vantage.test` on a
/// free loopback port; killed by its PID when dropped.
pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
}

impl Dnsmasq {
    /// On this process's loopback.
    pub fn start() -> Dnsmasq {
        Dnsmasq::start_with(Command::new("dnsmasq"))
    }

    /// `command` is `dnsmasq`, or a wrapper that runs it elsewhere (`ip netns exec NS dnsmasq`).
    /// The port is picked free in this process's namespace; a fresh namespace has them all free.
    pub fn start_with(mut command: Command) -> Dnsmasq {
        let port = UdpSocket::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = command
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--pid-file=",
                "--log-facility=-",
                "--auth-server=ns1.vantage.test,127.0.0.1",
                "--auth-zone=vantage.test",
                "--auth-soa=2024010101,hostmaster.vantage.test",
                "--host-record=www.vantage.test,198.18.0.10,2001:db8::10",
                "--mx-host=vantage.test,mail.vantage.test,10",
            ])
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run dnsmasq: install the Debian package dnsmasq-base (apt-get install dnsmasq-base)");
        Dnsmasq { child, addr }
    }

    /// Wait until `ready` says the server answers (e.g. a TCP connect in its namespace).
    pub fn wait(&mut self, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ready() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dnsmasq exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start listening on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Started on this process's loopback, and answering.
    pub fn running() -> Dnsmasq {
        let mut server = Dnsmasq::start();
        let addr = server.addr;
        server.wait(|| TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok());
        server
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
