//! The `[[incident_sink]]` sections: where incident events go besides the directory. Same walk and
//! strictness as `[[output]]`; Alertmanager's keys are refused on a webhook, with the kind they
//! belong to.

use std::collections::BTreeMap;

use toml::de::DeTable;

use super::{Checker, Defined, Got, INCIDENT_SINK, INCIDENT_SINK_AM, Key, Names, ROOT, Value, a};
use crate::config::output::DEFAULT_TIMEOUT;
use crate::config::{
    ALERTMANAGER_BUILT_IN_LABELS as BUILT_IN_LABELS, IncidentSinkConfig, IncidentSinkKind,
};

const KINDS: [&str; 2] = ["alertmanager", "webhook"];
/// Alertmanager's default re-send period (Prometheus re-sends firing alerts every minute).
const DEFAULT_RESEND: std::time::Duration = std::time::Duration::from_secs(60);
/// The built-in sink; the name is taken.
/// The built-in sinks' names: the directory, and the outputs' `incident` points.
const BUILT_IN: [&str; 2] = ["directory", "outputs"];

impl Checker<'_> {
    pub(super) fn incident_sinks(&mut self, root: &DeTable<'_>) -> Vec<IncidentSinkConfig> {
        let mut sinks = Vec::new();
        let Some(value) = root.get("incident_sink") else {
            return sinks;
        };
        let section = "[[incident_sink]]";
        let mut names: Names = Names::default();
        for (table, span) in self.tables(value, &ROOT[6]) {
            let all: Vec<&Key> = INCIDENT_SINK.iter().chain(&INCIDENT_SINK_AM).collect();
            self.unknown_keys(table, section, &all, &[]);
            let [
                name_key,
                kind_key,
                url_key,
                timeout_key,
                token_env_key,
                token_file_key,
            ] = &INCIDENT_SINK;
            let [labels_key, resend_key] = &INCIDENT_SINK_AM;

            let name = self.sink_name(table, section, &span, name_key, &mut names);
            let kind = self.choice(table, kind_key, "incident sink kind", &KINDS, false);
            let kind = self.required(
                kind,
                section,
                &span,
                kind_key,
                ": alertmanager (Prometheus Alertmanager, API v2) or webhook (a JSON POST per event)",
            );
            let url = self.string(table, url_key);
            let url = self.required(
                url,
                section,
                &span,
                url_key,
                ": Alertmanager's base URL, or the webhook's POST URL",
            );
            let url = match (url, &kind) {
                (Got::Valid(url, url_span), Got::Valid(kind, _)) => {
                    self.sink_url(url, url_span, kind).then(|| url.to_string())
                }
                _ => None,
            };
            let timeout = match self.positive_duration(table, timeout_key) {
                Got::Valid(timeout, _) => Some(timeout),
                Got::Absent => Some(DEFAULT_TIMEOUT),
                Got::Invalid => None,
            };
            let token = self.secret(table, token_env_key, token_file_key);

            let kind = match kind {
                Got::Valid("alertmanager", _) => {
                    let labels = match table.get(labels_key.name) {
                        Some(value) => self.alert_labels(value, labels_key),
                        None => Some(BTreeMap::new()),
                    };
                    let resend = match self.positive_duration(table, resend_key) {
                        Got::Valid(resend, _) => Some(resend),
                        Got::Absent => Some(DEFAULT_RESEND),
                        Got::Invalid => None,
                    };
                    labels
                        .zip(resend)
                        .map(|(labels, resend)| IncidentSinkKind::Alertmanager { labels, resend })
                }
                Got::Valid(_, _) => {
                    for key in &INCIDENT_SINK_AM {
                        if let Some((k, _)) = table.get_key_value(key.name) {
                            self.error(
                                k.span(),
                                format!(
                                    "`{}` is a key of alertmanager sinks; this sink is webhook",
                                    key.name
                                ),
                                "remove it, or set `kind = \"alertmanager\"`",
                            );
                        }
                    }
                    Some(IncidentSinkKind::Webhook)
                }
                _ => None,
            };
            if let (Some(name), Some(url), Some(timeout), Some(token), Some(kind)) =
                (name, url, timeout, token, kind)
            {
                sinks.push(IncidentSinkConfig {
                    name: name.to_string(),
                    url,
                    timeout,
                    token,
                    kind,
                });
            }
        }
        sinks
    }

    /// A sink's name: required, log-friendly, unique, and not a built-in sink's.
    fn sink_name<'t>(
        &mut self,
        table: &'t DeTable<'_>,
        section: &str,
        span: &std::ops::Range<usize>,
        key: &Key,
        names: &mut Names,
    ) -> Option<&'t str> {
        let name = self.string(table, key);
        let why = ": deliveries are tracked per sink name in incidents.db";
        let Got::Valid(name, name_span) = self.required(name, section, span, key, why) else {
            return None;
        };
        if !self.tag_name("incident sink name", name, name_span.clone(), key.example) {
            return None;
        }
        if BUILT_IN.contains(&name) {
            self.error(
                name_span,
                format!("incident sink name `{name}` is taken by a built-in sink"),
                "choose another name, e.g. `name = \"alertmanager\"`",
            );
            return None;
        }
        if let Some(first) = names.get(name) {
            let first_line = self.line(&first.span);
            self.error(
                name_span,
                format!(
                    "duplicate incident sink name `{name}` (first defined at line {first_line})"
                ),
                "deliveries are tracked per sink name: rename one of them",
            );
            return None;
        }
        names.push(Defined {
            name: name.to_string(),
            span: name_span,
        });
        Some(name)
    }

    /// An http(s) URL without credentials (they would end up in logs: use `token_env`); an
    /// Alertmanager URL is a base URL, without a query (`/api/v2/alerts` is appended).
    fn sink_url(&mut self, url: &str, span: std::ops::Range<usize>, kind: &str) -> bool {
        let problem = match reqwest::Url::parse(url) {
            Err(e) => Some(format!("`{url}` is not a URL: {e}")),
            Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => Some(format!(
                "scheme {:?} of `{url}` is not http or https",
                parsed.scheme()
            )),
            Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => Some(
                "credentials in the URL would end up in logs; use token_env or token_file"
                    .to_string(),
            ),
            Ok(parsed) if kind == "alertmanager" && parsed.query().is_some() => Some(format!(
                "give Alertmanager's base URL without a query; `/api/v2/alerts` is appended to `{url}`"
            )),
            Ok(_) => None,
        };
        match problem {
            Some(message) => {
                self.error(
                    span,
                    message,
                    match kind {
                        "alertmanager" => "e.g. `url = \"http://127.0.0.1:9093\"`",
                        _ => "e.g. `url = \"https://hooks.example.net/vantage\"`",
                    },
                );
                false
            }
            None => true,
        }
    }

    /// Extra alert labels: Prometheus label names (`[A-Za-z_][A-Za-z0-9_]*`), non-empty string
    /// values, none of the labels every alert already carries.
    fn alert_labels(&mut self, value: &Value<'_>, key: &Key) -> Option<BTreeMap<String, String>> {
        let Some(table) = value.get_ref().as_table() else {
            self.wrong_type(value, key);
            return None;
        };
        let mut labels = BTreeMap::new();
        let mut valid = true;
        for (label, value) in table.iter() {
            let label_str: &str = label.get_ref();
            if BUILT_IN_LABELS.contains(&label_str) {
                self.error(
                    label.span(),
                    format!("label `{label_str}` is set on every alert by vantage"),
                    format!("remove it, or rename it, e.g. `peer_{label_str}`"),
                );
                valid = false;
            } else if !is_label_name(label_str) {
                let fixed: String = label_str
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                self.error(
                    label.span(),
                    format!("`{label_str}` is not a valid Alertmanager label name"),
                    format!(
                        "use letters, digits and `_`, not starting with a digit, e.g. `{fixed}`"
                    ),
                );
                valid = false;
            }
            match value.get_ref().as_str() {
                Some("") => {
                    self.error(
                        value.span(),
                        format!("label `{label_str}` is empty"),
                        "give it a value or remove it",
                    );
                    valid = false;
                }
                None => {
                    self.error(
                        value.span(),
                        format!(
                            "label `{label_str}` must be a string, not {}",
                            a(value.get_ref().type_str())
                        ),
                        format!("e.g. `{}`", key.example),
                    );
                    valid = false;
                }
                Some(text) => {
                    labels.insert(label_str.to_string(), text.to_string());
                }
            }
        }
        valid.then_some(labels)
    }
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
