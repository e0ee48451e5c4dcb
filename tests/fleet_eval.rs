//! The fleet evaluator (`vantage fleet`): one outage, one incident, one page.
//!
//! - `one_fleet_outage_is_one_alertmanager_group`: three agents' own incidents for a cloud target
//!   that is down everywhere, and the fleet's incident for it, delivered by the real Alertmanager
//!   sink to a real Alertmanager (Debian `prometheus-alertmanager`) routed by the README's
//!   `group_by: [fleet_key]`, are one alert group: one page.
//!
//! - `lab_influxdb_…` / `lab_victoriametrics_…`: the multi-site lab with three real agents writing
//!   to a real store (InfluxDB 1.x, then VictoriaMetrics) and the real `vantage fleet` reading it:
//!   a cloud target down everywhere is exactly one fleet incident, and Alertmanager shows one
//!   group of four alerts (three agents' and the fleet's); scl3's uplink cut is exactly one
//!   "site scl3 unreachable" incident, none per target, although one site in three would be
//!   enough for the target rule. scl3's own draft for aws-gw links to the fleet's incident
//!   ("Fleet incident: …", the title and ID on InfluxDB, the rule and fleet key on
//!   VictoriaMetrics). With `VANTAGE_FLEET_EXAMPLE_DIR` set, the fleet's drafts and scl3's are
//!   copied there (that is how `docs/examples/fleet/` was made).
//!
//! Needs root, `prometheus-alertmanager`, `influxdb` and `victoria-metrics` (scripts/test installs
//! them); without them the tests fail, they never skip. Every process and namespace started here
//! is stopped or removed on drop.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use probes::{FailureKind, Measurement, Observation, Outcome, PingStats};
use vantage::config::evaluator::EvaluatorConfig;
use vantage::config::{Config, IncidentSinkConfig, IncidentSinkKind};
use vantage::evaluator::{Evaluator, Reading};
use vantage::incident::alertmanager::AlertmanagerSink;
use vantage::incident::{Incident, IncidentDb, IncidentSink, Manager, NoDiagnostics};
use vantage::record::Record;
use vantage::rules::{Engine, Transition};

use lab::fleet::{FleetLab, Site};
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

[fleet]
output = "store"
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
    sink.refresh(&mut incidents.into_iter())
        .expect("posted to Alertmanager");
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

// ---- the fleet lab: real agents, a real store, the real evaluator ------------------------------

/// Which store the fleet shares, and how the evaluator and the agents query it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StoreKind {
    Influx,
    Victoria,
}

const PASSWORD: &str = "fleet-secret";
const AWS_GW: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 19, 0, 1);
const GCP_GW: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 19, 0, 2);

/// The store's `[[output]]` and `[fleet]` sections for a URL.
fn store_sections(kind: StoreKind, url: &str, password_file: &Path) -> String {
    match kind {
        StoreKind::Influx => format!(
            "[[output]]\nname = \"store\"\nkind = \"influxdb_v1\"\nurl = \"{url}\"\ndb = \"vantage\"\n\
             username = \"admin\"\npassword_file = \"{}\"\nflush_interval = \"200ms\"\n\n\
             [fleet]\noutput = \"store\"\ndialect = \"influxql\"\n",
            password_file.display()
        ),
        StoreKind::Victoria => format!(
            "[[output]]\nname = \"store\"\nkind = \"influxdb_v2\"\nurl = \"{url}\"\norg = \"lab\"\n\
             bucket = \"vantage\"\nflush_interval = \"200ms\"\n\n\
             [fleet]\noutput = \"store\"\ndialect = \"promql\"\n"
        ),
    }
}

fn lab_agent_config(site: Site, data: &Path, store: &str, am: &str) -> String {
    let mesh: String = Site::ALL
        .iter()
        .filter(|s| **s != site)
        .map(|s| {
            format!(
                "[[target]]\nname = \"{n}-agent\"\nhost = \"{a}\"\nsite = \"{n}\"\n\n",
                n = s.name(),
                a = s.agent_addr()
            )
        })
        .collect();
    format!(
        r#"[agent]
name = "{site}-probe"
site = "{site}"
data_dir = "{data}"

[[target]]
name = "aws-gw"
host = "{AWS_GW}"
site = "aws"

[[target]]
name = "gcp-gw"
host = "{GCP_GW}"
site = "gcp"

{mesh}[[probe]]
name = "ping"
kind = "icmp"
interval = "1s"
timeout = "300ms"
count = 4
spacing = "100ms"

[[rule]]
name = "cloud-loss"
kind = "loss"
targets = ["aws-gw", "gcp-gw"]
above_pct = 50
echoes = 8
for = "2s"
clear_for = "3s"
min_hold = "0s"

[[incident_sink]]
name = "am"
kind = "alertmanager"
url = "{am}"
resend = "2s"

{store}"#,
        site = site.name(),
        data = data.display(),
    )
}

fn lab_fleet_config(data: &Path, store: &str, am: &str) -> String {
    let sites: String = Site::ALL
        .iter()
        .map(|s| {
            format!(
                "[[site]]\nname = \"{n}\"\ntargets = [\"{n}-agent\"]\n\n",
                n = s.name()
            )
        })
        .collect();
    format!(
        r#"[evaluator]
name = "fleet"
data_dir = "{data}"
interval = "2s"
window = "5s"

{sites}[[rule]]
name = "site-unreachable"
scope = "site"
min_sites = 2
kind = "loss"
above_pct = 90
clear_below_pct = 10
for = "2s"
clear_for = "4s"
min_hold = "0s"
severity = "critical"

# One site in three is enough: only the site rule keeps a cut-off site to one incident.
[[rule]]
name = "cloud-unreachable"
scope = "target"
targets = ["aws-gw", "gcp-gw"]
sites_pct = 30
kind = "loss"
above_pct = 50
clear_below_pct = 5
for = "6s"
clear_for = "4s"
min_hold = "0s"
severity = "critical"

[[incident_sink]]
name = "am"
kind = "alertmanager"
url = "{am}"
resend = "2s"

{store}"#,
        data = data.display(),
    )
}

/// The evaluator as a child process (`vantage fleet`), SIGKILLed when dropped.
struct FleetProcess(std::process::Child, std::path::PathBuf);

impl FleetProcess {
    fn start(config: &Path, log: std::path::PathBuf) -> FleetProcess {
        let child = std::process::Command::new(support::VANTAGE)
            .args(["fleet", "--config"])
            .arg(config)
            .env("RUST_LOG", "vantage=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start vantage fleet");
        FleetProcess(child, log)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for FleetProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for<T>(
    what: &str,
    limit: Duration,
    log: &dyn Fn() -> String,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; evaluator log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The fleet's incidents (open and resolved), by key.
fn fleet_incidents(data: &Path) -> Vec<Incident> {
    IncidentDb::open(data)
        .and_then(|db| db.all())
        .unwrap_or_default()
}

/// Both scenarios against one store: a cloud target down everywhere (one fleet incident, one
/// Alertmanager group), then scl3's uplink cut (one site incident, none per target).
fn scenarios(kind: StoreKind) {
    support::init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut lab = FleetLab::build();
    // The store and Alertmanager run on the host's loopback; the agents reach them through the
    // lab's management network.
    let password_file = dir.path().join("store.password");
    std::fs::write(&password_file, PASSWORD).expect("password file");
    let (_influx, _vm, local) = match kind {
        StoreKind::Influx => {
            let influx = runtime.block_on(support::Influxd::start(
                &dir.path().join("influx"),
                "admin",
                PASSWORD,
            ));
            runtime.block_on(influx.query("", "CREATE DATABASE vantage"));
            let url = influx.url.clone();
            (Some(influx), None, url)
        }
        StoreKind::Victoria => {
            let vm = runtime.block_on(support::VictoriaMetrics::start(&dir.path().join("vm")));
            let url = vm.url.clone();
            (None, Some(vm), url)
        }
    };
    let port = |url: &str| -> u16 {
        url.rsplit(':')
            .next()
            .expect("port")
            .trim_end_matches('/')
            .parse()
            .expect("port")
    };
    let store_in_lab = lab.expose_store(port(&local));
    let am = Alertmanager::start(
        &dir.path().join("am"),
        "http://127.0.0.1:9/",
        &["fleet_key"],
    );
    let am_in_lab = lab.expose_store(port(&am.url));

    let mut agents = Vec::new();
    for site in Site::ALL {
        let data = dir.path().join(site.name());
        let config = dir.path().join(format!("{}.toml", site.name()));
        std::fs::write(
            &config,
            lab_agent_config(
                site,
                &data,
                &store_sections(kind, &store_in_lab, &password_file),
                &am_in_lab,
            ),
        )
        .expect("agent config");
        let netns = ["ip", "netns", "exec", lab.agent(site).name()];
        agents.push(support::Agent::start(
            &netns,
            &config,
            dir.path().join(format!("{}.log", site.name())),
        ));
    }
    let fleet_data = dir.path().join("fleet");
    let fleet_config = dir.path().join("fleet.toml");
    std::fs::write(
        &fleet_config,
        lab_fleet_config(
            &fleet_data,
            &store_sections(kind, &local, &password_file),
            &am.url,
        ),
    )
    .expect("fleet config");
    let evaluator = FleetProcess::start(&fleet_config, dir.path().join("fleet.log"));
    let log = || evaluator.log();
    // Some reads of a healthy fleet first: nothing opens.
    std::thread::sleep(Duration::from_secs(8));
    assert!(fleet_incidents(&fleet_data).is_empty(), "{}", log());

    // 1. aws-gw down: every site sees it; one fleet incident; one Alertmanager group of four.
    lab.target_down(AWS_GW, true);
    let incident = wait_for(
        "the fleet's aws-gw incident",
        Duration::from_secs(40),
        &log,
        || {
            fleet_incidents(&fleet_data)
                .into_iter()
                .find(|i| i.is_open())
        },
    );
    assert_eq!(
        incident.key, "cloud-unreachable/group/target=aws-gw",
        "{incident:#?}"
    );
    // The fleet's draft carries every site's figures for aws-gw (the agents' fleet view).
    let rows = wait_for(
        "the fleet draft's view with every site's figures for aws-gw",
        Duration::from_secs(30),
        &log,
        || {
            let open = fleet_incidents(&fleet_data)
                .into_iter()
                .find(|i| i.is_open())?;
            let view = open.fleet.as_ref()?.view.clone()?;
            let mut sites: Vec<String> = view
                .rows
                .iter()
                .filter(|r| r.target == "aws-gw")
                .map(|r| r.site.clone())
                .collect();
            sites.sort();
            (sites == ["iad1", "scl3", "sjc1"]).then_some(view.rows)
        },
    );
    assert!(!rows.is_empty());
    let group = wait_for(
        "one Alertmanager group of the agents' and the fleet's alerts",
        Duration::from_secs(30),
        &log,
        || {
            let groups = am.groups();
            let alerts = groups
                .first()
                .and_then(|g| g["alerts"].as_array())
                .map_or(0, Vec::len);
            (groups.len() == 1 && alerts == 4).then(|| groups[0].clone())
        },
    );
    assert_eq!(group["labels"]["fleet_key"], "target/aws-gw");
    // Each site's draft links to the fleet's incident: at its opening if the fleet's incident
    // was open by then (the trace at breach takes a while), else when its fleet view is asked
    // again (with a timeline line: `incident::fleet_view`'s unit test).
    let scl3_data = dir.path().join(Site::Scl3.name());
    let (scl3_draft, scl3_md) = wait_for(
        "scl3's draft to link to the fleet's incident",
        Duration::from_secs(45),
        &log,
        || {
            let draft = IncidentDb::open(&scl3_data)
                .ok()?
                .open_by_key("cloud-loss/target/aws-gw")
                .ok()??;
            let md = std::fs::read_to_string(
                scl3_data
                    .join("incidents")
                    .join(&draft.id)
                    .join("incident.md"),
            )
            .ok()?;
            md.contains("**Fleet incident:").then_some((draft, md))
        },
    );
    let linked = &scl3_draft.fleet.as_ref().expect("fleet view").incidents;
    assert_eq!(linked.len(), 1, "{linked:#?}");
    assert_eq!(
        (linked[0].fleet_key.as_str(), linked[0].rule.as_str()),
        ("target/aws-gw", "cloud-unreachable")
    );
    let what = match kind {
        // InfluxDB keeps the string fields: the fleet incident's title and ID.
        StoreKind::Influx => format!(
            "{} ({}, fleet key `target/aws-gw`)",
            incident.title, incident.id
        ),
        StoreKind::Victoria => {
            "rule `cloud-unreachable` on target/aws-gw (fleet key `target/aws-gw`)".to_string()
        }
    };
    assert!(
        scl3_md.contains(&format!("**Fleet incident: {what}, opened ")),
        "{scl3_md}"
    );
    assert!(
        scl3_md.contains("by the fleet evaluator `fleet` — ")
            && scl3_md.contains(" of 3 sites see it**"),
        "{scl3_md}"
    );
    std::thread::sleep(Duration::from_secs(4));
    let all = fleet_incidents(&fleet_data);
    assert_eq!(all.len(), 1, "exactly one fleet incident: {all:#?}");
    assert_eq!(am.groups().len(), 1, "still one group");
    let target_draft = fleet_data
        .join("incidents")
        .join(&incident.id)
        .join("incident.md");
    lab.target_down(AWS_GW, false);
    wait_for(
        "the aws-gw incident to resolve",
        Duration::from_secs(30),
        &log,
        || {
            fleet_incidents(&fleet_data)
                .iter()
                .all(|i| !i.is_open())
                .then_some(())
        },
    );

    // 2. scl3's uplink cut: it still reports (out of band) 100% loss to everything, and nobody
    // reaches it. One "site scl3 unreachable" incident; none for aws-gw or gcp-gw.
    lab.cut_uplink(Site::Scl3, true);
    let site = wait_for(
        "the fleet's scl3 incident",
        Duration::from_secs(40),
        &log,
        || {
            fleet_incidents(&fleet_data)
                .into_iter()
                .find(|i| i.is_open())
        },
    );
    assert_eq!(site.key, "site-unreachable/group/site=scl3", "{site:#?}");
    // Longer than the target rule's `for`: had scl3 been a witness, aws-gw and gcp-gw would open.
    std::thread::sleep(Duration::from_secs(10));
    let open: Vec<String> = fleet_incidents(&fleet_data)
        .into_iter()
        .filter(|i| i.is_open())
        .map(|i| i.key)
        .collect();
    assert_eq!(open, ["site-unreachable/group/site=scl3"], "{}", log());
    if let Some(example) = std::env::var_os("VANTAGE_FLEET_EXAMPLE_DIR") {
        let example = Path::new(&example);
        std::fs::create_dir_all(example).expect("create VANTAGE_FLEET_EXAMPLE_DIR");
        let site_draft = fleet_data
            .join("incidents")
            .join(&site.id)
            .join("incident.md");
        std::fs::copy(&target_draft, example.join("fleet-target-incident.md")).expect("copy");
        std::fs::write(example.join("site-scl3-incident.md"), &scl3_md).expect("write");
        std::fs::copy(&site_draft, example.join("fleet-site-incident.md")).expect("copy");
    }
    lab.cut_uplink(Site::Scl3, false);
    for agent in agents {
        agent.stop();
    }
}

#[test]
fn lab_influxdb_one_outage_one_incident() {
    scenarios(StoreKind::Influx);
}

#[test]
fn lab_victoriametrics_one_outage_one_incident() {
    scenarios(StoreKind::Victoria);
}
