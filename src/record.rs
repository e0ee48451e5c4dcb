//! [`Record`]: what every stage of the pipeline passes on — the scheduler makes it; the store,
//! the outputs and the rules engine each take it. It lives low, beside nothing but the
//! `probes` crate, so that every stage can use it without using another.

use std::time::{Duration, Instant};

use probes::Observation;
use serde::Serialize;

/// An observation with the tags that say who measured what (the schema's common tags).
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub agent: String,
    pub site: String,
    pub probe: String,
    pub target: String,
    pub target_site: String,
    /// The address actually probed, if the target resolved.
    pub address: Option<String>,
    pub observation: Observation,
}

/// How often a writer waiting for more records ([`linger_for_more`]) looks at its queue.
const LINGER_STEP: Duration = Duration::from_millis(50);

/// Gather a batch for one transaction: call `take_queued` (it takes what is queued now and says
/// whether the batch must be written at once: full, input closed, stopping) until it says so or
/// `until` passes, napping at most 50 ms in between. Without `until`, one call. Rounds end spread
/// over their interval, so a writer that waits a little commits hundreds of records at a time
/// instead of one (the store writer and the spool writer).
pub fn linger_for_more(until: Option<Instant>, mut take_queued: impl FnMut() -> bool) {
    loop {
        if take_queued() {
            return;
        }
        let left = until.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
        });
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(LINGER_STEP));
    }
}

#[cfg(test)]
impl Record {
    /// A 20-echo ping round to `target` that just ended, every echo back in 1.5 ms: the unit
    /// tests' plain record.
    pub fn test_round(target: &str) -> Record {
        use probes::{Measurement, Outcome, PingStats};
        use std::time::{Duration, SystemTime};
        Record {
            agent: "a".into(),
            site: "s".into(),
            probe: "ping".into(),
            target: target.into(),
            target_site: "s".into(),
            address: Some("198.18.2.2".into()),
            observation: Observation {
                started_at: SystemTime::now(),
                duration: Duration::from_millis(20),
                outcome: Outcome::Success,
                measurement: Measurement::Ping(PingStats::from_rtts(vec![Some(1.5); 20])),
            },
        }
    }
}
