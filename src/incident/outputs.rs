//! The outputs sink: each incident event becomes one `incident` point in every `[[output]]`
//! (InfluxDB, VictoriaMetrics), for Grafana annotations and fleet-wide "open incidents" panels.
//! The point is in the spool (durable) before the event counts as delivered; the spool's own
//! delivery then takes it to the outputs with the usual retries.

use super::event::{EventKind, OutboxEvent};
use super::outbox::IncidentSink;
use crate::sinks::DurableWriter;
use crate::sinks::line_protocol::{FieldValue, Point};

/// The sink's name in the outbox's delivery records.
pub const NAME: &str = "outputs";

#[derive(Debug)]
pub struct OutputsSink {
    writer: DurableWriter,
}

impl OutputsSink {
    pub fn new(writer: DurableWriter) -> OutputsSink {
        OutputsSink { writer }
    }
}

impl IncidentSink for OutputsSink {
    fn name(&self) -> &str {
        NAME
    }

    fn deliver(&mut self, event: &OutboxEvent) -> anyhow::Result<()> {
        self.writer.write(&[incident_point(event)])
    }
}

/// The `incident` point of one incident event (for Grafana annotations): tags say which rule and
/// scope, fields what the on-call engineer reads. The time is the event's, so a re-delivered event
/// overwrites its own point instead of adding one.
pub fn incident_point(event: &OutboxEvent) -> Point {
    let incident = &event.incident;
    let int = |v: usize| FieldValue::Integer(i64::try_from(v).unwrap_or(i64::MAX));
    let mut fields = vec![
        ("id", FieldValue::String(incident.id.clone())),
        ("state", FieldValue::String(incident.status.as_str().into())),
        ("title", FieldValue::String(incident.title.clone())),
        ("summary", FieldValue::String(event.summary())),
        ("subject", FieldValue::String(incident.scope.value())),
        (
            "targets",
            FieldValue::String(incident.impact.affected_targets().join(",")),
        ),
        ("affected", int(incident.impact.affected_targets().len())),
        ("total_targets", int(incident.impact.total_targets)),
    ];
    if let Some(value) = incident.impact.value {
        fields.push(("value", FieldValue::Float(value)));
    }
    // The fleet evaluator's: which sites see it (the agents' drafts link to it by these).
    if let Some(sites) = &incident.fleet_sites {
        fields.push(("sites_seeing", int(sites.seeing.len())));
        fields.push(("sites_total", int(sites.total)));
    }
    if event.event == EventKind::Resolved
        && let Some(duration) = incident.duration_s
    {
        fields.push((
            "duration_s",
            FieldValue::Integer(i64::try_from(duration).unwrap_or(i64::MAX)),
        ));
    }
    Point {
        measurement: "incident",
        tags: vec![
            ("agent", incident.agent.clone()),
            ("site", incident.site.clone()),
            ("rule", incident.rule.name.clone()),
            ("severity", incident.severity.clone()),
            ("scope", incident.scope.kind().to_string()),
            ("event", event.event.as_str().to_string()),
            // One outage's points from every agent and the fleet evaluator share it.
            ("fleet_key", incident.scope.fleet_key(&incident.site)),
        ]
        .into_iter()
        // `role=fleet`: the fleet evaluator's incidents, which the agents' drafts link to.
        .chain(
            incident
                .fleet_sites
                .is_some()
                .then(|| ("role", "fleet".to_string())),
        )
        .collect(),
        fields,
        timestamp_ns: event.at.unix_ns(),
    }
}
