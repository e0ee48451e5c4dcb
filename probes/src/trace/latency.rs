//! Where along the path latency steps up: [`locate_latency_step`], the latency half of a trace's
//! verdict (the loss half is [`super::locate_loss`]).

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::{Hop, TraceReport};

/// A rise in latency smaller than this is not called a step (propagation and noise on most
/// paths stay under it between two hops).
pub const MIN_LATENCY_STEP_MS: f64 = 10.0;
/// A step must also be this many times the destination's RTT standard deviation: on a jittery
/// path a difference of best RTTs that small is noise.
pub const LATENCY_STEP_JITTER_FACTOR: f64 = 3.0;

/// Latency rises by `rise_ms` at hop `ttl` and stays that high to the destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyStep {
    pub ttl: u8,
    pub address: Option<IpAddr>,
    pub rise_ms: f64,
}

impl fmt::Display for LatencyStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "latency rises by {:.0} ms at hop {}",
            self.rise_ms, self.ttl
        )?;
        if let Some(address) = self.address {
            write!(f, ", {address}")?;
        }
        Ok(())
    }
}

/// Locate the largest latency step that persists to the destination. Pure.
///
/// A hop's latency is its best RTT: queueing and a router's slow path only ever add to an RTT, so
/// the minimum over the probes is the path's own latency. A router answering slowly for itself
/// (its replies are made by its CPU, often rate-limited or deprioritized) says nothing about what
/// it forwards; only latency still there at every later hop and at the destination is on the path.
/// So each answering hop is read as the lowest latency from it to the destination (a slow hop with
/// faster hops after it reads as theirs), and the step is the largest rise of that from one
/// answering hop to the next (from zero, the agent itself, for the first). It must be at least
/// [`MIN_LATENCY_STEP_MS`] and [`LATENCY_STEP_JITTER_FACTOR`] times the destination's standard
/// deviation. `None`: no such step, or the destination did not answer (nothing persists to it).
pub fn locate_latency_step(report: &TraceReport) -> Option<LatencyStep> {
    let destination_index = report
        .hops
        .iter()
        .position(|h| h.addresses.contains(&report.target))?;
    let answering: Vec<(&Hop, f64)> = report.hops[..=destination_index]
        .iter()
        .filter(|h| !h.is_silent())
        .filter_map(|h| h.rtt_best_ms.or(h.rtt_avg_ms).map(|rtt| (h, rtt)))
        .collect();
    let (destination, _) = answering.last()?;
    let jitter = destination.rtt_stddev_ms.unwrap_or(0.0);
    // The latency that persists from each answering hop on: the lowest from it to the end.
    let mut persisting: Vec<f64> = answering.iter().map(|(_, rtt)| *rtt).collect();
    for i in (0..persisting.len().saturating_sub(1)).rev() {
        persisting[i] = persisting[i].min(persisting[i + 1]);
    }
    let mut step: Option<(usize, f64)> = None;
    let mut before = 0.0;
    for (i, &latency) in persisting.iter().enumerate() {
        let rise = latency - before;
        if step.is_none_or(|(_, largest)| rise > largest) {
            step = Some((i, rise));
        }
        before = latency;
    }
    let (index, rise) = step?;
    if rise < MIN_LATENCY_STEP_MS || rise < LATENCY_STEP_JITTER_FACTOR * jitter {
        return None;
    }
    let hop = answering[index].0;
    Some(LatencyStep {
        ttl: hop.ttl,
        address: hop.addresses.first().copied(),
        rise_ms: rise,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "198.18.2.2";

    /// An answering hop whose best RTT is `best` ms (its average a little above), or a silent one.
    fn hop(ttl: u8, addr: Option<&str>, best: f64, stddev: f64) -> Hop {
        let answered = addr.is_some();
        Hop {
            ttl,
            addresses: addr
                .map(|a| vec![a.parse().expect("address")])
                .unwrap_or_default(),
            sent: 20,
            received: if answered { 20 } else { 0 },
            loss_pct: if answered { 0.0 } else { 100.0 },
            rtt_last_ms: answered.then_some(best + stddev),
            rtt_avg_ms: answered.then_some(best + stddev),
            rtt_best_ms: answered.then_some(best),
            rtt_worst_ms: answered.then_some(best + 4.0 * stddev),
            rtt_stddev_ms: answered.then_some(stddev),
        }
    }

    fn step(ttl: u8, address: &str, rise_ms: f64) -> Option<LatencyStep> {
        Some(LatencyStep {
            ttl,
            address: Some(address.parse().expect("address")),
            rise_ms,
        })
    }

    #[test]
    fn latency_steps() {
        let (r1, r2, r3, r4) = ("198.18.0.1", "198.18.1.2", "198.18.1.9", "198.18.1.10");
        let cases: Vec<(&str, Vec<Hop>, Option<LatencyStep>)> = vec![
            (
                "120 ms added by the first router: the step is at hop 2 and persists",
                vec![
                    hop(1, Some(r1), 0.5, 0.1),
                    hop(2, Some(r2), 120.5, 0.2),
                    hop(3, Some(TARGET), 121.0, 0.3),
                ],
                step(2, r2, 120.0),
            ),
            (
                "a flat path",
                vec![
                    hop(1, Some(r1), 0.5, 0.1),
                    hop(2, Some(r2), 0.8, 0.1),
                    hop(3, Some(TARGET), 1.0, 0.1),
                ],
                None,
            ),
            (
                "a slow router whose latency does not persist: its slow path, not the path's",
                vec![
                    hop(1, Some(r1), 0.5, 0.1),
                    hop(2, Some(r2), 150.0, 40.0),
                    hop(3, Some(r3), 1.0, 0.1),
                    hop(4, Some(TARGET), 1.2, 0.1),
                ],
                None,
            ),
            (
                "a slow router before the real step is not its start",
                vec![
                    hop(1, Some(r1), 0.5, 0.1),
                    hop(2, Some(r2), 150.0, 40.0),
                    hop(3, Some(r3), 0.8, 0.1),
                    hop(4, Some(r4), 60.5, 0.5),
                    hop(5, Some(TARGET), 61.0, 0.5),
                ],
                step(4, r4, 59.7),
            ),
            (
                "a slow router inside the step still starts it: latency persists from it",
                vec![
                    hop(1, Some(r1), 0.5, 0.1),
                    hop(2, Some(r2), 300.0, 50.0),
                    hop(3, Some(r3), 120.5, 0.5),
                    hop(4, Some(TARGET), 121.0, 0.5),
                ],
                step(2, r2, 120.0),
            ),
            (
                "two rises: the larger one is the step",
                vec![
                    hop(1, Some(r1), 0.5, 0.1),
                    hop(2, Some(r2), 20.5, 0.5),
                    hop(3, Some(r3), 100.5, 0.5),
                    hop(4, Some(TARGET), 101.0, 0.5),
                ],
                step(3, r3, 80.0),
            ),
            (
                "silent hops are skipped",
                vec![
                    hop(1, Some(r1), 0.5, 0.1),
                    hop(2, None, 0.0, 0.0),
                    hop(3, Some(r3), 50.5, 0.5),
                    hop(4, Some(TARGET), 51.0, 0.5),
                ],
                step(3, r3, 50.0),
            ),
            (
                "the step on the first link is hop 1's",
                vec![hop(1, Some(r1), 40.0, 0.5), hop(2, Some(TARGET), 40.5, 0.5)],
                step(1, r1, 40.0),
            ),
            (
                "a rise below the absolute minimum is not a step",
                vec![
                    hop(1, Some(r1), 0.5, 0.1),
                    hop(2, Some(r2), 8.0, 0.1),
                    hop(3, Some(TARGET), 8.5, 0.1),
                ],
                None,
            ),
            (
                "a rise small next to the destination's jitter is noise",
                vec![
                    hop(1, Some(r1), 0.5, 0.1),
                    hop(2, Some(r2), 30.5, 12.0),
                    hop(3, Some(TARGET), 31.0, 12.0),
                ],
                None,
            ),
            (
                "the destination did not answer: nothing persists to it",
                vec![
                    hop(1, Some(r1), 0.5, 0.1),
                    hop(2, Some(r2), 120.5, 0.2),
                    hop(3, None, 0.0, 0.0),
                ],
                None,
            ),
        ];
        for (name, hops, expected) in cases {
            let report = TraceReport::new(TARGET.parse().expect("target"), hops);
            let found = locate_latency_step(&report);
            match (&found, &expected) {
                (Some(found), Some(expected)) => {
                    assert_eq!(
                        (found.ttl, found.address),
                        (expected.ttl, expected.address),
                        "{name}"
                    );
                    assert!(
                        (found.rise_ms - expected.rise_ms).abs() < 1e-9,
                        "{name}: {found:?}"
                    );
                }
                _ => assert_eq!(found, expected, "{name}"),
            }
        }
    }

    #[test]
    fn a_step_reads_like_a_sentence() {
        assert_eq!(
            step(2, "198.18.1.2", 119.6).expect("step").to_string(),
            "latency rises by 120 ms at hop 2, 198.18.1.2"
        );
    }
}
