//! `OutputConfig`: one `[[output]]` of the agent — where to deliver every result besides the
//! embedded store. The TOML parser (`crate::config`, `validate/output.rs`) maps
//! `[[output]]` tables onto it (schema in the crate README, "Outputs").
//!
//! Secrets (v2 token, v1 password) are never held here: only *where* to read them (an environment
//! variable or a file), read again on every delivery attempt so a rotated token is picked up without
//! a restart. [`Secret`] prints as `***` in `Debug`, and no error message contains one.

use std::path::PathBuf;
use std::time::Duration;

/// Default lines per write request (InfluxData recommends 5,000).
pub const DEFAULT_BATCH_SIZE: usize = 5_000;
/// Default wait before sending a batch that is not full.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Default bound of the durable spool per output, in bytes of line protocol (the SQLite file is
/// larger by its indexes and page overhead, roughly ×1.5).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
/// Default HTTP request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default first retry delay after a 5xx, 429 or network error; doubles per failure.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Default cap of the retry delay.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(60);
/// Default retry delay after 401/403 (and other "fix the config" answers such as 404).
pub const DEFAULT_AUTH_RETRY: Duration = Duration::from_secs(60);

/// One output: a time-series database reached over HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputConfig {
    /// Unique name; tags the output's self-metrics and names it in logs and `vantage report`.
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:8428` or `https://influx.example/influx` (a path prefix is
    /// kept; the API path is appended).
    pub url: String,
    pub kind: OutputKind,
    /// Compress request bodies with gzip (default true).
    pub gzip: bool,
    /// Lines per write request (default 5,000). Halved for the rest of the run after a 413.
    pub batch_size: usize,
    /// How long a batch that is not full waits for more points (default 1 s).
    pub flush_interval: Duration,
    /// Bound of this output's spool in bytes of line protocol; beyond it the oldest points are
    /// dropped and counted (default 1 GiB).
    pub spool_max_bytes: u64,
    /// Per-request timeout (default 10 s).
    pub timeout: Duration,
    /// First retry delay after a 5xx, 429 or network error (default 1 s); doubles per failure,
    /// with jitter, up to `retry_max`; a `Retry-After` header is a floor.
    pub retry_initial: Duration,
    /// Cap of the retry delay (default 60 s).
    pub retry_max: Duration,
    /// Retry delay after 401/403 or another answer that needs a human (default 60 s).
    pub auth_retry: Duration,
}

/// The write API an output speaks.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputKind {
    /// InfluxDB v2 write API (`POST /api/v2/write?org=&bucket=&precision=ns`, `Authorization:
    /// Token …`): InfluxDB 2.x, InfluxDB 3 and VictoriaMetrics.
    InfluxdbV2 {
        org: String,
        bucket: String,
        /// None: send no `Authorization` header (e.g. VictoriaMetrics without auth).
        token: Option<SecretSource>,
    },
    /// InfluxDB 1.x write API (`POST /write?db=&rp=&precision=ns`, HTTP basic auth).
    InfluxdbV1 {
        db: String,
        rp: Option<String>,
        username: Option<String>,
        password: Option<SecretSource>,
    },
}

impl OutputKind {
    /// The `kind = "…"` name in the config file.
    pub fn name(&self) -> &'static str {
        match self {
            OutputKind::InfluxdbV2 { .. } => "influxdb_v2",
            OutputKind::InfluxdbV1 { .. } => "influxdb_v1",
        }
    }
}

/// Where a secret is read from (`token_env`/`token_file`, `password_env`/`password_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The name of an environment variable (not its value).
    Env(String),
    /// A file whose content (surrounding whitespace trimmed) is the secret; read on every attempt.
    File(PathBuf),
}

/// A secret value. Never printed: `Debug` shows `***`, and it implements no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that needs it: an HTTP header marked sensitive.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a secret could not be read; names the source, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set (or not UTF-8)")]
    EnvMissing(String),
    #[error("cannot read secret file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0} is empty")]
    Empty(String),
}

impl SecretSource {
    /// Read the secret now (files are re-read on every call, so rotation needs no restart).
    pub fn read(&self) -> Result<Secret, SecretError> {
        let (value, what) = match self {
            SecretSource::Env(name) => (
                std::env::var(name).map_err(|_| SecretError::EnvMissing(name.clone()))?,
                format!("environment variable {name}"),
            ),
            SecretSource::File(path) => (
                std::fs::read_to_string(path).map_err(|e| SecretError::File {
                    path: path.clone(),
                    reason: e.kind().to_string(),
                })?,
                format!("secret file {}", path.display()),
            ),
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(SecretError::Empty(what));
        }
        Ok(Secret(value.to_string()))
    }
}

/// A size for `spool_max_bytes`: an integer number of bytes or a number with a unit — `B`, `KB`,
/// `MB`, `GB` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024), e.g. `"512MiB"`, `"1.5GB"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write e.g. \"512MiB\" or \"2GB\""))?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?}; use B, KB, MB, GB, KiB, MiB or GiB"
            ));
        }
    };
    Ok((number * scale as f64).round() as u64)
}

impl OutputConfig {
    /// An InfluxDB v2 / InfluxDB 3 / VictoriaMetrics output with every default.
    pub fn influxdb_v2(
        name: impl Into<String>,
        url: impl Into<String>,
        org: impl Into<String>,
        bucket: impl Into<String>,
        token: Option<SecretSource>,
    ) -> OutputConfig {
        OutputConfig::with_kind(
            name,
            url,
            OutputKind::InfluxdbV2 {
                org: org.into(),
                bucket: bucket.into(),
                token,
            },
        )
    }

    /// An InfluxDB 1.x output with every default.
    pub fn influxdb_v1(
        name: impl Into<String>,
        url: impl Into<String>,
        db: impl Into<String>,
        username: Option<String>,
        password: Option<SecretSource>,
    ) -> OutputConfig {
        OutputConfig::with_kind(
            name,
            url,
            OutputKind::InfluxdbV1 {
                db: db.into(),
                rp: None,
                username,
                password,
            },
        )
    }

    fn with_kind(name: impl Into<String>, url: impl Into<String>, kind: OutputKind) -> Self {
        OutputConfig {
            name: name.into(),
            url: url.into(),
            kind,
            gzip: true,
            batch_size: DEFAULT_BATCH_SIZE,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            timeout: DEFAULT_TIMEOUT,
            retry_initial: DEFAULT_RETRY_INITIAL,
            retry_max: DEFAULT_RETRY_MAX,
            auth_retry: DEFAULT_AUTH_RETRY,
        }
    }

    /// Every mistake in this output, as `(field, message)` pairs (empty when valid), so the config
    /// parser can report them with file positions.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.name.trim().is_empty() {
            errors.push(("name", "an output needs a non-empty name".to_string()));
        }
        match reqwest::Url::parse(&self.url) {
            Ok(url) => {
                if !matches!(url.scheme(), "http" | "https") {
                    errors.push((
                        "url",
                        format!("scheme {:?} is not http or https", url.scheme()),
                    ));
                }
                if url.password().is_some() || !url.username().is_empty() {
                    errors.push((
                        "url",
                        "credentials in the URL would end up in logs; use token_env/token_file or username + password_env/password_file".to_string(),
                    ));
                }
                if url.query().is_some() {
                    errors.push((
                        "url",
                        "give the base URL without a query; org/bucket/db/rp are separate keys"
                            .to_string(),
                    ));
                }
            }
            Err(e) => errors.push(("url", format!("not a URL: {e}"))),
        }
        match &self.kind {
            OutputKind::InfluxdbV2 { org, bucket, .. } => {
                if bucket.trim().is_empty() {
                    errors.push(("bucket", "influxdb_v2 needs a bucket".to_string()));
                }
                if org.trim().is_empty() {
                    errors.push(("org", "influxdb_v2 needs an org".to_string()));
                }
            }
            OutputKind::InfluxdbV1 {
                db,
                username,
                password,
                ..
            } => {
                if db.trim().is_empty() {
                    errors.push(("db", "influxdb_v1 needs a db".to_string()));
                }
                if password.is_some() && username.is_none() {
                    errors.push((
                        "username",
                        "a password needs a username (HTTP basic auth)".to_string(),
                    ));
                }
            }
        }
        if self.batch_size == 0 {
            errors.push(("batch_size", "must be at least 1".to_string()));
        }
        if self.spool_max_bytes < 64 * 1024 {
            errors.push((
                "spool_max_bytes",
                "must be at least 64 KiB (one batch of points)".to_string(),
            ));
        }
        for (field, value) in [
            ("timeout", self.timeout),
            ("retry_initial", self.retry_initial),
            ("retry_max", self.retry_max),
            ("auth_retry", self.auth_retry),
        ] {
            if value.is_zero() {
                errors.push((field, "must be longer than zero".to_string()));
            }
        }
        if self.retry_max < self.retry_initial {
            errors.push((
                "retry_max",
                "must not be shorter than retry_initial".to_string(),
            ));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cr3t-t0ken\n").expect("write token");
        let config = OutputConfig::influxdb_v2(
            "vm",
            "http://127.0.0.1:8428",
            "o",
            "b",
            Some(SecretSource::File(file.clone())),
        );
        let secret = SecretSource::File(file).read().expect("read token");
        assert_eq!(secret.expose(), "s3cr3t-t0ken");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn secret_errors_name_the_source_not_a_value() {
        let error = SecretSource::Env("VANTAGE_TEST_SURELY_UNSET_VAR".into())
            .read()
            .expect_err("unset");
        assert_eq!(
            error.to_string(),
            "environment variable VANTAGE_TEST_SURELY_UNSET_VAR is not set (or not UTF-8)"
        );
        let error = SecretSource::File("/nonexistent/vantage/token".into())
            .read()
            .expect_err("missing file");
        assert_eq!(
            error.to_string(),
            "cannot read secret file /nonexistent/vantage/token: entity not found"
        );
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn validation_reports_every_mistake() {
        let mut config = OutputConfig::influxdb_v1(
            "",
            "ftp://user:pw@host/?db=x",
            "",
            None,
            Some(SecretSource::Env("P".into())),
        );
        config.batch_size = 0;
        config.retry_max = Duration::from_millis(1);
        let fields: Vec<&str> = config.validate().iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                "name",
                "url",
                "url",
                "url",
                "db",
                "username",
                "batch_size",
                "retry_max"
            ]
        );
        let ok = OutputConfig::influxdb_v2("vm", "http://127.0.0.1:8428/prefix", "o", "b", None);
        assert!(ok.validate().is_empty(), "{:?}", ok.validate());
    }
}
