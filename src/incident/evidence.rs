//! Evidence from the embedded store: the latency/loss history of the affected targets for the
//! window before and during the breach (ping rounds, or the runs of an http/dns/tcp check with
//! their phase timings), their failing results with the errors, and how every other target and
//! service check from this agent looks right now (that contrast localizes the fault too).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::Timestamp;
use crate::store::{CheckPoint, LatestCheck, LatestPing, PingPoint, Store};

/// At most this many rounds (or runs) per series; longer windows are thinned evenly, keeping a
/// failure of each stretch when it had one.
pub const MAX_POINTS: usize = 720;
/// At most this many failing results are listed.
pub const MAX_FAILURES: usize = 20;
/// A target counts as healthy when its latest round succeeded with less loss than this.
pub const HEALTHY_BELOW_LOSS_PCT: f64 = 5.0;
/// At most this many other targets, and as many other service checks, are listed; the rest are
/// counted ([`Evidence::unlisted`]). A mass outage at 10,000 targets had listed all the others in
/// each of its 10,000 drafts: 4 MB of incident state and 6 MB of files per draft.
pub const MAX_CONTRAST: usize = 40;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub window_from: Option<Timestamp>,
    pub window_to: Option<Timestamp>,
    /// The ping rounds of each affected (probe, target) that is not a service check, oldest
    /// round first.
    pub series: Vec<Series>,
    /// The latest failing ping rounds of the affected targets, newest first.
    pub failing: Vec<FailingResult>,
    /// Every other ping (probe, target) of this agent, by its latest round.
    pub others: Vec<Contrast>,
    // Service checks: absent from incidents saved before they were gathered, hence the defaults.
    /// One series per affected (probe, target) of an http, dns or tcp probe, oldest run first.
    #[serde(default)]
    pub checks: Vec<CheckSeries>,
    /// The latest failing runs of those checks, newest first.
    #[serde(default)]
    pub failing_checks: Vec<FailingCheck>,
    /// Every other http, dns or tcp (probe, target) of this agent, by its latest run.
    #[serde(default)]
    pub other_checks: Vec<CheckContrast>,
    /// The other targets and service checks beyond [`MAX_CONTRAST`]: counted, not listed.
    #[serde(default, skip_serializing_if = "Unlisted::is_none")]
    pub unlisted: Unlisted,
}

/// Others counted but not listed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlisted {
    pub healthy: usize,
    pub all: usize,
}

impl Unlisted {
    fn is_none(&self) -> bool {
        self.all == 0
    }
}

/// The latest round of every ping (probe, target) and the latest run of every service check,
/// read once and shared by the drafts gathered within a second of each other (at 10,000 targets
/// one read is 10,000 rows: once per draft made a mass outage quadratic).
#[derive(Debug, Default)]
pub struct Latest {
    pub pings: Vec<LatestPing>,
    pub checks: Vec<LatestCheck>,
}

impl Latest {
    pub fn read(store: &Store) -> anyhow::Result<Latest> {
        Ok(Latest {
            pings: store.latest_pings()?,
            checks: store.latest_checks()?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub probe: String,
    pub target: String,
    pub points: Vec<PingPoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailingResult {
    pub at: Timestamp,
    pub probe: String,
    pub target: String,
    pub address: Option<String>,
    pub kind: Option<String>,
    pub error: String,
    pub loss_pct: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contrast {
    pub probe: String,
    pub target: String,
    pub target_site: String,
    pub healthy: bool,
    pub loss_pct: f64,
    pub rtt_median_ms: Option<f64>,
    pub failure: Option<String>,
    pub last_seen: Timestamp,
}

/// What one run of a service check measured, by kind (milliseconds; `None` for a phase that did
/// not happen).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckFigures {
    Http {
        status_code: Option<u16>,
        resolve_ms: Option<f64>,
        connect_ms: Option<f64>,
        tls_ms: Option<f64>,
        processing_ms: Option<f64>,
        transfer_ms: Option<f64>,
        total_ms: Option<f64>,
    },
    Dns {
        rcode: Option<String>,
        latency_ms: Option<f64>,
        #[serde(default)]
        answers: u32,
        /// The answers of the asked type, as in zone files.
        #[serde(default)]
        records: Vec<String>,
    },
    Tcp {
        /// The address the connection was attempted to (`ip:port`).
        address: Option<String>,
        resolve_ms: Option<f64>,
        connect_ms: Option<f64>,
    },
}

impl CheckFigures {
    /// From a stored `http`, `dns` or `tcp` observation's fields (the probe's stats as JSON,
    /// which name the same fields).
    pub fn from_fields(
        measurement: &str,
        fields: &serde_json::Value,
    ) -> anyhow::Result<CheckFigures> {
        let mut tagged = fields.clone();
        if let Some(object) = tagged.as_object_mut() {
            object.insert("kind".into(), measurement.into());
        }
        serde_json::from_value(tagged)
            .with_context(|| format!("unreadable {measurement} fields {fields}"))
    }

    /// `http`, `dns` or `tcp`.
    pub fn kind(&self) -> &'static str {
        match self {
            CheckFigures::Http { .. } => "http",
            CheckFigures::Dns { .. } => "dns",
            CheckFigures::Tcp { .. } => "tcp",
        }
    }

    /// The one time that sums the run up: total for http, the answer's latency for dns, the
    /// handshake for tcp.
    pub fn headline_ms(&self) -> Option<f64> {
        match self {
            CheckFigures::Http { total_ms, .. } => *total_ms,
            CheckFigures::Dns { latency_ms, .. } => *latency_ms,
            CheckFigures::Tcp { connect_ms, .. } => *connect_ms,
        }
    }

    /// The name of [`CheckFigures::headline_ms`]'s field.
    pub fn headline_field(&self) -> &'static str {
        match self {
            CheckFigures::Http { .. } => "total_ms",
            CheckFigures::Dns { .. } => "latency_ms",
            CheckFigures::Tcp { .. } => "connect_ms",
        }
    }
}

/// One run of a service check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRun {
    pub at: Timestamp,
    /// The address probed, if the target resolved.
    pub address: Option<String>,
    pub success: bool,
    pub failure_kind: Option<String>,
    pub failure: Option<String>,
    pub figures: CheckFigures,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckSeries {
    pub probe: String,
    pub target: String,
    /// `http`, `dns` or `tcp`.
    pub kind: String,
    pub runs: Vec<CheckRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailingCheck {
    pub probe: String,
    pub target: String,
    pub run: CheckRun,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckContrast {
    pub probe: String,
    pub target: String,
    pub target_site: String,
    /// The latest run succeeded.
    pub healthy: bool,
    pub failure: Option<String>,
    pub figures: CheckFigures,
    pub last_seen: Timestamp,
}

impl Evidence {
    /// (healthy, all) of the other targets and service checks: the contrast in two figures.
    pub fn contrast_counts(&self) -> (usize, usize) {
        let healthy = self.others.iter().filter(|c| c.healthy).count()
            + self.other_checks.iter().filter(|c| c.healthy).count()
            + self.unlisted.healthy;
        (
            healthy,
            self.others.len() + self.other_checks.len() + self.unlisted.all,
        )
    }

    /// Every (probe, target) the evidence has a series for.
    pub fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        let pings = self
            .series
            .iter()
            .map(|s| (s.probe.as_str(), s.target.as_str()));
        let checks = self
            .checks
            .iter()
            .map(|s| (s.probe.as_str(), s.target.as_str()));
        pings.chain(checks)
    }
}

fn check_run(point: CheckPoint) -> anyhow::Result<CheckRun> {
    Ok(CheckRun {
        figures: CheckFigures::from_fields(&point.measurement, &point.fields)?,
        at: Timestamp::from_unix_ns(point.timestamp_ns),
        address: point.address,
        success: point.success,
        failure_kind: point.failure_kind,
        failure: point.failure,
    })
}

/// Gather evidence for `members` ((probe, target) pairs, affected now or earlier in the
/// incident) over `[from, to]`, contrasted with every other (probe, target) in `latest`. A member
/// with http, dns or tcp runs in the window is a service check; any other is read as ping rounds.
pub fn gather(
    store: &Store,
    members: &[(String, String)],
    from: SystemTime,
    to: SystemTime,
    latest: &Latest,
) -> anyhow::Result<Evidence> {
    let (from_ts, to_ts) = (Timestamp(from), Timestamp(to));
    let (from_ns, to_ns) = (from_ts.unix_ns(), to_ts.unix_ns());
    let mut evidence = Evidence {
        window_from: Some(from_ts),
        window_to: Some(to_ts),
        ..Evidence::default()
    };
    for (probe, target) in members {
        let runs = store
            .check_history(probe, target, from_ns, to_ns)?
            .into_iter()
            .map(check_run)
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("the runs of {probe}/{target}"))?;
        if let Some(first) = runs.first() {
            for run in runs.iter().filter(|r| !r.success) {
                evidence.failing_checks.push(FailingCheck {
                    probe: probe.clone(),
                    target: target.clone(),
                    run: run.clone(),
                });
            }
            evidence.checks.push(CheckSeries {
                probe: probe.clone(),
                target: target.clone(),
                kind: first.figures.kind().to_string(),
                runs: thin(runs, MAX_POINTS, |r| !r.success),
            });
            continue;
        }
        let points = store.ping_history(probe, target, from_ns, to_ns)?;
        for point in points.iter().filter(|p| p.failure.is_some()) {
            evidence.failing.push(FailingResult {
                at: Timestamp::from_unix_ns(point.timestamp_ns),
                probe: probe.clone(),
                target: target.clone(),
                address: point.address.clone(),
                kind: point.failure_kind.clone(),
                error: point.failure.clone().unwrap_or_default(),
                loss_pct: point.loss_pct,
            });
        }
        evidence.series.push(Series {
            probe: probe.clone(),
            target: target.clone(),
            points: thin(points, MAX_POINTS, |p| p.failure.is_some()),
        });
    }
    evidence
        .failing
        .sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.target.cmp(&b.target)));
    evidence.failing.truncate(MAX_FAILURES);
    evidence.failing_checks.sort_by(|a, b| {
        b.run
            .at
            .cmp(&a.run.at)
            .then_with(|| a.target.cmp(&b.target))
            .then_with(|| a.probe.cmp(&b.probe))
    });
    evidence.failing_checks.truncate(MAX_FAILURES);

    let members: HashSet<(&str, &str)> = members
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let is_member = |probe: &str, target: &str| members.contains(&(probe, target));
    // Chosen first, built after: at 10,000 targets all but MAX_CONTRAST are only counted.
    let mut unlisted = Unlisted::default();
    let others = latest
        .pings
        .iter()
        .filter(|p| !is_member(&p.probe, &p.target))
        .collect();
    evidence.others = list_some(others, MAX_CONTRAST, |p| ping_healthy(p), &mut unlisted)
        .into_iter()
        .map(|p| Contrast {
            healthy: ping_healthy(p),
            probe: p.probe.clone(),
            target: p.target.clone(),
            target_site: p.target_site.clone(),
            loss_pct: p.loss_pct,
            rtt_median_ms: p.rtt_median_ms,
            failure: p.failure.clone(),
            last_seen: Timestamp::from_unix_ns(p.timestamp_ns),
        })
        .collect();
    let other_checks = latest
        .checks
        .iter()
        .filter(|c| !is_member(&c.probe, &c.target))
        .collect();
    evidence.other_checks = list_some(other_checks, MAX_CONTRAST, |c| c.success, &mut unlisted)
        .into_iter()
        .map(|c| {
            Ok(CheckContrast {
                figures: CheckFigures::from_fields(&c.measurement, &c.fields)
                    .with_context(|| format!("the latest run of {}/{}", c.probe, c.target))?,
                healthy: c.success,
                probe: c.probe.clone(),
                target: c.target.clone(),
                target_site: c.target_site.clone(),
                failure: c.failure.clone(),
                last_seen: Timestamp::from_unix_ns(c.timestamp_ns),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    evidence.unlisted = unlisted;
    Ok(evidence)
}

fn ping_healthy(p: &LatestPing) -> bool {
    p.failure.is_none() && p.loss_pct < HEALTHY_BELOW_LOSS_PCT
}

/// Keep at most `max` of `items`, in their order, and count the rest into `unlisted`. The
/// unhealthy (what to look at) take the places the healthy leave, and the healthy (the contrast)
/// keep at least half of them when there are that many.
fn list_some<T>(
    items: Vec<T>,
    max: usize,
    healthy: impl Fn(&T) -> bool,
    unlisted: &mut Unlisted,
) -> Vec<T> {
    let good = items.iter().filter(|c| healthy(c)).count();
    let bad = items.len() - good;
    let keep_bad = bad.min(max - good.min(max / 2));
    let (mut keep_good, mut keep_bad) = (good.min(max - keep_bad), keep_bad);
    items
        .into_iter()
        .filter(|item| {
            let (keep, is_healthy) = if healthy(item) {
                (&mut keep_good, true)
            } else {
                (&mut keep_bad, false)
            };
            if *keep > 0 {
                *keep -= 1;
                return true;
            }
            unlisted.all += 1;
            unlisted.healthy += usize::from(is_healthy);
            false
        })
        .collect()
}

/// Keep at most about `max` points, one per even stretch: its first failure if it had one (so
/// thinning never hides that something failed), else its first point. The last point is always
/// kept.
fn thin<T>(points: Vec<T>, max: usize, failed: impl Fn(&T) -> bool) -> Vec<T> {
    if points.len() <= max || max == 0 {
        return points;
    }
    let step = points.len().div_ceil(max);
    let last = points.len() - 1;
    let keep: Vec<usize> = (0..points.len())
        .step_by(step)
        .map(|start| {
            (start..(start + step).min(points.len()))
                .find(|&i| failed(&points[i]))
                .unwrap_or(start)
        })
        .chain([last])
        .collect();
    points
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep.binary_search(i).is_ok())
        .map(|(_, p)| p)
        .collect()
}

/// The evidence window: `history` before detection up to `until`.
pub fn window(
    detected: SystemTime,
    history: Duration,
    until: SystemTime,
) -> (SystemTime, SystemTime) {
    let from = detected
        .checked_sub(history)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    (from, until.max(detected))
}

#[cfg(test)]
mod tests {
    use super::{Unlisted, list_some, thin};

    /// `list_some` of `(name, healthy)` items: the names it lists, and what it counts.
    fn listed(items: Vec<(usize, bool)>, max: usize) -> (Vec<usize>, Unlisted) {
        let mut unlisted = Unlisted::default();
        let names = list_some(items, max, |i| i.1, &mut unlisted)
            .iter()
            .map(|i| i.0)
            .collect();
        (names, unlisted)
    }

    #[test]
    fn at_most_max_others_are_listed_in_order_the_rest_counted() {
        // 99 unhealthy, 4 healthy (7, 37, 67, 97), interleaved: every healthy one (under half
        // of 10) and the first unhealthy ones, in their order.
        let items = (0..103).map(|i| (i, i % 30 == 7)).collect();
        assert_eq!(
            listed(items, 10),
            (
                vec![0, 1, 2, 3, 4, 5, 7, 37, 67, 97],
                Unlisted {
                    healthy: 0,
                    all: 93
                }
            )
        );
        // Mostly healthy: the unhealthy keep their places, the healthy fill the rest.
        let items = (0..50).map(|i| (i, i != 3)).collect();
        assert_eq!(
            listed(items, 4),
            (
                vec![0, 1, 2, 3],
                Unlisted {
                    healthy: 46,
                    all: 46
                }
            )
        );
        // Both many: half each.
        let items = (0..50).map(|i| (i, i % 2 == 0)).collect();
        assert_eq!(
            listed(items, 4),
            (
                vec![0, 1, 2, 3],
                Unlisted {
                    healthy: 23,
                    all: 46
                }
            )
        );
        // Fewer than the bound: all of them, nothing counted.
        assert_eq!(
            listed(vec![(0, true), (1, false)], 4),
            (vec![0, 1], Unlisted::default())
        );
    }

    #[test]
    fn thinning_keeps_a_failure_of_every_stretch_and_the_last_point() {
        // 100 runs to at most 10: stretches of 10; run 37 failed, run 99 is the latest.
        let thinned = thin((0..100).collect(), 10, |&i| i == 37);
        assert_eq!(thinned, [0, 10, 20, 37, 40, 50, 60, 70, 80, 90, 99]);
        assert_eq!(thin((0..5).collect(), 10, |_| true), [0, 1, 2, 3, 4]);
    }
}
