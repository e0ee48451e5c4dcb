//! The `[[rule]]` and `[incidents]` sections: same walk, same strictness as the rest of the file.
//! Cross-checks (a probe or target a rule names, the label a group rule groups by) run against
//! what the earlier sections defined, so a mistake there is not reported twice.

use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use toml::de::DeTable;

use super::super::{
    Condition, IncidentsConfig, LatencyField, LatencyThreshold, ProbeConfig, ProbeKind, RuleConfig,
    RuleScope, Severity, Target,
};
use super::{
    Checker, DEFAULT_AGENT_SHARE_PCT, DEFAULT_BASELINE, DEFAULT_CLEAR_FOR, DEFAULT_ECHOES,
    DEFAULT_GROUP_SHARE_PCT, DEFAULT_HISTORY, DEFAULT_LATENCY_CLEAR_SHARE, DEFAULT_LATENCY_RUNS,
    DEFAULT_MIN_HOLD, DEFAULT_RULE_FOR, DEFAULT_STATUS_UPDATES, Got, INCIDENTS, Key, MAX_WINDOW,
    Names, ROOT, RULE, RULE_FAILURES, RULE_KINDS, RULE_LATENCY, RULE_LOSS, SCOPES, closest,
    format_number, rule_kind_keys,
};

/// A duration key with a default: `None` when invalid (already reported).
fn or_default(got: Got<Duration>, default: Duration) -> Option<Duration> {
    match got {
        Got::Absent => Some(default),
        Got::Invalid => None,
        Got::Valid(duration, _) => Some(duration),
    }
}

impl Checker<'_> {
    pub(super) fn incidents(&mut self, root: &DeTable<'_>) -> Option<IncidentsConfig> {
        let [updates_key, history_key] = &INCIDENTS;
        let Some(value) = root.get("incidents") else {
            return Some(IncidentsConfig {
                status_updates: DEFAULT_STATUS_UPDATES,
                history: DEFAULT_HISTORY,
            });
        };
        let Some(table) = value.get_ref().as_table() else {
            self.wrong_type(value, &ROOT[4]);
            return None;
        };
        self.unknown_keys(table, "[incidents]", &INCIDENTS.each_ref(), &[]);
        let status_updates = self.positive_duration(table, updates_key);
        let history = self.positive_duration(table, history_key);
        Some(IncidentsConfig {
            status_updates: or_default(status_updates, DEFAULT_STATUS_UPDATES)?,
            history: or_default(history, DEFAULT_HISTORY)?,
        })
    }

    pub(super) fn rules(
        &mut self,
        root: &DeTable<'_>,
        targets: &[Target],
        defined_targets: &Names,
        probes: &[ProbeConfig],
        defined_probes: &Names,
    ) -> Vec<RuleConfig> {
        let mut rules = Vec::new();
        let Some(value) = root.get("rule") else {
            return rules;
        };
        let section = "[[rule]]";
        let [
            name_key,
            _, // kind: `rule_kind`
            severity_key,
            _, // probes: `rule_probes`
            _, // targets: `rule_targets`
            scope_key,
            group_by_key,
            share_key,
            hold_key,
            for_key,
            clear_for_key,
            min_hold_key,
        ] = &RULE;
        let mut names: Names = Names::default();
        for (table, span) in self.tables(value, &ROOT[3]) {
            let kind = self.rule_kind(table, &span);
            let name = self.unique_name(
                table,
                section,
                &span,
                name_key,
                "rule",
                ": it becomes the `rule` tag and starts every incident's dedup key",
                &mut names,
            );

            let severity = self.severity(table, severity_key);

            let rule_probes = self.rule_probes(table, kind, name, &span, probes, defined_probes);
            let rule_targets = self.rule_targets(
                table,
                name,
                rule_probes.as_deref(),
                targets,
                defined_targets,
            );

            let scope_text = match self.string(table, scope_key) {
                Got::Absent => Some(("target", None)),
                Got::Invalid => None,
                Got::Valid(text, scope_span) => match SCOPES.iter().find(|s| **s == text) {
                    Some(scope) => Some((*scope, Some(scope_span))),
                    None => {
                        let hint = match closest(text, SCOPES) {
                            Some(suggestion) => format!("did you mean `{suggestion}`?"),
                            None => format!("use one of: {}", SCOPES.join(", ")),
                        };
                        self.error(scope_span, format!("unknown scope `{text}`"), hint);
                        None
                    }
                },
            };
            let group_by = self.string(table, group_by_key);
            let share = self.number(table, share_key);
            let hold = self.boolean(table, hold_key);
            let scope = self.scope(
                scope_text,
                group_by,
                share,
                hold,
                &span,
                targets,
                rule_targets.as_deref(),
            );

            let open_for = self.duration(table, for_key);
            let clear_for = self.duration(table, clear_for_key);
            let min_hold = self.duration(table, min_hold_key);
            let condition = match kind {
                Some("loss") => self.loss(table, &span),
                Some("failures") => self.failures(table, &span),
                Some(_) => self.latency(table, &span),
                None => None,
            };

            if let (
                Some(name),
                Some(severity),
                Some(rule_probes),
                Some(rule_targets),
                Some(scope),
                Some(condition),
                Some(open_for),
                Some(clear_for),
                Some(min_hold),
            ) = (
                name,
                severity,
                rule_probes,
                rule_targets,
                scope,
                condition,
                or_default(open_for, DEFAULT_RULE_FOR),
                or_default(clear_for, DEFAULT_CLEAR_FOR),
                or_default(min_hold, DEFAULT_MIN_HOLD),
            ) {
                rules.push(RuleConfig {
                    name: name.to_string(),
                    severity,
                    probes: rule_probes.iter().map(|p| p.name.clone()).collect(),
                    targets: rule_targets,
                    scope,
                    condition,
                    open_for,
                    clear_for,
                    min_hold,
                });
            }
        }
        rules
    }

    /// `kind`, and the keys the kind allows (a key of another kind is named as such).
    fn rule_kind(&mut self, table: &DeTable<'_>, span: &Range<usize>) -> Option<&'static str> {
        let [_, kind_key, ..] = &RULE;
        let section = "[[rule]]";
        let kind = self.string(table, kind_key);
        let kind = match self.required(
            kind,
            section,
            span,
            kind_key,
            &format!(" (known kinds: {})", RULE_KINDS.join(", ")),
        ) {
            Got::Valid(kind, kind_span) => match RULE_KINDS.iter().find(|k| **k == kind) {
                Some(kind) => Some(*kind),
                None => {
                    let known = RULE_KINDS.join(", ");
                    let hint = match closest(kind, RULE_KINDS) {
                        Some(suggestion) => {
                            format!("did you mean `{suggestion}`? known kinds: {known}")
                        }
                        None => format!("known kinds: {known}"),
                    };
                    self.error(kind_span, format!("unknown rule kind `{kind}`"), hint);
                    None
                }
            },
            Got::Absent | Got::Invalid => None,
        };
        // As for probes: the keys of the rule's own kind are allowed; a key of another kind
        // is named as such; with an unknown kind, keys of every kind are accepted unchecked.
        let own: &[Key] = kind.map(rule_kind_keys).unwrap_or(&[]);
        let allowed: Vec<&Key> = RULE.iter().chain(own).collect();
        let all_kinds: Vec<&Key> = RULE_LOSS
            .iter()
            .chain(&RULE_FAILURES)
            .chain(&RULE_LATENCY)
            .collect();
        match kind {
            None => self.unknown_keys(table, section, &allowed, &all_kinds),
            Some(kind) => {
                for (key_name, _) in table.iter() {
                    let key_str: &str = key_name.get_ref();
                    if allowed.iter().any(|k| k.name == key_str) {
                        continue;
                    }
                    if let Some(other) = RULE_KINDS
                        .iter()
                        .find(|k| rule_kind_keys(k).iter().any(|key| key.name == key_str))
                    {
                        self.error(
                            key_name.span(),
                            format!("`{key_str}` does not apply to a rule of kind `{kind}`"),
                            format!(
                                "`{key_str}` belongs to `kind = \"{other}\"`; keys of `{kind}`: {}",
                                own.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                            ),
                        );
                    }
                }
                self.unknown_keys(table, section, &allowed, &all_kinds);
            }
        }
        kind
    }

    pub(super) fn severity(&mut self, table: &DeTable<'_>, severity_key: &Key) -> Option<Severity> {
        match self.string(table, severity_key) {
            Got::Absent => Some(Severity::default()),
            Got::Invalid => None,
            Got::Valid(text, severity_span) => match Severity::parse(text) {
                Some(severity) => Some(severity),
                None => {
                    let known = Severity::ALL.map(Severity::as_str);
                    let hint = match closest(text, known) {
                        Some(suggestion) => format!("did you mean `{suggestion}`?"),
                        None => format!("use one of: {}", known.join(", ")),
                    };
                    self.error(severity_span, format!("unknown severity `{text}`"), hint);
                    None
                }
            },
        }
    }

    /// The probes a rule reads: listed, or every probe its kind applies to.
    fn rule_probes<'p>(
        &mut self,
        table: &DeTable<'_>,
        kind: Option<&str>,
        name: Option<&str>,
        span: &Range<usize>,
        probes: &'p [ProbeConfig],
        defined_probes: &Names,
    ) -> Option<Vec<&'p ProbeConfig>> {
        let [_, _, _, probes_key, ..] = &RULE;
        // The probes it reads: listed, or every probe the kind applies to.
        let rule_probes: Option<Vec<&ProbeConfig>> = match table.get(probes_key.name) {
            None => Some(
                probes
                    .iter()
                    .filter(|p| kind.is_none_or(|k| kind_applies(k, &p.kind)))
                    .collect(),
            ),
            Some(value) => {
                let listed =
                    self.name_refs(value, probes_key, ("rule", name), "probe", defined_probes);
                listed.and_then(|listed| {
                    let mut found = Vec::new();
                    for probe_name in &listed {
                        // A listed probe with its own mistake is absent: reported there.
                        let probe = probes.iter().find(|p| &p.name == probe_name)?;
                        if let Some(kind) = kind
                            && !kind_applies(kind, &probe.kind)
                        {
                            self.error(
                                value.span(),
                                format!("a `{kind}` rule cannot read probe `{probe_name}`"),
                                "loss and latency rules read icmp probes",
                            );
                            return None;
                        }
                        found.push(probe);
                    }
                    Some(found)
                })
            }
        };
        if let (Some(kind), Some([])) = (kind, rule_probes.as_deref())
            && !probes.is_empty()
        {
            self.error(
                span.clone(),
                format!("no probe measures what a `{kind}` rule reads"),
                "loss and latency rules read icmp probes: add a `kind = \"icmp\"` probe",
            );
        }
        rule_probes
    }

    /// The targets a rule watches: listed (each measured by one of its probes), or all of theirs.
    fn rule_targets(
        &mut self,
        table: &DeTable<'_>,
        name: Option<&str>,
        rule_probes: Option<&[&ProbeConfig]>,
        targets: &[Target],
        defined_targets: &Names,
    ) -> Option<Vec<String>> {
        let [_, _, _, _, targets_key, ..] = &RULE;
        // The targets it watches: listed (each measured by one of its probes), or all of theirs.
        // A set, not a scan per target: 10,000 targets made this 10^8 comparisons per rule.
        let measured_by: HashSet<&str> = rule_probes
            .iter()
            .flat_map(|probes| probes.iter())
            .flat_map(|p| p.targets.iter().map(String::as_str))
            .collect();
        let measured = |target: &str| measured_by.contains(target);
        match (table.get(targets_key.name), &rule_probes) {
            (None, Some(_)) => Some(
                targets
                    .iter()
                    .filter(|t| measured(&t.name))
                    .map(|t| t.name.clone())
                    .collect(),
            ),
            (None, None) => None,
            (Some(value), rule_probes) => {
                let listed = self.name_refs(
                    value,
                    targets_key,
                    ("rule", name),
                    "target",
                    defined_targets,
                );
                match (listed, rule_probes) {
                    (Some(listed), Some(rule_probes)) => {
                        let entries = value
                            .get_ref()
                            .as_array()
                            .map(|a| a.iter().collect::<Vec<_>>())
                            .unwrap_or_default();
                        let mut valid = true;
                        for (target, entry) in listed.iter().zip(entries) {
                            if !measured(target) && targets.iter().any(|t| &t.name == target) {
                                let probe_names: Vec<&str> =
                                    rule_probes.iter().map(|p| p.name.as_str()).collect();
                                self.error(
                                    entry.span(),
                                    format!("rule watches target `{target}`, but none of its probes measures it"),
                                    format!("add `{target}` to the `targets` of probe `{}`, or remove it here", probe_names.first().copied().unwrap_or("...")),
                                );
                                valid = false;
                            }
                        }
                        valid.then_some(listed)
                    }
                    _ => None,
                }
            }
        }
    }

    /// `scope`, `group_by`, `share_pct` and `hold_back_targets`, which only make sense together.
    #[allow(clippy::too_many_arguments)]
    fn scope(
        &mut self,
        scope: Option<(&str, Option<Range<usize>>)>,
        group_by: Got<&str>,
        share: Got<f64>,
        hold: Got<bool>,
        section_span: &Range<usize>,
        targets: &[Target],
        rule_targets: Option<&[String]>,
    ) -> Option<RuleScope> {
        let (scope, scope_span) = scope?;
        let hold_back_targets = match hold {
            Got::Valid(_, span) if scope != "group" => {
                self.error(
                    span,
                    format!("`hold_back_targets` applies only to `scope = \"group\"`, not `{scope}`"),
                    "remove it: an agent-scope rule always holds back the rules on its probes, and a target-scope rule has nothing to hold back",
                );
                None
            }
            Got::Valid(hold, _) => Some(hold),
            Got::Absent => Some(false),
            Got::Invalid => None,
        };
        let share_pct = match share {
            Got::Valid(_, span) if scope == "target" => {
                self.error(
                    span,
                    "`share_pct` applies only to `scope = \"group\"` or `scope = \"agent\"`",
                    "a target-scope rule opens one incident per breaching target: remove `share_pct`",
                );
                None
            }
            Got::Valid(share, span) if !(share > 0.0 && share <= 100.0) => {
                self.error(
                    span,
                    format!(
                        "`share_pct` must be above 0 and at most 100, not {}",
                        format_number(share)
                    ),
                    "`share_pct` is the percentage of the scope's targets that must breach, e.g. `share_pct = 50`",
                );
                None
            }
            Got::Valid(share, _) => Some(share),
            Got::Absent if scope == "agent" => Some(DEFAULT_AGENT_SHARE_PCT),
            Got::Absent => Some(DEFAULT_GROUP_SHARE_PCT),
            Got::Invalid => None,
        };
        match (scope, group_by) {
            ("group", Got::Valid(label, label_span)) => {
                let valid = self.tag_name(
                    "label key",
                    label,
                    label_span.clone(),
                    "group_by = \"group\"",
                );
                let watched: Vec<&Target> = targets
                    .iter()
                    .filter(|t| rule_targets.is_some_and(|r| r.contains(&t.name)))
                    .collect();
                if valid
                    && rule_targets.is_some()
                    && !watched.iter().any(|t| t.labels.contains_key(label))
                {
                    let mut known: Vec<&str> = watched
                        .iter()
                        .flat_map(|t| t.labels.keys().map(String::as_str))
                        .collect();
                    known.sort_unstable();
                    known.dedup();
                    let hint = match closest(label, known.iter().copied()) {
                        Some(suggestion) => format!("did you mean `{suggestion}`?"),
                        None if known.is_empty() => "give the targets a label to group by, e.g. `labels = { group = \"cloud\" }`".to_string(),
                        None => format!("labels of its targets: {}", known.join(", ")),
                    };
                    self.error(
                        label_span,
                        format!("no target this rule watches has the label `{label}`"),
                        hint,
                    );
                    return None;
                }
                Some(RuleScope::Group {
                    label: label.to_string(),
                    share_pct: share_pct?,
                    hold_back_targets: hold_back_targets?,
                })
                .filter(|_| valid)
            }
            ("group", Got::Absent) => {
                self.error(
                    scope_span.unwrap_or_else(|| section_span.clone()),
                    "`scope = \"group\"` needs `group_by`",
                    "name the target label whose values form the groups, e.g. `group_by = \"group\"`",
                );
                None
            }
            (_, Got::Valid(_, span)) => {
                self.error(
                    span,
                    format!("`group_by` applies only to `scope = \"group\"`, not `{scope}`"),
                    "remove `group_by`, or set `scope = \"group\"`",
                );
                None
            }
            (_, Got::Invalid) => None,
            ("agent", Got::Absent) => hold_back_targets.and(Some(RuleScope::Agent {
                share_pct: share_pct?,
            })),
            _ => share_pct.and(hold_back_targets).map(|_| RuleScope::Target),
        }
    }

    pub(super) fn loss(&mut self, table: &DeTable<'_>, span: &Range<usize>) -> Option<Condition> {
        let [above_key, clear_key, echoes_key] = &RULE_LOSS;
        let pct = |checker: &mut Self, key: &Key, got: Got<f64>| match got {
            Got::Valid(pct, span) if !(0.0..100.0).contains(&pct) => {
                checker.error(
                    span,
                    format!(
                        "`{}` must be at least 0 and below 100, not {}",
                        key.name,
                        format_number(pct)
                    ),
                    format!("a loss percentage, e.g. `{}`", key.example),
                );
                Got::Invalid
            }
            other => other,
        };
        let above = self.number(table, above_key);
        let above = pct(self, above_key, above);
        let above = self.required(
            above,
            "[[rule]]",
            span,
            above_key,
            ": the loss percentage it opens above",
        );
        let clear = self.number(table, clear_key);
        let clear = pct(self, clear_key, clear);
        let echoes = self.bounded_integer(
            table,
            echoes_key,
            1,
            MAX_WINDOW,
            "how many of the latest echoes the loss is computed over",
        );
        let (Got::Valid(above, _), echoes) = (above, echoes) else {
            return None;
        };
        let clear = match clear {
            Got::Absent => above / 2.0,
            Got::Invalid => return None,
            Got::Valid(clear, span) if clear >= above => {
                self.hysteresis_error(span, clear_key, clear, above_key, above);
                return None;
            }
            Got::Valid(clear, _) => clear,
        };
        let echoes = match echoes {
            Got::Absent => DEFAULT_ECHOES,
            Got::Invalid => return None,
            Got::Valid(echoes, _) => echoes,
        };
        Some(Condition::Loss {
            above_pct: above,
            clear_below_pct: clear,
            echoes,
        })
    }

    fn failures(&mut self, table: &DeTable<'_>, span: &Range<usize>) -> Option<Condition> {
        let [failures_key, runs_key, clear_key] = &RULE_FAILURES;
        let failures = self.bounded_integer(
            table,
            failures_key,
            1,
            MAX_WINDOW,
            "how many of the last `runs` runs must fail",
        );
        let failures = self.required(
            failures,
            "[[rule]]",
            span,
            failures_key,
            " with `runs = 5`: open when 3 of the last 5 runs failed",
        );
        let runs = self.bounded_integer(
            table,
            runs_key,
            1,
            MAX_WINDOW,
            "how many of the latest runs are counted",
        );
        let clear = self.bounded_integer(
            table,
            clear_key,
            0,
            MAX_WINDOW,
            "how many of the last `runs` runs may still fail when it clears",
        );
        let Got::Valid(failures, failures_span) = failures else {
            return None;
        };
        let runs = match runs {
            Got::Absent => failures,
            Got::Invalid => return None,
            Got::Valid(runs, _) if failures > runs => {
                self.error(
                    failures_span,
                    format!("`failures` ({failures}) cannot be more than `runs` ({runs})"),
                    format!("`failures = {failures}` counts failures among the last `runs` runs: raise `runs` to at least {failures}"),
                );
                return None;
            }
            Got::Valid(runs, _) => runs,
        };
        let clear = match clear {
            Got::Absent => 0,
            Got::Invalid => return None,
            Got::Valid(clear, span) if clear >= failures => {
                self.hysteresis_error(
                    span,
                    clear_key,
                    f64::from(clear),
                    failures_key,
                    f64::from(failures),
                );
                return None;
            }
            Got::Valid(clear, _) => clear,
        };
        Some(Condition::Failures {
            failures,
            runs,
            clear_failures: clear,
        })
    }

    pub(super) fn latency(
        &mut self,
        table: &DeTable<'_>,
        span: &Range<usize>,
    ) -> Option<Condition> {
        let [
            field_key,
            above_ms_key,
            clear_ms_key,
            above_ratio_key,
            clear_ratio_key,
            baseline_key,
            runs_key,
        ] = &RULE_LATENCY;
        let field = match self.string(table, field_key) {
            Got::Absent => Some(LatencyField::Median),
            Got::Invalid => None,
            Got::Valid(text, field_span) => match LatencyField::parse(text) {
                Some(field) => Some(field),
                None => {
                    let known = LatencyField::ALL.map(LatencyField::as_str);
                    let hint = match closest(text, known) {
                        Some(suggestion) => format!("did you mean `{suggestion}`?"),
                        None => format!("latency fields of `ping`: {}", known.join(", ")),
                    };
                    self.error(field_span, format!("unknown latency field `{text}`"), hint);
                    None
                }
            },
        };
        let runs = self.bounded_integer(
            table,
            runs_key,
            1,
            MAX_WINDOW,
            "how many of the latest runs the median is taken over",
        );
        let positive = |checker: &mut Self, key: &Key, got: Got<f64>, min: f64| match got {
            Got::Valid(value, span) if value <= min => {
                checker.error(
                    span,
                    format!(
                        "`{}` must be above {}, not {}",
                        key.name,
                        format_number(min),
                        format_number(value)
                    ),
                    format!("e.g. `{}`", key.example),
                );
                Got::Invalid
            }
            other => other,
        };
        let above_ms = self.number(table, above_ms_key);
        let above_ms = positive(self, above_ms_key, above_ms, 0.0);
        let clear_ms = self.number(table, clear_ms_key);
        let clear_ms = positive(self, clear_ms_key, clear_ms, 0.0);
        let above_ratio = self.number(table, above_ratio_key);
        let above_ratio = positive(self, above_ratio_key, above_ratio, 1.0);
        let clear_ratio = self.number(table, clear_ratio_key);
        let clear_ratio = positive(self, clear_ratio_key, clear_ratio, 0.0);
        let window = self.positive_duration(table, baseline_key);

        let threshold = match (above_ms, above_ratio) {
            (Got::Absent, Got::Absent) => {
                self.error(
                    span.clone(),
                    "a `latency` rule needs `above_ms` or `above_baseline`",
                    "e.g. `above_ms = 150` (absolute), or `above_baseline = 3` (3 × the field's median over `baseline`)",
                );
                None
            }
            (Got::Valid(_, _), Got::Valid(_, ratio_span)) => {
                self.error(
                    ratio_span,
                    "`above_baseline` and `above_ms` cannot both be set",
                    "keep one threshold per rule; write a second rule for the other",
                );
                None
            }
            (Got::Valid(above, _), Got::Absent) => {
                let mut valid = true;
                if let Got::Valid(_, span) = &clear_ratio {
                    self.mismatched(span.clone(), clear_ratio_key, above_ms_key);
                    valid = false;
                }
                if let Got::Valid(_, span) = &window {
                    self.mismatched(span.clone(), baseline_key, above_ms_key);
                    valid = false;
                }
                let clear = match clear_ms {
                    Got::Absent => Some(above * DEFAULT_LATENCY_CLEAR_SHARE),
                    Got::Valid(clear, span) if clear >= above => {
                        self.hysteresis_error(span, clear_ms_key, clear, above_ms_key, above);
                        None
                    }
                    Got::Valid(clear, _) => Some(clear),
                    Got::Invalid => None,
                };
                clear
                    .filter(|_| valid)
                    .map(|clear_below_ms| LatencyThreshold::Absolute {
                        above_ms: above,
                        clear_below_ms,
                    })
            }
            (Got::Absent, Got::Valid(ratio, _)) => {
                if let Got::Valid(_, span) = &clear_ms {
                    self.mismatched(span.clone(), clear_ms_key, above_ratio_key);
                    None
                } else {
                    let clear = match clear_ratio {
                        Got::Absent => Some(ratio * DEFAULT_LATENCY_CLEAR_SHARE),
                        Got::Valid(clear, span) if clear >= ratio => {
                            self.hysteresis_error(
                                span,
                                clear_ratio_key,
                                clear,
                                above_ratio_key,
                                ratio,
                            );
                            None
                        }
                        Got::Valid(clear, _) => Some(clear),
                        Got::Invalid => None,
                    };
                    match (clear, or_default(window, DEFAULT_BASELINE)) {
                        (Some(clear_below_ratio), Some(window)) => {
                            Some(LatencyThreshold::Baseline {
                                above_ratio: ratio,
                                clear_below_ratio,
                                window,
                            })
                        }
                        _ => None,
                    }
                }
            }
            _ => None,
        };
        let runs = match runs {
            Got::Absent => DEFAULT_LATENCY_RUNS,
            Got::Invalid => return None,
            Got::Valid(runs, _) => runs,
        };
        Some(Condition::Latency {
            field: field?,
            runs,
            threshold: threshold?,
        })
    }

    /// A clear threshold that does not sit below the open threshold: no hysteresis.
    fn hysteresis_error(
        &mut self,
        span: Range<usize>,
        clear_key: &Key,
        clear: f64,
        open_key: &Key,
        open: f64,
    ) {
        self.error(
            span,
            format!(
                "`{}` ({}) must be below `{}` ({})",
                clear_key.name,
                format_number(clear),
                open_key.name,
                format_number(open)
            ),
            "the gap between the two keeps a value hovering at the threshold from opening and clearing over and over; \
             leave it out for the default",
        );
    }

    /// A key of the other latency threshold (`clear_below_ms` with `above_baseline`, ...).
    fn mismatched(&mut self, span: Range<usize>, key: &Key, threshold: &Key) {
        self.error(
            span,
            format!(
                "`{}` does not go with `{}`",
                key.name, threshold.name
            ),
            "`above_ms` pairs with `clear_below_ms`; `above_baseline` with `clear_below_baseline` and `baseline`",
        );
    }
}

/// Whether a rule kind can read a probe kind's observations.
fn kind_applies(rule_kind: &str, probe: &ProbeKind) -> bool {
    match (rule_kind, probe) {
        // Every probe has runs that succeed or fail.
        ("failures", _) => true,
        // Echoes and RTTs are what icmp rounds measure.
        (_, ProbeKind::Icmp { .. }) => true,
        _ => false,
    }
}
