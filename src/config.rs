//! `Config`: the validated agent configuration. Parsing reports every mistake at once, each with
//! file:line:column and a hint (see `vantage check`).
//!
//! The file format is documented for operators in the README's Configuration section; the example configs in
//! `config/` and the fixtures in `tests/fixtures/config/` (one per mistake, with the exact
//! message expected) are both tests.
//!
//! ## Layout
//! - this file: the types the rest of the agent codes against, and [`ConfigError`]'s rendering
//! - `evaluator`: [`evaluator::EvaluatorConfig`], the config of `vantage fleet` (checked by the same walk)
//! - `validate`: the walk over the spanned TOML tree that checks every key and builds a [`Config`]
//! - `duration`: [`parse_duration`] / [`format_duration`] (`"500ms"`, `"1.5s"`, `"14d"`)
//! - `span`: [`LineIndex`], byte offsets to 1-based line:column
//! - `suggest`: edit-distance "did you mean" suggestions

pub mod data_dir;
mod duration;
pub mod evaluator;
pub mod output;
mod span;
mod suggest;
mod validate;

pub use duration::{format_duration, parse_duration};
pub use output::{OutputConfig, OutputKind, SecretSource};
pub use span::LineIndex;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A fully validated configuration: every reference resolved, every timing possible.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub source: PathBuf,
    pub agent: AgentConfig,
    pub targets: Vec<Target>,
    pub probes: Vec<ProbeConfig>,
    /// Outage rules; none unless the file has `[[rule]]` sections (no paging for noise nobody
    /// asked about).
    pub rules: Vec<RuleConfig>,
    /// How incidents are drafted (`[incidents]`).
    pub incidents: IncidentsConfig,
    /// Where results go besides the embedded store (`[[output]]`); none by default.
    pub outputs: Vec<OutputConfig>,
    /// Where incident drafts are announced besides the directory (`[[incident_sink]]`).
    pub incident_sinks: Vec<IncidentSinkConfig>,
    /// The shared store the fleet writes to, asked "what do the other sites see?" (`[fleet]`).
    pub fleet: Option<FleetConfig>,
}

/// `[fleet]`: how this agent reads the fleet's shared store (the store one of its `[[output]]`s
/// writes to; that output's credentials are reused, read from their source on every query).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// The `[[output]]` whose store every agent of the fleet writes to.
    pub output: String,
    pub dialect: FleetDialect,
    /// Where queries go; default: the output's `url` (`/query` or `/api/v1/query` is appended).
    pub query_url: String,
    /// The whole fleet view must arrive within this; default 3 s.
    pub timeout: Duration,
    /// Whether this process is one of the sites (an agent, true) or only reads them (the fleet
    /// evaluator): an agent's own rule counts as its site seeing the fault.
    pub is_a_site: bool,
}

/// The query language of the fleet store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetDialect {
    /// InfluxQL over the v1 `/query` API: InfluxDB 1.x (2.x through DBRP, 3.x).
    Influxql,
    /// PromQL (with MetricsQL's rollups) over VictoriaMetrics' `/api/v1/query`.
    Promql,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Agent name; default: the host name.
    pub name: String,
    /// The site (datacenter, cloud region) this agent runs in.
    pub site: String,
    /// Where the embedded store lives; default `./vantage-data` (relative paths are relative to the
    /// config file's directory).
    pub data_dir: PathBuf,
    /// How long the embedded store keeps observations (raw ping rounds, service checks,
    /// traces); default 14 days.
    pub retention: Duration,
    /// How long it keeps the 5-minute rollups of ping rounds; default 90 days.
    pub retention_5m: Duration,
    /// How long it keeps the hourly rollups of ping rounds; default 400 days.
    pub retention_1h: Duration,
    /// The health and metrics listener (`listen = "127.0.0.1:9798"`); off by default.
    pub listen: Option<ListenConfig>,
}

/// Where `/healthz`, `/readyz` and `/metrics` are served (`crate::web`), and who may ask.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    pub address: std::net::SocketAddr,
    /// Required of every request when set; without it a non-loopback bind is logged as a warning.
    pub auth: Option<ListenAuth>,
}

/// How a scraper proves who it is: `listen_token_env`/`listen_token_file` (a bearer token), or
/// `listen_username` with `listen_password_env`/`listen_password_file` (HTTP basic auth). The
/// secret is read again on every request, so rotating it needs no restart.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenAuth {
    Bearer(SecretSource),
    Basic {
        username: String,
        password: SecretSource,
    },
}

/// The defaults of `[agent] retention`, `retention_5m` and `retention_1h`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(14 * 86_400);
pub const DEFAULT_RETENTION_5M: Duration = Duration::from_secs(90 * 86_400);
pub const DEFAULT_RETENTION_1H: Duration = Duration::from_secs(400 * 86_400);

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    /// A host name or an IP address literal.
    pub host: String,
    /// The site the target lives in; default "unknown".
    pub site: String,
    pub family: FamilyPreference,
    pub labels: BTreeMap<String, String>,
}

/// Which address family to use when `host` is a name that resolves to both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FamilyPreference {
    #[default]
    Any,
    V4,
    V6,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    pub name: String,
    /// Time between runs against the same target.
    pub interval: Duration,
    /// Per-run wait for an answer (for ICMP: per echo).
    pub timeout: Duration,
    /// Names of the targets this probe runs against (all targets when the config omits the list).
    pub targets: Vec<String>,
    pub kind: ProbeKind,
}

/// Kind-specific settings: the closed set of probe kinds. The service and path kinds hold the
/// `probes` crate's own settings; what depends on the target (its address, family preference)
/// is filled in per target by [`crate::probe::Probe::new`], with the probe's `timeout` for
/// HTTP and DNS.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    /// Smokeping-style rounds of `count` echoes, one every `spacing`.
    Icmp { count: u32, spacing: Duration },
    /// A TCP handshake with `port` of the target.
    Tcp { port: u16 },
    /// An HTTP(S) request to a URL built from the target's host.
    Http(Box<HttpProbe>),
    /// A DNS query sent to the target, which is the DNS server. Only the port of `server` is
    /// configured; the address is the target's, resolved per run.
    Dns(probes::DnsSettings),
    /// An mtr-style path trace to the target (`rounds` of `timeout` each).
    Trace(probes::TraceSettings),
}

impl ProbeKind {
    /// The `kind` as written in the config.
    pub fn name(&self) -> &'static str {
        match self {
            ProbeKind::Icmp { .. } => "icmp",
            ProbeKind::Tcp { .. } => "tcp",
            ProbeKind::Http(_) => "http",
            ProbeKind::Dns(_) => "dns",
            ProbeKind::Trace(_) => "trace",
        }
    }
}

/// `kind = "http"`: the URL to request from each target and the check to run on it.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpProbe {
    /// `http` or `https`.
    pub scheme: String,
    /// `None`: the scheme's default port (80 or 443), left out of the URL.
    pub port: Option<u16>,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Everything but the URL, the timeout and the address family (per target). A relative
    /// `ca_file` is already resolved against the config file's directory.
    pub check: probes::HttpSettings,
}

impl HttpProbe {
    /// The URL for a target `host` (IPv6 literals in brackets).
    pub fn url(&self, host: &str) -> String {
        let host = if host.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        match self.port {
            Some(port) => format!("{}://{host}:{port}{}", self.scheme, self.path),
            None => format!("{}://{host}{}", self.scheme, self.path),
        }
    }
}

/// How long a trace waits for late replies after its last round (the tracer's grace period).
pub const TRACE_GRACE: Duration = Duration::from_millis(100);

/// `[incidents]`: how drafts are written while an incident is open.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentsConfig {
    /// A ready-to-send status update is drafted this often while an incident is open; default 30m.
    pub status_updates: Duration,
    /// How much history before the breach the evidence (tables, chart) shows; default 1h.
    pub history: Duration,
}

/// One `[[incident_sink]]`: an HTTP endpoint that hears about every incident event.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentSinkConfig {
    /// Unique (and not `directory`): deliveries are tracked per sink name in `incidents.db`.
    pub name: String,
    /// Alertmanager: its base URL; webhook: the URL to POST to.
    pub url: String,
    /// Per-request timeout; default 10 s.
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer …`, read on every request.
    pub token: Option<SecretSource>,
    pub kind: IncidentSinkKind,
}

/// Labels every Alertmanager alert carries; `[[incident_sink]] labels` may not set them.
pub const ALERTMANAGER_BUILT_IN_LABELS: [&str; 9] = [
    "alertname",
    "rule",
    "severity",
    "scope",
    "subject",
    "agent",
    "site",
    "incident_id",
    "fleet_key",
];
#[derive(Debug, Clone, PartialEq)]
pub enum IncidentSinkKind {
    /// Prometheus Alertmanager, API v2: one alert per open incident, re-sent every `resend`.
    Alertmanager {
        /// Extra labels on every alert.
        labels: BTreeMap<String, String>,
        /// How often open incidents are posted again; default 60 s.
        resend: Duration,
    },
    /// A JSON POST per incident event, with an `Idempotency-Key` header.
    Webhook,
}

impl IncidentSinkKind {
    /// The `kind = "…"` name in the config file.
    pub fn name(&self) -> &'static str {
        match self {
            IncidentSinkKind::Alertmanager { .. } => "alertmanager",
            IncidentSinkKind::Webhook => "webhook",
        }
    }
}

/// One `[[rule]]`: when a measurement means an outage, for which scope, and when it is over.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleConfig {
    /// Unique; the `rule` tag and the first part of every dedup key.
    pub name: String,
    pub severity: Severity,
    /// The probes whose observations the rule reads (default: every probe the kind applies to).
    pub probes: Vec<String>,
    /// The targets it watches (default: every target of those probes).
    pub targets: Vec<String>,
    pub scope: RuleScope,
    pub condition: Condition,
    /// How long the condition must hold before an incident opens (`for`).
    pub open_for: Duration,
    /// How long the clear condition must hold before the incident resolves.
    pub clear_for: Duration,
    /// The shortest time an incident stays open, however soon it clears.
    pub min_hold: Duration,
}

/// How bad it is; ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Severity {
    Minor,
    #[default]
    Major,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Critical, Severity::Major, Severity::Minor];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Major => "major",
            Severity::Minor => "minor",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Who an incident is about.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleScope {
    /// One incident per target.
    Target,
    /// One incident per group: the targets sharing a value of the `label` label. It opens when at
    /// least `share_pct` percent of the group's targets breach (inclusive). With
    /// `hold_back_targets`, while it is pending or open, target incidents of its members on the
    /// same probes are held back.
    Group {
        label: String,
        share_pct: f64,
        hold_back_targets: bool,
    },
    /// One incident for the whole agent ("agent-side": our own uplink) when at least `share_pct`
    /// percent of every watched target breach. While it is pending or open, target and group
    /// incidents of the same probes are held back.
    Agent { share_pct: f64 },
}

impl RuleScope {
    pub fn kind(&self) -> &'static str {
        match self {
            RuleScope::Target => "target",
            RuleScope::Group { .. } => "group",
            RuleScope::Agent { .. } => "agent",
        }
    }
}

/// What breaching means for one target, and what clear means (hysteresis: the clear threshold
/// sits below the open threshold, and values in between keep the current state).
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Loss over the last `echoes` echoes (pooled across rounds) above `above_pct` (exclusive);
    /// clear at or below `clear_below_pct`.
    Loss {
        above_pct: f64,
        clear_below_pct: f64,
        echoes: u32,
    },
    /// At least `failures` of the last `runs` runs failed (inclusive); clear when at most
    /// `clear_failures` of the last `runs` failed.
    Failures {
        failures: u32,
        runs: u32,
        clear_failures: u32,
    },
    /// The median of `field` over the last `runs` runs above a threshold (exclusive).
    Latency {
        field: LatencyField,
        runs: u32,
        threshold: LatencyThreshold,
    },
}

impl Condition {
    pub fn kind(&self) -> &'static str {
        match self {
            Condition::Loss { .. } => "loss",
            Condition::Failures { .. } => "failures",
            Condition::Latency { .. } => "latency",
        }
    }
}

/// A latency threshold: absolute, or relative to the field's own baseline.
#[derive(Debug, Clone, PartialEq)]
pub enum LatencyThreshold {
    Absolute {
        above_ms: f64,
        clear_below_ms: f64,
    },
    /// `K ×` the median of the field over the trailing `window` (SmokePing's Medratio idea).
    Baseline {
        above_ratio: f64,
        clear_below_ratio: f64,
        window: Duration,
    },
}

/// The `ping` fields a latency rule can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyField {
    Min,
    P10,
    P25,
    Median,
    P75,
    P90,
    Max,
    Avg,
    Stddev,
    Jitter,
}

impl LatencyField {
    pub const ALL: [LatencyField; 10] = [
        LatencyField::Median,
        LatencyField::Min,
        LatencyField::P10,
        LatencyField::P25,
        LatencyField::P75,
        LatencyField::P90,
        LatencyField::Max,
        LatencyField::Avg,
        LatencyField::Stddev,
        LatencyField::Jitter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LatencyField::Min => "rtt_min_ms",
            LatencyField::P10 => "rtt_p10_ms",
            LatencyField::P25 => "rtt_p25_ms",
            LatencyField::Median => "rtt_median_ms",
            LatencyField::P75 => "rtt_p75_ms",
            LatencyField::P90 => "rtt_p90_ms",
            LatencyField::Max => "rtt_max_ms",
            LatencyField::Avg => "rtt_avg_ms",
            LatencyField::Stddev => "rtt_stddev_ms",
            LatencyField::Jitter => "jitter_ms",
        }
    }

    pub fn parse(text: &str) -> Option<LatencyField> {
        LatencyField::ALL.into_iter().find(|f| f.as_str() == text)
    }

    /// The field's value in a ping round, if the round has one.
    pub fn of(self, stats: &probes::PingStats) -> Option<f64> {
        match self {
            LatencyField::Min => stats.rtt_min_ms,
            LatencyField::P10 => stats.rtt_p10_ms,
            LatencyField::P25 => stats.rtt_p25_ms,
            LatencyField::Median => stats.rtt_median_ms,
            LatencyField::P75 => stats.rtt_p75_ms,
            LatencyField::P90 => stats.rtt_p90_ms,
            LatencyField::Max => stats.rtt_max_ms,
            LatencyField::Avg => stats.rtt_avg_ms,
            LatencyField::Stddev => stats.rtt_stddev_ms,
            LatencyField::Jitter => stats.jitter_ms,
        }
    }
}

/// Loading the fleet evaluator's config here, beside [`Config::load`]: `validate` knows the
/// evaluator's types, so they may not know `validate` (one-way dependencies).
impl evaluator::EvaluatorConfig {
    pub fn load(path: &Path) -> Result<evaluator::EvaluatorConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            errors: vec![ConfigError {
                path: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read fleet config file: {e}"),
                hint: Some("check the path given to `vantage fleet --config`".into()),
            }],
        })?;
        evaluator::EvaluatorConfig::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<evaluator::EvaluatorConfig, ConfigErrors> {
        validate::parse_evaluator(text, path)
    }
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            errors: vec![ConfigError {
                path: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read config file: {e}"),
                hint: Some("check the path given to --config".into()),
            }],
        })?;
        Config::parse(&text, path)
    }

    /// Validate config text; `path` names the file in messages and anchors a relative `data_dir`.
    ///
    /// On failure every mistake is returned, in file order (a TOML syntax error stops the check:
    /// it is then the only one).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        validate::parse(text, path)
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    pub fn probe(&self, name: &str) -> Option<&ProbeConfig> {
        self.probes.iter().find(|p| p.name == name)
    }
}

/// Every mistake found in a config, in file order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

/// One mistake: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; 0 when the mistake is not at one place (e.g. an unreadable file).
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl ConfigErrors {
    fn render(&self) -> String {
        self.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Messages quote config values: control characters in them (an escape sequence that
        // recolours or clears the terminal) are shown escaped, never sent to the terminal.
        write!(
            f,
            "{}",
            escape_controls(&self.path.display().to_string(), false)
        )?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": error: {}", escape_controls(&self.message, false))?;
        if let Some(hint) = &self.hint {
            // Continuation lines of a multi-line hint line up under its first line.
            let hint = escape_controls(hint, true).replace('\n', "\n        ");
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// `text` with control characters escaped as Rust does (`\u{1b}`, `\t`), keeping newlines if
/// `keep_newlines`; everything else, non-ASCII included, is left as written.
fn escape_controls(text: &str, keep_newlines: bool) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !(keep_newlines && c == '\n') {
            escaped.extend(c.escape_debug());
        } else {
            escaped.push(c);
        }
    }
    escaped
}
