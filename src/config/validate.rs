//! The walk over the parsed TOML: every key checked against the schema, every mistake recorded
//! with its position and a hint, and a [`Config`] built only when there were none.
//!
//! A hand-written walk rather than `#[serde(deny_unknown_fields)]`: serde stops at the first
//! error, and we want them all, each pointing at the offending key or value.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use super::duration::{format_duration, parse_duration};
use super::span::LineIndex;
use super::suggest::closest;
use super::{
    AgentConfig, Config, ConfigError, ConfigErrors, DEFAULT_RETENTION, DEFAULT_RETENTION_1H,
    DEFAULT_RETENTION_5M, FamilyPreference, ListenAuth, ListenConfig, ProbeConfig, ProbeKind,
    Target,
};

mod evaluator;
mod fleet;
mod incident_sink;
mod kinds;
mod output;
mod rule;

pub(super) use evaluator::parse_evaluator;

type Value<'i> = Spanned<DeValue<'i>>;

/// Defaults of a probe (and of the probe an agent gets when the config defines none).
pub(super) const DEFAULT_PROBE_NAME: &str = "ping";
pub(super) const DEFAULT_INTERVAL: Duration = Duration::from_secs(20);
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Traces run on their own, slower cadence: every few minutes.
pub(super) const DEFAULT_TRACE_INTERVAL: Duration = Duration::from_secs(300);
/// A trace's `timeout` is how long each round waits for its replies.
pub(super) const DEFAULT_TRACE_TIMEOUT: Duration = Duration::from_secs(1);
/// An HTTP check includes connect, TLS, and the body.
pub(super) const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_COUNT: u32 = 20;
pub(super) const MAX_COUNT: i128 = 10_000;
pub(super) const DEFAULT_DATA_DIR: &str = "vantage-data";
pub(super) const DEFAULT_TARGET_SITE: &str = "unknown";
pub(super) const DEFAULT_STATUS_UPDATES: Duration = Duration::from_secs(30 * 60);
pub(super) const DEFAULT_HISTORY: Duration = Duration::from_secs(3600);
pub(super) const DEFAULT_RULE_FOR: Duration = Duration::from_secs(60);
pub(super) const DEFAULT_CLEAR_FOR: Duration = Duration::from_secs(120);
pub(super) const DEFAULT_MIN_HOLD: Duration = Duration::from_secs(300);
pub(super) const DEFAULT_GROUP_SHARE_PCT: f64 = 50.0;
pub(super) const DEFAULT_AGENT_SHARE_PCT: f64 = 100.0;
pub(super) const DEFAULT_ECHOES: u32 = 100;
pub(super) const DEFAULT_LATENCY_RUNS: u32 = 3;
pub(super) const DEFAULT_BASELINE: Duration = Duration::from_secs(3600);
/// A latency rule's clear threshold, when not given, as a share of its open threshold.
pub(super) const DEFAULT_LATENCY_CLEAR_SHARE: f64 = 0.8;
pub(super) const MAX_WINDOW: i128 = 100_000;

/// The rule kinds that exist; the order is the order hints list them in.
const RULE_KINDS: [&str; 3] = ["loss", "failures", "latency"];
const SCOPES: [&str; 3] = ["target", "group", "agent"];

/// The probe kinds that exist; the order is the order hints list them in.
const PROBE_KINDS: [&str; 5] = ["icmp", "tcp", "http", "dns", "trace"];

/// Label keys that would collide with the tags every measurement already carries.
const RESERVED_LABELS: [&str; 13] = [
    "agent",
    "site",
    "probe",
    "target",
    "target_site",
    "family",
    "hop",
    "method",
    "server",
    "record_type",
    "rule",
    "severity",
    "scope",
];

/// What a key's value must be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Type {
    Str,
    Duration,
    Integer,
    /// An array of target names.
    Names,
    /// An array of probe names.
    ProbeNames,
    /// An integer or a float.
    Number,
    /// A table of string labels.
    Labels,
    /// `true` or `false`.
    Bool,
    /// An array of strings.
    Strings,
    /// An array of integers.
    Integers,
    /// A table of string values (HTTP headers).
    StrTable,
    /// `[section]`
    Table,
    /// `[[section]]`
    Tables,
}

/// One allowed key: its name, its type and an example line used in hints.
#[derive(Debug)]
struct Key {
    name: &'static str,
    ty: Type,
    example: &'static str,
}

const fn key(name: &'static str, ty: Type, example: &'static str) -> Key {
    Key { name, ty, example }
}

const ROOT: [Key; 8] = [
    key("agent", Type::Table, "[agent]"),
    key("target", Type::Tables, "[[target]]"),
    key("probe", Type::Tables, "[[probe]]"),
    key("rule", Type::Tables, "[[rule]]"),
    key("incidents", Type::Table, "[incidents]"),
    key("output", Type::Tables, "[[output]]"),
    key("incident_sink", Type::Tables, "[[incident_sink]]"),
    key("fleet", Type::Table, "[fleet]"),
];
const FLEET: [Key; 4] = [
    key("output", Type::Str, r#"output = "central""#),
    key("dialect", Type::Str, r#"dialect = "influxql""#),
    key(
        "query_url",
        Type::Str,
        r#"query_url = "http://influx.example:8086""#,
    ),
    key("timeout", Type::Duration, r#"timeout = "3s""#),
];
const INCIDENT_SINK: [Key; 6] = [
    key("name", Type::Str, r#"name = "alertmanager""#),
    key("kind", Type::Str, r#"kind = "alertmanager""#),
    key("url", Type::Str, r#"url = "http://127.0.0.1:9093""#),
    key("timeout", Type::Duration, r#"timeout = "10s""#),
    key(
        "token_env",
        Type::Str,
        r#"token_env = "VANTAGE_WEBHOOK_TOKEN""#,
    ),
    key(
        "token_file",
        Type::Str,
        r#"token_file = "/etc/vantage/webhook-token""#,
    ),
];
/// Keys only an Alertmanager sink has.
const INCIDENT_SINK_AM: [Key; 2] = [
    key("labels", Type::Labels, r#"labels = { team = "neteng" }"#),
    key("resend", Type::Duration, r#"resend = "60s""#),
];
const OUTPUT: [Key; 11] = [
    key("name", Type::Str, r#"name = "central""#),
    key("kind", Type::Str, r#"kind = "influxdb_v2""#),
    key("url", Type::Str, r#"url = "https://influx.example:8086""#),
    key("gzip", Type::Bool, "gzip = true"),
    key("batch_size", Type::Integer, "batch_size = 5000"),
    key("flush_interval", Type::Duration, r#"flush_interval = "1s""#),
    key("spool_max_bytes", Type::Str, r#"spool_max_bytes = "1GiB""#),
    key("timeout", Type::Duration, r#"timeout = "10s""#),
    key("retry_initial", Type::Duration, r#"retry_initial = "1s""#),
    key("retry_max", Type::Duration, r#"retry_max = "60s""#),
    key("auth_retry", Type::Duration, r#"auth_retry = "60s""#),
];
const OUTPUT_V2: [Key; 4] = [
    key("org", Type::Str, r#"org = "netops""#),
    key("bucket", Type::Str, r#"bucket = "vantage""#),
    key("token_env", Type::Str, r#"token_env = "INFLUX_TOKEN""#),
    key(
        "token_file",
        Type::Str,
        r#"token_file = "/etc/vantage/influx-token""#,
    ),
];
const OUTPUT_V1: [Key; 5] = [
    key("db", Type::Str, r#"db = "vantage""#),
    key("rp", Type::Str, r#"rp = "two_weeks""#),
    key("username", Type::Str, r#"username = "vantage""#),
    key(
        "password_env",
        Type::Str,
        r#"password_env = "INFLUX_PASSWORD""#,
    ),
    key(
        "password_file",
        Type::Str,
        r#"password_file = "/etc/vantage/influx-password""#,
    ),
];
const AGENT: [Key; 12] = [
    key("name", Type::Str, r#"name = "scl3-probe-01""#),
    key("site", Type::Str, r#"site = "scl3""#),
    key("data_dir", Type::Str, r#"data_dir = "/var/lib/vantage""#),
    key("retention", Type::Duration, r#"retention = "14d""#),
    key("retention_5m", Type::Duration, r#"retention_5m = "90d""#),
    key("retention_1h", Type::Duration, r#"retention_1h = "400d""#),
    key("listen", Type::Str, r#"listen = "127.0.0.1:9798""#),
    key(
        "listen_token_env",
        Type::Str,
        r#"listen_token_env = "VANTAGE_METRICS_TOKEN""#,
    ),
    key(
        "listen_token_file",
        Type::Str,
        r#"listen_token_file = "/etc/vantage/metrics-token""#,
    ),
    key(
        "listen_username",
        Type::Str,
        r#"listen_username = "prometheus""#,
    ),
    key(
        "listen_password_env",
        Type::Str,
        r#"listen_password_env = "VANTAGE_METRICS_PASSWORD""#,
    ),
    key(
        "listen_password_file",
        Type::Str,
        r#"listen_password_file = "/etc/vantage/metrics-password""#,
    ),
];
const TARGET: [Key; 5] = [
    key("name", Type::Str, r#"name = "sjc1-core""#),
    key("host", Type::Str, r#"host = "198.18.1.1""#),
    key("site", Type::Str, r#"site = "sjc1""#),
    key("family", Type::Str, r#"family = "ipv4""#),
    key(
        "labels",
        Type::Labels,
        r#"labels = { role = "core", provider = "aws" }"#,
    ),
];
const PROBE: [Key; 5] = [
    key("name", Type::Str, r#"name = "ping""#),
    key("kind", Type::Str, r#"kind = "icmp""#),
    key("interval", Type::Duration, r#"interval = "20s""#),
    key("timeout", Type::Duration, r#"timeout = "2s""#),
    key("targets", Type::Names, r#"targets = ["sjc1-core"]"#),
];
const ICMP: [Key; 2] = [
    key("count", Type::Integer, "count = 20"),
    key("spacing", Type::Duration, r#"spacing = "900ms""#),
];
const TCP: [Key; 1] = [key("port", Type::Integer, "port = 443")];
const HTTP: [Key; 17] = [
    key("scheme", Type::Str, r#"scheme = "https""#),
    key("port", Type::Integer, "port = 8443"),
    key("path", Type::Str, r#"path = "/healthz""#),
    key("method", Type::Str, r#"method = "GET""#),
    key(
        "headers",
        Type::StrTable,
        r#"headers = { "Accept" = "application/json" }"#,
    ),
    key("body", Type::Str, r#"body = "{}""#),
    key(
        "expect_status",
        Type::Integers,
        "expect_status = [200, 204]",
    ),
    key("body_contains", Type::Str, r#"body_contains = "ok""#),
    key("body_regex", Type::Str, r#"body_regex = "status.*up""#),
    key(
        "header_matches",
        Type::StrTable,
        r#"header_matches = { "Content-Type" = "^application/json" }"#,
    ),
    key("max_total", Type::Duration, r#"max_total = "2s""#),
    key(
        "min_cert_expiry_days",
        Type::Number,
        "min_cert_expiry_days = 14",
    ),
    key("ca_file", Type::Str, r#"ca_file = "/etc/vantage/ca.pem""#),
    key(
        "server_name",
        Type::Str,
        r#"server_name = "api.example.net""#,
    ),
    key("max_redirects", Type::Integer, "max_redirects = 3"),
    key("max_body_bytes", Type::Integer, "max_body_bytes = 1048576"),
    key(
        "follow_private_redirects",
        Type::Bool,
        "follow_private_redirects = true",
    ),
];
const DNS: [Key; 8] = [
    key("query", Type::Str, r#"query = "www.example.net""#),
    key("record_type", Type::Str, r#"record_type = "AAAA""#),
    key("transport", Type::Str, r#"transport = "tcp""#),
    key("port", Type::Integer, "port = 53"),
    key("recursion", Type::Bool, "recursion = false"),
    key("expect_rcode", Type::Str, r#"expect_rcode = "NOERROR""#),
    key(
        "expect_answers",
        Type::Strings,
        r#"expect_answers = ["198.18.0.10"]"#,
    ),
    key("min_answers", Type::Integer, "min_answers = 1"),
];
const TRACE: [Key; 4] = [
    key("protocol", Type::Str, r#"protocol = "udp""#),
    key("count", Type::Integer, "count = 10"),
    key("max_ttl", Type::Integer, "max_ttl = 30"),
    key("port", Type::Integer, "port = 33434"),
];

/// Other names of the probe kinds, for "did you mean" hints.
const PROBE_ALIASES: [(&str, &str); 6] = [
    ("ping", "icmp"),
    ("mtr", "trace"),
    ("traceroute", "trace"),
    ("dig", "dns"),
    ("curl", "http"),
    ("connect", "tcp"),
];

/// The kind-specific keys of a probe kind.
fn probe_kind_keys(kind: &str) -> &'static [Key] {
    match kind {
        "icmp" => &ICMP,
        "tcp" => &TCP,
        "http" => &HTTP,
        "dns" => &DNS,
        _ => &TRACE,
    }
}

/// A probe kind's default `interval` and `timeout`.
fn probe_kind_timings(kind: &str) -> (Duration, Duration) {
    match kind {
        "http" => (DEFAULT_INTERVAL, DEFAULT_HTTP_TIMEOUT),
        "trace" => (DEFAULT_TRACE_INTERVAL, DEFAULT_TRACE_TIMEOUT),
        _ => (DEFAULT_INTERVAL, DEFAULT_TIMEOUT),
    }
}

const INCIDENTS: [Key; 2] = [
    key(
        "status_updates",
        Type::Duration,
        r#"status_updates = "30m""#,
    ),
    key("history", Type::Duration, r#"history = "1h""#),
];
const RULE: [Key; 12] = [
    key("name", Type::Str, r#"name = "packet-loss""#),
    key("kind", Type::Str, r#"kind = "loss""#),
    key("severity", Type::Str, r#"severity = "major""#),
    key("probes", Type::ProbeNames, r#"probes = ["ping-fast"]"#),
    key("targets", Type::Names, r#"targets = ["sjc1-core"]"#),
    key("scope", Type::Str, r#"scope = "group""#),
    key("group_by", Type::Str, r#"group_by = "group""#),
    key("share_pct", Type::Number, "share_pct = 50"),
    key("hold_back_targets", Type::Bool, "hold_back_targets = true"),
    key("for", Type::Duration, r#"for = "1m""#),
    key("clear_for", Type::Duration, r#"clear_for = "2m""#),
    key("min_hold", Type::Duration, r#"min_hold = "5m""#),
];
const RULE_LOSS: [Key; 3] = [
    key("above_pct", Type::Number, "above_pct = 20"),
    key("clear_below_pct", Type::Number, "clear_below_pct = 5"),
    key("echoes", Type::Integer, "echoes = 100"),
];
const RULE_FAILURES: [Key; 3] = [
    key("failures", Type::Integer, "failures = 3"),
    key("runs", Type::Integer, "runs = 5"),
    key("clear_failures", Type::Integer, "clear_failures = 0"),
];
const RULE_LATENCY: [Key; 7] = [
    key("field", Type::Str, r#"field = "rtt_median_ms""#),
    key("above_ms", Type::Number, "above_ms = 150"),
    key("clear_below_ms", Type::Number, "clear_below_ms = 100"),
    key("above_baseline", Type::Number, "above_baseline = 3"),
    key(
        "clear_below_baseline",
        Type::Number,
        "clear_below_baseline = 1.5",
    ),
    key("baseline", Type::Duration, r#"baseline = "1h""#),
    key("runs", Type::Integer, "runs = 3"),
];

/// The kind-specific keys of a rule kind.
fn rule_kind_keys(kind: &str) -> &'static [Key] {
    match kind {
        "loss" => &RULE_LOSS,
        "failures" => &RULE_FAILURES,
        _ => &RULE_LATENCY,
    }
}

/// The example shown when a config has no targets (continuation lines are indented under the
/// hint by [`ConfigError`]'s `Display`).
const TARGET_EXAMPLE: &str =
    "add at least one target, e.g.\n[[target]]\nname = \"sjc1-core\"\nhost = \"198.18.1.1\"";

/// The result of looking up one key.
enum Got<T> {
    /// The key is not there.
    Absent,
    /// The key is there but its value is wrong; the mistake has been recorded.
    Invalid,
    /// The value, and the span of the value.
    Valid(T, Range<usize>),
}

/// A name defined in the file, with where it was defined (for duplicates and references).
#[derive(Debug)]
struct Defined {
    name: String,
    span: Range<usize>,
}

/// The names of one kind defined in the file, in file order, looked up by name in constant time
/// (a config may define 100,000 targets; a linear search per name made `check` quadratic).
#[derive(Debug, Default)]
struct Names {
    list: Vec<Defined>,
    /// Each name's first definition in `list`.
    index: HashMap<String, usize>,
}

impl Names {
    fn get(&self, name: &str) -> Option<&Defined> {
        self.index.get(name).map(|&i| &self.list[i])
    }

    fn push(&mut self, defined: Defined) {
        self.index
            .entry(defined.name.clone())
            .or_insert(self.list.len());
        self.list.push(defined);
    }
}

impl std::ops::Deref for Names {
    type Target = [Defined];

    fn deref(&self) -> &[Defined] {
        &self.list
    }
}

/// Collects mistakes, with positions resolved against the text.
struct Checker<'a> {
    path: &'a Path,
    lines: LineIndex<'a>,
    errors: Vec<ConfigError>,
}

/// Where the key with the most dots starts, for the parser's one error that has no position (a
/// dotted key nested too deep); `None` if no line has a dotted key.
fn deepest_dotted_key(text: &str) -> Option<Range<usize>> {
    let mut offset = 0;
    let mut deepest: Option<(usize, Range<usize>)> = None;
    for line in text.split_inclusive('\n') {
        let key = line.split('=').next().unwrap_or_default();
        let dots = key.matches('.').count();
        if dots > 0 && deepest.as_ref().is_none_or(|(most, _)| dots > *most) {
            let indent = key.len() - key.trim_start().len();
            deepest = Some((dots, offset + indent..offset + key.trim_end().len()));
        }
        offset += line.len();
    }
    deepest.map(|(_, span)| span)
}

pub(super) fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let mut checker = Checker {
        path,
        lines: LineIndex::new(text),
        errors: Vec::new(),
    };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(error) => {
            let unchecked = "nothing else in the file is checked until it parses";
            let written = error.span().and_then(|span| text.get(span));
            let (message, hint) = match (error.message().trim_end(), written) {
                ("duplicate key", Some(key)) => (
                    format!("invalid TOML: `{key}` is defined twice"),
                    format!("a key or section may appear only once; remove one ({unchecked})"),
                ),
                // The parser's limit on dotted keys (`a.b.c…`, 80 parts) comes without a span.
                ("recursion limit", _) => (
                    "invalid TOML: nesting too deep (a dotted key of 80 or more parts)".to_string(),
                    format!(
                        "a vantage config nests a few levels at most; shorten the key ({unchecked})"
                    ),
                ),
                (message, _) => (
                    format!("invalid TOML: {message}"),
                    format!("fix the syntax first; {unchecked}"),
                ),
            };
            match error.span().or_else(|| deepest_dotted_key(text)) {
                Some(span) => checker.error(span, message, hint),
                None => checker.file_error(message, hint),
            }
            return Err(checker.finish());
        }
    };
    let root = root.get_ref();
    checker.root_keys(root);
    let agent = checker.agent(root, path);
    let (targets, defined) = checker.targets(root);
    let (probes, probe_names) = checker.probes(root, &targets, &defined);
    checker.icmp_sequence_space(&targets, &probes, &probe_names); // issue 11, item 4
    let incidents = checker.incidents(root);
    let rules = checker.rules(root, &targets, &defined, &probes, &probe_names);
    let outputs = checker.outputs(root);
    let incident_sinks = checker.incident_sinks(root);
    let fleet = checker.fleet(root, &outputs);
    match (agent, incidents, checker.errors.is_empty()) {
        (Some(agent), Some(incidents), true) => Ok(Config {
            source: path.to_path_buf(),
            agent,
            targets,
            probes,
            rules,
            incidents,
            outputs,
            incident_sinks,
            fleet,
        }),
        _ => Err(checker.finish()),
    }
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>, hint: impl Into<String>) {
        let (line, column) = self.lines.line_col(span.start);
        self.push(line, column, message.into(), hint.into());
    }

    /// A mistake that is not at one place (something missing from the whole file).
    fn file_error(&mut self, message: impl Into<String>, hint: impl Into<String>) {
        self.push(0, 0, message.into(), hint.into());
    }

    fn push(&mut self, line: usize, column: usize, message: String, hint: String) {
        self.errors.push(ConfigError {
            path: self.path.to_path_buf(),
            line,
            column,
            message,
            hint: Some(hint),
        });
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.lines.line_col(span.start).0
    }

    /// Every mistake in file order; mistakes about the whole file come last.
    fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
        ConfigErrors {
            errors: self.errors,
        }
    }

    // ---- generic checks ------------------------------------------------------------------

    /// Report keys of `table` that are not in `allowed` (nor in `also_accepted`, keys that are
    /// valid but checked elsewhere or not at all).
    fn unknown_keys(
        &mut self,
        table: &DeTable<'_>,
        section: &str,
        allowed: &[&Key],
        accepted: &[&Key],
    ) {
        for (name, _) in table.iter() {
            let name_str: &str = name.get_ref();
            if allowed.iter().chain(accepted).any(|k| k.name == name_str) {
                continue;
            }
            let hint = match closest(name_str, allowed.iter().map(|k| k.name)) {
                Some(suggestion) => format!("did you mean `{suggestion}`?"),
                None => format!(
                    "allowed keys in {section}: {}",
                    allowed
                        .iter()
                        .map(|k| k.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            self.error(
                name.span(),
                format!("unknown key `{name_str}` in {section}"),
                hint,
            );
        }
    }

    /// Report a value of the wrong type, with a hint built from what was written when possible.
    fn wrong_type(&mut self, value: &Value<'_>, key: &Key) {
        let found = a(value.get_ref().type_str());
        let name = key.name;
        let scalar = scalar_text(value.get_ref());
        let (message, hint) = match key.ty {
            Type::Str => (
                format!("`{name}` must be a string, not {found}"),
                match scalar {
                    Some(text) => format!("quote it: `{name} = \"{text}\"`"),
                    None => format!("e.g. `{}`", key.example),
                },
            ),
            Type::Duration => (
                format!("`{name}` must be a duration string, not {found}"),
                match value.get_ref() {
                    DeValue::Integer(_) | DeValue::Float(_) => format!(
                        "durations are strings with a unit (ms, s, m, h, d): `{name} = \"{}s\"`",
                        scalar.unwrap_or_default()
                    ),
                    _ => format!(
                        "durations are strings with a unit (ms, s, m, h, d), e.g. `{}`",
                        key.example
                    ),
                },
            ),
            Type::Integer => (
                format!("`{name}` must be an integer, not {found}"),
                match value.get_ref().as_str().map(str::trim) {
                    Some(text) if text.parse::<i64>().is_ok() => {
                        format!("remove the quotes: `{name} = {text}`")
                    }
                    _ => format!("e.g. `{}`", key.example),
                },
            ),
            Type::Names => (
                format!("`{name}` must be an array of target names, not {found}"),
                match value.get_ref().as_str() {
                    Some(text) => {
                        format!("use a list, even for one target: `{name} = [\"{text}\"]`")
                    }
                    None => format!("e.g. `{}`", key.example),
                },
            ),
            Type::ProbeNames => (
                format!("`{name}` must be an array of probe names, not {found}"),
                match value.get_ref().as_str() {
                    Some(text) => {
                        format!("use a list, even for one probe: `{name} = [\"{text}\"]`")
                    }
                    None => format!("e.g. `{}`", key.example),
                },
            ),
            Type::Number => (
                format!("`{name}` must be a number, not {found}"),
                match value.get_ref().as_str().map(str::trim) {
                    Some(text) if text.parse::<f64>().is_ok() => {
                        format!("remove the quotes: `{name} = {text}`")
                    }
                    _ => format!("e.g. `{}`", key.example),
                },
            ),
            Type::Labels | Type::StrTable => (
                format!("`{name}` must be a table of strings, not {found}"),
                format!("e.g. `{}`", key.example),
            ),
            Type::Bool => (
                format!("`{name}` must be true or false, not {found}"),
                match value.get_ref().as_str().map(str::trim) {
                    Some(text @ ("true" | "false")) => {
                        format!("remove the quotes: `{name} = {text}`")
                    }
                    _ => format!("e.g. `{}`", key.example),
                },
            ),
            Type::Strings => (
                format!("`{name}` must be an array of strings, not {found}"),
                match value.get_ref().as_str().map(str::to_string).or(scalar) {
                    Some(text) => {
                        format!("use a list, even for one value: `{name} = [\"{text}\"]`")
                    }
                    None => format!("e.g. `{}`", key.example),
                },
            ),
            Type::Integers => (
                format!("`{name}` must be an array of integers, not {found}"),
                match value.get_ref() {
                    DeValue::Integer(i) => {
                        format!(
                            "use a list, even for one value: `{name} = [{}]`",
                            i.as_str()
                        )
                    }
                    _ => format!("e.g. `{}`", key.example),
                },
            ),
            Type::Table => (
                format!("`{name}` must be a table, not {found}"),
                format!(
                    "write it as a section: `{}` on its own line, then its keys",
                    key.example
                ),
            ),
            Type::Tables => (
                format!("`{name}` must be an array of tables, not {found}"),
                format!(
                    "write one `{}` section (double brackets) per {name}",
                    key.example
                ),
            ),
        };
        self.error(value.span(), message, hint);
    }

    fn string<'t>(&mut self, table: &'t DeTable<'_>, key: &Key) -> Got<&'t str> {
        match table.get(key.name) {
            None => Got::Absent,
            Some(value) => match value.get_ref().as_str() {
                Some(text) => Got::Valid(text, value.span()),
                None => {
                    self.wrong_type(value, key);
                    Got::Invalid
                }
            },
        }
    }

    fn duration(&mut self, table: &DeTable<'_>, key: &Key) -> Got<Duration> {
        match self.string(table, key) {
            Got::Valid(text, span) => match parse_duration(text) {
                Ok(duration) => Got::Valid(duration, span),
                Err(reason) => {
                    self.error(
                        span,
                        format!("invalid duration `{text}` for `{}`: {reason}", key.name),
                        format!(
                            "write a number and a unit (ms, s, m, h, d) without spaces, e.g. `{}`",
                            key.example
                        ),
                    );
                    Got::Invalid
                }
            },
            Got::Absent => Got::Absent,
            Got::Invalid => Got::Invalid,
        }
    }

    /// A duration that must be longer than zero.
    fn positive_duration(&mut self, table: &DeTable<'_>, key: &Key) -> Got<Duration> {
        match self.duration(table, key) {
            Got::Valid(duration, span) if duration.is_zero() => {
                self.error(
                    span,
                    format!("`{}` must be longer than zero", key.name),
                    format!("e.g. `{}`", key.example),
                );
                Got::Invalid
            }
            other => other,
        }
    }

    fn integer(&mut self, table: &DeTable<'_>, key: &Key) -> Got<i128> {
        let Some(value) = table.get(key.name) else {
            return Got::Absent;
        };
        match value.get_ref().as_integer() {
            Some(integer) => Got::Valid(
                // Too large even for i128: as good as infinity for every range check.
                i128::from_str_radix(integer.as_str(), integer.radix()).unwrap_or(i128::MAX),
                value.span(),
            ),
            None => {
                self.wrong_type(value, key);
                Got::Invalid
            }
        }
    }

    /// An integer or a float.
    fn number(&mut self, table: &DeTable<'_>, key: &Key) -> Got<f64> {
        let Some(value) = table.get(key.name) else {
            return Got::Absent;
        };
        let number = match value.get_ref() {
            DeValue::Integer(integer) => i128::from_str_radix(integer.as_str(), integer.radix())
                .ok()
                .map(|i| i as f64),
            DeValue::Float(float) => float.as_str().replace('_', "").parse::<f64>().ok(),
            _ => None,
        };
        match number {
            Some(number) if number.is_finite() => Got::Valid(number, value.span()),
            Some(_) => {
                self.error(
                    value.span(),
                    format!("`{}` must be a finite number", key.name),
                    format!("e.g. `{}`", key.example),
                );
                Got::Invalid
            }
            None => {
                self.wrong_type(value, key);
                Got::Invalid
            }
        }
    }

    /// An integer from `min` to `max` (inclusive); `what` explains the key in the hint.
    fn bounded_integer(
        &mut self,
        table: &DeTable<'_>,
        key: &Key,
        min: i128,
        max: i128,
        what: &str,
    ) -> Got<u32> {
        match self.integer(table, key) {
            Got::Valid(n, span) if n < min || n > max => {
                let bound = if n < min {
                    format!("at least {min}")
                } else {
                    format!("at most {max}")
                };
                self.error(
                    span,
                    format!("`{}` must be {bound}, not {n}", key.name),
                    format!("`{}` is {what}, e.g. `{}`", key.name, key.example),
                );
                Got::Invalid
            }
            Got::Valid(n, span) => match u32::try_from(n) {
                Ok(n) => Got::Valid(n, span),
                Err(_) => Got::Invalid,
            },
            Got::Absent => Got::Absent,
            Got::Invalid => Got::Invalid,
        }
    }

    /// Look up a key that must be present; a missing key is reported at the section header.
    fn required<T>(
        &mut self,
        got: Got<T>,
        section: &str,
        section_span: &Range<usize>,
        key: &Key,
        why: &str,
    ) -> Got<T> {
        if let Got::Absent = got {
            self.error(
                section_span.clone(),
                format!("missing required key `{}` in {section}", key.name),
                format!("add `{}`{why}", key.example),
            );
            return Got::Invalid;
        }
        got
    }

    /// Names that become time-series tags: non-empty, `[A-Za-z0-9_.-]+`.
    fn tag_name(&mut self, what: &str, name: &str, span: Range<usize>, example: &str) -> bool {
        if name.is_empty() {
            self.error(
                span,
                format!("{what} must not be empty"),
                format!("e.g. `{example}`"),
            );
            return false;
        }
        let Some(bad) = name.chars().find(|&c| !is_tag_char(c)) else {
            return true;
        };
        let fixed: String = name
            .chars()
            .map(|c| if is_tag_char(c) { c } else { '-' })
            .collect();
        self.error(
            span,
            format!("invalid {what} `{name}`: {bad:?} is not allowed"),
            format!(
                "{what}s become time-series tags: use only letters, digits, `_`, `.` and `-`, e.g. `{fixed}`"
            ),
        );
        false
    }

    /// A section's required, unique `name`, which becomes the `tag` tag: reported when missing,
    /// malformed or defined twice; `None` then. Valid names are added to `names`.
    #[allow(clippy::too_many_arguments)]
    fn unique_name<'t>(
        &mut self,
        table: &'t DeTable<'_>,
        section: &str,
        section_span: &Range<usize>,
        key: &Key,
        tag: &str,
        why: &str,
        names: &mut Names,
    ) -> Option<&'t str> {
        let name = self.string(table, key);
        let Got::Valid(name, name_span) = self.required(name, section, section_span, key, why)
        else {
            return None;
        };
        let valid = self.tag_name(&format!("{tag} name"), name, name_span.clone(), key.example);
        if let Some(first) = names.get(name) {
            let first = first.span.clone();
            self.duplicate(tag, name, name_span, &first, tag);
            return None;
        }
        names.push(Defined {
            name: name.to_string(),
            span: name_span,
        });
        valid.then_some(name)
    }

    /// The second definition of a name; `first` is where it was defined before.
    fn duplicate(
        &mut self,
        what: &str,
        name: &str,
        span: Range<usize>,
        first: &Range<usize>,
        tag: &str,
    ) {
        let first_line = self.line(first);
        self.error(
            span,
            format!("duplicate {what} name `{name}` (first defined at line {first_line})"),
            format!("{what} names must be unique because each becomes the `{tag}` tag; rename one of them"),
        );
    }

    /// The entries of a `[[section]]` array of tables; anything else is reported.
    fn tables<'t, 'i>(
        &mut self,
        value: &'t Value<'i>,
        key: &Key,
    ) -> Vec<(&'t DeTable<'i>, Range<usize>)> {
        let Some(array) = value.get_ref().as_array() else {
            self.wrong_type(value, key);
            return Vec::new();
        };
        let mut tables = Vec::new();
        for entry in array.iter() {
            match entry.get_ref().as_table() {
                Some(table) => tables.push((table, entry.span())),
                None => self.error(
                    entry.span(),
                    format!(
                        "each `{}` entry must be a table, not {}",
                        key.name,
                        a(entry.get_ref().type_str())
                    ),
                    format!("write one `{}` section per {}", key.example, key.name),
                ),
            }
        }
        tables
    }

    // ---- sections ---------------------------------------------------------------------------

    fn root_keys(&mut self, root: &DeTable<'_>) {
        for (name, _) in root.iter() {
            let name_str: &str = name.get_ref();
            if ROOT.iter().any(|k| k.name == name_str) {
                continue;
            }
            let mut homes: Vec<&str> = [
                ("[agent]", &AGENT[..]),
                ("[[target]]", &TARGET[..]),
                ("[[probe]]", &PROBE[..]),
                ("[[probe]]", &ICMP[..]),
                ("[[probe]]", &TCP[..]),
                ("[[probe]]", &HTTP[..]),
                ("[[probe]]", &DNS[..]),
                ("[[probe]]", &TRACE[..]),
                ("[[rule]]", &RULE[..]),
                ("[[rule]]", &RULE_LOSS[..]),
                ("[[rule]]", &RULE_FAILURES[..]),
                ("[[rule]]", &RULE_LATENCY[..]),
                ("[incidents]", &INCIDENTS[..]),
                ("[[output]]", &OUTPUT[..]),
                ("[[output]]", &OUTPUT_V2[..]),
                ("[[output]]", &OUTPUT_V1[..]),
                ("[[incident_sink]]", &INCIDENT_SINK[..]),
                ("[[incident_sink]]", &INCIDENT_SINK_AM[..]),
                ("[fleet]", &FLEET[..]),
            ]
            .into_iter()
            .filter(|(_, keys)| keys.iter().any(|k| k.name == name_str))
            .map(|(section, _)| section)
            .collect();
            homes.dedup();
            let hint = if let Some(suggestion) = closest(name_str, ROOT.iter().map(|k| k.name)) {
                format!("did you mean `{suggestion}`?")
            } else if homes.is_empty() {
                "the top level holds only the [agent], [[target]], [[probe]], [[rule]], [incidents], [[output]], [[incident_sink]] and [fleet] sections"
                    .to_string()
            } else {
                format!(
                    "`{name_str}` belongs in {}: move it below that section's header",
                    homes.join(" or ")
                )
            };
            self.error(
                name.span(),
                format!("unknown key `{name_str}` at the top level"),
                hint,
            );
        }
    }

    fn agent(&mut self, root: &DeTable<'_>, path: &Path) -> Option<AgentConfig> {
        let Some(value) = root.get("agent") else {
            self.file_error(
                "missing [agent] section",
                "add `[agent]` with `site = \"scl3\"` (the datacenter or cloud region this agent runs in)",
            );
            return None;
        };
        let Some(table) = value.get_ref().as_table() else {
            self.wrong_type(value, &ROOT[0]);
            return None;
        };
        let section = "[agent]";
        let span = value.span();
        let [
            name_key,
            site_key,
            data_dir_key,
            retention_key,
            retention_5m_key,
            retention_1h_key,
            ..,
        ] = &AGENT;
        self.unknown_keys(table, section, &AGENT.each_ref(), &[]);

        let name = match self.string(table, name_key) {
            Got::Absent => Some(default_agent_name()),
            Got::Invalid => None,
            Got::Valid(name, span) => self
                .tag_name("agent name", name, span, name_key.example)
                .then(|| name.to_string()),
        };
        let site = self.string(table, site_key);
        let site = match self.required(
            site,
            section,
            &span,
            site_key,
            ": the datacenter or cloud region this agent runs in",
        ) {
            Got::Valid(site, span) => self
                .tag_name("site", site, span, site_key.example)
                .then(|| site.to_string()),
            Got::Absent | Got::Invalid => None,
        };
        let data_dir = match self.string(table, data_dir_key) {
            Got::Absent => Some(DEFAULT_DATA_DIR),
            Got::Invalid => None,
            Got::Valid("", span) => {
                self.error(
                    span,
                    "`data_dir` must not be empty",
                    format!("remove it to use `{DEFAULT_DATA_DIR}` next to the config file, or e.g. `{}`", data_dir_key.example),
                );
                None
            }
            Got::Valid(dir, _) => Some(dir),
        };
        let retention = match self.positive_duration(table, retention_key) {
            Got::Absent => Some(DEFAULT_RETENTION),
            Got::Invalid => None,
            Got::Valid(retention, _) => Some(retention),
        };
        // Each rollup level summarises the finer one: keeping it for less would be pointless.
        let mut finer = (retention_key, retention.unwrap_or(DEFAULT_RETENTION));
        let mut level = |validator: &mut Self, key: &'static Key, default: Duration| {
            let kept = match validator.positive_duration(table, key) {
                Got::Absent => Some(default),
                Got::Invalid => None,
                Got::Valid(kept, span) if kept < finer.1 => {
                    validator.error(
                        span,
                        format!(
                            "`{}` ({}) is shorter than `{}` ({}): a coarser level must be kept at least as long as the finer one",
                            key.name,
                            format_duration(kept),
                            finer.0.name,
                            format_duration(finer.1)
                        ),
                        format!("e.g. `{}`, or leave it out", key.example),
                    );
                    None
                }
                Got::Valid(kept, _) => Some(kept),
            };
            finer = (key, kept.unwrap_or(finer.1));
            kept
        };
        let retention_5m = level(self, retention_5m_key, DEFAULT_RETENTION_5M);
        let retention_1h = level(self, retention_1h_key, DEFAULT_RETENTION_1H);
        let listen = self.listen(table);
        let config_dir = path.parent().unwrap_or_else(|| Path::new(""));
        Some(AgentConfig {
            name: name?,
            site: site?,
            data_dir: config_dir.join(data_dir?),
            retention: retention?,
            retention_5m: retention_5m?,
            retention_1h: retention_1h?,
            listen: listen?,
        })
    }

    /// `[agent] listen` and its optional auth: `Some(None)` when the listener is off, `None`
    /// when something was wrong (reported).
    fn listen(&mut self, table: &DeTable<'_>) -> Option<Option<ListenConfig>> {
        let [
            ..,
            listen_key,
            token_env,
            token_file,
            username_key,
            password_env,
            password_file,
        ] = &AGENT;
        // Both the address and the credentials are checked, so every mistake is reported at once.
        let address = match self.string(table, listen_key) {
            Got::Absent => Ok(None),
            Got::Invalid => Err(()),
            Got::Valid(text, span) => match text.parse::<std::net::SocketAddr>() {
                Ok(address) => Ok(Some(address)),
                Err(_) => {
                    self.error(
                        span,
                        format!("`listen` must be an IP address and a port, not {text:?}"),
                        format!(
                            "e.g. `{}` (loopback), or `listen = \"[::1]:9798\"`; a host name is not allowed",
                            listen_key.example
                        ),
                    );
                    Err(())
                }
            },
        };
        let token = self.secret(table, token_env, token_file)?;
        let username = match self.string(table, username_key) {
            Got::Absent => None,
            Got::Invalid => return None,
            Got::Valid(name, span) if name.is_empty() || name.contains(':') => {
                self.error(
                    span,
                    "`listen_username` must not be empty nor contain `:` (HTTP basic auth)",
                    format!("e.g. `{}`", username_key.example),
                );
                return None;
            }
            Got::Valid(name, span) => Some((name.to_string(), span)),
        };
        let password = self.secret(table, password_env, password_file)?;
        let auth_span = [
            token_env,
            token_file,
            username_key,
            password_env,
            password_file,
        ]
        .iter()
        .find_map(|k| table.get(k.name).map(|v| v.span()));
        let auth = match (token, username, password) {
            (None, None, None) => None,
            (Some(token), None, None) => Some(ListenAuth::Bearer(token)),
            (None, Some((username, _)), Some(password)) => {
                Some(ListenAuth::Basic { username, password })
            }
            (Some(_), _, _) => {
                self.error(
                    auth_span.unwrap_or_default(),
                    "give either a bearer token (`listen_token_env`/`listen_token_file`) or basic auth (`listen_username` with `listen_password_env`/`listen_password_file`), not both",
                    "keep the one your Prometheus scrape config sends",
                );
                return None;
            }
            (None, Some((_, span)), None) => {
                self.error(
                    span,
                    "`listen_username` needs a password: `listen_password_env` or `listen_password_file`",
                    format!("e.g. `{}`", password_file.example),
                );
                return None;
            }
            (None, None, Some(_)) => {
                self.error(
                    auth_span.unwrap_or_default(),
                    "`listen_password_env`/`listen_password_file` need `listen_username`",
                    format!("e.g. `{}`", username_key.example),
                );
                return None;
            }
        };
        match (address.ok()?, auth) {
            (Some(address), auth) => Some(Some(ListenConfig { address, auth })),
            (None, None) => Some(None),
            (None, Some(_)) => {
                self.error(
                    auth_span.unwrap_or_default(),
                    "the listener's credentials are set but `listen` is not: nothing would use them",
                    format!("add `{}`, or remove the credentials", listen_key.example),
                );
                None
            }
        }
    }

    /// The valid targets, and every target name written in the file (valid or not), so that a
    /// probe's reference to a target with another mistake is not reported a second time.
    fn targets(&mut self, root: &DeTable<'_>) -> (Vec<Target>, Names) {
        let mut targets = Vec::new();
        let mut defined: Names = Names::default();
        let Some(value) = root.get("target") else {
            self.file_error("no targets: the agent has nothing to probe", TARGET_EXAMPLE);
            return (targets, defined);
        };
        let tables = self.tables(value, &ROOT[1]);
        if tables.is_empty() && value.get_ref().as_array().is_some_and(|a| a.is_empty()) {
            self.error(
                value.span(),
                "no targets: the agent has nothing to probe",
                TARGET_EXAMPLE,
            );
        }
        let section = "[[target]]";
        let [name_key, host_key, site_key, family_key, labels_key] = &TARGET;
        for (table, span) in tables {
            self.unknown_keys(table, section, &TARGET.each_ref(), &[]);

            let name = self.unique_name(
                table,
                section,
                &span,
                name_key,
                "target",
                ": it names the target in every measurement and in probe `targets` lists",
                &mut defined,
            );

            let host = self.string(table, host_key);
            let host = match self.required(
                host,
                section,
                &span,
                host_key,
                ": an IP address or a DNS name",
            ) {
                Got::Valid(host, host_span) => match check_host(host) {
                    Ok(literal) => Some((host, literal)),
                    Err((message, hint)) => {
                        self.error(host_span, message, hint);
                        None
                    }
                },
                Got::Absent | Got::Invalid => None,
            };

            let site = match self.string(table, site_key) {
                Got::Absent => Some(DEFAULT_TARGET_SITE),
                Got::Invalid => None,
                Got::Valid(site, span) => self
                    .tag_name("site", site, span, site_key.example)
                    .then_some(site),
            };

            let family = match self.string(table, family_key) {
                Got::Absent => Some(FamilyPreference::Any),
                Got::Invalid => None,
                Got::Valid(text, family_span) => {
                    let family = match text {
                        "any" => Some(FamilyPreference::Any),
                        "ipv4" => Some(FamilyPreference::V4),
                        "ipv6" => Some(FamilyPreference::V6),
                        other => {
                            let hint = match closest(other, ["any", "ipv4", "ipv6"]) {
                                Some(suggestion) => format!("did you mean `{suggestion}`?"),
                                None => "use one of: any, ipv4, ipv6".to_string(),
                            };
                            self.error(
                                family_span.clone(),
                                format!("unknown family `{other}`"),
                                hint,
                            );
                            None
                        }
                    };
                    let literal = host.and_then(|(_, literal)| literal);
                    let mismatch = match (family, literal) {
                        (Some(FamilyPreference::V4), Some(literal @ IpAddr::V6(_))) => {
                            Some(("ipv4", literal, "an IPv6", "ipv6"))
                        }
                        (Some(FamilyPreference::V6), Some(literal @ IpAddr::V4(_))) => {
                            Some(("ipv6", literal, "an IPv4", "ipv4"))
                        }
                        _ => None,
                    };
                    match mismatch {
                        None => family,
                        Some((wanted, literal, actual, fix)) => {
                            self.error(
                                family_span,
                                format!("`family = \"{wanted}\"` contradicts host `{literal}`, which is {actual} address"),
                                format!("remove `family` (it only matters for host names) or set `family = \"{fix}\"`"),
                            );
                            None
                        }
                    }
                }
            };

            let labels = match table.get(labels_key.name) {
                None => Some(Default::default()),
                Some(value) => self.labels(value, labels_key),
            };

            if let (Some(name), Some((host, _)), Some(site), Some(family), Some(labels)) =
                (name, host, site, family, labels)
            {
                targets.push(Target {
                    name: name.to_string(),
                    host: host.to_string(),
                    site: site.to_string(),
                    family,
                    labels,
                });
            }
        }
        (targets, defined)
    }

    fn labels(
        &mut self,
        value: &Value<'_>,
        key: &Key,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        let Some(table) = value.get_ref().as_table() else {
            self.wrong_type(value, key);
            return None;
        };
        let mut labels = std::collections::BTreeMap::new();
        let mut valid = true;
        for (label, value) in table.iter() {
            let label_str: &str = label.get_ref();
            if RESERVED_LABELS.contains(&label_str) {
                self.error(
                    label.span(),
                    format!("label `{label_str}` clashes with the built-in `{label_str}` tag"),
                    format!("rename it, e.g. `peer_{label_str}`: the agent sets the `{label_str}` tag itself"),
                );
                valid = false;
            } else if !self.tag_name("label key", label_str, label.span(), "role = \"core\"") {
                valid = false;
            }
            match value.get_ref().as_str() {
                Some("") => {
                    self.error(
                        value.span(),
                        format!("label `{label_str}` is empty"),
                        "give it a value or remove it",
                    );
                    valid = false;
                }
                Some(text) => {
                    labels.insert(label_str.to_string(), text.to_string());
                }
                None => {
                    let hint = match scalar_text(value.get_ref()) {
                        Some(text) => format!("quote it: `{label_str} = \"{text}\"`"),
                        None => format!("e.g. `{}`", key.example),
                    };
                    self.error(
                        value.span(),
                        format!(
                            "label `{label_str}` must be a string, not {}",
                            a(value.get_ref().type_str())
                        ),
                        hint,
                    );
                    valid = false;
                }
            }
        }
        valid.then_some(labels)
    }

    fn probes(
        &mut self,
        root: &DeTable<'_>,
        targets: &[Target],
        defined: &Names,
    ) -> (Vec<ProbeConfig>, Names) {
        let mut probes = Vec::new();
        let mut names: Names = Names::default();
        let Some(value) = root.get("probe") else {
            // The five-line config: one smokeping-style ping over every target.
            let count = DEFAULT_COUNT;
            probes.push(ProbeConfig {
                name: DEFAULT_PROBE_NAME.to_string(),
                interval: DEFAULT_INTERVAL,
                timeout: DEFAULT_TIMEOUT,
                targets: targets.iter().map(|t| t.name.clone()).collect(),
                kind: ProbeKind::Icmp {
                    count,
                    spacing: (DEFAULT_INTERVAL - DEFAULT_TIMEOUT) / count,
                },
            });
            names.push(Defined {
                name: DEFAULT_PROBE_NAME.to_string(),
                span: 0..0,
            });
            return (probes, names);
        };
        let tables = self.tables(value, &ROOT[2]);
        if tables.is_empty() && value.get_ref().as_array().is_some_and(|a| a.is_empty()) {
            self.error(
                value.span(),
                "`probe` is an empty list: the agent would measure nothing",
                format!("remove `probe = []` to get the default `{DEFAULT_PROBE_NAME}` probe, or add a `[[probe]]` section"),
            );
        }
        let section = "[[probe]]";
        let [name_key, kind_key, interval_key, timeout_key, targets_key] = &PROBE;
        for (table, span) in tables {
            let kind = self.string(table, kind_key);
            let kind: Option<&'static str> = match self.required(
                kind,
                section,
                &span,
                kind_key,
                &format!(" (known kinds: {})", PROBE_KINDS.join(", ")),
            ) {
                Got::Valid(kind, kind_span) => match PROBE_KINDS.iter().find(|k| **k == kind) {
                    Some(kind) => Some(*kind),
                    None => {
                        let known = PROBE_KINDS.join(", ");
                        // The tools people know these kinds by, then plain typos.
                        let alias = PROBE_ALIASES
                            .iter()
                            .find(|(tool, _)| tool.eq_ignore_ascii_case(kind))
                            .map(|(_, kind)| *kind);
                        let hint = match alias.or_else(|| closest(kind, PROBE_KINDS)) {
                            Some(suggestion) => {
                                format!("did you mean `{suggestion}`? known kinds: {known}")
                            }
                            None => format!("known kinds: {known}"),
                        };
                        self.error(kind_span, format!("unknown probe kind `{kind}`"), hint);
                        None
                    }
                },
                Got::Absent | Got::Invalid => None,
            };
            // Keys of the probe's own kind are allowed; a key of another kind is named as such;
            // when the kind is unknown, keys of any kind are accepted (unchecked) rather than
            // reported as unknown.
            let own: &[Key] = kind.map(probe_kind_keys).unwrap_or(&[]);
            let allowed: Vec<&Key> = PROBE.iter().chain(own).collect();
            let all_kinds: Vec<&Key> = PROBE_KINDS
                .iter()
                .flat_map(|k| probe_kind_keys(k))
                .collect();
            if let Some(kind) = kind {
                for (key_name, _) in table.iter() {
                    let key_str: &str = key_name.get_ref();
                    if allowed.iter().any(|k| k.name == key_str) {
                        continue;
                    }
                    let homes: Vec<String> = PROBE_KINDS
                        .iter()
                        .filter(|k| probe_kind_keys(k).iter().any(|key| key.name == key_str))
                        .map(|k| format!("`kind = \"{k}\"`"))
                        .collect();
                    if !homes.is_empty() {
                        self.error(
                            key_name.span(),
                            format!("`{key_str}` does not apply to a probe of kind `{kind}`"),
                            format!(
                                "`{key_str}` belongs to {}; keys of `{kind}`: {}",
                                homes.join(" or "),
                                own.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                            ),
                        );
                    }
                }
            }
            self.unknown_keys(table, section, &allowed, &all_kinds);

            let name = self.unique_name(
                table,
                section,
                &span,
                name_key,
                "probe",
                ": it becomes the `probe` tag of every measurement",
                &mut names,
            );

            let (default_interval, default_timeout) = probe_kind_timings(kind.unwrap_or("icmp"));
            let interval = match self.positive_duration(table, interval_key) {
                Got::Absent => Some((default_interval, None)),
                Got::Invalid => None,
                Got::Valid(interval, span) => Some((interval, Some(span))),
            };
            let timeout = match self.positive_duration(table, timeout_key) {
                Got::Absent => Some((default_timeout, None)),
                Got::Invalid => None,
                Got::Valid(timeout, span) => Some((timeout, Some(span))),
            };
            // Timings are checked only when each is valid on its own.
            let timings = match (interval, timeout) {
                (Some((interval, interval_span)), Some((timeout, timeout_span)))
                    if timeout >= interval =>
                {
                    let default = if timeout_span.is_none() {
                        ", the default"
                    } else {
                        ""
                    };
                    let at = timeout_span
                        .or(interval_span)
                        .unwrap_or_else(|| span.clone());
                    self.error(
                        at,
                        format!(
                            "`timeout` ({}{default}) must be shorter than `interval` ({})",
                            format_duration(timeout),
                            format_duration(interval)
                        ),
                        "a run must end before the next one starts: raise `interval` or lower `timeout`",
                    );
                    None
                }
                (Some((interval, _)), Some((timeout, _))) => Some((interval, timeout)),
                _ => None,
            };

            let probe_targets = match table.get(targets_key.name) {
                None => Some(targets.iter().map(|t| t.name.clone()).collect()),
                Some(value) => {
                    self.name_refs(value, targets_key, ("probe", name), "target", defined)
                }
            };

            let kind = match kind {
                Some("icmp") => self.icmp(table, timings),
                Some("tcp") => self.tcp(table, &span),
                Some("http") => self.http(table, timings),
                Some("dns") => self.dns(table, &span),
                Some("trace") => self.trace(table, timings),
                _ => None,
            };
            if let (Some(name), Some((interval, timeout)), Some(targets), Some(kind)) =
                (name, timings, probe_targets, kind)
            {
                probes.push(ProbeConfig {
                    name: name.to_string(),
                    interval,
                    timeout,
                    targets,
                    kind,
                });
            }
        }
        (probes, names)
    }

    /// The icmp-specific keys: `count` and `spacing`, and whether a round fits in the interval.
    /// `timings` is `(interval, timeout)` when both are valid.
    fn icmp(
        &mut self,
        table: &DeTable<'_>,
        timings: Option<(Duration, Duration)>,
    ) -> Option<ProbeKind> {
        let [count_key, spacing_key] = &ICMP;
        let count_hint = "`count` is the number of echoes per round, e.g. `count = 20`";
        let count = match self.integer(table, count_key) {
            Got::Absent => Some(DEFAULT_COUNT),
            Got::Invalid => None,
            Got::Valid(count, span) if count < 1 => {
                self.error(
                    span,
                    format!("`count` must be at least 1, not {count}"),
                    count_hint,
                );
                None
            }
            Got::Valid(count, span) if count > MAX_COUNT => {
                self.error(
                    span,
                    format!("`count` must be at most {MAX_COUNT}, not {count}"),
                    count_hint,
                );
                None
            }
            Got::Valid(count, _) => u32::try_from(count).ok(),
        };
        let spacing = match self.duration(table, spacing_key) {
            Got::Valid(spacing, span) if spacing.is_zero() => {
                self.error(
                    span,
                    "`spacing` must be longer than zero",
                    "echoes sent all at once are a burst that ICMP rate limits drop, which reads as loss; e.g. `spacing = \"100ms\"`, or remove it to spread the echoes over the interval",
                );
                Got::Invalid
            }
            other => other,
        };
        let (Some((interval, timeout)), Some(count)) = (timings, count) else {
            return None;
        };
        let spacing = match spacing {
            Got::Invalid => return None,
            // Spread the echoes over the interval; such a round always fits.
            Got::Absent => (interval - timeout) / count,
            Got::Valid(spacing, span) => {
                let round = spacing * (count - 1) + timeout;
                if round > interval {
                    self.error(
                        span,
                        format!(
                            "a round overlaps the next one: {count} echoes {} apart plus the {} \
                             timeout take {}, but `interval` is {}",
                            format_duration(spacing),
                            format_duration(timeout),
                            format_duration(round),
                            format_duration(interval)
                        ),
                        format!(
                            "lower `count` or `spacing`, or raise `interval` to at least {}",
                            format_duration(ceil_to_millis(round))
                        ),
                    );
                    return None;
                }
                spacing
            }
        };
        Some(ProbeKind::Icmp { count, spacing })
    }

    /// Echoes to one host from every icmp probe and target could all await replies at once (the
    /// probes run independently); more than the sequence space holds could not be told apart, and
    /// the engine would fail those rounds. Hosts are compared as written (addresses parsed): names
    /// that resolve to the same address are caught at run time, as a failed round.
    fn icmp_sequence_space(
        &mut self,
        targets: &[Target],
        probes: &[ProbeConfig],
        probe_names: &[Defined],
    ) {
        use probes::icmp::MAX_OUTSTANDING_PER_ADDRESS as LIMIT;
        let by_name: HashMap<&str, &Target> =
            targets.iter().map(|t| (t.name.as_str(), t)).collect();
        // Per host, in order of appearance: the echoes in total, and each probe with its count
        // and targets.
        struct Share<'c> {
            probe: &'c str,
            count: u32,
            targets: Vec<&'c str>,
        }
        let mut hosts: Vec<(String, usize, Vec<Share>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for probe in probes {
            let ProbeKind::Icmp { count, .. } = probe.kind else {
                continue;
            };
            for target in probe
                .targets
                .iter()
                .filter_map(|name| by_name.get(name.as_str()))
            {
                let host = match check_host(&target.host) {
                    Ok(Some(address)) => address.to_string(),
                    _ => target.host.trim_end_matches('.').to_ascii_lowercase(),
                };
                let at = *index.entry(host.clone()).or_insert_with(|| {
                    hosts.push((host, 0, Vec::new()));
                    hosts.len() - 1
                });
                let (_, total, by_probe) = &mut hosts[at];
                *total += count as usize;
                match by_probe.iter_mut().find(|share| share.probe == probe.name) {
                    Some(share) => share.targets.push(&target.name),
                    None => by_probe.push(Share {
                        probe: &probe.name,
                        count,
                        targets: vec![&target.name],
                    }),
                }
            }
        }
        for (host, total, by_probe) in hosts.into_iter().filter(|(_, t, _)| *t > LIMIT) {
            let last = by_probe.last().map_or("", |share| share.probe);
            let span = probe_names
                .iter()
                .find(|d| d.name == last)
                .map_or(0..0, |d| d.span.clone());
            let parts: Vec<String> = by_probe
                .iter()
                .map(|share| {
                    let names: Vec<String> =
                        share.targets.iter().map(|n| format!("`{n}`")).collect();
                    let (probe, count) = (share.probe, share.count);
                    format!("probe `{probe}` (count {count}) × {}", names.join(", "))
                })
                .collect();
            self.error(
                span,
                format!(
                    "icmp probes could have {total} echoes to host `{host}` awaiting replies at \
                     once, more than the {LIMIT} that 16-bit sequence numbers can tell apart: {}",
                    parts.join("; ")
                ),
                format!(
                    "lower `count`, or probe `{host}` from fewer targets or probes: the sum of \
                     `count` over every icmp probe and target with this host must be at most {LIMIT}"
                ),
            );
        }
    }

    /// A `targets` (or `probes`) list: every entry names a defined target (probe), once.
    /// `owner` is `("probe", Some(name))` for the section the list is in.
    fn name_refs(
        &mut self,
        value: &Value<'_>,
        key: &Key,
        owner: (&str, Option<&str>),
        what: &str,
        defined: &Names,
    ) -> Option<Vec<String>> {
        let (section, name) = owner;
        let owner = match name {
            Some(name) => format!("{section} `{name}`"),
            None => format!("this {section}"),
        };
        let Some(array) = value.get_ref().as_array() else {
            self.wrong_type(value, key);
            return None;
        };
        if array.is_empty() {
            let hint = match (section, what) {
                ("probe", _) => "remove `targets` to probe every target, or list target names",
                (_, "target") => {
                    "remove `targets` to watch every target of the rule's probes, or list target names"
                }
                _ => {
                    "remove `probes` to watch every probe the rule applies to, or list probe names"
                }
            };
            self.error(
                value.span(),
                format!("{owner} has an empty `{}` list", key.name),
                hint,
            );
            return None;
        }
        let mut names: Vec<String> = Vec::new();
        let mut listed: HashSet<&str> = HashSet::new();
        let mut valid = true;
        for entry in array.iter() {
            let Some(name) = entry.get_ref().as_str() else {
                self.error(
                    entry.span(),
                    format!(
                        "each entry of `{}` must be a {what} name (a string), not {}",
                        key.name,
                        a(entry.get_ref().type_str())
                    ),
                    format!("e.g. `{}`", key.example),
                );
                valid = false;
                continue;
            };
            if !listed.insert(name) {
                self.error(
                    entry.span(),
                    format!("{what} `{name}` is listed twice in `{}`", key.name),
                    format!("remove the second `{name}`"),
                );
                valid = false;
            } else if defined.is_empty() {
                // Nothing defined at all: already reported once for the whole file.
                valid = false;
            } else if defined.get(name).is_none() {
                let hint = match closest(name, defined.iter().map(|d| d.name.as_str())) {
                    Some(suggestion) => format!("did you mean `{suggestion}`?"),
                    None => {
                        let mut list: Vec<&str> =
                            defined.iter().take(10).map(|d| d.name.as_str()).collect();
                        if defined.len() > 10 {
                            list.push("...");
                        }
                        format!("defined {what}s: {}", list.join(", "))
                    }
                };
                self.error(
                    entry.span(),
                    format!("{owner} names unknown {what} `{name}`"),
                    hint,
                );
                valid = false;
            }
            names.push(name.to_string());
        }
        valid.then_some(names)
    }
}

/// Round up to whole milliseconds, so that a suggested minimum printed with at most three
/// decimals is never too small.
fn ceil_to_millis(duration: Duration) -> Duration {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

fn is_tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// A number as an operator wrote it: `20`, `2.5`.
fn format_number(n: f64) -> String {
    format!("{n}")
}

/// "a string", "an integer", ...
fn a(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

/// The text of a scalar that was probably meant as a string (to suggest quoting it).
fn scalar_text(value: &DeValue<'_>) -> Option<String> {
    match value {
        DeValue::Integer(i) if i.radix() == 10 => Some(i.as_str().to_string()),
        DeValue::Float(f) => Some(f.as_str().to_string()),
        DeValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The host name this agent runs on: the default agent name.
fn default_agent_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "vantage".to_string())
}

/// Check a target's `host`: an IP literal (returned) or a syntactically valid DNS name.
/// The error is a message and a hint.
fn check_host(host: &str) -> Result<Option<IpAddr>, (String, String)> {
    if let Ok(address) = host.parse::<IpAddr>() {
        return Ok(Some(address));
    }
    let name_hint = || {
        "a host is an IPv4 or IPv6 address or a DNS name of letters, digits, `-` and dots, e.g. `probe.sjc1.example.net`".to_string()
    };
    if host.is_empty() {
        return Err(("`host` must not be empty".into(), name_hint()));
    }
    if let Some((_, rest)) = host.split_once("://") {
        let bare = rest
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default()
            .rsplit('@')
            .next()
            .unwrap_or_default();
        let bare = strip_port(bare);
        return Err((
            format!("host `{host}` is a URL, not a host name"),
            format!("write only the host: `host = \"{bare}\"`"),
        ));
    }
    if host.contains(':') || host.starts_with('[') {
        let bare = strip_port(host);
        if bare != host {
            return Err((
                format!("host `{host}` includes a port or brackets"),
                format!("write only the address or name: `host = \"{bare}\"`"),
            ));
        }
        return Err((
            format!("`{host}` is not a valid IPv6 address"),
            "write IPv6 addresses in the usual notation without brackets, e.g. `2001:db8::1`"
                .into(),
        ));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err((
            format!("`{host}` is not a valid IPv4 address"),
            "an IPv4 address is four numbers from 0 to 255, e.g. `198.18.1.1`".into(),
        ));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let invalid =
        |reason: String| Err((format!("invalid host name `{host}`: {reason}"), name_hint()));
    if name.len() > 253 {
        return invalid(format!(
            "it is {} characters long; the limit is 253",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return invalid("it has an empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > 63 {
            return invalid(format!(
                "label `{label}` is {} characters long; the limit is 63",
                label.len()
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return invalid(format!("{bad:?} is not allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return invalid(format!("label `{label}` starts or ends with `-`"));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return invalid(
            "the last label is all digits, so it is neither a name nor an address".into(),
        );
    }
    Ok(None)
}

/// `[2001:db8::1]:80` -> `2001:db8::1`, `example.net:443` -> `example.net`; anything else as is.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            check_host("198.18.1.1"),
            Ok(Some("198.18.1.1".parse().expect("ip")))
        );
        assert_eq!(
            check_host("2001:db8::1"),
            Ok(Some("2001:db8::1".parse().expect("ip")))
        );
        assert_eq!(check_host("probe.sjc1.example.net"), Ok(None));
        assert_eq!(check_host("probe.sjc1.example.net."), Ok(None));
        assert_eq!(check_host("localhost"), Ok(None));
        assert_eq!(check_host("1password.com"), Ok(None));
        let message = |host: &str| check_host(host).expect_err("invalid").0;
        assert_eq!(
            message("198.18.1.300"),
            "`198.18.1.300` is not a valid IPv4 address"
        );
        assert_eq!(
            message("2001:db8::g"),
            "`2001:db8::g` is not a valid IPv6 address"
        );
        assert_eq!(
            message("[2001:db8::1]"),
            "host `[2001:db8::1]` includes a port or brackets"
        );
        assert_eq!(
            message("example.net:443"),
            "host `example.net:443` includes a port or brackets"
        );
        assert_eq!(
            message("https://example.net/health"),
            "host `https://example.net/health` is a URL, not a host name"
        );
        assert_eq!(
            message("a..b"),
            "invalid host name `a..b`: it has an empty label (two dots in a row, or a leading dot)"
        );
        assert_eq!(
            message("bad_host"),
            "invalid host name `bad_host`: '_' is not allowed"
        );
        assert_eq!(
            message("-x.net"),
            "invalid host name `-x.net`: label `-x` starts or ends with `-`"
        );
        let long_label = "a".repeat(64);
        assert!(message(&long_label).contains("is 64 characters long; the limit is 63"));
        let long_name = vec!["a".repeat(63); 4].join(".") + ".net";
        assert!(message(&long_name).contains("the limit is 253"));
        assert_eq!(check_host(&vec!["a".repeat(63); 3].join(".")), Ok(None));
    }

    #[test]
    fn strip_port_keeps_plain_hosts() {
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("a.net:80"), "a.net");
        assert_eq!(strip_port("a.net"), "a.net");
        assert_eq!(strip_port("2001:db8::g"), "2001:db8::g");
    }
}
