//! The incident events the outbox keeps and the sinks receive: what happened ([`EventKind`]) to
//! which incident, as it was then ([`OutboxEvent`]). Plain data, beside [`Incident`], so that the
//! outbox's tables (`db`), its delivery loop (`outbox`) and every sink use them without using
//! each other.

use serde::{Deserialize, Serialize};

use super::{Incident, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Opened,
    Updated,
    StatusUpdate,
    Resolved,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Updated => "updated",
            EventKind::StatusUpdate => "status-update",
            EventKind::Resolved => "resolved",
        }
    }
}

/// One incident event as sinks receive it: the incident as it was when the event happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// Position in the outbox (not part of the payload's meaning).
    #[serde(skip)]
    pub seq: i64,
    /// Unique per event, stable across retries and restarts: `20261121-001/opened`,
    /// `20261121-001/updated/2`, `20261121-001/status-update/1`, `20261121-001/resolved`.
    pub idempotency_key: String,
    pub event: EventKind,
    pub at: Timestamp,
    pub incident: Incident,
}

impl OutboxEvent {
    /// One line saying what happened: the timeline entry this event added (the title if none).
    pub fn summary(&self) -> String {
        self.incident
            .timeline
            .iter()
            .rev()
            .find(|entry| entry.event == self.event.as_str())
            .map_or_else(|| self.incident.title.clone(), |entry| entry.text.clone())
    }
}
