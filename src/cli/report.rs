//! `vantage report`: from the embedded store, the latest ping round per target (an mtr-like
//! table), then the latest service check (http, dns, tcp) and the latest path trace of each.

use std::process::ExitCode;
use std::time::SystemTime;

use crate::sinks::Spool;
use crate::store::{DB_FILE, LatestCheck, LatestPing, LatestTrace, Store};

use super::table;

/// The data directory `vantage run` uses when the config does not name one.
pub const DEFAULT_DATA_DIR: &str = "vantage-data";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    location: super::DataDirArgs,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let Some(data_dir) = args.location.resolve() else {
        return Ok(ExitCode::from(2));
    };
    if !data_dir.join(DB_FILE).exists() {
        anyhow::bail!(
            "no store at {}: start the agent first (`vantage run --config FILE`) or point at its data directory with --config/--data-dir",
            data_dir.join(DB_FILE).display()
        );
    }
    let store = Store::open(&data_dir)?;
    let latest = store.latest_pings()?;
    let checks = store.latest_checks()?;
    let traces = store.latest_traces()?;
    let delivery = delivery_table(&data_dir)?;
    if latest.is_empty() && checks.is_empty() && traces.is_empty() {
        println!("nothing stored yet in {}", store.path().display());
        print!("{}", delivery.map(|d| format!("\n{d}")).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemTime::now();
    let mut sections = Vec::new();
    if !latest.is_empty() {
        sections.push(pings_table(&latest, now));
    }
    if !checks.is_empty() {
        sections.push(format!("SERVICE CHECKS\n{}", checks_table(&checks, now)));
    }
    if !traces.is_empty() {
        sections.push(format!("PATH TRACES\n{}", traces_table(&traces, now)));
    }
    sections.extend(delivery);
    print!("{}", sections.join("\n"));
    Ok(ExitCode::SUCCESS)
}

/// The latest ping round per target.
fn pings_table(latest: &[LatestPing], now: SystemTime) -> String {
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
            "FAILURE",
        ],
        &rows,
        &[3, 4, 5, 6, 7],
    )
}

/// The latest http/dns/tcp run per (probe, target): the key timing of each kind (HTTP total,
/// DNS latency, TCP connect) and what the answer was.
fn checks_table(checks: &[LatestCheck], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            let f = &c.fields;
            let number = |name: &str| f[name].as_f64();
            let (time, detail) = match c.measurement.as_str() {
                "http" => {
                    let mut detail = match f["status_code"].as_u64() {
                        Some(code) => format!("HTTP {code}"),
                        None => "no response".to_string(),
                    };
                    match f["redirects"].as_u64() {
                        Some(0) | None => {}
                        Some(1) => detail.push_str(", 1 redirect"),
                        Some(n) => detail.push_str(&format!(", {n} redirects")),
                    }
                    if let Some(days) = number("cert_expiry_days") {
                        detail.push_str(&format!(", cert {days:.0} d"));
                    }
                    // A run that never got a response has no meaningful total.
                    let time = f["status_code"].as_u64().and(number("total_ms"));
                    (time, detail)
                }
                "dns" => {
                    let detail = match f["rcode"].as_str() {
                        Some(rcode) => format!(
                            "{rcode}, {} {} {}",
                            f["answers"].as_u64().unwrap_or(0),
                            f["record_type"].as_str().unwrap_or("?"),
                            if f["answers"].as_u64() == Some(1) {
                                "answer"
                            } else {
                                "answers"
                            }
                        ),
                        None => "no response".to_string(),
                    };
                    (number("latency_ms"), detail)
                }
                _ => (
                    number("connect_ms"),
                    f["address"].as_str().unwrap_or("-").to_string(),
                ),
            };
            vec![
                c.target.clone(),
                c.target_site.clone(),
                c.probe.clone(),
                c.measurement.clone(),
                if c.success { "ok" } else { "FAILED" }.to_string(),
                table::ms(time),
                detail,
                table::last_seen(c.timestamp_ns, now),
                c.failure.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table::render(
        &[
            "TARGET",
            "SITE",
            "PROBE",
            "KIND",
            "RESULT",
            "TIME MS",
            "DETAIL",
            "LAST SEEN",
            "FAILURE",
        ],
        &rows,
        &[5],
    )
}

/// The latest trace per (probe, target): the path, whether it reached and changed, the verdict.
fn traces_table(traces: &[LatestTrace], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = traces
        .iter()
        .map(|t| {
            let path: Vec<&str> = t
                .hops
                .iter()
                .map(|h| h.as_deref().unwrap_or("???"))
                .collect();
            vec![
                t.target.clone(),
                t.target_site.clone(),
                t.probe.clone(),
                t.hops.len().to_string(),
                if t.reached { "yes" } else { "no" }.to_string(),
                if t.path_changed { "CHANGED" } else { "same" }.to_string(),
                table::last_seen(t.timestamp_ns, now),
                t.verdict
                    .clone()
                    .or_else(|| t.failure.clone())
                    .unwrap_or_default(),
                path.join(" > "),
            ]
        })
        .collect();
    table::render(
        &[
            "TARGET",
            "SITE",
            "PROBE",
            "HOPS",
            "REACHED",
            "PATH",
            "LAST SEEN",
            "VERDICT",
            "HOP ADDRESSES",
        ],
        &rows,
        &[3],
    )
}

/// Per output: what waits in the spool, what was delivered, dropped or dead-lettered, last error.
fn delivery_table(data_dir: &std::path::Path) -> anyhow::Result<Option<String>> {
    let Some(spool) = Spool::open_read_only(data_dir)? else {
        return Ok(None);
    };
    let totals = spool.totals()?;
    if totals.is_empty() {
        return Ok(None);
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
    Ok(Some(format!(
        "delivery ({})\n{}",
        spool.path().display(),
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
    )))
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
