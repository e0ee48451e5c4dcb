//! The fleet evaluator (`vantage fleet`): one outage, one incident, one page.
//!
//! - `one_fleet_outage_is_one_alertmanager_group`: three agents' own incidents for a cloud target
//!   that is down everywhere, and the fleet's incident for it, delivered by the real Alertmanager
//!   sink to a real Alertmanager (Debian `prometheus-alertmanager`) routed by the README's
//!   `group_by: [fleet_key]`, are one alert group: one page.
//!
//! Needs `prometheus-alertmanager` (scripts/test installs it); without it the test fails, it never
//! skips. Every process started here is stopped on drop.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use probes::{FailureKind, Measurement, Observation, Outcome, PingStats};
use vantage::config::evaluator::EvaluatorConfig;
use vantage::config::{Config, IncidentSinkConfig, IncidentSinkKind};
use vantage::fleet::evaluator::{Evaluator, Reading};
use vantage::incident::alertmanager::AlertmanagerSink;
use vantage::incident::{Incident, IncidentDb, IncidentSink, Manager, NoDiagnostics};
use vantage::record::Record;
use vantage::rules::{Engine, Transition};

use support::Alertmanager;

const SITES: [&str; 3] = ["scl3", "sjc1", "iad1"];

/// An agent of `site` that pings aws-gw and gcp-gw; a target rule on loss.
fn agent_config(site: &str, data: &Path) -> Config {
    Config::parse(
        &format!(
            r#"[agent]
name = "{site}-probe"
site = "{site}"
data_dir = "{data}"

[[target]]
name = "aws-gw"
host = "198.19.0.1"
site = "aws"
[[target]]
name = "gcp-gw"
host = "198.19.0.2"
site = "gcp"

[[probe]]
name = "ping"
kind = "icmp"
interval = "10s"
count = 10

[[rule]]
name = "cloud-loss"
kind = "loss"
above_pct = 50
echoes = 10
for = "20s"
clear_for = "20s"
"#,
            data = data.display()
        ),
        Path::new("vantage.toml"),
    )
    .expect("agent config")
}

fn fleet_config(data: &Path) -> EvaluatorConfig {
    EvaluatorConfig::parse(
        &format!(
            r#"[evaluator]
data_dir = "{data}"
interval = "10s"
window = "30s"

[[site]]
name = "scl3"
targets = ["scl3-agent"]
[[site]]
name = "sjc1"
targets = ["sjc1-agent"]
[[site]]
name = "iad1"
targets = ["iad1-agent"]

[[rule]]
name = "cloud-unreachable"
targets = ["aws-gw", "gcp-gw"]
sites_pct = 50
kind = "loss"
above_pct = 50
for = "20s"

[[output]]
name = "store"
kind = "influxdb_v1"
url = "http://127.0.0.1:8086"
db = "vantage"
"#,
            data = data.display()
        ),
        Path::new("fleet.toml"),
    )
    .expect("fleet config")
}

fn round(site: &str, target: &str, lost: bool) -> Record {
    let rtts = vec![(!lost).then_some(2.0); 10];
    Record {
        agent: format!("{site}-probe"),
        site: site.into(),
        probe: "ping".into(),
        target: target.into(),
        target_site: "aws".into(),
        address: None,
        observation: Observation {
            started_at: SystemTime::now(),
            duration: Duration::from_secs(1),
            outcome: if lost {
                Outcome::failure(FailureKind::Timeout, "no reply within 1s")
            } else {
                Outcome::Success
            },
            measurement: Measurement::Ping(PingStats::from_rtts(rtts)),
        },
    }
}

/// Record `transitions` and let the manager finish them; every incident it holds.
fn record(manager: &mut Manager, now: Duration, transitions: &[Transition]) {
    for transition in transitions {
        manager
            .apply(transition, SystemTime::now())
            .expect("transition recorded");
    }
    manager.tick(now, SystemTime::now()).expect("tick");
}

fn open_incidents(dir: &Path) -> Vec<Incident> {
    IncidentDb::open(dir)
        .expect("incidents.db")
        .open_incidents()
        .expect("open incidents")
}

#[test]
fn one_fleet_outage_is_one_alertmanager_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The receiver is never reached within the test; the groups API is what pages.
    let am = Alertmanager::start(
        &dir.path().join("am"),
        "http://127.0.0.1:9/",
        &["fleet_key"],
    );
    let sink_config = IncidentSinkConfig {
        name: "alertmanager".into(),
        url: am.url.clone(),
        timeout: Duration::from_secs(5),
        token: None,
        kind: IncidentSinkKind::Alertmanager {
            labels: BTreeMap::new(),
            resend: Duration::from_secs(60),
        },
    };
    let mut sink = AlertmanagerSink::new(
        &sink_config,
        BTreeMap::new(),
        Duration::from_secs(60),
        dir.path().join("drafts"),
    )
    .expect("sink");

    // aws-gw is down: every agent opens its own incident for it...
    let mut incidents = Vec::new();
    for site in SITES {
        let data = dir.path().join(site);
        std::fs::create_dir_all(&data).expect("data dir");
        let config = agent_config(site, &data);
        let mut engine = Engine::new(&config);
        let mut manager = Manager::new(
            IncidentDb::open(&data).expect("db"),
            None,
            &config,
            Box::new(NoDiagnostics),
        );
        for step in 0..8u64 {
            let now = Duration::from_secs(10 * step);
            let mut transitions = Vec::new();
            for target in ["aws-gw", "gcp-gw"] {
                let lost = target == "aws-gw" && step >= 2;
                transitions.extend(engine.observe(now, &round(site, target, lost)));
            }
            transitions.extend(engine.tick(now));
            record(&mut manager, now, &transitions);
        }
        let open = open_incidents(&data);
        assert_eq!(open.len(), 1, "{site}: {open:#?}");
        incidents.extend(open);
    }
    // ...and the fleet opens one for it, from the same figures as the store would give.
    let data = dir.path().join("fleet");
    std::fs::create_dir_all(&data).expect("fleet data dir");
    let fleet = fleet_config(&data);
    let mut evaluator = Evaluator::new(&fleet);
    let engine_config = evaluator.engine_config().clone();
    let mut manager = Manager::new(
        IncidentDb::open(&data).expect("db"),
        None,
        &engine_config,
        Box::new(NoDiagnostics),
    );
    for step in 0..8u64 {
        let now = Duration::from_secs(10 * step);
        let readings: Vec<Reading> = SITES
            .iter()
            .flat_map(|site| {
                ["aws-gw", "gcp-gw"].map(|target| {
                    let lost = target == "aws-gw" && step >= 2;
                    Reading {
                        site: site.to_string(),
                        target: target.to_string(),
                        loss_pct: Some(if lost { 100.0 } else { 0.0 }),
                        median_ms: (!lost).then_some(2.0),
                    }
                })
            })
            .collect();
        let transitions = evaluator.read(now, SystemTime::now(), &readings);
        record(&mut manager, now, &transitions);
    }
    let fleet_open = open_incidents(&data);
    assert_eq!(fleet_open.len(), 1, "{fleet_open:#?}");
    assert_eq!(fleet_open[0].key, "cloud-unreachable/group/target=aws-gw");
    incidents.extend(fleet_open);

    // Four incidents, four alerts, one group.
    sink.refresh(&incidents).expect("posted to Alertmanager");
    let start = Instant::now();
    let groups = loop {
        let groups = am.groups();
        let alerts: usize = groups
            .iter()
            .map(|g| g["alerts"].as_array().map_or(0, Vec::len))
            .sum();
        if alerts == 4 || start.elapsed() > Duration::from_secs(10) {
            break groups;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(groups.len(), 1, "one alert group: {groups:#?}");
    let group = &groups[0];
    assert_eq!(group["labels"]["fleet_key"], "target/aws-gw", "{group:#}");
    let mut agents: Vec<&str> = group["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| a["labels"]["agent"].as_str().expect("agent label"))
        .collect();
    agents.sort_unstable();
    assert_eq!(agents, ["fleet", "iad1-probe", "scl3-probe", "sjc1-probe"]);
}

const FIXTURES: &str = "tests/fixtures/fleet";

/// Each `NAME.toml` in tests/fixtures/fleet is rejected with exactly `NAME.expected` (what
/// `vantage fleet --check` prints), as the agent's config fixtures are.
#[test]
fn every_fleet_fixture_prints_exactly_its_expected_errors() {
    let mut checked = 0;
    for entry in std::fs::read_dir(FIXTURES).expect("the fixtures folder exists") {
        let path = entry.expect("a folder entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let expected = std::fs::read_to_string(path.with_extension("expected"))
            .unwrap_or_else(|e| panic!("{}: no NAME.expected beside it: {e}", path.display()));
        let actual = match EvaluatorConfig::load(&path) {
            Ok(config) => format!("(parsed without errors: {config:?})"),
            Err(errors) => errors.to_string(),
        };
        assert_eq!(
            actual,
            expected.trim_end_matches('\n'),
            "{}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked > 0, "no fixtures in {FIXTURES}");
}

/// The example in config/ parses to the rules it describes.
#[test]
fn the_example_fleet_config_parses() {
    use vantage::config::evaluator::FleetScope;
    let config = EvaluatorConfig::load(Path::new("config/fleet.example.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.sites.len(), 3);
    assert_eq!(config.interval, Duration::from_secs(10));
    let scopes: Vec<&FleetScope> = config.rules.iter().map(|r| &r.scope).collect();
    assert_eq!(
        scopes,
        [
            &FleetScope::Site { min_sites: 2 },
            &FleetScope::Target { sites_pct: 50.0 },
            &FleetScope::Target { sites_pct: 66.0 }
        ]
    );
    assert_eq!(config.incident_sinks.len(), 1);
}
