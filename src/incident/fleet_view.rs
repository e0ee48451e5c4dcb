//! [`FleetLookup`]: "seen from other sites" for the drafts — the fleet view ([`crate::fleet`]) of an
//! incident's affected targets, asked of the shared store on a thread of its own, so the rules
//! thread never waits on the store.
//!
//! When an incident opens its lookup starts once the path traces at breach are done (by then the
//! other sites' rounds of the breach are in the store); the draft waits for it at most the store's
//! time budget (`[fleet] timeout`, the query gives up by then). While the
//! incident is open the view is asked again every [`REFRESH`], and each update and status update
//! carries the latest one. A view that was unavailable and then arrives is a timeline entry (and
//! an `updated` event), so the draft gets it once the store is back.
//!
//! An agent's lookup also asks for the fleet evaluator's open incidents of the same outage (its
//! targets' fleet keys and its site's), within the same budget: the draft links to them, and an
//! update that finds a new one says so in the timeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError, channel};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::Timestamp;
use crate::config::Config;
use crate::fleet::query::unix_ms;
use crate::fleet::verdict::{Verdict, verdict};
use crate::fleet::{FleetIncident, FleetRequest, FleetStore, FleetView};

/// A fleet view covers the breach: from [`LEAD`] before it began (its rule's `for` before
/// detection) up to when it is asked, at most [`MAX_WINDOW`] back. Figures of the healthy time
/// before a fault would water down the loss every site saw during it.
pub const LEAD: Duration = Duration::from_secs(15);
pub const MAX_WINDOW: Duration = Duration::from_secs(600);
/// How often an open incident's fleet view is asked again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// What the fleet looked like when asked, or why it could not be asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetEvidence {
    pub at: Timestamp,
    pub targets: Vec<String>,
    /// None: unavailable (see `unavailable`).
    pub view: Option<FleetView>,
    pub verdict: Option<Verdict>,
    /// "the store did not answer within 3s (…)"; the draft says "fleet view unavailable: …".
    pub unavailable: Option<String>,
    /// The fleet evaluator's open incidents of this outage (an agent's drafts only).
    #[serde(default)]
    pub incidents: Vec<FleetIncident>,
}

impl FleetEvidence {
    pub fn is_available(&self) -> bool {
        self.view.is_some()
    }
}

/// Fleet views being asked, per incident key (see the module docs).
#[derive(Debug)]
pub struct FleetLookup {
    store: Arc<FleetStore>,
    /// This agent's site; `None` for the fleet evaluator, which is no site.
    site: Option<String>,
    running: HashMap<String, Receiver<FleetEvidence>>,
    /// Answers not taken yet.
    done: HashMap<String, FleetEvidence>,
    started: HashMap<String, SystemTime>,
}

impl FleetLookup {
    /// None without `[fleet]` in the config.
    pub fn new(config: &Config) -> anyhow::Result<Option<FleetLookup>> {
        let Some(fleet) = &config.fleet else {
            return Ok(None);
        };
        let output = config
            .outputs
            .iter()
            .find(|o| o.name == fleet.output)
            .ok_or_else(|| {
                anyhow::anyhow!("[fleet] output `{}` is not configured", fleet.output)
            })?;
        Ok(Some(FleetLookup {
            store: Arc::new(FleetStore::new(fleet, output)?),
            site: fleet.is_a_site.then(|| config.agent.site.clone()),
            running: HashMap::new(),
            done: HashMap::new(),
            started: HashMap::new(),
        }))
    }

    /// Ask for `key`'s targets over `from..now` (see [`LEAD`]), unless a lookup for it is still
    /// running.
    pub fn start(&mut self, key: &str, targets: Vec<String>, from: SystemTime, now: SystemTime) {
        if self.running.contains_key(key) {
            return;
        }
        self.done.remove(key);
        let (tx, rx) = channel();
        let store = Arc::clone(&self.store);
        let site = self.site.clone();
        let spawned = std::thread::Builder::new()
            .name("fleet-view".into())
            .spawn(move || {
                let _ = tx.send(ask(&store, site.as_deref(), targets, from, now));
            });
        match spawned {
            Ok(_) => {
                self.running.insert(key.to_string(), rx);
                self.started.insert(key.to_string(), now);
            }
            Err(e) => tracing::error!(key, error = %e, "cannot start the fleet view lookup"),
        }
    }

    /// Whether `key`'s lookup is under way and has not answered yet (never waits).
    pub fn waiting(&mut self, key: &str) -> bool {
        let Some(rx) = self.running.get(key) else {
            return false;
        };
        let evidence = match rx.try_recv() {
            Ok(evidence) => evidence,
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => FleetEvidence {
                at: Timestamp(SystemTime::now()),
                targets: Vec::new(),
                view: None,
                verdict: None,
                unavailable: Some("the lookup thread ended without an answer".into()),
                incidents: Vec::new(),
            },
        };
        self.running.remove(key);
        self.done.insert(key.to_string(), evidence);
        false
    }

    /// `key`'s lookup, if it finished (never waits).
    pub fn poll(&mut self, key: &str) -> Option<FleetEvidence> {
        if self.waiting(key) {
            return None;
        }
        self.done.remove(key)
    }

    /// Whether `key`'s view is due to be asked again.
    pub fn due(&self, key: &str, now: SystemTime) -> bool {
        !self.running.contains_key(key)
            && !self.done.contains_key(key)
            && self
                .started
                .get(key)
                .is_none_or(|at| now.duration_since(*at).unwrap_or_default() >= REFRESH)
    }

    /// The incident is closed: forget it (a lookup still running finishes on its own).
    pub fn forget(&mut self, key: &str) {
        self.running.remove(key);
        self.done.remove(key);
        self.started.remove(key);
    }
}

/// One fleet view and its verdict, within the store's budget.
fn ask(
    store: &FleetStore,
    site: Option<&str>,
    targets: Vec<String>,
    from: SystemTime,
    now: SystemTime,
) -> FleetEvidence {
    let earliest = now.checked_sub(MAX_WINDOW).unwrap_or(now);
    let request = FleetRequest {
        targets: targets.clone(),
        from: from.max(earliest).min(now),
        until: now,
    };
    // The fleet's incidents of this outage: one per target, or this site's (it is cut off).
    // The evaluator asks none: it is the fleet.
    let fleet_keys: Vec<String> = match site {
        Some(site) => targets
            .iter()
            .map(|t| format!("target/{t}"))
            .chain(std::iter::once(format!("site/{site}")))
            .collect(),
        None => Vec::new(),
    };
    match store.query_with_incidents_blocking(&request, &fleet_keys) {
        Ok((view, incidents)) => {
            let verdict = verdict(&view, site, &targets, unix_ms(now));
            FleetEvidence {
                at: Timestamp(now),
                targets,
                view: Some(view),
                verdict: Some(verdict),
                unavailable: None,
                incidents,
            }
        }
        Err(error) => {
            tracing::warn!(%error, "fleet view unavailable");
            FleetEvidence {
                at: Timestamp(now),
                targets,
                view: None,
                verdict: None,
                unavailable: Some(error.to_string()),
                incidents: Vec::new(),
            }
        }
    }
}
