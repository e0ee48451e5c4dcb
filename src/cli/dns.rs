//! `vantage dns`: one DNS query now, to one explicit server: exactly one datagram (or one TCP
//! connection), no retries, no cache; the rcode, latency, flags and answers.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use probes::{
    CancellationToken, DnsCheck, DnsExpect, DnsRecordType, DnsSettings, DnsTransport, Measurement,
    Outcome,
};
use serde::Serialize;

use super::table;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server to ask: `IP`, `IP:PORT` or `[IPv6]:PORT` (default: the first `nameserver` of
    /// /etc/resolv.conf, port 53).
    #[arg(long, short = 's', value_name = "ADDR")]
    server: Option<String>,
    /// The record type: A, AAAA, CNAME, MX, TXT, SOA or NS.
    #[arg(long = "type", short = 't', default_value = "A", value_name = "T")]
    record_type: String,
    /// Ask over TCP instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// Clear the RD bit: ask an authoritative server for its own data only.
    #[arg(long)]
    no_recurse: bool,
    /// The accepted response code (default NOERROR), e.g. NXDOMAIN for a name that must not exist.
    #[arg(long, value_name = "RCODE")]
    expect_rcode: Option<String>,
    /// An answer that must be among the records (repeatable), e.g. `198.18.0.10` or
    /// `10 mail.example.net.`.
    #[arg(long, value_name = "RECORD")]
    expect_answer: Vec<String>,
    /// At least this many records of the asked type.
    #[arg(long, value_name = "N")]
    min_answers: Option<u32>,
    /// Give up after this many milliseconds (no retransmission within it).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Print one JSON object: the `dns` measurement's fields (server, record_type, rcode,
    /// latency_ms, answers, records, authoritative, truncated), success and failure.
    #[arg(long)]
    json: bool,
    /// The name to look up (always fully qualified: no search domains).
    #[arg(value_name = "NAME")]
    name: String,
}

/// `--json` output.
#[derive(Debug, Serialize)]
struct DnsLine<'a> {
    name: &'a str,
    transport: &'a str,
    #[serde(flatten)]
    stats: &'a probes::DnsStats,
    success: bool,
    failure: Option<&'a Outcome>,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let server = match &args.server {
        Some(text) => parse_server(text)?,
        None => system_nameserver()?,
    };
    let record_type: DnsRecordType = args.record_type.parse().map_err(anyhow::Error::msg)?;
    let transport = if args.tcp {
        DnsTransport::Tcp
    } else {
        DnsTransport::Udp
    };
    let settings = DnsSettings {
        transport,
        timeout: Duration::from_millis(args.timeout_ms),
        recursion_desired: !args.no_recurse,
        expect: DnsExpect {
            rcodes: args.expect_rcode.iter().cloned().collect(),
            min_answers: args.min_answers,
            answers_include: args.expect_answer.clone(),
            answers_match: Vec::new(),
        },
        ..DnsSettings::new(server, args.name.clone(), record_type)
    };
    let check = DnsCheck::new(settings)?;
    let observation = super::runtime()?.block_on(check.run(&CancellationToken::new()));
    let Measurement::Dns(stats) = &observation.measurement else {
        anyhow::bail!(
            "the DNS check returned a {} measurement",
            observation.measurement.name()
        );
    };
    let failure = Some(&observation.outcome).filter(|o| **o != Outcome::Success);
    let transport = if args.tcp { "tcp" } else { "udp" };
    if args.json {
        let line = DnsLine {
            name: &args.name,
            transport,
            stats,
            success: observation.is_success(),
            failure,
        };
        println!("{}", serde_json::to_string(&line)?);
    } else {
        let mut flags = Vec::new();
        if stats.authoritative {
            flags.push("aa (authoritative)");
        }
        if stats.truncated {
            flags.push("tc (truncated)");
        }
        let lines = [
            ("server", format!("{} ({transport})", stats.server)),
            ("question", format!("{} {}", args.name, stats.record_type)),
            (
                "rcode",
                stats.rcode.clone().unwrap_or_else(|| "-".to_string()),
            ),
            ("latency", format!("{} ms", table::ms(stats.latency_ms))),
            (
                "flags",
                if flags.is_empty() {
                    "-".to_string()
                } else {
                    flags.join(", ")
                },
            ),
            ("answers", stats.answers.to_string()),
        ];
        for (name, value) in lines {
            println!("{name:<10}{value}");
        }
        for record in &stats.records {
            println!("  {record}");
        }
        match failure {
            Some(Outcome::Failure { kind, message }) => {
                println!("\nFAILED ({}): {message}", kind.as_str());
            }
            _ => println!("\nok"),
        }
    }
    Ok(if observation.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `198.18.0.53`, `198.18.0.53:5353`, `2001:db8::53`, `[2001:db8::53]:5353`.
fn parse_server(text: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    if let Ok(ip) = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 53));
    }
    anyhow::bail!(
        "--server {text:?}: give an IP address, optionally with a port (`198.18.0.53`, `127.0.0.1:5353`, `[2001:db8::53]:53`)"
    )
}

/// The first `nameserver` of /etc/resolv.conf, port 53.
fn system_nameserver() -> anyhow::Result<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    first_nameserver(&text)
        .ok_or_else(|| anyhow::anyhow!("no --server given and no nameserver in /etc/resolv.conf"))
}

fn first_nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next())
            .flatten()
            // A link-local IPv6 server may carry a zone (`fe80::1%eth0`), which IpAddr rejects.
            .and_then(|address| address.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_with_and_without_ports() {
        let parse = |t: &str| parse_server(t).expect("valid").to_string();
        assert_eq!(parse("198.18.0.53"), "198.18.0.53:53");
        assert_eq!(parse("127.0.0.1:5353"), "127.0.0.1:5353");
        assert_eq!(parse("2001:db8::53"), "[2001:db8::53]:53");
        assert_eq!(parse("[2001:db8::53]:5353"), "[2001:db8::53]:5353");
        assert_eq!(parse("[::1]"), "[::1]:53");
        assert!(parse_server("ns1.example.net").is_err());
    }

    #[test]
    fn the_first_nameserver_of_resolv_conf() {
        let conf =
            "# generated\nsearch example.net\nnameserver 198.18.0.53\nnameserver 198.18.0.54\n";
        assert_eq!(
            first_nameserver(conf),
            Some("198.18.0.53:53".parse().expect("address"))
        );
        assert_eq!(first_nameserver("options ndots:2\n"), None);
    }
}
