//! `vantage fleet`: the fleet evaluator ([`crate::evaluator`]) until SIGTERM or SIGINT,
//! reading the shared store through the fleet query module ([`crate::fleet::query`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::evaluator::EvaluatorConfig;
use crate::evaluator::{self, Reading};
use crate::fleet::query::{FleetRequest, FleetStore, FleetView};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The fleet evaluator's config (TOML); see config/fleet.example.toml.
    #[arg(long, short)]
    config: PathBuf,
    /// Only validate the config and report every mistake at once (exit code 1 if any).
    #[arg(long)]
    check: bool,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let path = &args.config;
    let config = match EvaluatorConfig::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            if args.check {
                return Ok(ExitCode::from(1));
            }
            eprintln!(
                "{}: not starting; fix the config (`vantage fleet --check --config {}`)",
                path.display(),
                path.display()
            );
            return Ok(ExitCode::from(2));
        }
    };
    if args.check {
        println!(
            "{}: ok ({} sites, {} rules)",
            path.display(),
            config.sites.len(),
            config.rules.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let output = config
        .outputs
        .iter()
        .find(|o| o.name == config.store.output)
        .context("the [fleet] output is not an [[output]]")?;
    let store = FleetStore::new(&config.store, output)?;
    let mut targets: Vec<String> = config
        .rules
        .iter()
        .flat_map(|r| r.targets.iter())
        .chain(config.sites.iter().flat_map(|s| s.targets.iter()))
        .cloned()
        .collect();
    targets.sort();
    targets.dedup();

    let stop = Arc::new(AtomicBool::new(false));
    let runtime = super::runtime()?;
    let flag = Arc::clone(&stop);
    runtime.spawn(async move {
        let (Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot watch SIGTERM/SIGINT; stop the evaluator with SIGKILL");
            return;
        };
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        }
        flag.store(true, Ordering::Relaxed);
    });
    let mut read = |from, until| {
        let request = FleetRequest {
            targets: targets.clone(),
            from,
            until,
        };
        let view = store
            .query_blocking(&request)
            .map_err(|e| anyhow::anyhow!("fleet store {}: {e}", store.endpoint()))?;
        Ok(readings(&view))
    };
    evaluator::run(&config, &mut read, &stop)?;
    Ok(ExitCode::SUCCESS)
}

/// The evaluator's figures from the query module's view: one per (site, target) with echoes.
fn readings(view: &FleetView) -> Vec<Reading> {
    view.rows
        .iter()
        .map(|row| Reading {
            site: row.site.clone(),
            target: row.target.clone(),
            loss_pct: row.loss_pct(),
            median_ms: row.median_ms,
        })
        .collect()
}
