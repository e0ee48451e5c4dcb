//! The fleet evaluator: fleet-scope rules over the shared store, by the agent's own rules engine.
//!
//! `vantage fleet --config fleet.toml` is one process beside the agents, not a role an agent
//! takes: the site that is down is exactly the one whose agent cannot be trusted to say so, an
//! agent must not change behaviour with its neighbours' health, and one process needs no leader
//! election (no cluster, no gossip: the store is the shared plane).
//!
//! ## How the rules engine is reused
//! Each read of the store (every `interval`, covering the last `window`) gives one figure per
//! (source site, target): loss % and median RTT. The evaluator compiles its fleet rules into an
//! ordinary agent [`Config`] and feeds those figures to an ordinary [`Engine`] as synthetic ping
//! rounds, so hysteresis, `for`/`clear_for`/`min_hold`, dedup keys, drafts, the outbox and every
//! incident sink are the agents' own:
//! - every site is one engine probe and every target one engine target (labelled `target`, and
//!   for a mesh target `site`, the site it stands for), so a member is one (site, target) pair;
//! - a read's loss becomes a round of [`FLEET_ECHOES`] echoes, that many percent of them lost,
//!   the rest at the read's median: a loss rule's window is exactly one read;
//! - `scope = "target"` is a group rule by the `target` label (at least `sites_pct`% of the
//!   sites); `scope = "site"` a group rule by the `site` label over the other sites' mesh
//!   targets (at least `min_sites` of them);
//! - the drafts are the agents' drafts, with the agents' "seen from other sites" section (every
//!   site's figures for the target and the verdict, [`crate::incident::fleet_view`]): the engine
//!   config carries the evaluator's `[fleet]`.
//!
//! A site that joins or leaves a firing incident (the engine counts targets, and a fleet incident
//! has one) becomes an `Updated` transition ([`Engine::update`]): "site sjc1 now sees it", with
//! the draft's sites, title and fleet view refreshed by the agents' update path.
//!
//! ## Witnesses
//! A (site, target) pair that has no figure in a read (the site is silent), and every pair of a
//! site whose site rule is pending or firing (the site is down: it sees everything fail), is
//! forgotten ([`Engine::forget`]): `Unknown`, neither bad nor good. So one site that is down
//! opens one "site scl3 unreachable" incident, not one per target.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use probes::{FailureKind, Measurement, Observation, Outcome, PingStats};

use crate::config::evaluator::{EvaluatorConfig, FLEET_ECHOES, FleetScope};
use crate::config::{
    AgentConfig, Config, FamilyPreference, ProbeConfig, ProbeKind, RuleConfig, RuleScope, Target,
};
use crate::incident::fleet_view::FleetLookup;
use crate::incident::outputs::OutputsSink;
use crate::incident::pipeline::{self, DELIVERY_POLL, TICK};
use crate::incident::{IncidentDb, IncidentSink, Manager, NoDiagnostics};
use crate::record::Record;
use crate::rules::{Engine, Mono, Scope, Transition};
use crate::sinks::{SinkOptions, Sinks};

pub use crate::fleet::{SITE_LABEL, TARGET_LABEL};

/// One figure of one read: what `site` measured to `target` over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub site: String,
    pub target: String,
    /// Loss over the window (None: no ping round in it).
    pub loss_pct: Option<f64>,
    pub median_ms: Option<f64>,
}

#[derive(Debug)]
pub struct Evaluator {
    config: EvaluatorConfig,
    /// The fleet rules as an agent config: what the engine and the incident manager read.
    engine_config: Config,
    engine: Engine,
    /// Per site: the dedup keys of the site-rule alerts about it.
    site_keys: BTreeMap<String, Vec<String>>,
    /// Every (site, target) pair the rules watch, mesh pairs first.
    pairs: Vec<(String, String, bool)>,
    /// Per firing alert: the sites that saw it as last reported (opened or updated).
    seen_by: BTreeMap<String, Vec<String>>,
    /// Per mesh target: its site (the first that lists it), read for every record.
    site_of_target: HashMap<String, String>,
}

impl Evaluator {
    pub fn new(config: &EvaluatorConfig) -> Evaluator {
        let engine_config = engine_config(config);
        let engine = Engine::new(&engine_config);
        let mut site_keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for rule in &config.rules {
            if matches!(rule.scope, FleetScope::Site { .. }) {
                for site in &config.sites {
                    site_keys
                        .entry(site.name.clone())
                        .or_default()
                        .push(crate::rules::dedup_key(
                            &rule.name,
                            &Scope::Group {
                                label: SITE_LABEL.into(),
                                value: site.name.clone(),
                            },
                        ));
                }
            }
        }
        let mut pairs: Vec<(String, String, bool)> = Vec::new();
        for probe in &engine_config.probes {
            for target in &probe.targets {
                let target = engine_config.target(target).expect("a probe's target");
                let mesh = target.labels.contains_key(SITE_LABEL);
                pairs.push((
                    probe.name.clone(),
                    target.labels[TARGET_LABEL].clone(),
                    mesh,
                ));
            }
        }
        pairs.sort_by_key(|(_, _, mesh)| !mesh);
        let mut site_of_target = HashMap::new();
        for site in &config.sites {
            for target in &site.targets {
                site_of_target
                    .entry(target.clone())
                    .or_insert_with(|| site.name.clone());
            }
        }
        Evaluator {
            config: config.clone(),
            engine_config,
            engine,
            site_keys,
            pairs,
            seen_by: BTreeMap::new(),
            site_of_target,
        }
    }

    /// The agent config the engine and the incident manager run on.
    pub fn engine_config(&self) -> &Config {
        &self.engine_config
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Sites whose site rule is pending or firing: they are no witnesses.
    pub fn down_sites(&self) -> Vec<String> {
        let active = self.engine.active();
        self.site_keys
            .iter()
            .filter(|(_, keys)| keys.iter().any(|k| active.contains(&k.as_str())))
            .map(|(site, _)| site.clone())
            .collect()
    }

    /// Feed one read of the store (the window ending at `wall`) and let time pass to `now`;
    /// returns the transitions, in order.
    pub fn read(&mut self, now: Mono, wall: SystemTime, readings: &[Reading]) -> Vec<Transition> {
        let mut transitions = Vec::new();
        // Each pair's reading, the first with a ping round: one lookup per pair (a search of
        // every reading per pair was pairs × readings per read).
        let mut by_pair: HashMap<(&str, &str), &Reading> = HashMap::with_capacity(readings.len());
        for reading in readings.iter().filter(|r| r.loss_pct.is_some()) {
            by_pair
                .entry((reading.site.as_str(), reading.target.as_str()))
                .or_insert(reading);
        }
        // Mesh pairs first: they decide which sites are down before the targets are counted.
        let mut down: Vec<String> = Vec::new();
        let mut decided = false;
        for (site, target, mesh) in &self.pairs {
            if !mesh && !decided {
                down = self.down_sites();
                decided = true;
            }
            match by_pair.get(&(site.as_str(), target.as_str())) {
                Some(reading) if !down.contains(site) => {
                    let record = self.record(site, target, wall, reading);
                    transitions.extend(self.engine.observe(now, &record));
                }
                _ => self.engine.forget(site, target),
            }
        }
        if !decided {
            down = self.down_sites();
        }
        // A site found down by this read: forget what it said about the other sites too.
        for (site, target, _) in &self.pairs {
            if down.contains(site) {
                self.engine.forget(site, target);
            }
        }
        transitions.extend(self.engine.tick(now));
        self.sites_changed(now, readings, &mut transitions);
        transitions
    }

    /// A site that joins or leaves a firing incident is a significant change for the fleet (the
    /// engine counts targets, and a fleet incident has one): an `Updated` transition, through
    /// the agents' update path, with the site in its reason.
    fn sites_changed(
        &mut self,
        now: Mono,
        readings: &[Reading],
        transitions: &mut Vec<Transition>,
    ) {
        use crate::rules::TransitionKind;
        for transition in transitions.iter() {
            match transition.kind {
                TransitionKind::Resolved => {
                    self.seen_by.remove(&transition.key);
                }
                _ => {
                    let sites = self.sites_of(&transition.rule, &transition.impact);
                    self.seen_by.insert(transition.key.clone(), sites.seeing);
                }
            }
        }
        let firing: Vec<String> = self.engine.firing().iter().map(|k| k.to_string()).collect();
        for key in firing {
            if transitions.iter().any(|t| t.key == key) {
                continue;
            }
            let (Some(impact), Some(rule)) = (
                self.engine.impact(&key),
                self.config
                    .rules
                    .iter()
                    .find(|r| key.starts_with(&format!("{}/", r.name))),
            ) else {
                continue;
            };
            let now_seeing = self.sites_of(&rule.name, &impact);
            let Some(before) = self.seen_by.get(&key) else {
                // Resumed after a restart: what it says now is the baseline.
                self.seen_by.insert(key, now_seeing.seeing);
                continue;
            };
            // Nobody sees it any more: it is clearing, and its resolution says so.
            if *before == now_seeing.seeing || now_seeing.seeing.is_empty() {
                continue;
            }
            // "site sjc1 now sees it; site iad1 stopped reporting" (the manager's timeline line
            // goes on with the impact: "… to aws-gw from 2 of 3 sites: scl3, sjc1").
            let mut what: Vec<String> = Vec::new();
            for site in now_seeing.seeing.iter().filter(|s| !before.contains(s)) {
                what.push(format!("site {site} now sees it"));
            }
            for site in before.iter().filter(|s| !now_seeing.seeing.contains(s)) {
                let reported = readings
                    .iter()
                    .any(|r| r.site == *site && r.loss_pct.is_some());
                what.push(if reported {
                    format!("site {site} no longer sees it")
                } else {
                    format!("site {site} stopped reporting")
                });
            }
            let reason = what.join("; ");
            self.seen_by.insert(key.clone(), now_seeing.seeing);
            transitions.extend(self.engine.update(&key, now, reason));
        }
    }

    fn sites_of(&self, rule: &str, impact: &crate::rules::Impact) -> crate::fleet::FleetSites {
        self.engine_config
            .rules
            .iter()
            .find(|r| r.name == rule)
            .map(|r| crate::fleet::FleetSites::of(r, impact))
            .unwrap_or_default()
    }

    fn record(&self, site: &str, target: &str, wall: SystemTime, reading: &Reading) -> Record {
        let lost =
            reading.loss_pct.unwrap_or(100.0).clamp(0.0, 100.0).round() as u32 * FLEET_ECHOES / 100;
        let rtt = reading.median_ms.unwrap_or(0.0);
        let rtts: Vec<Option<f64>> = (0..FLEET_ECHOES)
            .map(|i| (i >= lost).then_some(rtt))
            .collect();
        let outcome = if lost == FLEET_ECHOES {
            Outcome::failure(
                FailureKind::Timeout,
                format!(
                    "{site} lost every echo to {target} over the last {}",
                    crate::config::format_duration(self.config.window)
                ),
            )
        } else {
            Outcome::Success
        };
        Record {
            agent: self.config.name.clone(),
            site: site.to_string(),
            probe: site.to_string(),
            target: target.to_string(),
            target_site: self
                .site_of_target
                .get(target)
                .map_or_else(|| "unknown".to_string(), String::clone),
            address: None,
            observation: Observation {
                started_at: wall,
                duration: Duration::ZERO,
                outcome,
                measurement: Measurement::Ping(PingStats::from_rtts(rtts)),
            },
        }
    }
}

/// How long the outputs get to deliver what is spooled when the evaluator stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Run the evaluator until `stop`: every `interval`, `read` the window ending now from the store,
/// evaluate, and record and deliver the incidents (drafts in `data_dir/incidents`, every
/// `[[incident_sink]]`, and `incident` points in every `[[output]]`, where the agents' fleet
/// views find them). A read that fails feeds nothing and lets no time pass in the rules: an
/// unreadable store neither opens nor resolves anything.
pub fn run(
    config: &EvaluatorConfig,
    read: &mut dyn FnMut(SystemTime, SystemTime) -> anyhow::Result<Vec<Reading>>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    crate::config::data_dir::prepare(&config.data_dir)?;
    let data_dir = &config.data_dir;
    let mut evaluator = Evaluator::new(config);
    let engine_config = evaluator.engine_config().clone();
    let outputs = Sinks::start(
        data_dir,
        config.outputs.clone(),
        SinkOptions {
            // The evaluator is no site: no `agent` self-metrics point that would make it one
            // in the sites' fleet views.
            self_metrics_every: None,
            ..SinkOptions::new(config.name.clone(), config.name.clone())
        },
    )?;
    let extra: Vec<Box<dyn IncidentSink>> =
        vec![Box::new(OutputsSink::new(outputs.durable_writer()?))];
    // Every sink is registered before the first event can be queued (as the agent's pipeline).
    let db = IncidentDb::open(data_dir).context("cannot open the evaluator's incident state")?;
    for name in std::iter::once(crate::incident::directory::NAME)
        .chain(config.incident_sinks.iter().map(|s| s.name.as_str()))
        .chain(extra.iter().map(|s| s.name()))
    {
        db.register_sink(name)?;
    }
    let fleet_view = FleetLookup::new(&engine_config)?;
    let mut manager =
        Manager::new(db, None, &engine_config, Box::new(NoDiagnostics)).with_fleet(fleet_view);
    let origin = Instant::now();
    let resumed = manager.resume(evaluator.engine_mut(), origin.elapsed(), SystemTime::now())?;
    let deliverers = pipeline::deliverers(&engine_config, data_dir, extra)?;
    tracing::info!(
        rules = config.rules.len(),
        sites = config.sites.len(),
        resumed,
        "fleet evaluator started"
    );
    let stop_delivery = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for deliverer in deliverers {
            let stop_delivery = &stop_delivery;
            scope.spawn(move || {
                deliverer.run(DELIVERY_POLL, || stop_delivery.load(Ordering::Relaxed))
            });
        }
        let mut next_read = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next_read {
                next_read += config.interval;
                let until = SystemTime::now();
                match read(until - config.window, until) {
                    Ok(readings) => {
                        let transitions = evaluator.read(origin.elapsed(), until, &readings);
                        for transition in &transitions {
                            if let Err(error) = manager.apply(transition, SystemTime::now()) {
                                tracing::error!(key = %transition.key, error = %format!("{error:#}"), "cannot record a fleet incident transition");
                            }
                        }
                    }
                    Err(error) => tracing::warn!(
                        error = %format!("{error:#}"),
                        "cannot read the fleet store: no fleet rule advances until it answers"
                    ),
                }
            }
            if let Err(error) = manager.tick(origin.elapsed(), SystemTime::now()) {
                tracing::error!(error = %format!("{error:#}"), "cannot draft status updates");
            }
            let wait = next_read.saturating_duration_since(Instant::now());
            std::thread::sleep(wait.min(TICK).min(Duration::from_millis(200)));
        }
        manager.stop(SystemTime::now());
        stop_delivery.store(true, Ordering::Relaxed);
    });
    outputs.shutdown(SHUTDOWN_GRACE);
    Ok(())
}

/// The fleet rules as an agent config (see the module docs).
pub fn engine_config(config: &EvaluatorConfig) -> Config {
    let sites: Vec<&str> = config.sites.iter().map(|s| s.name.as_str()).collect();
    let mut targets: BTreeMap<String, Target> = BTreeMap::new();
    let mut probe_targets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |site: &str, target: &str, stands_for: Option<&str>| {
        let name = target.to_string();
        let mut labels = BTreeMap::from([(TARGET_LABEL.to_string(), target.to_string())]);
        if let Some(other) = stands_for {
            labels.insert(SITE_LABEL.to_string(), other.to_string());
        }
        targets.entry(name.clone()).or_insert_with(|| Target {
            name: name.clone(),
            // Never probed: the engine only reads the figures fed to it.
            host: target.to_string(),
            site: stands_for.unwrap_or("unknown").to_string(),
            family: FamilyPreference::Any,
            labels,
        });
        let list = probe_targets.entry(site.to_string()).or_default();
        if !list.contains(&name) {
            list.push(name.clone());
        }
        name
    };
    let mut rules = Vec::new();
    for rule in &config.rules {
        let (members, scope) = match rule.scope {
            FleetScope::Target { sites_pct } => {
                let mut members = Vec::new();
                for site in &sites {
                    for target in &rule.targets {
                        members.push(add(site, target, None));
                    }
                }
                let scope = RuleScope::Group {
                    label: TARGET_LABEL.into(),
                    share_pct: sites_pct,
                    hold_back_targets: false,
                };
                (members, scope)
            }
            FleetScope::Site { min_sites } => {
                let mut members = Vec::new();
                for down in &config.sites {
                    for site in sites.iter().filter(|s| **s != down.name) {
                        for target in &down.targets {
                            members.push(add(site, target, Some(&down.name)));
                        }
                    }
                }
                // `min_sites` of the other sites, as a share of each site's members (every
                // site has the same number of others; the 0.01 keeps float rounding from
                // asking for one member more).
                let others = sites.len().saturating_sub(1).max(1) as f64;
                let scope = RuleScope::Group {
                    label: SITE_LABEL.into(),
                    share_pct: (f64::from(min_sites) - 0.01) * 100.0 / others,
                    hold_back_targets: false,
                };
                (members, scope)
            }
        };
        let mut members = members;
        members.sort();
        members.dedup();
        rules.push(RuleConfig {
            name: rule.name.clone(),
            severity: rule.severity,
            probes: sites.iter().map(|s| s.to_string()).collect(),
            targets: members,
            scope,
            condition: rule.condition.clone(),
            open_for: rule.open_for,
            clear_for: rule.clear_for,
            min_hold: rule.min_hold,
        });
    }
    let probes = sites
        .iter()
        .map(|site| ProbeConfig {
            name: site.to_string(),
            interval: config.interval,
            timeout: config.interval,
            targets: probe_targets.remove(*site).unwrap_or_default(),
            kind: ProbeKind::Icmp {
                count: FLEET_ECHOES,
                spacing: Duration::ZERO,
            },
        })
        .collect();
    Config {
        source: config.source.clone(),
        agent: AgentConfig {
            name: config.name.clone(),
            site: config.name.clone(),
            data_dir: config.data_dir.clone(),
            retention: Duration::from_secs(86_400),
            retention_5m: Duration::from_secs(86_400),
            retention_1h: Duration::from_secs(86_400),
            // The evaluator serves no page or metrics of its own.
            listen: None,
        },
        targets: targets.into_values().collect(),
        probes,
        rules,
        incidents: config.incidents.clone(),
        outputs: config.outputs.clone(),
        incident_sinks: config.incident_sinks.clone(),
        // The fleet's drafts get the agents' "seen from other sites": every site's figures for
        // the incident's target and the verdict, from the same store.
        // Not as a site: the evaluator measures nothing itself.
        fleet: Some(crate::config::FleetConfig {
            is_a_site: false,
            ..config.store.clone()
        }),
    }
}

#[cfg(test)]
mod tests;
