//! `vantage tcp`: can a TCP handshake with HOST:PORT complete now, and how long does it take?

use std::process::ExitCode;
use std::time::Duration;

use probes::{CancellationToken, IpPreference, Measurement, Outcome, TcpSettings};
use serde::Serialize;

use super::table;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Give up after this many milliseconds (resolution included).
    #[arg(long, short = 't', default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Connect over IPv4 only (when HOST is a name).
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// Connect over IPv6 only (when HOST is a name).
    #[arg(short = '6')]
    ipv6: bool,
    /// Print one JSON object: the `tcp` measurement's fields (connect_ms, resolve_ms, address),
    /// success and failure.
    #[arg(long)]
    json: bool,
    /// `host:port`, `198.18.1.1:443` or `[2001:db8::1]:443`.
    #[arg(value_name = "HOST:PORT")]
    target: String,
}

/// `--json` output.
#[derive(Debug, Serialize)]
struct TcpLine<'a> {
    target: &'a str,
    #[serde(flatten)]
    stats: &'a probes::TcpStats,
    success: bool,
    failure: Option<&'a Outcome>,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let (host, port) = split_host_port(&args.target)?;
    let settings = TcpSettings {
        timeout: Duration::from_millis(args.timeout_ms),
        ip: if args.ipv4 {
            IpPreference::V4Only
        } else if args.ipv6 {
            IpPreference::V6Only
        } else {
            IpPreference::Any
        },
        ..TcpSettings::new(host, port)
    };
    let observation =
        super::runtime()?.block_on(probes::tcp::run(&settings, &CancellationToken::new()));
    let Measurement::Tcp(stats) = &observation.measurement else {
        anyhow::bail!(
            "the TCP check returned a {} measurement",
            observation.measurement.name()
        );
    };
    let failure = Some(&observation.outcome).filter(|o| **o != Outcome::Success);
    if args.json {
        let line = TcpLine {
            target: &args.target,
            stats,
            success: observation.is_success(),
            failure,
        };
        println!("{}", serde_json::to_string(&line)?);
    } else {
        match failure {
            Some(Outcome::Failure { kind, message }) => {
                println!("{}: FAILED ({}): {message}", args.target, kind.as_str());
            }
            _ => println!(
                "{}: connected to {} in {} ms (resolve {} ms)",
                args.target,
                stats
                    .address
                    .map_or_else(|| "-".to_string(), |a| a.to_string()),
                table::ms(stats.connect_ms),
                table::ms(stats.resolve_ms)
            ),
        }
    }
    Ok(if observation.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `host:port`, `[v6]:port` into host (without brackets) and port.
fn split_host_port(text: &str) -> anyhow::Result<(String, u16)> {
    let bad = || {
        anyhow::anyhow!(
            "{text:?}: write HOST:PORT, e.g. `198.18.1.1:443`, `db.example.net:5432` or `[2001:db8::1]:443`"
        )
    };
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
            (host, port)
        }
        None => {
            let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
            if host.contains(':') {
                return Err(bad()); // an IPv6 address needs brackets before its port
            }
            (host, port)
        }
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let split = |t: &str| split_host_port(t).expect("valid");
        assert_eq!(split("127.0.0.1:80"), ("127.0.0.1".to_string(), 80));
        assert_eq!(
            split("db.example.net:5432"),
            ("db.example.net".to_string(), 5432)
        );
        assert_eq!(split("[::1]:443"), ("::1".to_string(), 443));
        for bad in [
            "::1:443",
            "127.0.0.1",
            "host:0",
            "host:http",
            ":80",
            "[::1]443",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }
}
