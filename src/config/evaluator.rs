//! `EvaluatorConfig`: the validated config of `vantage fleet`, the evaluator of fleet-scope rules over
//! the shared store. Parsed by the same checker as the agent's config (`validate/evaluator.rs`):
//! every mistake at once, with file:line:column and a hint; `[incidents]`, `[[output]]`, `[fleet]`
//! and `[[incident_sink]]` are the agent's sections, checked by the same code.

use std::path::PathBuf;
use std::time::Duration;

use super::{Condition, FleetConfig, IncidentSinkConfig, IncidentsConfig, OutputConfig, Severity};

/// Echoes in the synthetic window of a fleet loss rule: one read of the store is one window,
/// its loss written as this many echoes (so `above_pct` has a resolution of 1%).
pub const FLEET_ECHOES: u32 = 100;

#[derive(Debug, Clone)]
pub struct EvaluatorConfig {
    /// The file it was read from (for messages).
    pub source: PathBuf,
    /// The evaluator's name: the `agent` tag and label of its incidents; default `fleet`.
    pub name: String,
    /// Incident state, drafts and the outputs' spool; default `./vantage-fleet-data`.
    pub data_dir: PathBuf,
    /// How often the store is read; default 10 s.
    pub interval: Duration,
    /// How much time each read covers; default 1 min.
    pub window: Duration,
    pub sites: Vec<SiteConfig>,
    pub rules: Vec<FleetRuleConfig>,
    pub incidents: IncidentsConfig,
    /// Incident points are written to every one; the store is read through `store.output`.
    pub outputs: Vec<OutputConfig>,
    /// `[fleet]`, as in the agents' config: which output's store is read, in which dialect.
    pub store: FleetConfig,
    pub incident_sinks: Vec<IncidentSinkConfig>,
}

/// One `[[site]]`: a site that runs an agent, and the targets the other sites reach it by.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteConfig {
    pub name: String,
    /// The mesh targets (as the agents name them) that stand for this site.
    pub targets: Vec<String>,
}

/// One fleet `[[rule]]`: the agent rule language (`kind`, thresholds, `for`, `clear_for`,
/// `min_hold`, `severity`), with a fleet scope.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRuleConfig {
    pub name: String,
    pub severity: Severity,
    pub scope: FleetScope,
    /// `scope = "target"`: the targets watched (as the agents name them).
    pub targets: Vec<String>,
    /// Loss (over one read of the store) or the median RTT of that read.
    pub condition: Condition,
    pub open_for: Duration,
    pub clear_for: Duration,
    pub min_hold: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FleetScope {
    /// One incident per target, when at least `sites_pct`% of the sites see it breach.
    Target { sites_pct: f64 },
    /// One incident per site ("site scl3 unreachable"), when at least `min_sites` other sites
    /// see its mesh targets breach. While it is pending or open, that site is no witness for
    /// target rules.
    Site { min_sites: u32 },
}
