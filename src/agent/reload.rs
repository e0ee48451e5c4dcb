//! What a reload changes: the diff between the running configuration and a new one, per kind of
//! thing (targets, probes, jobs, rules, outputs, incident sinks), by name. Pure: the agent applies it
//! ([`super::Agent::reconfigure`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use crate::config::{AgentConfig, Config, ProbeConfig, RuleConfig, Target};
use crate::scheduler::JobKey;

/// Names added, removed and changed (same name, different settings), each sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    /// Compare two lists of named things; `same` says whether two of one name are equivalent.
    /// Linear in the lists' lengths (by name, through a hash map): an agent reloads 10,000 targets.
    pub fn between<T>(
        old: &[T],
        new: &[T],
        name: impl Fn(&T) -> &str,
        same: impl Fn(&T, &T) -> bool,
    ) -> Changes {
        let old_by_name: HashMap<&str, &T> = old.iter().map(|o| (name(o), o)).collect();
        let new_names: HashSet<&str> = new.iter().map(&name).collect();
        let mut changes = Changes::default();
        for item in new {
            match old_by_name.get(name(item)) {
                None => changes.added.push(name(item).to_string()),
                Some(before) if !same(before, item) => changes.changed.push(name(item).to_string()),
                Some(_) => {}
            }
        }
        for item in old {
            if !new_names.contains(name(item)) {
                changes.removed.push(name(item).to_string());
            }
        }
        changes.added.sort();
        changes.removed.sort();
        changes.changed.sort();
        changes
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl fmt::Display for Changes {
    /// `+2 [a, b] -1 [c] ~0`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |names: &[String]| {
            if names.is_empty() {
                String::new()
            } else {
                format!(" [{}]", names.join(", "))
            }
        };
        write!(
            f,
            "+{}{} -{}{} ~{}{}",
            self.added.len(),
            list(&self.added),
            self.removed.len(),
            list(&self.removed),
            self.changed.len(),
            list(&self.changed)
        )
    }
}

/// What [`super::Agent::reconfigure`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub targets: Changes,
    pub probes: Changes,
    /// (probe, target) pairs, as `probe/target`: a job changes when its probe's or its target's
    /// settings do (not when its probe merely gains or loses other targets).
    pub jobs: Changes,
    pub rules: Changes,
    pub outputs: Changes,
    pub incident_sinks: Changes,
    /// Whether `[incidents]` (status update period, evidence history) changed.
    pub incidents_settings: bool,
    /// Ids of the incidents resolved because their rule or target left the configuration.
    pub incidents_resolved: Vec<String>,
}

impl ReloadReport {
    /// The diff from `old` to `new` (nothing resolved yet: the agent fills that in).
    pub fn between(old: &Config, new: &Config) -> ReloadReport {
        let both = InBoth::new(old, new);
        ReloadReport {
            targets: Changes::between(&old.targets, &new.targets, |t| &t.name, PartialEq::eq),
            probes: Changes::between(&old.probes, &new.probes, |p| &p.name, PartialEq::eq),
            jobs: job_changes(old, new),
            rules: Changes::between(
                &old.rules,
                &new.rules,
                |r| &r.name,
                |a, b| same_rule(a, b, &both),
            ),
            outputs: Changes::between(&old.outputs, &new.outputs, |o| &o.name, PartialEq::eq),
            incident_sinks: Changes::between(
                &old.incident_sinks,
                &new.incident_sinks,
                |s| &s.name,
                PartialEq::eq,
            ),
            incidents_settings: old.incidents != new.incidents,
            incidents_resolved: Vec::new(),
        }
    }

    /// Whether the configuration changed at all.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
            && self.probes.is_empty()
            && self.jobs.is_empty()
            && self.rules.is_empty()
            && self.outputs.is_empty()
            && self.incident_sinks.is_empty()
            && !self.incidents_settings
    }
}

impl fmt::Display for ReloadReport {
    /// One line: every kind that changed, with counts and names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "nothing changed");
        }
        let mut parts = Vec::new();
        for (kind, changes) in [
            ("targets", &self.targets),
            ("probes", &self.probes),
            ("jobs", &self.jobs),
            ("rules", &self.rules),
            ("outputs", &self.outputs),
            ("incident sinks", &self.incident_sinks),
        ] {
            if !changes.is_empty() {
                parts.push(format!("{kind} {changes}"));
            }
        }
        if self.incidents_settings {
            parts.push("[incidents] changed".into());
        }
        if !self.incidents_resolved.is_empty() {
            parts.push(format!(
                "incidents resolved {} [{}]",
                self.incidents_resolved.len(),
                self.incidents_resolved.join(", ")
            ));
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// Every (probe, target) job of `config`.
pub fn job_keys(config: &Config) -> BTreeSet<JobKey> {
    config
        .probes
        .iter()
        .flat_map(|p| p.targets.iter().map(|t| (p.name.clone(), t.clone())))
        .collect()
}

fn job_changes(old: &Config, new: &Config) -> Changes {
    let (before, after) = (job_keys(old), job_keys(new));
    let name = |(probe, target): &JobKey| format!("{probe}/{target}");
    // A probe's own settings, without its list of targets (that list is what the jobs are).
    let settings = |probe: &ProbeConfig| ProbeConfig {
        targets: Vec::new(),
        ..probe.clone()
    };
    let old_probes: HashMap<&str, &ProbeConfig> =
        old.probes.iter().map(|p| (p.name.as_str(), p)).collect();
    let probes_changed: HashSet<&str> = new
        .probes
        .iter()
        .filter(|p| {
            old_probes
                .get(p.name.as_str())
                .is_some_and(|before| settings(before) != settings(p))
        })
        .map(|p| p.name.as_str())
        .collect();
    let (old_targets, new_targets) = (targets_by_name(old), targets_by_name(new));
    let mut changes = Changes {
        added: after.difference(&before).map(name).collect(),
        removed: before.difference(&after).map(name).collect(),
        changed: Vec::new(),
    };
    for key in before.intersection(&after) {
        let (probe, target) = key;
        let target_changed = old_targets.get(target.as_str()) != new_targets.get(target.as_str());
        if probes_changed.contains(probe.as_str()) || target_changed {
            changes.changed.push(name(key));
        }
    }
    changes
}

fn targets_by_name(config: &Config) -> HashMap<&str, &Target> {
    config
        .targets
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect()
}

/// The names of the targets and of the probes that both configurations have.
struct InBoth<'a> {
    names: HashSet<&'a str>,
}

impl<'a> InBoth<'a> {
    fn new(old: &'a Config, new: &Config) -> InBoth<'a> {
        let new_names: HashSet<&str> = new
            .targets
            .iter()
            .map(|t| t.name.as_str())
            .chain(new.probes.iter().map(|p| p.name.as_str()))
            .collect();
        let names = old
            .targets
            .iter()
            .map(|t| t.name.as_str())
            .chain(old.probes.iter().map(|p| p.name.as_str()))
            .filter(|n| new_names.contains(n))
            .collect();
        InBoth { names }
    }
}

/// Whether a rule is the same in `old` and `new`: same settings, and the same probes and targets
/// among those both configurations have (a rule without a `targets` list covers every target, so
/// a target added or removed does not change the rule).
fn same_rule(a: &RuleConfig, b: &RuleConfig, both: &InBoth<'_>) -> bool {
    let common = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|n| both.names.contains(n.as_str()))
            .cloned()
            .collect()
    };
    let settings = |rule: &RuleConfig| RuleConfig {
        probes: common(&rule.probes),
        targets: common(&rule.targets),
        ..rule.clone()
    };
    settings(a) == settings(b)
}

/// The `[agent]` keys that differ: each needs a restart (the store, the spool and every record's
/// tags depend on them).
pub fn needs_restart(old: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.name != new.name {
        keys.push("agent.name");
    }
    if old.site != new.site {
        keys.push("agent.site");
    }
    if old.data_dir != new.data_dir {
        keys.push("agent.data_dir");
    }
    if old.retention != new.retention {
        keys.push("agent.retention");
    }
    if old.retention_5m != new.retention_5m {
        keys.push("agent.retention_5m");
    }
    if old.retention_1h != new.retention_1h {
        keys.push("agent.retention_1h");
    }
    if old.listen != new.listen {
        keys.push("agent.listen");
    }
    // A key added to `[agent]` later needs a restart too, until reload learns to apply it.
    if keys.is_empty() && old != new {
        keys.push("[agent]");
    }
    keys
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Targets a (127.0.0.1) and `extra`, probe `ping` (every `interval`) on all of them, rule
    /// `loss` (above `above` %) on all of them.
    fn config(extra: &str, interval: &str, above: u32, name: &str) -> Config {
        Config::parse(
            &format!(
                "[agent]\nname = \"{name}\"\nsite = \"s\"\n\
                 [[target]]\nname = \"a\"\nhost = \"127.0.0.1\"\n{extra}\
                 [[probe]]\nname = \"ping\"\nkind = \"icmp\"\ninterval = \"{interval}\"\n\
                 [[rule]]\nname = \"loss\"\nkind = \"loss\"\nabove_pct = {above}\nclear_below_pct = 5\n"
            ),
            Path::new("vantage.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_target_added_is_one_job_and_changes_no_rule() {
        let old = config("", "5s", 20, "n");
        let new = config(
            "[[target]]\nname = \"b\"\nhost = \"127.0.0.2\"\n",
            "5s",
            20,
            "n",
        );
        let report = ReloadReport::between(&old, &new);
        assert_eq!(report.targets.added, names(&["b"]));
        assert_eq!(report.jobs.added, names(&["ping/b"]));
        assert!(report.jobs.changed.is_empty() && report.jobs.removed.is_empty());
        // `loss` covers every target: b joins it, the rule itself is the same.
        assert!(report.rules.is_empty(), "{report:?}");
        let back = ReloadReport::between(&new, &old);
        assert_eq!(back.jobs.removed, names(&["ping/b"]));
        assert!(back.rules.is_empty(), "{back:?}");
    }

    #[test]
    fn a_probe_or_target_setting_changes_its_jobs_and_a_threshold_its_rule() {
        let b = |host: &str| format!("[[target]]\nname = \"b\"\nhost = \"{host}\"\n");
        let old = config(&b("127.0.0.2"), "5s", 20, "n");
        let moved = ReloadReport::between(&old, &config(&b("127.0.0.3"), "5s", 20, "n"));
        assert_eq!(moved.targets.changed, names(&["b"]));
        assert_eq!(moved.jobs.changed, names(&["ping/b"]));
        let slower = ReloadReport::between(&old, &config(&b("127.0.0.2"), "10s", 20, "n"));
        assert_eq!(slower.jobs.changed, names(&["ping/a", "ping/b"]));
        let stricter = ReloadReport::between(&old, &config(&b("127.0.0.2"), "5s", 30, "n"));
        assert_eq!(stricter.rules.changed, names(&["loss"]));
        assert!(stricter.jobs.is_empty());
        assert!(ReloadReport::between(&old, &old).is_empty());
        assert_eq!(
            ReloadReport::between(&old, &old).to_string(),
            "nothing changed"
        );
    }

    /// At 10,000 targets the diff once compared every name with every other (two `String`s
    /// allocated per comparison): `systemctl reload` took 21.6 s. Counted in name lookups, not
    /// time: a count does not depend on the machine.
    #[test]
    fn changes_between_reads_each_name_a_bounded_number_of_times() {
        let old: Vec<String> = (0..2_000).map(|i| format!("t{i}")).collect();
        let mut new = old.clone();
        new[7] = "moved".into();
        let lookups = std::cell::Cell::new(0_usize);
        let changes = Changes::between(
            &old,
            &new,
            |name| {
                lookups.set(lookups.get() + 1);
                name.as_str()
            },
            |a, b| a == b,
        );
        assert_eq!(changes.added, ["moved"]);
        assert_eq!(changes.removed, ["t7"]);
        assert!(changes.changed.is_empty());
        let per_name = lookups.get() as f64 / (old.len() + new.len()) as f64;
        assert!(
            per_name <= 3.0,
            "{} name lookups for {} names ({per_name:.1} each): the diff is no longer linear",
            lookups.get(),
            old.len() + new.len()
        );
    }

    #[test]
    fn the_agent_section_needs_a_restart_and_is_named() {
        let old = config("", "5s", 20, "n");
        let renamed = config("", "5s", 20, "m");
        assert_eq!(needs_restart(&old.agent, &renamed.agent), ["agent.name"]);
        assert!(needs_restart(&old.agent, &old.agent).is_empty());
    }
}
