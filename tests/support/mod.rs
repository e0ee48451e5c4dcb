//! What the integration tests share, one module for all of them: the agent as a child process,
//! `vantage` commands, the peers of the service checks (`services`: an HTTP server, dnsmasq) and
//! the stores of the sink tests (`stores`: VictoriaMetrics, InfluxDB, a scripted endpoint), a
//! real Alertmanager (`alertmanager`) and headless Chromium (`browser`).
//! Everything started here is stopped when its handle is dropped (by PID, also when the test
//! panics).
//!
//! A test that needs a Debian package fails (never skips) when it is missing: scripts/test
//! installs them.
#![allow(dead_code)] // each test binary uses a different part

mod alertmanager;
mod browser;
mod process;
mod services;
mod stores;

// Each test binary uses a different part.
#[allow(unused_imports)]
pub use alertmanager::*;
#[allow(unused_imports)]
pub use browser::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use services::*;
#[allow(unused_imports)]
pub use stores::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const VANTAGE: &str = env!("CARGO_BIN_EXE_vantage");

/// `vantage run` as a child (directly, or through `ip netns exec`, which execs it in place, so
/// the child's PID is the agent's); SIGKILLed when dropped unless stopped cleanly.
pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    /// `wrapper`: e.g. `["ip", "netns", "exec", NS]`, or empty.
    pub fn start(wrapper: &[&str], config: &Path, log: PathBuf) -> Agent {
        let file = std::fs::File::create(&log).expect("agent log");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(VANTAGE);
                command
            }
            None => Command::new(VANTAGE),
        };
        let child = command
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "vantage=info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start vantage run");
        Agent {
            child: Some(child),
            log,
        }
    }

    /// SIGTERM, wait, and insist on a clean exit; returns the log.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().expect("running agent");
        terminate(&child);
        let exit = child.wait().expect("agent exit");
        let log = self.log();
        assert!(exit.success(), "agent exit {exit:?}:\n{log}");
        log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGHUP: reload the configuration file.
    pub fn hangup(&self) {
        let child = self.child.as_ref().expect("running agent");
        let sent = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(sent.success(), "kill -HUP {}", child.id());
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        let child = self.child.as_mut().expect("agent started");
        matches!(child.try_wait(), Ok(None))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Run `vantage ARGS` and return (exit code, stdout, stderr).
pub fn vantage(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(VANTAGE)
        .args(args)
        .output()
        .expect("run vantage");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
