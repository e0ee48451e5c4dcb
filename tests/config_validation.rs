//! Config validation, verbatim: one fixture per mistake in `tests/fixtures/config/`, and here the
//! exact text `vantage check` prints for it (file:line:column, message, hint). The style of
//! blackbox_exporter's `config/config_test.go`. When a message changes on purpose, change it here:
//! the point is that every change to what an operator reads is reviewed.
//!
//! Also: the example configs in `config/` parse to what they promise, and the smallest useful
//! config gets the default probe.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use probes::{DnsRecordType, DnsTransport, TraceProtocol};
use vantage::config::{
    Condition, Config, ConfigErrors, DnsProbe, FamilyPreference, IncidentSinkConfig,
    IncidentSinkKind, IncidentsConfig, LatencyField, LatencyThreshold, ProbeKind, RuleScope,
    Severity, TraceProbe,
};
use vantage::sinks::SecretSource;

const FIXTURES: &str = "tests/fixtures/config";

/// Every fixture this file tests; `every_fixture_is_tested` keeps the list and the folder in step.
const TESTED: [&str; 61] = [
    "syntax_error.toml",
    "unknown_key.toml",
    "typo_key.toml",
    "misplaced_key.toml",
    "wrong_type.toml",
    "missing_site.toml",
    "no_targets.toml",
    "duplicate_target.toml",
    "duplicate_probe.toml",
    "unknown_target_ref.toml",
    "bad_host.toml",
    "bad_target_name.toml",
    "family_mismatch.toml",
    "unknown_kind.toml",
    "bad_duration.toml",
    "zero_interval.toml",
    "output_mistakes.toml",
    "timeout_not_below_interval.toml",
    "count_zero.toml",
    "round_overlaps_interval.toml",
    "several_mistakes.toml",
    "rule_unknown_kind.toml",
    "rule_missing_threshold.toml",
    "rule_clear_not_below.toml",
    "rule_group_without_group_by.toml",
    "rule_unknown_group_label.toml",
    "rule_unknown_probe.toml",
    "rule_key_of_other_kind.toml",
    "rule_failures_above_runs.toml",
    "rule_share_out_of_range.toml",
    "rule_latency_two_thresholds.toml",
    "rule_unknown_severity.toml",
    "rule_duplicate_name.toml",
    "incidents_zero_status_updates.toml",
    "probe_key_of_other_kind.toml",
    "tcp_missing_port.toml",
    "port_out_of_range.toml",
    "http_bad_path.toml",
    "http_bad_status.toml",
    "http_bad_regex.toml",
    "http_max_total_not_below_timeout.toml",
    "http_tls_key_on_plain_http.toml",
    "http_bad_header.toml",
    "http_ca_file_missing.toml",
    "http_bad_method.toml",
    "dns_missing_query.toml",
    "dns_bad_query.toml",
    "dns_unknown_record_type.toml",
    "dns_unknown_rcode.toml",
    "dns_expect_answers_not_a_list.toml",
    "dns_recursion_quoted.toml",
    "trace_unknown_protocol.toml",
    "trace_overlaps_interval.toml",
    "trace_port_with_icmp.toml",
    "trace_max_ttl_out_of_range.toml",
    "incident_sink_typo_key.toml",
    "incident_sink_bad_url.toml",
    "incident_sink_duplicate_name.toml",
    "incident_sink_key_of_other_kind.toml",
    "incident_sink_bad_label.toml",
    "incident_sink_wrong_type.toml",
];

/// Load a fixture, which must be rejected, and compare the rendered errors with `expected`
/// (leading and trailing newlines of `expected` are ignored, so it can be a raw string block).
#[track_caller]
fn assert_rejected(fixture: &str, expected: &str) {
    let path = Path::new(FIXTURES).join(fixture);
    let errors = match Config::load(&path) {
        Ok(config) => panic!("{fixture} must be rejected, but parsed to {config:#?}"),
        Err(errors) => errors,
    };
    let expected = expected.trim_matches('\n');
    assert_eq!(
        errors.to_string(),
        expected,
        "\n--- actual ---\n{errors}\n--- expected ---\n{expected}\n"
    );
}

/// Parse text that must be rejected; the file name in messages is `vantage.toml`.
fn reject(text: &str) -> ConfigErrors {
    match Config::parse(text, Path::new("vantage.toml")) {
        Ok(config) => panic!("must be rejected, but parsed to {config:#?}"),
        Err(errors) => errors,
    }
}

fn accept(text: &str) -> Config {
    Config::parse(text, Path::new("/etc/vantage/vantage.toml"))
        .unwrap_or_else(|errors| panic!("must parse, but:\n{errors}"))
}

#[test]
fn every_fixture_is_tested() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(FIXTURES)
        .expect("the fixtures folder exists")
        .map(|entry| {
            entry
                .expect("a readable folder entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let tested: BTreeSet<String> = TESTED.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        on_disk, tested,
        "a fixture without a test, or a test without a fixture"
    );
}

// ---- one fixture per mistake, exact output ---------------------------------------------------

#[test]
fn syntax_error() {
    assert_rejected(
        "syntax_error.toml",
        r#"
tests/fixtures/config/syntax_error.toml:6:19: error: invalid TOML: invalid basic string, expected `"`
  hint: fix the syntax first; nothing else in the file is checked until it parses
"#,
    );
}

#[test]
fn unknown_key() {
    assert_rejected(
        "unknown_key.toml",
        r#"
tests/fixtures/config/unknown_key.toml:11:1: error: unknown key `size` in [[probe]]
  hint: allowed keys in [[probe]]: name, kind, interval, timeout, targets, count, spacing
"#,
    );
}

#[test]
fn typo_key() {
    assert_rejected(
        "typo_key.toml",
        r#"
tests/fixtures/config/typo_key.toml:11:1: error: unknown key `intervall` in [[probe]]
  hint: did you mean `interval`?
"#,
    );
}

#[test]
fn misplaced_key() {
    assert_rejected(
        "misplaced_key.toml",
        r#"
tests/fixtures/config/misplaced_key.toml:1:1: error: unknown key `site` at the top level
  hint: `site` belongs in [agent] or [[target]]: move it below that section's header
tests/fixtures/config/misplaced_key.toml:3:1: error: missing required key `site` in [agent]
  hint: add `site = "scl3"`: the datacenter or cloud region this agent runs in
"#,
    );
}

#[test]
fn wrong_type() {
    assert_rejected(
        "wrong_type.toml",
        r#"
tests/fixtures/config/wrong_type.toml:11:9: error: `count` must be an integer, not a string
  hint: remove the quotes: `count = 20`
"#,
    );
}

#[test]
fn missing_site() {
    assert_rejected(
        "missing_site.toml",
        r#"
tests/fixtures/config/missing_site.toml:1:1: error: missing required key `site` in [agent]
  hint: add `site = "scl3"`: the datacenter or cloud region this agent runs in
"#,
    );
}

#[test]
fn no_targets() {
    assert_rejected(
        "no_targets.toml",
        r#"
tests/fixtures/config/no_targets.toml: error: no targets: the agent has nothing to probe
  hint: add at least one target, e.g.
        [[target]]
        name = "sjc1-core"
        host = "198.18.1.1"
"#,
    );
}

#[test]
fn duplicate_target() {
    assert_rejected(
        "duplicate_target.toml",
        r#"
tests/fixtures/config/duplicate_target.toml:9:8: error: duplicate target name `sjc1-core` (first defined at line 5)
  hint: target names must be unique because each becomes the `target` tag; rename one of them
"#,
    );
}

#[test]
fn duplicate_probe() {
    assert_rejected(
        "duplicate_probe.toml",
        r#"
tests/fixtures/config/duplicate_probe.toml:13:8: error: duplicate probe name `ping` (first defined at line 9)
  hint: probe names must be unique because each becomes the `probe` tag; rename one of them
"#,
    );
}

#[test]
fn unknown_target_ref() {
    assert_rejected(
        "unknown_target_ref.toml",
        r#"
tests/fixtures/config/unknown_target_ref.toml:15:25: error: probe `ping` names unknown target `sjc1-cor`
  hint: did you mean `sjc1-core`?
tests/fixtures/config/unknown_target_ref.toml:15:37: error: probe `ping` names unknown target `ams2-core`
  hint: defined targets: sjc1-core, iad1-core
"#,
    );
}

#[test]
fn bad_host() {
    assert_rejected(
        "bad_host.toml",
        r#"
tests/fixtures/config/bad_host.toml:6:8: error: `198.18.1.300` is not a valid IPv4 address
  hint: an IPv4 address is four numbers from 0 to 255, e.g. `198.18.1.1`
tests/fixtures/config/bad_host.toml:10:8: error: invalid host name `core_1.iad1.example.net`: '_' is not allowed
  hint: a host is an IPv4 or IPv6 address or a DNS name of letters, digits, `-` and dots, e.g. `probe.sjc1.example.net`
tests/fixtures/config/bad_host.toml:14:8: error: host `https://www.example.net/health` is a URL, not a host name
  hint: write only the host: `host = "www.example.net"`
"#,
    );
}

#[test]
fn bad_target_name() {
    assert_rejected(
        "bad_target_name.toml",
        r#"
tests/fixtures/config/bad_target_name.toml:5:8: error: invalid target name `sjc1 core`: ' ' is not allowed
  hint: target names become time-series tags: use only letters, digits, `_`, `.` and `-`, e.g. `sjc1-core`
"#,
    );
}

#[test]
fn family_mismatch() {
    assert_rejected(
        "family_mismatch.toml",
        r#"
tests/fixtures/config/family_mismatch.toml:7:10: error: `family = "ipv4"` contradicts host `2001:db8:1::1`, which is an IPv6 address
  hint: remove `family` (it only matters for host names) or set `family = "ipv6"`
"#,
    );
}

#[test]
fn unknown_kind() {
    assert_rejected(
        "unknown_kind.toml",
        r#"
tests/fixtures/config/unknown_kind.toml:10:8: error: unknown probe kind `https`
  hint: did you mean `http`? known kinds: icmp, tcp, http, dns, trace
"#,
    );
}

#[test]
fn bad_duration() {
    assert_rejected(
        "bad_duration.toml",
        r#"
tests/fixtures/config/bad_duration.toml:3:13: error: invalid duration `2 weeks` for `retention`: it contains a space
  hint: write a number and a unit (ms, s, m, h, d) without spaces, e.g. `retention = "14d"`
tests/fixtures/config/bad_duration.toml:12:12: error: invalid duration `20sec` for `interval`: unknown unit `sec`
  hint: write a number and a unit (ms, s, m, h, d) without spaces, e.g. `interval = "20s"`
tests/fixtures/config/bad_duration.toml:13:11: error: `timeout` must be a duration string, not an integer
  hint: durations are strings with a unit (ms, s, m, h, d): `timeout = "2s"`
"#,
    );
}

#[test]
fn zero_interval() {
    assert_rejected(
        "zero_interval.toml",
        r#"
tests/fixtures/config/zero_interval.toml:11:12: error: `interval` must be longer than zero
  hint: e.g. `interval = "20s"`
"#,
    );
}

#[test]
fn timeout_not_below_interval() {
    assert_rejected(
        "timeout_not_below_interval.toml",
        r#"
tests/fixtures/config/timeout_not_below_interval.toml:12:11: error: `timeout` (2s) must be shorter than `interval` (2s)
  hint: a run must end before the next one starts: raise `interval` or lower `timeout`
"#,
    );
}

#[test]
fn count_zero() {
    assert_rejected(
        "count_zero.toml",
        r#"
tests/fixtures/config/count_zero.toml:11:9: error: `count` must be at least 1, not 0
  hint: `count` is the number of echoes per round, e.g. `count = 20`
"#,
    );
}

#[test]
fn round_overlaps_interval() {
    assert_rejected(
        "round_overlaps_interval.toml",
        r#"
tests/fixtures/config/round_overlaps_interval.toml:14:11: error: a round overlaps the next one: 20 echoes 1s apart plus the 2s timeout take 21s, but `interval` is 20s
  hint: lower `count` or `spacing`, or raise `interval` to at least 21s
"#,
    );
}

#[test]
fn several_mistakes() {
    assert_rejected(
        "several_mistakes.toml",
        r#"
tests/fixtures/config/several_mistakes.toml:2:1: error: missing required key `site` in [agent]
  hint: add `site = "scl3"`: the datacenter or cloud region this agent runs in
tests/fixtures/config/several_mistakes.toml:4:1: error: unknown key `retension` in [agent]
  hint: did you mean `retention`?
tests/fixtures/config/several_mistakes.toml:9:34: error: label `rack` must be a string, not an integer
  hint: quote it: `rack = "12"`
tests/fixtures/config/several_mistakes.toml:12:8: error: duplicate target name `sjc1-core` (first defined at line 7)
  hint: target names must be unique because each becomes the `target` tag; rename one of them
tests/fixtures/config/several_mistakes.toml:14:10: error: `family = "ipv4"` contradicts host `2001:db8:1::1`, which is an IPv6 address
  hint: remove `family` (it only matters for host names) or set `family = "ipv6"`
tests/fixtures/config/several_mistakes.toml:16:1: error: missing required key `name` in [[target]]
  hint: add `name = "sjc1-core"`: it names the target in every measurement and in probe `targets` lists
tests/fixtures/config/several_mistakes.toml:17:8: error: invalid host name `iad1..example.net`: it has an empty label (two dots in a row, or a leading dot)
  hint: a host is an IPv4 or IPv6 address or a DNS name of letters, digits, `-` and dots, e.g. `probe.sjc1.example.net`
tests/fixtures/config/several_mistakes.toml:25:11: error: a round overlaps the next one: 50 echoes 200ms apart plus the 500ms timeout take 10.3s, but `interval` is 10s
  hint: lower `count` or `spacing`, or raise `interval` to at least 10.3s
tests/fixtures/config/several_mistakes.toml:26:25: error: probe `ping` names unknown target `iad1-core`
  hint: defined targets: sjc1-core
tests/fixtures/config/several_mistakes.toml:30:8: error: unknown probe kind `mtr`
  hint: did you mean `trace`? known kinds: icmp, tcp, http, dns, trace
"#,
    );
}

// ---- rules and incidents: one fixture per mistake ---------------------------------------------

#[test]
fn rule_unknown_kind() {
    assert_rejected(
        "rule_unknown_kind.toml",
        r#"
tests/fixtures/config/rule_unknown_kind.toml:15:8: error: unknown rule kind `drops`
  hint: known kinds: loss, failures, latency
"#,
    );
}

#[test]
fn rule_missing_threshold() {
    assert_rejected(
        "rule_missing_threshold.toml",
        r#"
tests/fixtures/config/rule_missing_threshold.toml:13:1: error: missing required key `above_pct` in [[rule]]
  hint: add `above_pct = 20`: the loss percentage it opens above
"#,
    );
}

#[test]
fn rule_clear_not_below() {
    assert_rejected(
        "rule_clear_not_below.toml",
        r#"
tests/fixtures/config/rule_clear_not_below.toml:17:19: error: `clear_below_pct` (30) must be below `above_pct` (20)
  hint: the gap between the two keeps a value hovering at the threshold from opening and clearing over and over; leave it out for the default
"#,
    );
}

#[test]
fn rule_group_without_group_by() {
    assert_rejected(
        "rule_group_without_group_by.toml",
        r#"
tests/fixtures/config/rule_group_without_group_by.toml:17:9: error: `scope = "group"` needs `group_by`
  hint: name the target label whose values form the groups, e.g. `group_by = "group"`
"#,
    );
}

#[test]
fn rule_unknown_group_label() {
    assert_rejected(
        "rule_unknown_group_label.toml",
        r#"
tests/fixtures/config/rule_unknown_group_label.toml:18:12: error: no target this rule watches has the label `grp`
  hint: labels of its targets: group
"#,
    );
}

#[test]
fn rule_unknown_probe() {
    assert_rejected(
        "rule_unknown_probe.toml",
        r#"
tests/fixtures/config/rule_unknown_probe.toml:17:11: error: rule `loss` names unknown probe `ping-fats`
  hint: did you mean `ping-fast`?
"#,
    );
}

#[test]
fn rule_key_of_other_kind() {
    assert_rejected(
        "rule_key_of_other_kind.toml",
        r#"
tests/fixtures/config/rule_key_of_other_kind.toml:18:1: error: `echoes` does not apply to a rule of kind `failures`
  hint: `echoes` belongs to `kind = "loss"`; keys of `failures`: failures, runs, clear_failures
"#,
    );
}

#[test]
fn rule_failures_above_runs() {
    assert_rejected(
        "rule_failures_above_runs.toml",
        r#"
tests/fixtures/config/rule_failures_above_runs.toml:16:12: error: `failures` (5) cannot be more than `runs` (3)
  hint: `failures = 5` counts failures among the last `runs` runs: raise `runs` to at least 5
"#,
    );
}

#[test]
fn rule_share_out_of_range() {
    assert_rejected(
        "rule_share_out_of_range.toml",
        r#"
tests/fixtures/config/rule_share_out_of_range.toml:18:13: error: `share_pct` must be above 0 and at most 100, not 150
  hint: `share_pct` is the percentage of the scope's targets that must breach, e.g. `share_pct = 50`
"#,
    );
}

#[test]
fn rule_latency_two_thresholds() {
    assert_rejected(
        "rule_latency_two_thresholds.toml",
        r#"
tests/fixtures/config/rule_latency_two_thresholds.toml:17:18: error: `above_baseline` and `above_ms` cannot both be set
  hint: keep one threshold per rule; write a second rule for the other
"#,
    );
}

#[test]
fn rule_unknown_severity() {
    assert_rejected(
        "rule_unknown_severity.toml",
        r#"
tests/fixtures/config/rule_unknown_severity.toml:16:12: error: unknown severity `page`
  hint: use one of: critical, major, minor
"#,
    );
}

#[test]
fn rule_duplicate_name() {
    assert_rejected(
        "rule_duplicate_name.toml",
        r#"
tests/fixtures/config/rule_duplicate_name.toml:19:8: error: duplicate rule name `loss` (first defined at line 14)
  hint: rule names must be unique because each becomes the `rule` tag; rename one of them
"#,
    );
}

#[test]
fn incidents_zero_status_updates() {
    assert_rejected(
        "incidents_zero_status_updates.toml",
        r#"
tests/fixtures/config/incidents_zero_status_updates.toml:14:18: error: `status_updates` must be longer than zero
  hint: e.g. `status_updates = "30m"`
"#,
    );
}

// ---- service and path probes: one fixture per mistake ---------------------------------------

#[test]
fn probe_key_of_other_kind() {
    assert_rejected(
        "probe_key_of_other_kind.toml",
        r#"
tests/fixtures/config/probe_key_of_other_kind.toml:11:1: error: `protocol` does not apply to a probe of kind `icmp`
  hint: `protocol` belongs to `kind = "trace"`; keys of `icmp`: count, spacing
"#,
    );
}

#[test]
fn tcp_missing_port() {
    assert_rejected(
        "tcp_missing_port.toml",
        r#"
tests/fixtures/config/tcp_missing_port.toml:8:1: error: missing required key `port` in [[probe]]
  hint: add `port = 443`: a tcp probe connects to this port of each target
"#,
    );
}

#[test]
fn port_out_of_range() {
    assert_rejected(
        "port_out_of_range.toml",
        r#"
tests/fixtures/config/port_out_of_range.toml:11:8: error: `port` must be at most 65535, not 70000
  hint: `port` is the TCP port to connect to, e.g. `port = 443`
"#,
    );
}

#[test]
fn http_bad_path() {
    assert_rejected(
        "http_bad_path.toml",
        r#"
tests/fixtures/config/http_bad_path.toml:11:8: error: `path` must start with `/`, not `healthz`
  hint: the path is appended to `scheme://host:port`: `path = "/healthz"`
"#,
    );
}

#[test]
fn http_bad_status() {
    assert_rejected(
        "http_bad_status.toml",
        r#"
tests/fixtures/config/http_bad_status.toml:11:23: error: `expect_status` entries must be HTTP status codes from 100 to 599, not 2000
  hint: e.g. `expect_status = [200, 204]`
"#,
    );
}

#[test]
fn http_bad_regex() {
    assert_rejected(
        "http_bad_regex.toml",
        r#"
tests/fixtures/config/http_bad_regex.toml:11:14: error: invalid regex in `body_regex`: unclosed group
  hint: the syntax is the Rust `regex` crate's (like RE2: no look-around or back-references); escape `\` as `\\` in TOML basic strings, or use a 'literal string'
"#,
    );
}

#[test]
fn http_max_total_not_below_timeout() {
    assert_rejected(
        "http_max_total_not_below_timeout.toml",
        r#"
tests/fixtures/config/http_max_total_not_below_timeout.toml:12:13: error: `max_total` (5s) must be shorter than `timeout` (2s)
  hint: the check gives up at `timeout`, so this assertion could never fail: lower `max_total` or raise `timeout`
"#,
    );
}

#[test]
fn http_tls_key_on_plain_http() {
    assert_rejected(
        "http_tls_key_on_plain_http.toml",
        r#"
tests/fixtures/config/http_tls_key_on_plain_http.toml:12:24: error: `min_cert_expiry_days` needs `scheme = "https"`
  hint: plain HTTP has no TLS: remove it, or set `scheme = "https"`
"#,
    );
}

#[test]
fn http_bad_header() {
    assert_rejected(
        "http_bad_header.toml",
        r#"
tests/fixtures/config/http_bad_header.toml:11:13: error: invalid header name `X Request Id` in `headers`
  hint: header names are letters, digits and `-` (no spaces or colons), e.g. `Content-Type`
"#,
    );
}

#[test]
fn http_ca_file_missing() {
    assert_rejected(
        "http_ca_file_missing.toml",
        r#"
tests/fixtures/config/http_ca_file_missing.toml:11:11: error: cannot read `ca_file` tests/fixtures/config/missing-ca.pem: No such file or directory (os error 2)
  hint: a PEM file of the CA certificates to trust instead of the system's; a relative path is relative to the config file's directory
"#,
    );
}

#[test]
fn http_bad_method() {
    assert_rejected(
        "http_bad_method.toml",
        r#"
tests/fixtures/config/http_bad_method.toml:11:10: error: invalid HTTP method `get`
  hint: methods are case-sensitive: `method = "GET"`
"#,
    );
}

#[test]
fn dns_missing_query() {
    assert_rejected(
        "dns_missing_query.toml",
        r#"
tests/fixtures/config/dns_missing_query.toml:8:1: error: missing required key `query` in [[probe]]
  hint: add `query = "www.example.net"`: the name to look up; each target is a DNS server to ask
"#,
    );
}

#[test]
fn dns_bad_query() {
    assert_rejected(
        "dns_bad_query.toml",
        r#"
tests/fixtures/config/dns_bad_query.toml:11:9: error: invalid `query` name `www..example.net`: it has an empty label (two dots in a row, or a leading dot)
  hint: a DNS name of labels (letters, digits, `-`, `_`) separated by dots, e.g. `query = "www.example.net"`
"#,
    );
}

#[test]
fn dns_unknown_record_type() {
    assert_rejected(
        "dns_unknown_record_type.toml",
        r#"
tests/fixtures/config/dns_unknown_record_type.toml:12:15: error: unknown record type `AAA`
  hint: did you mean `AAAA`? use one of: A, AAAA, CNAME, MX, TXT, SOA, NS
"#,
    );
}

#[test]
fn dns_unknown_rcode() {
    assert_rejected(
        "dns_unknown_rcode.toml",
        r#"
tests/fixtures/config/dns_unknown_rcode.toml:12:16: error: unknown response code `NXDOMIAN`
  hint: did you mean `NXDOMAIN`? use one of: NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, YXDOMAIN, YXRRSET, NXRRSET, NOTAUTH, NOTZONE
"#,
    );
}

#[test]
fn dns_expect_answers_not_a_list() {
    assert_rejected(
        "dns_expect_answers_not_a_list.toml",
        r#"
tests/fixtures/config/dns_expect_answers_not_a_list.toml:12:18: error: `expect_answers` must be an array of strings, not a string
  hint: use a list, even for one value: `expect_answers = ["198.18.0.10"]`
"#,
    );
}

#[test]
fn dns_recursion_quoted() {
    assert_rejected(
        "dns_recursion_quoted.toml",
        r#"
tests/fixtures/config/dns_recursion_quoted.toml:12:13: error: `recursion` must be true or false, not a string
  hint: remove the quotes: `recursion = false`
"#,
    );
}

#[test]
fn trace_unknown_protocol() {
    assert_rejected(
        "trace_unknown_protocol.toml",
        r#"
tests/fixtures/config/trace_unknown_protocol.toml:11:12: error: unknown trace protocol `icpm`
  hint: did you mean `icmp`? use one of: icmp, udp, tcp
"#,
    );
}

#[test]
fn trace_overlaps_interval() {
    assert_rejected(
        "trace_overlaps_interval.toml",
        r#"
tests/fixtures/config/trace_overlaps_interval.toml:12:9: error: a trace overlaps the next one: 10 rounds of 1s plus 100ms for late replies take 10.1s, but `interval` is 5s
  hint: lower `count` or `timeout` (each round waits `timeout` for its replies), or raise `interval` to at least 10.1s
"#,
    );
}

#[test]
fn trace_port_with_icmp() {
    assert_rejected(
        "trace_port_with_icmp.toml",
        r#"
tests/fixtures/config/trace_port_with_icmp.toml:11:8: error: `port` does not apply to `protocol = "icmp"`
  hint: ICMP echo has no ports: remove `port`, or set `protocol = "udp"` or `"tcp"`
"#,
    );
}

#[test]
fn trace_max_ttl_out_of_range() {
    assert_rejected(
        "trace_max_ttl_out_of_range.toml",
        r#"
tests/fixtures/config/trace_max_ttl_out_of_range.toml:11:11: error: `max_ttl` must be at most 64, not 255
  hint: `max_ttl` is the most hops to probe, e.g. `max_ttl = 30`
"#,
    );
}

#[test]
fn service_and_trace_probes_get_their_defaults() {
    let config = accept(
        r#"
[agent]
site = "scl3"
[[target]]
name = "web"
host = "2001:db8::80"
[[probe]]
name = "https"
kind = "http"
[[probe]]
name = "resolver"
kind = "dns"
query = "www.example.net"
[[probe]]
name = "ssh"
kind = "tcp"
port = 22
[[probe]]
name = "path"
kind = "trace"
"#,
    );
    let by_name = |name: &str| config.probe(name).expect("probe");
    let http = by_name("https");
    assert_eq!(
        (http.interval, http.timeout),
        (Duration::from_secs(20), Duration::from_secs(10))
    );
    let ProbeKind::Http(h) = &http.kind else {
        panic!("{:?}", http.kind)
    };
    assert_eq!(h.url("2001:db8::80"), "https://[2001:db8::80]/");
    assert_eq!(
        (h.method.as_str(), h.max_redirects, h.max_body_bytes),
        ("GET", 10, 1 << 20)
    );
    assert!(h.expect_status.is_empty(), "any 2xx");
    let dns = by_name("resolver");
    assert_eq!(dns.timeout, Duration::from_secs(2));
    assert_eq!(
        dns.kind,
        ProbeKind::Dns(DnsProbe {
            query: "www.example.net".into(),
            record_type: DnsRecordType::A,
            transport: DnsTransport::Udp,
            port: 53,
            recursion: true,
            expect_rcode: None,
            expect_answers: Vec::new(),
            min_answers: None,
        })
    );
    assert_eq!(by_name("ssh").kind, ProbeKind::Tcp { port: 22 });
    let trace = by_name("path");
    assert_eq!(
        (trace.interval, trace.timeout),
        (Duration::from_secs(300), Duration::from_secs(1)),
        "traces every 5 minutes, a second per round"
    );
    assert_eq!(
        trace.kind,
        ProbeKind::Trace(TraceProbe {
            protocol: TraceProtocol::Icmp,
            count: 10,
            max_ttl: 30,
            port: None,
        })
    );
}

#[test]
fn http_follows_redirects_into_private_addresses_only_when_asked() {
    let config = accept(
        r#"
[agent]
site = "scl3"
[[target]]
name = "web"
host = "198.18.1.1"
[[probe]]
name = "guarded"
kind = "http"
[[probe]]
name = "trusting"
kind = "http"
follow_private_redirects = true
"#,
    );
    let follows = |name: &str| match &config.probe(name).expect("probe").kind {
        ProbeKind::Http(h) => h.follow_private_redirects,
        other => panic!("{other:?}"),
    };
    assert!(!follows("guarded"), "off by default");
    assert!(follows("trusting"));
    let errors = reject(
        "[agent]\nsite = \"scl3\"\n[[target]]\nname = \"web\"\nhost = \"198.18.1.1\"\n\
         [[probe]]\nname = \"web\"\nkind = \"http\"\nfollow_private_redirects = \"yes\"\n",
    );
    let error = &errors.errors[0];
    assert_eq!((errors.errors.len(), error.line), (1, 9), "{errors:?}");
    assert!(
        error.message.contains("follow_private_redirects"),
        "{}",
        error.message
    );
}

#[test]
fn service_probe_mistakes_without_their_own_fixture() {
    let errors = reject(
        r#"
[agent]
site = "scl3"
[[target]]
name = "web"
host = "198.18.1.1"
[[probe]]
name = "web"
kind = "http"
scheme = "ftp"
header_matches = { "Content-Type" = "(json" }
expect_status = []
server_name = "198.18.1.1"
[[probe]]
name = "dig"
kind = "dns"
query = "www.example.net"
transport = "TCP"
expect_answers = []
[[probe]]
name = "mtr"
kind = "trace"
protocol = "udp"
spacing = "1s"
"#,
    );
    let messages: Vec<String> = errors
        .errors
        .iter()
        .map(|e| format!("{}:{} {}", e.line, e.column, e.message))
        .collect();
    assert_eq!(
        messages,
        [
            "10:10 unknown scheme `ftp`",
            "11:37 invalid regex in `header_matches`: unclosed group",
            "12:17 `expect_status` is an empty list",
            "13:15 `server_name` must be a DNS name, not `198.18.1.1`",
            "18:13 unknown transport `TCP`",
            "19:18 `expect_answers` is an empty list",
            "24:1 `spacing` does not apply to a probe of kind `trace`",
        ]
    );
}

// ---- mistakes without their own fixture -----------------------------------------------------

#[test]
fn errors_are_structured_and_in_file_order() {
    let errors = reject(
        "[agent]\nsite = \"scl3\"\n\n[[target]]\nname = \"a\"\nhost = \"198.18.1.1\"\n\n\
         [[probe]]\nname = \"ping\"\nkind = \"icmp\"\ncount = 0\ntimout = \"1s\"\n",
    );
    let positions: Vec<(usize, usize)> = errors.errors.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(positions, [(11, 9), (12, 1)]);
    assert_eq!(
        errors.errors[1].message,
        "unknown key `timout` in [[probe]]"
    );
    assert_eq!(
        errors.errors[1].hint.as_deref(),
        Some("did you mean `timeout`?")
    );
    assert_eq!(errors.errors[1].path, PathBuf::from("vantage.toml"));
}

#[test]
fn missing_agent_section_and_single_bracket_target() {
    let errors = reject("[target]\nname = \"a\"\nhost = \"198.18.1.1\"\n");
    assert_eq!(
        errors.to_string(),
        "vantage.toml:1:1: error: `target` must be an array of tables, not a table\n  \
         hint: write one `[[target]]` section (double brackets) per target\n\
         vantage.toml: error: missing [agent] section\n  \
         hint: add `[agent]` with `site = \"scl3\"` (the datacenter or cloud region this agent runs in)"
    );
}

#[test]
fn targets_list_written_as_a_string() {
    let errors = reject(
        "[agent]\nsite = \"scl3\"\n[[target]]\nname = \"a\"\nhost = \"198.18.1.1\"\n\
         [[probe]]\nname = \"ping\"\nkind = \"icmp\"\ntargets = \"a\"\n",
    );
    assert_eq!(
        errors.to_string(),
        "vantage.toml:9:11: error: `targets` must be an array of target names, not a string\n  \
         hint: use a list, even for one target: `targets = [\"a\"]`"
    );
}

/// `n` targets `t1`..`tn`, all with host 198.18.2.2, and `probes` after them.
fn same_host_targets(n: usize, probes: &str) -> String {
    let mut text = String::from("[agent]\nsite = \"scl3\"\n");
    for i in 1..=n {
        text += &format!("[[target]]\nname = \"t{i}\"\nhost = \"198.18.2.2\"\n");
    }
    text + probes
}

/// Issue 11, item 4: echoes to one address that could all await replies at once must fit in its
/// 65,536 sequence numbers; the agent used to freeze on such a config.
#[test]
fn more_echoes_to_one_host_than_sequence_numbers_is_refused() {
    let ping = "[[probe]]\nname = \"ping\"\nkind = \"icmp\"\ncount = 10000\nspacing = \"1ms\"\n";
    let errors = reject(&same_host_targets(8, ping));
    assert_eq!(
        errors.to_string(),
        "vantage.toml:28:8: error: icmp probes could have 80000 echoes to host `198.18.2.2` \
         awaiting replies at once, more than the 65536 that 16-bit sequence numbers can tell \
         apart: probe `ping` (count 10000) × `t1`, `t2`, `t3`, `t4`, `t5`, `t6`, `t7`, `t8`\n  \
         hint: lower `count`, or probe `198.18.2.2` from fewer targets or probes: the sum of \
         `count` over every icmp probe and target with this host must be at most 65536"
    );
    accept(&same_host_targets(6, ping));
    // Two probes, each within the limit, together over it: both are named.
    let two = format!(
        "{ping}targets = [\"t1\", \"t2\", \"t3\", \"t4\", \"t5\", \"t6\"]\n\
         [[probe]]\nname = \"slow\"\nkind = \"icmp\"\ninterval = \"60s\"\ncount = 6000\n\
         targets = [\"t1\"]\n"
    );
    let errors = reject(&same_host_targets(6, &two));
    assert_eq!(errors.errors.len(), 1, "{errors}");
    assert!(
        errors.errors[0].message.contains(
            "66000 echoes to host `198.18.2.2` awaiting replies at once, more than the 65536 \
             that 16-bit sequence numbers can tell apart: probe `ping` (count 10000) × `t1`, \
             `t2`, `t3`, `t4`, `t5`, `t6`; probe `slow` (count 6000) × `t1`"
        ),
        "{errors}"
    );
}

#[test]
fn labels_must_not_shadow_built_in_tags() {
    let errors = reject(
        "[agent]\nsite = \"scl3\"\n[[target]]\nname = \"a\"\nhost = \"198.18.1.1\"\n\
         labels = { site = \"sjc1\", \"bad key\" = \"x\", role = \"\" }\n",
    );
    assert_eq!(
        errors.to_string(),
        "vantage.toml:6:12: error: label `site` clashes with the built-in `site` tag\n  \
         hint: rename it, e.g. `peer_site`: the agent sets the `site` tag itself\n\
         vantage.toml:6:27: error: invalid label key `bad key`: ' ' is not allowed\n  \
         hint: label keys become time-series tags: use only letters, digits, `_`, `.` and `-`, e.g. `bad-key`\n\
         vantage.toml:6:51: error: label `role` is empty\n  \
         hint: give it a value or remove it"
    );
}

#[test]
fn count_above_the_limit_and_duration_as_a_number() {
    let errors = reject(
        "[agent]\nsite = \"scl3\"\n[[target]]\nname = \"a\"\nhost = \"198.18.1.1\"\n\
         [[probe]]\nname = \"ping\"\nkind = \"icmp\"\ncount = 20000\ninterval = 1.5\n",
    );
    assert_eq!(
        errors.to_string(),
        "vantage.toml:9:9: error: `count` must be at most 10000, not 20000\n  \
         hint: `count` is the number of echoes per round, e.g. `count = 20`\n\
         vantage.toml:10:12: error: `interval` must be a duration string, not a float\n  \
         hint: durations are strings with a unit (ms, s, m, h, d): `interval = \"1.5s\"`"
    );
}

#[test]
fn a_default_timeout_longer_than_the_interval_is_pointed_at_the_interval() {
    let errors = reject(
        "[agent]\nsite = \"scl3\"\n[[target]]\nname = \"a\"\nhost = \"198.18.1.1\"\n\
         [[probe]]\nname = \"ping\"\nkind = \"icmp\"\ninterval = \"1s\"\n",
    );
    assert_eq!(
        errors.to_string(),
        "vantage.toml:9:12: error: `timeout` (2s, the default) must be shorter than `interval` (1s)\n  \
         hint: a run must end before the next one starts: raise `interval` or lower `timeout`"
    );
}

// ---- configs that must parse ---------------------------------------------------------------

#[test]
fn five_line_config_gets_the_default_ping_probe() {
    let config = accept(
        "[agent]\nsite = \"scl3\"\n[[target]]\nname = \"sjc1-core\"\nhost = \"198.18.1.1\"\n",
    );
    assert_eq!(config.agent.site, "scl3");
    assert!(!config.agent.name.is_empty(), "defaults to the host name");
    assert_eq!(
        config.agent.data_dir,
        PathBuf::from("/etc/vantage/vantage-data")
    );
    assert_eq!(config.agent.retention, Duration::from_secs(14 * 86_400));
    let target = config.target("sjc1-core").expect("the target");
    assert_eq!(target.site, "unknown");
    assert_eq!(target.family, FamilyPreference::Any);
    assert!(target.labels.is_empty());

    assert_eq!(config.probes.len(), 1);
    let probe = &config.probes[0];
    assert_eq!(probe.name, "ping");
    assert_eq!(probe.interval, Duration::from_secs(20));
    assert_eq!(probe.timeout, Duration::from_secs(2));
    assert_eq!(probe.targets, ["sjc1-core"]);
    assert_eq!(
        probe.kind,
        ProbeKind::Icmp {
            count: 20,
            spacing: Duration::from_millis(900),
        }
    );
}

#[test]
fn absolute_data_dir_and_inline_target_tables() {
    let config = accept(
        // Keys above the first section header are top-level keys, so `target` can be an inline
        // array of tables there.
        "target = [{ name = \"a\", host = \"probe.sjc1.example.net\", family = \"ipv6\" }]\n\
         [agent]\nsite = \"scl3\"\nname = \"p1\"\ndata_dir = \"/var/lib/vantage\"\n",
    );
    assert_eq!(config.agent.name, "p1");
    assert_eq!(config.agent.data_dir, PathBuf::from("/var/lib/vantage"));
    assert_eq!(config.targets[0].family, FamilyPreference::V6);
}

#[test]
fn quickstart_parses() {
    let path = Path::new("config/quickstart.toml");
    let config = Config::load(path).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(config.agent.site, "local");
    assert_eq!(config.agent.data_dir, Path::new("config/../vantage-data"));
    let targets: Vec<(&str, &str)> = config
        .targets
        .iter()
        .map(|t| (t.name.as_str(), t.host.as_str()))
        .collect();
    assert_eq!(
        targets,
        [("loopback-v4", "127.0.0.1"), ("loopback-v6", "::1")]
    );
    assert_eq!(config.probes.len(), 1);
    let probe = &config.probes[0];
    assert_eq!(probe.interval, Duration::from_secs(10));
    assert_eq!(probe.targets, ["loopback-v4", "loopback-v6"]);
    assert_eq!(
        probe.kind,
        ProbeKind::Icmp {
            count: 10,
            spacing: Duration::from_millis(900),
        }
    );
}

#[test]
fn colo_example_parses() {
    let path = Path::new("config/colo.example.toml");
    let config = Config::load(path).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(config.agent.name, "scl3-probe-01");
    assert_eq!(config.agent.site, "scl3");
    let sites: BTreeSet<&str> = config.targets.iter().map(|t| t.site.as_str()).collect();
    assert_eq!(
        sites,
        BTreeSet::from(["ams2", "aws-us-east-1", "gcp-europe-west1", "iad1", "sjc1"])
    );
    for target in &config.targets {
        for label in ["provider", "role", "group"] {
            assert!(
                target.labels.contains_key(label),
                "{} has no {label}",
                target.name
            );
        }
    }
    let probes: Vec<(&str, usize)> = config
        .probes
        .iter()
        .map(|p| (p.name.as_str(), p.targets.len()))
        .collect();
    assert_eq!(
        probes,
        [
            ("ping-fast", config.targets.len()),
            ("smoke", 5),
            ("path", 5),
            ("api-health", 2),
            ("api-tcp", 2),
            ("resolver", 2),
        ]
    );
    let kinds: Vec<&str> = config.probes.iter().map(|p| p.kind.name()).collect();
    assert_eq!(kinds, ["icmp", "icmp", "trace", "http", "tcp", "dns"]);
    let path = &config.probes[2];
    assert_eq!(
        path.interval,
        Duration::from_secs(300),
        "traces every 5 minutes"
    );
    let ProbeKind::Http(api) = &config.probes[3].kind else {
        panic!("api-health is an http probe")
    };
    assert_eq!(
        api.url("api.sjc1.example.net"),
        "https://api.sjc1.example.net/healthz"
    );
    assert_eq!(api.body_regex.as_deref(), Some(r#""status":\s*"up""#));
    let fast = &config.probes[0];
    assert_eq!(
        fast.kind,
        ProbeKind::Icmp {
            count: 20,
            spacing: Duration::from_secs(1),
        },
        "one echo per second"
    );
    let rules: Vec<(&str, &str, &str)> = config
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.condition.kind(), r.scope.kind()))
        .collect();
    assert_eq!(
        rules,
        [
            ("agent-uplink", "loss", "agent"),
            ("group-loss", "loss", "group"),
            ("target-loss", "loss", "target"),
            ("latency-shift", "latency", "target"),
            ("api-down", "failures", "target"),
        ]
    );
    // The agent rule must win the race against the others of the same probe: shorter `for` by
    // more than one interval.
    let agent_for = config.rules[0].open_for;
    for rule in &config.rules[1..3] {
        assert!(rule.open_for > agent_for + fast.interval, "{}", rule.name);
    }
    assert_eq!(config.incidents.status_updates, Duration::from_secs(1800));
}

#[test]
fn rules_get_their_defaults() {
    let config = accept(
        "[agent]\nsite = \"scl3\"\n\
         [[target]]\nname = \"a\"\nhost = \"198.18.1.1\"\nlabels = { group = \"g\" }\n\
         [[rule]]\nname = \"loss\"\nkind = \"loss\"\nabove_pct = 20\n\
         [[rule]]\nname = \"grp\"\nkind = \"failures\"\nfailures = 3\nscope = \"group\"\ngroup_by = \"group\"\n\
         [[rule]]\nname = \"slow\"\nkind = \"latency\"\nabove_baseline = 2.5\nscope = \"agent\"\n",
    );
    assert_eq!(
        config.incidents,
        IncidentsConfig {
            status_updates: Duration::from_secs(1800),
            history: Duration::from_secs(3600),
        }
    );
    let loss = &config.rules[0];
    assert_eq!(loss.severity, Severity::Major);
    assert_eq!(loss.probes, ["ping"], "the default probe");
    assert_eq!(loss.targets, ["a"]);
    assert_eq!(loss.scope, RuleScope::Target);
    assert_eq!(
        loss.condition,
        Condition::Loss {
            above_pct: 20.0,
            clear_below_pct: 10.0,
            echoes: 100
        }
    );
    assert_eq!(
        (loss.open_for, loss.clear_for, loss.min_hold),
        (
            Duration::from_secs(60),
            Duration::from_secs(120),
            Duration::from_secs(300)
        )
    );
    assert_eq!(
        config.rules[1].scope,
        RuleScope::Group {
            label: "group".into(),
            share_pct: 50.0
        }
    );
    assert_eq!(
        config.rules[1].condition,
        Condition::Failures {
            failures: 3,
            runs: 3,
            clear_failures: 0
        }
    );
    assert_eq!(config.rules[2].scope, RuleScope::Agent { share_pct: 100.0 });
    assert_eq!(
        config.rules[2].condition,
        Condition::Latency {
            field: LatencyField::Median,
            runs: 3,
            threshold: LatencyThreshold::Baseline {
                above_ratio: 2.5,
                clear_below_ratio: 2.0,
                window: Duration::from_secs(3600)
            }
        }
    );
    // No [[rule]]: no rules, so no incidents.
    let none =
        accept("[agent]\nsite = \"scl3\"\n[[target]]\nname = \"a\"\nhost = \"198.18.1.1\"\n");
    assert!(none.rules.is_empty());
}

#[test]
fn rule_mistakes_without_their_own_fixture() {
    let errors = reject(
        "[agent]\nsite = \"scl3\"\n[[target]]\nname = \"a\"\nhost = \"198.18.1.1\"\n\
         [[rule]]\nname = \"r\"\nkind = \"loss\"\nabove_pct = \"20\"\nshare_pct = 50\ngroup_by = \"group\"\ntargets = [\"b\"]\n\
         [[rule]]\nname = \"s\"\nkind = \"latency\"\nabove_ms = 100\nclear_below_baseline = 2\n\
         [[rule]]\nkind = \"failures\"\nfailures = 0\nclear_failures = 1\n",
    );
    assert_eq!(
        errors.to_string(),
        "vantage.toml:9:13: error: `above_pct` must be a number, not a string\n  \
         hint: remove the quotes: `above_pct = 20`\n\
         vantage.toml:10:13: error: `share_pct` applies only to `scope = \"group\"` or `scope = \"agent\"`\n  \
         hint: a target-scope rule opens one incident per breaching target: remove `share_pct`\n\
         vantage.toml:11:12: error: `group_by` applies only to `scope = \"group\"`, not `target`\n  \
         hint: remove `group_by`, or set `scope = \"group\"`\n\
         vantage.toml:12:12: error: rule `r` names unknown target `b`\n  \
         hint: defined targets: a\n\
         vantage.toml:17:24: error: `clear_below_baseline` does not go with `above_ms`\n  \
         hint: `above_ms` pairs with `clear_below_ms`; `above_baseline` with `clear_below_baseline` and `baseline`\n\
         vantage.toml:18:1: error: missing required key `name` in [[rule]]\n  \
         hint: add `name = \"packet-loss\"`: it becomes the `rule` tag and starts every incident's dedup key\n\
         vantage.toml:20:12: error: `failures` must be at least 1, not 0\n  \
         hint: `failures` is how many of the last `runs` runs must fail, e.g. `failures = 3`"
    );
}

#[test]
fn a_key_or_section_written_twice() {
    assert_eq!(
        reject("[agent]\nsite = \"a\"\nsite = \"b\"\n").to_string(),
        "vantage.toml:3:1: error: invalid TOML: `site` is defined twice\n  \
         hint: a key or section may appear only once; remove one (nothing else in the file is \
         checked until it parses)"
    );
    assert_eq!(
        reject("[agent]\nsite = \"a\"\n[agent]\n").to_string(),
        "vantage.toml:3:2: error: invalid TOML: `agent` is defined twice\n  \
         hint: a key or section may appear only once; remove one (nothing else in the file is \
         checked until it parses)"
    );
}

#[test]
fn misspelt_section_header() {
    assert_eq!(
        reject("[agnet]\nsite = \"scl3\"\n[[target]]\nname = \"a\"\nhost = \"::1\"\n").to_string(),
        "vantage.toml:1:2: error: unknown key `agnet` at the top level\n  \
         hint: did you mean `agent`?\n\
         vantage.toml: error: missing [agent] section\n  \
         hint: add `[agent]` with `site = \"scl3\"` (the datacenter or cloud region this agent runs in)"
    );
}

#[test]
fn output_mistakes() {
    assert_rejected(
        "output_mistakes.toml",
        r#"
tests/fixtures/config/output_mistakes.toml:9:1: error: missing required key `org` in [[output]]
  hint: add `org = "netops"`: the InfluxDB organization (any value for VictoriaMetrics)
tests/fixtures/config/output_mistakes.toml:12:7: error: output `central`: credentials in the URL would end up in logs; use token_env/token_file or username + password_env/password_file
  hint: e.g. `url = "https://influx.example:8086"`
tests/fixtures/config/output_mistakes.toml:14:1: error: `db` is a key of influxdb_v1 outputs; this output is influxdb_v2
  hint: remove it, or set `kind = "influxdb_v1"`
tests/fixtures/config/output_mistakes.toml:16:14: error: give either `token_env` or `token_file`, not both
  hint: keep the one the secret really comes from
tests/fixtures/config/output_mistakes.toml:19:8: error: duplicate output name `central` (first defined at line 10)
  hint: output names must be unique because each becomes the `output` tag; rename one of them
tests/fixtures/config/output_mistakes.toml:20:8: error: unknown output kind `influx`
  hint: use one of: influxdb_v2, influxdb_v1
tests/fixtures/config/output_mistakes.toml:22:19: error: invalid size for `spool_max_bytes`: unknown size unit "parsec"; use B, KB, MB, GB, KiB, MiB or GiB
  hint: e.g. `spool_max_bytes = "1GiB"`
"#,
    );
}

#[test]
fn incident_sinks_parse_with_their_defaults() {
    let config = accept(
        r#"
[agent]
site = "scl3"

[[target]]
name = "sjc1-core"
host = "198.18.1.1"

[[incident_sink]]
name = "alertmanager"
kind = "alertmanager"
url = "http://127.0.0.1:9093/"
labels = { team = "neteng" }

[[incident_sink]]
name = "hook"
kind = "webhook"
url = "https://hooks.example.net/vantage?channel=noc"
timeout = "3s"
token_env = "VANTAGE_WEBHOOK_TOKEN"
"#,
    );
    assert_eq!(
        config.incident_sinks,
        [
            IncidentSinkConfig {
                name: "alertmanager".into(),
                url: "http://127.0.0.1:9093/".into(),
                timeout: Duration::from_secs(10),
                token: None,
                kind: IncidentSinkKind::Alertmanager {
                    labels: [("team".to_string(), "neteng".to_string())].into(),
                    resend: Duration::from_secs(60),
                },
            },
            IncidentSinkConfig {
                name: "hook".into(),
                url: "https://hooks.example.net/vantage?channel=noc".into(),
                timeout: Duration::from_secs(3),
                token: Some(SecretSource::Env("VANTAGE_WEBHOOK_TOKEN".into())),
                kind: IncidentSinkKind::Webhook,
            },
        ]
    );
}

#[test]
fn incident_sink_typo_key() {
    assert_rejected(
        "incident_sink_typo_key.toml",
        r#"
tests/fixtures/config/incident_sink_typo_key.toml:13:1: error: unknown key `resnd` in [[incident_sink]]
  hint: did you mean `resend`?
"#,
    );
}

#[test]
fn incident_sink_bad_url() {
    assert_rejected(
        "incident_sink_bad_url.toml",
        r#"
tests/fixtures/config/incident_sink_bad_url.toml:12:7: error: `127.0.0.1:9093` is not a URL: relative URL without a base
  hint: e.g. `url = "http://127.0.0.1:9093"`
tests/fixtures/config/incident_sink_bad_url.toml:17:7: error: credentials in the URL would end up in logs; use token_env or token_file
  hint: e.g. `url = "https://hooks.example.net/vantage"`
"#,
    );
}

#[test]
fn incident_sink_duplicate_name() {
    assert_rejected(
        "incident_sink_duplicate_name.toml",
        r#"
tests/fixtures/config/incident_sink_duplicate_name.toml:15:8: error: duplicate incident sink name `hook` (first defined at line 10)
  hint: deliveries are tracked per sink name: rename one of them
tests/fixtures/config/incident_sink_duplicate_name.toml:20:8: error: incident sink name `directory` is taken by a built-in sink
  hint: choose another name, e.g. `name = "alertmanager"`
tests/fixtures/config/incident_sink_duplicate_name.toml:25:8: error: incident sink name `outputs` is taken by a built-in sink
  hint: choose another name, e.g. `name = "alertmanager"`
"#,
    );
}

#[test]
fn incident_sink_key_of_other_kind() {
    assert_rejected(
        "incident_sink_key_of_other_kind.toml",
        r#"
tests/fixtures/config/incident_sink_key_of_other_kind.toml:13:1: error: `labels` is a key of alertmanager sinks; this sink is webhook
  hint: remove it, or set `kind = "alertmanager"`
tests/fixtures/config/incident_sink_key_of_other_kind.toml:14:1: error: `resend` is a key of alertmanager sinks; this sink is webhook
  hint: remove it, or set `kind = "alertmanager"`
"#,
    );
}

#[test]
fn incident_sink_bad_label() {
    assert_rejected(
        "incident_sink_bad_label.toml",
        r#"
tests/fixtures/config/incident_sink_bad_label.toml:13:12: error: `team-name` is not a valid Alertmanager label name
  hint: use letters, digits and `_`, not starting with a digit, e.g. `team_name`
tests/fixtures/config/incident_sink_bad_label.toml:13:36: error: label `severity` is set on every alert by vantage
  hint: remove it, or rename it, e.g. `peer_severity`
tests/fixtures/config/incident_sink_bad_label.toml:13:64: error: label `oncall` must be a string, not an integer
  hint: e.g. `labels = { team = "neteng" }`
"#,
    );
}

#[test]
fn incident_sink_wrong_type() {
    assert_rejected(
        "incident_sink_wrong_type.toml",
        r#"
tests/fixtures/config/incident_sink_wrong_type.toml:11:8: error: unknown incident sink kind `prometheus`
  hint: use one of: alertmanager, webhook
tests/fixtures/config/incident_sink_wrong_type.toml:13:11: error: `timeout` must be a duration string, not an integer
  hint: durations are strings with a unit (ms, s, m, h, d): `timeout = "10s"`
"#,
    );
}
