//! `vantage http`: one HTTP(S) check now, on a fresh connection: the phase breakdown (resolve,
//! connect, tls, processing, transfer, total) and every assertion's result.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use probes::{
    HeaderMatch, HttpCheck, HttpExpect, HttpSettings, IpPreference, Measurement, Outcome,
};
use serde::Serialize;

use super::table;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The request method.
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// A request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The request body.
    #[arg(long, short = 'd', value_name = "BODY")]
    data: Option<String>,
    /// An accepted status code of the final response (repeatable, or comma-separated); default
    /// any 2xx.
    #[arg(long, value_name = "CODE", value_delimiter = ',')]
    expect_status: Vec<u16>,
    /// The body must contain this text (repeatable).
    #[arg(long, value_name = "TEXT")]
    body_contains: Vec<String>,
    /// The body must match this regex (Rust `regex` syntax; repeatable).
    #[arg(long, value_name = "REGEX")]
    body_regex: Vec<String>,
    /// A response header must match, `Name: regex` (repeatable).
    #[arg(long, value_name = "NAME: REGEX")]
    header_match: Vec<String>,
    /// The whole check must take at most this many milliseconds.
    #[arg(long, value_name = "MS")]
    max_total_ms: Option<u64>,
    /// The certificate chain must be valid for at least this many more days.
    #[arg(long, value_name = "DAYS")]
    min_cert_expiry_days: Option<f64>,
    /// Trust the CA certificates in this PEM file instead of the system's.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Send this name in TLS SNI and verify the certificate against it (the connection still
    /// goes to the URL's host, and Host stays the URL's).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Redirects to follow before failing (0: report the 3xx itself).
    #[arg(long, default_value_t = 10)]
    max_redirects: u32,
    /// Follow redirects from a public address into loopback, link-local or private ones (refused
    /// by default: a remote server could point the check at this host's network).
    #[arg(long)]
    follow_private_redirects: bool,
    /// Read at most this many body bytes (after decompression); the body is kept in memory only
    /// for --body-regex.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: u64,
    /// Give up after this many milliseconds (the whole check: every redirect, the body).
    #[arg(long, short = 't', default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Connect over IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// Connect over IPv6 only.
    #[arg(short = '6')]
    ipv6: bool,
    /// Print one JSON object: the `http` measurement's fields, success, failure and assertions.
    #[arg(long)]
    json: bool,
    /// http:// or https:// URL.
    #[arg(value_name = "URL")]
    url: String,
}

/// `--json` output. The method comes with the measurement's fields (a `method` here too would print
/// the key twice).
#[derive(Debug, Serialize)]
struct HttpLine<'a> {
    url: &'a str,
    #[serde(flatten)]
    stats: &'a probes::HttpStats,
    success: bool,
    failure: Option<&'a Outcome>,
    assertions: &'a [probes::AssertionResult],
}

/// `Name: value` into its parts.
fn split_header(text: &str, what: &str) -> anyhow::Result<(String, String)> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.trim().to_string()))
        }
        _ => anyhow::bail!("{what} {text:?}: write it as `Name: value`"),
    }
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let headers = args
        .headers
        .iter()
        .map(|h| split_header(h, "--header"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let header_matches = args
        .header_match
        .iter()
        .map(|h| split_header(h, "--header-match").map(|(name, regex)| HeaderMatch { name, regex }))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let settings = HttpSettings {
        method: args.method.clone(),
        headers,
        body: args.data.clone().map(String::into_bytes),
        timeout: Duration::from_millis(args.timeout_ms),
        max_body_bytes: args.max_body_bytes,
        max_redirects: args.max_redirects,
        follow_private_redirects: args.follow_private_redirects,
        ip: if args.ipv4 {
            IpPreference::V4Only
        } else if args.ipv6 {
            IpPreference::V6Only
        } else {
            IpPreference::Any
        },
        server_name: args.server_name.clone(),
        ca_file: args.ca_file.clone(),
        expect: HttpExpect {
            status_codes: args.expect_status.clone(),
            body_contains: args.body_contains.clone(),
            body_matches: args.body_regex.clone(),
            headers: header_matches,
            max_total: args.max_total_ms.map(Duration::from_millis),
            min_cert_expiry_days: args.min_cert_expiry_days,
        },
        ..HttpSettings::new(args.url.clone())
    };
    let check = HttpCheck::new(settings)?;
    let (observation, assertions) = super::runtime()?.block_on(check.run_detailed());
    let Measurement::Http(stats) = &observation.measurement else {
        anyhow::bail!(
            "the HTTP check returned a {} measurement",
            observation.measurement.name()
        );
    };
    let failure = Some(&observation.outcome).filter(|o| **o != Outcome::Success);
    if args.json {
        let line = HttpLine {
            url: &args.url,
            stats,
            success: observation.is_success(),
            failure,
            assertions: &assertions,
        };
        println!("{}", serde_json::to_string(&line)?);
    } else {
        print!(
            "{}",
            render(&args.method, &args.url, stats, &assertions, failure)
        );
    }
    Ok(if observation.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The human output: what was asked and answered, the phases, the assertions, the verdict.
fn render(
    method: &str,
    url: &str,
    stats: &probes::HttpStats,
    assertions: &[probes::AssertionResult],
    failure: Option<&Outcome>,
) -> String {
    let mut out = String::new();
    let answer = match stats.status_code {
        Some(code) => format!("HTTP {code}"),
        None => "no response".to_string(),
    };
    out.push_str(&format!("{method} {url} → {answer}\n"));
    if stats.redirects > 0 || stats.final_url != url {
        out.push_str(&format!(
            "after {} redirect{} to {}\n",
            stats.redirects,
            if stats.redirects == 1 { "" } else { "s" },
            stats.final_url
        ));
    }
    out.push('\n');
    let phases = [
        ("resolve", stats.resolve_ms),
        ("connect", stats.connect_ms),
        ("tls", stats.tls_ms),
        ("processing", stats.processing_ms),
        ("transfer", stats.transfer_ms),
        ("total", Some(stats.total_ms)),
    ];
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|(name, value)| vec![name.to_string(), table::ms(*value)])
        .collect();
    out.push_str(&table::render(&["PHASE", "MS"], &rows, &[1]));
    let mut facts = vec![format!("body {} bytes", stats.body_bytes)];
    if let Some(days) = stats.cert_expiry_days {
        facts.push(format!("certificate expires in {days:.1} days"));
    }
    out.push_str(&format!("{}\n\n", facts.join("; ")));
    if assertions.is_empty() {
        out.push_str("assertions: not checked (no complete response)\n");
    } else {
        let rows: Vec<Vec<String>> = assertions
            .iter()
            .map(|a| {
                vec![
                    a.assertion.clone(),
                    if a.passed { "ok" } else { "FAILED" }.to_string(),
                    a.detail.clone(),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &["ASSERTION", "RESULT", "DETAIL"],
            &rows,
            &[],
        ));
    }
    match failure {
        Some(Outcome::Failure { kind, message }) => {
            out.push_str(&format!("\nFAILED ({}): {message}\n", kind.as_str()));
        }
        _ => out.push_str("\nok\n"),
    }
    out
}
