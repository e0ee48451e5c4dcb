//! `vantage run`: load the configuration, run the [`Agent`] until SIGTERM or SIGINT, stop it.
//! SIGHUP reloads: the file is read and validated again (as `vantage check` does) and applied with
//! [`Agent::reconfigure`]; a bad file, or one that changes what needs a restart, is logged with
//! every error and the agent keeps running as it was.
//!
//! Under systemd (`Type=notify`) it reports `READY=1` once the agent runs, `STOPPING=1` at the
//! signal, a `STATUS=` line with a short summary, and, when the unit sets `WatchdogSec=`,
//! `WATCHDOG=1` at half that period only while [`Status::liveness`] holds (the scheduler starts
//! runs, the store writer is alive): a stuck agent stops pinging and systemd restarts it.
//! Without `NOTIFY_SOCKET` (not under systemd) none of this sends anything.
//!
//! Test hook, debug builds only: while the file named by `VANTAGE_TEST_STALL_FILE` exists, the
//! scheduler starts no run ([`Agent::stall_scheduler_for_test`]), so tests can watch `/healthz`
//! and the watchdog notice. A reload is framed by `RELOADING=1` and `READY=1`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};

use crate::agent::Agent;
use crate::config::Config;
use crate::status::Status;

/// How often `STATUS=` is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// How long the exit waits for blocking threads still running after the agent stopped.
const EXIT_GRACE: Duration = Duration::from_secs(1);

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: not starting; fix the config (`vantage check --config {}`)",
                path.display(),
                path.display()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let mut agent = Agent::start(config).await?;
        let status = agent.status();
        notify(&[NotifyState::Ready, NotifyState::Status(&summary(&status))]);
        let systemd = tokio::spawn(keep_systemd_informed(status));
        let stall_file = stall_file();
        let mut stall_poll = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = terminate.recv() => {
                    tracing::info!("SIGTERM: stopping after in-flight runs");
                    break;
                }
                _ = interrupt.recv() => {
                    tracing::info!("SIGINT: stopping after in-flight runs");
                    break;
                }
                _ = hangup.recv() => {
                    notify_reloading();
                    reload(&mut agent, path).await;
                    notify(&[NotifyState::Ready, NotifyState::Status(&summary(&agent.status()))]);
                }
                _ = stall_poll.tick(), if stall_file.is_some() => {
                    agent.stall_scheduler_for_test(stall_file.as_deref().is_some_and(Path::exists));
                }
            }
        }
        systemd.abort();
        notify(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: storing what was measured"),
        ]);
        agent.stop().await?;
        anyhow::Ok(())
    })?;
    // A trace interrupted by the stop keeps its blocking thread until trippy's round ends; its
    // report is dropped anyway, so the agent exits now instead of waiting for it.
    runtime.shutdown_timeout(EXIT_GRACE);
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: read, validate and apply the configuration file again; log one line either way.
async fn reload(agent: &mut Agent, path: &Path) {
    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            for error in &errors.errors {
                tracing::error!("{error}");
            }
            tracing::error!(
                errors = errors.errors.len(),
                "reload rejected: {} is not valid (`vantage check --config {}`); still running on the previous configuration",
                path.display(),
                path.display()
            );
            return;
        }
    };
    match agent.reconfigure(config).await {
        Ok(report) => tracing::info!("reloaded {}: {report}", path.display()),
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "reload of {} failed", path.display())
        }
    }
}

/// `RELOADING=1` with the monotonic time systemd asks for (it ignores a `RELOADING=1` without it).
fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(error) => tracing::warn!(%error, "cannot read the monotonic clock for RELOADING=1"),
    }
}

/// `VANTAGE_TEST_STALL_FILE`, honoured by debug builds only (release builds ignore it).
fn stall_file() -> Option<PathBuf> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var_os("VANTAGE_TEST_STALL_FILE").map(PathBuf::from)
}

/// Ping the watchdog (if the unit has one) while the agent is live, and refresh `STATUS=`.
async fn keep_systemd_informed(status: Status) {
    let mut usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec);
    let every = if watchdog {
        (Duration::from_micros(usec) / 2).max(Duration::from_millis(10))
    } else {
        STATUS_EVERY
    };
    let mut was_live = true;
    loop {
        tokio::time::sleep(every).await;
        match status.liveness() {
            Ok(()) => {
                let line = summary(&status);
                let mut states = vec![NotifyState::Status(&line)];
                if watchdog {
                    states.push(NotifyState::Watchdog);
                }
                notify(&states);
                if !was_live {
                    tracing::info!("live again: the watchdog is pinged again");
                }
                was_live = true;
            }
            Err(reason) => {
                if was_live {
                    tracing::error!(%reason, watchdog, "not live: the watchdog is no longer pinged (systemd restarts the agent when its WatchdogSec= passes)");
                }
                was_live = false;
                notify(&[NotifyState::Status(&format!("not live: {reason}"))]);
            }
        }
    }
}

fn summary(status: &Status) -> String {
    let snapshot = status.snapshot();
    format!(
        "probing {} (probe, target) pairs: {} runs, {} failed, {} stored",
        snapshot.jobs, snapshot.observations, snapshot.failures, snapshot.stored
    )
}

/// Tell systemd, if it listens; a failure to tell it is logged, never fatal.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}
