//! Evidence from the embedded store: the latency/loss history of the affected targets for the
//! window before and during the breach, their failing results with the errors, and how every other
//! target from this agent looks right now (that contrast localizes the fault too).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::Timestamp;
use crate::store::{PingPoint, Store};

/// At most this many rounds per series; longer windows are thinned evenly (failures are kept).
pub const MAX_POINTS: usize = 720;
/// At most this many failing results are listed.
pub const MAX_FAILURES: usize = 20;
/// A target counts as healthy when its latest round succeeded with less loss than this.
pub const HEALTHY_BELOW_LOSS_PCT: f64 = 5.0;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub window_from: Option<Timestamp>,
    pub window_to: Option<Timestamp>,
    /// One series per affected (probe, target), oldest round first.
    pub series: Vec<Series>,
    /// The latest failing results of the affected targets, newest first.
    pub failing: Vec<FailingResult>,
    /// Every other (probe, target) of this agent, by its latest round.
    pub others: Vec<Contrast>,
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

impl Evidence {
    pub fn healthy_others(&self) -> impl Iterator<Item = &Contrast> {
        self.others.iter().filter(|c| c.healthy)
    }
}

/// Gather evidence for `members` ((probe, target) pairs, affected now or earlier in the
/// incident) over `[from, to]`.
pub fn gather(
    store: &Store,
    members: &[(String, String)],
    from: SystemTime,
    to: SystemTime,
) -> anyhow::Result<Evidence> {
    let (from_ts, to_ts) = (Timestamp(from), Timestamp(to));
    let mut series = Vec::new();
    let mut failing = Vec::new();
    for (probe, target) in members {
        let points = store.ping_history(probe, target, from_ts.unix_ns(), to_ts.unix_ns())?;
        for point in points.iter().filter(|p| p.failure.is_some()) {
            failing.push(FailingResult {
                at: Timestamp::from_unix_ns(point.timestamp_ns),
                probe: probe.clone(),
                target: target.clone(),
                address: point.address.clone(),
                kind: point.failure_kind.clone(),
                error: point.failure.clone().unwrap_or_default(),
                loss_pct: point.loss_pct,
            });
        }
        series.push(Series {
            probe: probe.clone(),
            target: target.clone(),
            points: thin(points, MAX_POINTS),
        });
    }
    failing.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.target.cmp(&b.target)));
    failing.truncate(MAX_FAILURES);
    let others = store
        .latest_pings()?
        .into_iter()
        .filter(|p| {
            !members
                .iter()
                .any(|(probe, target)| *probe == p.probe && *target == p.target)
        })
        .map(|p| Contrast {
            healthy: p.failure.is_none() && p.loss_pct < HEALTHY_BELOW_LOSS_PCT,
            probe: p.probe,
            target: p.target,
            target_site: p.target_site,
            loss_pct: p.loss_pct,
            rtt_median_ms: p.rtt_median_ms,
            failure: p.failure,
            last_seen: Timestamp::from_unix_ns(p.timestamp_ns),
        })
        .collect();
    Ok(Evidence {
        window_from: Some(from_ts),
        window_to: Some(to_ts),
        series,
        failing,
        others,
    })
}

/// Keep at most `max` points, evenly spaced; the last point is always kept.
fn thin(points: Vec<PingPoint>, max: usize) -> Vec<PingPoint> {
    if points.len() <= max || max == 0 {
        return points;
    }
    let step = points.len().div_ceil(max);
    let last = points.len() - 1;
    points
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i == last)
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
