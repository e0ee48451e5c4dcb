//! The Grafana dashboards in `dashboards/`: structurally sound (valid JSON, unique uids and panel
//! ids, the provisioned data source, only names of the README's measurement schema, provisioning
//! files that parse), and proven against real data: the agent runs in the routed lab writing to a
//! real InfluxDB 1.x long enough to produce every measurement — an incident opened and resolved, an
//! outage of InfluxDB, a path change included — then every panel, variable and annotation query
//! runs against it the way Grafana would send it, and must answer with the columns it promises.

mod grafana;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use grafana::Source;
use lab::{Lab, Netns, Router, addr};
use serde_json::Value;
use support::Influxd;
use support::{Agent, HttpServer};

const DATASOURCE_UID: &str = "vantage-influxdb";

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(grafana::repo().join(path)).expect(path);
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

#[test]
fn the_committed_json_is_what_generate_py_writes() {
    let python = support::require_binary("python3", "python3");
    let output = std::process::Command::new(python)
        .arg(grafana::repo().join("dashboards/generate.py"))
        .arg("--check")
        .output()
        .expect("run generate.py");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn provisioning_files_parse_and_name_the_data_source_the_dashboards_use() {
    let datasources = yaml("dashboards/provisioning/datasources/vantage.yaml");
    let source = &datasources["datasources"][0];
    assert_eq!(source["uid"], DATASOURCE_UID, "{datasources}");
    assert_eq!(source["type"], "influxdb");
    assert!(
        source["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http"))
    );
    assert!(source["jsonData"]["dbName"].is_string(), "{source}");

    let providers = yaml("dashboards/provisioning/dashboards/vantage.yaml");
    let provider = &providers["providers"][0];
    assert_eq!(provider["type"], "file", "{providers}");
    assert!(provider["options"]["path"].is_string(), "{provider}");
}

/// Every `datasource` object anywhere in `json`.
fn datasource_refs<'a>(json: &'a Value, out: &mut Vec<&'a Value>) {
    match json {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "datasource" {
                    out.push(value);
                }
                datasource_refs(value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| datasource_refs(v, out)),
        _ => {}
    }
}

#[test]
fn dashboards_have_unique_uids_and_ids_and_use_the_provisioned_data_source() {
    let dashboards = grafana::dashboards();
    assert_eq!(
        dashboards.len(),
        6,
        "fleet, who-sees-it, latency, path, services, agent"
    );
    let mut uids = BTreeSet::new();
    for (file, json) in &dashboards {
        let uid = json["uid"].as_str().expect("uid");
        assert!(uids.insert(uid), "{file}: uid {uid} used twice");
        assert!(
            json["schemaVersion"].as_i64() >= Some(36),
            "{file}: Grafana 10/11 schema"
        );
        let mut ids = BTreeSet::new();
        for panel in json["panels"].as_array().expect("panels") {
            let id = panel["id"].as_i64().expect("panel id");
            assert!(ids.insert(id), "{file}: panel id {id} used twice");
            assert!(
                !panel["targets"].as_array().expect("targets").is_empty(),
                "{file}: panel {id} has no query"
            );
        }
        let mut refs = Vec::new();
        datasource_refs(json, &mut refs);
        for reference in refs {
            let grafana_builtin = reference["type"] == "grafana";
            assert!(
                grafana_builtin
                    || (reference["type"] == "influxdb" && reference["uid"] == DATASOURCE_UID),
                "{file}: data source {reference} is not the provisioned {DATASOURCE_UID}"
            );
        }
    }
}

#[test]
fn every_query_references_only_the_readme_measurement_schema() {
    let schema = grafana::readme_schema();
    let mut checked = 0;
    for (file, json) in grafana::dashboards() {
        for query in grafana::queries(&file, &json) {
            let (measurements, names) = grafana::references(&query.text);
            assert!(
                !measurements.is_empty(),
                "no measurement: {}",
                query.describe()
            );
            for measurement in &measurements {
                let known = schema.get(measurement).unwrap_or_else(|| {
                    panic!(
                        "measurement {measurement} is not in the README schema: {}",
                        query.describe()
                    )
                });
                for name in &names {
                    assert!(
                        known.contains(name),
                        "{name} is not a tag or field of {measurement} in the README schema: {}",
                        query.describe()
                    );
                }
            }
            if let Source::Panel { .. } = query.source {
                assert!(
                    !grafana::aliases(&query.text).is_empty() || query.text.contains("SELECT \""),
                    "name every selected expression with AS: {}",
                    query.describe()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} queries");
}

// ---- Against real data -------------------------------------------------------------------------

/// Runs futures on a thread inside a namespace, on a current-thread runtime, so that every socket
/// they open (and every process they start) lives in that namespace.
struct InNetns<'a> {
    ns: &'a Netns,
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

/// The web server bound in the target namespace. Stopping it wakes its accept loop with a
/// connection to its own address, which must be made from inside the lab, also on a panic.
struct LabWebServer<'a> {
    server: Option<HttpServer>,
    ns: &'a Netns,
}

impl Drop for LabWebServer<'_> {
    fn drop(&mut self) {
        let server = self.server.take();
        self.ns.inside(move || drop(server));
    }
}

/// A server process started by this test; killed by PID when dropped.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const WEB: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 80);
const SECURE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 43);
const FAR: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 5);
const WEB_PORT: u16 = 8080;
const TLS_PORT: u16 = 8443;
const TLS_NAME: &str = "secure.vantage.test";

/// A self-signed certificate for `TLS_NAME` (its own CA), valid 30 days: (cert, key).
fn certificate(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let output = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "30", "-subj", &format!("/CN={TLS_NAME}")])
        .args(["-addext", &format!("subjectAltName=DNS:{TLS_NAME}")])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("cannot run openssl: install the Debian package openssl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (cert.display().to_string(), key.display().to_string())
}

/// The target namespace's servers: HTTP (this process, a thread bound there), HTTPS (`openssl
/// s_server`), DNS (dnsmasq, authoritative for vantage.test on the target's address).
fn start_servers<'a>(lab: &'a Lab, dir: &Path) -> (LabWebServer<'a>, Spawned, Spawned) {
    let listener = lab
        .target()
        .inside(|| TcpListener::bind((WEB, WEB_PORT)))
        .expect("bind the web server in the target namespace");
    let web = LabWebServer {
        server: Some(HttpServer::serve(listener)),
        ns: lab.target(),
    };
    let (cert, key) = certificate(dir);
    let tls = lab
        .target()
        .command("openssl")
        .args([
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            &format!("{SECURE}:{TLS_PORT}"),
        ])
        .args(["-cert", &cert, "-key", &key])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let target = addr::TARGET;
    let dns = lab
        .target()
        .command("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
        ])
        .args(["--no-poll", "--bind-interfaces", "--pid-file=", "--port=53"])
        .arg(format!("--listen-address={target}"))
        .arg(format!("--auth-server=ns1.vantage.test,{target}"))
        .args([
            "--auth-zone=vantage.test",
            "--auth-soa=2024010101,hostmaster.vantage.test",
        ])
        .arg("--host-record=www.vantage.test,198.18.0.10")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run dnsmasq: install the Debian package dnsmasq-base");
    (web, Spawned(tls), Spawned(dns))
}

fn config(dir: &Path, influx_url: &str, cert: &str) -> String {
    let data = dir.join("data");
    let password = dir.join("influx.password");
    let (target, nobody) = (addr::TARGET, addr::NOBODY);
    format!(
        r#"[agent]
name = "dash-agent"
site = "lab"
data_dir = "{data}"

[[target]]
name = "web"
host = "{WEB}"
site = "dc2"

[[target]]
name = "secure"
host = "{SECURE}"
site = "dc2"

[[target]]
name = "resolver"
host = "{target}"
site = "dc3"

[[target]]
name = "far"
host = "{FAR}"
site = "dc3"

[[target]]
name = "nobody"
host = "{nobody}"
site = "dc9"

[[probe]]
name = "ping"
kind = "icmp"
interval = "1s"
count = 5
spacing = "100ms"
timeout = "400ms"

[[probe]]
name = "path"
kind = "trace"
interval = "2s"
timeout = "200ms"
count = 3
max_ttl = 6
targets = ["far"]

[[probe]]
name = "health"
kind = "http"
interval = "1s"
timeout = "900ms"
scheme = "http"
port = {WEB_PORT}
path = "/health"
targets = ["web"]

[[probe]]
name = "tls"
kind = "http"
interval = "2s"
timeout = "1500ms"
scheme = "https"
port = {TLS_PORT}
ca_file = "{cert}"
server_name = "{TLS_NAME}"
targets = ["secure"]

[[probe]]
name = "missing"
kind = "http"
interval = "2s"
timeout = "900ms"
scheme = "http"
port = {WEB_PORT}
path = "/missing"
targets = ["web"]

[[probe]]
name = "resolve"
kind = "dns"
interval = "1s"
timeout = "900ms"
query = "www.vantage.test"
recursion = false
targets = ["resolver"]

[[probe]]
name = "nxdomain"
kind = "dns"
interval = "2s"
timeout = "900ms"
query = "nope.vantage.test"
recursion = false
targets = ["resolver"]

[[probe]]
name = "closed"
kind = "tcp"
interval = "2s"
timeout = "900ms"
port = 9
targets = ["web"]

[[probe]]
name = "connect"
kind = "tcp"
interval = "1s"
timeout = "900ms"
port = {WEB_PORT}
targets = ["web"]

[[rule]]
name = "far-loss"
kind = "loss"
probes = ["ping"]
targets = ["far"]
above_pct = 50
echoes = 10
for = "2s"
clear_for = "2s"
min_hold = "3s"

[[rule]]
name = "nobody-down"
kind = "failures"
severity = "minor"
probes = ["ping"]
targets = ["nobody"]
failures = 2
for = "1s"

[[output]]
name = "influx"
kind = "influxdb_v1"
url = "{influx_url}"
db = "vantage"
username = "admin"
password_file = "{password}"
flush_interval = "200ms"
retry_max = "2s"
"#,
        data = data.display(),
        password = password.display(),
    )
}

const DB: &str = "vantage";

/// How long InfluxDB is away: one self-metrics period plus the ~6 s the backlog needs to pass 50.
const OUTAGE: Duration =
    Duration::from_secs(vantage::sinks::DEFAULT_SELF_METRICS_EVERY.as_secs() + 10);

/// The series of an InfluxQL answer, or a panic with InfluxDB's error.
fn series(answer: &Value, query: &str) -> Vec<Value> {
    let result = &answer["results"][0];
    assert!(
        result["error"].is_null() && answer["error"].is_null(),
        "InfluxDB refused {query}: {answer}"
    );
    result["series"].as_array().cloned().unwrap_or_default()
}

fn count(net: &InNetns, influx: &Influxd, query: &str) -> usize {
    net.block_on(async {
        let answer = influx.query(DB, query).await;
        series(&answer, query)
            .iter()
            .map(|s| s["values"].as_array().map_or(0, Vec::len))
            .sum()
    })
}

fn has(net: &InNetns, influx: &Influxd, query: &str) -> bool {
    count(net, influx, query) > 0
}

fn wait_for(what: &str, limit: Duration, agent: &Agent, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

#[test]
fn every_dashboard_query_answers_with_real_data() {
    support::init_logs();
    let started_ms = now_ms();
    let lab = Lab::routed();
    let dir = tempfile::tempdir().expect("tempdir");
    let _servers = start_servers(&lab, dir.path());
    let net = InNetns {
        ns: lab.agent(),
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    };
    let password = "dashboards-secret";
    let mut influx = net.block_on(Influxd::start(
        &dir.path().join("influx"),
        "admin",
        password,
    ));
    net.block_on(influx.query("", &format!("CREATE DATABASE {DB}")));
    std::fs::write(dir.path().join("influx.password"), password).expect("password file");
    let config_path = dir.path().join("vantage.toml");
    let cert = dir.path().join("cert.pem");
    std::fs::write(
        &config_path,
        config(dir.path(), &influx.url, &cert.display().to_string()),
    )
    .expect("config");

    let netns = ["ip", "netns", "exec", lab.agent().name()];
    let agent = Agent::start(&netns, &config_path, dir.path().join("agent.log"));
    let limit = Duration::from_secs(40);
    wait_for("every kind of result in InfluxDB", limit, &agent, || {
        ["ping", "trace_hop", "http", "dns", "tcp", "agent"]
            .iter()
            .all(|m| has(&net, &influx, &format!("SELECT count(*) FROM \"{m}\"")))
    });

    // Loss: everything to `far` vanishes at r1 until the incident opens, then it comes back.
    lab.blackhole(Router::R1, IpAddr::V4(FAR));
    let event = |event: &str| {
        format!(
            "SELECT \"id\" FROM \"incident\" WHERE \"rule\" = 'far-loss' AND \"event\" = '{event}'"
        )
    };
    wait_for("far-loss opened", limit, &agent, || {
        has(&net, &influx, &event("opened"))
    });
    lab.router(Router::R1)
        .run(["nft", "flush", "chain", "inet", "vantage_lab", "blackhole"]);
    wait_for("far-loss resolved", limit, &agent, || {
        has(&net, &influx, &event("resolved"))
    });

    // InfluxDB away long enough that a self-metrics point (one per 10 s, at a phase the test
    // does not control) is taken with more than 50 points waiting: ~10 points/s pile up, so any
    // sample 6 s or more into the outage shows it, and 20 s always holds one. (12 s did not: a
    // sample 3 s in and the next one just after delivery resumed both showed < 50.)
    influx.process.stop();
    std::thread::sleep(OUTAGE);
    net.block_on(influx.restart());
    let backlog = "SELECT \"spool_points\" FROM \"agent\" WHERE \"spool_points\" > 50";
    wait_for(
        "the outage's backlog in the self-metrics",
        limit,
        &agent,
        || has(&net, &influx, backlog),
    );

    let rerouted_ms = now_ms();
    lab.reroute_around_r2();
    let changed = format!(
        "SELECT \"path_hash\" FROM \"trace\" WHERE \"path_changed\" = true AND time > {}ms",
        rerouted_ms - 2000
    );
    wait_for("a path change", limit, &agent, || {
        has(&net, &influx, &changed)
    });
    agent.stop();
    let range = (started_ms, now_ms());

    let mut checked = 0;
    for (file, json) in grafana::dashboards() {
        let answered = check_dashboard(&net, &influx, &file, &json, range);
        eprintln!("{file}: {answered} queries answered with the columns their panels show");
        checked += answered;
    }
    assert!(checked >= 30, "{checked} queries checked");
}

/// Run every query of one dashboard as Grafana would (variables resolved in order, "All"
/// selected; repeated panels once per value) and check each answer. Returns the number run.
fn check_dashboard(
    net: &InNetns,
    influx: &Influxd,
    file: &str,
    json: &Value,
    (from_ms, to_ms): (i64, i64),
) -> usize {
    let interval_ms = 10_000;
    let run = |query: &grafana::Query, variables: &BTreeMap<String, String>| -> Vec<Value> {
        let text = grafana::interpolate(&query.text, variables, from_ms, to_ms, interval_ms);
        let answer = net.block_on(influx.query(DB, &text));
        let series = series(&answer, &text);
        // A repeated panel's copy may be empty (no RTTs to a dead target); the panel may not.
        assert!(
            !series.is_empty() || repeated(query),
            "no data for {}\nsent: {text}",
            query.describe()
        );
        series
    };
    let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut formatted: BTreeMap<String, String> = BTreeMap::new();
    let queries = grafana::queries(file, json);
    for query in &queries {
        match &query.source {
            Source::Variable { name, multi } => {
                let series = run(query, &formatted);
                let mut found: Vec<String> = series
                    .iter()
                    .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
                    .map(|row| row[1].as_str().expect("tag value").to_string())
                    .collect();
                found.sort();
                found.dedup();
                assert_eq!(series[0]["columns"], serde_json::json!(["key", "value"]));
                // "All" for a multi-value variable; Grafana's default, the first value, otherwise.
                let chosen = if *multi {
                    found.clone()
                } else {
                    found[..1].to_vec()
                };
                formatted.insert(name.clone(), grafana::format_values(&chosen));
                values.insert(name.clone(), chosen);
            }
            Source::Panel { repeat, .. } => {
                let runs: Vec<BTreeMap<String, String>> = match repeat {
                    Some(var) => values[var]
                        .iter()
                        .map(|v| {
                            let mut vars = formatted.clone();
                            vars.insert(
                                var.clone(),
                                grafana::format_values(std::slice::from_ref(v)),
                            );
                            vars
                        })
                        .collect(),
                    None => vec![formatted.clone()],
                };
                let mut filled = BTreeSet::new();
                let mut answered = 0;
                for vars in &runs {
                    for s in run(query, vars) {
                        check_series(query, &s, &mut filled);
                        answered += 1;
                    }
                }
                assert!(answered > 0, "no data in any copy of {}", query.describe());
                let expected: BTreeSet<String> =
                    promised_columns(&query.text).into_iter().collect();
                let empty: Vec<_> = expected.difference(&filled).collect();
                // Over every copy: `tls` is null for plain HTTP, the HTTPS target fills it.
                assert!(
                    empty.is_empty(),
                    "{empty:?} always null: {}",
                    query.describe()
                );
            }
            Source::Annotation { columns, .. } => {
                let series = run(query, &formatted);
                for s in &series {
                    for column in columns {
                        assert!(
                            has_column(s, column),
                            "annotation column {column} missing in {s}: {}",
                            query.describe()
                        );
                    }
                }
            }
        }
    }
    if file == "fleet.json" {
        check_open_incidents(net, influx, (from_ms, to_ms));
    }
    queries.len()
}

fn repeated(query: &grafana::Query) -> bool {
    matches!(
        &query.source,
        Source::Panel {
            repeat: Some(_),
            ..
        }
    )
}

/// The columns a panel query promises after `time`: its aliases, or for a raw select its names.
fn promised_columns(query: &str) -> Vec<String> {
    let aliases = grafana::aliases(query);
    if aliases.is_empty() {
        grafana::selected(query)
    } else {
        aliases
    }
}

fn has_column(series: &Value, column: &str) -> bool {
    series["columns"]
        .as_array()
        .is_some_and(|c| c.iter().any(|name| name == column))
}

/// One answer series: the promised columns in place, the GROUP BY tags on it; records which
/// columns had a value in some row.
fn check_series(query: &grafana::Query, series: &Value, filled: &mut BTreeSet<String>) {
    let columns: Vec<String> = series["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c.as_str().expect("column").to_string())
        .collect();
    assert_eq!(columns[0], "time", "{series}: {}", query.describe());
    for column in promised_columns(&query.text) {
        assert!(
            columns.contains(&column),
            "no column {column} in {series}: {}",
            query.describe()
        );
    }
    for tag in grafana::group_by_tags(&query.text) {
        assert!(
            series["tags"][&tag].is_string(),
            "series without the GROUP BY tag {tag}: {series}: {}",
            query.describe()
        );
    }
    for row in series["values"].as_array().expect("values") {
        for (i, value) in row.as_array().expect("row").iter().enumerate().skip(1) {
            if !value.is_null() {
                filled.insert(columns[i].clone());
            }
        }
    }
}

/// The fleet's "Open incidents" panel keeps the incidents whose latest event is `open` (Grafana's
/// groupBy + filterByValue): with the data of this run, `nobody-down` is open and `far-loss` is not.
fn check_open_incidents(net: &InNetns, influx: &Influxd, (from_ms, to_ms): (i64, i64)) {
    let query = format!(
        "SELECT \"id\", \"state\", \"rule\" FROM \"incident\" WHERE time >= {from_ms}ms and time <= {to_ms}ms"
    );
    let answer = net.block_on(influx.query(DB, &query));
    let mut latest: BTreeMap<String, (String, String)> = BTreeMap::new();
    for s in series(&answer, &query) {
        for row in s["values"].as_array().expect("values") {
            let text = |i: usize| row[i].as_str().expect("string").to_string();
            latest.insert(text(1), (text(2), text(3)));
        }
    }
    let open: BTreeSet<&str> = latest
        .values()
        .filter(|(state, _)| state == "open")
        .map(|(_, rule)| rule.as_str())
        .collect();
    assert_eq!(open, BTreeSet::from(["nobody-down"]), "{latest:?}");
    assert!(
        latest
            .values()
            .any(|(state, rule)| state == "resolved" && rule == "far-loss"),
        "{latest:?}"
    );
}
