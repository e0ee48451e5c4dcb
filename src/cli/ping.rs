//! `vantage ping`: the on-call one-shot. Many targets at once, like `fping -C`, with smokeping
//! statistics per target.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use probes::{
    CancellationToken, FailureKind, IcmpClient, Measurement, Observation, Outcome, RoundPlan,
};
use serde::Serialize;

use super::table;
use probes::IpPreference;
use probes::net::resolve_one;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Echoes per target, at most 65536: every echo of a run holds one of the 65,536 sequence
    /// numbers that tell its reply apart.
    #[arg(long, short = 'c', default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT))]
    count: u32,
    /// Gap between echoes to the same target, in ms (like fping -p). Replies slower than this
    /// still count, up to --timeout-ms.
    #[arg(long, short = 'p', default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    interval_ms: u64,
    /// How long to wait for each echo's reply, in ms.
    #[arg(long, short = 't', default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// One JSON object per target per line (fields of the `ping` measurement plus target, address,
    /// rtts_ms and failure).
    #[arg(long)]
    json: bool,
    /// Send each period's echoes to every target back to back, like `fping -i 0`: the least CPU
    /// per echo, but one burst of a packet per target every period. Without it, the targets'
    /// starts are spread evenly across one interval.
    #[arg(long)]
    burst: bool,
    /// Host names or IP addresses.
    #[arg(required = true, value_name = "TARGET")]
    targets: Vec<String>,
}

/// `--count`'s bound: one round's echoes must fit in one address's sequence space.
const MAX_COUNT: i64 = probes::icmp::MAX_OUTSTANDING_PER_ADDRESS as i64;

/// A target's round, or why it could not start (its name did not resolve).
type RoundResult = Result<(IpAddr, Observation), String>;

/// One line of `--json` output.
#[derive(Debug, Serialize)]
struct PingLine<'a> {
    target: &'a str,
    address: Option<String>,
    #[serde(flatten)]
    stats: &'a probes::PingStats,
    failure: Option<&'a Outcome>,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    super::single_thread_runtime()?.block_on(ping_all(args))
}

/// When the round of target `index` (of `n`) starts: staggered across one interval, so thousands
/// of targets never go out in one burst, or all at once when a burst is asked for.
fn start_offset(index: usize, n: usize, spacing: Duration, burst: bool) -> Duration {
    if burst {
        return Duration::ZERO;
    }
    let share = |k: usize| u32::try_from(k).unwrap_or(u32::MAX);
    spacing / share(n.max(1)) * share(index)
}

/// How long a finished line may wait in the output buffer while other rounds are ending.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

async fn ping_all(args: &Args) -> anyhow::Result<ExitCode> {
    let client = IcmpClient::new()?;
    let plan = RoundPlan {
        count: args.count,
        spacing: Duration::from_millis(args.interval_ms),
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let stop = CancellationToken::new();
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            ctrl_c.cancel();
        }
    });
    // Names first (IP literals need no lookup), then every round at once as one batch.
    let mut resolved: Vec<Option<Result<IpAddr, String>>> = args
        .targets
        .iter()
        .map(|target| target.parse::<IpAddr>().ok().map(Ok))
        .collect();
    let mut lookups = tokio::task::JoinSet::new();
    for (index, target) in args.targets.iter().enumerate() {
        if resolved[index].is_none() {
            let target = target.clone();
            lookups.spawn(async move { (index, resolve_one(&target, IpPreference::Any).await) });
        }
    }
    while let Some(done) = lookups.join_next().await {
        let (index, address) = done?;
        resolved[index] = Some(address);
    }
    // The whole list goes to the ICMP client as one batch: no task or channel per target.
    let n = args.targets.len();
    let start = std::time::Instant::now();
    let mut batch = Vec::new();
    // Target index of each batch entry; results of targets that did not resolve wait in `ended`.
    let mut batch_target = Vec::new();
    let mut ended: BTreeMap<usize, RoundResult> = BTreeMap::new();
    for (index, (target, address)) in args.targets.iter().zip(resolved).enumerate() {
        match address {
            Some(Ok(address)) => {
                batch.push((
                    address,
                    start + start_offset(index, n, plan.spacing, args.burst),
                ));
                batch_target.push(index);
            }
            Some(Err(message)) => {
                ended.insert(index, Err(message));
            }
            None => {
                ended.insert(index, Err(format!("{target}: not resolved")));
            }
        }
    }
    let mut rounds = client.rounds(&batch, plan, &stop);

    // Lines go out in target order as soon as every earlier target's round has ended (rounds end
    // roughly in start order, so only the few that end early wait in memory). They are flushed
    // when no round is waiting, at most every FLUSH_EVERY: a write per line would be a system
    // call per target.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut next_line = 0;
    let mut all_answered = true;
    let mut rows = Vec::new();
    let mut flushed_at = tokio::time::Instant::now();
    loop {
        while let Some(result) = ended.remove(&next_line) {
            all_answered &= emit(&mut out, args, &args.targets[next_line], &result, &mut rows)?;
            next_line += 1;
        }
        let (index, observation) = match rounds.try_next() {
            Some(ended) => ended,
            None => match tokio::time::timeout_at(flushed_at + FLUSH_EVERY, rounds.next()).await {
                Ok(Some(ended)) => ended,
                Ok(None) => break,
                Err(_) => {
                    out.flush()?;
                    flushed_at = tokio::time::Instant::now();
                    match rounds.next().await {
                        Some(ended) => ended,
                        None => break,
                    }
                }
            },
        };
        let target = batch_target[index];
        let result = Ok((batch[index].0, observation));
        if target == next_line {
            // In order (the usual case): straight out, not through the map.
            all_answered &= emit(&mut out, args, &args.targets[target], &result, &mut rows)?;
            next_line += 1;
        } else {
            ended.insert(target, result);
        }
    }
    // Every round has ended, so `ended` is empty; were a round ever missing, print the rest anyway.
    while let Some((index, result)) = ended.pop_first() {
        all_answered &= emit(&mut out, args, &args.targets[index], &result, &mut rows)?;
    }
    if !args.json {
        write!(
            out,
            "{}",
            table::render(
                &[
                    "TARGET", "ADDRESS", "LOSS%", "SNT", "RCV", "MIN", "MEDIAN", "P90", "MAX",
                    "JITTER", "FAILURE"
                ],
                &rows,
                &[2, 3, 4, 5, 6, 7, 8, 9],
            )
        )?;
    }
    out.flush()?;
    Ok(if all_answered {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Print one target's line (`--json`), or add its table row. Returns whether any echo was answered.
fn emit(
    out: &mut impl Write,
    args: &Args,
    target: &str,
    result: &RoundResult,
    rows: &mut Vec<Vec<String>>,
) -> anyhow::Result<bool> {
    let unresolved_stats;
    let unresolved;
    let (address, stats, failure) = match result {
        Ok((address, observation)) => {
            // An ICMP round always measures `ping`; anything else would be a bug upstream.
            let stats = match &observation.measurement {
                Measurement::Ping(stats) => stats,
                _ => {
                    unresolved_stats = probes::PingStats::from_rtts(Vec::new());
                    &unresolved_stats
                }
            };
            let failure = Some(&observation.outcome).filter(|o| **o != Outcome::Success);
            (Some(*address), stats, failure)
        }
        Err(message) => {
            unresolved_stats = probes::PingStats::from_rtts(Vec::new());
            unresolved = Outcome::failure(FailureKind::Resolve, message.clone());
            (None, &unresolved_stats, Some(&unresolved))
        }
    };
    if args.json {
        let line = PingLine {
            target,
            address: address.map(|a| a.to_string()),
            stats,
            failure,
        };
        serde_json::to_writer(&mut *out, &line)?;
        writeln!(out)?;
    } else {
        rows.push(vec![
            target.to_string(),
            address.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            format!("{:.1}%", stats.loss_pct),
            stats.sent.to_string(),
            stats.received.to_string(),
            table::ms(stats.rtt_min_ms),
            table::ms(stats.rtt_median_ms),
            table::ms(stats.rtt_p90_ms),
            table::ms(stats.rtt_max_ms),
            table::ms(stats.jitter_ms),
            match failure {
                Some(Outcome::Failure { message, .. }) => message.clone(),
                _ => String::new(),
            },
        ]);
    }
    Ok(stats.received > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_spread_across_one_interval_unless_a_burst_is_asked_for() {
        let spacing = Duration::from_millis(100);
        let spread: Vec<Duration> = (0..4).map(|i| start_offset(i, 4, spacing, false)).collect();
        let ms = Duration::from_millis;
        assert_eq!(spread, [ms(0), ms(25), ms(50), ms(75)]);
        assert!((0..4).all(|i| start_offset(i, 4, spacing, true).is_zero()));
        // A single target starts at once either way.
        assert!(start_offset(0, 1, spacing, false).is_zero());
    }
}
