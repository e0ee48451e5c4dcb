//! Chart series: a target's ping rounds over a time range, for the web page's charts.
//!
//! Temporary: it reads every raw round through [`Store::ping_history`]. The store's rollups
//! (branch `store`) replace it with 5-minute and 1-hour levels, so that a 30-day chart never
//! scans raw rows.

use super::{PingPoint, Store};

impl Store {
    /// The ping rounds (or rolled-up points) of one (probe, target) from `from_ns` to `to_ns`
    /// (inclusive), oldest first.
    pub fn ping_series(
        &self,
        probe: &str,
        target: &str,
        from_ns: i64,
        to_ns: i64,
    ) -> anyhow::Result<Vec<PingPoint>> {
        self.ping_history(probe, target, from_ns, to_ns)
    }
}
