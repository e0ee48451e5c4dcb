use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;
use crate::incident::IncidentDb;
use crate::rules::TransitionKind;

const SITES: [&str; 3] = ["scl3", "sjc1", "iad1"];
const CLOUD: [&str; 2] = ["aws-gw", "gcp-gw"];

/// Three sites meshed by `<site>-agent`, two cloud targets; the target rule opens when one site
/// in three (33%) sees a target fail, so only the site rule can keep a site outage to one incident.
fn config() -> EvaluatorConfig {
    EvaluatorConfig::parse(
        r#"
[evaluator]
name = "fleet"
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
name = "site-unreachable"
scope = "site"
min_sites = 2
kind = "loss"
above_pct = 90
clear_below_pct = 10
for = "10s"
clear_for = "20s"
min_hold = "0s"

[[rule]]
name = "cloud-unreachable"
scope = "target"
sites_pct = 30
targets = ["aws-gw", "gcp-gw"]
kind = "loss"
above_pct = 50
clear_below_pct = 5
for = "20s"
clear_for = "20s"
min_hold = "0s"

[[output]]
name = "store"
kind = "influxdb_v1"
url = "http://127.0.0.1:8086"
db = "vantage"

[fleet]
output = "store"
"#,
        Path::new("fleet.toml"),
    )
    .expect("valid fleet config")
}

/// Every site reaches every target and every other site, except what `lost` says (100% loss).
fn reads(lost: impl Fn(&str, &str) -> bool) -> Vec<Reading> {
    let mut readings = Vec::new();
    for site in SITES {
        let mesh = SITES
            .iter()
            .filter(|s| **s != site)
            .map(|s| format!("{s}-agent"));
        for target in mesh.chain(CLOUD.iter().map(|t| t.to_string())) {
            let loss = if lost(site, &target) { 100.0 } else { 0.0 };
            readings.push(Reading {
                site: site.to_string(),
                target,
                loss_pct: Some(loss),
                median_ms: (loss < 100.0).then_some(2.0),
            });
        }
    }
    readings
}

/// Run `rounds` reads, 10 s apart; every transition, in order.
fn run(
    evaluator: &mut Evaluator,
    start: u64,
    rounds: u64,
    readings: &[Reading],
) -> Vec<Transition> {
    let mut transitions = Vec::new();
    for round in 0..rounds {
        let now = Duration::from_secs(start + 10 * round);
        transitions.extend(evaluator.read(now, SystemTime::now(), readings));
    }
    transitions
}

fn opened(transitions: &[Transition]) -> Vec<String> {
    transitions
        .iter()
        .filter(|t| t.kind == TransitionKind::Opened)
        .map(|t| t.key.clone())
        .collect()
}

#[test]
fn a_site_that_is_down_is_one_incident_not_one_per_target() {
    let mut evaluator = Evaluator::new(&config());
    assert!(opened(&run(&mut evaluator, 0, 3, &reads(|_, _| false))).is_empty());
    // scl3's uplink is cut: it reaches nothing, and nobody reaches it; it still reports.
    let cut = reads(|site, target| site == "scl3" || target == "scl3-agent");
    let transitions = run(&mut evaluator, 30, 8, &cut);
    assert_eq!(
        opened(&transitions),
        ["site-unreachable/group/site=scl3"],
        "{transitions:#?}"
    );
    let site = &transitions[0];
    assert_eq!(site.impact.affected_targets(), ["scl3-agent"]);
    let sites: Vec<&str> = site
        .impact
        .affected
        .iter()
        .map(|m| m.probe.as_str())
        .collect();
    assert_eq!(sites, ["iad1", "sjc1"], "the sites that cannot reach scl3");
    assert_eq!(evaluator.down_sites(), ["scl3"]);
    assert_eq!(site.scope.fleet_key("fleet"), "site/scl3");
}

#[test]
fn a_target_down_everywhere_is_one_incident_for_that_target() {
    let mut evaluator = Evaluator::new(&config());
    run(&mut evaluator, 0, 3, &reads(|_, _| false));
    let transitions = run(
        &mut evaluator,
        30,
        8,
        &reads(|_, target| target == "aws-gw"),
    );
    assert_eq!(
        opened(&transitions),
        ["cloud-unreachable/group/target=aws-gw"]
    );
    let incident = &transitions[0];
    assert_eq!(incident.impact.affected.len(), 3, "seen from 3 of 3 sites");
    assert_eq!(incident.impact.affected_targets(), ["aws-gw"]);
    assert_eq!(incident.scope.fleet_key("fleet"), "target/aws-gw");
    assert!(evaluator.down_sites().is_empty());
    // Back: it resolves through the rule's own clear_for.
    let transitions = run(&mut evaluator, 110, 4, &reads(|_, _| false));
    assert_eq!(
        transitions
            .iter()
            .map(|t| (t.kind, t.key.as_str()))
            .collect::<Vec<_>>(),
        [(
            TransitionKind::Resolved,
            "cloud-unreachable/group/target=aws-gw"
        )]
    );
}

/// A site that stops reporting is no witness: what it said last does not keep counting.
#[test]
fn a_silent_site_is_no_witness() {
    let mut evaluator = Evaluator::new(&config());
    run(&mut evaluator, 0, 3, &reads(|_, _| false));
    // iad1 sees gcp-gw fail once, then falls silent before the rule's `for` has passed.
    run(
        &mut evaluator,
        30,
        1,
        &reads(|site, t| site == "iad1" && t == "gcp-gw"),
    );
    let silent: Vec<Reading> = reads(|_, _| false)
        .into_iter()
        .filter(|r| r.site != "iad1")
        .collect();
    let transitions = run(&mut evaluator, 40, 6, &silent);
    assert!(opened(&transitions).is_empty(), "{transitions:#?}");
}

#[test]
fn the_engine_config_has_one_pair_per_site_and_target() {
    let evaluator = Evaluator::new(&config());
    let engine = evaluator.engine_config();
    assert_eq!(
        engine
            .probes
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        SITES
    );
    let scl3 = engine.probe("scl3").expect("scl3");
    assert_eq!(
        scl3.targets,
        ["sjc1-agent", "iad1-agent", "aws-gw", "gcp-gw"]
    );
    let site_rule = &engine.rules[0];
    assert_eq!(
        site_rule.targets,
        ["iad1-agent", "scl3-agent", "sjc1-agent"],
        "each site's mesh target"
    );
}

/// The fleet's drafts for `transitions`, through the agents' incident manager (no store, no
/// network: the engine config's `[fleet]` only marks it as the fleet evaluator).
fn record_all(manager: &mut Manager, transitions: &[Transition], at: SystemTime) {
    for transition in transitions {
        manager.apply(transition, at).expect("recorded");
    }
    manager.tick(Duration::ZERO, at).expect("tick");
}

fn fleet_manager(evaluator: &Evaluator, dir: &Path) -> Manager {
    Manager::new(
        IncidentDb::open(dir).expect("incidents.db"),
        None,
        evaluator.engine_config(),
        Box::new(NoDiagnostics),
    )
}

fn updates(transitions: &[Transition]) -> Vec<(String, String)> {
    transitions
        .iter()
        .filter(|t| t.kind == TransitionKind::Updated)
        .map(|t| (t.key.clone(), t.reason.clone()))
        .collect()
}

/// Sites joining and leaving an open fleet incident update it, through the agents' update path:
/// the draft's title, impact and timeline say who sees it now.
#[test]
fn sites_joining_or_leaving_update_the_fleet_incident() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut evaluator = Evaluator::new(&config());
    let mut manager = fleet_manager(&evaluator, dir.path());
    let key = "cloud-unreachable/group/target=aws-gw";
    let wall = SystemTime::now();
    record_all(
        &mut manager,
        &run(&mut evaluator, 0, 3, &reads(|_, _| false)),
        wall,
    );
    // Only scl3 sees aws-gw fail: one site in three is enough for this rule.
    let scl3 = run(
        &mut evaluator,
        30,
        4,
        &reads(|s, t| s == "scl3" && t == "aws-gw"),
    );
    assert_eq!(opened(&scl3), [key]);
    record_all(&mut manager, &scl3, wall);
    let draft = manager.db().open_by_key(key).expect("db").expect("open");
    assert!(
        draft
            .title
            .ends_with("100% packet loss to aws-gw from 1 of 3 sites"),
        "{}",
        draft.title
    );

    // sjc1 joins, then iad1.
    let two = run(
        &mut evaluator,
        70,
        1,
        &reads(|s, t| s != "iad1" && t == "aws-gw"),
    );
    assert_eq!(
        updates(&two),
        [(key.to_string(), "site sjc1 now sees it".to_string())]
    );
    record_all(&mut manager, &two, wall);
    let three = run(&mut evaluator, 80, 1, &reads(|_, t| t == "aws-gw"));
    assert_eq!(
        updates(&three),
        [(key.to_string(), "site iad1 now sees it".to_string())]
    );
    record_all(&mut manager, &three, wall);
    // Nothing changes: no update.
    let same = run(&mut evaluator, 90, 2, &reads(|_, t| t == "aws-gw"));
    assert!(same.is_empty(), "{same:#?}");
    // sjc1 recovers; iad1 falls silent (its rows are gone from the read).
    let fewer: Vec<Reading> = reads(|s, t| s == "scl3" && t == "aws-gw")
        .into_iter()
        .filter(|r| r.site != "iad1")
        .collect();
    let left = run(&mut evaluator, 110, 1, &fewer);
    assert_eq!(
        updates(&left),
        [(
            key.to_string(),
            "site iad1 stopped reporting; site sjc1 no longer sees it".to_string()
        )]
    );
    record_all(&mut manager, &left, wall);

    let draft = manager.db().open_by_key(key).expect("db").expect("open");
    let timeline: Vec<&str> = draft.timeline.iter().map(|e| e.text.as_str()).collect();
    for line in [
        "Site sjc1 now sees it: 100% packet loss to aws-gw from 2 of 3 sites: scl3, sjc1.",
        "Site iad1 now sees it: 100% packet loss to aws-gw from 3 of 3 sites: iad1, scl3, sjc1.",
        "Site iad1 stopped reporting; site sjc1 no longer sees it: 100% packet loss to aws-gw from 1 of 3 sites: scl3.",
    ] {
        assert!(timeline.contains(&line), "no {line:?} in {timeline:#?}");
    }
    let sites = draft.fleet_sites.as_ref().expect("the fleet's sites");
    assert_eq!(
        (sites.seeing.as_slice(), sites.total),
        (&["scl3".to_string()][..], 3)
    );
    let markdown = crate::incident::render::markdown(&draft);
    assert!(markdown.contains("| aws-gw | scl3 | 100% |"), "{markdown}");
}

/// What the agents' drafts say of one agent and its targets, which a fleet draft must not say:
/// the fleet measures nothing itself, and its incidents are about sites.
const AGENT_ONLY: [&str; 14] = [
    "this agent",
    "by agent",
    "agent-side",
    "measured from this",
    "Path trace: none attached",
    "No history in the store",
    "Other targets from",
    "targets of the `",
    "of 1 targets",
    "Seen from other sites",
    "The agent restarted",
    "the agent host",
    "| target | probe |",
    "of the targets of a",
];

/// A fleet draft (a target incident and a site incident, open and resolved) speaks as the fleet.
#[test]
fn a_fleet_draft_speaks_as_the_fleet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut evaluator = Evaluator::new(&config());
    let mut manager = fleet_manager(&evaluator, dir.path());
    let wall = SystemTime::now();
    record_all(
        &mut manager,
        &run(&mut evaluator, 0, 3, &reads(|_, _| false)),
        wall,
    );
    let down = run(&mut evaluator, 30, 4, &reads(|_, t| t == "aws-gw"));
    record_all(&mut manager, &down, wall);
    let back = run(&mut evaluator, 70, 4, &reads(|_, _| false));
    record_all(&mut manager, &back, wall);
    let cut = reads(|site, target| site == "scl3" || target == "scl3-agent");
    record_all(&mut manager, &run(&mut evaluator, 110, 4, &cut), wall);
    let mut drafts = manager.db().all().expect("incidents");
    drafts.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<&str> = drafts.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cloud-unreachable/group/target=aws-gw",
            "site-unreachable/group/site=scl3"
        ]
    );
    assert!(!drafts[0].is_open() && drafts[1].is_open());
    for draft in &drafts {
        let markdown = crate::incident::render::markdown(draft);
        for phrase in AGENT_ONLY {
            assert!(
                !markdown.contains(phrase),
                "the fleet draft says {phrase:?}:\n{markdown}"
            );
        }
        assert!(
            markdown.contains("by the fleet evaluator `fleet`"),
            "{markdown}"
        );
    }
    let site = crate::incident::render::markdown(&drafts[1]);
    assert!(
        site.contains("# ") && site.contains("100% packet loss to site scl3 from 2 of 2 sites"),
        "{site}"
    );
    assert!(
        site.contains("to a site's mesh targets, from at least 2 of the 2 other sites"),
        "{site}"
    );
    // Its verdict: every other site sees scl3's mesh target fail — scl3 is down, not "at the
    // target or its provider".
    let mut draft = drafts[1].clone();
    let row = |site: &str| crate::fleet::SiteFigures {
        site: site.into(),
        agent: format!("{site}-probe"),
        target: "scl3-agent".into(),
        sent: 100,
        rounds: 10,
        failed_rounds: 10,
        ..Default::default()
    };
    let view = crate::fleet::FleetView {
        from_ms: 0,
        until_ms: 60_000,
        rows: vec![row("iad1"), row("sjc1")],
        site_last_report_ms: Default::default(),
    };
    let targets = vec!["scl3-agent".to_string()];
    draft.fleet = Some(crate::incident::FleetEvidence {
        at: draft.detected_at,
        verdict: Some(crate::fleet::verdict::verdict(
            &view, None, &targets, 60_000,
        )),
        targets,
        view: Some(view),
        unavailable: None,
        incidents: Vec::new(),
    });
    let site = crate::incident::render::markdown(&draft);
    assert!(
        site.contains(
            "— iad1 and sjc1 cannot reach site scl3 → site scl3 itself is down or cut off"
        ),
        "{site}"
    );
    assert!(!site.contains("or its provider"), "{site}");
    for phrase in AGENT_ONLY {
        assert!(!site.contains(phrase), "{phrase:?}:\n{site}");
    }
}

#[test]
fn a_pair_counts_its_first_reading_with_a_ping_round() {
    // Every site loses aws-gw, but each site's first reading of it has no ping round (a second
    // agent at the site that runs no pings) and its last says all is well: only the first
    // reading with a round counts.
    let mut readings = Vec::new();
    for reading in reads(|_, target| target == "aws-gw") {
        if reading.target == "aws-gw" {
            let silent = Reading {
                loss_pct: None,
                median_ms: None,
                ..reading.clone()
            };
            let healthy = Reading {
                loss_pct: Some(0.0),
                median_ms: Some(2.0),
                ..reading.clone()
            };
            readings.extend([silent, reading, healthy]);
        } else {
            readings.push(reading);
        }
    }
    let mut evaluator = Evaluator::new(&config());
    let transitions = run(&mut evaluator, 0, 4, &readings);
    assert_eq!(
        opened(&transitions),
        ["cloud-unreachable/group/target=aws-gw"],
        "{transitions:#?}"
    );
}
