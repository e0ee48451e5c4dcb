//! `Agent::reconfigure` in-process, on loopback: what a reload finds changed (targets, jobs,
//! rules, outputs, by name), what it keeps (the open incident of an unchanged target: no second
//! draft; an output's spooled points), what it resolves (the incidents of a removed target or rule,
//! with a timeline line saying why), and what it refuses (a key that needs a restart), the agent
//! running on unchanged.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use vantage::agent::{Agent, Changes};
use vantage::config::Config;
use vantage::incident::{Incident, IncidentDb, Status};
use vantage::sinks::Spool;

/// `open_port` accepts, `closed_port` refuses. Targets `up` and `down` always; `extra` targets
/// are probed on the closed port (`closed`) or the open one (`open`); the `down-refuses` rule
/// (`runs` runs) watches the closed port; `outputs` is appended as is.
#[derive(Clone, Copy)]
struct Layout<'a> {
    open_targets: &'a [&'a str],
    closed_targets: &'a [&'a str],
    rule_runs: Option<u32>,
    outputs: &'a str,
    data_dir: &'a str,
}

fn config(dir: &Path, ports: (u16, u16), layout: &Layout<'_>) -> Config {
    let (open_port, closed_port) = ports;
    let mut text = format!(
        "[agent]\nname = \"reload-agent\"\nsite = \"local\"\ndata_dir = \"{}\"\n",
        dir.join(layout.data_dir).display()
    );
    for name in layout.open_targets.iter().chain(layout.closed_targets) {
        text.push_str(&format!(
            "[[target]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nsite = \"local\"\n"
        ));
    }
    let list = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    text.push_str(&format!(
        "[[probe]]\nname = \"open-port\"\nkind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nport = {open_port}\ntargets = [{}]\n\
         [[probe]]\nname = \"closed-port\"\nkind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nport = {closed_port}\ntargets = [{}]\n",
        list(layout.open_targets),
        list(layout.closed_targets),
    ));
    if let Some(runs) = layout.rule_runs {
        text.push_str(&format!(
            "[[rule]]\nname = \"down-refuses\"\nkind = \"failures\"\nprobes = [\"closed-port\"]\nfailures = 2\nruns = {runs}\nfor = \"1s\"\nclear_for = \"2s\"\nmin_hold = \"2s\"\n"
        ));
    }
    text.push_str(layout.outputs);
    let path = dir.join("vantage.toml");
    std::fs::write(&path, text).expect("write the config");
    Config::load(&path).unwrap_or_else(|errors| panic!("{errors}"))
}

fn changes(added: &[&str], removed: &[&str], changed: &[&str]) -> Changes {
    let owned = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    Changes {
        added: owned(added),
        removed: owned(removed),
        changed: owned(changed),
    }
}

fn incidents(data: &Path) -> Vec<Incident> {
    IncidentDb::open(data)
        .and_then(|db| db.all())
        .unwrap_or_default()
}

fn incident_of<'a>(all: &'a [Incident], key: &str) -> &'a Incident {
    all.iter()
        .find(|i| i.key == key)
        .unwrap_or_else(|| panic!("no incident {key}: {all:#?}"))
}

fn stored(data: &Path, target: &str) -> u64 {
    let db = rusqlite::Connection::open(data.join("vantage.db")).expect("open the store");
    db.query_row(
        "SELECT COUNT(*) FROM observations WHERE target = ?1",
        [target],
        |row| row.get(0),
    )
    .expect("count observations")
}

async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfigure_adds_removes_and_changes_without_losing_open_incidents_or_spooled_points() {
    let open = TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let ports = (open.local_addr().expect("addr").port(), closed_port);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut layout = Layout {
        open_targets: &["up"],
        closed_targets: &["down", "gone"],
        rule_runs: Some(3),
        outputs: "",
        data_dir: "data",
    };
    let mut agent = Agent::start(config(dir.path(), ports, &layout))
        .await
        .expect("the agent starts");
    wait_until("both refused targets' incidents open", || {
        incidents(&data).iter().filter(|i| i.is_open()).count() == 2
    })
    .await;

    // `gone` removed, `new` added, the rule changed (4 runs instead of 3).
    layout.open_targets = &["up", "new"];
    layout.closed_targets = &["down"];
    layout.rule_runs = Some(4);
    let report = agent
        .reconfigure(config(dir.path(), ports, &layout))
        .await
        .expect("reloaded");
    assert_eq!(report.targets, changes(&["new"], &["gone"], &[]));
    // The probes' target lists changed; no job's own settings did.
    assert_eq!(
        report.probes,
        changes(&[], &[], &["closed-port", "open-port"])
    );
    assert_eq!(
        report.jobs,
        changes(&["open-port/new"], &["closed-port/gone"], &[])
    );
    assert_eq!(report.rules, changes(&[], &[], &["down-refuses"]));
    assert!(report.outputs.is_empty() && report.incident_sinks.is_empty());
    let gone_id = incident_of(&incidents(&data), "down-refuses/target/gone")
        .id
        .clone();
    assert_eq!(report.incidents_resolved, [gone_id]);
    assert_eq!(agent.snapshot().jobs, 3);
    let line = report.to_string();
    assert!(
        line.contains("targets +1 [new] -1 [gone] ~0")
            && line.contains("rules +0 -0 ~1 [down-refuses]"),
        "{line}"
    );

    let all = incidents(&data);
    let gone = incident_of(&all, "down-refuses/target/gone");
    assert_eq!(gone.status, Status::Resolved);
    let last = gone.timeline.last().expect("a timeline");
    assert_eq!(
        last.text,
        "Resolved: target `gone` removed from the configuration at reload."
    );
    // The new target is probed and stored; the unchanged one's incident stays the one open.
    wait_until("the new target stored", || stored(&data, "new") >= 2).await;
    let gone_rows = stored(&data, "gone");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        stored(&data, "gone") <= gone_rows + 1,
        "gone is no longer probed"
    );
    let all = incidents(&data);
    assert_eq!(all.len(), 2, "no second draft for down: {all:#?}");
    assert_eq!(
        incident_of(&all, "down-refuses/target/down").status,
        Status::Open
    );

    // A key that needs a restart: refused, named, nothing changed.
    let mut moved = layout;
    moved.data_dir = "elsewhere";
    let refused = agent
        .reconfigure(config(dir.path(), ports, &moved))
        .await
        .expect_err("data_dir needs a restart");
    assert!(
        format!("{refused:#}").contains("agent.data_dir changed: that needs a restart"),
        "{refused:#}"
    );
    let before = stored(&data, "new");
    wait_until("probing goes on", || stored(&data, "new") > before).await;

    // An output added while nothing listens: it spools; changed: it keeps its spool; removed:
    // its points stay in spool.db.
    let output = |batch: u32| {
        format!(
            "[[output]]\nname = \"down-store\"\nkind = \"influxdb_v2\"\nurl = \"http://127.0.0.1:{closed_port}\"\norg = \"o\"\nbucket = \"b\"\nbatch_size = {batch}\n"
        )
    };
    let (first, second) = (output(100), output(50));
    layout.outputs = &first;
    let report = agent
        .reconfigure(config(dir.path(), ports, &layout))
        .await
        .expect("output added");
    assert_eq!(report.outputs, changes(&["down-store"], &[], &[]));
    wait_until("points spooled", || {
        agent
            .snapshot()
            .outputs
            .first()
            .is_some_and(|o| o.spool_points >= 5)
    })
    .await;
    layout.outputs = &second;
    let spooled = agent.snapshot().outputs[0].spool_points;
    let report = agent
        .reconfigure(config(dir.path(), ports, &layout))
        .await
        .expect("output changed");
    assert_eq!(report.outputs, changes(&[], &[], &["down-store"]));
    let kept = agent.snapshot().outputs[0].spool_points;
    assert!(
        kept >= spooled,
        "changed output kept its spool: {kept} < {spooled}"
    );

    // The rule removed, and the output: down's incident resolves, saying why.
    layout.rule_runs = None;
    layout.outputs = "";
    let report = agent
        .reconfigure(config(dir.path(), ports, &layout))
        .await
        .expect("rule removed");
    assert_eq!(report.rules, changes(&[], &["down-refuses"], &[]));
    assert_eq!(report.outputs, changes(&[], &["down-store"], &[]));
    let all = incidents(&data);
    let down = incident_of(&all, "down-refuses/target/down");
    assert_eq!(down.status, Status::Resolved);
    assert_eq!(
        down.timeline.last().expect("timeline").text,
        "Resolved: rule `down-refuses` removed from the configuration at reload."
    );
    assert!(agent.snapshot().outputs.is_empty());
    let summary = agent.stop().await.expect("stops");
    assert!(summary.outputs.is_empty());
    let spool = Spool::open_read_only(&data)
        .expect("spool")
        .expect("spool.db exists");
    let totals = spool.totals().expect("totals");
    let removed = totals
        .iter()
        .find(|t| t.name == "down-store")
        .expect("the removed output's rows");
    assert!(
        removed.pending_points >= kept,
        "the removed output's points stay in the spool: {removed:?}"
    );
}
