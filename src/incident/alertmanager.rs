//! The Alertmanager sink (API v2): one alert per incident, `POST {url}/api/v2/alerts`.
//!
//! Alertmanager forgets an alert that is not sent again: it resolves it at its `endsAt`. So, like
//! Prometheus, every open incident is posted again every `resend` with `endsAt` four periods ahead
//! ([`IncidentSink::refresh`], also right after a restart), and a resolved incident is posted once
//! more with `endsAt` = the time it resolved, then never again. If the agent dies, its alerts
//! expire after four periods instead of firing forever.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use reqwest::Url;
use serde_json::{Value, json};

use super::event::OutboxEvent;
use super::http::Poster;
use super::outbox::IncidentSink;
use super::{Incident, Timestamp, render};
use crate::config::IncidentSinkConfig;

/// An open alert's `endsAt` is this many re-send periods ahead.
const ENDS_AFTER_RESENDS: u32 = 4;

/// Alerts per POST of a re-send: a mass outage leaves 10,000 open, and one body of them all
/// would be tens of MB, held in memory and refused whole on one timeout.
pub const RESEND_BATCH: usize = 500;

/// One alert of the `POST /api/v2/alerts` array. `alertname` is the rule's name, as in
/// Prometheus; `draft` is where the status document is on the agent's disk.
pub fn alert(
    incident: &Incident,
    draft: &Path,
    extra_labels: &BTreeMap<String, String>,
    now: SystemTime,
    resend: Duration,
) -> Value {
    let mut labels: BTreeMap<&str, String> = extra_labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    labels.extend([
        ("alertname", incident.rule.name.clone()),
        ("rule", incident.rule.name.clone()),
        ("severity", incident.severity.clone()),
        ("scope", incident.scope.kind().to_string()),
        ("subject", incident.scope.value()),
        ("agent", incident.agent.clone()),
        ("site", incident.site.clone()),
        ("incident_id", incident.id.clone()),
        // Without the agent: the agents' drafts and the fleet's incident of one outage share it.
        ("fleet_key", incident.scope.fleet_key(&incident.site)),
    ]);
    let ends_at = incident
        .resolved_at
        .unwrap_or(Timestamp(now + resend * ENDS_AFTER_RESENDS));
    json!({
        "labels": labels,
        "annotations": {
            "summary": incident.title,
            "description": format!(
                "{}. Rule: {}.",
                render::incident_impact(incident),
                incident.rule.condition
            ),
            "draft": draft.display().to_string(),
        },
        "startsAt": incident.detected_at,
        "endsAt": ends_at,
    })
}

#[derive(Debug)]
pub struct AlertmanagerSink {
    name: String,
    endpoint: Url,
    labels: BTreeMap<String, String>,
    resend: Duration,
    /// The directory sink's folder: where each incident's draft is.
    drafts: PathBuf,
    poster: Poster,
}

impl AlertmanagerSink {
    pub fn new(
        config: &IncidentSinkConfig,
        labels: BTreeMap<String, String>,
        resend: Duration,
        drafts: PathBuf,
    ) -> anyhow::Result<AlertmanagerSink> {
        let endpoint = Url::parse(&format!(
            "{}/api/v2/alerts",
            config.url.trim_end_matches('/')
        ))
        .with_context(|| format!("incident sink {:?}: bad url {}", config.name, config.url))?;
        Ok(AlertmanagerSink {
            name: config.name.clone(),
            endpoint,
            labels,
            resend,
            drafts,
            poster: Poster::new(config)?,
        })
    }

    fn post<'a>(&self, incidents: impl IntoIterator<Item = &'a Incident>) -> anyhow::Result<()> {
        let now = SystemTime::now();
        let alerts: Vec<Value> = incidents
            .into_iter()
            .map(|incident| {
                let draft = self.drafts.join(&incident.id).join("incident.md");
                alert(incident, &draft, &self.labels, now, self.resend)
            })
            .collect();
        self.poster.post(&self.endpoint, &Value::from(alerts), &[])
    }
}

impl IncidentSink for AlertmanagerSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// Alertmanager de-duplicates by labels, so posting an event again is harmless.
    fn deliver(&mut self, event: &OutboxEvent) -> anyhow::Result<()> {
        self.post([&event.incident])
    }

    fn refresh_every(&self) -> Option<Duration> {
        Some(self.resend)
    }

    fn refresh(&mut self, open: &mut dyn Iterator<Item = Incident>) -> anyhow::Result<()> {
        let mut batch = Vec::with_capacity(RESEND_BATCH);
        loop {
            batch.clear();
            batch.extend((&mut *open).take(RESEND_BATCH));
            if batch.is_empty() {
                return Ok(());
            }
            self.post(&batch)?;
        }
    }
}
