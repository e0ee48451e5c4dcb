//! The status document: pure functions from an [`Incident`] to text. The Markdown follows the
//! incident process the draft serves: what is affected and how badly (impact, symptoms, scope),
//! the evidence, a timeline, who to engage, and status updates ready to send.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::evidence::HEALTHY_BELOW_LOSS_PCT;
use super::{Incident, Status};
use crate::rules::{Impact, Metric, Scope};

/// `34`, `2.5`: a percentage as people write it.
pub fn pct(value: f64) -> String {
    if (value - value.round()).abs() < 0.05 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) => format!("{v:.1} ms"),
        None => "-".into(),
    }
}

/// `1h 10m`, `3m 20s`, `45s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 if s % 60 == 0 => format!("{}m", s / 60),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ if s % 3600 == 0 => format!("{}h", s / 3600),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// What is wrong, with its figure: `34% packet loss`, `high latency (rtt_median_ms 180 ms)`.
pub fn symptom(impact: &Impact) -> String {
    let value = impact.value;
    match impact.metric {
        Metric::LossPct => format!("{}% packet loss", pct(value.unwrap_or(100.0))),
        Metric::FailedRunsPct => match value {
            Some(v) => format!("failing checks ({}% of runs)", pct(v)),
            None => "failing checks".into(),
        },
        Metric::LatencyMs(field) => {
            let baseline = impact.affected.iter().find_map(|m| m.baseline);
            match (value, baseline) {
                (Some(v), Some(b)) if b > 0.0 => format!(
                    "high latency ({} {}, {:.1}× its baseline of {})",
                    field.as_str(),
                    ms(Some(v)),
                    v / b,
                    ms(Some(b))
                ),
                (Some(v), _) => format!("high latency ({} {})", field.as_str(), ms(Some(v))),
                _ => "high latency".into(),
            }
        }
    }
}

/// Who is affected: `to sjc1-core`, `to cloud (3 of 4 targets)`, `from this agent (agent-side:
/// 9 of 9 targets)`.
pub fn scope_phrase(scope: &Scope, impact: &Impact) -> String {
    let n = impact.affected_targets().len();
    let total = impact.total_targets;
    match scope {
        Scope::Target { target } => format!("to {target}"),
        Scope::Group { value, .. } => format!("to {value} ({n} of {total} targets)"),
        Scope::Agent => format!("from this agent (agent-side: {n} of {total} targets)"),
    }
}

/// `YYYY-MM-DD [site] <symptom> <scope>`.
pub fn title(incident: &Incident) -> String {
    format!(
        "{} [{}] {} {}",
        incident.detected_at.date(),
        incident.site,
        symptom(&incident.impact),
        scope_phrase(&incident.scope, &incident.impact)
    )
}

/// One sentence of impact: "34% packet loss (worst 50%) on 3 of 4 targets of group=cloud: a, b, c".
pub fn impact_sentence(impact: &Impact, scope: &Scope) -> String {
    let names = impact.affected_targets();
    if names.is_empty() {
        return "no target is affected any more".into();
    }
    let mut text = symptom(impact);
    if let (Some(worst), Some(value), Metric::LossPct | Metric::FailedRunsPct) =
        (impact.worst, impact.value, impact.metric)
        && names.len() > 1
        && worst > value + 0.05
    {
        text.push_str(&format!(" on average (worst {}%)", pct(worst)));
    }
    let of = match scope {
        Scope::Target { .. } => String::new(),
        Scope::Group { label, value } => format!(" of the `{label}={value}` group"),
        Scope::Agent => " of this agent".into(),
    };
    format!(
        "{text} on {} of {} targets{of}: {}",
        names.len(),
        impact.total_targets,
        names.join(", ")
    )
}

fn peak_phrase(incident: &Incident) -> String {
    let value = incident.peak.value.map(|v| match incident.impact.metric {
        Metric::LossPct => format!("{}% packet loss", pct(v)),
        Metric::FailedRunsPct => format!("{}% of runs failing", pct(v)),
        Metric::LatencyMs(field) => format!("{} {}", field.as_str(), ms(Some(v))),
    });
    let targets = incident.peak.affected_targets;
    match value {
        Some(value) => format!(
            "{value} on {targets} of {} targets",
            incident.impact.total_targets
        ),
        None => format!("{targets} of {} targets", incident.impact.total_targets),
    }
}

pub fn resolution_text(incident: &Incident, open_for: Duration) -> String {
    format!(
        "Resolved after {}: the clear conditions held. Peak impact: {}.",
        human_duration(open_for),
        peak_phrase(incident)
    )
}

/// A status update ready to paste into the channel or the bug.
pub fn status_update_text(
    incident: &Incident,
    number: u32,
    now: SystemTime,
    every: Duration,
) -> String {
    let at = super::Timestamp(now);
    let next = super::Timestamp(now + every);
    let ongoing = now
        .duration_since(incident.detected_at.0)
        .unwrap_or_default();
    format!(
        "{title}\n\
         Status update {number} at {time} UTC (DRAFT; incident coordinator: unassigned).\n\
         Ongoing for {ongoing} since {detected} UTC. Current impact: {impact}. Peak so far: {peak}.\n\
         Next update by {next} UTC.",
        title = incident.title,
        time = &at.time()[..5],
        ongoing = human_duration(ongoing),
        detected = &incident.detected_at.time()[..5],
        impact = impact_sentence(&incident.impact, &incident.scope),
        peak = peak_phrase(incident),
        next = &next.time()[..5],
    )
}

fn scope_name(scope: &Scope) -> String {
    match scope {
        Scope::Target { target } => format!("target `{target}`"),
        Scope::Group { label, value } => format!("group `{label}={value}`"),
        Scope::Agent => "the whole agent (agent-side)".into(),
    }
}

/// The localization the contrast supports, in one sentence.
fn localization(incident: &Incident) -> String {
    let healthy = incident.evidence.healthy_others().count();
    let others = incident.evidence.others.len();
    if matches!(incident.scope, Scope::Agent) {
        return "Every watched target is affected from this agent at once: the fault is most \
                likely on the agent's side — this host, its uplink or the site's edge — not at the \
                targets."
            .into();
    }
    if others == 0 {
        return "This agent measures no other target, so the contrast cannot localize the fault."
            .into();
    }
    if healthy == others {
        format!(
            "All {others} other targets measured from this agent are healthy, so the agent and its \
             uplink work: the fault lies between this site and the affected targets, or at them."
        )
    } else {
        format!(
            "{healthy} of {others} other targets measured from this agent are healthy; the \
             others are listed below — look for what they share with the affected targets."
        )
    }
}

/// The whole status document.
pub fn markdown(incident: &Incident) -> String {
    let mut md = String::new();
    let status = match incident.status {
        Status::Open => "DRAFT — open",
        Status::Resolved => "DRAFT — resolved",
    };
    let _ = writeln!(md, "# {}\n", incident.title);
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| **Status** | {status} |");
    let _ = writeln!(md, "| **Severity** | {} |", incident.severity);
    let _ = writeln!(
        md,
        "| **Detected at** | {} by agent `{}` (site {}) |",
        incident.detected_at.display(),
        incident.agent,
        incident.site
    );
    if let Some(resolved) = incident.resolved_at {
        let _ = writeln!(md, "| **Resolved at** | {} |", resolved.display());
        if let Some(s) = incident.duration_s {
            let _ = writeln!(
                md,
                "| **Duration** | {} |",
                human_duration(Duration::from_secs(s))
            );
        }
    }
    let _ = writeln!(md, "| **Incident coordinator** | unassigned |");
    let _ = writeln!(md, "| **Incident ID** | {} |", incident.id);
    let _ = writeln!(
        md,
        "| **Rule** | `{}`: {} |",
        incident.rule.name, incident.rule.condition
    );
    let _ = writeln!(md, "| **Dedup key** | `{}` |", incident.key);

    let _ = writeln!(md, "\n## Impact\n");
    let _ = writeln!(
        md,
        "{} ({}).",
        capitalize_first(&impact_sentence(&incident.impact, &incident.scope)),
        match incident.status {
            Status::Open => "now",
            Status::Resolved => "as last reported while open",
        }
    );
    let _ = writeln!(md, "\nPeak: {}.", peak_phrase(incident));

    let _ = writeln!(md, "\n## Symptoms\n");
    if incident.impact.affected.is_empty() {
        let _ = writeln!(md, "No target is breaching any more.");
    } else {
        let value_header = match incident.impact.metric {
            Metric::LossPct => "loss".to_string(),
            Metric::FailedRunsPct => "failed runs".to_string(),
            Metric::LatencyMs(field) => field.as_str().to_string(),
        };
        let _ = writeln!(
            md,
            "| target | probe | {value_header} | latest failure |\n|---|---|---:|---|"
        );
        for m in &incident.impact.affected {
            let value = match (m.value, incident.impact.metric) {
                (Some(v), Metric::LatencyMs(_)) => ms(Some(v)),
                (Some(v), _) => format!("{}%", pct(v)),
                (None, _) => "-".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {value} | {} |",
                m.target,
                m.probe,
                m.failure.as_deref().unwrap_or("")
            );
        }
    }

    let _ = writeln!(md, "\n## Scope and localization\n");
    let _ = writeln!(
        md,
        "- Scope: {} — {} of {} targets affected.",
        scope_name(&incident.scope),
        incident.impact.affected_targets().len(),
        incident.impact.total_targets
    );
    let _ = writeln!(md, "- {}", localization(incident));
    match &incident.trace {
        Some(trace) => {
            let _ = writeln!(md, "- Path trace verdict: **{}**", trace.verdict_text);
            let _ = writeln!(md, "\n```text\n{}\n```", trace.report_text.trim_end());
        }
        None => {
            let _ = writeln!(
                md,
                "- Path trace: none attached; run `vantage trace` (or `mtr --report`) to \
                 each affected target and paste it here."
            );
        }
    }

    let _ = writeln!(md, "\n## Evidence\n");
    if let (Some(from), Some(to)) = (incident.evidence.window_from, incident.evidence.window_to) {
        let _ = writeln!(
            md,
            "Window: {} to {} (the history before the breach, and during it).\n",
            from.display(),
            to.display()
        );
    }
    let _ = writeln!(
        md,
        "![latency and loss](chart.svg)\n\nRaw data: `evidence.json` in this folder.\n"
    );
    let _ = writeln!(md, "### Latency and loss\n");
    if incident.evidence.series.is_empty() {
        let _ = writeln!(md, "No history in the store for the affected targets.");
    }
    for series in &incident.evidence.series {
        let rounds = series.points.len();
        let lossy = series.points.iter().filter(|p| p.loss_pct > 0.0).count();
        let medians: Vec<f64> = series
            .points
            .iter()
            .filter_map(|p| p.rtt_median_ms)
            .collect();
        let median = crate::rules::median(medians.iter().copied());
        let _ = writeln!(
            md,
            "**{}** ({}): {rounds} rounds, {lossy} with loss; median RTT {} over the window.\n",
            series.target,
            series.probe,
            ms(median)
        );
        let _ = writeln!(
            md,
            "| time (UTC) | loss | median | p10–p90 | failure |\n|---|---:|---:|---:|---|"
        );
        // The latest rounds matter most; older ones are in the chart and evidence.json.
        let shown = 15;
        for p in series.points.iter().skip(rounds.saturating_sub(shown)) {
            let at = super::Timestamp::from_unix_ns(p.timestamp_ns);
            let spread = match (p.rtt_p10_ms, p.rtt_p90_ms) {
                (Some(lo), Some(hi)) => format!("{}–{}", ms(Some(lo)), ms(Some(hi))),
                _ => "-".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {}% | {} | {spread} | {} |",
                at.time(),
                pct(p.loss_pct),
                ms(p.rtt_median_ms),
                p.failure.as_deref().unwrap_or("")
            );
        }
        if rounds > shown {
            let _ = writeln!(
                md,
                "\n({} earlier rounds in the chart and evidence.json.)",
                rounds - shown
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "### Failing results\n");
    if incident.evidence.failing.is_empty() {
        let _ = writeln!(md, "None in the window: the rounds answered, with loss.\n");
    } else {
        let _ = writeln!(
            md,
            "| time (UTC) | target | probe | address | kind | error |\n|---|---|---|---|---|---|"
        );
        for f in &incident.evidence.failing {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                f.at.time(),
                f.target,
                f.probe,
                f.address.as_deref().unwrap_or("-"),
                f.kind.as_deref().unwrap_or("-"),
                f.error
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "### Other targets from this agent\n");
    if incident.evidence.others.is_empty() {
        let _ = writeln!(md, "None.");
    } else {
        let healthy = incident.evidence.healthy_others().count();
        let _ = writeln!(
            md,
            "{healthy} of {} healthy (latest round answered with under {}% loss).\n",
            incident.evidence.others.len(),
            pct(HEALTHY_BELOW_LOSS_PCT)
        );
        let _ = writeln!(
            md,
            "| target | site | probe | state | loss | median | last seen (UTC) |\n|---|---|---|---|---:|---:|---|"
        );
        for c in &incident.evidence.others {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {}% | {} | {} |",
                c.target,
                c.target_site,
                c.probe,
                if c.healthy { "healthy" } else { "unhealthy" },
                pct(c.loss_pct),
                ms(c.rtt_median_ms),
                c.last_seen.time()
            );
        }
    }

    let _ = writeln!(md, "\n## Timeline (UTC)\n");
    for entry in &incident.timeline {
        let _ = writeln!(
            md,
            "- {} {} — {}",
            entry.at.date(),
            entry.at.time(),
            entry.text
        );
    }

    let _ = writeln!(md, "\n## Engage\n");
    let affected = incident.impact.affected_targets();
    let segment = match &incident.scope {
        Scope::Agent => format!(
            "this site's network ({}: the agent host and its uplink)",
            incident.site
        ),
        Scope::Group { label, value } => {
            format!("the `{label}={value}` targets and the path to them")
        }
        Scope::Target { target } => format!("`{target}` and the path to it"),
    };
    let _ = writeln!(
        md,
        "- [ ] File a bug with this draft (attach `incident.md`, `chart.svg`, `evidence.json`)."
    );
    let _ = writeln!(md, "- [ ] Cc the owners of the faulty segment: {segment}.");
    if !affected.is_empty() && !matches!(incident.scope, Scope::Target { .. }) {
        let _ = writeln!(md, "  Affected: {}.", affected.join(", "));
    }
    let _ = writeln!(md, "- [ ] Set the channel topic to the bug number.");
    let _ = writeln!(md, "- [ ] Name an incident coordinator (now: unassigned).");
    let _ = writeln!(
        md,
        "- [ ] Send a status update every {} (drafts below).",
        human_duration(Duration::from_secs(incident.status_update_every_s))
    );

    let _ = writeln!(md, "\n## Status updates (drafts)\n");
    if incident.status_updates.is_empty() {
        let _ = writeln!(
            md,
            "The first draft is written {} after detection.",
            human_duration(Duration::from_secs(incident.status_update_every_s))
        );
    }
    for update in &incident.status_updates {
        let _ = writeln!(
            md,
            "### Update {} — {} UTC\n\n```text\n{}\n```\n",
            update.number,
            update.at.time(),
            update.text
        );
    }

    if incident.status == Status::Resolved {
        let _ = writeln!(md, "\n## Resolution\n");
        match incident
            .timeline
            .iter()
            .rev()
            .find(|e| e.event == "resolved")
        {
            Some(entry) => {
                let _ = writeln!(md, "{}", entry.text);
            }
            None => {
                let _ = writeln!(md, "Resolved.");
            }
        }
    }
    md
}

fn capitalize_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
