//! Config validation, verbatim: one fixture per mistake in `tests/fixtures/config/` (`NAME.toml`),
//! next to it the exact text `vantage check` prints for it (`NAME.expected`: file:line:column,
//! message, hint). The style of blackbox_exporter's `config/config_test.go`. When a message
//! changes on purpose, change the `.expected` file: the point is that every change to what an
//! operator reads is reviewed.
//!
//! Also: the example configs in `config/` parse to what they promise, and the smallest useful
//! config gets the default probe.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use probes::{DnsRecordType, DnsSettings, DnsTransport, TraceProtocol, TraceSettings};
use vantage::config::{
    Condition, Config, ConfigErrors, FamilyPreference, IncidentSinkConfig, IncidentSinkKind,
    IncidentsConfig, LatencyField, LatencyThreshold, ListenAuth, ProbeKind, RuleScope, Severity,
};
use vantage::sinks::SecretSource;

const FIXTURES: &str = "tests/fixtures/config";

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

/// Each `NAME.toml` in the fixtures folder must be rejected with exactly the text of
/// `NAME.expected` (what `vantage check` prints); a fixture without its expectation, or an
/// expectation without its fixture, fails too.
#[test]
fn every_fixture_prints_exactly_its_expected_errors() {
    let mut fixtures = BTreeSet::new();
    let mut expectations = BTreeSet::new();
    for entry in std::fs::read_dir(FIXTURES).expect("the fixtures folder exists") {
        let path = entry.expect("a readable folder entry").path();
        let stem = path
            .file_stem()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => fixtures.insert(stem),
            Some("expected") => expectations.insert(stem),
            _ => panic!(
                "{}: fixtures are NAME.toml with NAME.expected",
                path.display()
            ),
        };
    }
    let untested: Vec<_> = fixtures.difference(&expectations).collect();
    assert!(
        untested.is_empty(),
        "fixtures without NAME.expected (the exact output): {untested:?}"
    );
    let orphans: Vec<_> = expectations.difference(&fixtures).collect();
    assert!(
        orphans.is_empty(),
        "NAME.expected without NAME.toml: {orphans:?}"
    );
    assert!(!fixtures.is_empty(), "no fixtures found in {FIXTURES}");

    let mut wrong = Vec::new();
    for name in &fixtures {
        let fixture = Path::new(FIXTURES).join(format!("{name}.toml"));
        let expected = std::fs::read_to_string(fixture.with_extension("expected"))
            .expect("readable expectation");
        let actual = match Config::load(&fixture) {
            Ok(_) => "(parsed without errors)".to_string(),
            Err(errors) => errors.to_string(),
        };
        if actual != expected.trim_end_matches('\n') {
            wrong.push(format!(
                "--- {name}: actual ---\n{actual}\n--- {name}: expected ---\n{expected}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} fixtures print something else:\n{}",
        wrong.len(),
        fixtures.len(),
        wrong.join("\n")
    );
}

// ---- service and path probes: defaults ------------------------------------------------------

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
        (
            h.check.method.as_str(),
            h.check.max_redirects,
            h.check.max_body_bytes
        ),
        ("GET", 10, 1 << 20)
    );
    assert!(h.check.expect.status_codes.is_empty(), "any 2xx");
    let dns = by_name("resolver");
    assert_eq!(dns.timeout, Duration::from_secs(2));
    assert_eq!(
        dns.kind,
        ProbeKind::Dns(DnsSettings {
            transport: DnsTransport::Udp,
            recursion_desired: true,
            ..DnsSettings::new(
                "0.0.0.0:53".parse().expect("address"),
                "www.example.net",
                DnsRecordType::A,
            )
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
        ProbeKind::Trace(TraceSettings {
            protocol: TraceProtocol::Icmp,
            rounds: 10,
            round_duration: Duration::from_secs(1),
            max_ttl: 30,
            port: None,
            ..TraceSettings::new("")
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
        ProbeKind::Http(h) => h.check.follow_private_redirects,
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
    assert_eq!(api.check.expect.body_matches, [r#""status":\s*"up""#]);
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
            share_pct: 50.0,
            hold_back_targets: false,
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
fn hold_back_targets_goes_only_with_a_group_rule() {
    let head = "[agent]\nsite = \"scl3\"\n[[target]]\nname = \"a\"\nhost = \"198.18.1.1\"\n\
                labels = { g = \"x\" }\n";
    let group = "[[rule]]\nname = \"g\"\nkind = \"loss\"\nabove_pct = 20\nscope = \"group\"\n\
                 group_by = \"g\"\nhold_back_targets = true\n";
    let config = accept(&format!("{head}{group}"));
    assert_eq!(
        config.rules[0].scope,
        RuleScope::Group {
            label: "g".into(),
            share_pct: 50.0,
            hold_back_targets: true,
        }
    );
    let errors = reject(&format!(
        "{head}[[rule]]\nname = \"r\"\nkind = \"loss\"\nabove_pct = 20\nhold_back_targets = true\n\
         [[rule]]\nname = \"s\"\nkind = \"loss\"\nabove_pct = 20\nscope = \"agent\"\nhold_back_targets = false\n\
         {}",
        group.replace("= true", "= \"yes\"")
    ));
    let why = "remove it: an agent-scope rule always holds back the rules on its probes, \
               and a target-scope rule has nothing to hold back";
    assert_eq!(
        errors.to_string(),
        format!(
            "vantage.toml:11:21: error: `hold_back_targets` applies only to `scope = \"group\"`, not `target`\n  \
             hint: {why}\n\
             vantage.toml:17:21: error: `hold_back_targets` applies only to `scope = \"group\"`, not `agent`\n  \
             hint: {why}\n\
             vantage.toml:24:21: error: `hold_back_targets` must be true or false, not a string\n  \
             hint: e.g. `hold_back_targets = true`"
        )
    );
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
fn the_listener_is_off_by_default_and_parses_with_either_credentials() {
    let base = "[agent]\nsite = \"scl3\"\n{}\n[[target]]\nname = \"core\"\nhost = \"198.18.1.1\"\n";
    let with = |agent_keys: &str| accept(&base.replace("{}", agent_keys));
    assert_eq!(with("").agent.listen, None);

    let plain = with(r#"listen = "127.0.0.1:9798""#)
        .agent
        .listen
        .expect("listen");
    assert_eq!(plain.address, "127.0.0.1:9798".parse().expect("address"));
    assert_eq!(plain.auth, None);

    let bearer = with("listen = \"[::]:9798\"\nlisten_token_file = \"/etc/vantage/metrics-token\"")
        .agent
        .listen
        .expect("listen");
    assert_eq!(bearer.address, "[::]:9798".parse().expect("address"));
    assert_eq!(
        bearer.auth,
        Some(ListenAuth::Bearer(SecretSource::File(
            "/etc/vantage/metrics-token".into()
        )))
    );

    let basic = with(
        "listen = \"198.18.0.2:9798\"\nlisten_username = \"prometheus\"\nlisten_password_env = \"PW\"",
    )
    .agent
    .listen
    .expect("listen");
    assert_eq!(
        basic.auth,
        Some(ListenAuth::Basic {
            username: "prometheus".into(),
            password: SecretSource::Env("PW".into()),
        })
    );
}

#[test]
fn fleet_defaults_to_the_outputs_url_and_dialect_and_a_3s_budget() {
    let base = r#"
[agent]
site = "scl3"

[[target]]
name = "aws-gw"
host = "198.19.0.1"

[[output]]
name = "central"
kind = "influxdb_v1"
url = "http://influx.example:8086"
db = "vantage"
"#;
    assert_eq!(accept(base).fleet, None, "no [fleet]: no fleet view");
    let config = accept(&format!("{base}\n[fleet]\noutput = \"central\"\n"));
    assert_eq!(
        config.fleet,
        Some(vantage::config::FleetConfig {
            output: "central".into(),
            dialect: vantage::config::FleetDialect::Influxql,
            query_url: "http://influx.example:8086".into(),
            timeout: Duration::from_secs(3),
            is_a_site: true,
        })
    );
    let config = accept(&format!(
        "{base}\n[fleet]\noutput = \"central\"\ndialect = \"promql\"\nquery_url = \"http://vm.example:8428\"\ntimeout = \"1500ms\"\n"
    ));
    let fleet = config.fleet.expect("fleet");
    assert_eq!(fleet.dialect, vantage::config::FleetDialect::Promql);
    assert_eq!(fleet.query_url, "http://vm.example:8428");
    assert_eq!(fleet.timeout, Duration::from_millis(1500));
}
