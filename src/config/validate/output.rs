//! The `[[output]]` sections: where results go besides the embedded store. Same walk and strictness
//! as the rest of the file; the output's own rules (URL shape, required keys per kind) come from
//! `OutputConfig::validate`, reported at the key they concern.

use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::{Checker, Got, Key, Names, OUTPUT, OUTPUT_V1, OUTPUT_V2, ROOT};
use crate::config::output::parse_size;
use crate::config::{OutputConfig, OutputKind, SecretSource};

const OUTPUT_KINDS: [&str; 2] = ["influxdb_v2", "influxdb_v1"];

impl Checker<'_> {
    pub(super) fn outputs(&mut self, root: &DeTable<'_>) -> Vec<OutputConfig> {
        let mut outputs = Vec::new();
        let Some(value) = root.get("output") else {
            return outputs;
        };
        let section = "[[output]]";
        let mut names: Names = Names::default();
        for (table, span) in self.tables(value, &ROOT[5]) {
            let all: Vec<&Key> = OUTPUT.iter().chain(&OUTPUT_V2).chain(&OUTPUT_V1).collect();
            self.unknown_keys(table, section, &all, &[]);
            let [
                name_key,
                kind_key,
                url_key,
                gzip_key,
                batch_key,
                flush_key,
                spool_key,
                timeout_key,
                retry_initial_key,
                retry_max_key,
                auth_retry_key,
            ] = &OUTPUT;
            let name = self.unique_name(
                table,
                section,
                &span,
                name_key,
                "output",
                ": it names the output in logs, self-metrics and `vantage report`",
                &mut names,
            );
            let kind = self.choice(table, kind_key, "output kind", &OUTPUT_KINDS, false);
            let kind = self.required(
                kind,
                section,
                &span,
                kind_key,
                ": influxdb_v2 (InfluxDB 2/3, VictoriaMetrics) or influxdb_v1",
            );
            let url = self.string(table, url_key);
            let url = self.required(url, section, &span, url_key, ": the base URL of the store");
            // Keys of the other kind, named with the kind they belong to.
            if let Got::Valid(kind, _) = &kind {
                let (foreign, theirs): (&[Key], &str) = match *kind {
                    "influxdb_v2" => (&OUTPUT_V1, "influxdb_v1"),
                    _ => (&OUTPUT_V2, "influxdb_v2"),
                };
                for key in foreign {
                    if let Some((k, _)) = table.get_key_value(key.name) {
                        self.error(
                            k.span(),
                            format!(
                                "`{}` is a key of {theirs} outputs; this output is {kind}",
                                key.name
                            ),
                            format!("remove it, or set `kind = \"{theirs}\"`"),
                        );
                    }
                }
            }
            let gzip = self.boolean(table, gzip_key);
            let batch =
                self.bounded_integer(table, batch_key, 1, 1_000_000, "lines per write request");
            let flush = self.positive_duration(table, flush_key);
            let spool = self.size(table, spool_key);
            let timeout = self.positive_duration(table, timeout_key);
            let retry_initial = self.positive_duration(table, retry_initial_key);
            let retry_max = self.positive_duration(table, retry_max_key);
            let auth_retry = self.positive_duration(table, auth_retry_key);

            let (Some(name), Got::Valid(kind, _), Got::Valid(url, url_span)) = (name, kind, url)
            else {
                continue;
            };
            let [org_key, bucket_key, token_env_key, token_file_key] = &OUTPUT_V2;
            let [
                db_key,
                rp_key,
                username_key,
                password_env_key,
                password_file_key,
            ] = &OUTPUT_V1;
            // Build the output even when a required key is missing (already reported), so that
            // `OutputConfig::validate` can still report the rest of its mistakes.
            let mut invalid = false;
            let mut output = if kind == "influxdb_v2" {
                let org = self.string(table, org_key);
                let bucket = self.string(table, bucket_key);
                let org = self.required(
                    org,
                    section,
                    &span,
                    org_key,
                    ": the InfluxDB organization (any value for VictoriaMetrics)",
                );
                let bucket = self.required(
                    bucket,
                    section,
                    &span,
                    bucket_key,
                    ": the bucket to write to",
                );
                let token = self.secret(table, token_env_key, token_file_key);
                invalid |= token.is_none();
                OutputConfig::influxdb_v2(
                    name,
                    url,
                    or_reported(org, &mut invalid),
                    or_reported(bucket, &mut invalid),
                    token.flatten(),
                )
            } else {
                let db = self.string(table, db_key);
                let db = self.required(db, section, &span, db_key, ": the InfluxDB 1.x database");
                let rp = self.string(table, rp_key);
                let username = self.string(table, username_key);
                let password = self.secret(table, password_env_key, password_file_key);
                invalid |= password.is_none()
                    || matches!(rp, Got::Invalid)
                    || matches!(username, Got::Invalid);
                let username = match username {
                    Got::Valid(u, _) => Some(u.to_string()),
                    _ => None,
                };
                let db = or_reported(db, &mut invalid);
                let mut output =
                    OutputConfig::influxdb_v1(name, url, db, username, password.flatten());
                if let (Got::Valid(rp, _), OutputKind::InfluxdbV1 { rp: slot, .. }) =
                    (rp, &mut output.kind)
                {
                    *slot = Some(rp.to_string());
                }
                output
            };
            let mut set = |got: Got<Duration>, slot: &mut Duration| match got {
                Got::Valid(d, _) => *slot = d,
                Got::Invalid => invalid = true,
                Got::Absent => {}
            };
            set(flush, &mut output.flush_interval);
            set(timeout, &mut output.timeout);
            set(retry_initial, &mut output.retry_initial);
            set(retry_max, &mut output.retry_max);
            set(auth_retry, &mut output.auth_retry);
            match gzip {
                Got::Valid(g, _) => output.gzip = g,
                Got::Invalid => invalid = true,
                Got::Absent => {}
            }
            match batch {
                Got::Valid(b, _) => output.batch_size = b as usize,
                Got::Invalid => invalid = true,
                Got::Absent => {}
            }
            match spool {
                Got::Valid(s, _) => output.spool_max_bytes = s,
                Got::Invalid => invalid = true,
                Got::Absent => {}
            }
            let reported = |field: &str| {
                ["org", "bucket", "db"].contains(&field) && table.get(field).is_none()
            };
            for (field, message) in output.validate().into_iter().filter(|(f, _)| !reported(f)) {
                let at = table
                    .get(field)
                    .map_or_else(|| url_span.clone(), |v| v.span());
                self.error(
                    at,
                    format!("output `{}`: {message}", output.name),
                    format!("e.g. `{}`", example_for(field)),
                );
                invalid = true;
            }
            if !invalid {
                outputs.push(output);
            }
        }
        outputs
    }

    /// A secret given by reference: `Some(None)` when neither key is there, `None` when a value
    /// was wrong or both were given (reported).
    pub(super) fn secret(
        &mut self,
        table: &DeTable<'_>,
        env: &Key,
        file: &Key,
    ) -> Option<Option<SecretSource>> {
        let from_env = self.string(table, env);
        let from_file = self.string(table, file);
        match (from_env, from_file) {
            (Got::Invalid, _) | (_, Got::Invalid) => None,
            (Got::Valid(_, _), Got::Valid(_, span)) => {
                self.error(
                    span,
                    format!("give either `{}` or `{}`, not both", env.name, file.name),
                    "keep the one the secret really comes from".to_string(),
                );
                None
            }
            (Got::Valid(var, _), Got::Absent) => Some(Some(SecretSource::Env(var.to_string()))),
            (Got::Absent, Got::Valid(path, _)) => Some(Some(SecretSource::File(path.into()))),
            (Got::Absent, Got::Absent) => Some(None),
        }
    }

    /// A size in bytes: an integer, or a string with a unit ("512MiB", "2GB").
    fn size(&mut self, table: &DeTable<'_>, key: &Key) -> Got<u64> {
        let Some(value) = table.get(key.name) else {
            return Got::Absent;
        };
        let parsed = match value.get_ref() {
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| "must be a positive number of bytes".to_string()),
            DeValue::String(s) => parse_size(s),
            _ => {
                self.wrong_type(value, key);
                return Got::Invalid;
            }
        };
        match parsed {
            Ok(bytes) if bytes > 0 => Got::Valid(bytes, value.span()),
            Ok(_) => {
                self.error(
                    value.span(),
                    format!("`{}` must be more than zero", key.name),
                    format!("e.g. `{}`", key.example),
                );
                Got::Invalid
            }
            Err(reason) => {
                self.error(
                    value.span(),
                    format!("invalid size for `{}`: {reason}", key.name),
                    format!("e.g. `{}`", key.example),
                );
                Got::Invalid
            }
        }
    }
}

/// A required string's value, or "" (with `invalid` set) when it was missing or wrong: reported.
fn or_reported(got: Got<&str>, invalid: &mut bool) -> String {
    match got {
        Got::Valid(value, _) => value.to_string(),
        _ => {
            *invalid = true;
            String::new()
        }
    }
}

/// The example line of the key an `OutputConfig::validate` message concerns.
fn example_for(field: &str) -> &'static str {
    OUTPUT
        .iter()
        .chain(&OUTPUT_V2)
        .chain(&OUTPUT_V1)
        .find(|k| k.name == field)
        .map_or("the [[output]] reference in the README", |k| k.example)
}
