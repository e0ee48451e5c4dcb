//! Headless Chromium (Debian `chromium`) for the web page tests: the DOM after parsing, and
//! screenshots. Each call uses its own temporary profile.

use std::path::Path;
use std::process::Command;

use super::require_binary;

/// Chromium `args`, killed (by PID) after 60 s: a page that never finishes loading fails the test
/// instead of hanging it.
fn chromium(args: &[&str]) -> std::process::Output {
    let binary = require_binary("chromium", "chromium");
    let profile = tempfile::tempdir().expect("chromium profile");
    let out = tempfile::tempdir().expect("chromium output");
    let (stdout, stderr) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("run chromium");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium {args:?} did not finish within 60 s: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let output = std::process::Output {
        status,
        stdout: std::fs::read(&stdout).unwrap_or_default(),
        stderr: std::fs::read(&stderr).unwrap_or_default(),
    };
    assert!(
        output.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The page's DOM as Chromium built it (`--dump-dom`).
pub fn dump_dom(url: &str) -> String {
    String::from_utf8_lossy(&chromium(&["--dump-dom", url]).stdout).into_owned()
}

/// A PNG screenshot of the page, `width`×`height` pixels.
pub fn screenshot(url: &str, path: &Path, width: u32, height: u32) {
    chromium(&[
        &format!("--screenshot={}", path.display()),
        &format!("--window-size={width},{height}"),
        "--hide-scrollbars",
        url,
    ]);
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1000, "screenshot {} is {size} bytes", path.display());
}

/// `vantage serve ARGS --listen 127.0.0.1:PORT` as a child, killed (by PID) when dropped.
pub struct Served {
    child: std::process::Child,
    pub base: String,
}

impl Served {
    pub fn start(args: &[&str]) -> Served {
        let port = super::free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(super::VANTAGE)
            .arg("serve")
            .args(args)
            .args(["--listen", &listen])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start vantage serve");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "vantage serve did not listen on {listen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Served {
            child,
            base: format!("http://{listen}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
