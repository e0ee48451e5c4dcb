//! `vantage trace`: an mtr-style path trace, printed like `mtr --report` (paste it into a bug
//! as is), followed by the verdict (where loss starts, where latency steps up). Needs
//! `CAP_NET_RAW`: without it, it refuses (exit 2) and says how to grant it.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use probes::{
    CancellationToken, FailureKind, IpPreference, Measurement, Outcome, TraceProtocol,
    TraceSettings,
};

use crate::config::TRACE_GRACE;
use probes::net::has_cap_net_raw;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to probe with: ICMP echo; UDP to a fixed port pair (Paris/Dublin: flow-stable under
    /// ECMP); or TCP SYN. Every protocol needs CAP_NET_RAW.
    #[arg(long, short = 'P', value_enum, default_value_t = Protocol::Icmp)]
    protocol: Protocol,
    /// Rounds: how many probes each hop gets (mtr -c).
    #[arg(long, short = 'c', default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    count: u32,
    /// Milliseconds per round: the time between rounds and how long a round waits for its
    /// replies (mtr -i, in ms).
    #[arg(long, short = 'i', default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    interval_ms: u64,
    /// The highest TTL to probe (mtr -m).
    #[arg(long, short = 'm', default_value_t = 30, value_parser = clap::value_parser!(u8).range(1..=64))]
    max_ttl: u8,
    /// Destination port for UDP (default 33434) or TCP (default 80).
    #[arg(long, short = 'p')]
    port: Option<u16>,
    /// Use IPv4 only (when TARGET is a name).
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// Use IPv6 only (when TARGET is a name).
    #[arg(short = '6')]
    ipv6: bool,
    /// Print one JSON object: every hop's fields (ttl, address, addresses, sent, received,
    /// loss_pct, rtt_last_ms, rtt_avg_ms, rtt_best_ms, rtt_worst_ms, rtt_stddev_ms), reached,
    /// path_hash, the verdict (structured, the latency step, and as text) and the failure, if any.
    #[arg(long)]
    json: bool,
    /// A host name or an IP address.
    #[arg(value_name = "TARGET")]
    target: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    Icmp,
    Udp,
    Tcp,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let privileged = has_cap_net_raw();
    if args.port.is_some() && args.protocol == Protocol::Icmp {
        anyhow::bail!("--port applies to --protocol udp or tcp; ICMP echo has no ports");
    }
    if !privileged {
        anyhow::bail!("{}", probes::trace::NEEDS_CAP_NET_RAW);
    }
    let settings = TraceSettings {
        ip: if args.ipv4 {
            IpPreference::V4Only
        } else if args.ipv6 {
            IpPreference::V6Only
        } else {
            IpPreference::Any
        },
        protocol: match args.protocol {
            Protocol::Icmp => TraceProtocol::Icmp,
            Protocol::Udp => TraceProtocol::Udp,
            Protocol::Tcp => TraceProtocol::Tcp,
        },
        rounds: args.count as usize,
        round_duration: Duration::from_millis(args.interval_ms),
        grace: TRACE_GRACE,
        max_ttl: args.max_ttl,
        port: args.port,
        privileged,
        ..TraceSettings::new(args.target.clone())
    };
    let started = SystemTime::now();
    let observation =
        super::runtime()?.block_on(probes::trace::run(&settings, &CancellationToken::new()));
    let Measurement::Trace(report) = &observation.measurement else {
        anyhow::bail!(
            "the tracer returned a {} measurement",
            observation.measurement.name()
        );
    };
    let failure = match &observation.outcome {
        Outcome::Success => None,
        Outcome::Failure { kind, message } => Some((*kind, message.as_str())),
    };
    // Could not trace at all (sockets, privileges): not a statement about the path.
    if let Some((FailureKind::Send, message)) = failure {
        anyhow::bail!("{message}");
    }
    let verdict = (!report.hops.is_empty()).then(|| probes::locate_loss(report));
    let latency_step = probes::locate_latency_step(report);
    let verdict_text = verdict.is_some().then(|| probes::verdict_text(report));
    if args.json {
        let mut json = serde_json::to_value(report)?;
        if let Some(object) = json.as_object_mut() {
            object.insert("host".into(), args.target.clone().into());
            object.insert(
                "protocol".into(),
                format!("{:?}", args.protocol).to_lowercase().into(),
            );
            object.insert("verdict".into(), serde_json::to_value(&verdict)?);
            object.insert("latency_step".into(), serde_json::to_value(&latency_step)?);
            object.insert("verdict_text".into(), verdict_text.clone().into());
            object.insert(
                "failure".into(),
                match &observation.outcome {
                    Outcome::Success => serde_json::Value::Null,
                    failure => serde_json::to_value(failure)?,
                },
            );
        }
        println!("{}", serde_json::to_string(&json)?);
    } else {
        match &verdict_text {
            Some(verdict) => {
                // mtr --report: a start line, then the table.
                println!("Start: {}", humantime::format_rfc3339_seconds(started));
                print!("{}", probes::render_report(report, &local_host_name()));
                println!("Verdict: {verdict}");
            }
            None => println!(
                "Trace to {} failed: {}",
                args.target,
                failure.map_or("no hops", |(_, message)| message)
            ),
        }
    }
    Ok(if observation.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The name mtr prints after `HOST:`: this machine's.
fn local_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
