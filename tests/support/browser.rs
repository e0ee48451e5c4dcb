//! Headless Chromium (Debian `chromium`) for the web page tests: the DOM after parsing, and
//! screenshots. Each call uses its own temporary profile.

use std::path::Path;
use std::process::Command;

use super::require_binary;

fn chromium(args: &[&str]) -> std::process::Output {
    let binary = require_binary("chromium", "chromium");
    let profile = tempfile::tempdir().expect("chromium profile");
    let output = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-dev-shm-usage",
            "--timeout=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("run chromium");
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
