//! Delivery from the durable outbox to incident sinks. Every event is already saved (with its
//! idempotency key) before a sink sees it; a sink's events are delivered in order, each marked
//! delivered per sink, and retried with backoff while the sink is down — a failing sink holds up
//! only itself. The directory is the default sink; Alertmanager and webhook sinks implement the
//! same [`IncidentSink`] trait.
//!
//! A sink that forgets what it is not reminded of (Alertmanager) also gets every open incident
//! again every [`IncidentSink::refresh_every`] — first right after start, so a restart re-sends
//! too — but only once it has received every pending event, so a reminder never overtakes one.

use std::time::{Duration, Instant, SystemTime};

use super::db::{IncidentDb, Pending};
use super::event::OutboxEvent;
use super::{Incident, Timestamp};
use crate::sinks::influx::backoff;

/// Events read from the outbox per sink per pass.
const BATCH: usize = 100;

/// Where incident events go. `deliver` must be idempotent by `event.idempotency_key`: after a
/// crash between delivering and marking delivered, the same event comes again.
pub trait IncidentSink: Send {
    /// A stable name: deliveries are tracked per sink name.
    fn name(&self) -> &str;
    fn deliver(&mut self, event: &OutboxEvent) -> anyhow::Result<()>;
    /// How often [`IncidentSink::refresh`] is due; `None` (the default): never.
    fn refresh_every(&self) -> Option<Duration> {
        None
    }
    /// Tell the sink again about every incident that is still open. `open` reads them one at a
    /// time, so a sink that sends them in batches holds one batch (a mass outage leaves 10,000
    /// open; reading them all at once took the agent to 360 MB every reminder).
    fn refresh(&mut self, _open: &mut dyn Iterator<Item = Incident>) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The first retry after a failure; doubled per failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One sink and its retry state.
struct Slot {
    sink: Box<dyn IncidentSink>,
    /// Failures in a row, since the last success.
    failures: u32,
    /// Every event before this outbox sequence is delivered: the next poll starts here.
    undelivered_from: i64,
    next_try: Instant,
    next_refresh: Instant,
}

impl Slot {
    /// Count a failure; returns the wait before the next try (the outputs' backoff, no jitter).
    fn failed(&mut self, now: Instant) -> Duration {
        self.failures += 1;
        let wait = backoff(self.failures, FIRST_BACKOFF, MAX_BACKOFF, 1.0, None);
        self.next_try = now + wait;
        wait
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("sink", &self.sink.name())
            .field("failures", &self.failures)
            .finish()
    }
}

/// The open incidents, read one at a time. One that cannot be read (a row written by a newer
/// version, a failing disk) is skipped and counted, so the others are still re-sent and the
/// sinks after this one are still served.
struct OpenIncidents<'db> {
    db: &'db IncidentDb,
    ids: std::vec::IntoIter<(String, String)>,
    unreadable: usize,
    first_error: Option<String>,
}

impl<'db> OpenIncidents<'db> {
    fn new(db: &'db IncidentDb) -> anyhow::Result<OpenIncidents<'db>> {
        Ok(OpenIncidents {
            db,
            ids: db.open_keys()?.into_iter(),
            unreadable: 0,
            first_error: None,
        })
    }

    fn report_unreadable(&self, sink: &str) {
        if let Some(error) = &self.first_error {
            tracing::warn!(%sink, unreadable = self.unreadable, first_error = %error,
                "open incidents that cannot be read were not re-sent; the others were");
        }
    }
}

impl Iterator for OpenIncidents<'_> {
    type Item = Incident;

    fn next(&mut self) -> Option<Incident> {
        for (id, _key) in self.ids.by_ref() {
            match self.db.get(&id) {
                Ok(Some(incident)) => return Some(incident),
                Ok(None) => {} // gone since the ids were read
                Err(error) => {
                    self.unreadable += 1;
                    self.first_error.get_or_insert_with(|| format!("{error:#}"));
                }
            }
        }
        None
    }
}

/// Delivers pending outbox events to every sink.
#[derive(Debug)]
pub struct Deliverer {
    db: IncidentDb,
    slots: Vec<Slot>,
}

impl Deliverer {
    pub fn new(db: IncidentDb, sinks: Vec<Box<dyn IncidentSink>>) -> anyhow::Result<Deliverer> {
        for sink in &sinks {
            db.register_sink(sink.name())?;
        }
        let now = Instant::now();
        Ok(Deliverer {
            db,
            slots: sinks
                .into_iter()
                .map(|sink| Slot {
                    sink,
                    failures: 0,
                    undelivered_from: 0,
                    next_try: now,
                    next_refresh: now,
                })
                .collect(),
        })
    }

    /// Deliver what is pending to every sink that is not backing off; returns how many events
    /// were delivered.
    pub fn run_once(&mut self) -> anyhow::Result<usize> {
        let mut delivered = 0;
        let now = Instant::now();
        for slot in &mut self.slots {
            if now < slot.next_try {
                continue;
            }
            let name = slot.sink.name().to_string();
            let Pending { events, end } = self.db.pending(&name, slot.undelivered_from, BATCH)?;
            let mut caught_up = events.len() < BATCH;
            // The read skipped only delivered events: those before the first it found are.
            slot.undelivered_from = events.first().map_or(end, |first| first.seq);
            for event in events {
                match slot.sink.deliver(&event) {
                    Ok(()) => {
                        self.db
                            .mark_delivered(event.seq, &name, Timestamp(SystemTime::now()))?;
                        slot.undelivered_from = event.seq + 1;
                        slot.failures = 0;
                        delivered += 1;
                    }
                    Err(error) => {
                        let error = format!("{error:#}");
                        self.db.mark_failed(event.seq, &name, &error)?;
                        let retry_in = slot.failed(now);
                        tracing::warn!(sink = %name, event = %event.idempotency_key, %error, ?retry_in, "incident sink is down; will retry");
                        caught_up = false;
                        break; // keep the order: nothing after a failed event goes first
                    }
                }
            }
            if caught_up {
                // Everything the read saw is delivered now, what it found included.
                slot.undelivered_from = end;
            }
            if let Some(every) = slot.sink.refresh_every()
                && caught_up
                && now >= slot.next_refresh
            {
                let mut open = OpenIncidents::new(&self.db)?;
                let refreshed = slot.sink.refresh(&mut open);
                open.report_unreadable(&name);
                match refreshed {
                    Ok(()) => {
                        slot.next_refresh = now + every;
                        slot.failures = 0;
                    }
                    Err(error) => {
                        let error = format!("{error:#}");
                        let retry_in = slot.failed(now);
                        tracing::warn!(sink = %name, %error, ?retry_in, "cannot re-send open incidents; will retry");
                    }
                }
            }
        }
        Ok(delivered)
    }

    #[cfg(test)]
    pub(crate) fn db(&self) -> &IncidentDb {
        &self.db
    }

    /// Deliver until `stop` says so, checking every `every`; one last pass at the end.
    pub fn run(mut self, every: Duration, stop: impl Fn() -> bool) {
        loop {
            if let Err(error) = self.run_once() {
                tracing::error!(error = %format!("{error:#}"), "incident outbox: delivery pass failed; will retry");
            }
            if stop() {
                return;
            }
            std::thread::sleep(every);
        }
    }
}
