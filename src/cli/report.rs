//! `vantage report`: the latest round per target from the embedded store, as an mtr-like table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use crate::config::Config;
use crate::store::{DB_FILE, Store};

use super::table;

/// The data directory `vantage run` uses when the config does not name one.
pub const DEFAULT_DATA_DIR: &str = "vantage-data";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read the data directory from this config file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The data directory to read (default: the config's, else ./vantage-data).
    #[arg(long, conflicts_with = "config")]
    data_dir: Option<PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let data_dir = match (&args.config, &args.data_dir) {
        (Some(path), _) => match Config::load(path) {
            Ok(config) => config.agent.data_dir,
            Err(errors) => {
                eprintln!("{errors}");
                return Ok(ExitCode::from(2));
            }
        },
        (None, Some(dir)) => dir.clone(),
        (None, None) => PathBuf::from(DEFAULT_DATA_DIR),
    };
    if !data_dir.join(DB_FILE).exists() {
        anyhow::bail!(
            "no store at {}: start the agent first (`vantage run --config FILE`) or point at its data directory with --config/--data-dir",
            data_dir.join(DB_FILE).display()
        );
    }
    let store = Store::open(&data_dir)?;
    let latest = store.latest_pings()?;
    if latest.is_empty() {
        println!("no ping rounds stored yet in {}", store.path().display());
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = latest
        .iter()
        .map(|p| {
            vec![
                p.target.clone(),
                p.target_site.clone(),
                p.probe.clone(),
                format!("{:.1}%", p.loss_pct),
                p.sent.to_string(),
                table::ms(p.rtt_median_ms),
                match (p.rtt_p10_ms, p.rtt_p90_ms) {
                    (Some(lo), Some(hi)) => {
                        format!("{}–{}", table::ms(Some(lo)), table::ms(Some(hi)))
                    }
                    _ => "-".into(),
                },
                table::ms(p.rtt_max_ms),
                table::last_seen(p.timestamp_ns, now),
                p.failure.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "TARGET",
                "SITE",
                "PROBE",
                "LOSS%",
                "SNT",
                "MEDIAN",
                "P10–P90",
                "MAX",
                "LAST SEEN",
                "FAILURE"
            ],
            &rows,
            &[3, 4, 5, 6, 7],
        )
    );
    Ok(ExitCode::SUCCESS)
}
