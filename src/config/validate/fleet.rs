//! The `[fleet]` section: which `[[output]]`'s store the fleet shares, the query dialect, where
//! queries go and their time budget.

use toml::de::DeTable;

use super::{Checker, FLEET, Got, ROOT};
use crate::config::{FleetConfig, FleetDialect, OutputConfig, OutputKind};

/// The default time budget of a fleet view: a draft never waits longer for it.
pub const DEFAULT_FLEET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl Checker<'_> {
    pub(super) fn fleet(
        &mut self,
        root: &DeTable<'_>,
        outputs: &[OutputConfig],
    ) -> Option<FleetConfig> {
        let value = root.get("fleet")?;
        let Some(table) = value.get_ref().as_table() else {
            self.wrong_type(value, &ROOT[7]);
            return None;
        };
        let span = value.span();
        self.unknown_keys(table, "[fleet]", &FLEET.each_ref(), &[]);
        let [output_key, dialect_key, url_key, timeout_key] = &FLEET;
        let output = self.string(table, output_key);
        let output = self.required(
            output,
            "[fleet]",
            &span,
            output_key,
            ": the name of the [[output]] every agent of the fleet writes to",
        );
        let output = match output {
            Got::Valid(name, name_span) => match outputs.iter().find(|o| o.name == name) {
                Some(output) => Some(output),
                None => {
                    let names: Vec<String> =
                        outputs.iter().map(|o| format!("`{}`", o.name)).collect();
                    self.error(
                        name_span,
                        format!("[fleet] output `{name}` is not an [[output]] of this file"),
                        if names.is_empty() {
                            "add the [[output]] the fleet writes to, and name it here".to_string()
                        } else {
                            format!("use one of: {}", names.join(", "))
                        },
                    );
                    None
                }
            },
            _ => None,
        };
        let dialect = match self.choice(
            table,
            dialect_key,
            "fleet dialect",
            &["influxql", "promql"],
            false,
        ) {
            Got::Valid("promql", _) => Some(Some(FleetDialect::Promql)),
            Got::Valid(_, _) => Some(Some(FleetDialect::Influxql)),
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let query_url = match self.string(table, url_key) {
            Got::Valid(url, url_span) => match reqwest::Url::parse(url) {
                Ok(parsed)
                    if matches!(parsed.scheme(), "http" | "https")
                        && parsed.username().is_empty()
                        && parsed.password().is_none()
                        && parsed.query().is_none() =>
                {
                    Some(Some(url.to_string()))
                }
                _ => {
                    self.error(
                        url_span,
                        format!(
                            "[fleet] query_url `{url}` is not an http(s) base URL without credentials or query"
                        ),
                        "e.g. `query_url = \"http://influx.example:8086\"` (the output's credentials are sent)",
                    );
                    None
                }
            },
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let timeout = match self.positive_duration(table, timeout_key) {
            Got::Valid(timeout, _) => Some(timeout),
            Got::Absent => Some(DEFAULT_FLEET_TIMEOUT),
            Got::Invalid => None,
        };
        let (output, dialect, query_url, timeout) = (output?, dialect?, query_url?, timeout?);
        let dialect = match (dialect, &output.kind) {
            (Some(dialect), _) => dialect,
            (None, OutputKind::InfluxdbV1 { .. }) => FleetDialect::Influxql,
            (None, OutputKind::InfluxdbV2 { .. }) => {
                self.error(
                    span,
                    format!(
                        "[fleet] needs `dialect`: output `{}` speaks the v2 write API, which both InfluxDB 2.x/3 and VictoriaMetrics serve",
                        output.name
                    ),
                    "add `dialect = \"promql\"` for VictoriaMetrics, or `dialect = \"influxql\"` for InfluxDB",
                );
                return None;
            }
        };
        Some(FleetConfig {
            output: output.name.clone(),
            dialect,
            query_url: query_url.unwrap_or_else(|| output.url.clone()),
            timeout,
            is_a_site: true,
        })
    }
}
