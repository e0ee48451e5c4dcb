//! Path traces by the `vantage` binary in the routed lab (`lab` crate: agent → r1 → r2 → target in
//! network namespaces): the one-shot `vantage trace` with loss on r2 and with delay at r1, a trace
//! probe noticing a reroute (and not noticing one after a restart), the trace an incident draft
//! gets when loss or latency opens it, and traces without CAP_NET_RAW (refused, never "not
//! reached"). Needs root; fails (never skips) without it.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use lab::{Lab, Router, addr};
use rusqlite::Connection;
use support::{Agent, VANTAGE};

fn wait_until(what: &str, limit: Duration, agent: &Agent, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn vantage_trace_names_the_hop_where_loss_begins() {
    let lab = Lab::routed();
    lab.inject_loss(Router::R2, 30);
    let target = addr::TARGET.to_string();
    let rounds = 40;
    let output = lab
        .agent()
        .command(VANTAGE)
        .args(["trace", "--json", "--interval-ms", "50", "--max-ttl", "8"])
        .args(["--count", &rounds.to_string(), &target])
        .output()
        .expect("run vantage trace");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let hops = v["hops"].as_array().expect("hops");
    assert_eq!(hops.len(), 3, "{v}");
    // `address` as the README's `trace_hop` has it; every address in `addresses`.
    let address = |i: usize| hops[i]["address"].as_str().unwrap_or("???");
    assert_eq!(
        [address(0), address(1), address(2)],
        ["198.18.0.1", "198.18.1.2", "198.18.2.2"],
        "{v}"
    );
    for hop in hops {
        assert_eq!(
            hop["addresses"],
            serde_json::json!([hop["address"]]),
            "{hop}"
        );
    }
    for hop in hops {
        for field in [
            "ttl",
            "sent",
            "received",
            "loss_pct",
            "rtt_last_ms",
            "rtt_avg_ms",
            "rtt_best_ms",
            "rtt_worst_ms",
            "rtt_stddev_ms",
        ] {
            assert!(hop[field].is_number(), "{field} in {hop}");
        }
        assert_eq!(hop["sent"], rounds);
    }
    // Probes for hops 1 and 2 never cross r2's forwarding path; probes to the target cross it
    // both ways and survive with probability 0.7² = 0.49. Bounds: ±4σ over `rounds` probes.
    assert_eq!(hops[0]["loss_pct"], 0.0, "{v}");
    assert_eq!(hops[1]["loss_pct"], 0.0, "{v}");
    let loss = hops[2]["loss_pct"].as_f64().expect("loss");
    let sigma = (0.51f64 * 0.49 / f64::from(rounds)).sqrt() * 100.0;
    assert!(
        (loss - 51.0).abs() <= 4.0 * sigma,
        "hop 3 loss {loss}%: {v}"
    );
    assert_eq!(v["reached"], true);
    assert_eq!(v["verdict"]["verdict"], "loss_from");
    assert_eq!(v["verdict"]["ttl"], 3);
    assert_eq!(v["verdict"]["address"], "198.18.2.2");
    let verdict = v["verdict_text"].as_str().expect("verdict text");
    assert!(
        verdict.starts_with("loss starts at hop 3, 198.18.2.2 ("),
        "{verdict}"
    );

    // The default output: what an on-call engineer pastes into the bug.
    let output = lab
        .agent()
        .command(VANTAGE)
        .args(["trace", "--count", "20", "--interval-ms", "50", &target])
        .output()
        .expect("run vantage trace");
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(lines[0].starts_with("Start: "), "{text}");
    assert!(
        lines[1].starts_with("HOST: ") && lines[1].ends_with("Snt   Last   Avg  Best  Wrst StDev"),
        "{text}"
    );
    assert!(lines[2].starts_with("  1.|-- 198.18.0.1 "), "{text}");
    assert!(lines[3].starts_with("  2.|-- 198.18.1.2 "), "{text}");
    assert!(lines[4].starts_with("  3.|-- 198.18.2.2 "), "{text}");
    assert!(
        lines[5].starts_with("Verdict: loss starts at hop 3, 198.18.2.2"),
        "{text}"
    );
}

/// (start ns, path hash, path_changed, hop addresses) of every stored trace, oldest first.
fn traces(data: &Path) -> Vec<(i64, String, bool, Vec<String>)> {
    let Ok(db) = Connection::open(data.join("vantage.db")) else {
        return Vec::new();
    };
    let Ok(mut query) = db.prepare(
        "SELECT ts_ns, fields FROM observations WHERE measurement = 'trace' ORDER BY ts_ns",
    ) else {
        return Vec::new(); // not created yet
    };
    query
        .query_map([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })
        .expect("rows")
        .map(|row| {
            let (ts, fields) = row.expect("row");
            let v: serde_json::Value = serde_json::from_str(&fields).expect("fields");
            let hops = v["hops"]
                .as_array()
                .expect("hops")
                .iter()
                .map(|h| h["addresses"][0].as_str().unwrap_or("???").to_string())
                .collect();
            (
                ts,
                v["path_hash"].as_str().expect("hash").to_string(),
                v["path_changed"].as_bool().expect("path_changed"),
                hops,
            )
        })
        .collect()
}

fn now_ns() -> i64 {
    probes::unix_ns(std::time::SystemTime::now())
}

#[test]
fn a_trace_probe_flags_a_reroute_once_and_not_after_a_restart() {
    let lab = Lab::routed();
    let far = "198.19.0.5";
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nname = \"lab-agent\"\nsite = \"lab\"\ndata_dir = \"{}\"\n\n\
             [[target]]\nname = \"far\"\nhost = \"{far}\"\nsite = \"target\"\n\n\
             [[probe]]\nname = \"path\"\nkind = \"trace\"\ninterval = \"1s\"\ntimeout = \"100ms\"\ncount = 3\nmax_ttl = 8\n",
            data.display()
        ),
    )
    .expect("config");
    let netns = ["ip", "netns", "exec", lab.agent().name()];
    let agent = Agent::start(&netns, &config, dir.path().join("agent.log"));
    wait_until("three traces", Duration::from_secs(20), &agent, || {
        traces(&data).len() >= 3
    });

    let changed_at = probes::unix_ns(lab.reroute_around_r2());

    wait_until(
        "three traces after the reroute",
        Duration::from_secs(20),
        &agent,
        || traces(&data).iter().filter(|t| t.0 > changed_at).count() >= 3,
    );
    agent.stop();

    let old_path = ["198.18.0.1", "198.18.1.2", far];
    let new_path = ["198.18.0.1", far];
    let rows = traces(&data);
    let trace_ns = 500_000_000; // 3 rounds of 100 ms, and then some
    for (ts, _, changed, hops) in rows.iter().filter(|t| t.0 + trace_ns < changed_at) {
        assert_eq!(hops, &old_path, "before the reroute ({ts}): {rows:?}");
        assert!(!changed, "no change before the reroute: {rows:?}");
    }
    let after: Vec<_> = rows.iter().filter(|t| t.0 > changed_at).collect();
    for (_, _, _, hops) in &after {
        assert_eq!(hops, &new_path, "{rows:?}");
    }
    let flagged: Vec<_> = rows.iter().filter(|t| t.2).collect();
    // One flag for the new path (two if a trace straddled the change and saw a mix).
    assert!(
        (1..=2).contains(&flagged.len()),
        "the reroute is flagged once: {rows:?}"
    );
    assert!(
        flagged.iter().all(|t| t.0 + trace_ns >= changed_at),
        "{rows:?}"
    );
    assert!(
        !after.last().expect("traces").2,
        "a stable new path is not a change"
    );
    let new_hash = after.last().expect("traces").1.clone();

    // A restart remembers the last path: its first trace is not a change.
    let restarted_at = now_ns();
    let agent = Agent::start(&netns, &config, dir.path().join("agent2.log"));
    wait_until(
        "two traces after the restart",
        Duration::from_secs(20),
        &agent,
        || traces(&data).iter().filter(|t| t.0 > restarted_at).count() >= 2,
    );
    agent.stop();
    let rows = traces(&data);
    for (_, hash, changed, _) in rows.iter().filter(|t| t.0 > restarted_at) {
        assert_eq!(hash, &new_hash);
        assert!(
            !changed,
            "the first trace after a restart is compared with the stored one: {rows:?}"
        );
    }
}

#[test]
fn an_incident_opened_by_loss_carries_the_trace_and_its_verdict() {
    let lab = Lab::routed();
    let far = "198.19.0.7";
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nname = \"lab-agent\"\nsite = \"lab\"\ndata_dir = \"{}\"\n\n\
             [[target]]\nname = \"far\"\nhost = \"{far}\"\nsite = \"target\"\n\n\
             [[probe]]\nname = \"ping\"\nkind = \"icmp\"\ninterval = \"1s\"\ntimeout = \"400ms\"\ncount = 10\nspacing = \"50ms\"\n\n\
             [[probe]]\nname = \"path\"\nkind = \"trace\"\ninterval = \"2s\"\ntimeout = \"200ms\"\ncount = 5\nmax_ttl = 8\n\n\
             [[rule]]\nname = \"loss\"\nkind = \"loss\"\nprobes = [\"ping\"]\nabove_pct = 20\nechoes = 20\nfor = \"2s\"\nclear_for = \"5s\"\nmin_hold = \"5s\"\n",
            data.display()
        ),
    )
    .expect("config");
    // 30% of what r2 forwards is dropped, both ways: an echo to the target is lost 51% of the
    // time, and the draft's 20-round trace still sees the target at hop 3 (all 20 lost: 1e-6).
    lab.inject_loss(Router::R2, 30);
    let netns = ["ip", "netns", "exec", lab.agent().name()];
    let agent = Agent::start(&netns, &config, dir.path().join("agent.log"));
    let incidents = data.join("incidents");
    let mut draft = String::new();
    wait_until("an incident draft", Duration::from_secs(40), &agent, || {
        let Some(folder) = std::fs::read_dir(&incidents)
            .ok()
            .and_then(|mut entries| entries.next())
            .and_then(Result::ok)
        else {
            return false;
        };
        draft = std::fs::read_to_string(folder.path().join("incident.md")).unwrap_or_default();
        !draft.is_empty()
    });
    // While it is open the route changes (around r2, and so around the loss): the trace probe
    // flags the new path, and the incident's timeline says so, with the path.
    lab.reroute_around_r2();
    let mut timeline = String::new();
    wait_until(
        "the path change in the draft",
        Duration::from_secs(30),
        &agent,
        || {
            let Some(folder) = std::fs::read_dir(&incidents)
                .ok()
                .and_then(|mut entries| entries.next())
                .and_then(Result::ok)
            else {
                return false;
            };
            let md = std::fs::read_to_string(folder.path().join("incident.md")).unwrap_or_default();
            timeline = md
                .split("## Timeline (UTC)")
                .nth(1)
                .unwrap_or_default()
                .to_string();
            timeline.contains("The path to far changed")
        },
    );
    agent.stop();
    // Two hops now; the trace that noticed may have straddled the change and seen r2 too at TTL 2
    // ("198.18.1.2/198.19.0.7").
    let entry = timeline
        .lines()
        .find(|l| l.contains("The path to far changed"))
        .expect("the entry");
    assert!(
        entry.contains("The path to far changed (trace probe `path`): 2 hops, 198.18.0.1 → ")
            && entry.ends_with(&format!("{far}.")),
        "{timeline}"
    );
    assert_eq!(
        timeline.matches("The path to far changed").count(),
        1,
        "one change, however lossy the traces before it: {timeline}"
    );
    assert!(
        draft.contains(&format!(
            "- Path trace verdict: **loss starts at hop 3, {far} ("
        )),
        "{draft}"
    );
    assert!(
        draft.contains("$ vantage trace --count 20 198.19.0.7\nStart: "),
        "{draft}"
    );
    assert!(draft.contains("HOST: lab-agent "), "{draft}");
    assert!(draft.contains("  1.|-- 198.18.0.1 "), "{draft}");
    assert!(draft.contains("  2.|-- 198.18.1.2 "), "{draft}");
    assert!(draft.contains(&format!("  3.|-- {far} ")), "{draft}");
}

/// `vantage trace --json` from the lab's agent, which must reach `target` (exit 0): its output.
fn trace_json(lab: &Lab, target: &str, rounds: u32) -> serde_json::Value {
    let output = lab
        .agent()
        .command(VANTAGE)
        .args(["trace", "--json", "--interval-ms", "300", "--max-ttl", "8"])
        .args(["--count", &rounds.to_string(), target])
        .output()
        .expect("run vantage trace");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).expect("JSON")
}

#[test]
fn vantage_trace_names_the_hop_where_latency_steps_up() {
    let mut lab = Lab::routed();
    // r1 holds what it forwards toward the target: its own replies (hop 1) are fast, r2's (hop 2)
    // and the target's cross r1's forwarding path and are 120 ms slower.
    lab.inject_delay(Router::R1, Duration::from_millis(120));
    for (target, r1, r2) in [
        ("198.18.2.2", "198.18.0.1", "198.18.1.2"),
        ("fd00:18:2::2", "fd00:18::1", "fd00:18:1::2"),
    ] {
        let v = trace_json(&lab, target, 10);
        let hops = v["hops"].as_array().expect("hops");
        let addresses: Vec<&str> = hops.iter().filter_map(|h| h["address"].as_str()).collect();
        assert_eq!(addresses, [r1, r2, target], "{v}");
        let step = &v["latency_step"];
        assert_eq!(step["ttl"], 2, "{v}");
        assert_eq!(step["address"], r2, "{v}");
        let rise = step["rise_ms"].as_f64().expect("rise_ms");
        assert!((115.0..=130.0).contains(&rise), "rise {rise} ms: {v}");
        let text = v["verdict_text"].as_str().expect("verdict text");
        assert!(
            text.starts_with("no loss to the destination; latency rises by 1")
                && text.ends_with(&format!(" ms at hop 2, {r2}")),
            "{text}"
        );
    }
    // Without the delay, no step.
    lab.clear_delay(Router::R1);
    let v = trace_json(&lab, "198.18.2.2", 5);
    assert!(v["latency_step"].is_null(), "{v}");
    assert_eq!(v["verdict_text"], "no loss to the destination", "{v}");
}

#[test]
fn an_incident_opened_by_latency_says_where_it_starts() {
    let mut lab = Lab::routed();
    let far = "198.19.0.9";
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nname = \"lab-agent\"\nsite = \"lab\"\ndata_dir = \"{}\"\n\n\
             [[target]]\nname = \"far\"\nhost = \"{far}\"\nsite = \"target\"\n\n\
             [[probe]]\nname = \"ping\"\nkind = \"icmp\"\ninterval = \"1s\"\ntimeout = \"400ms\"\ncount = 5\nspacing = \"50ms\"\n\n\
             [[rule]]\nname = \"slow\"\nkind = \"latency\"\nprobes = [\"ping\"]\nabove_ms = 60\nruns = 2\nfor = \"2s\"\nclear_for = \"5s\"\nmin_hold = \"5s\"\n",
            data.display()
        ),
    )
    .expect("config");
    lab.inject_delay(Router::R1, Duration::from_millis(120));
    let netns = ["ip", "netns", "exec", lab.agent().name()];
    let agent = Agent::start(&netns, &config, dir.path().join("agent.log"));
    let incidents = data.join("incidents");
    let mut draft = String::new();
    // The trace at breach takes 20 rounds of 400 ms: wait for the draft that carries it.
    wait_until(
        "a draft with its trace",
        Duration::from_secs(40),
        &agent,
        || {
            let Some(folder) = std::fs::read_dir(&incidents)
                .ok()
                .and_then(|mut entries| entries.next())
                .and_then(Result::ok)
            else {
                return false;
            };
            draft = std::fs::read_to_string(folder.path().join("incident.md")).unwrap_or_default();
            draft.contains("- Path trace verdict: ")
        },
    );
    agent.stop();
    let verdict = draft
        .lines()
        .find(|l| l.starts_with("- Path trace verdict: "))
        .expect("the verdict line");
    assert!(
        verdict
            .starts_with("- Path trace verdict: **no loss to the destination; latency rises by 1")
            && verdict.ends_with(" ms at hop 2, 198.18.1.2**"),
        "{draft}"
    );
    let rise: f64 = verdict
        .split("latency rises by ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .expect("the rise in ms");
    assert!((115.0..=130.0).contains(&rise), "{verdict}");
    assert!(draft.contains("  2.|-- 198.18.1.2 "), "{draft}");
}

/// Run `vantage` in the lab's agent namespace as `nobody`, without capabilities, with ping sockets
/// allowed for every group (the namespace's own `ping_group_range`): what a user without
/// CAP_NET_RAW on a systemd distribution has.
fn unprivileged(lab: &Lab) -> Vec<String> {
    lab.agent()
        .run(["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
    [
        "ip",
        "netns",
        "exec",
        lab.agent().name(),
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--inh-caps=-all",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn without_cap_net_raw_vantage_trace_refuses_in_both_families() {
    let lab = Lab::routed();
    let wrapper = unprivileged(&lab);
    for target in ["198.18.2.2", "fd00:18:2::2"] {
        let output = std::process::Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .args([
                VANTAGE,
                "trace",
                "--count",
                "2",
                "--interval-ms",
                "50",
                target,
            ])
            .output()
            .expect("run vantage trace");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert_eq!(output.status.code(), Some(2), "{target}: {stdout}{stderr}");
        assert!(stdout.is_empty(), "{target}: {stdout}");
        assert!(
            stderr.contains("path traces need raw sockets (CAP_NET_RAW)")
                && stderr.contains("setcap cap_net_raw+ep")
                && !stderr.contains("not reached"),
            "{target}: {stderr}"
        );
    }
}

#[test]
fn without_cap_net_raw_a_trace_probe_stores_why_not_unreached() {
    let lab = Lab::routed();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("vantage.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nname = \"lab-agent\"\nsite = \"lab\"\ndata_dir = \"{}\"\n\n\
             [[target]]\nname = \"v4\"\nhost = \"198.18.2.2\"\n\n\
             [[target]]\nname = \"v6\"\nhost = \"fd00:18:2::2\"\n\n\
             [[probe]]\nname = \"path\"\nkind = \"trace\"\ninterval = \"1s\"\ntimeout = \"100ms\"\ncount = 3\nmax_ttl = 8\n",
            data.display()
        ),
    )
    .expect("config");
    // nobody (65534) runs the agent: it reads the config and writes the data there.
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).expect("chown");
    std::os::unix::fs::chown(&config, Some(65534), Some(65534)).expect("chown");
    let wrapper = unprivileged(&lab);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = Agent::start(&wrapper, &config, dir.path().join("agent.log"));
    let rows = || -> Vec<(String, bool, Option<String>, Option<String>)> {
        let Ok(db) = Connection::open(data.join("vantage.db")) else {
            return Vec::new();
        };
        let Ok(mut query) = db.prepare(
            "SELECT target, success, failure_kind, failure FROM observations \
             WHERE measurement = 'trace' ORDER BY ts_ns",
        ) else {
            return Vec::new();
        };
        query
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .map(|rows| rows.filter_map(Result::ok).collect())
            .unwrap_or_default()
    };
    wait_until(
        "two traces of each target",
        Duration::from_secs(20),
        &agent,
        || {
            let rows = rows();
            ["v4", "v6"]
                .iter()
                .all(|t| rows.iter().filter(|r| r.0 == *t).count() >= 2)
        },
    );
    let log = agent.stop();
    // Every trace of both families: a `send` failure that says why.
    let wrong: Vec<_> = rows()
        .into_iter()
        .filter(|(_, success, kind, failure)| {
            *success
                || kind.as_deref() != Some("send")
                || !failure
                    .as_deref()
                    .is_some_and(|f| f.starts_with("path traces need raw sockets (CAP_NET_RAW)"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "(target, success, kind, failure): {wrong:#?}"
    );
    assert!(
        log.contains("each run of these trace probes will fail"),
        "the agent warns at start:\n{log}"
    );
}
