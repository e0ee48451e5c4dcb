//! The status document: pure functions from an [`Incident`] to text. The Markdown follows the
//! incident process the draft serves: what is affected and how badly (impact, symptoms, scope),
//! the evidence, a timeline, who to engage, and status updates ready to send. The fleet
//! evaluator's drafts (`Incident::fleet_sites`) speak by site, not of one agent and its targets.
//!
//! `golden/incident.md` is the whole document for a fixed incident (see the test
//! `the_status_document_matches_the_golden_file`; `UPDATE_GOLDEN=1` rewrites it after a reviewed
//! change).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::evidence::{
    CheckFigures, CheckRun, CheckSeries, Evidence, HEALTHY_BELOW_LOSS_PCT, MAX_CONTRAST,
};
use super::{Incident, Status};
use crate::rules::{Impact, Metric, Scope};
use crate::store::PingPoint;

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

/// `YYYY-MM-DD [site] <symptom> <scope>`; the fleet's: `YYYY-MM-DD [fleet] <symptom> to
/// aws-gw from 3 of 3 sites`.
pub fn title(incident: &Incident) -> String {
    let scope = match &incident.fleet_sites {
        Some(sites) => format!(
            "to {} from {}",
            fleet_subject(&incident.scope),
            sites.count()
        ),
        None => scope_phrase(&incident.scope, &incident.impact),
    };
    format!(
        "{} [{}] {} {scope}",
        incident.detected_at.date(),
        incident.site,
        symptom(&incident.impact),
    )
}

/// What a fleet incident is about: `aws-gw` (a target rule), `site scl3` (a site rule).
fn fleet_subject(scope: &Scope) -> String {
    match scope {
        Scope::Group { label, value } if label == crate::fleet::SITE_LABEL => {
            format!("site {value}")
        }
        Scope::Group { value, .. } => value.clone(),
        Scope::Target { target } => target.clone(),
        Scope::Agent => "the fleet".into(),
    }
}

/// The impact sentence of a draft: the agent's ([`impact_sentence`]), or the fleet's, by site:
/// "100% packet loss to aws-gw from 3 of 3 sites: iad1, scl3, sjc1".
pub fn incident_impact(incident: &Incident) -> String {
    let Some(sites) = &incident.fleet_sites else {
        return impact_sentence(&incident.impact, &incident.scope);
    };
    if sites.seeing.is_empty() {
        return "no site sees it any more".into();
    }
    let mut text = symptom(&incident.impact);
    if let (Some(worst), Some(value), Metric::LossPct | Metric::FailedRunsPct) = (
        incident.impact.worst,
        incident.impact.value,
        incident.impact.metric,
    ) && sites.seeing.len() > 1
        && worst > value + 0.05
    {
        text.push_str(&format!(" on average (worst {}%)", pct(worst)));
    }
    format!(
        "{text} to {} from {}: {}",
        fleet_subject(&incident.scope),
        sites.count(),
        sites.seeing.join(", ")
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
    if incident.fleet_sites.is_some() {
        // The fleet's incidents have one subject; its sites are in the impact.
        let subject = fleet_subject(&incident.scope);
        return match value {
            Some(value) => format!("{value} to {subject}"),
            None => subject,
        };
    }
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
        impact = incident_impact(incident),
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

/// What the contrast is made of: `targets`, `service checks`, or both.
fn others_noun(evidence: &Evidence, count: usize) -> &'static str {
    match (
        evidence.others.is_empty(),
        evidence.other_checks.is_empty(),
        count == 1,
    ) {
        (false, false, _) => "targets and service checks",
        (true, false, true) => "service check",
        (true, false, false) => "service checks",
        (_, _, true) => "target",
        _ => "targets",
    }
}

/// The localization the contrast supports, in one sentence.
fn localization(incident: &Incident) -> String {
    let (healthy, others) = incident.evidence.contrast_counts();
    let noun = others_noun(&incident.evidence, others);
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
    if healthy == 1 && others == 1 {
        format!(
            "The one other {noun} measured from this agent is healthy, so the agent and its \
             uplink work: the fault lies between this site and the affected targets, or at them."
        )
    } else if healthy == others {
        format!(
            "All {others} other {noun} measured from this agent are healthy, so the agent and its \
             uplink work: the fault lies between this site and the affected targets, or at them."
        )
    } else {
        let which = if incident.evidence.unlisted.all > 0 {
            "the first of the others"
        } else {
            "the others"
        };
        format!(
            "{healthy} of {others} other {noun} measured from this agent are healthy; {which} \
             are listed below — look for what they share with the affected targets."
        )
    }
}

/// The whole status document.
pub fn markdown(incident: &Incident) -> String {
    let mut md = String::new();
    header(&mut md, incident);
    impact(&mut md, incident);
    symptoms(&mut md, incident);
    scope_and_localization(&mut md, incident);
    seen_from_other_sites(&mut md, incident);
    evidence_section(&mut md, incident);
    timeline(&mut md, incident);
    engage(&mut md, incident);
    status_updates(&mut md, incident);
    resolution(&mut md, incident);
    md
}

/// The title and the facts table.
fn header(md: &mut String, incident: &Incident) {
    let status = match incident.status {
        Status::Open => "DRAFT — open",
        Status::Resolved => "DRAFT — resolved",
    };
    let _ = writeln!(md, "# {}\n", incident.title);
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| **Status** | {status} |");
    let _ = writeln!(md, "| **Severity** | {} |", incident.severity);
    if incident.fleet_sites.is_some() {
        let _ = writeln!(
            md,
            "| **Detected at** | {} by the fleet evaluator `{}`, from the store every site writes to |",
            incident.detected_at.display(),
            incident.agent,
        );
    } else {
        let _ = writeln!(
            md,
            "| **Detected at** | {} by agent `{}` (site {}) |",
            incident.detected_at.display(),
            incident.agent,
            incident.site
        );
    }
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
}

/// ## Impact: how bad, now or as last reported, and the peak.
fn impact(md: &mut String, incident: &Incident) {
    let _ = writeln!(md, "\n## Impact\n");
    let _ = writeln!(
        md,
        "{} ({}).",
        capitalize_first(&incident_impact(incident)),
        match incident.status {
            Status::Open => "now",
            Status::Resolved => "as last reported while open",
        }
    );
    let _ = writeln!(md, "\nPeak: {}.", peak_phrase(incident));
}

/// ## Symptoms: each affected target's figure.
fn symptoms(md: &mut String, incident: &Incident) {
    let _ = writeln!(md, "\n## Symptoms\n");
    if incident.impact.affected.is_empty() {
        let _ = writeln!(md, "No target is breaching any more.");
    } else {
        let value_header = match incident.impact.metric {
            Metric::LossPct => "loss".to_string(),
            Metric::FailedRunsPct => "failed runs".to_string(),
            Metric::LatencyMs(field) => field.as_str().to_string(),
        };
        // The fleet evaluator's probes are the sites.
        let source = if incident.fleet_sites.is_some() {
            "site"
        } else {
            "probe"
        };
        let _ = writeln!(
            md,
            "| target | {source} | {value_header} | latest failure |\n|---|---|---:|---|"
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
}

/// ## Scope and localization: how wide, where the fault lies, the path trace.
fn scope_and_localization(md: &mut String, incident: &Incident) {
    let _ = writeln!(md, "\n## Scope and localization\n");
    if let Some(sites) = &incident.fleet_sites {
        // The fleet measures nothing itself: the sites' figures and traces are the evidence.
        let _ = writeln!(
            md,
            "- Scope: {} — seen from {}{}.",
            fleet_subject(&incident.scope),
            sites.count(),
            if sites.seeing.is_empty() {
                String::new()
            } else {
                format!(" ({})", sites.seeing.join(", "))
            }
        );
        let _ = writeln!(
            md,
            "- The fleet verdict below localizes it from every site's figures and latest path \
             traces in the shared store (each site's trace is in its row)."
        );
        return;
    }
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
}

/// A peer whose last report is older than this is marked silent.
const SILENT_AFTER_MS: i64 = 60_000;

/// ## Seen from other sites: the fleet verdict, its reasoning, and a table per affected target
/// (one row per site), or why the fleet view is unavailable. Nothing without `[fleet]`.
fn seen_from_other_sites(md: &mut String, incident: &Incident) {
    let Some(fleet) = &incident.fleet else {
        return;
    };
    let heading = if incident.fleet_sites.is_some() {
        "Seen from every site"
    } else {
        "Seen from other sites"
    };
    let _ = writeln!(md, "\n## {heading}\n");
    let (Some(view), Some(verdict)) = (&fleet.view, &fleet.verdict) else {
        let _ = writeln!(
            md,
            "Fleet view unavailable: {} (asked {}; the timeline gets it when the store answers).",
            fleet.unavailable.as_deref().unwrap_or("no answer"),
            fleet.at.display()
        );
        return;
    };
    let now_ms = view.until_ms;
    let _ = writeln!(
        md,
        "**{}** — {}\n",
        capitalize_first(&verdict.seen_from),
        verdict_sentence(incident, verdict)
    );
    let _ = writeln!(
        md,
        "Reasoning (from the shared store, {} to {}):\n",
        window_time(view.from_ms),
        window_time(view.until_ms)
    );
    for line in &verdict.reasoning {
        let _ = writeln!(md, "- {}", cell(line));
    }
    for fleet_incident in &fleet.incidents {
        let _ = writeln!(md, "\n**{}**", fleet_incident_line(fleet_incident));
    }
    for target in &fleet.targets {
        let _ = writeln!(md, "\n`{target}`:\n");
        let _ = writeln!(
            md,
            "| site | agent | loss | median | failures | last report | latest trace |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        let rows: Vec<_> = view.rows.iter().filter(|r| r.target == *target).collect();
        for row in &rows {
            let loss = row
                .loss_pct()
                .map_or("-".to_string(), |l| format!("{}% of {}", pct(l), row.sent));
            let failures = if row.runs() > 0 {
                format!("{} of {}", row.failures(), row.runs())
            } else {
                "-".into()
            };
            let last = match row.last_report_ms {
                Some(last) if now_ms - last > SILENT_AFTER_MS => format!(
                    "⚠ {} last reported {}",
                    row.site,
                    crate::fleet::verdict::ago(now_ms, last)
                ),
                Some(last) => crate::fleet::verdict::ago(now_ms, last),
                None => "never".into(),
            };
            let trace = row.trace.as_ref().map_or("-".to_string(), |t| {
                t.hops
                    .iter()
                    .map(|h| h.address.clone().unwrap_or_else(|| "???".into()))
                    .collect::<Vec<_>>()
                    .join(" → ")
            });
            let mine = if row.site == incident.site {
                " (this site)"
            } else {
                ""
            };
            let _ = writeln!(
                md,
                "| {}{mine} | {} | {loss} | {} | {failures} | {last} | {} |",
                cell(&row.site),
                cell(&row.agent),
                ms(row.median_ms),
                cell(&trace)
            );
        }
        // A site that reports, but not on this target, or has gone silent altogether.
        for (site, last) in &view.site_last_report_ms {
            if rows.iter().any(|r| r.site == *site) {
                continue;
            }
            let marker = if now_ms - last > SILENT_AFTER_MS {
                format!(
                    "⚠ {site} last reported {}",
                    crate::fleet::verdict::ago(now_ms, *last)
                )
            } else {
                format!("reports, not on `{target}`")
            };
            let _ = writeln!(md, "| {} | - | - | - | - | {marker} | - |", cell(site));
        }
        if rows.is_empty() && view.site_last_report_ms.is_empty() {
            let _ = writeln!(md, "| (no site reported on it) | | | | | | |");
        }
    }
}

/// The verdict's sentence; for the fleet's site incident, what "every site sees the mesh target
/// fail" means: the site itself is down, not a target behind it.
fn verdict_sentence(incident: &Incident, verdict: &crate::fleet::verdict::Verdict) -> String {
    match (
        &incident.fleet_sites,
        &incident.scope,
        &verdict.localization,
    ) {
        (
            Some(sites),
            Scope::Group { label, value },
            crate::fleet::verdict::Localization::Target,
        ) if label == crate::fleet::SITE_LABEL => format!(
            "{} cannot reach site {value} → site {value} itself is down or cut off (its uplink, \
             edge or agent host).",
            sites.seeing.join(" and ")
        ),
        _ => verdict.sentence.clone(),
    }
}

/// "Fleet incident: <title> (20261130-001, fleet key `target/aws-gw`), opened 2026-11-30
/// 16:50:06 UTC by the fleet evaluator `fleet` — 3 of 3 sites see it". Without a title and ID
/// (VictoriaMetrics keeps no strings): "rule `cloud-unreachable` on target/aws-gw".
pub fn fleet_incident_line(incident: &crate::fleet::FleetIncident) -> String {
    let what = match &incident.title {
        Some(title) => cell(title),
        None => format!(
            "rule {} on {}",
            code(&incident.rule),
            cell(&incident.fleet_key)
        ),
    };
    let id = match &incident.id {
        Some(id) => format!("{}, ", cell(id)),
        None => String::new(),
    };
    let sites = match (incident.sites_seeing, incident.sites_total) {
        (Some(seeing), Some(total)) => format!(" — {seeing} of {total} sites see it"),
        _ => String::new(),
    };
    format!(
        "Fleet incident: {what} ({id}fleet key {}), opened {} by the fleet evaluator {}{sites}",
        code(&incident.fleet_key),
        window_time(incident.opened_ms),
        code(&incident.evaluator)
    )
}

/// `10:15:00` of a Unix-ms time.
fn window_time(unix_ms: i64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    super::Timestamp(at).display()
}

/// ## Evidence: the window, the chart, the tables.
fn evidence_section(md: &mut String, incident: &Incident) {
    let _ = writeln!(md, "\n## Evidence\n");
    if incident.fleet_sites.is_some() {
        let _ = writeln!(
            md,
            "Every site's figures are in \"Seen from every site\" above, from the shared store; \
             each site's own draft has its rounds and path traces.\n\n\
             ![latency and loss](chart.svg)\n\nRaw data: `evidence.json` in this folder."
        );
        return;
    }
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
    let evidence = &incident.evidence;
    // A draft about service checks only has no ping history to show.
    if !evidence.series.is_empty() || evidence.checks.is_empty() {
        ping_evidence(md, evidence);
    }
    if !evidence.checks.is_empty() {
        check_evidence(md, evidence);
    }
    contrast(md, evidence);
}

/// ## Timeline (UTC).
fn timeline(md: &mut String, incident: &Incident) {
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
}

/// ## Engage: the checklist, with the owners of the faulty segment.
fn engage(md: &mut String, incident: &Incident) {
    let _ = writeln!(md, "\n## Engage\n");
    let affected = incident.impact.affected_targets();
    let segment = match &incident.scope {
        Scope::Group { label, value }
            if incident.fleet_sites.is_some() && label == crate::fleet::SITE_LABEL =>
        {
            format!("site {value}'s network (its uplink and edge), and its agent host")
        }
        Scope::Group { value, .. } if incident.fleet_sites.is_some() => format!(
            "`{value}` and the paths to it from the sites that see it (the verdict names the segment)"
        ),
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
}

/// ## Status updates (drafts).
fn status_updates(md: &mut String, incident: &Incident) {
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
}

/// ## Resolution, once resolved.
fn resolution(md: &mut String, incident: &Incident) {
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
}

fn capitalize_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The window of one series in at most [`SHOWN_ROUNDS`] rows, oldest first: one row per round
/// when they fit, else consecutive rounds pooled per row (loss over the echoes sent; the medians
/// of the rounds' figures), so that the rows before, during and after the breach are all there.
fn ping_history_table(md: &mut String, points: &[PingPoint]) {
    let _ = writeln!(
        md,
        "| time (UTC) | rounds | loss | median | p10–p90 | failed |\n|---|---:|---:|---:|---:|---:|"
    );
    let rows = points.len().min(SHOWN_ROUNDS);
    for row in 0..rows {
        let slice = &points[row * points.len() / rows..(row + 1) * points.len() / rows];
        let (Some(first), Some(last)) = (slice.first(), slice.last()) else {
            continue;
        };
        let time = |p: &PingPoint| super::Timestamp::from_unix_ns(p.timestamp_ns).time();
        let when = if slice.len() == 1 {
            time(first)
        } else {
            format!("{}–{}", time(first), time(last))
        };
        let sent: f64 = slice.iter().map(|p| f64::from(p.sent)).sum();
        let loss = if sent > 0.0 {
            slice
                .iter()
                .map(|p| f64::from(p.sent) * p.loss_pct)
                .sum::<f64>()
                / sent
        } else {
            slice.iter().map(|p| p.loss_pct).sum::<f64>() / slice.len() as f64
        };
        let median_of =
            |f: fn(&PingPoint) -> Option<f64>| probes::stats::median(slice.iter().filter_map(f));
        let spread = match (median_of(|p| p.rtt_p10_ms), median_of(|p| p.rtt_p90_ms)) {
            (Some(lo), Some(hi)) => format!("{}–{}", ms(Some(lo)), ms(Some(hi))),
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {when} | {} | {}% | {} | {spread} | {} |",
            slice.len(),
            pct(loss),
            ms(median_of(|p| p.rtt_median_ms)),
            slice.iter().filter(|p| p.failure.is_some()).count()
        );
    }
    let _ = writeln!(md);
}

/// The ping rounds of the affected targets and their failing results.
fn ping_evidence(md: &mut String, evidence: &Evidence) {
    let _ = writeln!(md, "### Latency and loss\n");
    if evidence.series.is_empty() {
        let _ = writeln!(md, "No history in the store for the affected targets.");
    }
    for series in &evidence.series {
        let rounds = series.points.len();
        let lossy = series.points.iter().filter(|p| p.loss_pct > 0.0).count();
        let medians: Vec<f64> = series
            .points
            .iter()
            .filter_map(|p| p.rtt_median_ms)
            .collect();
        let median = probes::stats::median(medians.iter().copied());
        let _ = writeln!(
            md,
            "**{}** ({}): {rounds} rounds, {lossy} with loss; median RTT {} over the window.\n",
            series.target,
            series.probe,
            ms(median)
        );
        ping_history_table(md, &series.points);
    }
    let _ = writeln!(md, "### Failing results\n");
    if evidence.failing.is_empty() {
        let _ = writeln!(md, "None in the window: the rounds answered, with loss.\n");
    } else {
        let _ = writeln!(
            md,
            "| time (UTC) | target | probe | address | kind | error |\n|---|---|---|---|---|---|"
        );
        for f in &evidence.failing {
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
}

/// The latest rounds (or runs) shown per series; older ones are in the chart and evidence.json.
const SHOWN_ROUNDS: usize = 15;

/// Text for a Markdown table cell or one line: error messages and tags read from the store may
/// hold `|`, line breaks or terminal escapes (a draft is also read with `cat`).
fn cell(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .replace('|', "\\|")
}

/// `text` as one inline code span whatever it holds: a backtick inside would end the span.
fn code(text: &str) -> String {
    format!("`{}`", cell(text).replace('`', "'"))
}

/// `status: 503 Service Unavailable`: a failed run's kind and error in one cell.
fn failure_cell(run: &CheckRun) -> String {
    match (&run.failure_kind, &run.failure) {
        (Some(kind), Some(error)) => cell(&format!("{kind}: {error}")),
        (None, Some(error)) => cell(error),
        (Some(kind), None) => kind.clone(),
        (None, None) => String::new(),
    }
}

/// What the server answered: the HTTP status, the DNS rcode and answer count, or that the TCP
/// handshake completed.
fn answer(figures: &CheckFigures) -> String {
    match figures {
        CheckFigures::Http { status_code, .. } => {
            status_code.map_or_else(|| "-".into(), |code| code.to_string())
        }
        CheckFigures::Dns { rcode, answers, .. } => match rcode {
            Some(rcode) => format!(
                "{rcode}, {answers} answer{}",
                if *answers == 1 { "" } else { "s" }
            ),
            None => "-".into(),
        },
        CheckFigures::Tcp { connect_ms, .. } => if connect_ms.is_some() {
            "connected"
        } else {
            "-"
        }
        .into(),
    }
}

/// The runs of the affected service checks, and their failures with the phase timings.
fn check_evidence(md: &mut String, evidence: &Evidence) {
    let _ = writeln!(md, "### Service checks\n");
    for series in &evidence.checks {
        check_series(md, series);
    }
    let _ = writeln!(md, "### Failing checks\n");
    if evidence.failing_checks.is_empty() {
        let _ = writeln!(md, "None in the window.\n");
    }
    for kind in ["http", "dns", "tcp"] {
        let failing: Vec<_> = evidence
            .failing_checks
            .iter()
            .filter(|f| f.run.figures.kind() == kind)
            .collect();
        if failing.is_empty() {
            continue;
        }
        let header = match kind {
            "http" => {
                "| time (UTC) | target | probe | status | failure | resolve | connect | tls | processing | transfer | total |\n\
                 |---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"
            }
            "dns" => {
                "| time (UTC) | target | probe | server | rcode | answers | failure | latency |\n\
                 |---|---|---|---|---|---:|---|---:|"
            }
            _ => {
                "| time (UTC) | target | probe | address | failure | resolve | connect |\n\
                 |---|---|---|---|---|---:|---:|"
            }
        };
        let _ = writeln!(md, "**{kind}**\n\n{header}");
        for f in failing {
            let run = &f.run;
            let figures = match &run.figures {
                CheckFigures::Http {
                    status_code,
                    resolve_ms,
                    connect_ms,
                    tls_ms,
                    processing_ms,
                    transfer_ms,
                    total_ms,
                } => format!(
                    "{} | {} | {} | {} | {} | {} | {} | {}",
                    status_code.map_or_else(|| "-".into(), |code| code.to_string()),
                    failure_cell(run),
                    ms(*resolve_ms),
                    ms(*connect_ms),
                    ms(*tls_ms),
                    ms(*processing_ms),
                    ms(*transfer_ms),
                    ms(*total_ms)
                ),
                CheckFigures::Dns {
                    rcode,
                    latency_ms,
                    answers,
                    ..
                } => format!(
                    "{} | {} | {answers} | {} | {}",
                    run.address.as_deref().unwrap_or("-"),
                    rcode.as_deref().unwrap_or("-"),
                    failure_cell(run),
                    ms(*latency_ms)
                ),
                CheckFigures::Tcp {
                    address,
                    resolve_ms,
                    connect_ms,
                } => format!(
                    "{} | {} | {} | {}",
                    address.as_deref().or(run.address.as_deref()).unwrap_or("-"),
                    failure_cell(run),
                    ms(*resolve_ms),
                    ms(*connect_ms)
                ),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {figures} |",
                run.at.time(),
                f.target,
                f.probe
            );
        }
        let _ = writeln!(md);
    }
}

/// One check's runs in the window: a summary line and the latest runs.
fn check_series(md: &mut String, series: &CheckSeries) {
    let runs = series.runs.len();
    let failed = series.runs.iter().filter(|r| !r.success).count();
    let field = series
        .runs
        .first()
        .map_or("time", |r| r.figures.headline_field());
    let median = probes::stats::median(
        series
            .runs
            .iter()
            .filter(|r| r.success)
            .filter_map(|r| r.figures.headline_ms()),
    );
    let _ = writeln!(
        md,
        "**{}** ({}, {}): {runs} runs, {failed} failed; median {field} {} over the successful runs.\n",
        series.target,
        series.probe,
        series.kind,
        ms(median)
    );
    let _ = writeln!(
        md,
        "| time (UTC) | result | answer | {field} | failure |\n|---|---|---|---:|---|"
    );
    for run in series.runs.iter().skip(runs.saturating_sub(SHOWN_ROUNDS)) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            run.at.time(),
            if run.success { "ok" } else { "failed" },
            answer(&run.figures),
            ms(run.figures.headline_ms()),
            failure_cell(run)
        );
    }
    if runs > SHOWN_ROUNDS {
        let _ = writeln!(
            md,
            "\n({} earlier runs in the chart and evidence.json.)",
            runs - SHOWN_ROUNDS
        );
    }
    let _ = writeln!(md);
}

/// Every other target and service check of this agent, by its latest round or run.
fn contrast(md: &mut String, evidence: &Evidence) {
    let _ = writeln!(md, "### Other targets from this agent\n");
    let (healthy, all) = evidence.contrast_counts();
    if all == 0 {
        let _ = writeln!(md, "None.");
        return;
    }
    let mut criteria = Vec::new();
    if !evidence.others.is_empty() {
        criteria.push(format!(
            "latest round answered with under {}% loss",
            pct(HEALTHY_BELOW_LOSS_PCT)
        ));
    }
    if !evidence.other_checks.is_empty() {
        criteria.push("latest check run succeeded".to_string());
    }
    let _ = writeln!(
        md,
        "{healthy} of {all} healthy ({}).\n",
        criteria.join("; ")
    );
    let state = |healthy: bool| if healthy { "healthy" } else { "unhealthy" };
    if !evidence.others.is_empty() {
        let _ = writeln!(
            md,
            "| target | site | probe | state | loss | median | last seen (UTC) |\n|---|---|---|---|---:|---:|---|"
        );
        for c in &evidence.others {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {}% | {} | {} |",
                c.target,
                c.target_site,
                c.probe,
                state(c.healthy),
                pct(c.loss_pct),
                ms(c.rtt_median_ms),
                c.last_seen.time()
            );
        }
    }
    if !evidence.other_checks.is_empty() {
        if !evidence.others.is_empty() {
            let _ = writeln!(md);
        }
        let _ = writeln!(
            md,
            "| target | site | probe | kind | state | answer | time | failure | last seen (UTC) |\n|---|---|---|---|---|---|---:|---|---|"
        );
        for c in &evidence.other_checks {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.target,
                c.target_site,
                c.probe,
                c.figures.kind(),
                state(c.healthy),
                answer(&c.figures),
                ms(c.figures.headline_ms()),
                cell(c.failure.as_deref().unwrap_or("")),
                c.last_seen.time()
            );
        }
    }
    let unlisted = evidence.unlisted;
    if unlisted.all > 0 {
        let _ = writeln!(
            md,
            "\n{} more not listed ({} of them healthy): a draft lists at most {MAX_CONTRAST} \
             other targets and {MAX_CONTRAST} service checks, the unhealthy first. `vantage \
             report` and the agent's web page show every one.",
            unlisted.all, unlisted.healthy
        );
    }
}
