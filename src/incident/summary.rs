//! What a list shows of an incident: its draft read without the timeline, trace and evidence
//! (most of its tens of KiB). The web page's lists read it from `incident.json`, `vantage
//! incidents list` from `incidents.db`.

use super::{Status, Timestamp};

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Summary {
    pub id: String,
    pub status: Status,
    pub severity: String,
    pub title: String,
    pub detected_at: Timestamp,
    pub duration_s: Option<u64>,
    impact: SummaryImpact,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct SummaryImpact {
    affected: Vec<SummaryMember>,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct SummaryMember {
    target: String,
}

impl Summary {
    pub fn is_open(&self) -> bool {
        self.status == Status::Open
    }

    pub fn affects(&self, target: &str) -> bool {
        self.impact.affected.iter().any(|m| m.target == target)
    }
}
