//! [`verdict`]: from what every site measured (a [`FleetView`]) to one sentence that localizes the
//! fault, with the figures that justify it and the reasoning next to it. A pure function.
//!
//! A site *sees it* when, to any affected target over the window, it lost at least
//! [`LOSS_PCT`]% of its echoes or at least [`FAILED_PCT`]% of its runs failed; it is *healthy* when it
//! has runs and sees nothing; it is *silent* when it has no runs in the window. The site asking
//! sees it by definition (its own rule opened the incident). Then:
//! - only this site sees it, and another site is healthy → this site's side (uplink or edge);
//! - every reporting site (at least two) sees it → at the target or its provider;
//! - a subset sees it, and their latest traces to the target share a hop that no healthy site's
//!   trace has → the shared segment, at that hop (the one nearest the target);
//! - otherwise (nobody else reported, or the traces do not separate them) → inconclusive.

use std::collections::BTreeMap;

use super::query::{FleetView, SiteFigures};

/// Echo loss (%) from which a site sees the fault.
pub const LOSS_PCT: f64 = 5.0;
/// Failed runs (% of runs) from which a site sees the fault.
pub const FAILED_PCT: f64 = 10.0;

/// Where the fault is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Localization {
    ThisSite { site: String },
    Target,
    SharedSegment { hop: String },
    Inconclusive,
}

/// The verdict: the sentence, and the lines of reasoning (one per site) it rests on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub localization: Localization,
    pub sentence: String,
    /// "seen from 2 of 3 sites" (reporting sites only).
    pub seen_from: String,
    pub reasoning: Vec<String>,
}

/// One site's state over the affected targets.
#[derive(Debug)]
struct SiteState<'v> {
    rows: Vec<&'v SiteFigures>,
    sees: bool,
    reported: bool,
}

/// The verdict for `site`'s incident over `targets` (see the module docs); `site` is `None` for
/// the fleet evaluator's incidents (it is no site). `now_ms`: for "last reported N min ago".
pub fn verdict(view: &FleetView, site: Option<&str>, targets: &[String], now_ms: i64) -> Verdict {
    let mut sites: BTreeMap<&str, SiteState<'_>> = BTreeMap::new();
    for row in view.rows.iter().filter(|r| targets.contains(&r.target)) {
        let state = sites.entry(row.site.as_str()).or_insert(SiteState {
            rows: Vec::new(),
            sees: false,
            reported: false,
        });
        state.reported |= row.runs() > 0;
        state.sees |= sees_it(row);
        state.rows.push(row);
    }
    for other in view.site_last_report_ms.keys() {
        sites.entry(other.as_str()).or_insert(SiteState {
            rows: Vec::new(),
            sees: false,
            reported: false,
        });
    }
    // This site sees it: its own rule says so, whatever reached the store.
    if let Some(site) = site {
        let me = sites.entry(site).or_insert(SiteState {
            rows: Vec::new(),
            sees: true,
            reported: true,
        });
        me.sees = true;
        me.reported = true;
    }

    let reasoning: Vec<String> = sites
        .iter()
        .map(|(name, state)| reason(name, state, view, now_ms))
        .collect();
    let reporting: Vec<&str> = sites
        .iter()
        .filter(|(_, s)| s.reported)
        .map(|(n, _)| *n)
        .collect();
    let seeing: Vec<&str> = sites
        .iter()
        .filter(|(_, s)| s.reported && s.sees)
        .map(|(n, _)| *n)
        .collect();
    let healthy: Vec<&str> = sites
        .iter()
        .filter(|(_, s)| s.reported && !s.sees)
        .map(|(n, _)| *n)
        .collect();
    let seen_from = format!("seen from {} of {} sites", seeing.len(), reporting.len());
    let what = targets_text(targets);

    let (localization, sentence) = if reporting.len() < 2 {
        (
            Localization::Inconclusive,
            format!("Inconclusive: no other site reported on {what} in the window."),
        )
    } else if healthy.is_empty() {
        (
            Localization::Target,
            format!(
                "{} of {} sites see it ({}) → at {what} or its provider.",
                seeing.len(),
                reporting.len(),
                figures_range(&seeing, &sites)
            ),
        )
    } else if let Some(site) = site.filter(|s| seeing == [*s]) {
        (
            Localization::ThisSite {
                site: site.to_string(),
            },
            format!(
                "Only {site} sees it; {} reach{} {what} with {} → {site}'s side (uplink or edge).",
                list(&healthy),
                if healthy.len() == 1 { "es" } else { "" },
                figures_range(&healthy, &sites)
            ),
        )
    } else {
        match shared_hop(&seeing, &healthy, &sites) {
            Some(hop) => (
                Localization::SharedSegment { hop: hop.clone() },
                format!(
                    "{} see it, {} {}; their traces share hop {hop} → the shared segment at {hop}.",
                    list(&seeing),
                    list(&healthy),
                    if healthy.len() == 1 {
                        "does not"
                    } else {
                        "do not"
                    }
                ),
            ),
            None => (
                Localization::Inconclusive,
                format!(
                    "Inconclusive: {} see it, {} {}, and their traces share no hop the others lack (or are missing).",
                    list(&seeing),
                    list(&healthy),
                    if healthy.len() == 1 {
                        "does not"
                    } else {
                        "do not"
                    }
                ),
            ),
        }
    };
    Verdict {
        localization,
        sentence,
        seen_from,
        reasoning,
    }
}

/// Whether a site's figures to one target show the fault.
pub fn sees_it(row: &SiteFigures) -> bool {
    let lossy = row.loss_pct().is_some_and(|l| l >= LOSS_PCT);
    let failing = row.runs() > 0 && 100.0 * row.failures() as f64 / row.runs() as f64 >= FAILED_PCT;
    lossy || failing
}

/// "4 min ago", "45 s ago", "2 h ago".
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    let s = ((now_ms - then_ms) / 1000).max(0);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

fn reason(name: &str, state: &SiteState<'_>, view: &FleetView, now_ms: i64) -> String {
    if !state.reported {
        let last = state
            .rows
            .iter()
            .filter_map(|r| r.last_report_ms)
            .chain(view.site_last_report_ms.get(name).copied())
            .max();
        return match last {
            Some(last) => format!(
                "{name}: silent in the window — last reported {}",
                ago(now_ms, last)
            ),
            None => format!("{name}: silent in the window"),
        };
    }
    if state.rows.is_empty() {
        return format!(
            "{name}: sees it (this site's own rule; its figures are not in the store yet)"
        );
    }
    let figures = state
        .rows
        .iter()
        .map(|r| format!("{} {}", r.target, figures(r)))
        .collect::<Vec<_>>()
        .join("; ");
    let judged = if state.sees { "sees it" } else { "healthy" };
    format!("{name}: {judged} — {figures}")
}

/// "58% loss of 600 echoes, median 10.0 ms, 10 of 65 runs failed".
fn figures(row: &SiteFigures) -> String {
    let mut parts = Vec::new();
    if let Some(loss) = row.loss_pct() {
        parts.push(format!("{} loss of {} echoes", pct(loss), row.sent));
    }
    if let Some(median) = row.median_ms {
        parts.push(format!("median {median:.1} ms"));
    }
    if row.runs() > 0 {
        parts.push(format!("{} of {} runs failed", row.failures(), row.runs()));
    }
    parts.join(", ")
}

fn pct(value: f64) -> String {
    format!("{value:.0}%")
}

/// "100% loss", "0–2% loss", or failed runs when there are no echoes.
fn figures_range(names: &[&str], sites: &BTreeMap<&str, SiteState<'_>>) -> String {
    let losses: Vec<f64> = names
        .iter()
        .flat_map(|n| sites[n].rows.iter().filter_map(|r| r.loss_pct()))
        .collect();
    if losses.is_empty() {
        let (failed, runs) = names
            .iter()
            .flat_map(|n| sites[n].rows.iter())
            .fold((0, 0), |(f, r), row| (f + row.failures(), r + row.runs()));
        return format!("{failed} of {runs} runs failed");
    }
    let low = losses.iter().copied().fold(f64::INFINITY, f64::min);
    let high = losses.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if pct(low) == pct(high) {
        format!("{} loss", pct(low))
    } else {
        format!("{:.0}–{} loss", low, pct(high))
    }
}

/// The hop every seeing site's latest trace has and no healthy site's has, nearest the target
/// (the destination itself excluded: every path ends there).
fn shared_hop(
    seeing: &[&str],
    healthy: &[&str],
    sites: &BTreeMap<&str, SiteState<'_>>,
) -> Option<String> {
    let hops = |name: &str| -> Option<Vec<String>> {
        let traces: Vec<_> = sites[name]
            .rows
            .iter()
            .filter_map(|r| r.trace.as_ref())
            .collect();
        if traces.is_empty() {
            return None;
        }
        Some(
            traces
                .iter()
                .flat_map(|t| {
                    let last = t.hops.last().and_then(|h| h.address.clone());
                    t.hops
                        .iter()
                        .filter_map(|h| h.address.clone())
                        .filter(move |a| Some(a) != last.as_ref())
                })
                .collect(),
        )
    };
    let mut seeing_hops = seeing.iter().map(|n| hops(n));
    let first = seeing_hops.next()??;
    let others: Vec<Vec<String>> = seeing_hops.collect::<Option<_>>()?;
    let healthy_hops: Vec<String> = healthy.iter().filter_map(|n| hops(n)).flatten().collect();
    first
        .iter()
        .rev()
        .find(|hop| others.iter().all(|o| o.contains(hop)) && !healthy_hops.contains(hop))
        .cloned()
}

fn list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn targets_text(targets: &[String]) -> String {
    match targets {
        [one] => one.clone(),
        _ => format!("all {} targets", targets.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::query::{PeerHop, PeerTrace};

    const NOW: i64 = 1_800_000_000_000;

    fn row(site: &str, target: &str, sent: u64, received: u64) -> SiteFigures {
        SiteFigures {
            site: site.into(),
            agent: format!("agent-{site}"),
            target: target.into(),
            sent,
            received,
            rounds: sent / 10,
            failed_rounds: 0,
            median_ms: Some(10.0),
            check_runs: 0,
            check_failures: 0,
            last_report_ms: Some(NOW - 1000),
            trace: None,
        }
    }

    fn traced(mut row: SiteFigures, hops: &[&str]) -> SiteFigures {
        row.trace = Some(PeerTrace {
            at_ms: NOW - 5000,
            hops: hops
                .iter()
                .enumerate()
                .map(|(i, a)| PeerHop {
                    ttl: i as u32 + 1,
                    address: (!a.is_empty()).then(|| (*a).to_string()),
                    loss_pct: Some(0.0),
                })
                .collect(),
        });
        row
    }

    fn view(rows: Vec<SiteFigures>) -> FleetView {
        FleetView {
            from_ms: NOW - 600_000,
            until_ms: NOW,
            site_last_report_ms: rows
                .iter()
                .map(|r| (r.site.clone(), r.last_report_ms.unwrap_or(0)))
                .collect(),
            rows,
        }
    }

    fn targets(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_this_site_sees_it_is_this_sites_side() {
        let v = view(vec![
            row("scl3", "aws-gw", 600, 0),
            row("sjc1", "aws-gw", 600, 600),
            row("iad1", "aws-gw", 600, 598),
        ]);
        let verdict = verdict(&v, Some("scl3"), &targets(&["aws-gw"]), NOW);
        assert_eq!(
            verdict.localization,
            Localization::ThisSite {
                site: "scl3".into()
            }
        );
        assert_eq!(
            verdict.sentence,
            "Only scl3 sees it; iad1 and sjc1 reach aws-gw with 0% loss → scl3's side (uplink or edge)."
        );
        assert_eq!(verdict.seen_from, "seen from 1 of 3 sites");
        assert_eq!(
            verdict.reasoning,
            [
                "iad1: healthy — aws-gw 0% loss of 600 echoes, median 10.0 ms, 0 of 60 runs failed",
                "scl3: sees it — aws-gw 100% loss of 600 echoes, median 10.0 ms, 0 of 60 runs failed",
                "sjc1: healthy — aws-gw 0% loss of 600 echoes, median 10.0 ms, 0 of 60 runs failed",
            ]
        );
    }

    /// The fleet evaluator is no site: its fleet draft once read "seen from 4 of 4 sites" with a
    /// row "fleet: sees it (this site's own rule…)" beside the three sites that measure.
    #[test]
    fn the_fleet_evaluator_is_not_counted_as_a_site() {
        let v = view(vec![
            row("scl3", "aws-gw", 600, 0),
            row("sjc1", "aws-gw", 600, 0),
            row("iad1", "aws-gw", 600, 0),
        ]);
        let verdict = verdict(&v, None, &targets(&["aws-gw"]), NOW);
        assert_eq!(verdict.localization, Localization::Target);
        assert_eq!(verdict.seen_from, "seen from 3 of 3 sites");
        assert_eq!(verdict.reasoning.len(), 3, "{:?}", verdict.reasoning);
        assert!(
            verdict.reasoning.iter().all(|r| !r.contains("own rule")),
            "{:?}",
            verdict.reasoning
        );
    }

    #[test]
    fn this_site_missing_from_the_store_still_sees_it() {
        // scl3's own points did not reach the store (its uplink carries them too).
        let v = view(vec![
            row("sjc1", "aws-gw", 600, 600),
            row("iad1", "aws-gw", 600, 600),
        ]);
        let verdict = verdict(&v, Some("scl3"), &targets(&["aws-gw"]), NOW);
        assert_eq!(
            verdict.localization,
            Localization::ThisSite {
                site: "scl3".into()
            }
        );
        assert!(verdict.reasoning[1].starts_with("scl3: sees it (this site's own rule"));
    }

    #[test]
    fn every_site_seeing_it_is_the_target() {
        let v = view(vec![
            row("scl3", "aws-gw", 600, 0),
            row("sjc1", "aws-gw", 600, 0),
            row("iad1", "aws-gw", 600, 0),
        ]);
        let verdict = verdict(&v, Some("sjc1"), &targets(&["aws-gw"]), NOW);
        assert_eq!(verdict.localization, Localization::Target);
        assert_eq!(
            verdict.sentence,
            "3 of 3 sites see it (100% loss) → at aws-gw or its provider."
        );
        assert_eq!(verdict.seen_from, "seen from 3 of 3 sites");
    }

    #[test]
    fn a_range_of_loss_is_shown_as_a_range() {
        let v = view(vec![row("scl3", "t", 100, 40), row("sjc1", "t", 100, 80)]);
        let verdict = verdict(&v, Some("scl3"), &targets(&["t"]), NOW);
        assert_eq!(
            verdict.sentence,
            "2 of 2 sites see it (20–60% loss) → at t or its provider."
        );
    }

    #[test]
    fn a_subset_sharing_a_hop_is_the_shared_segment() {
        let v = view(vec![
            traced(
                row("scl3", "aws-gw", 600, 300),
                &["198.18.10.1", "198.18.20.1", "198.19.0.1"],
            ),
            traced(
                row("sjc1", "aws-gw", 600, 310),
                &["198.18.11.1", "198.18.20.1", "198.19.0.1"],
            ),
            traced(
                row("iad1", "aws-gw", 600, 600),
                &["198.18.12.1", "198.18.22.1", "198.19.0.1"],
            ),
        ]);
        let verdict = verdict(&v, Some("sjc1"), &targets(&["aws-gw"]), NOW);
        assert_eq!(
            verdict.localization,
            Localization::SharedSegment {
                hop: "198.18.20.1".into()
            }
        );
        assert_eq!(
            verdict.sentence,
            "scl3 and sjc1 see it, iad1 does not; their traces share hop 198.18.20.1 → the shared segment at 198.18.20.1."
        );
        assert!(!verdict.sentence.contains("198.18.22.1"));
    }

    #[test]
    fn the_shared_hop_nearest_the_target_is_named_and_a_hop_healthy_sites_cross_is_not() {
        let v = view(vec![
            traced(
                row("a", "t", 100, 50),
                &["10.0.0.1", "10.0.1.1", "10.0.2.1", "10.9.9.9"],
            ),
            traced(
                row("b", "t", 100, 50),
                &["10.0.5.1", "10.0.1.1", "10.0.2.1", "10.9.9.9"],
            ),
            traced(
                row("c", "t", 100, 100),
                &["10.0.6.1", "10.0.2.1", "10.9.9.9"],
            ),
        ]);
        let verdict = verdict(&v, Some("a"), &targets(&["t"]), NOW);
        assert_eq!(
            verdict.localization,
            Localization::SharedSegment {
                hop: "10.0.1.1".into()
            }
        );
    }

    #[test]
    fn a_subset_without_traces_or_without_a_distinct_hop_is_inconclusive() {
        let no_traces = view(vec![
            row("scl3", "t", 100, 50),
            row("sjc1", "t", 100, 50),
            row("iad1", "t", 100, 100),
        ]);
        let verdict = verdict(&no_traces, Some("scl3"), &targets(&["t"]), NOW);
        assert_eq!(verdict.localization, Localization::Inconclusive);
        assert!(
            verdict
                .sentence
                .starts_with("Inconclusive: scl3 and sjc1 see it, iad1 does not")
        );

        let same_path = view(vec![
            traced(row("scl3", "t", 100, 50), &["10.0.0.1", "10.9.9.9"]),
            traced(row("sjc1", "t", 100, 50), &["10.0.0.1", "10.9.9.9"]),
            traced(row("iad1", "t", 100, 100), &["10.0.0.1", "10.9.9.9"]),
        ]);
        let verdict = super::verdict(&same_path, Some("scl3"), &targets(&["t"]), NOW);
        assert_eq!(verdict.localization, Localization::Inconclusive);
    }

    #[test]
    fn alone_in_the_store_is_inconclusive() {
        let v = view(vec![row("scl3", "t", 100, 0)]);
        let verdict = verdict(&v, Some("scl3"), &targets(&["t"]), NOW);
        assert_eq!(verdict.localization, Localization::Inconclusive);
        assert_eq!(
            verdict.sentence,
            "Inconclusive: no other site reported on t in the window."
        );
        assert_eq!(verdict.seen_from, "seen from 1 of 1 sites");
    }

    #[test]
    fn a_silent_peer_is_evidence_not_a_healthy_site() {
        let mut silent = row("iad1", "aws-gw", 0, 0);
        silent.rounds = 0;
        silent.last_report_ms = Some(NOW - 240_000);
        let v = view(vec![
            row("scl3", "aws-gw", 600, 0),
            row("sjc1", "aws-gw", 600, 600),
            silent,
        ]);
        let verdict = verdict(&v, Some("scl3"), &targets(&["aws-gw"]), NOW);
        assert_eq!(
            verdict.localization,
            Localization::ThisSite {
                site: "scl3".into()
            }
        );
        assert_eq!(verdict.seen_from, "seen from 1 of 2 sites");
        assert_eq!(
            verdict.reasoning[0],
            "iad1: silent in the window — last reported 4 min ago"
        );
        assert!(
            verdict
                .sentence
                .contains("sjc1 reaches aws-gw with 0% loss"),
            "{}",
            verdict.sentence
        );
    }

    #[test]
    fn failed_checks_count_as_seeing_it_without_echoes() {
        let check = |site: &str, failed: u64| SiteFigures {
            site: site.into(),
            agent: site.into(),
            target: "api".into(),
            check_runs: 10,
            check_failures: failed,
            ..SiteFigures::default()
        };
        let v = view(vec![check("scl3", 10), check("sjc1", 10), check("iad1", 0)]);
        let verdict = verdict(&v, Some("scl3"), &targets(&["api"]), NOW);
        assert_eq!(verdict.seen_from, "seen from 2 of 3 sites");
        let all = view(vec![check("scl3", 10), check("sjc1", 9)]);
        let verdict = super::verdict(&all, Some("scl3"), &targets(&["api"]), NOW);
        assert_eq!(
            verdict.sentence,
            "2 of 2 sites see it (19 of 20 runs failed) → at api or its provider."
        );
    }

    #[test]
    fn several_targets_are_counted() {
        let v = view(vec![
            row("scl3", "a", 10, 0),
            row("scl3", "b", 10, 0),
            row("sjc1", "a", 10, 10),
            row("sjc1", "b", 10, 10),
        ]);
        let verdict = verdict(&v, Some("scl3"), &targets(&["a", "b"]), NOW);
        assert_eq!(
            verdict.sentence,
            "Only scl3 sees it; sjc1 reaches all 2 targets with 0% loss → scl3's side (uplink or edge)."
        );
    }

    #[test]
    fn ago_reads_like_a_human() {
        assert_eq!(ago(NOW, NOW - 45_000), "45 s ago");
        assert_eq!(ago(NOW, NOW - 240_000), "4 min ago");
        assert_eq!(ago(NOW, NOW - 3 * 3_600_000), "3 h ago");
    }
}
