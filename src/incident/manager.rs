//! The [`Manager`]: rule transitions in, incident state and outbox events out. It also drafts a
//! status update every `[incidents] status_updates` while an incident is open, and resumes the
//! incidents that were open when the agent stopped, and takes a new configuration at reload
//! ([`Manager::reconfigure`]): what the engine still watches stays open, the rest is resolved with
//! a timeline line saying why.
//!
//! Nothing the engine says is lost or reordered: an opening is recorded once its diagnostics
//! (the path traces at breach, run off this thread) are done, with the time it was detected; a
//! transition the database refuses (disk full) is kept and retried every tick, and its draft's
//! timeline says how late it was recorded and why; a later transition of the same key waits
//! behind either.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::db::IncidentDb;
use super::event::EventKind;
use super::evidence::{self, Evidence, Latest};
use super::fleet_view::{self, FleetEvidence, FleetLookup};
use super::render;
use super::{Incident, RuleSummary, Status, StatusUpdate, TimelineEntry, Timestamp};
use crate::config::{Condition, Config, LatencyThreshold, RuleConfig, RuleScope, format_duration};
use crate::record::Record;
use crate::rules::{Engine, Mono, Transition, TransitionKind};
use crate::store::Store;
use probes::Measurement;

/// The path traces at the moment of breach and their verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEvidence {
    /// The mtr-style report of each traced target (one line per hop), shown verbatim.
    pub report_text: String,
    /// Where loss begins: hop and address (per target when several were traced).
    pub verdict_text: String,
}

/// What one-shot diagnostics found at the moment of breach.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diagnosis {
    pub trace: Option<TraceEvidence>,
    /// Other findings (DNS, HTTP detail), one line each, added to the timeline.
    pub notes: Vec<String>,
}

/// One-shot diagnostics run when an incident opens (trace, DNS, HTTP detail); the agent's is
/// [`super::TraceDiagnostics`]. [`Diagnostics::start`] must return at once: the work runs off the
/// rules thread, and the manager polls for it.
pub trait Diagnostics: Send {
    /// `targets`: (probe, target) pairs affected at the moment of breach.
    fn start(&self, key: &str, targets: &[(String, String)]) -> Box<dyn PendingDiagnosis>;
    /// The agent is stopping: give up what has not begun.
    fn stop(&self) {}
}

/// Diagnostics under way for one incident.
pub trait PendingDiagnosis: Send {
    /// The diagnosis once it is complete (or its own deadline passed); with `force`, what is
    /// done so far, at once.
    fn poll(&mut self, force: bool) -> Option<Diagnosis>;
}

impl PendingDiagnosis for Diagnosis {
    fn poll(&mut self, _force: bool) -> Option<Diagnosis> {
        Some(std::mem::take(self))
    }
}

/// No diagnostics: drafts without a path trace (tests, and agents that must not trace).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDiagnostics;

impl Diagnostics for NoDiagnostics {
    fn start(&self, _key: &str, _targets: &[(String, String)]) -> Box<dyn PendingDiagnosis> {
        Box::new(Diagnosis::default())
    }
}

/// Transitions held while they cannot be recorded (waiting for diagnostics, or the database
/// refuses them); beyond this the oldest is dropped, and logged with its key. A mass outage at
/// 10,000 targets holds an opening and a resolution of each at once (10,000 had dropped 4,432
/// openings); each is under 1 KB.
pub const MAX_QUEUED: usize = 50_000;
/// How long one read of the other targets' latest rounds serves the drafts gathered after it.
const LATEST_REUSED_FOR: Duration = Duration::from_secs(1);
/// How long the manager records drafts, resolutions and status updates between two ticks (one a
/// second) before it lets the rules engine go on; the rest follow at the next tick, in order. A
/// mass outage's 10,000 transitions at once held the rules for minutes, and stored observations
/// were dropped.
const RECORD_BUDGET: Duration = Duration::from_millis(400);
/// How long a stop records what still waits (without waiting for diagnostics): the rest is
/// logged as lost, before the unit's `TimeoutStopSec` (60 s) kills the agent and nothing is said.
/// A mass outage at 10,000 targets left 5,329 resolutions to record at a stop: 32 s.
const STOP_BUDGET: Duration = Duration::from_secs(30);

/// Transitions not yet recorded, oldest first, with how many of each key wait (the manager asks
/// "does this key wait?" for every transition and every open incident each tick: a scan made a
/// mass outage of 10,000 incidents quadratic).
#[derive(Default)]
struct Waiting {
    items: VecDeque<Queued>,
    keys: HashMap<String, usize>,
}

impl Waiting {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn has_key(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    fn iter(&self) -> impl Iterator<Item = &Queued> {
        self.items.iter()
    }

    fn front(&self) -> Option<&Queued> {
        self.items.front()
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut Queued> {
        self.items.get_mut(index)
    }

    fn push_back(&mut self, item: Queued) {
        *self.keys.entry(item.transition.key.clone()).or_default() += 1;
        self.items.push_back(item);
    }

    fn insert(&mut self, index: usize, item: Queued) {
        *self.keys.entry(item.transition.key.clone()).or_default() += 1;
        self.items.insert(index, item);
    }

    fn pop_front(&mut self) -> Option<Queued> {
        let item = self.items.pop_front()?;
        self.forget(&item.transition.key);
        Some(item)
    }

    fn remove(&mut self, index: usize) -> Option<Queued> {
        let item = self.items.remove(index)?;
        self.forget(&item.transition.key);
        Some(item)
    }

    fn retain(&mut self, mut keep: impl FnMut(&Queued) -> bool) {
        let keys = &mut self.keys;
        self.items.retain(|item| {
            let kept = keep(item);
            if !kept {
                Self::forget_in(keys, &item.transition.key);
            }
            kept
        });
    }

    /// The database refuses writes: every waiting transition notes why (once).
    fn note_error(&mut self, error: &str) {
        for item in &mut self.items {
            item.error.get_or_insert_with(|| error.to_string());
        }
    }

    fn forget(&mut self, key: &str) {
        Self::forget_in(&mut self.keys, key);
    }

    fn forget_in(keys: &mut HashMap<String, usize>, key: &str) {
        if let Some(count) = keys.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                keys.remove(key);
            }
        }
    }
}

/// A transition not yet recorded: an opening waiting for its evidence, one the database refused
/// (it is retried every tick), or one behind either for the same key (kept in order).
struct Queued {
    transition: Transition,
    /// When the engine made it: the draft's times are this, however late it is recorded.
    at: SystemTime,
    /// An opening's diagnostics, until they are done.
    pending: Option<Box<dyn PendingDiagnosis>>,
    diagnosis: Option<Diagnosis>,
    /// An opening's fleet view was asked for (once its diagnostics were done).
    fleet_asked: bool,
    /// Why it could not be recorded, the first time.
    error: Option<String>,
}

/// Per open incident, in memory: when its last status update was drafted (monotonic).
#[derive(Debug)]
struct Open {
    id: String,
    /// When the next status update is due.
    next_update: Mono,
    /// How long it had been open before this run (resumed after a restart; zero otherwise). The
    /// engine's monotonic `open_for` starts again at a restart; this carries the time before it.
    carried: Duration,
    /// The targets affected, and where its fleet view's window starts.
    targets: Vec<String>,
    fleet_from: SystemTime,
}

/// Keeps incidents in step with the rules engine.
pub struct Manager {
    db: IncidentDb,
    store: Option<Store>,
    agent: String,
    site: String,
    status_updates: Duration,
    history: Duration,
    rules: Vec<RuleConfig>,
    diagnostics: Box<dyn Diagnostics>,
    /// "Seen from other sites", when `[fleet]` is configured.
    fleet: Option<FleetLookup>,
    /// This is the fleet evaluator (`[fleet]`, not as a site): its drafts say which sites see it.
    fleet_evaluator: bool,
    open: HashMap<String, Open>,
    /// See [`Queued`].
    queue: Waiting,
    /// The other targets' latest rounds, as read at this wall-clock time (see [`Latest`]).
    latest: Option<(SystemTime, Latest)>,
    /// Recording time spent since the last tick, and how much there is (see [`RECORD_BUDGET`]).
    spent: Duration,
    budget: Duration,
    stop_budget: Duration,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("db", &self.db.path())
            .field("open", &self.open)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// `store` is read for evidence; without one, drafts carry no history.
    pub fn new(
        db: IncidentDb,
        store: Option<Store>,
        config: &Config,
        diagnostics: Box<dyn Diagnostics>,
    ) -> Manager {
        Manager {
            db,
            store,
            agent: config.agent.name.clone(),
            site: config.agent.site.clone(),
            status_updates: config.incidents.status_updates,
            history: config.incidents.history,
            rules: config.rules.clone(),
            diagnostics,
            fleet: None,
            fleet_evaluator: config.fleet.as_ref().is_some_and(|f| !f.is_a_site),
            open: HashMap::new(),
            queue: Waiting::default(),
            latest: None,
            spent: Duration::ZERO,
            budget: RECORD_BUDGET,
            stop_budget: STOP_BUDGET,
        }
    }

    /// Ask the fleet's shared store what the other sites see, for every draft (see
    /// `fleet_view.rs`).
    pub fn with_fleet(mut self, fleet: Option<FleetLookup>) -> Manager {
        self.fleet = fleet;
        self
    }

    pub fn db(&self) -> &IncidentDb {
        &self.db
    }

    /// After a (re)start: every incident still open resumes in the engine as firing, so it is
    /// neither opened nor announced again. One whose rule or target left the config is resolved.
    /// Returns how many resumed.
    pub fn resume(
        &mut self,
        engine: &mut Engine,
        now: Mono,
        wall: SystemTime,
    ) -> anyhow::Result<usize> {
        let mut resumed = 0;
        for (id, _) in self.db.open_keys()? {
            let Some(mut incident) = self.db.get(&id)? else {
                continue;
            };
            let reported = (
                incident.impact.affected_targets().len(),
                incident.impact.value,
            );
            if engine.restore(&incident.key, now, reported) {
                self.open.insert(
                    incident.key.clone(),
                    Open {
                        id: incident.id.clone(),
                        // Due a period after the last update (or detection), however long the
                        // agent was down; at once if that has passed.
                        next_update: now
                            + self.status_updates.saturating_sub(
                                wall.duration_since(
                                    incident
                                        .status_updates
                                        .last()
                                        .map_or(incident.detected_at, |u| u.at)
                                        .0,
                                )
                                .unwrap_or(Duration::ZERO),
                            ),
                        // Wall clock across the restart: the only clock that spans it.
                        carried: wall
                            .duration_since(incident.detected_at.0)
                            .unwrap_or(Duration::ZERO),
                        targets: affected_targets(&incident),
                        fleet_from: incident.detected_at.0 - fleet_view::LEAD,
                    },
                );
                incident.timeline.push(TimelineEntry {
                    at: Timestamp(wall),
                    event: "restarted".into(),
                    text: if self.fleet_evaluator {
                        "The fleet evaluator restarted; the incident is still open and watched again."
                    } else {
                        "The agent restarted; the incident is still open and watched again."
                    }
                    .into(),
                });
                // Noted in the state only: the next event carries it to the sinks.
                self.db.save(&incident, None, None)?;
                resumed += 1;
                tracing::info!(id = %incident.id, key = %incident.key, "incident still open after restart; resumed");
            } else {
                let at = Timestamp(wall);
                incident.status = Status::Resolved;
                incident.updated_at = at;
                incident.resolved_at = Some(at);
                incident.timeline.push(TimelineEntry {
                    at,
                    event: "resolved".into(),
                    text: "Closed at agent start: its rule or target is no longer in the config."
                        .into(),
                });
                self.db.save(&incident, None, Some(EventKind::Resolved))?;
                tracing::info!(id = %incident.id, key = %incident.key, "incident's rule left the config; resolved");
            }
        }
        Ok(resumed)
    }

    /// Reload: hand `config` to the engine ([`Engine::reconfigure`]) and take its incident
    /// settings and rules (and `diagnostics`, built for its targets). An open incident whose alert
    /// no longer exists — its rule or its target was removed, or the changed rule no longer covers
    /// its scope — is resolved, its timeline saying which; a transition of such a key still waiting
    /// to be recorded is dropped (logged). Returns the resolved incidents' ids.
    pub fn reconfigure(
        &mut self,
        engine: &mut Engine,
        config: &Config,
        diagnostics: Box<dyn Diagnostics>,
        wall: SystemTime,
    ) -> anyhow::Result<Vec<String>> {
        engine.reconfigure(config);
        self.status_updates = config.incidents.status_updates;
        self.history = config.incidents.history;
        self.rules = config.rules.clone();
        self.diagnostics = diagnostics;
        // Sets, not a scan per incident: a mass outage at 10,000 targets holds 10,000 incidents.
        let alerts: HashSet<&str> = engine.alert_keys().collect();
        let targets: HashSet<&str> = config.targets.iter().map(|t| t.name.as_str()).collect();
        self.queue.retain(|queued| {
            let kept = alerts.contains(queued.transition.key.as_str());
            if !kept {
                tracing::warn!(key = %queued.transition.key, kind = queued.transition.kind.as_str(), "reload: dropping an unrecorded transition; its rule or target left the configuration");
            }
            kept
        });
        let mut resolved = Vec::new();
        // Only the drafts to resolve are read.
        for (id, key) in self.db.open_keys()? {
            if alerts.contains(key.as_str()) {
                continue;
            }
            let Some(mut incident) = self.db.get(&id)? else {
                continue;
            };
            let rule = &incident.rule.name;
            let why = match &incident.scope {
                _ if config.rules.iter().all(|r| r.name != *rule) => {
                    format!("rule `{rule}` removed from the configuration at reload")
                }
                crate::rules::Scope::Target { target } if !targets.contains(target.as_str()) => {
                    format!("target `{target}` removed from the configuration at reload")
                }
                scope => format!(
                    "rule `{rule}` changed at reload and no longer watches {} {}",
                    scope.kind(),
                    scope.value()
                ),
            };
            let at = Timestamp(wall);
            incident.status = Status::Resolved;
            incident.updated_at = at;
            incident.resolved_at = Some(at);
            incident.duration_s = wall
                .duration_since(incident.detected_at.0)
                .ok()
                .map(|d| d.as_secs());
            incident.timeline.push(TimelineEntry {
                at,
                event: "resolved".into(),
                text: format!("Resolved: {why}."),
            });
            self.db.save(&incident, None, Some(EventKind::Resolved))?;
            self.open.remove(&incident.key);
            tracing::info!(id = %incident.id, key = %incident.key, reason = %why, "incident resolved at reload");
            resolved.push(incident.id);
        }
        Ok(resolved)
    }

    /// Take one transition from the engine, made at `wall`: an opening starts its diagnostics
    /// and is recorded when they are done; anything else is recorded now — unless the database
    /// refuses it or an earlier transition of its key is still waiting: then it waits (in order)
    /// and is retried every [`Manager::tick`].
    pub fn apply(&mut self, transition: &Transition, wall: SystemTime) -> anyhow::Result<()> {
        let pending = (transition.kind == TransitionKind::Opened).then(|| {
            tracing::info!(key = %transition.key, "breach: gathering evidence for the draft");
            let members: Vec<(String, String)> = transition
                .impact
                .affected
                .iter()
                .map(|m| (m.probe.clone(), m.target.clone()))
                .collect();
            self.diagnostics.start(&transition.key, &members)
        });
        // Only this transition can have become recordable, and only if nothing of its key waits
        // before it and the database is not refusing writes (then the next tick tries, in order).
        let try_now = !self.queue.has_key(&transition.key)
            && self.queue.front().is_none_or(|q| q.error.is_none())
            && !self.budget_left().is_zero();
        self.queue.push_back(Queued {
            transition: transition.clone(),
            at: wall,
            pending,
            diagnosis: None,
            fleet_asked: false,
            error: None,
        });
        while self.queue.len() > MAX_QUEUED {
            if let Some(lost) = self.queue.pop_front() {
                tracing::error!(key = %lost.transition.key, kind = lost.transition.kind.as_str(), queued = MAX_QUEUED, "incident transition dropped: too many could not be recorded");
            }
        }
        if try_now {
            self.record_from(self.queue.len() - 1, wall, false);
        }
        Ok(())
    }

    /// Record what can be, in order per key. `force`: do not wait for diagnostics (stopping).
    fn record_queued(&mut self, wall: SystemTime, force: bool) {
        self.record_from(0, wall, force);
    }

    /// [`Manager::record_queued`] from `index` on (nothing before it shares a key with what it
    /// records). Unless forced, it stops after [`RECORD_BUDGET`] and the next tick goes on: a
    /// mass outage's thousands of drafts must not hold up the rules for a minute.
    fn record_from(&mut self, index: usize, wall: SystemTime, force: bool) {
        let started = std::time::Instant::now();
        let budget = if force {
            None
        } else {
            Some(self.budget_left())
        };
        self.record_within(index, wall, force, budget);
        self.spend(started.elapsed());
    }

    /// Recording time left until the next tick.
    fn budget_left(&self) -> Duration {
        self.budget.saturating_sub(self.spent)
    }

    #[cfg(test)]
    pub(super) fn set_record_budget(&mut self, budget: Duration) {
        self.budget = budget;
    }

    #[cfg(test)]
    pub(super) fn set_stop_budget(&mut self, budget: Duration) {
        self.stop_budget = budget;
    }

    fn spend(&mut self, took: Duration) {
        self.spent += took;
    }

    fn record_within(
        &mut self,
        mut index: usize,
        wall: SystemTime,
        force: bool,
        budget: Option<Duration>,
    ) {
        let started = std::time::Instant::now();
        let mut blocked: HashSet<String> = HashSet::new();
        let mut recorded = 0;
        while index < self.queue.len() {
            // At least one each pass: a tick always makes progress.
            if recorded > 0 && budget.is_some_and(|budget| started.elapsed() >= budget) {
                return;
            }
            let Some(item) = self.queue.get_mut(index) else {
                return;
            };
            if blocked.contains(&item.transition.key) {
                index += 1;
                continue;
            }
            if let Some(pending) = &mut item.pending {
                match pending.poll(force) {
                    Some(diagnosis) => {
                        item.diagnosis = Some(diagnosis);
                        item.pending = None;
                    }
                    None => {
                        blocked.insert(item.transition.key.clone());
                        index += 1;
                        continue;
                    }
                }
            }
            // Then its fleet view, asked now that the traces took their time — the other sites'
            // rounds of the breach have reached the store by then — and given up within the
            // store's budget. On the fleet evaluator an update asks again too: it carries every
            // site's figures and the verdict as of now (an agent's view is refreshed every
            // REFRESH, and each update carries the latest).
            let asks_fleet = match item.transition.kind {
                TransitionKind::Opened => true,
                TransitionKind::Updated => self.fleet_evaluator,
                TransitionKind::Resolved => false,
            };
            if let Some(fleet) = &mut self.fleet {
                if asks_fleet && !item.fleet_asked && !force {
                    item.fleet_asked = true;
                    let open = self.open.get(&item.transition.key);
                    let mut targets: Vec<String> =
                        open.map(|o| o.targets.clone()).unwrap_or_default();
                    let mut known: HashSet<String> = targets.iter().cloned().collect();
                    for m in &item.transition.impact.affected {
                        if known.insert(m.target.clone()) {
                            targets.push(m.target.clone());
                        }
                    }
                    let from = open.map_or_else(
                        || fleet_from(&self.rules, &item.transition, item.at),
                        |o| o.fleet_from,
                    );
                    fleet.start(&item.transition.key, targets, from, wall);
                }
            }
            let fleet_running = asks_fleet
                && self
                    .fleet
                    .as_mut()
                    .is_some_and(|f| f.waiting(&item.transition.key));
            if fleet_running && !force {
                blocked.insert(item.transition.key.clone());
                index += 1;
                continue;
            }
            let item = self.queue.remove(index).expect("index is in the queue");
            recorded += 1;
            if let Err(error) = self.record(&item, wall) {
                // "database or disk is full", without rusqlite's restatement of the code.
                let error = match error.downcast_ref::<rusqlite::Error>() {
                    Some(rusqlite::Error::SqliteFailure(_, Some(message))) => message.clone(),
                    _ => format!("{error:#}"),
                };
                if item.error.is_none() {
                    tracing::error!(key = %item.transition.key, kind = item.transition.kind.as_str(), %error, "cannot record incident transition; kept, and retried every second");
                }
                self.queue.insert(index, item);
                // The database is refusing writes: everything waiting now waits for it too, and
                // is tried again next tick, in order.
                self.queue.note_error(&error);
                return;
            }
        }
    }

    /// Which sites see the incident, on the fleet evaluator (None on an agent).
    fn fleet_sites(&self, transition: &Transition) -> Option<crate::fleet::FleetSites> {
        let rule = self.rules.iter().find(|r| r.name == transition.rule)?;
        self.fleet_evaluator
            .then(|| crate::fleet::FleetSites::of(rule, &transition.impact))
    }

    /// Transitions not recorded yet (waiting for diagnostics or for the database).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The agent is stopping: record what is waiting for diagnostics without it, within
    /// [`STOP_BUDGET`], and say what the database still refuses or there was no time for (it is
    /// lost).
    pub fn stop(&mut self, wall: SystemTime) {
        self.diagnostics.stop();
        let started = std::time::Instant::now();
        self.record_within(0, wall, true, Some(self.stop_budget));
        if self.queue.len() > 0 {
            tracing::error!(left = self.queue.len(), took = ?started.elapsed(), "stopping: incident transitions still waiting after the stop's budget are not recorded (each is logged below)");
        }
        for lost in self.queue.iter() {
            tracing::error!(key = %lost.transition.key, kind = lost.transition.kind.as_str(), error = lost.error.as_deref().unwrap_or_default(), "stopping with an incident transition that could not be recorded; the rules engine detects it again at the next start if the condition holds");
        }
    }

    /// Record one transition in the database (state and outbox event in one transaction).
    fn record(&mut self, item: &Queued, now: SystemTime) -> anyhow::Result<()> {
        let transition = &item.transition;
        // Recorded late because the database refused it: the draft says so.
        let late = item.error.as_ref().and_then(|error| {
            let delay = now.duration_since(item.at).ok()?;
            (delay >= Duration::from_secs(1)).then(|| TimelineEntry {
                at: Timestamp(now),
                event: "delayed".into(),
                text: format!(
                    "Recorded {} after detection: incident state could not be written: {error}.",
                    humantime::format_duration(Duration::from_secs(delay.as_secs()))
                ),
            })
        });
        let wall = item.at;
        match transition.kind {
            TransitionKind::Opened => {
                let diagnosis = item.diagnosis.clone().unwrap_or_default();
                self.opened(transition, wall, now, diagnosis, late)
            }
            TransitionKind::Updated | TransitionKind::Resolved => {
                let Some(mut incident) = self.db.open_by_key(&transition.key)? else {
                    tracing::warn!(key = %transition.key, kind = transition.kind.as_str(), "no open incident for this transition; ignored");
                    return Ok(());
                };
                let at = Timestamp(wall);
                incident.updated_at = at;
                // A resolved incident keeps the figures it last had while breaching.
                if !transition.impact.affected.is_empty() {
                    incident.impact = transition.impact.clone();
                }
                incident.peak = transition.peak;
                let event = if transition.kind == TransitionKind::Resolved {
                    let carried = self
                        .open
                        .get(&transition.key)
                        .map_or(Duration::ZERO, |open| open.carried);
                    let open_for = carried + transition.open_for;
                    incident.status = Status::Resolved;
                    incident.resolved_at = Some(at);
                    incident.duration_s = Some(open_for.as_secs());
                    incident.timeline.push(TimelineEntry {
                        at,
                        event: "resolved".into(),
                        text: render::resolution_text(&incident, open_for),
                    });
                    self.open.remove(&transition.key);
                    if let Some(fleet) = &mut self.fleet {
                        fleet.forget(&transition.key);
                    }
                    EventKind::Resolved
                } else {
                    incident.fleet_sites = self.fleet_sites(transition);
                    incident.title = render::title(&incident);
                    incident.timeline.push(TimelineEntry {
                        at,
                        event: "updated".into(),
                        text: format!(
                            "{}: {}.",
                            capitalize(&transition.reason),
                            render::incident_impact(&incident)
                        ),
                    });
                    // The fleet's: the view asked for this update (see `record_queued`), the
                    // per-site table and the verdict as of now.
                    if self.fleet_evaluator
                        && let Some(evidence) =
                            self.fleet.as_mut().and_then(|f| f.poll(&transition.key))
                        && (evidence.is_available()
                            || !incident
                                .fleet
                                .as_ref()
                                .is_some_and(FleetEvidence::is_available))
                    {
                        link_fleet_incidents(&mut incident, &evidence, at);
                        incident.fleet = Some(evidence);
                    }
                    EventKind::Updated
                };
                incident.timeline.extend(late);
                self.refresh_evidence(&mut incident, now);
                self.db.save(&incident, None, Some(event))?;
                tracing::info!(id = %incident.id, key = %transition.key, event = event.as_str(), title = %incident.title, "incident {}", event.as_str());
                Ok(())
            }
        }
    }

    fn opened(
        &mut self,
        transition: &Transition,
        wall: SystemTime,
        now: SystemTime,
        diagnosis: Diagnosis,
        late: Option<TimelineEntry>,
    ) -> anyhow::Result<()> {
        if let Some(existing) = self.db.open_by_key(&transition.key)? {
            // The engine restarted without being told (it always is, by `resume`): keep one.
            tracing::warn!(id = %existing.id, key = %transition.key, "already open; not opening twice");
            return Ok(());
        }
        let at = Timestamp(wall);
        let (id, seq) = self.db.next_id(&at.date())?;
        let rule = self.rules.iter().find(|r| r.name == transition.rule);
        let mut incident = Incident {
            id: id.clone(),
            key: transition.key.clone(),
            rule: RuleSummary {
                name: transition.rule.clone(),
                condition: rule
                    .map(|r| {
                        if self.fleet_evaluator {
                            describe_fleet_rule(r)
                        } else {
                            describe_rule(r)
                        }
                    })
                    .unwrap_or_default(),
            },
            severity: transition.severity.as_str().to_string(),
            scope: transition.scope.clone(),
            agent: self.agent.clone(),
            site: self.site.clone(),
            status: Status::Open,
            title: String::new(),
            detected_at: at,
            updated_at: at,
            resolved_at: None,
            duration_s: None,
            impact: transition.impact.clone(),
            peak: transition.peak,
            timeline: Vec::new(),
            status_updates: Vec::new(),
            trace: diagnosis.trace,
            evidence: Evidence::default(),
            status_update_every_s: self.status_updates.as_secs(),
            fleet: None,
            fleet_sites: None,
        };
        incident.fleet_sites = self.fleet_sites(transition);
        incident.title = render::title(&incident);
        if let Some(rule) = rule {
            let began = wall.checked_sub(rule.open_for).unwrap_or(wall);
            incident.timeline.push(TimelineEntry {
                at: Timestamp(began),
                event: "breach".into(),
                text: format!(
                    "Rule `{}` breached: {}.",
                    rule.name, incident.rule.condition
                ),
            });
        }
        incident.timeline.push(TimelineEntry {
            at,
            event: "opened".into(),
            text: if self.fleet_evaluator {
                format!(
                    "Draft opened by the fleet evaluator `{}`: {}.",
                    self.agent,
                    render::incident_impact(&incident)
                )
            } else {
                format!(
                    "Draft opened by agent {} ({}): {}.",
                    self.agent,
                    self.site,
                    render::incident_impact(&incident)
                )
            },
        });
        for note in diagnosis.notes {
            incident.timeline.push(TimelineEntry {
                at,
                event: "diagnostics".into(),
                text: note,
            });
        }
        if let Some(fleet) = &mut self.fleet {
            // Stopping before it answered: the draft says so rather than waiting.
            let evidence = fleet
                .poll(&transition.key)
                .unwrap_or_else(|| FleetEvidence {
                    at: Timestamp(now),
                    targets: affected_targets(&incident),
                    view: None,
                    verdict: None,
                    unavailable: Some("the agent stopped before the store answered".into()),
                    incidents: Vec::new(),
                });
            if let Some(reason) = &evidence.unavailable {
                incident.timeline.push(TimelineEntry {
                    at,
                    event: "fleet".into(),
                    text: format!(
                        "Fleet view unavailable: {reason}; asked again every {}s.",
                        fleet_view::REFRESH.as_secs()
                    ),
                });
            }
            incident.fleet = Some(evidence);
        }
        incident.timeline.extend(late);
        self.refresh_evidence(&mut incident, now);
        self.db
            .save(&incident, Some(seq), Some(EventKind::Opened))?;
        tracing::warn!(id = %id, key = %transition.key, severity = %incident.severity, title = %incident.title, "incident opened");
        self.open.insert(
            transition.key.clone(),
            Open {
                id,
                next_update: transition.at + self.status_updates,
                carried: Duration::ZERO,
                targets: affected_targets(&incident),
                fleet_from: fleet_from(&self.rules, transition, wall),
            },
        );
        Ok(())
    }

    /// Draft a status update for every incident open for another `status_updates` period.
    /// Also records the transitions that were waiting (see [`Manager::apply`]).
    pub fn tick(&mut self, now: Mono, wall: SystemTime) -> anyhow::Result<()> {
        self.spent = Duration::ZERO;
        self.record_queued(wall, false);
        self.refresh_fleet(wall)?;
        let due: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| now >= o.next_update)
            .map(|(key, _)| key.clone())
            .collect();
        // Within a budget: a mass outage's incidents fall due together. Those left stay due.
        let (started, budget) = (std::time::Instant::now(), self.budget_left());
        for (done, key) in due.into_iter().enumerate() {
            if done > 0 && started.elapsed() >= budget {
                break;
            }
            let Some(mut incident) = self.db.open_by_key(&key)? else {
                self.open.remove(&key);
                continue;
            };
            let at = Timestamp(wall);
            let number = incident.status_updates.len() as u32 + 1;
            let text = render::status_update_text(&incident, number, wall, self.status_updates);
            incident
                .status_updates
                .push(StatusUpdate { number, at, text });
            incident.timeline.push(TimelineEntry {
                at,
                event: "status-update".into(),
                text: format!("Status update {number} drafted."),
            });
            incident.updated_at = at;
            self.refresh_evidence(&mut incident, wall);
            self.db
                .save(&incident, None, Some(EventKind::StatusUpdate))?;
            if let Some(open) = self.open.get_mut(&key) {
                open.next_update = now + self.status_updates;
                tracing::info!(id = %open.id, number, "status update drafted");
            }
        }
        self.spend(started.elapsed());
        Ok(())
    }

    /// A trace that found a new path to a target of an open incident is a significant change:
    /// a timeline entry with the new path, and an `updated` event. Other records are ignored.
    pub fn path_changed(&mut self, record: &Record, wall: SystemTime) -> anyhow::Result<()> {
        let Measurement::Trace(report) = &record.observation.measurement else {
            return Ok(());
        };
        if !report.path_changed {
            return Ok(());
        }
        let keys: Vec<String> = self.open.keys().cloned().collect();
        for key in keys {
            let Some(mut incident) = self.db.open_by_key(&key)? else {
                continue;
            };
            let concerned = match &incident.scope {
                crate::rules::Scope::Target { target } => *target == record.target,
                _ => incident
                    .impact
                    .affected_targets()
                    .contains(&record.target.as_str()),
            };
            if !concerned {
                continue;
            }
            let path: Vec<String> = report
                .hops
                .iter()
                .map(|hop| match hop.addresses.as_slice() {
                    [] => "???".to_string(),
                    // Several: ECMP, or a trace that straddled the change.
                    several => several
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("/"),
                })
                .collect();
            let at = Timestamp(wall);
            incident.updated_at = at;
            incident.timeline.push(TimelineEntry {
                at,
                event: "updated".into(),
                text: format!(
                    "The path to {} changed (trace probe `{}`): {} hops{}, {}.",
                    record.target,
                    record.probe,
                    report.hops.len(),
                    if report.reached {
                        ""
                    } else {
                        ", destination not reached"
                    },
                    path.join(" → ")
                ),
            });
            self.refresh_evidence(&mut incident, wall);
            self.db.save(&incident, None, Some(EventKind::Updated))?;
            tracing::info!(id = %incident.id, target = %record.target, "incident updated: path changed");
        }
        Ok(())
    }

    /// Take the fleet views that arrived for open incidents, and ask again where one is due. A view
    /// arriving after the draft said "unavailable" is a timeline entry and an `updated` event; a
    /// fresh view replaces the previous one quietly (the next event carries it); an unavailable
    /// one does not replace a view the draft already has.
    fn refresh_fleet(&mut self, wall: SystemTime) -> anyhow::Result<()> {
        let Some(fleet) = &mut self.fleet else {
            return Ok(());
        };
        let mut arrived = Vec::new();
        for (key, open) in &self.open {
            // An opening still waiting in the queue takes its own view.
            if self.queue.has_key(key) {
                continue;
            }
            if let Some(evidence) = fleet.poll(key) {
                arrived.push((key.clone(), evidence));
            } else if fleet.due(key, wall) {
                fleet.start(key, open.targets.clone(), open.fleet_from, wall);
            }
        }
        for (key, evidence) in arrived {
            let Some(mut incident) = self.db.open_by_key(&key)? else {
                continue;
            };
            let had_view = incident
                .fleet
                .as_ref()
                .is_some_and(FleetEvidence::is_available);
            match (had_view, evidence.is_available()) {
                (_, true) => {
                    let linked = link_fleet_incidents(&mut incident, &evidence, Timestamp(wall));
                    let first = !had_view;
                    if first {
                        let verdict = evidence
                            .verdict
                            .as_ref()
                            .map(|v| format!("{}: {}", v.seen_from, v.sentence))
                            .unwrap_or_default();
                        incident.timeline.push(TimelineEntry {
                            at: Timestamp(wall),
                            event: "fleet".into(),
                            text: format!(
                                "Fleet view arrived (the store answers again): {verdict}"
                            ),
                        });
                        incident.updated_at = Timestamp(wall);
                    }
                    incident.fleet = Some(evidence);
                    if linked {
                        incident.updated_at = Timestamp(wall);
                    }
                    let event = (first || linked).then_some(EventKind::Updated);
                    self.db.save(&incident, None, event)?;
                    if first {
                        tracing::info!(id = %incident.id, key, "incident updated: fleet view arrived");
                    }
                    if linked {
                        tracing::info!(id = %incident.id, key, "incident updated: linked to the fleet's incident");
                    }
                }
                (false, false) => {
                    incident.fleet = Some(evidence);
                    self.db.save(&incident, None, None)?;
                }
                (true, false) => {}
            }
        }
        Ok(())
    }

    /// Re-read the evidence window (history before detection up to now) for every target the
    /// incident has affected so far.
    fn refresh_evidence(&mut self, incident: &mut Incident, wall: SystemTime) {
        let Some(store) = &self.store else {
            return;
        };
        let mut members: Vec<(String, String)> = incident
            .evidence
            .members()
            .map(|(probe, target)| (probe.to_string(), target.to_string()))
            .collect();
        let mut known: HashSet<(String, String)> = members.iter().cloned().collect();
        for m in &incident.impact.affected {
            let member = (m.probe.clone(), m.target.clone());
            if known.insert(member.clone()) {
                members.push(member);
            }
        }
        let fresh = self.latest.as_ref().is_some_and(|(at, _)| {
            wall.duration_since(*at)
                .is_ok_and(|age| age < LATEST_REUSED_FOR)
        });
        if !fresh {
            match Latest::read(store) {
                Ok(latest) => self.latest = Some((wall, latest)),
                Err(error) => {
                    tracing::warn!(id = %incident.id, error = %format!("{error:#}"), "cannot read the other targets' latest rounds from the store; keeping the previous evidence");
                    return;
                }
            }
        }
        let Some((_, latest)) = &self.latest else {
            return;
        };
        let (from, to) = evidence::window(incident.detected_at.0, self.history, wall);
        match evidence::gather(store, &members, from, to, latest) {
            Ok(evidence) => incident.evidence = evidence,
            Err(error) => {
                tracing::warn!(id = %incident.id, error = %format!("{error:#}"), "cannot read evidence from the store; keeping the previous");
            }
        }
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The rule in words: "loss above 20% over the last 100 echoes (clears at or below 10%), for 1m".
pub fn describe_rule(rule: &RuleConfig) -> String {
    let condition = match &rule.condition {
        Condition::Loss {
            above_pct,
            clear_below_pct,
            echoes,
        } => format!(
            "loss above {above_pct}% over the last {echoes} echoes (clears at or below {clear_below_pct}%)"
        ),
        Condition::Failures {
            failures,
            runs,
            clear_failures,
        } => format!(
            "at least {failures} of the last {runs} runs failed (clears at {clear_failures} or fewer)"
        ),
        Condition::Latency {
            field,
            runs,
            threshold,
        } => {
            let what = format!("{} (median of the last {runs} runs)", field.as_str());
            match threshold {
                LatencyThreshold::Absolute {
                    above_ms,
                    clear_below_ms,
                } => format!("{what} above {above_ms} ms (clears at or below {clear_below_ms} ms)"),
                LatencyThreshold::Baseline {
                    above_ratio,
                    clear_below_ratio,
                    window,
                } => format!(
                    "{what} above {above_ratio}× its median over the last {} (clears at or below {clear_below_ratio}×)",
                    format_duration(*window)
                ),
            }
        }
    };
    let scope = match &rule.scope {
        RuleScope::Target => String::new(),
        RuleScope::Group {
            label, share_pct, ..
        } => {
            format!(" on at least {share_pct}% of the targets of a `{label}` group")
        }
        RuleScope::Agent { share_pct } => {
            format!(" on at least {share_pct}% of this agent's targets")
        }
    };
    format!("{condition}{scope}, for {}", format_duration(rule.open_for))
}

/// A fleet rule in words, by site: "loss above 50% over one read of the store (clears at or below
/// 5%) from at least 30% of the 3 sites, for 6s". Its compiled form (members, echoes) is the
/// evaluator's business, not the reader's.
pub fn describe_fleet_rule(rule: &RuleConfig) -> String {
    let condition = match &rule.condition {
        Condition::Loss {
            above_pct,
            clear_below_pct,
            ..
        } => format!(
            "loss above {above_pct}% over one read of the store (clears at or below {clear_below_pct}%)"
        ),
        Condition::Latency {
            threshold:
                LatencyThreshold::Absolute {
                    above_ms,
                    clear_below_ms,
                },
            ..
        } => format!(
            "median RTT above {above_ms} ms over one read of the store (clears at or below {clear_below_ms} ms)"
        ),
        _ => return describe_rule(rule),
    };
    let sites = rule.probes.len();
    let seen = match &rule.scope {
        RuleScope::Group {
            label, share_pct, ..
        } if label == crate::fleet::SITE_LABEL => {
            let others = sites.saturating_sub(1);
            let at_least = (share_pct * others as f64 / 100.0).ceil();
            format!(
                "to a site's mesh targets, from at least {at_least} of the {others} other sites"
            )
        }
        RuleScope::Group { share_pct, .. } => {
            format!("from at least {share_pct}% of the {sites} sites")
        }
        _ => return describe_rule(rule),
    };
    format!("{condition} {seen}, for {}", format_duration(rule.open_for))
}

/// A timeline line for each of the fleet's incidents in `evidence` that the draft did not link
/// to yet; whether there was one.
fn link_fleet_incidents(incident: &mut Incident, evidence: &FleetEvidence, at: Timestamp) -> bool {
    let known: Vec<&crate::fleet::FleetIncident> =
        incident.fleet.iter().flat_map(|f| &f.incidents).collect();
    let mut linked = false;
    for fleet_incident in &evidence.incidents {
        let same = |k: &&crate::fleet::FleetIncident| {
            (&k.fleet_key, &k.rule, k.opened_ms)
                == (
                    &fleet_incident.fleet_key,
                    &fleet_incident.rule,
                    fleet_incident.opened_ms,
                )
        };
        if known.iter().any(same) {
            continue;
        }
        incident.timeline.push(TimelineEntry {
            at,
            event: "fleet".into(),
            text: format!(
                "Linked to the fleet's incident of this outage: {}.",
                render::fleet_incident_line(fleet_incident)
            ),
        });
        linked = true;
    }
    linked
}

/// The incident's affected targets, by name, once each.
fn affected_targets(incident: &Incident) -> Vec<String> {
    let mut targets: Vec<String> = Vec::new();
    for target in incident.impact.affected_targets() {
        if !targets.iter().any(|t| t == target) {
            targets.push(target.to_string());
        }
    }
    targets
}

/// Where an incident's fleet view starts: [`fleet_view::LEAD`] before its breach began.
fn fleet_from(rules: &[RuleConfig], transition: &Transition, wall: SystemTime) -> SystemTime {
    let open_for = rules
        .iter()
        .find(|r| r.name == transition.rule)
        .map_or(Duration::ZERO, |r| r.open_for);
    wall.checked_sub(open_for + fleet_view::LEAD)
        .unwrap_or(wall)
}
