//! The fleet: every agent writes to one shared time-series store, and cross-site questions ("does
//! sjc1 see it too?") are queries against that store — no protocol between agents.
//!
//! ## Layout
//! - `query`: [`FleetStore`], what every site measured to some targets over a window, asked of
//!   the shared store in InfluxQL (InfluxDB 1.x `/query`) or PromQL (VictoriaMetrics
//!   `/api/v1/query`) within a strict time budget → a [`FleetView`]
//! - `verdict`: [`verdict::verdict`], a pure function from a view to one sentence that localizes the
//!   fault (this site's side, the target, or a shared segment), with its reasoning
//! - [`FleetSites`]: which sites see a fleet evaluator's incident (its members are
//!   (site, target) pairs), for its draft, its updates and its `incident` points
//! - the fleet evaluator's open incidents, asked with a site's view
//!   ([`query::FleetIncident`]), so a site's draft links to the fleet's incident of its outage
//!
//! The fleet evaluator (`vantage fleet`), which composes this view with the rules engine and the
//! incident pipeline, sits above both, in `crate::evaluator`.

pub mod query;
pub mod verdict;

pub use query::{
    FleetError, FleetIncident, FleetRequest, FleetStore, FleetView, PeerHop, PeerTrace, SiteFigures,
};

use serde::{Deserialize, Serialize};

use crate::config::{RuleConfig, RuleScope};
use crate::rules::Impact;

/// The fleet evaluator's member label that names the target (a member is a (site, target) pair).
pub const TARGET_LABEL: &str = "target";
/// The label of a mesh member that names the site its target stands for.
pub const SITE_LABEL: &str = "site";

/// Which sites see a fleet evaluator's incident: `seeing` of `total` witnesses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSites {
    /// Sorted, once each.
    pub seeing: Vec<String>,
    /// The sites that can witness it: every site for a target rule, every other site for a site
    /// rule (a site that is down is no witness of itself).
    pub total: usize,
}

impl FleetSites {
    /// From a fleet rule (compiled: its probes are the sites) and an impact (an affected
    /// member's probe is the site that sees it).
    pub fn of(rule: &RuleConfig, impact: &Impact) -> FleetSites {
        let mut seeing: Vec<String> = impact.affected.iter().map(|m| m.probe.clone()).collect();
        seeing.sort();
        seeing.dedup();
        let by_site = matches!(&rule.scope, RuleScope::Group { label, .. } if label == SITE_LABEL);
        FleetSites {
            seeing,
            total: rule.probes.len().saturating_sub(usize::from(by_site)),
        }
    }

    /// "3 of 3 sites".
    pub fn count(&self) -> String {
        format!("{} of {} sites", self.seeing.len(), self.total)
    }
}
