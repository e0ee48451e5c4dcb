//! `vantage run`: load the configuration, run the [`Agent`] until SIGTERM or SIGINT, stop it.

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
        let agent = Agent::start(config).await?;
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping after in-flight runs"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping after in-flight runs"),
        }
        agent.stop().await?;
        anyhow::Ok(())
    })?;
    // A trace interrupted by the stop keeps its blocking thread until trippy's round ends; its
    // report is dropped anyway, so the agent exits now instead of waiting for it.
    runtime.shutdown_timeout(EXIT_GRACE);
    Ok(ExitCode::SUCCESS)
}
