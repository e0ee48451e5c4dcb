//! The `vantage` command line: the agent (`run`), its config check, the local report, and the
//! on-call one-shots.

mod agent;
mod ping;
mod report;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "vantage",
    version,
    about = "Network and service outage probe agent",
    long_about = "vantage probes other sites and cloud endpoints continuously (smokeping-style ICMP \
rounds), stores every result in an embedded SQLite store, and reports where the fault is.\n\n\
Quick start:\n  vantage check --config config/quickstart.toml\n  vantage run --config config/quickstart.toml\n  \
vantage report --config config/quickstart.toml\n\nOn call:\n  vantage ping --count 20 198.18.2.2 2001:db8::2",
    after_help = "Logs go to stderr; set the level with RUST_LOG (e.g. RUST_LOG=vantage=debug)."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: probe every target on schedule and store every result until SIGINT/SIGTERM.
    Run {
        /// The agent's config file (TOML); see config/quickstart.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and report every mistake at once (exit code 1 if any); then test
    /// connectivity and credentials of every output.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Do not contact the outputs: only validate them and read their credentials.
        #[arg(long)]
        offline: bool,
    },
    /// Show the latest ping round per target from the embedded store, mtr-style.
    Report(report::Args),
    /// Ping targets now, smokeping-style: many targets at once, like `fping -C`.
    Ping(ping::Args),
}

/// Parse the command line, set up logging, run the command. Exit codes: 0 fine, 1 the command's
/// answer is "something is wrong" (bad config, a target with 100% loss), 2 could not do the job.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run { config } => agent::run(&config),
        Command::Check { config, offline } => check(&config, offline),
        Command::Report(args) => report::run(&args),
        Command::Ping(args) => ping::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn check(path: &std::path::Path, offline: bool) -> anyhow::Result<ExitCode> {
    match Config::load(path) {
        Ok(config) => {
            println!(
                "{}: ok — agent {:?} at site {:?}, {} targets, {} probes, data in {}",
                path.display(),
                config.agent.name,
                config.agent.site,
                config.targets.len(),
                config.probes.len(),
                config.agent.data_dir.display()
            );
            // sinks: `[[output]]` tables become `OutputConfig`s once the config parser reads them.
            let outputs: Vec<crate::sinks::OutputConfig> = Vec::new();
            let results =
                runtime()?.block_on(crate::sinks::check::check_outputs(&outputs, offline));
            for result in &results {
                let verdict = if result.ok { "ok" } else { "error" };
                println!("output {:?}: {verdict}: {}", result.output, result.message);
            }
            if results.iter().all(|r| r.ok) {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(1))
            }
        }
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.errors.len();
            eprintln!(
                "{}: {n} error{}",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// A tokio runtime for one command.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
