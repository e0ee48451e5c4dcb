//! The overview: open incidents on top, then every target grouped by its site, problems first —
//! state, the latest round's loss and median (the figures of `vantage report`), a sparkline of
//! the last three hours from the 5-minute rollup — and the latest service check of each.

use std::collections::BTreeMap;
use std::time::SystemTime;

use maud::{Markup, PreEscaped, html};

use super::layout::{self, Nav, ms, pct, segment};
use super::series::sparkline;
use super::{PageResult, PageSource, incidents};
use crate::store::{LatestCheck, LatestPing};

/// The sparkline's window.
const SPARK_NS: i64 = 3 * 3600 * 1_000_000_000;
/// Open incidents listed on the overview; the rest are one link away. A mass outage opens
/// thousands, and each was a line here.
const OPEN_SHOWN: usize = 20;

/// How a target is doing, worst first (the order of the rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Down,
    Failing,
    Loss,
    Ok,
}

impl State {
    pub fn of_ping(ping: &LatestPing) -> State {
        if ping.loss_pct >= 100.0 {
            State::Down
        } else if ping.loss_pct > 0.0 {
            State::Loss
        } else {
            State::Ok
        }
    }

    pub fn of_check(check: &LatestCheck) -> State {
        if check.success {
            State::Ok
        } else {
            State::Failing
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Down => "down",
            State::Failing => "failing",
            State::Loss => "loss",
            State::Ok => "ok",
        }
    }
}

pub fn page(source: &PageSource) -> PageResult<Markup> {
    let store = source.store()?;
    let pings = store.latest_pings()?;
    let mut checks = store.latest_checks()?;
    let drafts = incidents::load_all(source)?;
    let now = SystemTime::now();
    let end = pings.iter().map(|p| p.timestamp_ns).max().unwrap_or(0);

    let mut sites: BTreeMap<&str, Vec<(State, &LatestPing, String)>> = BTreeMap::new();
    for ping in &pings {
        let from = end - SPARK_NS;
        let series = store.ping_sparkline(&ping.probe, &ping.target, from, end)?;
        let spark = sparkline(&series, from, end);
        sites.entry(ping.target_site.as_str()).or_default().push((
            State::of_ping(ping),
            ping,
            spark,
        ));
    }
    let mut sites: Vec<_> = sites.into_iter().collect();
    for (_, rows) in &mut sites {
        rows.sort_by(|a, b| (a.0, &a.1.target, &a.1.probe).cmp(&(b.0, &b.1.target, &b.1.probe)));
    }
    // The site with the worst target first.
    sites.sort_by_key(|(site, rows)| (rows.first().map(|r| r.0), site.to_string()));
    checks.sort_by(|a, b| {
        (State::of_check(a), &a.target, &a.probe).cmp(&(State::of_check(b), &b.target, &b.probe))
    });
    let open: Vec<_> = drafts
        .iter()
        .filter_map(|d| d.incident.as_ref().ok())
        .filter(|i| i.is_open())
        .collect();
    let more_open = open.len().saturating_sub(OPEN_SHOWN);

    let body = html! {
        @if !open.is_empty() {
            section #open-incidents {
                h2 { "Open incidents (" (open.len()) ")" }
                @for incident in open.iter().take(OPEN_SHOWN) {
                    p.incident-open {
                        a href={ "/incidents/" (segment(&incident.id)) } { (incident.title) }
                        " — " (incident.severity) ", detected " (incident.detected_at.display())
                    }
                }
                @if more_open > 0 {
                    p #more-open {
                        "… and " (more_open) " more: " a href="/incidents" { "every incident" }
                    }
                }
            }
        }
        @if pings.is_empty() && checks.is_empty() {
            p.muted { "Nothing stored yet." }
        }
        @for (site, rows) in &sites {
            section.site {
                h2 { "Site " (site) }
                table.targets {
                    thead { tr {
                        th { "Target" } th { "Probe" } th { "State" } th { "Loss" } th { "Sent" }
                        th { "Median ms" } th { "P10–P90 ms" } th { "Last round" } th { "Last 3 h" }
                    } }
                    tbody {
                        @for (state, ping, spark) in rows {
                            tr class={ "state-" (state.as_str()) } data-target=(ping.target) data-probe=(ping.probe) {
                                td.target { a href={ "/targets/" (segment(&ping.target)) } { (ping.target) } }
                                td { (ping.probe) }
                                td.state { (state.as_str()) }
                                td.num.loss { (pct(ping.loss_pct)) }
                                td.num { (ping.sent) }
                                td.num.median { (ms(ping.rtt_median_ms)) }
                                td.num { (p10_p90(ping)) }
                                td title=(layout::ago(ping.timestamp_ns, now)) { (layout::at(ping.timestamp_ns)) }
                                td { (PreEscaped(spark)) }
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
            }
        }
    };
    Ok(layout::page("Overview", Nav::Overview, body))
}

fn p10_p90(ping: &LatestPing) -> String {
    match (ping.rtt_p10_ms, ping.rtt_p90_ms) {
        (Some(lo), Some(hi)) => format!("{}–{}", ms(Some(lo)), ms(Some(hi))),
        _ => "-".into(),
    }
}

/// The headline time of a check and what its answer was, as `vantage report` prints them.
pub fn check_summary(check: &LatestCheck) -> (Option<f64>, String) {
    let f = &check.fields;
    let number = |name: &str| f[name].as_f64();
    match check.measurement.as_str() {
        "http" => {
            let mut detail = match f["status_code"].as_u64() {
                Some(code) => format!("HTTP {code}"),
                None => "no response".to_string(),
            };
            match f["redirects"].as_u64() {
                Some(0) | None => {}
                Some(1) => detail.push_str(", 1 redirect"),
                Some(n) => detail.push_str(&format!(", {n} redirects")),
            }
            if let Some(days) = number("cert_expiry_days") {
                detail.push_str(&format!(", cert {days:.0} d"));
            }
            (f["status_code"].as_u64().and(number("total_ms")), detail)
        }
        "dns" => {
            let detail = match f["rcode"].as_str() {
                Some(rcode) => {
                    let answers = f["answers"].as_u64().unwrap_or(0);
                    let noun = if answers == 1 { "answer" } else { "answers" };
                    format!(
                        "{rcode}, {answers} {} {noun}",
                        f["record_type"].as_str().unwrap_or("?")
                    )
                }
                None => "no response".to_string(),
            };
            (number("latency_ms"), detail)
        }
        _ => (
            number("connect_ms"),
            f["address"].as_str().unwrap_or("-").to_string(),
        ),
    }
}

/// The latest run of each (probe, target) check.
pub fn checks_table(checks: &[LatestCheck], now: SystemTime) -> Markup {
    html! {
        table.checks {
            thead { tr {
                th { "Target" } th { "Probe" } th { "Kind" } th { "Result" } th { "Time ms" }
                th { "Detail" } th { "Last run" } th { "Failure" }
            } }
            tbody {
                @for check in checks {
                    @let state = State::of_check(check);
                    @let (time, detail) = check_summary(check);
                    tr class={ "state-" (state.as_str()) } data-target=(check.target) data-probe=(check.probe) {
                        td { a href={ "/targets/" (segment(&check.target)) } { (check.target) } }
                        td { (check.probe) }
                        td { (check.measurement) }
                        td.state.result { @if check.success { "ok" } @else { "FAILED" } }
                        td.num.time { (ms(time)) }
                        td.detail { (detail) }
                        td title=(layout::ago(check.timestamp_ns, now)) { (layout::at(check.timestamp_ns)) }
                        td.failure { (check.failure.clone().unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::incidents::tests::many_drafts;

    /// After a mass outage the overview names the first open incidents and links to the rest.
    #[test]
    fn the_overview_lists_a_few_open_incidents_and_links_to_the_rest() {
        let (_dir, source) = many_drafts(250);
        let page = super::page(&source).expect("overview").into_string();
        assert_eq!(
            page.matches("class=\"incident-open\"").count(),
            20,
            "{page}"
        );
        assert!(page.contains("Open incidents (31)"), "{page}");
        assert!(
            page.contains("… and 11 more: <a href=\"/incidents\">"),
            "{page}"
        );
    }
}
