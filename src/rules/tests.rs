//! Scenario tests from data: a table of observations (time, target, what the round saw) in, the
//! transitions out, as one line each. Rounds are 5 echoes; `.` is a reply (10 ms), `x` a lost
//! echo, `!` a round that failed before sending (name did not resolve), a number `N` a round of
//! five replies of N ms.

use std::path::Path;
use std::time::{Duration, SystemTime};

use probes::{FailureKind, Measurement, Observation, Outcome, PingStats};

use super::*;
use crate::config::Config;

/// A config with the given targets (name, group label) on 127.0.0.x, one probe `ping` (5 echoes
/// every 10 s), and the given `[[rule]]` text.
fn make_config(targets: &[(&str, &str)], rules: &str) -> Config {
    let mut text = String::from("[agent]\nname = \"a1\"\nsite = \"scl3\"\n");
    for (i, (name, group)) in targets.iter().enumerate() {
        text.push_str(&format!(
            "[[target]]\nname = \"{name}\"\nhost = \"127.0.0.{}\"\nlabels = {{ group = \"{group}\" }}\n",
            i + 1
        ));
    }
    text.push_str(
        "[[probe]]\nname = \"ping\"\nkind = \"icmp\"\ninterval = \"10s\"\ntimeout = \"1s\"\ncount = 5\nspacing = \"1s\"\n",
    );
    text.push_str(rules);
    Config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn record(target: &str, round: &str, wall: SystemTime) -> Record {
    let rtts: Vec<Option<f64>> = match round {
        "!" => Vec::new(),
        _ if round.parse::<f64>().is_ok() => {
            vec![Some(round.parse::<f64>().expect("number")); 5]
        }
        _ => round.chars().map(|c| (c == '.').then_some(10.0)).collect(),
    };
    let stats = PingStats::from_rtts(rtts);
    let outcome = match (round, stats.received) {
        ("!", _) => Outcome::failure(FailureKind::Resolve, "cannot resolve"),
        (_, 0) => Outcome::failure(FailureKind::Timeout, "no reply"),
        _ => Outcome::Success,
    };
    Record {
        agent: "a1".into(),
        site: "scl3".into(),
        probe: "ping".into(),
        target: target.into(),
        target_site: "lab".into(),
        address: None,
        observation: Observation {
            started_at: wall,
            duration: Duration::from_secs(5),
            outcome,
            measurement: Measurement::Ping(stats),
        },
    }
}

/// `(from, to, every, target, round)`: the round seen at `from`, `from + every`, ... before `to`.
type Rows<'a> = &'a [(u64, u64, u64, &'a str, &'a str)];

/// Run a scenario second by second (observations of a second first, then a tick) and describe
/// each transition: `70s opened rule/target/a 100.0 1/1`. `wall` maps a second to the wall-clock
/// time stamped on its observations.
fn run_with(
    config: &Config,
    rows: Rows<'_>,
    end: u64,
    wall: impl Fn(u64) -> SystemTime,
) -> Vec<String> {
    let mut engine = Engine::new(config);
    run_engine(&mut engine, rows, 0, end, wall)
}

fn run_engine(
    engine: &mut Engine,
    rows: Rows<'_>,
    start: u64,
    end: u64,
    wall: impl Fn(u64) -> SystemTime,
) -> Vec<String> {
    let mut lines = Vec::new();
    for t in start..=end {
        let now = Duration::from_secs(t);
        let mut transitions = Vec::new();
        for &(from, to, every, target, round) in rows {
            if t >= from && t < to && (t - from) % every == 0 {
                transitions.extend(engine.observe(now, &record(target, round, wall(t))));
            }
        }
        transitions.extend(engine.tick(now));
        for tr in transitions {
            let value = tr.impact.value.map_or("-".into(), |v| format!("{v:.1}"));
            let mut line = format!(
                "{t}s {} {} {value} {}/{}",
                tr.kind.as_str(),
                tr.key,
                tr.impact.affected_targets().len(),
                tr.impact.total_targets
            );
            match tr.kind {
                TransitionKind::Opened => {}
                TransitionKind::Updated => line.push_str(&format!(" ({})", tr.reason)),
                TransitionKind::Resolved => line.push_str(&format!(
                    " after {}s, peak {}",
                    tr.open_for.as_secs(),
                    tr.peak.value.map_or("-".into(), |v| format!("{v:.1}"))
                )),
            }
            lines.push(line);
        }
    }
    lines
}

fn steady_wall(t: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + t)
}

fn run(config: &Config, rows: Rows<'_>, end: u64) -> Vec<String> {
    run_with(config, rows, end, steady_wall)
}

const LOSS: &str = r#"
[[rule]]
name = "loss"
kind = "loss"
above_pct = 20
clear_below_pct = 10
echoes = 10
for = "20s"
clear_for = "30s"
min_hold = "60s"
"#;

#[test]
fn loss_opens_after_for_and_resolves_after_clear_for_and_min_hold() {
    let config = make_config(&[("a", "g")], LOSS);
    let rows: Rows = &[
        (0, 50, 10, "a", "....."),
        (50, 100, 10, "a", "xxxxx"),
        (100, 300, 10, "a", "....."),
    ];
    // t=50: 5 of the last 10 echoes lost (50%): bad, pending. t=70: `for` elapsed, opened (100%:
    // two lost rounds). t=110: 0 of 10 lost: clear. t=140: clear for 30s and open for 70s ≥ 60s.
    assert_eq!(
        run(&config, rows, 300),
        [
            "70s opened loss/target/a 100.0 1/1",
            "140s resolved loss/target/a - 0/1 after 70s, peak 100.0",
        ]
    );
}

#[test]
fn exactly_at_the_threshold() {
    // Loss: above_pct = 20 is exclusive (2 of 10 lost = 20% does not open, 3 of 10 does);
    // clear_below_pct = 10 is inclusive (1 of 10 = 10% clears).
    let config = make_config(&[("a", "g")], LOSS);
    let rows: Rows = &[
        (0, 100, 10, "a", "x...."),   // 1 of 5 per round: 20% exactly, for ever
        (100, 150, 10, "a", "xx..."), // 3 of 10 at t=100, then 4 of 10: 30%, 40%
        (150, 400, 10, "a", "x...."), // back to 30%, then 20%: in the band, stays open
        (400, 600, 10, "a", "....x"), // 2 of 10 = 20%, then (at 410) still 20%...
        (600, 800, 10, "a", "....."), // 1 of 10 at t=600: 10% clears (inclusive)
    ];
    assert_eq!(
        run(&config, rows, 800),
        [
            "120s opened loss/target/a 40.0 1/1",
            "630s resolved loss/target/a - 0/1 after 510s, peak 40.0",
        ]
    );

    // Failures: at least 2 of the last 4 runs (inclusive); clear at most 0 of 4.
    let failures = make_config(
        &[("a", "g")],
        "[[rule]]\nname = \"down\"\nkind = \"failures\"\nfailures = 2\nruns = 4\nfor = \"0s\"\nclear_for = \"0s\"\nmin_hold = \"0s\"\n",
    );
    let rows: Rows = &[
        (0, 10, 10, "a", "xxxxx"),   // 1 failure of 1
        (10, 40, 10, "a", "....."),  // 1 of 4: below
        (40, 50, 10, "a", "xxxxx"),  // the first failure left the window at t=40: 1 of 4
        (50, 60, 10, "a", "!"),      // 2 of 4: opens
        (60, 100, 10, "a", "....."), // 2, 2, 1, 0 of 4 at t=90: clears
    ];
    assert_eq!(
        run(&failures, rows, 120),
        [
            "50s opened down/target/a 50.0 1/1",
            "90s resolved down/target/a - 0/1 after 40s, peak 50.0",
        ]
    );
}

#[test]
fn a_flapping_target_gives_one_incident() {
    // The window is one round, so the target flips between 100% and 0% loss every 10 s for
    // 10 minutes. Clear periods (10 s) never last `clear_for` (60 s): one incident, no updates.
    let config = make_config(
        &[("a", "g")],
        "[[rule]]\nname = \"loss\"\nkind = \"loss\"\nabove_pct = 50\nechoes = 5\nfor = \"0s\"\nclear_for = \"60s\"\nmin_hold = \"2m\"\n",
    );
    let rows: Rows = &[
        (0, 600, 20, "a", "xxxxx"),
        (10, 600, 20, "a", "....."),
        (600, 900, 10, "a", "....."),
    ];
    assert_eq!(
        run(&config, rows, 900),
        [
            "0s opened loss/target/a 100.0 1/1",
            "650s resolved loss/target/a - 0/1 after 650s, peak 100.0",
        ]
    );
}

#[test]
fn group_scope_needs_a_share_of_the_group_and_grows() {
    let config = make_config(
        &[
            ("a", "cloud"),
            ("b", "cloud"),
            ("c", "cloud"),
            ("d", "cloud"),
            ("e", "west"),
            ("f", "west"),
            ("g", "west"),
        ],
        "[[rule]]\nname = \"grp\"\nkind = \"loss\"\nabove_pct = 20\nechoes = 5\nscope = \"group\"\ngroup_by = \"group\"\nshare_pct = 50\nfor = \"0s\"\nclear_for = \"0s\"\nmin_hold = \"0s\"\n",
    );
    let rows: Rows = &[
        // One member of `cloud` fails from t=0: 1 of 4 is not an incident.
        (0, 200, 10, "a", "xxxxx"),
        // A second from t=50: 2 of 4 = 50% (inclusive) opens one group incident.
        (0, 50, 10, "b", "....."),
        (50, 200, 10, "b", "xxx.."),
        // A third from t=100: the scope grew.
        (0, 100, 10, "c", "....."),
        (100, 200, 10, "c", "xxxxx"),
        (0, 300, 10, "d", "....."),
        // One of three in `west` for the whole time: never an incident.
        (0, 300, 10, "e", "xxxxx"),
        (0, 300, 10, "f", "....."),
        (0, 300, 10, "g", "....."),
        (200, 300, 10, "a", "....."),
        (200, 300, 10, "b", "....."),
        (200, 300, 10, "c", "....."),
    ];
    assert_eq!(
        run(&config, rows, 300),
        [
            "50s opened grp/group/group=cloud 80.0 2/4",
            "100s updated grp/group/group=cloud 86.7 3/4 (scope grew from 2 to 3 of 4 targets)",
            // At t=200 a and b recover before c: 1 of 4 is below the share, so it resolves.
            "200s resolved grp/group/group=cloud 100.0 1/4 after 150s, peak 86.7",
        ]
    );
}

/// A target rule that opens after 30 s: slower than the agent and group rules below.
const TARGET_LOSS: &str = r#"
[[rule]]
name = "loss"
kind = "loss"
above_pct = 20
echoes = 5
for = "30s"
clear_for = "20s"
min_hold = "0s"
"#;

const AGENT_UPLINK: &str = r#"
[[rule]]
name = "uplink"
kind = "loss"
severity = "critical"
above_pct = 20
echoes = 5
scope = "agent"
for = "10s"
clear_for = "20s"
min_hold = "0s"
"#;

#[test]
fn every_target_failing_is_one_agent_side_incident() {
    let rules = format!("{TARGET_LOSS}{AGENT_UPLINK}");
    let config = make_config(&[("a", "x"), ("b", "y"), ("c", "z")], &rules);
    // Our uplink dies at t≈100: the targets' rounds (staggered by 3 s) lose everything from then
    // on, until t≈300. The agent rule opens; the target rule is held back for all three.
    let rows: Rows = &[
        (0, 100, 10, "a", "....."),
        (3, 103, 10, "b", "....."),
        (6, 106, 10, "c", "....."),
        (100, 300, 10, "a", "xxxxx"),
        (103, 303, 10, "b", "xxxxx"),
        (106, 306, 10, "c", "xxxxx"),
        (300, 500, 10, "a", "....."),
        (303, 503, 10, "b", "....."),
        (306, 506, 10, "c", "....."),
    ];
    assert_eq!(
        run(&config, rows, 500),
        [
            "116s opened uplink/agent/agent 100.0 3/3",
            "320s resolved uplink/agent/agent - 0/3 after 204s, peak 100.0",
        ]
    );

    // One target failing alone is the target's incident, not ours.
    let rows: Rows = &[
        (0, 400, 10, "a", "....."),
        (3, 400, 10, "b", "....."),
        (6, 106, 10, "c", "....."),
        (106, 400, 10, "c", "xxxxx"),
    ];
    assert_eq!(
        run(&config, rows, 400),
        ["136s opened loss/target/c 100.0 1/1"]
    );
}

const GROUP_LOSS: &str = r#"
[[rule]]
name = "grp"
kind = "loss"
above_pct = 20
echoes = 5
scope = "group"
group_by = "group"
share_pct = 50
for = "10s"
clear_for = "20s"
min_hold = "0s"
"#;

/// Half of `cloud` fails from t≈100 (a until 300, b until 500), c alone from t≈526, e alone in
/// `west` from t≈101 to 201.
const HALF_OF_CLOUD: Rows = &[
    (0, 100, 10, "a", "....."),
    (100, 300, 10, "a", "xxxxx"),
    (300, 600, 10, "a", "....."),
    (3, 103, 10, "b", "....."),
    (103, 503, 10, "b", "xxxxx"),
    (503, 600, 10, "b", "....."),
    (6, 526, 10, "c", "....."),
    (526, 600, 10, "c", "xxxxx"),
    (9, 600, 10, "d", "....."),
    (1, 101, 10, "e", "....."),
    (101, 201, 10, "e", "xxxxx"),
    (201, 600, 10, "e", "....."),
    (2, 600, 10, "f", "....."),
    (5, 600, 10, "g", "....."),
];

/// `TARGET_LOSS` and `GROUP_LOSS` over `cloud` (a–d) and `west` (e–g).
fn cloud_and_west(hold_back_targets: bool) -> Config {
    let hold = if hold_back_targets {
        "hold_back_targets = true\n"
    } else {
        ""
    };
    make_config(
        &[
            ("a", "cloud"),
            ("b", "cloud"),
            ("c", "cloud"),
            ("d", "cloud"),
            ("e", "west"),
            ("f", "west"),
            ("g", "west"),
        ],
        &format!("{TARGET_LOSS}{GROUP_LOSS}{hold}"),
    )
}

#[test]
fn a_group_rule_that_holds_back_targets_is_their_one_incident() {
    assert_eq!(
        run(&cloud_and_west(true), HALF_OF_CLOUD, 600),
        [
            // a and b: the group's incident only, none per target.
            "113s opened grp/group/group=cloud 100.0 2/4",
            // e alone in `west` (1 of 3 is no group incident): its own.
            "131s opened loss/target/e 100.0 1/1",
            "221s resolved loss/target/e - 0/1 after 90s, peak 100.0",
            // a recovers: 1 of 4 is below the share. b, still bad, now opens its own.
            "320s resolved grp/group/group=cloud 100.0 1/4 after 207s, peak 100.0",
            "320s opened loss/target/b 100.0 1/1",
            "523s resolved loss/target/b - 0/1 after 203s, peak 100.0",
            // c alone later: no group incident to speak for it.
            "556s opened loss/target/c 100.0 1/1",
        ]
    );
}

#[test]
fn a_group_rule_without_hold_back_leaves_target_incidents_alone() {
    let lines = run(&cloud_and_west(false), HALF_OF_CLOUD, 600);
    for opened in [
        "113s opened grp/group/group=cloud 100.0 2/4",
        "130s opened loss/target/a 100.0 1/1",
        "133s opened loss/target/b 100.0 1/1",
    ] {
        assert!(lines.iter().any(|l| l == opened), "{opened} in {lines:#?}");
    }
}

#[test]
fn a_wall_clock_step_opens_and_clears_nothing() {
    let config = make_config(&[("a", "g")], LOSS);
    let rows: Rows = &[
        (0, 50, 10, "a", "....."),
        (50, 100, 10, "a", "xxxxx"),
        (100, 300, 10, "a", "....."),
    ];
    // NTP steps the wall clock back two hours at t=60 and forward a day at t=120: the same
    // transitions at the same (monotonic) times as with a steady clock.
    let stepped = |t: u64| match t {
        0..60 => steady_wall(t),
        60..120 => steady_wall(t) - Duration::from_secs(7200),
        _ => steady_wall(t) + Duration::from_secs(86_400),
    };
    assert_eq!(
        run_with(&config, rows, 300, stepped),
        run(&config, rows, 300)
    );
    // And a healthy target stays quiet whatever the wall clock does.
    let healthy: Rows = &[(0, 300, 10, "a", ".....")];
    assert!(run_with(&config, healthy, 300, stepped).is_empty());
}

#[test]
fn loss_doubling_is_an_update_and_small_changes_are_not() {
    let config = make_config(
        &[("a", "g")],
        "[[rule]]\nname = \"loss\"\nkind = \"loss\"\nabove_pct = 10\nechoes = 5\nfor = \"0s\"\nclear_for = \"0s\"\nmin_hold = \"0s\"\n",
    );
    let rows: Rows = &[
        (0, 30, 10, "a", "x...."),   // 20%: opened
        (30, 60, 10, "a", "xx..."),  // 40%: doubled
        (60, 90, 10, "a", "xxx.."),  // 60%: not double of 40%
        (90, 120, 10, "a", "xxxx."), // 80%: double of 40%, the last figure reported
    ];
    assert_eq!(
        run(&config, rows, 120),
        [
            "0s opened loss/target/a 20.0 1/1",
            "30s updated loss/target/a 40.0 1/1 (loss doubled: 20.0% → 40.0%)",
            "90s updated loss/target/a 80.0 1/1 (loss doubled: 40.0% → 80.0%)",
        ]
    );
}

#[test]
fn latency_above_its_own_baseline() {
    let config = make_config(
        &[("a", "g")],
        "[[rule]]\nname = \"slow\"\nkind = \"latency\"\nabove_baseline = 3\nbaseline = \"10m\"\nruns = 3\nfor = \"0s\"\nclear_for = \"0s\"\nmin_hold = \"0s\"\n",
    );
    let rows: Rows = &[
        (0, 300, 10, "a", "10"),
        (300, 320, 10, "a", "20"), // 2× the baseline: not above 3×
        (320, 360, 10, "a", "40"), // the median of the last 3 runs reaches 40 at t=330
        // An hour at 40 ms: the baseline is frozen while breaching, so this stays an incident.
        (360, 3960, 10, "a", "40"),
        (3960, 4000, 10, "a", "10"), // back to normal: the median is 10 again at t=3970
    ];
    assert_eq!(
        run(&config, rows, 4000),
        [
            "330s opened slow/target/a 40.0 1/1",
            "3970s resolved slow/target/a - 0/1 after 3640s, peak 40.0",
        ]
    );
}

#[test]
fn absolute_latency_with_hysteresis() {
    let config = make_config(
        &[("a", "g")],
        "[[rule]]\nname = \"slow\"\nkind = \"latency\"\nfield = \"rtt_median_ms\"\nabove_ms = 100\nclear_below_ms = 50\nruns = 1\nfor = \"0s\"\nclear_for = \"0s\"\nmin_hold = \"0s\"\n",
    );
    let rows: Rows = &[
        (0, 10, 10, "a", "100"),  // exactly 100: not above
        (10, 20, 10, "a", "101"), // opens
        (20, 40, 10, "a", "60"),  // between the thresholds: stays open
        (40, 50, 10, "a", "50"),  // at the clear threshold: clears
    ];
    assert_eq!(
        run(&config, rows, 50),
        [
            "10s opened slow/target/a 101.0 1/1",
            "40s resolved slow/target/a - 0/1 after 30s, peak 101.0",
        ]
    );
}

#[test]
fn a_restored_incident_is_neither_reopened_nor_lost() {
    let config = make_config(&[("a", "g")], LOSS);
    // Still bad after the restart: no second `opened`, and no `updated` for the same figures.
    let mut engine = Engine::new(&config);
    assert!(engine.restore("loss/target/a", Duration::ZERO, (1, Some(100.0))));
    let bad: Rows = &[(0, 200, 10, "a", "xxxxx")];
    assert!(run_engine(&mut engine, bad, 0, 200, steady_wall).is_empty());
    assert_eq!(engine.firing(), ["loss/target/a"]);

    // Healthy after the restart: resolves through the clear conditions (clear for 30 s from the
    // second round, t=10; the hold counts from the restart).
    let mut engine = Engine::new(&config);
    assert!(engine.restore("loss/target/a", Duration::ZERO, (1, Some(100.0))));
    let healthy: Rows = &[(0, 200, 10, "a", ".....")];
    assert_eq!(
        run_engine(&mut engine, healthy, 0, 200, steady_wall),
        ["60s resolved loss/target/a - 0/1 after 60s, peak 100.0"]
    );
    assert!(!engine.restore("loss/target/gone", Duration::ZERO, (1, None)));
}

#[test]
fn no_rules_no_transitions() {
    let config = make_config(&[("a", "g")], "");
    let rows: Rows = &[(0, 100, 10, "a", "!")];
    assert!(run(&config, rows, 100).is_empty());
}

#[test]
fn dedup_keys_are_stable() {
    assert_eq!(
        dedup_key(
            "loss",
            &Scope::Target {
                target: "sjc1-core".into()
            }
        ),
        "loss/target/sjc1-core"
    );
    assert_eq!(
        dedup_key(
            "grp",
            &Scope::Group {
                label: "group".into(),
                value: "cloud".into()
            }
        ),
        "grp/group/group=cloud"
    );
    assert_eq!(dedup_key("uplink", &Scope::Agent), "uplink/agent/agent");
}

#[test]
fn a_thousand_targets_failing_at_once_is_one_incident() {
    let names: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
    let targets: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "g")).collect();
    let mut text = String::from("[agent]\nname = \"a1\"\nsite = \"scl3\"\n");
    for (i, (name, group)) in targets.iter().enumerate() {
        text.push_str(&format!(
            "[[target]]\nname = \"{name}\"\nhost = \"198.18.{}.{}\"\nlabels = {{ group = \"{group}\" }}\n",
            i / 256,
            i % 256
        ));
    }
    text.push_str(
        "[[probe]]\nname = \"ping\"\nkind = \"icmp\"\ninterval = \"10s\"\ntimeout = \"1s\"\ncount = 5\nspacing = \"1s\"\n",
    );
    text.push_str(TARGET_LOSS);
    text.push_str(AGENT_UPLINK);
    let config = Config::parse(&text, Path::new("big.toml")).unwrap_or_else(|e| panic!("{e}"));
    let mut engine = Engine::new(&config);
    let started = std::time::Instant::now();
    let mut lines = Vec::new();
    // Rounds staggered over the 10 s interval; everything is lost from t=100 to t=300.
    for t in 0..400u64 {
        let now = Duration::from_secs(t);
        let mut transitions = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let offset = (i as u64 * 10) / 1000;
            if t % 10 == offset {
                let round = if (100..300).contains(&t) {
                    "xxxxx"
                } else {
                    "....."
                };
                transitions.extend(engine.observe(now, &record(name, round, steady_wall(t))));
            }
        }
        transitions.extend(engine.tick(now));
        lines.extend(
            transitions
                .iter()
                .map(|tr| format!("{t}s {} {}", tr.kind.as_str(), tr.key)),
        );
    }
    assert_eq!(
        lines,
        [
            "119s opened uplink/agent/agent",
            "320s resolved uplink/agent/agent"
        ]
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "400 s of 1000 targets took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_first_echoes_after_a_start_are_not_a_whole_window() {
    let config = make_config(
        &[("a", "g"), ("b", "g")],
        "[[rule]]\nname = \"loss\"\nkind = \"loss\"\nabove_pct = 10\nechoes = 20\nfor = \"0s\"\nclear_for = \"0s\"\nmin_hold = \"0s\"\n",
    );
    let rows: Rows = &[
        // One lost echo is 20% of the first five, but 5% of the 20-echo window: not a breach.
        (0, 10, 10, "a", "x...."),
        (10, 300, 10, "a", "....."),
        // Dead from the start: 5 lost of 20 is above 10% at once.
        (0, 300, 10, "b", "xxxxx"),
    ];
    assert_eq!(
        run(&config, rows, 300),
        ["0s opened loss/target/b 100.0 1/1"]
    );
}

/// Reload: a rule whose config is unchanged keeps each member's window and its firing alert (no
/// second opening); a changed rule keeps the firing alert but starts its windows afresh; a removed
/// target's alert is gone.
#[test]
fn reconfigure_keeps_windows_and_firing_alerts_of_unchanged_pairs() {
    let before = make_config(&[("a", "g"), ("b", "g")], LOSS);
    let mut engine = Engine::new(&before);
    let rows: Rows = &[(0, 60, 10, "a", "xxxxx"), (0, 60, 10, "b", ".....")];
    assert_eq!(
        run_engine(&mut engine, rows, 0, 59, steady_wall),
        ["20s opened loss/target/a 100.0 1/1"]
    );

    // Target c added, b removed, the rule unchanged.
    let added = make_config(&[("a", "g"), ("c", "g")], LOSS);
    engine.reconfigure(&added);
    assert_eq!(engine.firing(), ["loss/target/a"]);
    assert!(!engine.has_alert("loss/target/b") && engine.has_alert("loss/target/c"));
    let impact = engine.impact("loss/target/a").expect("a's alert");
    assert_eq!(
        (impact.affected_targets(), impact.value),
        (vec!["a"], Some(100.0)),
        "a's window survived the reload"
    );
    // Still losing: neither opened again nor updated.
    let rows: Rows = &[(60, 120, 10, "a", "xxxxx"), (60, 120, 10, "c", ".....")];
    assert_eq!(
        run_engine(&mut engine, rows, 60, 119, steady_wall),
        Vec::<String>::new()
    );

    // The rule changed (a lower threshold): still firing, windows afresh.
    let changed = make_config(
        &[("a", "g"), ("c", "g")],
        &LOSS.replace("above_pct = 20", "above_pct = 30"),
    );
    engine.reconfigure(&changed);
    assert_eq!(engine.firing(), ["loss/target/a"]);
    let impact = engine.impact("loss/target/a").expect("a's alert");
    assert!(impact.affected_targets().is_empty(), "{impact:?}");
    // a recovers: resolved under the new rule's clear condition, once.
    let rows: Rows = &[(120, 200, 10, "a", "....."), (120, 200, 10, "c", ".....")];
    let lines = run_engine(&mut engine, rows, 120, 199, steady_wall);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("resolved loss/target/a"), "{lines:?}");
}

/// The bit ring keeps a `VecDeque<bool>` window's semantics: what falls out, the length, the
/// count of `true`s, across word boundaries, wrap-around and `clear`.
#[test]
fn bits_behave_like_a_bounded_deque() {
    for capacity in [0, 1, 2, 63, 64, 65, 100, 128, 130] {
        let mut bits = Bits::new(capacity);
        let mut deque: VecDeque<bool> = VecDeque::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(capacity);
        for step in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if step == 700 {
                bits.clear();
                deque.clear();
            }
            let bit = seed % 3 == 0;
            assert_eq!(
                bits.push(bit),
                push_bounded(&mut deque, bit, capacity as usize),
                "capacity {capacity}, step {step}"
            );
            assert_eq!(bits.len(), deque.len());
            assert_eq!(bits.ones(), deque.iter().filter(|&&b| b).count());
        }
        assert!(bits.words.len() <= (capacity.max(1) as usize).div_ceil(64));
    }
}

/// Issue 15: the engine's memory at 10,000 targets, with the colo example's `target-loss` rule
/// (scope `target`, the last 100 echoes) on a probe of 20-echo rounds. The crate forbids `unsafe`,
/// so no counting allocator: this bounds the structures (sizes, each window's bit ring) and prints
/// an estimate of the heap they own. Measured with a counting allocator outside the crate (live
/// bytes after `Engine::new` and 7 rounds to every target): 1,072 bytes (9 allocations) per
/// target before the compact layout, 448 (4) after.
#[test]
fn ten_thousand_targets_cost_a_few_hundred_bytes_each() {
    const TARGETS: usize = 10_000;
    let mut text = String::from("[agent]\nname = \"a1\"\nsite = \"scl3\"\n");
    for i in 0..TARGETS {
        text.push_str(&format!(
            "[[target]]\nname = \"target-{i:05}\"\nhost = \"10.0.{}.{}\"\n",
            i / 256,
            i % 256
        ));
    }
    text.push_str(
        "[[probe]]\nname = \"ping-fast\"\nkind = \"icmp\"\ninterval = \"20s\"\ntimeout = \"1s\"\ncount = 20\nspacing = \"1s\"\n\
         [[rule]]\nname = \"target-loss\"\nkind = \"loss\"\nseverity = \"minor\"\nprobes = [\"ping-fast\"]\n\
         above_pct = 30\nechoes = 100\nfor = \"2m\"\nclear_for = \"3m\"\nmin_hold = \"10m\"\n",
    );
    let config = Config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    let mut engine = Engine::new(&config);
    let mut round = record("target-00000", ".....", steady_wall(0));
    round.probe = "ping-fast".into();
    round.observation.measurement = Measurement::Ping(PingStats::from_rtts(
        (0..20).map(|i| (i != 3).then_some(10.0)).collect(),
    ));
    // Six rounds of 20 echoes: every window is full (100 echoes) and has evicted.
    for t in 0..6 {
        for i in 0..TARGETS {
            round.target = format!("target-{i:05}");
            assert!(
                engine
                    .observe(Duration::from_secs(20 * t), &round)
                    .is_empty()
            );
        }
    }
    let impact = engine
        .impact("target-loss/target/target-09999")
        .expect("alert");
    assert!(impact.affected.is_empty() && impact.total_targets == 1);

    let rule = &engine.rules[0];
    assert_eq!((rule.members.len(), rule.alerts.len()), (TARGETS, TARGETS));
    assert_eq!(rule.members.capacity(), TARGETS, "members: exact capacity");
    assert_eq!(rule.alerts.capacity(), TARGETS, "alerts: exact capacity");
    assert_eq!(rule.alert_members.len(), TARGETS);
    assert_eq!(engine.pairs.len(), TARGETS);
    assert!(size_of::<Window>() <= 40, "{}", size_of::<Window>());
    assert!(size_of::<Member>() <= 136, "{}", size_of::<Member>());
    let mut heap = 0;
    for member in &rule.members {
        let Window::Echoes { lost } = &member.window else {
            panic!("a loss rule's member has an echo window");
        };
        assert_eq!((lost.len(), lost.ones()), (100, 5));
        assert_eq!(lost.words.len(), 2, "100 echoes in two words");
        heap += size_of_val(&*lost.words);
        // The names are shared: the member, its route, and nothing else.
        assert_eq!(Arc::strong_count(&member.target), 2);
    }
    let names = TARGETS * (2 * size_of::<usize>() + "target-00000".len());
    heap += names;
    for alert in &rule.alerts {
        heap += alert.key.len();
        if let Scope::Target { target } = &alert.scope {
            heap += target.capacity();
        }
    }
    heap += rule.members.capacity() * size_of::<Member>()
        + rule.alerts.capacity() * size_of::<Alert>()
        + size_of_val(&*rule.alert_members)
        + size_of_val(&*engine.pairs);
    let buckets = engine.routes["ping-fast"].capacity().next_power_of_two();
    heap += buckets * (size_of::<(Arc<str>, Route)>() + 1);
    let per_target = heap / TARGETS;
    println!(
        "rules engine, {TARGETS} targets: ~{heap} bytes of heap, ~{per_target} per target \
         (Member {} B, Alert {} B, Window {} B; allocator overhead not counted)",
        size_of::<Member>(),
        size_of::<Alert>(),
        size_of::<Window>()
    );
    assert!(per_target < 512, "{per_target} bytes per target");
}
