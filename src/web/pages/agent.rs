//! The agent: each output's delivery state from the spool (pending points, the oldest one,
//! delivered, dropped, dead letters, the last error), how late each probe's latest result is, and
//! a summary of the config when there is one (never a secret: no tokens, no passwords, and URLs
//! without their user info).

use std::collections::BTreeMap;
use std::time::SystemTime;

use maud::{Markup, html};

use super::layout::{self, Nav};
use super::{PageResult, PageSource};
use crate::config::{Config, format_duration};
use crate::sinks::Spool;

pub fn page(source: &PageSource) -> PageResult<Markup> {
    let store = source.store()?;
    let now = SystemTime::now();
    let config = source.config();
    let config = config.as_deref();
    // Per probe: its kind, how many targets, and its latest result.
    let mut probes: BTreeMap<String, (String, usize, i64)> = BTreeMap::new();
    let mut note = |probe: &str, kind: &str, ts: i64| {
        let entry = probes
            .entry(probe.to_string())
            .or_insert_with(|| (kind.to_string(), 0, ts));
        entry.1 += 1;
        entry.2 = entry.2.max(ts);
    };
    for p in store.latest_pings()? {
        note(&p.probe, "icmp", p.timestamp_ns);
    }
    for c in store.latest_checks()? {
        note(&c.probe, &c.measurement, c.timestamp_ns);
    }
    for t in store.latest_traces()? {
        note(&t.probe, "trace", t.timestamp_ns);
    }
    let spool = Spool::open_read_only(&source.data_dir)?;
    let totals = match &spool {
        Some(spool) => spool.totals()?,
        None => Vec::new(),
    };

    let body = html! {
        section #delivery {
            h2 { "Outputs" }
            @if totals.is_empty() {
                p.muted { "No output has spooled anything (no [[output]], or no spool.db in the data directory)." }
            } @else {
                table.delivery {
                    thead { tr {
                        th { "Output" } th { "Pending" } th { "Bytes" } th { "Oldest pending" } th { "Delivered" }
                        th { "Dropped" } th { "Dead letters" } th { "Last delivery" } th { "Last error" }
                    } }
                    tbody {
                        @for t in &totals {
                            tr data-output=(t.name) {
                                td { (t.name) }
                                td.num.pending { (t.pending_points) }
                                td.num { (probes::files::human_size(t.pending_bytes)) }
                                td { (t.oldest_pending_ts_ns.map_or("-".into(), |ts| layout::ago(ts, now))) }
                                td.num.delivered { (t.delivered) }
                                td.num.dropped { (t.dropped()) }
                                td.num.dead-letters { (t.dead_letter) }
                                td { (t.last_delivery_ns.map_or("never".into(), |ts| layout::ago(ts, now))) }
                                td.error { (t.last_error.clone().unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
        section #probes {
            h2 { "Probes" }
            table.probes {
                thead { tr {
                    th { "Probe" } th { "Kind" } th { "Targets" } th { "Latest result" } th { "Age" } th { "Interval" } th { "Lag" }
                } }
                tbody {
                    @for (name, (kind, targets, latest)) in &probes {
                        @let interval = config.and_then(|c| c.probes.iter().find(|p| &p.name == name)).map(|p| p.interval);
                        @let age = now.duration_since(layout::time(*latest)).unwrap_or_default();
                        tr data-probe=(name) {
                            td { (name) }
                            td { (kind) }
                            td.num { (targets) }
                            td { (layout::at(*latest)) }
                            td { (layout::ago(*latest, now)) }
                            td { (interval.map_or("-".into(), format_duration)) }
                            td.lag {
                                @match interval {
                                    Some(interval) if age > interval * 2 => { "late by " (format_duration(age.saturating_sub(interval))) }
                                    Some(_) => "on time",
                                    None => "-",
                                }
                            }
                        }
                    }
                }
            }
        }
        @match config {
            Some(config) => (config_summary(config)),
            None => section #config {
                h2 { "Config" }
                p.muted { "Not available: started without --config (the pages read the data directory only)." }
            },
        }
    };
    Ok(layout::page("Agent", Nav::Agent, body))
}

/// `https://user:secret@host/x` → `https://***@host/x`.
pub fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_string(),
    }
}

fn config_summary(config: &Config) -> Markup {
    let agent = &config.agent;
    html! {
        section #config {
            h2 { "Config" }
            p {
                "Agent " strong { (agent.name) } " at site " strong { (agent.site) }
                ", data in " code { (agent.data_dir.display()) }
                ", kept " (format_duration(agent.retention)) "."
            }
            h3 { "Targets" }
            table.config-targets {
                thead { tr { th { "Name" } th { "Host" } th { "Site" } th { "Labels" } } }
                tbody {
                    @for t in &config.targets {
                        tr {
                            td { (t.name) } td { (t.host) } td { (t.site) }
                            td.labels { (t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")) }
                        }
                    }
                }
            }
            h3 { "Probes" }
            table.config-probes {
                thead { tr { th { "Name" } th { "Kind" } th { "Interval" } th { "Timeout" } th { "Targets" } } }
                tbody {
                    @for p in &config.probes {
                        tr {
                            td { (p.name) } td { (p.kind.name()) } td { (format_duration(p.interval)) }
                            td { (format_duration(p.timeout)) }
                            td { @if p.targets.is_empty() { "all" } @else { (p.targets.join(", ")) } }
                        }
                    }
                }
            }
            h3 { "Rules" }
            table.config-rules {
                thead { tr { th { "Name" } th { "Kind" } th { "Scope" } th { "Probes" } } }
                tbody {
                    @for r in &config.rules {
                        tr {
                            td { (r.name) } td { (r.condition.kind()) } td { (r.scope.kind()) }
                            td { @if r.probes.is_empty() { "all" } @else { (r.probes.join(", ")) } }
                        }
                    }
                }
            }
            h3 { "Outputs and incident sinks" }
            ul {
                @for o in &config.outputs {
                    li { "output " (o.name) " (" (o.kind.name()) "): " code { (without_userinfo(&o.url)) } }
                }
                @for s in &config.incident_sinks {
                    li { "incident sink " (s.name) " (" (s.kind.name()) "): " code { (without_userinfo(&s.url)) } }
                }
                li { "incident drafts: the data directory's incidents/ folder" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_user_info() {
        assert_eq!(
            without_userinfo("https://user:s3cret@influx.example:8086/x?y=1"),
            "https://***@influx.example:8086/x?y=1"
        );
        assert_eq!(
            without_userinfo("http://127.0.0.1:8428/a@b"),
            "http://127.0.0.1:8428/a@b"
        );
        assert_eq!(without_userinfo("not a url"), "not a url");
    }
}
