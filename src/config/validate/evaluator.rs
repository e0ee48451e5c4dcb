//! The fleet evaluator's config (`vantage fleet --config fleet.toml`): `[evaluator]`, `[[site]]`,
//! fleet `[[rule]]`s, and the agent's own `[incidents]`, `[[output]]` and `[[incident_sink]]`
//! sections, all checked by the same [`Checker`] as the agent's config.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::de::DeTable;

use super::super::evaluator::{
    EvaluatorConfig, FLEET_ECHOES, FleetRuleConfig, FleetScope, SiteConfig,
};
use super::super::{Condition, ConfigErrors, LatencyThreshold};
use super::{
    Checker, DEFAULT_CLEAR_FOR, DEFAULT_MIN_HOLD, DEFAULT_RULE_FOR, Got, Key, LineIndex, Names,
    RULE_LATENCY, RULE_LOSS, Type, format_number, key,
};

const DEFAULT_NAME: &str = "fleet";
const DEFAULT_DATA_DIR: &str = "vantage-fleet-data";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
const DEFAULT_SITES_PCT: f64 = 50.0;
const FLEET_SCOPES: [&str; 2] = ["target", "site"];
const FLEET_KINDS: [&str; 2] = ["loss", "latency"];

const ROOT: [Key; 7] = [
    key("evaluator", Type::Table, "[evaluator]"),
    key("fleet", Type::Table, "[fleet]"),
    key("site", Type::Tables, "[[site]]"),
    key("rule", Type::Tables, "[[rule]]"),
    key("incidents", Type::Table, "[incidents]"),
    key("output", Type::Tables, "[[output]]"),
    key("incident_sink", Type::Tables, "[[incident_sink]]"),
];
const EVALUATOR: [Key; 4] = [
    key("name", Type::Str, r#"name = "fleet""#),
    key(
        "data_dir",
        Type::Str,
        r#"data_dir = "/var/lib/vantage-fleet""#,
    ),
    key("interval", Type::Duration, r#"interval = "10s""#),
    key("window", Type::Duration, r#"window = "1m""#),
];
const SITE: [Key; 2] = [
    key("name", Type::Str, r#"name = "scl3""#),
    key("targets", Type::Strings, r#"targets = ["scl3-agent"]"#),
];
const RULE: [Key; 10] = [
    key("name", Type::Str, r#"name = "cloud-unreachable""#),
    key("kind", Type::Str, r#"kind = "loss""#),
    key("scope", Type::Str, r#"scope = "target""#),
    key("severity", Type::Str, r#"severity = "critical""#),
    key("targets", Type::Strings, r#"targets = ["aws-gw"]"#),
    key("sites_pct", Type::Number, "sites_pct = 50"),
    key("min_sites", Type::Integer, "min_sites = 2"),
    key("for", Type::Duration, r#"for = "1m""#),
    key("clear_for", Type::Duration, r#"clear_for = "2m""#),
    key("min_hold", Type::Duration, r#"min_hold = "5m""#),
];

pub(in crate::config) fn parse_evaluator(
    text: &str,
    path: &Path,
) -> Result<EvaluatorConfig, ConfigErrors> {
    let mut checker = Checker {
        path,
        lines: LineIndex::new(text),
        errors: Vec::new(),
    };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(error) => {
            let message = format!("invalid TOML: {}", error.message().trim_end());
            let hint = "fix the syntax first; nothing else in the file is checked until it parses";
            match error.span() {
                Some(span) => checker.error(span, message, hint),
                None => checker.file_error(message, hint),
            }
            return Err(checker.finish());
        }
    };
    let root = root.get_ref();
    checker.unknown_keys(root, "a fleet config", &ROOT.each_ref(), &[]);
    let fleet = checker.evaluator(root, path);
    let sites = checker.sites(root);
    let rules = checker.fleet_rules(root, &sites);
    let incidents = checker.incidents(root);
    let outputs = checker.outputs(root);
    let incident_sinks = checker.incident_sinks(root);
    // The agent's `[fleet]` section: which output's store to read, in which dialect.
    let store = checker.fleet(root, &outputs);
    if store.is_none() && root.get("fleet").is_none() {
        checker.file_error(
            "a fleet config needs the shared store: an `[[output]]` and `[fleet]`",
            "add the `[[output]]` the agents write to and `[fleet]` with `output = \"NAME\"` (as in the agents' config): the evaluator reads that store and writes its incidents to it",
        );
    }
    match (fleet, store, incidents, checker.errors.is_empty()) {
        (Some((name, data_dir, interval, window)), Some(store), Some(incidents), true) => {
            Ok(EvaluatorConfig {
                source: path.to_path_buf(),
                name,
                data_dir,
                interval,
                window,
                sites,
                rules,
                incidents,
                outputs,
                store,
                incident_sinks,
            })
        }
        _ => Err(checker.finish()),
    }
}

impl Checker<'_> {
    #[allow(clippy::type_complexity)]
    fn evaluator(
        &mut self,
        root: &DeTable<'_>,
        path: &Path,
    ) -> Option<(String, std::path::PathBuf, Duration, Duration)> {
        let [name_key, data_dir_key, interval_key, window_key] = &EVALUATOR;
        let empty = DeTable::new();
        let table = match root.get("evaluator") {
            None => &empty,
            Some(value) => match value.get_ref().as_table() {
                Some(table) => table,
                None => {
                    self.wrong_type(value, &ROOT[0]);
                    return None;
                }
            },
        };
        self.unknown_keys(table, "[evaluator]", &EVALUATOR.each_ref(), &[]);
        let name = match self.string(table, name_key) {
            Got::Absent => Some(DEFAULT_NAME.to_string()),
            Got::Invalid => None,
            Got::Valid(name, span) => self
                .tag_name("evaluator name", name, span, name_key.example)
                .then(|| name.to_string()),
        };
        let data_dir = match self.string(table, data_dir_key) {
            Got::Absent => Some(DEFAULT_DATA_DIR),
            Got::Invalid => None,
            Got::Valid("", span) => {
                self.error(
                    span,
                    "`data_dir` must not be empty",
                    format!("remove it to use `{DEFAULT_DATA_DIR}` next to the config file"),
                );
                None
            }
            Got::Valid(dir, _) => Some(dir),
        };
        let interval = match self.positive_duration(table, interval_key) {
            Got::Absent => Some(DEFAULT_INTERVAL),
            Got::Invalid => None,
            Got::Valid(d, _) => Some(d),
        };
        let window = match self.positive_duration(table, window_key) {
            Got::Absent => Some(DEFAULT_WINDOW),
            Got::Invalid => None,
            Got::Valid(window, span) => match interval {
                Some(interval) if window < interval => {
                    self.error(
                        span,
                        format!(
                            "`window` ({}) is shorter than `interval` ({}): some measurements would never be read",
                            super::super::format_duration(window),
                            super::super::format_duration(interval)
                        ),
                        "make `window` at least as long as `interval` (a few agent rounds, e.g. `window = \"1m\"`)",
                    );
                    None
                }
                _ => Some(window),
            },
        };
        let config_dir = path.parent().unwrap_or_else(|| Path::new(""));
        Some((name?, config_dir.join(data_dir?), interval?, window?))
    }

    fn sites(&mut self, root: &DeTable<'_>) -> Vec<SiteConfig> {
        let [name_key, targets_key] = &SITE;
        let mut sites = Vec::new();
        let Some(value) = root.get("site") else {
            self.file_error(
                "a fleet config needs its sites",
                "add one `[[site]]` per site that runs an agent, e.g.\n[[site]]\nname = \"scl3\"\ntargets = [\"scl3-agent\"]",
            );
            return sites;
        };
        let mut names = Names::default();
        for (table, span) in self.tables(value, &ROOT[2]) {
            self.unknown_keys(table, "[[site]]", &SITE.each_ref(), &[]);
            let name = self.unique_name(
                table,
                "[[site]]",
                &span,
                name_key,
                "site",
                ": the `site` tag its agent writes",
                &mut names,
            );
            let targets = self.names(table, targets_key);
            let targets = self.required(
                targets,
                "[[site]]",
                &span,
                targets_key,
                ": the mesh targets by which the other sites probe this site",
            );
            if let (Some(name), Got::Valid(targets, _)) = (name, targets) {
                sites.push(SiteConfig {
                    name: name.to_string(),
                    targets,
                });
            }
        }
        sites
    }

    fn fleet_rules(&mut self, root: &DeTable<'_>, sites: &[SiteConfig]) -> Vec<FleetRuleConfig> {
        let [
            name_key,
            kind_key,
            scope_key,
            severity_key,
            targets_key,
            sites_pct_key,
            min_sites_key,
            for_key,
            clear_for_key,
            min_hold_key,
        ] = &RULE;
        let mut rules = Vec::new();
        let Some(value) = root.get("rule") else {
            self.file_error(
                "a fleet config without `[[rule]]` would never open an incident",
                "add a fleet rule, e.g.\n[[rule]]\nname = \"site-unreachable\"\nscope = \"site\"\nmin_sites = 2\nkind = \"loss\"\nabove_pct = 90",
            );
            return rules;
        };
        let mut names = Names::default();
        for (table, span) in self.tables(value, &ROOT[3]) {
            let kind = self.choice(table, kind_key, "fleet rule kind", &FLEET_KINDS, false);
            let kind = match self.required(
                kind,
                "fleet [[rule]]",
                &span,
                kind_key,
                &format!(" (one of: {})", FLEET_KINDS.join(", ")),
            ) {
                Got::Valid(kind, _) => Some(kind),
                _ => None,
            };
            let own: Vec<&Key> = match kind {
                Some("loss") => vec![&RULE_LOSS[0], &RULE_LOSS[1]],
                Some(_) => vec![&RULE_LATENCY[1], &RULE_LATENCY[2]],
                None => vec![
                    &RULE_LOSS[0],
                    &RULE_LOSS[1],
                    &RULE_LATENCY[1],
                    &RULE_LATENCY[2],
                ],
            };
            let allowed: Vec<&Key> = RULE.iter().chain(own).collect();
            self.unknown_keys(table, "fleet [[rule]]", &allowed, &[]);
            let name = self.unique_name(
                table,
                "[[rule]]",
                &span,
                name_key,
                "rule",
                ": it becomes the `rule` tag and starts every incident's dedup key",
                &mut names,
            );
            let severity = self.severity(table, severity_key);
            let scope_text =
                match self.choice(table, scope_key, "fleet scope", &FLEET_SCOPES, false) {
                    Got::Absent => Some("target"),
                    Got::Invalid => None,
                    Got::Valid(scope, _) => Some(scope),
                };
            let scope = match scope_text {
                None => None,
                Some("site") => self.site_scope(table, &span, sites, min_sites_key, sites_pct_key),
                _ => self.target_scope(table, sites_pct_key, min_sites_key),
            };
            let targets = match (scope_text, self.names(table, targets_key)) {
                (Some("target"), Got::Valid(targets, _)) => Some(targets),
                (Some("target"), Got::Absent) => {
                    self.error(
                        span.clone(),
                        "missing required key `targets` in a `scope = \"target\"` fleet [[rule]]",
                        "list the targets it watches, as the agents name them, e.g. `targets = [\"aws-gw\"]`",
                    );
                    None
                }
                (_, Got::Valid(_, targets_span)) => {
                    self.error(
                        targets_span,
                        "`targets` does not apply to a `scope = \"site\"` fleet rule",
                        "a site rule watches the `targets` of each `[[site]]`; remove it",
                    );
                    None
                }
                (_, Got::Absent) => Some(Vec::new()),
                (_, Got::Invalid) => None,
            };
            let condition = match kind {
                Some("loss") => self.loss(table, &span).map(|c| match c {
                    // One read of the store is the window; see FLEET_ECHOES.
                    Condition::Loss {
                        above_pct,
                        clear_below_pct,
                        ..
                    } => Condition::Loss {
                        above_pct,
                        clear_below_pct,
                        echoes: FLEET_ECHOES,
                    },
                    other => other,
                }),
                Some(_) => self.fleet_latency(table, &span),
                None => None,
            };
            let duration = |checker: &mut Self, key: &Key, default: Duration| match checker
                .duration(table, key)
            {
                Got::Absent => Some(default),
                Got::Invalid => None,
                Got::Valid(d, _) => Some(d),
            };
            let open_for = duration(self, for_key, DEFAULT_RULE_FOR);
            let clear_for = duration(self, clear_for_key, DEFAULT_CLEAR_FOR);
            let min_hold = duration(self, min_hold_key, DEFAULT_MIN_HOLD);
            if let (
                Some(name),
                Some(severity),
                Some(scope),
                Some(targets),
                Some(condition),
                Some(open_for),
                Some(clear_for),
                Some(min_hold),
            ) = (
                name, severity, scope, targets, condition, open_for, clear_for, min_hold,
            ) {
                rules.push(FleetRuleConfig {
                    name: name.to_string(),
                    severity,
                    scope,
                    targets,
                    condition,
                    open_for,
                    clear_for,
                    min_hold,
                });
            }
        }
        rules
    }

    /// A non-empty list of names.
    fn names(&mut self, table: &DeTable<'_>, key: &Key) -> Got<Vec<String>> {
        match self.strings(table, key) {
            Got::Valid(items, span) => {
                Got::Valid(items.into_iter().map(|(name, _)| name).collect(), span)
            }
            Got::Absent => Got::Absent,
            Got::Invalid => Got::Invalid,
        }
    }

    fn target_scope(
        &mut self,
        table: &DeTable<'_>,
        sites_pct_key: &Key,
        min_sites_key: &Key,
    ) -> Option<FleetScope> {
        if let Got::Valid(_, span) = self.integer(table, min_sites_key) {
            self.error(
                span,
                "`min_sites` applies to `scope = \"site\"` fleet rules",
                "a target rule counts a share of the sites: use `sites_pct`",
            );
            return None;
        }
        match self.number(table, sites_pct_key) {
            Got::Absent => Some(FleetScope::Target {
                sites_pct: DEFAULT_SITES_PCT,
            }),
            Got::Invalid => None,
            Got::Valid(pct, span) if !(pct > 0.0 && pct <= 100.0) => {
                self.error(
                    span,
                    format!(
                        "`sites_pct` must be above 0 and at most 100, not {}",
                        format_number(pct)
                    ),
                    "the share of sites that must see the target breach, e.g. `sites_pct = 50`",
                );
                None
            }
            Got::Valid(sites_pct, _) => Some(FleetScope::Target { sites_pct }),
        }
    }

    fn site_scope(
        &mut self,
        table: &DeTable<'_>,
        span: &Range<usize>,
        sites: &[SiteConfig],
        min_sites_key: &Key,
        sites_pct_key: &Key,
    ) -> Option<FleetScope> {
        if let Got::Valid(_, span) = self.number(table, sites_pct_key) {
            self.error(
                span,
                "`sites_pct` applies to `scope = \"target\"` fleet rules",
                "a site rule counts the other sites that cannot reach it: use `min_sites`",
            );
            return None;
        }
        let others = sites.len().saturating_sub(1).max(1) as i128;
        let min = self.bounded_integer(
            table,
            min_sites_key,
            1,
            others,
            "how many other sites must see the site unreachable",
        );
        match self.required(
            min,
            "fleet [[rule]]",
            span,
            min_sites_key,
            ": how many other sites must see the site unreachable",
        ) {
            Got::Valid(min_sites, _) => Some(FleetScope::Site { min_sites }),
            _ => None,
        }
    }

    /// The median RTT of a read above `above_ms` (the query reads the median per site and target).
    fn fleet_latency(&mut self, table: &DeTable<'_>, span: &Range<usize>) -> Option<Condition> {
        match self.latency(table, span)? {
            Condition::Latency {
                field,
                threshold: threshold @ LatencyThreshold::Absolute { .. },
                ..
            } => Some(Condition::Latency {
                field,
                // One read of the store is one value: its median over the window.
                runs: 1,
                threshold,
            }),
            _ => None,
        }
    }
}
