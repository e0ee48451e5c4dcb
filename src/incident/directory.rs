//! The directory sink (default): `DATA_DIR/incidents/<id>/` holds `incident.md` (the status
//! document), `incident.json` (the same data), `chart.svg`, `evidence.json` (the raw evidence) and
//! `events.jsonl` (every event received, once per idempotency key). Each delivery rewrites the
//! documents from the event's snapshot; files are replaced atomically (write, then rename).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::event::OutboxEvent;
use super::outbox::IncidentSink;
use super::{chart, render};

/// The sink's name in the outbox's delivery records.
pub const NAME: &str = "directory";

#[derive(Debug)]
pub struct DirectorySink {
    root: PathBuf,
}

impl DirectorySink {
    pub fn new(root: impl Into<PathBuf>) -> DirectorySink {
        DirectorySink { root: root.into() }
    }

    pub fn folder(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }
}

fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

impl IncidentSink for DirectorySink {
    fn name(&self) -> &str {
        NAME
    }

    fn deliver(&mut self, event: &OutboxEvent) -> anyhow::Result<()> {
        let incident = &event.incident;
        let folder = self.folder(&incident.id);
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        write_atomically(
            &folder.join("incident.md"),
            render::markdown(incident).as_bytes(),
        )?;
        write_atomically(
            &folder.join("incident.json"),
            serde_json::to_string_pretty(incident)?.as_bytes(),
        )?;
        write_atomically(
            &folder.join("chart.svg"),
            chart::render(incident).as_bytes(),
        )?;
        write_atomically(
            &folder.join("evidence.json"),
            serde_json::to_string_pretty(&incident.evidence)?.as_bytes(),
        )?;
        // The event log: once per idempotency key, even when an event is delivered again.
        let log = folder.join("events.jsonl");
        let seen = std::fs::read_to_string(&log).unwrap_or_default();
        let already = seen.lines().any(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| {
                    v.get("idempotency_key")?
                        .as_str()
                        .map(|k| k == event.idempotency_key)
                })
                .unwrap_or(false)
        });
        if !already {
            let line = serde_json::json!({
                "idempotency_key": event.idempotency_key,
                "event": event.event.as_str(),
                "at": event.at,
                "title": incident.title,
                "status": incident.status.as_str(),
            });
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("cannot open {}", log.display()))?;
            writeln!(file, "{line}")?;
            file.sync_data()?;
        }
        Ok(())
    }
}
