//! `Rule`s: from observations to incident transitions. A pure, deterministic state machine — no
//! I/O, no clock of its own. The caller passes a **monotonic** time ([`Mono`]) with every call, so
//! a wall-clock step (NTP, a VM resumed, an operator's `date -s`) can neither open nor clear
//! anything; wall time appears only in the observations, for display.
//!
//! ## Model
//! - A rule watches **members**: (probe, target) pairs. Each member has a window (the last N
//!   echoes pooled across rounds, the last N runs, or the last N latency values plus a trailing
//!   baseline) and a latched state: `Unknown` until its window says otherwise, `Bad` once the open
//!   condition holds, `Good` once the clear condition holds. Values between the two thresholds
//!   keep the state (hysteresis).
//! - Members form **alerts**, one per scope instance: a target (any of its members bad), a group
//!   (targets sharing a label value; at least `share_pct`% of members bad), or the agent (at least
//!   `share_pct`% of every member bad). An alert is `Idle`, `Pending` (condition holds, waiting for
//!   `for`) or `Firing` (an incident is open). It resolves when its clear condition — fewer than the
//!   required share bad even if every `Unknown` member were bad — has held for `clear_for` and it
//!   has been open at least `min_hold`.
//! - While an agent-scope alert is pending or firing, target and group alerts of rules that share a
//!   probe with it are **held back**: they stay pending instead of opening one incident per target.
//!   Give the agent rule a shorter `for` than the target rules (by at least one probe interval), so
//!   that when our own uplink fails the agent rule wins the race.
//! - A group rule with `hold_back_targets = true` does the same for its members: while its alert
//!   is pending or firing, target alerts on the same probe and target stay pending (one incident
//!   for `group=cloud`, not one more per cloud target), and open if they still breach once it
//!   has resolved.
//!
//! ## Thresholds: which side is inclusive
//! - `loss`: breaches when loss is **strictly above** `above_pct` (exactly 20% with `above_pct = 20`
//!   does not open); clears **at or below** `clear_below_pct`.
//! - `failures`: breaches when **at least** `failures` of the last `runs` runs failed (3 of 5 is 3);
//!   clears when **at most** `clear_failures` failed.
//! - `latency`: breaches when the value is **strictly above** the threshold; clears **at or
//!   below** the clear threshold.
//! - Group and agent shares: breach when the share of bad members is **at least** `share_pct`
//!   ("≥ 50% of the targets failing").
//!
//! ## Transitions
//! [`TransitionKind::Opened`] when an alert starts firing; [`TransitionKind::Updated`] only on a
//! significant change (more targets affected than last reported, or the impact value at least
//! doubled; checked, with the peak, on each [`Engine::tick`]); [`TransitionKind::Resolved`] with
//! the duration and the peak impact. Every transition
//! carries the alert's stable dedup key, `rule/scope/value`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use probes::Measurement;
use probes::stats::median;
use serde::{Deserialize, Serialize};

use crate::config::{
    Condition, Config, LatencyField, LatencyThreshold, ProbeKind, RuleConfig, RuleScope, Severity,
};
use crate::record::Record;

/// Monotonic time since an arbitrary origin (the agent uses the time since it started).
pub type Mono = Duration;

/// A latency baseline needs at least this many samples before a ratio means anything.
pub const MIN_BASELINE_SAMPLES: usize = 5;

/// Who an incident is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    Target { target: String },
    Group { label: String, value: String },
    Agent,
}

impl Scope {
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Target { .. } => "target",
            Scope::Group { .. } => "group",
            Scope::Agent => "agent",
        }
    }

    /// The last part of the dedup key: `sjc1-core`, `group=cloud`, `agent`.
    pub fn value(&self) -> String {
        match self {
            Scope::Target { target } => target.clone(),
            Scope::Group { label, value } => format!("{label}={value}"),
            Scope::Agent => "agent".to_string(),
        }
    }
}

impl Scope {
    /// The key one outage is known by across the agents and the fleet evaluator, without the
    /// agent: `target/aws-gw` (a target, or the fleet's `target=` group), `site/scl3` (an
    /// agent-scope incident of that site, or the fleet's `site=` group), `group/label=value`.
    /// Alertmanager groups by it, so that a fleet outage pages once.
    pub fn fleet_key(&self, site: &str) -> String {
        match self {
            Scope::Target { target } => format!("target/{target}"),
            Scope::Group { label, value } if label == "target" => format!("target/{value}"),
            Scope::Group { label, value } if label == "site" => format!("site/{value}"),
            Scope::Group { label, value } => format!("group/{label}={value}"),
            Scope::Agent => format!("site/{site}"),
        }
    }
}

/// The stable identity of an alert: `rule/scope/value`, e.g. `packet-loss/group/group=cloud`.
pub fn dedup_key(rule: &str, scope: &Scope) -> String {
    format!("{rule}/{}/{}", scope.kind(), scope.value())
}

/// What a rule measures, for wording and units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Percent of echoes lost.
    LossPct,
    /// Percent of runs that failed.
    FailedRunsPct,
    /// Milliseconds of the named latency field.
    LatencyMs(#[serde(with = "field_name")] LatencyField),
}

mod field_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::config::LatencyField;

    pub fn serialize<S: Serializer>(field: &LatencyField, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(field.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LatencyField, D::Error> {
        let text = String::deserialize(d)?;
        LatencyField::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown latency field {text:?}")))
    }
}

/// One target's part in an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetImpact {
    pub probe: String,
    pub target: String,
    /// The rule's metric for this member right now (loss %, failed runs %, latency ms).
    pub value: Option<f64>,
    /// For baseline latency rules: the baseline the value is compared with.
    pub baseline: Option<f64>,
    /// The latest failure message, if the latest run failed.
    pub failure: Option<String>,
}

/// How bad an alert is at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Impact {
    pub metric: Metric,
    /// Members in the bad state, sorted by target.
    pub affected: Vec<TargetImpact>,
    /// Distinct targets in the scope.
    pub total_targets: usize,
    /// Mean of the metric over the affected members.
    pub value: Option<f64>,
    /// Worst value among the affected members.
    pub worst: Option<f64>,
}

impl Impact {
    /// Distinct affected targets.
    pub fn affected_targets(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.affected.iter().map(|m| m.target.as_str()).collect();
        names.dedup();
        names
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    Opened,
    Updated,
    Resolved,
}

impl TransitionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Opened => "opened",
            TransitionKind::Updated => "updated",
            TransitionKind::Resolved => "resolved",
        }
    }
}

/// An alert changed in a way an incident must know about.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub kind: TransitionKind,
    pub key: String,
    pub rule: String,
    pub severity: Severity,
    pub scope: Scope,
    /// When it happened (monotonic).
    pub at: Mono,
    /// How long the alert has been firing (zero when opened; the duration when resolved).
    pub open_for: Duration,
    pub impact: Impact,
    /// The worst the alert has been since it opened (by value, and by affected targets).
    pub peak: Peak,
    /// Why, in words: "scope grew from 1 to 3 of 4 targets", "loss doubled: 20.0% → 45.0%".
    pub reason: String,
}

/// The worst an incident got.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Peak {
    pub value: Option<f64>,
    pub affected_targets: usize,
}

// ---- members -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unknown,
    Good,
    Bad,
}

/// A bounded window of booleans, one bit each: the last `capacity` pushed (at least one), and how
/// many of them are `true`. A window of 100 echoes takes 16 bytes (a `VecDeque<bool>` took 128).
#[derive(Debug)]
struct Bits {
    /// Grown as the window fills (up to `capacity` bits), never after; bit `i` of the ring is bit
    /// `i % 64` of word `i / 64`.
    words: Box<[u64]>,
    capacity: u32,
    /// The oldest bit's position in the ring.
    head: u32,
    len: u32,
    ones: u32,
}

impl Bits {
    fn new(capacity: u32) -> Bits {
        Bits {
            words: Box::default(),
            capacity: capacity.max(1),
            head: 0,
            len: 0,
            ones: 0,
        }
    }

    /// Push one; returns what fell out (the oldest, once the window is full).
    fn push(&mut self, bit: bool) -> Option<bool> {
        let (slot, evicted) = if self.len == self.capacity {
            let slot = self.head;
            self.head = (self.head + 1) % self.capacity;
            (
                slot,
                Some(self.words[slot as usize / 64] >> (slot % 64) & 1 == 1),
            )
        } else {
            // Filling: the ring has not wrapped yet (`head` is 0), so growing keeps every bit.
            let slot = (self.head + self.len) % self.capacity;
            if slot as usize / 64 >= self.words.len() {
                let needed = self.capacity.div_ceil(64) as usize;
                let mut words = std::mem::take(&mut self.words).into_vec();
                words.resize((words.len() * 2).clamp(1, needed), 0);
                self.words = words.into_boxed_slice();
            }
            self.len += 1;
            (slot, None)
        };
        let mask = 1u64 << (slot % 64);
        let word = &mut self.words[slot as usize / 64];
        if bit {
            *word |= mask;
        } else {
            *word &= !mask;
        }
        self.ones = self.ones + u32::from(bit) - u32::from(evicted == Some(true));
        evicted
    }

    fn clear(&mut self) {
        (self.head, self.len, self.ones) = (0, 0, 0);
    }

    fn len(&self) -> usize {
        self.len as usize
    }

    fn ones(&self) -> usize {
        self.ones as usize
    }
}

#[derive(Debug)]
enum Window {
    /// `true` = lost.
    Echoes { lost: Bits },
    /// `true` = failed.
    Runs { failed: Bits },
    /// Boxed: the other windows are a few words, and most members have one of them.
    Latency(Box<LatencyWindow>),
}

#[derive(Debug, Default)]
struct LatencyWindow {
    recent: VecDeque<f64>,
    baseline: VecDeque<(Mono, f64)>,
}

#[derive(Debug)]
struct Member {
    /// Shared with the other members and the routes (one allocation per name).
    probe: Arc<str>,
    target: Arc<str>,
    /// Echoes a round sends; a round that failed before sending counts as this many lost.
    echoes_per_round: u32,
    state: State,
    alert: Option<u32>,
    window: Window,
    value: Option<f64>,
    baseline: Option<f64>,
    failure: Option<Box<str>>,
}

#[derive(Debug, Clone)]
enum Phase {
    Idle,
    Pending {
        since: Mono,
    },
    Firing {
        opened: Mono,
        clear_since: Option<Mono>,
        /// Affected targets and value as last reported (opened or updated).
        reported: (usize, Option<f64>),
        peak: Peak,
    },
}

#[derive(Debug)]
struct Alert {
    key: Box<str>,
    scope: Scope,
    /// Its members: `CompiledRule::alert_members[first..first + len]`.
    first: u32,
    len: u32,
    targets: u32,
    bad: u32,
    unknown: u32,
    phase: Phase,
}

#[derive(Debug)]
struct CompiledRule {
    /// The rule as configured, without its list of targets (the members are what it reads).
    config: RuleConfig,
    members: Vec<Member>,
    alerts: Vec<Alert>,
    /// The member indices of every alert, alert after alert, in member order.
    alert_members: Box<[u32]>,
}

impl CompiledRule {
    fn members_of(&self, alert: &Alert) -> &[u32] {
        &self.alert_members[alert.first as usize..][..alert.len as usize]
    }

    fn is_group(&self) -> bool {
        matches!(self.config.scope, RuleScope::Group { .. })
    }
}

/// Where the (rule, member) pairs reading one (probe, target) are: `Engine::pairs[first..][..len]`.
#[derive(Debug, Clone, Copy)]
struct Route {
    first: u32,
    len: u32,
}

/// The rules engine of one agent.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<CompiledRule>,
    /// probe → target → the (rule, member) pairs that read its observations.
    routes: HashMap<Arc<str>, HashMap<Arc<str>, Route>>,
    pairs: Box<[Pair]>,
}

/// (rule, member) indices.
type Pair = (u32, u32);

impl Engine {
    /// Compile the config's rules (an agent without rules gets an engine that never fires).
    pub fn new(config: &Config) -> Engine {
        let mut rules = Vec::with_capacity(config.rules.len());
        // probe → target → (rule, member) pairs, compacted into `routes` and `pairs` at the end.
        let mut routing: HashMap<Arc<str>, HashMap<Arc<str>, Vec<Pair>>> = HashMap::new();
        // One allocation per probe or target name, shared by every member and route using it.
        let mut names: HashMap<&str, Arc<str>> = HashMap::new();
        let targets: HashMap<&str, _> = config
            .targets
            .iter()
            .rev()
            .map(|t| (t.name.as_str(), t))
            .collect();
        for (rule_index, rule) in config.rules.iter().enumerate() {
            let mut members = Vec::new();
            let mut alerts: Vec<Alert> = Vec::new();
            let mut alert_of: HashMap<Scope, usize> = HashMap::new();
            let wanted: HashSet<&str> = rule.targets.iter().map(String::as_str).collect();
            for probe_name in &rule.probes {
                let Some(probe) = config.probe(probe_name) else {
                    continue;
                };
                // Only loss windows count echoes; other kinds are read by `failures` rules.
                let echoes_per_round = match probe.kind {
                    ProbeKind::Icmp { count, .. } => count,
                    _ => 1,
                };
                let probe_arc = intern(&mut names, &probe.name);
                for target_name in probe.targets.iter().filter(|t| wanted.contains(t.as_str())) {
                    let Some(&target) = targets.get(target_name.as_str()) else {
                        continue;
                    };
                    let scope = match &rule.scope {
                        RuleScope::Target => Some(Scope::Target {
                            target: target.name.clone(),
                        }),
                        RuleScope::Group { label, .. } => {
                            target.labels.get(label).map(|value| Scope::Group {
                                label: label.clone(),
                                value: value.clone(),
                            })
                        }
                        RuleScope::Agent { .. } => Some(Scope::Agent),
                    };
                    let member_index = members.len() as u32;
                    let alert = scope.map(|scope| {
                        *alert_of.entry(scope.clone()).or_insert_with(|| {
                            alerts.push(Alert {
                                key: dedup_key(&rule.name, &scope).into_boxed_str(),
                                scope,
                                first: 0,
                                len: 0,
                                targets: 0,
                                bad: 0,
                                unknown: 0,
                                phase: Phase::Idle,
                            });
                            alerts.len() - 1
                        })
                    });
                    if let Some(alert) = alert {
                        let alert = &mut alerts[alert];
                        alert.len += 1;
                        alert.unknown += 1;
                    }
                    let target_arc = intern(&mut names, &target.name);
                    routing
                        .entry(probe_arc.clone())
                        .or_default()
                        .entry(target_arc.clone())
                        .or_default()
                        .push((rule_index as u32, member_index));
                    members.push(Member {
                        probe: probe_arc.clone(),
                        target: target_arc,
                        echoes_per_round,
                        state: State::Unknown,
                        alert: alert.map(|a| a as u32),
                        window: match &rule.condition {
                            Condition::Loss { echoes, .. } => Window::Echoes {
                                lost: Bits::new(*echoes),
                            },
                            Condition::Failures { runs, .. } => Window::Runs {
                                failed: Bits::new(*runs),
                            },
                            Condition::Latency { .. } => Window::Latency(Box::default()),
                        },
                        value: None,
                        baseline: None,
                        failure: None,
                    });
                }
            }
            members.shrink_to_fit();
            alerts.shrink_to_fit();
            // Each alert's members, in member order, as one slice per alert.
            let mut next = 0;
            for alert in &mut alerts {
                alert.first = next;
                next += alert.len;
                alert.len = 0;
            }
            let mut alert_members = vec![0; next as usize].into_boxed_slice();
            for (index, member) in members.iter().enumerate() {
                if let Some(alert) = member.alert {
                    let alert = &mut alerts[alert as usize];
                    alert_members[(alert.first + alert.len) as usize] = index as u32;
                    alert.len += 1;
                }
            }
            for alert in &mut alerts {
                let mut names: Vec<&str> = alert_members[alert.first as usize..]
                    [..alert.len as usize]
                    .iter()
                    .map(|&m| &*members[m as usize].target)
                    .collect();
                names.sort_unstable();
                names.dedup();
                alert.targets = names.len() as u32;
            }
            rules.push(CompiledRule {
                config: RuleConfig {
                    targets: Vec::new(),
                    ..rule.clone()
                },
                members,
                alerts,
                alert_members,
            });
        }
        let mut pairs = Vec::new();
        let routes = routing
            .into_iter()
            .map(|(probe, targets)| {
                let targets = targets
                    .into_iter()
                    .map(|(target, list)| {
                        let route = Route {
                            first: pairs.len() as u32,
                            len: list.len() as u32,
                        };
                        pairs.extend(list);
                        (target, route)
                    })
                    .collect();
                (probe, targets)
            })
            .collect();
        Engine {
            rules,
            routes,
            pairs: pairs.into_boxed_slice(),
        }
    }

    /// The (rule, member) pairs that read a (probe, target)'s observations.
    fn route(&self, probe: &str, target: &str) -> Route {
        self.routes
            .get(probe)
            .and_then(|targets| targets.get(target))
            .copied()
            .unwrap_or(Route { first: 0, len: 0 })
    }

    /// Feed one stored observation; returns the transitions it caused (in rule order).
    pub fn observe(&mut self, now: Mono, record: &Record) -> Vec<Transition> {
        let route = self.route(&record.probe, &record.target);
        let mut touched: Vec<(usize, usize)> = Vec::new();
        for pair in route.first..route.first + route.len {
            let (rule_index, member_index) = self.pairs[pair as usize];
            let rule = &mut self.rules[rule_index as usize];
            let member = &mut rule.members[member_index as usize];
            let before = member.state;
            update_member(member, &rule.config.condition, now, record);
            let after = member.state;
            if let Some(alert_index) = member.alert {
                let alert = &mut rule.alerts[alert_index as usize];
                count(alert, before, -1);
                count(alert, after, 1);
                touched.push((rule_index as usize, alert_index as usize));
            }
        }
        let mut transitions = Vec::new();
        // Agent-scope alerts first, then group alerts: they decide what is held back.
        self.evaluate_agent_alerts(now, false, &mut transitions);
        let held = self.held_probes();
        touched.sort_by_key(|&(rule_index, _)| !self.rules[rule_index].is_group());
        for (rule_index, alert_index) in touched {
            if !matches!(self.rules[rule_index].config.scope, RuleScope::Agent { .. }) {
                self.evaluate(rule_index, alert_index, now, &held, false, &mut transitions);
            }
        }
        transitions
    }

    /// Let time pass: opens alerts whose `for` elapsed, resolves those whose clear condition
    /// held long enough, and reports significant changes of firing alerts (updates and peaks are
    /// sampled here, not per observation, so that a mass outage costs one pass a second). Call it
    /// about once a second.
    pub fn tick(&mut self, now: Mono) -> Vec<Transition> {
        let mut transitions = Vec::new();
        self.evaluate_agent_alerts(now, true, &mut transitions);
        let held = self.held_probes();
        // Group rules before target rules: a group alert may hold back its members' alerts.
        for groups in [true, false] {
            for rule_index in 0..self.rules.len() {
                let rule = &self.rules[rule_index];
                if matches!(rule.config.scope, RuleScope::Agent { .. }) || rule.is_group() != groups
                {
                    continue;
                }
                for alert_index in 0..rule.alerts.len() {
                    self.evaluate(rule_index, alert_index, now, &held, true, &mut transitions);
                }
            }
        }
        transitions
    }

    /// An incident that was open when the agent last stopped: its alert resumes as firing (so it
    /// is neither opened again nor lost), and resolves through the clear conditions as usual.
    /// `reported` is what the incident last said (affected targets, value), so that the first
    /// observations after a restart do not count as a significant change. Returns false if no
    /// alert has that key (the rule or target was removed from the config).
    pub fn restore(&mut self, key: &str, now: Mono, reported: (usize, Option<f64>)) -> bool {
        for rule in &mut self.rules {
            if let Some(alert) = rule.alerts.iter_mut().find(|a| &*a.key == key) {
                alert.phase = Phase::Firing {
                    opened: now,
                    clear_since: None,
                    reported,
                    peak: Peak {
                        value: reported.1,
                        affected_targets: reported.0,
                    },
                };
                return true;
            }
        }
        false
    }

    /// Forget what a member has seen lately: its window empties and its state is `Unknown` again,
    /// as if it had never reported. The fleet evaluator calls it for a source that cannot be a
    /// witness (a site that is down, or silent for the whole read); alerts re-evaluate on the
    /// next [`Engine::tick`]. A latency rule's baseline history stays (it ages out by time at the
    /// next value): a source that comes back is judged against what it measured before, not
    /// against its first few rounds after the gap.
    pub fn forget(&mut self, probe: &str, target: &str) {
        let route = self.route(probe, target);
        for pair in route.first..route.first + route.len {
            let (rule_index, member_index) = self.pairs[pair as usize];
            let rule = &mut self.rules[rule_index as usize];
            let member = &mut rule.members[member_index as usize];
            let before = member.state;
            member.state = State::Unknown;
            member.value = None;
            member.baseline = None;
            member.failure = None;
            match &mut member.window {
                Window::Echoes { lost: bits } | Window::Runs { failed: bits } => bits.clear(),
                Window::Latency(latency) => latency.recent.clear(),
            }
            if let Some(alert_index) = member.alert {
                let alert = &mut rule.alerts[alert_index as usize];
                count(alert, before, -1);
                count(alert, State::Unknown, 1);
            }
        }
    }

    /// The keys of the alerts that are pending or firing.
    pub fn active(&self) -> Vec<&str> {
        self.rules
            .iter()
            .flat_map(|r| &r.alerts)
            .filter(|a| !matches!(a.phase, Phase::Idle))
            .map(|a| &*a.key)
            .collect()
    }

    /// The keys of the alerts that are firing.
    pub fn firing(&self) -> Vec<&str> {
        self.rules
            .iter()
            .flat_map(|r| &r.alerts)
            .filter(|a| matches!(a.phase, Phase::Firing { .. }))
            .map(|a| &*a.key)
            .collect()
    }

    /// A significant change the caller sees and the engine cannot (the fleet evaluator: a site
    /// joined or left): an `Updated` transition of a firing alert, with `reason`, through the
    /// same path as the engine's own updates. None unless `key` is firing.
    pub fn update(&mut self, key: &str, now: Mono, reason: String) -> Option<Transition> {
        let rule = self
            .rules
            .iter_mut()
            .find(|r| r.alerts.iter().any(|a| &*a.key == key))?;
        let index = rule.alerts.iter().position(|a| &*a.key == key)?;
        let current = impact(rule, &rule.alerts[index]);
        let alert = &mut rule.alerts[index];
        let Phase::Firing {
            opened,
            reported,
            peak,
            ..
        } = &mut alert.phase
        else {
            return None;
        };
        *reported = (current.affected_targets().len(), current.value);
        peak.value = max_option(peak.value, current.value);
        peak.affected_targets = peak.affected_targets.max(reported.0);
        Some(Transition {
            kind: TransitionKind::Updated,
            key: alert.key.to_string(),
            rule: rule.config.name.clone(),
            severity: rule.config.severity,
            scope: alert.scope.clone(),
            at: now,
            open_for: now.saturating_sub(*opened),
            impact: current,
            peak: *peak,
            reason,
        })
    }

    /// The current impact of an alert, for evidence (None for an unknown key).
    pub fn impact(&self, key: &str) -> Option<Impact> {
        self.rules.iter().find_map(|rule| {
            rule.alerts
                .iter()
                .find(|a| &*a.key == key)
                .map(|alert| impact(rule, alert))
        })
    }

    /// Whether an alert has this dedup key (its rule and target are in the configuration).
    pub fn has_alert(&self, key: &str) -> bool {
        self.alert_keys().any(|k| k == key)
    }

    /// Every alert's dedup key (to look many up: collect them into a set once).
    pub fn alert_keys(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|r| r.alerts.iter().map(|a| &*a.key))
    }

    /// Take a new configuration (reload) without forgetting what was seen: a rule whose settings
    /// are unchanged (its lists of probes and targets aside) keeps each (probe, target) member's window and state, and every alert its
    /// phase, so a firing alert is neither opened again nor lost. A changed rule (same name)
    /// starts its windows afresh under its new condition, but its firing alerts stay firing (the
    /// open incident continues and resolves through the new clear condition). Alerts that no
    /// longer exist (rule or target removed) are gone: see [`Engine::has_alert`].
    pub fn reconfigure(&mut self, config: &Config) {
        let mut next = Engine::new(config);
        let mut previous: HashMap<String, CompiledRule> = self
            .rules
            .drain(..)
            .map(|rule| (rule.config.name.clone(), rule))
            .collect();
        for rule in &mut next.rules {
            let Some(old) = previous.remove(&rule.config.name) else {
                continue;
            };
            // Which targets and probes a rule reads is per member (kept by key below); a target
            // added to the config changes every rule's resolved list, not the rule.
            let settings = |rule: &RuleConfig| RuleConfig {
                probes: Vec::new(),
                targets: Vec::new(),
                ..rule.clone()
            };
            let unchanged = settings(&old.config) == settings(&rule.config);
            if unchanged {
                let mut members: HashMap<(Arc<str>, Arc<str>), Member> = old
                    .members
                    .into_iter()
                    .map(|m| ((m.probe.clone(), m.target.clone()), m))
                    .collect();
                for member in &mut rule.members {
                    let key = (member.probe.clone(), member.target.clone());
                    // A probe sending another echo count per round makes the old window wrong.
                    if let Some(old) = members.remove(&key)
                        && old.echoes_per_round == member.echoes_per_round
                    {
                        member.window = old.window;
                        member.state = old.state;
                        member.value = old.value;
                        member.baseline = old.baseline;
                        member.failure = old.failure;
                    }
                }
                for alert in &mut rule.alerts {
                    let states: Vec<State> = rule.alert_members[alert.first as usize..]
                        [..alert.len as usize]
                        .iter()
                        .map(|&m| rule.members[m as usize].state)
                        .collect();
                    (alert.bad, alert.unknown) = (0, 0);
                    for state in states {
                        count(alert, state, 1);
                    }
                }
            }
            // By key, not a scan per alert: a rule over 10,000 targets has 10,000 alerts.
            let old_alerts: HashMap<&str, &Alert> =
                old.alerts.iter().map(|a| (a.key.as_ref(), a)).collect();
            for alert in &mut rule.alerts {
                if let Some(old) = old_alerts.get(&*alert.key) {
                    // A pending alert of a changed rule waits again, under its new condition.
                    if unchanged || matches!(old.phase, Phase::Firing { .. }) {
                        alert.phase = old.phase.clone();
                    }
                }
            }
        }
        *self = next;
    }

    fn evaluate_agent_alerts(&mut self, now: Mono, full: bool, transitions: &mut Vec<Transition>) {
        for rule_index in 0..self.rules.len() {
            if matches!(self.rules[rule_index].config.scope, RuleScope::Agent { .. }) {
                for alert_index in 0..self.rules[rule_index].alerts.len() {
                    self.evaluate(rule_index, alert_index, now, &[], full, transitions);
                }
            }
        }
    }

    /// Probes of agent-scope rules whose alert is pending or firing.
    fn held_probes(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| matches!(r.config.scope, RuleScope::Agent { .. }))
            .filter(|r| r.alerts.iter().any(|a| !matches!(a.phase, Phase::Idle)))
            .flat_map(|r| r.config.probes.iter().cloned())
            .collect()
    }

    /// Whether a pending or firing alert of a group rule with `hold_back_targets` covers one of
    /// this target alert's members (the same probe and target): the group's incident speaks for
    /// the target. Through the routes: a look at the rules watching that target, not a pass over
    /// the groups.
    fn held_by_group(&self, rule: &CompiledRule, alert: &Alert) -> bool {
        rule.members_of(alert).iter().any(|&m| {
            let member = &rule.members[m as usize];
            let route = self.route(&member.probe, &member.target);
            (route.first..route.first + route.len).any(|pair| {
                let (other, member_index) = self.pairs[pair as usize];
                let other = &self.rules[other as usize];
                matches!(
                    other.config.scope,
                    RuleScope::Group {
                        hold_back_targets: true,
                        ..
                    }
                ) && other.members[member_index as usize]
                    .alert
                    .is_some_and(|a| !matches!(other.alerts[a as usize].phase, Phase::Idle))
            })
        })
    }

    fn evaluate(
        &mut self,
        rule_index: usize,
        alert_index: usize,
        now: Mono,
        held: &[String],
        // Also look for significant changes and new peaks (costs a pass over the members).
        full: bool,
        transitions: &mut Vec<Transition>,
    ) {
        let rule = &self.rules[rule_index];
        let config = &rule.config;
        let alert = &rule.alerts[alert_index];
        let members = alert.len as usize;
        let share = match config.scope {
            RuleScope::Target => None,
            RuleScope::Group { share_pct, .. } | RuleScope::Agent { share_pct } => Some(share_pct),
        };
        let enough = |bad: usize| match share {
            None => bad >= 1,
            Some(share_pct) => members > 0 && bad as f64 * 100.0 >= share_pct * members as f64,
        };
        let breaching = enough(alert.bad as usize);
        let clear = !enough(alert.bad as usize + alert.unknown as usize);
        // Only asked of a breaching alert that is not firing yet.
        let is_held = || {
            held.iter().any(|p| config.probes.contains(p))
                || (matches!(config.scope, RuleScope::Target) && self.held_by_group(rule, alert))
        };

        let mut emit: Option<(TransitionKind, Duration, Peak, String)> = None;
        let next = match alert.phase.clone() {
            Phase::Idle | Phase::Pending { .. } if !breaching => Phase::Idle,
            Phase::Idle => self.try_open(rule_index, alert_index, now, now, is_held(), &mut emit),
            Phase::Pending { since } => {
                self.try_open(rule_index, alert_index, since, now, is_held(), &mut emit)
            }
            Phase::Firing {
                opened,
                clear_since,
                reported,
                peak,
            } => {
                // The peak counts while the condition holds, not while the last members clear.
                let current = (full && breaching).then(|| impact(rule, alert));
                let peak = match &current {
                    Some(current) => Peak {
                        value: max_option(peak.value, current.value),
                        affected_targets: peak
                            .affected_targets
                            .max(current.affected_targets().len()),
                    },
                    None => peak,
                };
                if clear {
                    let clear_since = clear_since.unwrap_or(now);
                    let open_for = now.saturating_sub(opened);
                    if now.saturating_sub(clear_since) >= config.clear_for
                        && open_for >= config.min_hold
                    {
                        emit = Some((
                            TransitionKind::Resolved,
                            open_for,
                            peak,
                            format!(
                                "clear for {}",
                                crate::config::format_duration(now.saturating_sub(clear_since))
                            ),
                        ));
                        Phase::Idle
                    } else {
                        Phase::Firing {
                            opened,
                            clear_since: Some(clear_since),
                            reported,
                            peak,
                        }
                    }
                } else {
                    let mut reported = reported;
                    if let Some(current) = &current
                        && let Some(reason) = significant_change(reported, current)
                    {
                        emit = Some((
                            TransitionKind::Updated,
                            now.saturating_sub(opened),
                            peak,
                            reason,
                        ));
                        reported = (current.affected_targets().len(), current.value);
                    }
                    Phase::Firing {
                        opened,
                        clear_since: None,
                        reported,
                        peak,
                    }
                }
            }
        };
        let rule = &mut self.rules[rule_index];
        rule.alerts[alert_index].phase = next;
        if let Some((kind, open_for, peak, reason)) = emit {
            let alert = &rule.alerts[alert_index];
            transitions.push(Transition {
                kind,
                key: alert.key.to_string(),
                rule: rule.config.name.clone(),
                severity: rule.config.severity,
                scope: alert.scope.clone(),
                at: now,
                open_for,
                impact: impact(rule, alert),
                peak,
                reason,
            });
        }
    }

    /// A breaching alert that has been pending since `since`: fire if `for` elapsed and nothing
    /// holds it back.
    fn try_open(
        &self,
        rule_index: usize,
        alert_index: usize,
        since: Mono,
        now: Mono,
        held: bool,
        emit: &mut Option<(TransitionKind, Duration, Peak, String)>,
    ) -> Phase {
        let rule = &self.rules[rule_index];
        if now.saturating_sub(since) < rule.config.open_for || held {
            return Phase::Pending { since };
        }
        let current = impact(rule, &rule.alerts[alert_index]);
        let affected = current.affected_targets().len();
        let peak = Peak {
            value: current.value,
            affected_targets: affected,
        };
        *emit = Some((
            TransitionKind::Opened,
            Duration::ZERO,
            peak,
            format!(
                "breaching for {}",
                crate::config::format_duration(now.saturating_sub(since))
            ),
        ));
        Phase::Firing {
            opened: now,
            clear_since: None,
            reported: (affected, current.value),
            peak,
        }
    }
}

fn max_option(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// More targets than last reported, or the value at least doubled.
fn significant_change(reported: (usize, Option<f64>), current: &Impact) -> Option<String> {
    let affected = current.affected_targets().len();
    let (was_affected, was_value) = reported;
    if affected > was_affected {
        return Some(format!(
            "scope grew from {was_affected} to {affected} of {} targets",
            current.total_targets
        ));
    }
    match (was_value, current.value) {
        (Some(was), Some(now)) if was > 0.0 && now >= 2.0 * was => {
            let (what, unit) = match current.metric {
                Metric::LossPct => ("loss", "%"),
                Metric::FailedRunsPct => ("failed runs", "%"),
                Metric::LatencyMs(_) => ("latency", " ms"),
            };
            Some(format!("{what} doubled: {was:.1}{unit} → {now:.1}{unit}"))
        }
        _ => None,
    }
}

fn count(alert: &mut Alert, state: State, delta: i32) {
    let slot = match state {
        State::Bad => &mut alert.bad,
        State::Unknown => &mut alert.unknown,
        State::Good => return,
    };
    *slot = slot.saturating_add_signed(delta);
}

fn impact(rule: &CompiledRule, alert: &Alert) -> Impact {
    let mut affected: Vec<TargetImpact> = rule
        .members_of(alert)
        .iter()
        .map(|&m| &rule.members[m as usize])
        .filter(|m| m.state == State::Bad)
        .map(|m| TargetImpact {
            probe: m.probe.to_string(),
            target: m.target.to_string(),
            value: m.value,
            baseline: m.baseline,
            failure: m.failure.as_deref().map(String::from),
        })
        .collect();
    affected.sort_by(|a, b| (&a.target, &a.probe).cmp(&(&b.target, &b.probe)));
    let values: Vec<f64> = affected.iter().filter_map(|m| m.value).collect();
    let value = (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
    let worst = values.iter().copied().reduce(f64::max);
    Impact {
        metric: metric(&rule.config.condition),
        affected,
        total_targets: alert.targets as usize,
        value,
        worst,
    }
}

fn metric(condition: &Condition) -> Metric {
    match condition {
        Condition::Loss { .. } => Metric::LossPct,
        Condition::Failures { .. } => Metric::FailedRunsPct,
        Condition::Latency { field, .. } => Metric::LatencyMs(*field),
    }
}

/// The shared copy of a name (one allocation per distinct probe or target name).
fn intern<'a>(names: &mut HashMap<&'a str, Arc<str>>, name: &'a str) -> Arc<str> {
    names.entry(name).or_insert_with(|| name.into()).clone()
}

/// Push into a bounded window; returns what fell out.
fn push_bounded<T>(window: &mut VecDeque<T>, item: T, capacity: usize) -> Option<T> {
    window.push_back(item);
    if window.len() > capacity.max(1) {
        window.pop_front()
    } else {
        None
    }
}

/// Fold one observation into a member's window and re-derive its state.
fn update_member(member: &mut Member, condition: &Condition, now: Mono, record: &Record) {
    let observation = &record.observation;
    member.failure = match &observation.outcome {
        probes::Outcome::Success => None,
        probes::Outcome::Failure { message, .. } => Some(message.as_str().into()),
    };
    let stats = match &observation.measurement {
        Measurement::Ping(stats) => Some(stats),
        _ => None,
    };
    // The new state when the open (`Some(true)`) or clear (`Some(false)`) condition holds.
    let verdict: Option<bool> = match (condition, &mut member.window) {
        (
            Condition::Loss {
                above_pct,
                clear_below_pct,
                echoes,
            },
            Window::Echoes { lost },
        ) => {
            match stats {
                Some(stats) if !stats.rtts_ms.is_empty() => {
                    for rtt in &stats.rtts_ms {
                        lost.push(rtt.is_none());
                    }
                }
                // A round that could not even send (name did not resolve, no route): every
                // echo it should have sent is lost.
                _ if !observation.is_success() => {
                    for _ in 0..member.echoes_per_round.max(1) {
                        lost.push(true);
                    }
                }
                _ => {}
            }
            let total = lost.len() as f64;
            let lost = lost.ones() as f64;
            member.value = (total > 0.0).then(|| 100.0 * lost / total);
            // Compared without dividing, so "exactly at the threshold" is exact. Opening takes as
            // many lost echoes as a full window would: the first echoes after a start are not a
            // window (one lost echo of one is not 100% loss).
            if total == 0.0 {
                None
            } else if 100.0 * lost > above_pct * total.max(f64::from(*echoes)) {
                Some(true)
            } else if 100.0 * lost <= clear_below_pct * total {
                Some(false)
            } else {
                None
            }
        }
        (
            Condition::Failures {
                failures,
                clear_failures,
                ..
            },
            Window::Runs { failed },
        ) => {
            failed.push(!observation.is_success());
            let failed_count = failed.ones();
            member.value = Some(100.0 * failed_count as f64 / failed.len() as f64);
            if failed_count >= *failures as usize {
                Some(true)
            } else if failed_count <= *clear_failures as usize {
                Some(false)
            } else {
                None
            }
        }
        (
            Condition::Latency {
                field,
                runs,
                threshold,
            },
            Window::Latency(latency),
        ) => {
            let LatencyWindow { recent, baseline } = &mut **latency;
            let value = stats.and_then(|s| field.of(s));
            if let Some(value) = value {
                let evicted = push_bounded(recent, value, *runs as usize);
                // While the member is bad the baseline is frozen: neither fed with the bad
                // values nor aged out, so a long incident does not become its own baseline.
                if member.state != State::Bad {
                    if let Some(evicted) = evicted {
                        baseline.push_back((now, evicted));
                    }
                    if let LatencyThreshold::Baseline { window, .. } = threshold {
                        while baseline
                            .front()
                            .is_some_and(|(at, _)| now.saturating_sub(*at) > *window)
                        {
                            baseline.pop_front();
                        }
                    }
                }
            }
            if recent.len() < *runs as usize {
                None
            } else {
                let current = median(recent.iter().copied());
                member.value = current;
                match (threshold, current) {
                    (
                        LatencyThreshold::Absolute {
                            above_ms,
                            clear_below_ms,
                        },
                        Some(current),
                    ) => {
                        if current > *above_ms {
                            Some(true)
                        } else if current <= *clear_below_ms {
                            Some(false)
                        } else {
                            None
                        }
                    }
                    (
                        LatencyThreshold::Baseline {
                            above_ratio,
                            clear_below_ratio,
                            ..
                        },
                        Some(current),
                    ) if baseline.len() >= MIN_BASELINE_SAMPLES => {
                        let base = median(baseline.iter().map(|(_, v)| *v)).unwrap_or(0.0);
                        member.baseline = Some(base);
                        if current > above_ratio * base {
                            Some(true)
                        } else if current <= clear_below_ratio * base {
                            Some(false)
                        } else {
                            None
                        }
                    }
                    _ => None,
                }
            }
        }
        // The window always matches the condition it was built for.
        _ => None,
    };
    member.state = match verdict {
        Some(true) => State::Bad,
        Some(false) => State::Good,
        None => member.state,
    };
}

#[cfg(test)]
mod tests;
