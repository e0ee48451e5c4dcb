//! The webhook sink: one `POST url` per incident event, a JSON body of a documented schema (README,
//! "Incident sinks") and an `Idempotency-Key` header equal to the body's `idempotency_key`. A 2xx
//! is delivered; anything else is retried by the outbox, in order, with backoff — so a receiver
//! may see an event again (after a crash between its 2xx and our bookkeeping) and must
//! de-duplicate by the key.

use std::path::{Path, PathBuf};

use anyhow::Context;
use reqwest::Url;
use serde_json::{Value, json};

use super::event::{EventKind, OutboxEvent};
use super::http::Poster;
use super::outbox::IncidentSink;
use super::render;
use crate::config::IncidentSinkConfig;

/// Bumped when a field changes meaning or goes away (new fields do not bump it).
pub const SCHEMA_VERSION: u32 = 1;

/// The body of one webhook POST.
pub fn body(event: &OutboxEvent, draft: &Path) -> Value {
    let incident = &event.incident;
    let status_update = match event.event {
        EventKind::StatusUpdate => incident.status_updates.last().map(|u| u.text.clone()),
        _ => None,
    };
    json!({
        "schema_version": SCHEMA_VERSION,
        "idempotency_key": event.idempotency_key,
        "event": event.event.as_str(),
        "at": event.at,
        "summary": event.summary(),
        "incident": {
            "id": incident.id,
            "key": incident.key,
            "rule": incident.rule.name,
            "condition": incident.rule.condition,
            "severity": incident.severity,
            "scope": incident.scope.kind(),
            "subject": incident.scope.value(),
            "agent": incident.agent,
            "site": incident.site,
            "status": incident.status.as_str(),
            "title": incident.title,
            "impact": render::incident_impact(incident),
            "detected_at": incident.detected_at,
            "resolved_at": incident.resolved_at,
            "duration_s": incident.duration_s,
            "draft": draft.display().to_string(),
            "status_update": status_update,
        },
    })
}

#[derive(Debug)]
pub struct WebhookSink {
    name: String,
    url: Url,
    /// The directory sink's folder: where each incident's draft is.
    drafts: PathBuf,
    poster: Poster,
}

impl WebhookSink {
    pub fn new(config: &IncidentSinkConfig, drafts: PathBuf) -> anyhow::Result<WebhookSink> {
        let url = Url::parse(&config.url)
            .with_context(|| format!("incident sink {:?}: bad url {}", config.name, config.url))?;
        Ok(WebhookSink {
            name: config.name.clone(),
            url,
            drafts,
            poster: Poster::new(config)?,
        })
    }
}

impl IncidentSink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, event: &OutboxEvent) -> anyhow::Result<()> {
        let draft = self.drafts.join(&event.incident.id).join("incident.md");
        self.poster.post(
            &self.url,
            &body(event, &draft),
            &[("Idempotency-Key", &event.idempotency_key)],
        )
    }
}
