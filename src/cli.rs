//! The `vantage` command line: the agent (`run`), its config check, the local report, the
//! incident drafts (`incidents list|show`), and the on-call one-shots (`ping`, `trace`, `http`,
//! `dns`, `tcp`: exit 0 ok, 1 the check failed, 2 could not run).

mod agent;
mod dns;
mod fleet;
mod generate;
mod http;
mod incidents;
mod ping;
mod report;
mod serve;
mod table;
mod tcp;
mod trace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, IncidentSinkKind, format_duration};

#[derive(Debug, Parser)]
#[command(
    name = "vantage",
    version,
    about = "Network and service outage probe agent",
    long_about = "vantage probes other sites and cloud endpoints continuously (smokeping-style ICMP \
rounds, mtr-style path traces, HTTP(S), DNS and TCP checks), stores every result in an embedded \
SQLite store, and reports where the fault is.\n\n\
Quick start:\n  vantage check --config config/quickstart.toml\n  vantage run --config config/quickstart.toml\n  \
vantage report --config config/quickstart.toml\n\nOn call:\n  vantage ping --count 20 198.18.2.2 2001:db8::2\n  \
vantage trace 198.18.2.2\n  vantage http https://api.example.net/healthz\n  \
vantage dns www.example.net --server 198.18.0.53\n  vantage tcp db.example.net:5432\n\n\
The one-shot commands exit 0 when the check passed, 1 when it failed, 2 when it could not run.",
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
        /// The config file to check (TOML); see config/quickstart.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Do not contact the outputs: only validate them and read their credentials.
        #[arg(long)]
        offline: bool,
    },
    /// Show the latest ping round, service check and path trace per target from the embedded store.
    Report(report::Args),
    /// Ping targets now, smokeping-style: many targets at once, like `fping -C`.
    Ping(ping::Args),
    /// Trace the path to a target now, like `mtr --report`, and say where loss begins.
    #[command(
        long_about = "Trace the path to TARGET hop by hop, like `mtr --report --report-cycles N`: \
every round sends one probe per TTL, and each hop's loss and round-trip times are summarised over \
the rounds. The table can be pasted into a bug unchanged (columns Loss% Snt Last Avg Best Wrst \
StDev; `???` for a hop that never answered), and is followed by the verdict: the first hop where \
loss begins and persists to the destination, told apart from a router that merely rate-limits its \
own ICMP replies while the hops after it are clean.\n\n\
Examples:\n  vantage trace 198.18.2.2\n  vantage trace --protocol udp --count 50 198.18.2.2   \
# flow-stable (Paris) under ECMP\n  vantage trace --json 198.18.2.2 | jq '.hops[] | [.ttl, .loss_pct]'\n\n\
Exit status: 0 the destination answered, 1 it did not (or did not resolve), 2 could not trace \
(arguments, privileges)."
    )]
    Trace(trace::Args),
    /// Run one HTTP(S) check now: phase timings and every assertion's result.
    #[command(
        long_about = "Request URL once on a fresh connection (no pooling, no TLS resumption, \
no retries) and print the phases in milliseconds — resolve, connect, tls, processing (to the \
first response byte), transfer, total — then every assertion with its result.\n\n\
Examples:\n  vantage http https://api.example.net/healthz\n  \
vantage http --expect-status 200,204 --body-contains '\"up\"' --min-cert-expiry-days 14 https://api.example.net/healthz\n  \
vantage http -X POST -H 'Content-Type: application/json' -d '{}' --max-total-ms 500 http://198.18.1.1:8080/ping\n  \
vantage http --ca-file ca.pem --server-name api.internal https://198.18.1.1/\n\n\
Exit status: 0 every assertion passed, 1 the check failed, 2 could not run (bad URL, CA file, regex)."
    )]
    Http(http::Args),
    /// Ask one DNS server one question now: rcode, latency, answers.
    #[command(
        long_about = "Send one DNS query for NAME to one server — exactly one datagram (or \
one TCP connection), no retries, no cache, no search domains — and print the response code, the \
latency, the flags and the answers. NXDOMAIN, SERVFAIL and silence are failures (exit 1), unless \
--expect-rcode says otherwise.\n\n\
Examples:\n  vantage dns www.example.net --server 198.18.0.53\n  \
vantage dns example.net --type MX --tcp --server 127.0.0.1:5353\n  \
vantage dns gone.example.net --expect-rcode NXDOMAIN --server 198.18.0.53\n\n\
Without --server the first nameserver of /etc/resolv.conf is asked.\n\n\
Exit status: 0 the answer met every expectation, 1 it did not, 2 could not run."
    )]
    Dns(dns::Args),
    /// Try a TCP handshake with HOST:PORT now and time it.
    #[command(
        long_about = "Connect to HOST:PORT once and time the handshake; the connection is \
closed as soon as it is up. A reset is `refused`, an ICMP or local \"no route\" is `unreachable`, \
silence until the timeout is `timeout`.\n\n\
Examples:\n  vantage tcp 198.18.1.1:443\n  vantage tcp --json '[2001:db8::1]:5432'\n\n\
Exit status: 0 connected, 1 did not, 2 could not run."
    )]
    Tcp(tcp::Args),
    /// The incident drafts this agent wrote: `list`, `show ID`.
    Incidents(incidents::Args),
    /// Serve the web page of a data directory, read-only (loopback by default).
    Serve(serve::Args),
    /// Run the fleet evaluator: fleet rules over the store every agent writes to, one incident
    /// per outage (see config/fleet.example.toml), until SIGINT/SIGTERM.
    Fleet(fleet::Args),
    /// Write the man pages or shell completions (for packaging; see scripts/build-deb).
    #[command(hide = true)]
    Generate(generate::Args),
}

/// Parse the command line, set up logging, run the command. Exit codes: 0 fine, 1 the command's
/// answer is "something is wrong" (bad config, a target with 100% loss), 2 could not do the job.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Everything vantage writes (stores, spool, drafts) describes the network: private files.
    crate::config::data_dir::private_umask();
    let result = match cli.command {
        Command::Run { config } => agent::run(&config),
        Command::Check { config, offline } => check(&config, offline),
        Command::Report(args) => report::run(&args),
        Command::Ping(args) => ping::run(&args),
        Command::Trace(args) => trace::run(&args),
        Command::Http(args) => http::run(&args),
        Command::Dns(args) => dns::run(&args),
        Command::Tcp(args) => tcp::run(&args),
        Command::Incidents(args) => incidents::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Fleet(args) => fleet::run(&args),
        Command::Generate(args) => generate::run(&args),
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
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn check(path: &std::path::Path, offline: bool) -> anyhow::Result<ExitCode> {
    match Config::load(path) {
        Ok(config) => {
            println!(
                "{}: ok — agent {:?} at site {:?}, {} targets, {} probes, {} rules, data in {}",
                path.display(),
                config.agent.name,
                config.agent.site,
                config.targets.len(),
                config.probes.len(),
                config.rules.len(),
                config.agent.data_dir.display()
            );
            let data_dir_ok = match crate::config::data_dir::check(&config.agent.data_dir) {
                Ok(()) => true,
                Err(message) => {
                    println!("data_dir: error: {message}");
                    false
                }
            };
            let results =
                runtime()?.block_on(crate::sinks::check::check_outputs(&config.outputs, offline));
            for result in &results {
                let verdict = if result.ok { "ok" } else { "error" };
                println!("output {:?}: {verdict}: {}", result.output, result.message);
            }
            let mut sinks_ok = true;
            for sink in &config.incident_sinks {
                let target = match &sink.kind {
                    IncidentSinkKind::Alertmanager { resend, .. } => format!(
                        "alertmanager at {} (open incidents re-sent every {})",
                        sink.url,
                        format_duration(*resend)
                    ),
                    IncidentSinkKind::Webhook => format!("webhook, POST {}", sink.url),
                };
                match sink.token.as_ref().map(|source| source.read()) {
                    Some(Err(e)) => {
                        sinks_ok = false;
                        println!(
                            "incident sink {:?}: error: {target}: cannot read the token: {e}",
                            sink.name
                        );
                    }
                    _ => println!("incident sink {:?}: ok: {target}", sink.name),
                }
            }
            if data_dir_ok && sinks_ok && results.iter().all(|r| r.ok) {
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

/// Where a command that reads the agent's data finds it: `--config` or `--data-dir`.
#[derive(Debug, clap::Args)]
pub struct DataDirArgs {
    /// Read the data directory from this config file.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The data directory to read (default: the config's, else ./vantage-data).
    #[arg(long, global = true, conflicts_with = "config")]
    data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    /// The data directory; `None` after printing the config's mistakes (exit code 2).
    fn resolve(&self) -> Option<PathBuf> {
        match (&self.config, &self.data_dir) {
            (Some(path), _) => match Config::load(path) {
                Ok(config) => Some(config.agent.data_dir),
                Err(errors) => {
                    eprintln!("{errors}");
                    None
                }
            },
            (None, Some(dir)) => Some(dir.clone()),
            (None, None) => Some(PathBuf::from(report::DEFAULT_DATA_DIR)),
        }
    }
}

/// A tokio runtime for one command.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// A runtime on the calling thread, for a command with one task to drive (`vantage ping`: its
/// echoes go out from the ICMP client's own socket loop). Worker threads would only add their
/// start-up and wake-ups.
fn single_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` describes every option of every command (`check --config` once had no text).
    #[test]
    fn every_option_has_a_description() {
        fn undescribed(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                undescribed(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        undescribed(
            &<Cli as clap::CommandFactory>::command(),
            "vantage",
            &mut missing,
        );
        assert!(
            missing.is_empty(),
            "options without a description: {missing:?}"
        );
    }
}
