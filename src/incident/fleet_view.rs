//! [`FleetLookup`]: "seen from other sites" for the drafts — the fleet view ([`crate::fleet`]) of an
//! incident's affected targets, asked of the shared store on a thread of its own, so the rules
//! thread never waits on the store.
//!
//! When an incident opens its lookup starts together with the path traces; the draft waits for it
//! at most the store's time budget (`[fleet] timeout`, the query gives up by then). While the
//! incident is open the view is asked again every [`REFRESH`], and each update and status update
//! carries the latest one. A view that was unavailable and then arrives is a timeline entry (and
//! an `updated` event), so the draft gets it once the store is back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError, channel};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::Timestamp;
use crate::config::Config;
use crate::fleet::query::unix_ms;
use crate::fleet::verdict::{Verdict, verdict};
use crate::fleet::{FleetRequest, FleetStore, FleetView};

/// The window of a fleet view: the last two minutes before it is asked (mostly the breach, which
/// opens after its rule's window filled and `for` passed).
pub const WINDOW: Duration = Duration::from_secs(120);
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
    site: String,
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
            site: config.agent.site.clone(),
            running: HashMap::new(),
            done: HashMap::new(),
            started: HashMap::new(),
        }))
    }

    /// Ask for `key`'s targets now, unless a lookup for it is still running.
    pub fn start(&mut self, key: &str, targets: Vec<String>, now: SystemTime) {
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
                let _ = tx.send(ask(&store, &site, targets, now));
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
fn ask(store: &FleetStore, site: &str, targets: Vec<String>, now: SystemTime) -> FleetEvidence {
    let request = FleetRequest {
        targets: targets.clone(),
        from: now.checked_sub(WINDOW).unwrap_or(now),
        until: now,
    };
    match store.query_blocking(&request) {
        Ok(view) => {
            let verdict = verdict(&view, site, &targets, unix_ms(now));
            FleetEvidence {
                at: Timestamp(now),
                targets,
                view: Some(view),
                verdict: Some(verdict),
                unavailable: None,
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
            }
        }
    }
}
