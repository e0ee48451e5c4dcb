//! [`FleetStore`]: what every agent of the fleet measured to some targets over a window, asked of
//! the store they all write to (`[fleet]`: one `[[output]]`'s store, that output's credentials).
//!
//! Per (site, agent, target): echoes sent and received (loss), the median of the rounds' median RTT,
//! failed runs (ping rounds with no reply; http/dns/tcp runs with `success` false), the last report,
//! and the latest path trace's hops. Two dialects over the schema the outputs write (README,
//! "Measurement schema"):
//! - InfluxQL over the v1 `/query` API, all statements in one request ([`influxql_statements`]);
//! - PromQL over VictoriaMetrics' `/api/v1/query`, where a field is the metric
//!   `measurement_field{tags}`, with MetricsQL's `count_eq_over_time` and `tlast_over_time`
//!   ([`promql_queries`]). VictoriaMetrics drops string fields, so a hop's address is read from
//!   `trace_hop_address_v4` (the IPv4 address as an integer).
//!
//! The whole view must arrive within the budget (`[fleet] timeout`, 3 s by default) and each answer
//! is read up to [`MAX_BODY`]; anything else — a refused connection, a 5xx, a body that is too big
//! or not the JSON expected — is a [`FleetError`] that says why ("fleet view unavailable: …").
//! Credentials are read from their source per query and never appear in an error.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{FleetConfig, FleetDialect, OutputConfig, OutputKind};
use crate::sinks::influx::{BodyEnd, authorize_as, describe_reqwest_error, read_at_most};

/// The most of one answer's body that is read; a fleet view of a few targets is a few KiB.
pub const MAX_BODY: usize = 4 << 20;
/// How far back the last report and the latest trace of a site are looked for.
pub const LOOKBACK: Duration = Duration::from_secs(3600);

/// How far back the fleet evaluator's incidents are looked for: an incident has one point per
/// event (a status update every 30 min by default), so a day is a few points per incident.
pub const INCIDENT_LOOKBACK: Duration = Duration::from_secs(86_400);

/// An open incident of the fleet evaluator, from its `incident` points (tag `role=fleet`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetIncident {
    /// The outage without the agent: `target/aws-gw`, `site/scl3`.
    pub fleet_key: String,
    pub rule: String,
    /// The evaluator's name (its `agent` tag).
    pub evaluator: String,
    /// The incident ID and title: InfluxQL only (VictoriaMetrics drops string fields).
    pub id: Option<String>,
    pub title: Option<String>,
    /// Unix ms of its `opened` point.
    pub opened_ms: i64,
    /// How many sites see it, of how many witnesses, as of its latest point.
    pub sites_seeing: Option<u64>,
    pub sites_total: Option<u64>,
}

/// One `incident` point of the fleet evaluator, in either dialect.
#[derive(Debug, Clone, Default)]
struct IncidentPoint {
    fleet_key: String,
    rule: String,
    evaluator: String,
    event: String,
    at_ms: i64,
    id: Option<String>,
    title: Option<String>,
    sites_seeing: Option<u64>,
    sites_total: Option<u64>,
}

/// The incidents whose latest point is not `resolved`, per (fleet key, rule), oldest first.
fn open_incidents(mut points: Vec<IncidentPoint>) -> Vec<FleetIncident> {
    points.sort_by(|a, b| (&a.fleet_key, &a.rule, a.at_ms).cmp(&(&b.fleet_key, &b.rule, b.at_ms)));
    let mut open = Vec::new();
    for one in points.chunk_by(|a, b| (&a.fleet_key, &a.rule) == (&b.fleet_key, &b.rule)) {
        let Some(latest) = one.last() else { continue };
        if latest.event == "resolved" {
            continue;
        }
        // The opening of this incident: the last `opened` point (an earlier one opened an
        // incident that has resolved since).
        let opened_ms = one
            .iter()
            .filter(|p| p.event == "opened")
            .map(|p| p.at_ms)
            .max()
            .unwrap_or(one[0].at_ms);
        let with_sites = one.iter().rev().find(|p| p.sites_seeing.is_some());
        open.push(FleetIncident {
            fleet_key: latest.fleet_key.clone(),
            rule: latest.rule.clone(),
            evaluator: latest.evaluator.clone(),
            id: one.iter().rev().find_map(|p| p.id.clone()),
            title: one.iter().rev().find_map(|p| p.title.clone()),
            opened_ms,
            sites_seeing: with_sites.and_then(|p| p.sites_seeing),
            sites_total: with_sites.and_then(|p| p.sites_total),
        });
    }
    open.sort_by_key(|i| i.opened_ms);
    open
}

/// What to ask: these targets (by name, the `target` tag every agent writes), over `from..=until`.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRequest {
    pub targets: Vec<String>,
    pub from: SystemTime,
    pub until: SystemTime,
}

/// What every site measured (see the module docs); rows sorted by target, then site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetView {
    /// The window, in Unix milliseconds.
    pub from_ms: i64,
    pub until_ms: i64,
    pub rows: Vec<SiteFigures>,
    /// Each agent's last self-metrics point (`agent` measurement), Unix ms, by site: a site that
    /// went silent altogether still shows.
    pub site_last_report_ms: BTreeMap<String, i64>,
}

/// One site's figures for one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteFigures {
    pub site: String,
    pub agent: String,
    pub target: String,
    /// Echoes in the window.
    pub sent: u64,
    pub received: u64,
    /// Ping rounds in the window, and those with no reply at all.
    pub rounds: u64,
    pub failed_rounds: u64,
    /// The median of the rounds' median RTT.
    pub median_ms: Option<f64>,
    /// http/dns/tcp runs in the window, and the failed ones.
    pub check_runs: u64,
    pub check_failures: u64,
    /// The last ping round or check run to this target (within [`LOOKBACK`]), Unix ms.
    pub last_report_ms: Option<i64>,
    pub trace: Option<PeerTrace>,
}

impl SiteFigures {
    /// Echo loss in the window; None without echoes.
    pub fn loss_pct(&self) -> Option<f64> {
        (self.sent > 0).then(|| 100.0 * (1.0 - self.received as f64 / self.sent as f64))
    }

    /// Failed runs: ping rounds without reply plus failed checks.
    pub fn failures(&self) -> u64 {
        self.failed_rounds + self.check_failures
    }

    /// Runs of any kind in the window.
    pub fn runs(&self) -> u64 {
        self.rounds + self.check_runs
    }
}

/// A site's latest path trace to a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerTrace {
    /// Unix ms.
    pub at_ms: i64,
    pub hops: Vec<PeerHop>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerHop {
    pub ttl: u32,
    /// None: the hop never answered.
    pub address: Option<String>,
    pub loss_pct: Option<f64>,
}

/// Why there is no fleet view; its `Display` is the reason shown in drafts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error("the store did not answer within {0:?} ({1})")]
    Timeout(Duration, String),
    #[error("{0}")]
    Unavailable(String),
}

/// The fleet's shared store, as `[fleet]` names it.
#[derive(Debug, Clone)]
pub struct FleetStore {
    client: reqwest::Client,
    endpoint: Url,
    dialect: FleetDialect,
    /// InfluxQL: the database (a v1 output's `db`; a v2 output's bucket, through DBRP).
    db: Option<String>,
    output: OutputConfig,
    budget: Duration,
}

impl FleetStore {
    /// `fleet` with its output (`config.outputs`, by `fleet.output`).
    pub fn new(fleet: &FleetConfig, output: &OutputConfig) -> anyhow::Result<FleetStore> {
        let client = reqwest::Client::builder()
            .timeout(fleet.timeout)
            .connect_timeout(fleet.timeout)
            .user_agent(concat!("vantage/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut endpoint = Url::parse(&fleet.query_url)?;
        let path: &[&str] = match fleet.dialect {
            FleetDialect::Influxql => &["query"],
            FleetDialect::Promql => &["api", "v1", "query"],
        };
        endpoint
            .path_segments_mut()
            .map_err(|()| anyhow::anyhow!("[fleet] query_url cannot be a base URL"))?
            .pop_if_empty()
            .extend(path);
        let db = match &output.kind {
            OutputKind::InfluxdbV1 { db, .. } => Some(db.clone()),
            OutputKind::InfluxdbV2 { bucket, .. } => Some(bucket.clone()),
        };
        Ok(FleetStore {
            client,
            endpoint,
            dialect: fleet.dialect,
            db,
            output: output.clone(),
            budget: fleet.timeout,
        })
    }

    /// The query URL (no secrets in it).
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// Ask the store (module docs); the whole view arrives within the budget or not at all.
    pub async fn query(&self, request: &FleetRequest) -> Result<FleetView, FleetError> {
        let work = async {
            match self.dialect {
                FleetDialect::Influxql => self.influxql(request).await,
                FleetDialect::Promql => self.promql(request).await,
            }
        };
        match tokio::time::timeout(self.budget, work).await {
            Ok(result) => result,
            Err(_) => Err(FleetError::Timeout(
                self.budget,
                format!("{} {}", self.dialect_name(), self.endpoint),
            )),
        }
    }

    /// [`FleetStore::query`] from a thread without a runtime (the incident manager's helpers).
    pub fn query_blocking(&self, request: &FleetRequest) -> Result<FleetView, FleetError> {
        runtime()?.block_on(self.query(request))
    }

    /// The view, and the fleet evaluator's open incidents with one of `fleet_keys` (a site's
    /// draft links to them), both within the one budget.
    pub async fn query_with_incidents(
        &self,
        request: &FleetRequest,
        fleet_keys: &[String],
    ) -> Result<(FleetView, Vec<FleetIncident>), FleetError> {
        let work = async {
            let view = async {
                match self.dialect {
                    FleetDialect::Influxql => self.influxql(request).await,
                    FleetDialect::Promql => self.promql(request).await,
                }
            };
            let incidents = async {
                if fleet_keys.is_empty() {
                    return Ok(Vec::new());
                }
                match self.dialect {
                    FleetDialect::Influxql => self.influxql_incidents(request, fleet_keys).await,
                    FleetDialect::Promql => self.promql_incidents(request, fleet_keys).await,
                }
            };
            tokio::try_join!(view, incidents)
        };
        match tokio::time::timeout(self.budget, work).await {
            Ok(result) => result,
            Err(_) => Err(FleetError::Timeout(
                self.budget,
                format!("{} {}", self.dialect_name(), self.endpoint),
            )),
        }
    }

    /// [`FleetStore::query_with_incidents`] from a thread without a runtime.
    pub fn query_with_incidents_blocking(
        &self,
        request: &FleetRequest,
        fleet_keys: &[String],
    ) -> Result<(FleetView, Vec<FleetIncident>), FleetError> {
        runtime()?.block_on(self.query_with_incidents(request, fleet_keys))
    }

    async fn influxql_incidents(
        &self,
        request: &FleetRequest,
        fleet_keys: &[String],
    ) -> Result<Vec<FleetIncident>, FleetError> {
        let mut url = self.endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            if let Some(db) = &self.db {
                query.append_pair("db", db);
            }
            query
                .append_pair("epoch", "ms")
                .append_pair("q", &influxql_incidents_statement(request, fleet_keys));
        }
        let answer = self.get_json(url).await?;
        parse_influxql_incidents(&answer)
            .map_err(|e| FleetError::Unavailable(format!("InfluxQL at {}: {e}", self.endpoint)))
    }

    async fn promql_incidents(
        &self,
        request: &FleetRequest,
        fleet_keys: &[String],
    ) -> Result<Vec<FleetIncident>, FleetError> {
        let until = unix_ms(request.until + Duration::from_nanos(999_999));
        let time = format!("{:.3}", until as f64 / 1000.0);
        let [a, b, c] = promql_incident_queries(fleet_keys).map(|q| {
            let mut url = self.endpoint.clone();
            url.query_pairs_mut()
                .append_pair("query", &q)
                .append_pair("time", &time);
            url
        });
        let (a, b, c) = tokio::try_join!(self.get_json(a), self.get_json(b), self.get_json(c))?;
        let values = [a, b, c];
        parse_promql_incidents(&values)
            .map_err(|e| FleetError::Unavailable(format!("PromQL at {}: {e}", self.endpoint)))
    }

    fn dialect_name(&self) -> &'static str {
        match self.dialect {
            FleetDialect::Influxql => "InfluxQL",
            FleetDialect::Promql => "PromQL",
        }
    }

    /// GET `url`; the body as JSON, or why not (credentials redacted).
    async fn get_json(&self, url: Url) -> Result<Value, FleetError> {
        let request = self.client.get(url);
        let (request, redactor) =
            authorize_as(&self.output, request).map_err(FleetError::Unavailable)?;
        let unavailable = |text: String| FleetError::Unavailable(redactor.redact(&text));
        let response = request.send().await.map_err(|e| {
            unavailable(format!(
                "{} at {}: {}",
                self.dialect_name(),
                self.endpoint,
                // The URL holds the whole query; the endpoint is named already.
                describe_reqwest_error(&e.without_url())
            ))
        })?;
        let status = response.status();
        let (body, end) = read_at_most(response, MAX_BODY).await;
        if !status.is_success() {
            let start = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(unavailable(format!(
                "{} at {} answered {status}: {}",
                self.dialect_name(),
                self.endpoint,
                start.trim()
            )));
        }
        let cut = match end {
            BodyEnd::Whole => None,
            BodyEnd::TooLarge => Some(format!("the answer is larger than {} MiB", MAX_BODY >> 20)),
            BodyEnd::Broken(e) => Some(format!(
                "the answer broke off after {} bytes: {}",
                body.len(),
                describe_reqwest_error(&e.without_url())
            )),
        };
        if let Some(why) = cut {
            return Err(unavailable(format!(
                "{} at {}: {why}",
                self.dialect_name(),
                self.endpoint
            )));
        }
        serde_json::from_slice(&body).map_err(|e| {
            unavailable(format!(
                "{} at {}: the answer is not the JSON expected: {e}",
                self.dialect_name(),
                self.endpoint
            ))
        })
    }

    async fn influxql(&self, request: &FleetRequest) -> Result<FleetView, FleetError> {
        let statements = influxql_statements(request);
        let mut url = self.endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            if let Some(db) = &self.db {
                query.append_pair("db", db);
            }
            query
                .append_pair("epoch", "ms")
                .append_pair("q", &statements.join(";\n"));
        }
        let answer = self.get_json(url).await?;
        parse_influxql(request, &answer)
            .map_err(|e| FleetError::Unavailable(format!("InfluxQL at {}: {e}", self.endpoint)))
    }

    async fn promql(&self, request: &FleetRequest) -> Result<FleetView, FleetError> {
        let queries = promql_queries(request);
        // Rounded up: a point in the window's last millisecond is in it.
        let until = unix_ms(request.until + Duration::from_nanos(999_999));
        let time = format!("{:.3}", until as f64 / 1000.0);
        // All at once: the budget is for the view, not per query.
        let mut running = tokio::task::JoinSet::new();
        for (i, (_, q)) in queries.iter().enumerate() {
            let mut url = self.endpoint.clone();
            url.query_pairs_mut()
                .append_pair("query", q)
                .append_pair("time", &time);
            let store = self.clone();
            running.spawn(async move { (i, store.get_json(url).await) });
        }
        let mut results: Vec<Option<Value>> = vec![None; queries.len()];
        while let Some(done) = running.join_next().await {
            let (i, answer) =
                done.map_err(|e| FleetError::Unavailable(format!("a query task failed: {e}")))?;
            results[i] = Some(answer?);
        }
        let named: Vec<(Promql, Value)> = queries
            .iter()
            .map(|(k, _)| *k)
            .zip(results.into_iter().flatten())
            .collect();
        parse_promql(request, &named)
            .map_err(|e| FleetError::Unavailable(format!("PromQL at {}: {e}", self.endpoint)))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, FleetError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FleetError::Unavailable(format!("cannot start a runtime: {e}")))
}

/// The InfluxQL statement for the fleet evaluator's incidents with one of `fleet_keys`, over
/// [`INCIDENT_LOOKBACK`] up to the view's end.
pub fn influxql_incidents_statement(request: &FleetRequest, fleet_keys: &[String]) -> String {
    let keys = fleet_keys
        .iter()
        .map(|k| format!("\"fleet_key\"::tag = {}", influx_string(k)))
        .collect::<Vec<_>>()
        .join(" OR ");
    let until = unix_ms(request.until + Duration::from_nanos(999_999));
    let from = unix_ms(
        request
            .until
            .checked_sub(INCIDENT_LOOKBACK)
            .unwrap_or(UNIX_EPOCH),
    );
    format!(
        "SELECT \"id\", \"title\", \"sites_seeing\", \"sites_total\", \"event\" FROM \"incident\" WHERE \"role\"::tag = 'fleet' AND ({keys}) AND time >= {from}ms AND time <= {until}ms GROUP BY \"fleet_key\", \"rule\", \"agent\""
    )
}

/// Read the answer to [`influxql_incidents_statement`].
pub fn parse_influxql_incidents(answer: &Value) -> Result<Vec<FleetIncident>, String> {
    let mut points = Vec::new();
    for_each_influxql_row(answer, |row| {
        let tag = |name: &str| row.tags.get(name).cloned().unwrap_or_default();
        let text = |name: &str| row.get(name).and_then(Value::as_str).map(String::from);
        points.push(IncidentPoint {
            fleet_key: tag("fleet_key"),
            rule: tag("rule"),
            evaluator: tag("agent"),
            event: text("event").unwrap_or_default(),
            at_ms: row.time_ms(),
            id: text("id"),
            title: text("title"),
            sites_seeing: row.get("sites_seeing").and_then(Value::as_u64),
            sites_total: row.get("sites_total").and_then(Value::as_u64),
        });
    })?;
    Ok(open_incidents(points))
}

/// The PromQL queries for the fleet evaluator's incidents with one of `fleet_keys`: when each
/// (fleet key, rule, event) series last had a point, and the site counts of that point.
pub fn promql_incident_queries(fleet_keys: &[String]) -> [String; 3] {
    let keys = fleet_keys
        .iter()
        .map(|k| prom_regex_literal(k))
        .collect::<Vec<_>>()
        .join("|");
    let selector = |metric: &str| format!("{metric}{{role=\"fleet\", fleet_key=~\"{keys}\"}}");
    let l = format!("{}s", INCIDENT_LOOKBACK.as_secs());
    [
        format!("tlast_over_time({}[{l}])", selector("incident_affected")),
        format!("last_over_time({}[{l}])", selector("incident_sites_seeing")),
        format!("last_over_time({}[{l}])", selector("incident_sites_total")),
    ]
}

/// Read the answers to [`promql_incident_queries`], in that order.
pub fn parse_promql_incidents(answers: &[Value]) -> Result<Vec<FleetIncident>, String> {
    type Series = (String, String, String, String);
    let mut points: BTreeMap<Series, IncidentPoint> = BTreeMap::new();
    for (which, answer) in answers.iter().enumerate() {
        if answer.get("status").and_then(Value::as_str) != Some("success") {
            let error = answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no `status: success`");
            return Err(format!("the store says: {error}"));
        }
        let result = answer
            .pointer("/data/result")
            .and_then(Value::as_array)
            .ok_or("no `data.result` in the answer")?;
        for sample in result {
            let label = |name: &str| {
                sample
                    .pointer(&format!("/metric/{name}"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let value = sample
                .pointer("/value/1")
                .and_then(Value::as_str)
                .ok_or("a sample without `value`")?
                .parse::<f64>()
                .map_err(|e| format!("a sample's value is not a number: {e}"))?;
            if !value.is_finite() {
                continue;
            }
            let series = (
                label("fleet_key"),
                label("rule"),
                label("agent"),
                label("event"),
            );
            let point = points
                .entry(series.clone())
                .or_insert_with(|| IncidentPoint {
                    fleet_key: series.0,
                    rule: series.1,
                    evaluator: series.2,
                    event: series.3,
                    ..IncidentPoint::default()
                });
            let count = Some(value.max(0.0).round() as u64);
            match which {
                0 => point.at_ms = (value * 1000.0).round() as i64,
                1 => point.sites_seeing = count,
                _ => point.sites_total = count,
            }
        }
    }
    // A series without a time (only counts) is not a point of the window.
    Ok(open_incidents(
        points.into_values().filter(|p| p.at_ms > 0).collect(),
    ))
}

pub fn unix_ms(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// An InfluxQL string literal.
fn influx_string(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The InfluxQL statements of a view, in the order [`parse_influxql`] reads them:
/// 0 ping figures, 1 failed rounds, 2 check runs, 3 failed checks, 4 last ping, 5 last check,
/// 6 latest trace, 7 its hops, 8 each agent's last self-metrics point.
pub fn influxql_statements(request: &FleetRequest) -> Vec<String> {
    let targets = request
        .targets
        .iter()
        .map(|t| format!("\"target\"::tag = {}", influx_string(t)))
        .collect::<Vec<_>>()
        .join(" OR ");
    // Rounded up: a point in the window's last millisecond is in it.
    let until = unix_ms(request.until + Duration::from_nanos(999_999));
    let window = format!("time >= {}ms AND time <= {until}ms", unix_ms(request.from));
    let lookback = format!(
        "time >= {}ms AND time <= {until}ms",
        unix_ms(request.until.checked_sub(LOOKBACK).unwrap_or(UNIX_EPOCH))
    );
    let by = "GROUP BY \"site\", \"agent\", \"target\"";
    let checks = "\"http\", \"dns\", \"tcp\"";
    vec![
        format!(
            "SELECT sum(\"sent\") AS sent, sum(\"received\") AS received, count(\"sent\") AS rounds, median(\"rtt_median_ms\") AS median_ms FROM \"ping\" WHERE ({targets}) AND {window} {by}"
        ),
        format!(
            "SELECT count(\"received\") AS failed FROM \"ping\" WHERE ({targets}) AND {window} AND \"received\" = 0 {by}"
        ),
        format!(
            "SELECT count(\"success\") AS runs FROM {checks} WHERE ({targets}) AND {window} {by}"
        ),
        format!(
            "SELECT count(\"success\") AS failed FROM {checks} WHERE ({targets}) AND {window} AND \"success\" = false {by}"
        ),
        format!(
            "SELECT last(\"sent\") AS sent FROM \"ping\" WHERE ({targets}) AND {lookback} {by}"
        ),
        format!(
            "SELECT last(\"success\") AS success FROM {checks} WHERE ({targets}) AND {lookback} {by}"
        ),
        format!(
            "SELECT last(\"hops\") AS hops FROM \"trace\" WHERE ({targets}) AND {lookback} {by}"
        ),
        format!(
            "SELECT last(\"sent\") AS sent, \"address\", \"loss_pct\" FROM \"trace_hop\" WHERE ({targets}) AND {lookback} {by}, \"hop\""
        ),
        format!(
            "SELECT last(\"observations\") AS observations FROM \"agent\" WHERE {lookback} GROUP BY \"site\", \"agent\""
        ),
    ]
}

/// Rows being assembled, by (target, site, agent).
type Rows = BTreeMap<(String, String, String), SiteFigures>;

fn row<'r>(rows: &'r mut Rows, tags: &BTreeMap<String, String>) -> Option<&'r mut SiteFigures> {
    let (site, agent, target) = (tags.get("site")?, tags.get("agent")?, tags.get("target")?);
    Some(
        rows.entry((target.clone(), site.clone(), agent.clone()))
            .or_insert_with(|| SiteFigures {
                site: site.clone(),
                agent: agent.clone(),
                target: target.clone(),
                ..SiteFigures::default()
            }),
    )
}

fn as_u64(value: Option<&Value>) -> u64 {
    value
        .and_then(Value::as_f64)
        .map_or(0, |v| v.max(0.0).round() as u64)
}

/// Read an InfluxQL answer (see [`influxql_statements`]); Err says what was not as expected.
pub fn parse_influxql(request: &FleetRequest, answer: &Value) -> Result<FleetView, String> {
    let mut rows = Rows::new();
    let mut traces: BTreeMap<(String, String, String), (i64, u32)> = BTreeMap::new();
    let mut hops: BTreeMap<(String, String, String), Vec<(i64, PeerHop)>> = BTreeMap::new();
    let mut site_last = BTreeMap::new();
    for_each_influxql_row(answer, |one| {
        let (tags, time) = (one.tags, one.time_ms());
        let get = |name: &str| one.get(name);
        let key = || -> Option<(String, String, String)> {
            Some((
                tags.get("target")?.clone(),
                tags.get("site")?.clone(),
                tags.get("agent")?.clone(),
            ))
        };
        match one.statement {
            0 => {
                if let Some(r) = row(&mut rows, tags) {
                    r.sent += as_u64(get("sent"));
                    r.received += as_u64(get("received"));
                    r.rounds += as_u64(get("rounds"));
                    r.median_ms = get("median_ms").and_then(Value::as_f64).or(r.median_ms);
                }
            }
            1 => {
                if let Some(r) = row(&mut rows, tags) {
                    r.failed_rounds += as_u64(get("failed"));
                }
            }
            2 => {
                if let Some(r) = row(&mut rows, tags) {
                    r.check_runs += as_u64(get("runs"));
                }
            }
            3 => {
                if let Some(r) = row(&mut rows, tags) {
                    r.check_failures += as_u64(get("failed"));
                }
            }
            4 | 5 => {
                if let Some(r) = row(&mut rows, tags) {
                    r.last_report_ms = r.last_report_ms.max(Some(time));
                }
            }
            6 => {
                if let Some(key) = key() {
                    let count = as_u64(get("hops")) as u32;
                    traces.insert(key, (time, count));
                }
            }
            7 => {
                let ttl = tags.get("hop").and_then(|h| h.parse().ok());
                if let (Some(key), Some(ttl)) = (key(), ttl) {
                    hops.entry(key).or_default().push((
                        time,
                        PeerHop {
                            ttl,
                            address: get("address").and_then(Value::as_str).map(String::from),
                            loss_pct: get("loss_pct").and_then(Value::as_f64),
                        },
                    ));
                }
            }
            8 => {
                if let Some(site) = tags.get("site") {
                    let last: &mut i64 = site_last.entry(site.clone()).or_insert(time);
                    *last = (*last).max(time);
                }
            }
            _ => {}
        }
    })?;
    Ok(assemble(request, rows, traces, hops, site_last))
}

/// One row of an InfluxQL answer: its statement, its series' tags, and its values by column.
struct InfluxqlRow<'a> {
    statement: u64,
    tags: &'a BTreeMap<String, String>,
    columns: &'a [&'a str],
    values: &'a [Value],
}

impl InfluxqlRow<'_> {
    /// The value in column `name`, if the row has one that is not null.
    fn get(&self, name: &str) -> Option<&Value> {
        self.columns
            .iter()
            .position(|c| *c == name)
            .and_then(|i| self.values.get(i))
            .filter(|v| !v.is_null())
    }

    fn time_ms(&self) -> i64 {
        self.get("time").and_then(Value::as_i64).unwrap_or(0)
    }
}

/// Walk every row of every series of an InfluxQL answer (`epoch=ms`); Err names the first error
/// the store reported or the first part of the answer that is not as the v1 API documents it.
fn for_each_influxql_row(
    answer: &Value,
    mut each: impl FnMut(InfluxqlRow<'_>),
) -> Result<(), String> {
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        return Err(format!("the store says: {error}"));
    }
    let results = answer
        .get("results")
        .and_then(Value::as_array)
        .ok_or("no `results` in the answer")?;
    for result in results {
        let statement = result
            .get("statement_id")
            .and_then(Value::as_u64)
            .ok_or("a result without `statement_id`")?;
        if let Some(error) = result.get("error").and_then(Value::as_str) {
            return Err(format!("statement {statement}: {error}"));
        }
        for one in result
            .get("series")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let tags: BTreeMap<String, String> = one
                .get("tags")
                .and_then(Value::as_object)
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let columns: Vec<&str> = one
                .get("columns")
                .and_then(Value::as_array)
                .ok_or("a series without `columns`")?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let values = one
                .get("values")
                .and_then(Value::as_array)
                .ok_or("a series without `values`")?;
            for value in values {
                let values = value.as_array().ok_or("a row that is not an array")?;
                each(InfluxqlRow {
                    statement,
                    tags: &tags,
                    columns: &columns,
                    values,
                });
            }
        }
    }
    Ok(())
}

/// Attach each row's latest trace: the hops stamped with the trace's own time (a hop last seen in
/// an older trace is not part of the latest one).
fn assemble(
    request: &FleetRequest,
    mut rows: Rows,
    traces: BTreeMap<(String, String, String), (i64, u32)>,
    mut hops: BTreeMap<(String, String, String), Vec<(i64, PeerHop)>>,
    site_last_report_ms: BTreeMap<String, i64>,
) -> FleetView {
    for (key, (at_ms, count)) in traces {
        let mut latest: Vec<PeerHop> = hops
            .remove(&key)
            .unwrap_or_default()
            .into_iter()
            .filter(|(time, hop)| (time - at_ms).abs() <= 1 && hop.ttl <= count)
            .map(|(_, hop)| hop)
            .collect();
        latest.sort_by_key(|h| h.ttl);
        let (target, site, agent) = key;
        let tags = BTreeMap::from([
            ("site".to_string(), site),
            ("agent".to_string(), agent),
            ("target".to_string(), target),
        ]);
        if let Some(r) = row(&mut rows, &tags) {
            r.trace = Some(PeerTrace {
                at_ms,
                hops: latest,
            });
        }
    }
    FleetView {
        from_ms: unix_ms(request.from),
        until_ms: unix_ms(request.until),
        rows: rows.into_values().collect(),
        site_last_report_ms,
    }
}

/// What each PromQL query of a view measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promql {
    Sent,
    Received,
    Rounds,
    FailedRounds,
    Median,
    CheckRuns,
    CheckFailures,
    LastReport,
    TraceTime,
    HopAddress,
    HopTime,
    HopLoss,
    SiteLast,
}

/// A PromQL (MetricsQL) string literal, for a regex label matcher: regex metacharacters escaped.
fn prom_regex_literal(text: &str) -> String {
    let mut escaped = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The PromQL queries of a view, each evaluated at the window's end.
pub fn promql_queries(request: &FleetRequest) -> Vec<(Promql, String)> {
    let targets = request
        .targets
        .iter()
        .map(|t| prom_regex_literal(t))
        .collect::<Vec<_>>()
        .join("|");
    let t = format!("target=~\"{targets}\"");
    let window_s = request
        .until
        .duration_since(request.from)
        .unwrap_or_default()
        .as_millis()
        .max(1);
    let w = format!("{window_s}ms");
    let l = format!("{}s", LOOKBACK.as_secs());
    let by = "by (site, agent, target)";
    let checks = format!("{{__name__=~\"(http|dns|tcp)_success\", {t}}}");
    vec![
        (
            Promql::Sent,
            format!("sum {by} (sum_over_time(ping_sent{{{t}}}[{w}]))"),
        ),
        (
            Promql::Received,
            format!("sum {by} (sum_over_time(ping_received{{{t}}}[{w}]))"),
        ),
        (
            Promql::Rounds,
            format!("sum {by} (count_over_time(ping_sent{{{t}}}[{w}]))"),
        ),
        (
            Promql::FailedRounds,
            format!("sum {by} (count_eq_over_time(ping_received{{{t}}}[{w}], 0))"),
        ),
        (
            Promql::Median,
            format!("max {by} (quantile_over_time(0.5, ping_rtt_median_ms{{{t}}}[{w}]))"),
        ),
        (
            Promql::CheckRuns,
            format!("sum {by} (count_over_time({checks}[{w}]))"),
        ),
        (
            Promql::CheckFailures,
            format!("sum {by} (count_eq_over_time({checks}[{w}], 0))"),
        ),
        (
            Promql::LastReport,
            format!(
                "max {by} (tlast_over_time({{__name__=~\"ping_sent|(http|dns|tcp)_success\", {t}}}[{l}]))"
            ),
        ),
        (
            Promql::TraceTime,
            format!("max {by} (tlast_over_time(trace_hops{{{t}}}[{l}]))"),
        ),
        (
            Promql::HopAddress,
            format!("last_over_time(trace_hop_address_v4{{{t}}}[{l}])"),
        ),
        (
            Promql::HopTime,
            format!("tlast_over_time(trace_hop_sent{{{t}}}[{l}])"),
        ),
        (
            Promql::HopLoss,
            format!("last_over_time(trace_hop_loss_pct{{{t}}}[{l}])"),
        ),
        (
            Promql::SiteLast,
            format!("max by (site, agent) (tlast_over_time(agent_observations[{l}]))"),
        ),
    ]
}

/// Read the PromQL answers (see [`promql_queries`]); Err says what was not as expected.
pub fn parse_promql(
    request: &FleetRequest,
    answers: &[(Promql, Value)],
) -> Result<FleetView, String> {
    let mut rows = Rows::new();
    let mut traces = BTreeMap::new();
    // Per (target, site, agent, ttl): address, time, loss.
    type Hop = (Option<String>, Option<i64>, Option<f64>);
    let mut hop_parts: BTreeMap<(String, String, String, u32), Hop> = BTreeMap::new();
    let mut site_last = BTreeMap::new();
    for (what, answer) in answers {
        if answer.get("status").and_then(Value::as_str) != Some("success") {
            let error = answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no `status: success`");
            return Err(format!("the store says: {error}"));
        }
        let result = answer
            .pointer("/data/result")
            .and_then(Value::as_array)
            .ok_or("no `data.result` in the answer")?;
        for sample in result {
            let tags: BTreeMap<String, String> = sample
                .get("metric")
                .and_then(Value::as_object)
                .ok_or("a sample without `metric`")?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let value = sample
                .pointer("/value/1")
                .and_then(Value::as_str)
                .ok_or("a sample without `value`")?
                .parse::<f64>()
                .map_err(|e| format!("a sample's value is not a number: {e}"))?;
            if !value.is_finite() {
                continue;
            }
            let key = || -> Option<(String, String, String)> {
                Some((
                    tags.get("target")?.clone(),
                    tags.get("site")?.clone(),
                    tags.get("agent")?.clone(),
                ))
            };
            let ms = (value * 1000.0).round() as i64;
            match what {
                Promql::Sent => row(&mut rows, &tags).map(|r| r.sent += value as u64),
                Promql::Received => row(&mut rows, &tags).map(|r| r.received += value as u64),
                Promql::Rounds => row(&mut rows, &tags).map(|r| r.rounds += value as u64),
                Promql::FailedRounds => {
                    row(&mut rows, &tags).map(|r| r.failed_rounds += value as u64)
                }
                Promql::Median => row(&mut rows, &tags).map(|r| r.median_ms = Some(value)),
                Promql::CheckRuns => row(&mut rows, &tags).map(|r| r.check_runs += value as u64),
                Promql::CheckFailures => {
                    row(&mut rows, &tags).map(|r| r.check_failures += value as u64)
                }
                Promql::LastReport => {
                    row(&mut rows, &tags).map(|r| r.last_report_ms = r.last_report_ms.max(Some(ms)))
                }
                Promql::TraceTime => key().map(|k| {
                    traces.insert(k, (ms, u32::MAX));
                }),
                Promql::HopAddress | Promql::HopTime | Promql::HopLoss => {
                    let ttl = tags.get("hop").and_then(|h| h.parse::<u32>().ok());
                    if let (Some((target, site, agent)), Some(ttl)) = (key(), ttl) {
                        let part = hop_parts.entry((target, site, agent, ttl)).or_default();
                        match what {
                            Promql::HopAddress => {
                                part.0 = u32::try_from(value as i64)
                                    .ok()
                                    .map(|v| std::net::Ipv4Addr::from(v).to_string());
                            }
                            Promql::HopTime => part.1 = Some(ms),
                            _ => part.2 = Some(value),
                        }
                    }
                    None
                }
                Promql::SiteLast => tags.get("site").map(|site| {
                    let last: &mut i64 = site_last.entry(site.clone()).or_insert(ms);
                    *last = (*last).max(ms);
                }),
            };
        }
    }
    let mut hops: BTreeMap<(String, String, String), Vec<(i64, PeerHop)>> = BTreeMap::new();
    for ((target, site, agent, ttl), (address, time, loss_pct)) in hop_parts {
        if let Some(time) = time {
            hops.entry((target, site, agent)).or_default().push((
                time,
                PeerHop {
                    ttl,
                    address,
                    loss_pct,
                },
            ));
        }
    }
    Ok(assemble(request, rows, traces, hops, site_last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> FleetRequest {
        let until = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        FleetRequest {
            targets: vec!["aws-gw".into(), "it's \\odd".into()],
            from: until - Duration::from_secs(600),
            until,
        }
    }

    #[test]
    fn influxql_quotes_target_names_and_bounds_the_window() {
        let statements = influxql_statements(&request());
        assert_eq!(statements.len(), 9);
        assert_eq!(
            statements[0],
            "SELECT sum(\"sent\") AS sent, sum(\"received\") AS received, count(\"sent\") AS rounds, \
             median(\"rtt_median_ms\") AS median_ms FROM \"ping\" WHERE (\"target\"::tag = 'aws-gw' OR \
             \"target\"::tag = 'it\\'s \\\\odd') AND time >= 1799999400000ms AND time <= 1800000000000ms \
             GROUP BY \"site\", \"agent\", \"target\""
        );
    }

    #[test]
    fn promql_escapes_regex_and_string_metacharacters() {
        let queries = promql_queries(&request());
        assert_eq!(
            queries[0].1,
            "sum by (site, agent, target) (sum_over_time(ping_sent{target=~\"aws-gw|it's \\\\\\\\odd\"}[600000ms]))"
        );
    }

    #[test]
    fn an_influxql_error_or_a_strange_answer_is_a_reason() {
        let r = request();
        assert_eq!(
            parse_influxql(&r, &serde_json::json!({"error": "database not found: x"})),
            Err("the store says: database not found: x".to_string())
        );
        assert_eq!(
            parse_influxql(
                &r,
                &serde_json::json!({"results": [{"statement_id": 0, "error": "boom"}]})
            ),
            Err("statement 0: boom".to_string())
        );
        assert_eq!(
            parse_influxql(&r, &serde_json::json!([1, 2])),
            Err("no `results` in the answer".to_string())
        );
        assert_eq!(
            parse_promql(
                &r,
                &[(
                    Promql::Sent,
                    serde_json::json!({"status": "error", "error": "bad query"})
                )]
            ),
            Err("the store says: bad query".to_string())
        );
        assert_eq!(
            parse_promql(
                &r,
                &[(
                    Promql::Sent,
                    serde_json::json!({"status": "success", "data": {"result": [{"metric": {}, "value": [1, "x"]}]}})
                )]
            ),
            Err("a sample's value is not a number: invalid float literal".to_string())
        );
    }

    #[test]
    fn the_latest_trace_keeps_only_its_own_hops() {
        let r = request();
        let series = |id: u64, columns: Value, values: Value, hop: Option<&str>| {
            let mut tags = serde_json::json!({"site": "scl3", "agent": "a1", "target": "aws-gw"});
            if let Some(hop) = hop {
                tags["hop"] = hop.into();
            }
            serde_json::json!({"statement_id": id, "series": [{"name": "x", "tags": tags, "columns": columns, "values": values}]})
        };
        let answer = serde_json::json!({"results": [
            series(0, serde_json::json!(["time", "sent", "received", "rounds", "median_ms"]), serde_json::json!([[0, 100, 50, 10, 2.5]]), None),
            series(6, serde_json::json!(["time", "hops"]), serde_json::json!([[5000, 2]]), None),
            series(7, serde_json::json!(["time", "sent", "address", "loss_pct"]), serde_json::json!([[5000, 20, "198.18.10.1", 0.0]]), Some("1")),
            series(7, serde_json::json!(["time", "sent", "address", "loss_pct"]), serde_json::json!([[5000, 20, "198.18.20.1", 50.0]]), Some("2")),
            // Hop 3 of an older, longer trace.
            series(7, serde_json::json!(["time", "sent", "address", "loss_pct"]), serde_json::json!([[1000, 20, "198.19.0.1", 0.0]]), Some("3")),
        ]});
        let view = parse_influxql(&r, &answer).expect("view");
        assert_eq!(view.rows.len(), 1);
        let row = &view.rows[0];
        assert_eq!(row.loss_pct(), Some(50.0));
        assert_eq!(row.median_ms, Some(2.5));
        let trace = row.trace.as_ref().expect("trace");
        assert_eq!(trace.at_ms, 5000);
        let addresses: Vec<_> = trace.hops.iter().map(|h| h.address.as_deref()).collect();
        assert_eq!(addresses, [Some("198.18.10.1"), Some("198.18.20.1")]);
    }

    /// The fleet's incidents: one still open (opened, updated), one that resolved, and one that
    /// resolved and opened again — the open ones, from when they (last) opened.
    #[test]
    fn open_fleet_incidents_from_either_dialect() {
        let series = |key: &str, rule: &str, rows: Value| {
            serde_json::json!({"name": "incident",
                "tags": {"fleet_key": key, "rule": rule, "agent": "fleet"},
                "columns": ["time", "id", "title", "sites_seeing", "sites_total", "event"],
                "values": rows})
        };
        let answer = serde_json::json!({"results": [{"statement_id": 0, "series": [
            series("target/aws-gw", "cloud-unreachable", serde_json::json!([
                [1000, "20261130-001", "t1", 2, 3, "opened"],
                [5000, "20261130-001", "t1", 3, 3, "updated"]])),
            series("site/scl3", "site-unreachable", serde_json::json!([
                [1000, "20261130-002", "s", 2, 2, "opened"],
                [2000, "20261130-002", "s", 2, 2, "resolved"]])),
            series("target/gcp-gw", "cloud-unreachable", serde_json::json!([
                [1000, "20261130-003", "g", 1, 3, "opened"],
                [2000, "20261130-003", "g", 1, 3, "resolved"],
                [3000, "20261130-004", "g2", 1, 3, "opened"]])),
        ]}]});
        let open = parse_influxql_incidents(&answer).expect("parsed");
        let summary: Vec<_> = open
            .iter()
            .map(|i| {
                (
                    i.fleet_key.as_str(),
                    i.id.as_deref(),
                    i.opened_ms,
                    i.sites_seeing,
                    i.sites_total,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "target/aws-gw",
                    Some("20261130-001"),
                    1000,
                    Some(3),
                    Some(3)
                ),
                (
                    "target/gcp-gw",
                    Some("20261130-004"),
                    3000,
                    Some(1),
                    Some(3)
                ),
            ]
        );
        assert_eq!(open[0].title.as_deref(), Some("t1"));
        assert_eq!(open[0].evaluator, "fleet");

        // VictoriaMetrics: one series per event (a tag); strings are gone.
        let sample = |key: &str, event: &str, value: f64| {
            serde_json::json!({"metric": {"fleet_key": key, "rule": "r", "agent": "fleet", "event": event},
                "value": [9, value.to_string()]})
        };
        let success = |result: Vec<Value>| serde_json::json!({"status": "success", "data": {"result": result}});
        let answers = [
            success(vec![
                sample("target/aws-gw", "opened", 1.0),
                sample("target/aws-gw", "updated", 5.0),
                sample("site/scl3", "opened", 1.0),
                sample("site/scl3", "resolved", 2.0),
            ]),
            success(vec![
                sample("target/aws-gw", "opened", 2.0),
                sample("target/aws-gw", "updated", 3.0),
            ]),
            success(vec![sample("target/aws-gw", "updated", 3.0)]),
        ];
        let open = parse_promql_incidents(&answers).expect("parsed");
        assert_eq!(open.len(), 1, "{open:#?}");
        assert_eq!(
            (
                open[0].fleet_key.as_str(),
                open[0].opened_ms,
                open[0].sites_seeing,
                open[0].sites_total,
                open[0].id.as_deref()
            ),
            ("target/aws-gw", 1000, Some(3), Some(3), None)
        );
        assert_eq!(
            parse_promql_incidents(&[serde_json::json!({"status": "error", "error": "bad"})]),
            Err("the store says: bad".to_string())
        );
    }

    #[test]
    fn the_incident_queries_quote_the_fleet_keys() {
        let keys = ["target/it's".to_string(), "site/scl3".to_string()];
        let statement = influxql_incidents_statement(&request(), &keys);
        assert!(
            statement.contains("WHERE \"role\"::tag = 'fleet' AND (\"fleet_key\"::tag = 'target/it\\'s' OR \"fleet_key\"::tag = 'site/scl3') AND time >= 1799913600000ms AND time <= 1800000000000ms"),
            "{statement}"
        );
        let [times, ..] = promql_incident_queries(&keys);
        assert_eq!(
            times,
            "tlast_over_time(incident_affected{role=\"fleet\", fleet_key=~\"target/it's|site/scl3\"}[86400s])"
        );
    }
}
