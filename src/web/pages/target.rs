//! One target: per ping probe the latest round and smokeping charts at 3 h, 30 h, 10 d and 30 d
//! (drawn by the drafts' chart panel); per trace probe the latest trace as an mtr table and the
//! path changes of the last 30 days; its service checks (HTTP phases stacked over the last 30 h);
//! its incidents.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use maud::{Markup, PreEscaped, html};

use super::layout::{self, Nav, ms, pct, segment};
use super::overview::{State, checks_table};
use super::series::{CHART_POINTS, thin};
use super::{PageError, PageResult, PageSource, incidents};
use crate::incident::chart::{self, Svg};
use crate::incident::evidence::Series;
use crate::incident::render::human_duration;
use crate::store::CheckPoint;

const HOUR_NS: i64 = 3600 * 1_000_000_000;
/// The chart spans, SmokePing's zoom levels.
const SPANS: [(&str, i64); 4] = [
    ("3 hours", 3 * HOUR_NS),
    ("30 hours", 30 * HOUR_NS),
    ("10 days", 240 * HOUR_NS),
    ("30 days", 720 * HOUR_NS),
];
/// The HTTP runs drawn in the phase chart (the newest ones).
const HTTP_RUNS: usize = 120;
/// The path changes listed (the newest ones).
const PATH_CHANGES: usize = 50;

pub fn page(source: &PageSource, name: &str) -> PageResult<Markup> {
    let store = source.store()?;
    let pings: Vec<_> = store
        .latest_pings()?
        .into_iter()
        .filter(|p| p.target == name)
        .collect();
    let checks: Vec<_> = store
        .latest_checks()?
        .into_iter()
        .filter(|c| c.target == name)
        .collect();
    let traces: Vec<_> = store
        .latest_traces()?
        .into_iter()
        .filter(|t| t.target == name)
        .collect();
    if pings.is_empty() && checks.is_empty() && traces.is_empty() {
        return Err(PageError::NotFound(format!(
            "no target {name:?} in the store"
        )));
    }
    let now = SystemTime::now();
    // The charts end at this target's latest result: a store copied off a machine days ago
    // still shows its last hours.
    let end = pings
        .iter()
        .map(|p| p.timestamp_ns)
        .chain(checks.iter().map(|c| c.timestamp_ns))
        .chain(traces.iter().map(|t| t.timestamp_ns))
        .max()
        .unwrap_or(0);
    let drafts: Vec<_> = incidents::load_all(source)?
        .into_iter()
        .filter_map(|d| d.incident.ok().map(|i| (d.id, i)))
        .filter(|(_, i)| i.affects(name))
        .collect();

    let mut ping_sections = Vec::new();
    for ping in &pings {
        let mut charts = Vec::new();
        for (label, span) in SPANS {
            let from = end - span;
            let points = thin(
                store.ping_series(&ping.probe, name, from, end)?,
                from,
                end,
                CHART_POINTS,
            );
            let series = Series {
                probe: ping.probe.clone(),
                target: name.to_string(),
                points,
            };
            let title = format!("{name} ({}), last {label}", ping.probe);
            charts.push((label, chart::smoke_chart(&title, &series, from, end)));
        }
        ping_sections.push((ping, charts));
    }
    let mut trace_sections = Vec::new();
    for trace in &traces {
        let latest = store.latest_trace(&trace.probe, name)?;
        let changes =
            store.path_changes(&trace.probe, name, end - 720 * HOUR_NS, end, PATH_CHANGES)?;
        trace_sections.push((trace, latest, changes));
    }
    let mut http_charts = Vec::new();
    for check in checks.iter().filter(|c| c.measurement == "http") {
        let runs = store.check_history(&check.probe, name, end - 30 * HOUR_NS, end)?;
        let runs = &runs[runs.len().saturating_sub(HTTP_RUNS)..];
        http_charts.push((check.probe.clone(), http_phases(name, &check.probe, runs)));
    }

    let body = html! {
        @for (ping, charts) in &ping_sections {
            @let state = State::of_ping(ping);
            section.ping data-probe=(ping.probe) {
                h2 { "Ping: " (ping.probe) }
                table.latest {
                    thead { tr {
                        th { "State" } th { "Loss" } th { "Sent" } th { "Median ms" } th { "P10–P90 ms" }
                        th { "Max ms" } th { "Address" } th { "Last round" } th { "Failure" }
                    } }
                    tbody { tr class={ "state-" (state.as_str()) } {
                        td.state { (state.as_str()) }
                        td.num.loss { (pct(ping.loss_pct)) }
                        td.num { (ping.sent) }
                        td.num.median { (ms(ping.rtt_median_ms)) }
                        td.num { (ms(ping.rtt_p10_ms)) "–" (ms(ping.rtt_p90_ms)) }
                        td.num { (ms(ping.rtt_max_ms)) }
                        td { (ping.address.clone().unwrap_or_default()) }
                        td title=(layout::ago(ping.timestamp_ns, now)) { (layout::at(ping.timestamp_ns)) }
                        td.failure { (ping.failure.clone().unwrap_or_default()) }
                    } }
                }
                div.charts {
                    @for (label, svg) in charts {
                        figure.chart data-span=(label) { (PreEscaped(svg)) }
                    }
                }
            }
        }
        @for (trace, latest, changes) in &trace_sections {
            section.trace data-probe=(trace.probe) {
                h2 { "Path: " (trace.probe) }
                p {
                    "Latest trace " (layout::at(trace.timestamp_ns)) ": "
                    @if trace.reached { "reached the target" } @else { "did not reach the target" }
                    @if trace.path_changed { ", a new path" }
                    @if let Some(verdict) = trace.verdict.as_ref().or(trace.failure.as_ref()) { " — " span.verdict { (verdict) } }
                }
                @if let Some(latest) = latest { (mtr_table(&latest.fields)) }
                h3 { "Path changes (last 30 days)" }
                @if changes.is_empty() {
                    p.muted { "No path change recorded." }
                } @else {
                    table.path-changes {
                        thead { tr { th { "At" } th { "Hops" } th { "New path" } } }
                        tbody {
                            @for change in changes {
                                @let hops = hop_addresses(&change.fields);
                                tr {
                                    td { (layout::at(change.timestamp_ns)) }
                                    td.num { (hops.len()) }
                                    td.path { (hops.join(" > ")) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !checks.is_empty() {
            section #checks {
                h2 { "Service checks" }
                (checks_table(&checks, now))
                @for (probe, svg) in &http_charts {
                    figure.http-chart data-probe=(probe) { (PreEscaped(svg)) }
                }
            }
        }
        section #incidents {
            h2 { "Incidents" }
            @if drafts.is_empty() {
                p.muted { "None." }
            } @else {
                ul {
                    @for (id, incident) in &drafts {
                        li class=[incident.is_open().then_some("incident-open")] {
                            a href={ "/incidents/" (segment(id)) } { (incident.title) }
                            " — " (incident.status.as_str()) ", detected " (incident.detected_at.display())
                            @if let Some(s) = incident.duration_s { ", lasted " (human_duration(Duration::from_secs(s))) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(name, Nav::None, body))
}

fn hop_addresses(fields: &serde_json::Value) -> Vec<String> {
    fields["hops"]
        .as_array()
        .map(|hops| {
            hops.iter()
                .map(|hop| hop["addresses"][0].as_str().unwrap_or("???").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A trace as `mtr --report` shows it.
fn mtr_table(fields: &serde_json::Value) -> Markup {
    let empty = Vec::new();
    let hops = fields["hops"].as_array().unwrap_or(&empty);
    html! {
        table.mtr {
            thead { tr {
                th { "TTL" } th { "Host" } th { "Loss%" } th { "Snt" } th { "Last" } th { "Avg" }
                th { "Best" } th { "Wrst" } th { "StDev" }
            } }
            tbody {
                @for hop in hops {
                    @let addresses: Vec<&str> = hop["addresses"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
                    tr {
                        td.num { (hop["ttl"].as_u64().unwrap_or(0)) }
                        td.host { @if addresses.is_empty() { "???" } @else { (addresses.join(" / ")) } }
                        td.num.loss { (pct(hop["loss_pct"].as_f64().unwrap_or(100.0))) }
                        td.num { (hop["sent"].as_u64().unwrap_or(0)) }
                        @for field in ["rtt_last_ms", "rtt_avg_ms", "rtt_best_ms", "rtt_worst_ms", "rtt_stddev_ms"] {
                            td.num { (ms(hop[field].as_f64())) }
                        }
                    }
                }
            }
        }
    }
}

/// HTTP runs as stacked bars of their phases (resolve, connect, TLS, processing, transfer); a
/// failed run is a red bar of full height.
fn http_phases(target: &str, probe: &str, runs: &[CheckPoint]) -> String {
    const PHASES: [(&str, &str, &str); 5] = [
        ("resolve", "resolve_ms", "#9ecae1"),
        ("connect", "connect_ms", "#4292c6"),
        ("tls", "tls_ms", "#807dba"),
        ("processing", "processing_ms", "#fd8d3c"),
        ("transfer", "transfer_ms", "#74c476"),
    ];
    let (width, height, left, top) = (800.0, 220.0, 60.0, 50.0);
    let plot = height - top - 30.0;
    let mut svg = Svg::default();
    svg.text(
        "title",
        width / 2.0,
        14.0,
        "middle",
        &format!("{target} ({probe}): HTTP phases, last {} runs", runs.len()),
    );
    let mut x = left;
    for (name, _, colour) in PHASES {
        svg.rect("legend", x, 22.0, 12.0, 8.0, colour);
        svg.text("legend", x + 15.0, 30.0, "start", name);
        x += 90.0;
    }
    svg.rect("legend", x, 22.0, 12.0, 8.0, "#e00000");
    svg.text("legend", x + 15.0, 30.0, "start", "failed");
    let max = runs
        .iter()
        .filter(|r| r.success)
        .map(|r| {
            PHASES
                .iter()
                .filter_map(|(_, field, _)| r.fields[field].as_f64())
                .sum::<f64>()
        })
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let bottom = top + plot;
    svg.line(
        "axis",
        (left, bottom),
        (width - 20.0, bottom),
        "#000000",
        1.0,
    );
    svg.text(
        "y-label",
        left - 4.0,
        top + 10.0,
        "end",
        &format!("{max:.1} ms"),
    );
    svg.text("y-label", left - 4.0, bottom, "end", "0 ms");
    let slot = (width - 20.0 - left) / runs.len().max(1) as f64;
    for (i, run) in runs.iter().enumerate() {
        let x = left + i as f64 * slot;
        let bar = (slot * 0.8).max(1.0);
        if !run.success {
            svg.rect("http-failed", x, top, bar, plot, "#e00000");
            continue;
        }
        let mut y = bottom;
        for (name, field, colour) in PHASES {
            if let Some(ms) = run.fields[field].as_f64().filter(|ms| *ms > 0.0) {
                let h = ms / max * plot;
                y -= h;
                svg.rect(&format!("http-phase-{name}"), x, y, bar, h, colour);
            }
        }
    }
    if let (Some(first), Some(last)) = (runs.first(), runs.last()) {
        let mut label = String::new();
        let _ = write!(label, "{}", layout::at(first.timestamp_ns));
        svg.text("x-label", left, bottom + 14.0, "start", &label);
        svg.text(
            "x-label",
            width - 20.0,
            bottom + 14.0,
            "end",
            &layout::at(last.timestamp_ns),
        );
    }
    svg.finish_inline(width, height, &format!("{target} ({probe}): HTTP phases"))
}
