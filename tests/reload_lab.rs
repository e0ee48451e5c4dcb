//! Reload (SIGHUP) of the real agent (`vantage run`) in the routed lab, as issue 13 asks it to be
//! proven: with incidents open and the spool holding an outage's points (VictoriaMetrics, in the
//! agent's namespace, stopped while the targets are black-holed), a reload that adds a target,
//! removes one and changes a rule keeps the unchanged target's incidents open (no second draft),
//! resolves the removed target's with a timeline line saying why, probes and stores the new
//! target; two broken configurations (a syntax error, an unknown probe) are rejected with their
//! errors logged and change nothing; once VictoriaMetrics is back, every point stored before it
//! came back is delivered (counted per target).
//!
//! Every echo goes to addresses inside the lab. Needs root and the `victoria-metrics` package;
//! fails (never skips) without them.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lab::{Lab, Router, target_addresses};
use support::{Agent, VictoriaMetrics};
use vantage::incident::{Incident, IncidentDb, Status};
use vantage::sinks::Spool;

/// Runs futures (VictoriaMetrics, its HTTP API) inside the agent's namespace, where it listens.
struct InNetns<'a> {
    ns: &'a lab::Netns,
    runtime: tokio::runtime::Runtime,
}

impl InNetns<'_> {
    fn block_on<F: Future + Send>(&self, future: F) -> F::Output
    where
        F::Output: Send,
    {
        self.ns.inside(|| self.runtime.block_on(future))
    }
}

/// The configuration: `targets` (name, address) pinged every second, a `loss` rule (unchanged by
/// the reload) and a `down` rule of `down_runs` runs (changed by it), the VictoriaMetrics output.
fn config(data: &Path, vm: &str, targets: &[(&str, IpAddr)], down_runs: u32) -> String {
    let mut text = format!(
        "[agent]\nname = \"reload-agent\"\nsite = \"lab\"\ndata_dir = \"{}\"\n",
        data.display()
    );
    for (name, address) in targets {
        text.push_str(&format!(
            "[[target]]\nname = \"{name}\"\nhost = \"{address}\"\nsite = \"lab\"\n"
        ));
    }
    text.push_str(&format!(
        r#"
[[probe]]
name = "ping"
kind = "icmp"
interval = "1s"
count = 1
timeout = "900ms"

[[rule]]
name = "loss"
kind = "loss"
above_pct = 20
clear_below_pct = 5
echoes = 10
for = "1s"
clear_for = "10s"
min_hold = "10s"

[[rule]]
name = "down"
kind = "failures"
failures = 2
runs = {down_runs}
for = "1s"
clear_for = "10s"
min_hold = "10s"

[[output]]
name = "vm"
kind = "influxdb_v2"
url = "{vm}"
org = "lab"
bucket = "vantage"
flush_interval = "200ms"
"#
    ));
    text
}

fn incidents(data: &Path) -> Vec<Incident> {
    IncidentDb::open(data)
        .and_then(|db| db.all())
        .unwrap_or_default()
}

/// Round start times (ms) of the `ping` rounds stored before `before`, per target.
fn stored(data: &Path, before: SystemTime) -> BTreeMap<String, Vec<i64>> {
    let before_ns = before.duration_since(UNIX_EPOCH).expect("clock").as_nanos() as i64;
    let db = rusqlite::Connection::open(data.join("vantage.db")).expect("store");
    let mut query = db
        .prepare(
            "SELECT target, ts_ns FROM ping WHERE probe = 'ping' AND ts_ns < ?1 ORDER BY ts_ns",
        )
        .expect("query");
    let mut stored: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for row in query
        .query_map([before_ns], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .expect("rows")
    {
        let (target, ts) = row.expect("row");
        stored.entry(target).or_default().push(ts / 1_000_000); // VictoriaMetrics keeps ms
    }
    stored
}

fn wait_for<T>(
    what: &str,
    limit: Duration,
    agent: &Agent,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rows_of(data: &Path, target: &str) -> i64 {
    let db = rusqlite::Connection::open(data.join("vantage.db")).expect("store");
    db.query_row(
        // Ping rounds are compact rows (the `ping` view); other runs are observations.
        "SELECT (SELECT COUNT(*) FROM ping WHERE target = ?1)
              + (SELECT COUNT(*) FROM observations WHERE target = ?1)",
        [target],
        |r| r.get(0),
    )
    .expect("count")
}

#[test]
fn sighup_reloads_without_losing_open_incidents_or_spooled_points() {
    support::init_logs();
    let lab = Lab::routed();
    let dir = tempfile::tempdir().expect("tempdir");
    let data: PathBuf = dir.path().join("data");
    let net = InNetns {
        ns: lab.agent(),
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    };
    let mut vm = net.block_on(VictoriaMetrics::start(&dir.path().join("vm")));
    let addresses = target_addresses(3);
    let [stays, gone, new] = [0, 1, 2].map(|i| IpAddr::V4(addresses[i]));
    let config_path = dir.path().join("vantage.toml");
    std::fs::write(
        &config_path,
        config(&data, &vm.url, &[("stays", stays), ("gone", gone)], 3),
    )
    .expect("config");
    let netns = ["ip", "netns", "exec", lab.agent().name()];
    let mut agent = Agent::start(&netns, &config_path, dir.path().join("agent.log"));
    wait_for(
        "points in VictoriaMetrics",
        Duration::from_secs(30),
        &agent,
        || {
            (!net
                .block_on(vm.export(r#"{__name__="ping_sent"}"#))
                .is_empty())
            .then_some(())
        },
    );

    // The outage: VictoriaMetrics down, both targets black-holed until all four incidents open.
    vm.process.stop();
    lab.blackhole(Router::R1, stays);
    lab.blackhole(Router::R1, gone);
    wait_for(
        "four incidents open",
        Duration::from_secs(40),
        &agent,
        || {
            let open = incidents(&data).iter().filter(|i| i.is_open()).count();
            (open == 4).then_some(())
        },
    );
    let spooled = Spool::open_read_only(&data)
        .expect("spool")
        .expect("spool.db")
        .totals()
        .expect("totals")[0]
        .pending_points;
    assert!(spooled > 0, "the spool holds the outage's points");

    // Reload: `gone` removed, `new` added, the `down` rule changed (4 runs instead of 3).
    std::fs::write(
        &config_path,
        config(&data, &vm.url, &[("stays", stays), ("new", new)], 4),
    )
    .expect("config");
    agent.hangup();
    let summary = wait_for("the reload", Duration::from_secs(20), &agent, || {
        agent
            .log()
            .lines()
            .find(|l| l.contains("reloaded"))
            .map(str::to_string)
    });
    assert!(
        summary.contains("targets +1 [new] -1 [gone] ~0")
            && summary.contains("jobs +1 [ping/new] -1 [ping/gone] ~0")
            && summary.contains("rules +0 -0 ~1 [down]")
            && summary.contains("incidents resolved 2"),
        "{summary}"
    );
    wait_for(
        "the new target stored",
        Duration::from_secs(15),
        &agent,
        || (rows_of(&data, "new") >= 3).then_some(()),
    );
    let all = incidents(&data);
    assert_eq!(all.len(), 4, "no second draft: {all:#?}");
    for incident in &all {
        let (open, why) = match incident.key.as_str() {
            "loss/target/stays" | "down/target/stays" => (true, None),
            "loss/target/gone" | "down/target/gone" => (
                false,
                Some("Resolved: target `gone` removed from the configuration at reload."),
            ),
            other => panic!("unexpected incident {other}: {all:#?}"),
        };
        assert_eq!(incident.status == Status::Open, open, "{incident:#?}");
        if let Some(why) = why {
            assert_eq!(incident.timeline.last().map(|e| e.text.as_str()), Some(why));
        }
    }

    // Broken configurations: rejected with their errors logged, the agent runs on unchanged.
    let good = std::fs::read_to_string(&config_path).expect("config");
    for (broken, error) in [
        (format!("{good}\n[[target]\nname = "), "reload rejected"),
        (
            good.replace(
                "name = \"down\"\n",
                "name = \"down\"\nprobes = [\"nope\"]\n",
            ),
            "nope",
        ),
    ] {
        let rejected = agent.log().matches("reload rejected").count();
        std::fs::write(&config_path, broken).expect("config");
        agent.hangup();
        wait_for("the rejection", Duration::from_secs(10), &agent, || {
            let log = agent.log();
            (log.matches("reload rejected").count() > rejected).then_some(())
        });
        assert!(agent.log().contains(error), "{}", agent.log());
    }
    let (new_rows, gone_rows) = (rows_of(&data, "new"), rows_of(&data, "gone"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent.running(), "{}", agent.log());
    assert!(rows_of(&data, "new") > new_rows, "still probing new");
    assert_eq!(rows_of(&data, "gone"), gone_rows, "gone stays removed");
    assert_eq!(incidents(&data).len(), 4, "{:#?}", incidents(&data));

    // VictoriaMetrics back: every point stored until then is delivered, `gone`'s included.
    let back = SystemTime::now();
    net.block_on(vm.restart());
    let mut delivered: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut expected = BTreeMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        // Read again each time: a round started before `back` may be stored after it.
        expected = stored(&data, back);
        delivered.clear();
        for (labels, timestamps) in net.block_on(vm.export(r#"{__name__="ping_sent"}"#)) {
            let target = labels["target"].as_str().expect("target").to_string();
            let before = back.duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64;
            delivered
                .entry(target)
                .or_default()
                .extend(timestamps.into_iter().filter(|&t| t < before));
        }
        for timestamps in delivered.values_mut() {
            timestamps.sort_unstable();
            timestamps.dedup();
        }
        if delivered == expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(expected.contains_key("gone") && expected.contains_key("new"));
    let counts = |m: &BTreeMap<String, Vec<i64>>| -> Vec<(String, usize)> {
        m.iter().map(|(t, v)| (t.clone(), v.len())).collect()
    };
    eprintln!(
        "spooled during the outage: {spooled}; delivered per target: {:?}",
        counts(&delivered)
    );
    assert_eq!(
        counts(&delivered),
        counts(&expected),
        "every stored round delivered; agent log:\n{}",
        agent.log()
    );
    assert_eq!(delivered, expected);

    // Still firing since before the reload: the rules engine never saw a new breach of `stays`.
    let log = agent.stop();
    for key in ["loss/target/stays", "down/target/stays"] {
        let breaches = log
            .matches(&format!("gathering evidence for the draft key={key}\n"))
            .count();
        assert_eq!(
            breaches, 1,
            "{key} breached once, before the reload:\n{log}"
        );
    }
}
