//! `Incident`s: what a rule transition becomes. An incident is opened, updated and resolved by the
//! [`Manager`] from the rules engine's transitions; its state and every event about it are kept in
//! SQLite (`DATA_DIR/incidents.db`) before anything is delivered, so a restart during an incident
//! neither re-opens it nor sends it again.
//!
//! ## Layout
//! - this file: [`Incident`] and its parts, [`Timestamp`]
//! - `db`: the SQLite tables (incidents, the durable outbox, deliveries per sink)
//! - `manager`: [`Manager`], transitions → incident state + outbox events, status-update drafts
//! - `diagnostics`: [`TraceDiagnostics`], the path traces (and their verdict) taken at breach
//! - `fleet_view`: [`FleetLookup`], "seen from other sites": the fleet view of the affected
//!   targets from the shared store, off the rules thread, and its verdict
//! - `evidence`: the history, failures and healthy contrast gathered from the embedded store
//! - `render`: pure functions: the Markdown status document, the title
//! - `chart`: a smokeping-style SVG chart, written by a small SVG writer of our own
//! - `event`: [`EventKind`], [`OutboxEvent`]: what the outbox keeps and sinks receive
//! - `outbox`: [`IncidentSink`] and the delivery loop that retries while a sink is down
//! - `directory`: the default sink, one folder per incident
//! - `outputs`: each event as an `incident` point into every `[[output]]`
//! - `alertmanager`, `webhook`: the `[[incident_sink]]` kinds; `http`: their JSON POST
//! - `pipeline`: the agent's threads: rules engine + manager, and delivery

pub mod alertmanager;
pub mod chart;
pub mod db;
pub mod diagnostics;
pub mod directory;
pub mod event;
pub mod evidence;
pub mod fleet_view;
mod http;
pub mod manager;
pub mod outbox;
pub mod outputs;
pub mod pipeline;
pub mod render;
mod summary;
pub mod webhook;

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use db::IncidentDb;
pub use diagnostics::TraceDiagnostics;
pub use directory::DirectorySink;
pub use event::{EventKind, OutboxEvent};
pub use evidence::Evidence;
pub use fleet_view::{FleetEvidence, FleetLookup};
pub use manager::{
    Diagnosis, Diagnostics, Manager, NoDiagnostics, PendingDiagnosis, TraceEvidence,
};
pub use outbox::IncidentSink;
pub use summary::Summary;

use crate::rules::{Impact, Peak, Scope};

/// The SQLite file of incident state and the outbox, inside the data directory.
pub const DB_FILE: &str = "incidents.db";
/// The directory sink's folder inside the data directory.
pub const DIRECTORY: &str = "incidents";

/// Wall-clock time, for display: RFC 3339 (UTC, seconds) in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_seconds(self.0).to_string()
    }

    /// `2026-11-21`
    pub fn date(self) -> String {
        self.rfc3339()[..10].to_string()
    }

    /// `10:15:00`
    pub fn time(self) -> String {
        self.rfc3339()[11..19].to_string()
    }

    /// `2026-11-21 10:15:00 UTC`
    pub fn display(self) -> String {
        format!("{} {} UTC", self.date(), self.time())
    }

    pub fn unix_ns(self) -> i64 {
        probes::unix_ns(self.0)
    }

    pub fn from_unix_ns(ns: i64) -> Timestamp {
        Timestamp(SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0)))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text)
            .map(Timestamp)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Resolved => "resolved",
        }
    }
}

/// One line of the incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: Timestamp,
    /// `opened`, `updated`, `status-update`, `resolved`, `restarted`, ...
    pub event: String,
    pub text: String,
}

/// A ready-to-send status update, drafted every `[incidents] status_updates` while open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub number: u32,
    pub at: Timestamp,
    pub text: String,
}

/// The rule as the draft explains it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSummary {
    pub name: String,
    /// "loss above 20% over the last 100 echoes, for 1m"
    pub condition: String,
}

/// A draft incident: everything the status document and `incident.json` say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// `20261121-001`: the opening date (UTC) and a sequence number of this agent.
    pub id: String,
    /// The rule's dedup key, `rule/scope/value`.
    pub key: String,
    pub rule: RuleSummary,
    pub severity: String,
    pub scope: Scope,
    pub agent: String,
    pub site: String,
    pub status: Status,
    pub title: String,
    pub detected_at: Timestamp,
    pub updated_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    /// How long it was open, measured on the monotonic clock (set when resolved).
    pub duration_s: Option<u64>,
    /// The latest figures.
    pub impact: Impact,
    pub peak: Peak,
    pub timeline: Vec<TimelineEntry>,
    pub status_updates: Vec<StatusUpdate>,
    /// The path trace and its verdict at the moment of breach, when a trace probe is available.
    pub trace: Option<TraceEvidence>,
    pub evidence: Evidence,
    /// How often status updates are drafted (for the engage checklist).
    pub status_update_every_s: u64,
    /// What the other sites of the fleet see (`[fleet]`); None without a fleet store.
    #[serde(default)]
    pub fleet: Option<FleetEvidence>,
    /// Set on the fleet evaluator's incidents only: which sites see it. Its drafts speak as the
    /// fleet (sites, not this agent's targets).
    #[serde(default)]
    pub fleet_sites: Option<crate::fleet::FleetSites>,
}

impl Incident {
    pub fn is_open(&self) -> bool {
        self.status == Status::Open
    }
}

#[cfg(test)]
mod fleet_view_tests;
#[cfg(test)]
mod sink_tests;
#[cfg(test)]
mod tests;
