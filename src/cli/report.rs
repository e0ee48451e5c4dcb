//! `vantage report`: the latest round per target from the embedded store, as an mtr-like table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use crate::config::Config;
use crate::sinks::Spool;
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
        print_delivery(&data_dir)?;
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
    print_delivery(&data_dir)?;
    Ok(ExitCode::SUCCESS)
}

/// sinks: the "delivery" section — one row per output from the spool (`spool.db`), if there is one.
fn print_delivery(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let Some(spool) = Spool::open_read_only(data_dir)? else {
        return Ok(());
    };
    let totals = spool.totals()?;
    if totals.is_empty() {
        return Ok(());
    }
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = totals
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.pending_points.to_string(),
                bytes(t.pending_bytes),
                t.oldest_pending_ts_ns
                    .map_or_else(|| "-".into(), |ts| age(ts, now)),
                t.delivered.to_string(),
                t.dropped().to_string(),
                t.dead_letter.to_string(),
                t.last_delivery_ns
                    .map_or_else(|| "never".into(), |ts| table::last_seen(ts, now)),
                t.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    println!("\ndelivery ({})", spool.path().display());
    print!(
        "{}",
        table::render(
            &[
                "OUTPUT",
                "PENDING",
                "BYTES",
                "OLDEST",
                "DELIVERED",
                "DROPPED",
                "DEAD LETTERS",
                "LAST DELIVERY",
                "LAST ERROR"
            ],
            &rows,
            &[1, 2, 3, 4, 5, 6],
        )
    );
    Ok(())
}

fn bytes(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
    }
}

/// How long ago `timestamp_ns` was, e.g. "3m 12s".
fn age(timestamp_ns: i64, now: SystemTime) -> String {
    let at = SystemTime::UNIX_EPOCH
        + std::time::Duration::from_nanos(u64::try_from(timestamp_ns).unwrap_or(0));
    let ago = now.duration_since(at).unwrap_or_default();
    humantime::format_duration(std::time::Duration::from_secs(ago.as_secs())).to_string()
}
