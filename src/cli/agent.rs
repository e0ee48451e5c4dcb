//! `vantage run`: load the configuration, run the [`Agent`] until SIGTERM or SIGINT, stop it.
//! SIGHUP reloads: the file is read and validated again (as `vantage check` does) and applied with
//! [`Agent::reconfigure`]; a bad file, or one that changes what needs a restart, is logged with
//! every error and the agent keeps running as it was.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::agent::Agent;
use crate::config::Config;

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
                _ = hangup.recv() => reload(&mut agent, path).await,
            }
        }
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
