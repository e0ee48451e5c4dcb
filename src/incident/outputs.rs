//! The outputs sink: each incident event becomes one `incident` point in every `[[output]]`
//! (InfluxDB, VictoriaMetrics), for Grafana annotations and fleet-wide "open incidents" panels.
//! The point is in the spool (durable) before the event counts as delivered; the spool's own
//! delivery then takes it to the outputs with the usual retries.

use super::outbox::{IncidentSink, OutboxEvent};
use crate::sinks::DurableWriter;
use crate::sinks::line_protocol::incident_point;

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
