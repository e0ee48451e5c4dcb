//! `vantage run`: load the configuration, run the [`Agent`] until SIGTERM or SIGINT, stop it.

use std::path::Path;
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};

use crate::agent::Agent;
use crate::config::Config;

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
    super::runtime()?.block_on(async {
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
    Ok(ExitCode::SUCCESS)
}
