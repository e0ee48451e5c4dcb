//! `Config`: the validated agent configuration. Parsing reports every mistake at once, each with
//! file:line:column and a hint (see `vantage check`).
//!
//! The file format is documented for operators in the README's Configuration section; the example configs in
//! `config/` and the fixtures in `tests/fixtures/config/` (one per mistake, with the exact
//! message expected) are both tests.
//!
//! ## Layout
//! - this file: the types the rest of the agent codes against, and [`ConfigError`]'s rendering
//! - `validate`: the walk over the spanned TOML tree that checks every key and builds a [`Config`]
//! - `duration`: [`parse_duration`] / [`format_duration`] (`"500ms"`, `"1.5s"`, `"14d"`)
//! - `span`: [`LineIndex`], byte offsets to 1-based line:column
//! - `suggest`: edit-distance "did you mean" suggestions

mod duration;
mod span;
mod suggest;
mod validate;

pub use duration::{format_duration, parse_duration};
pub use span::LineIndex;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A fully validated configuration: every reference resolved, every timing possible.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub source: PathBuf,
    pub agent: AgentConfig,
    pub targets: Vec<Target>,
    pub probes: Vec<ProbeConfig>,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Agent name; default: the host name.
    pub name: String,
    /// The site (datacenter, cloud region) this agent runs in.
    pub site: String,
    /// Where the embedded store lives; default `./vantage-data` (relative paths are relative to the
    /// config file's directory).
    pub data_dir: PathBuf,
    /// How long the embedded store keeps observations; default 14 days.
    pub retention: Duration,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// A host name or an IP address literal.
    pub host: String,
    /// The site the target lives in; default "unknown".
    pub site: String,
    pub family: FamilyPreference,
    pub labels: BTreeMap<String, String>,
}

/// Which address family to use when `host` is a name that resolves to both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FamilyPreference {
    #[default]
    Any,
    V4,
    V6,
}

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub name: String,
    /// Time between runs against the same target.
    pub interval: Duration,
    /// Per-run wait for an answer (for ICMP: per echo).
    pub timeout: Duration,
    /// Names of the targets this probe runs against (all targets when the config omits the list).
    pub targets: Vec<String>,
    pub kind: ProbeKind,
}

/// Kind-specific settings: the closed set of probe kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    /// Smokeping-style rounds of `count` echoes, one every `spacing`.
    Icmp { count: u32, spacing: Duration },
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            errors: vec![ConfigError {
                path: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read config file: {e}"),
                hint: Some("check the path given to --config".into()),
            }],
        })?;
        Config::parse(&text, path)
    }

    /// Validate config text; `path` names the file in messages and anchors a relative `data_dir`.
    ///
    /// On failure every mistake is returned, in file order (a TOML syntax error stops the check:
    /// it is then the only one).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        validate::parse(text, path)
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// Every mistake found in a config, in file order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

/// One mistake: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; 0 when the mistake is not at one place (e.g. an unreadable file).
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl ConfigErrors {
    fn render(&self) -> String {
        self.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": error: {}", self.message)?;
        if let Some(hint) = &self.hint {
            // Continuation lines of a multi-line hint line up under its first line.
            write!(f, "\n  hint: {}", hint.replace('\n', "\n        "))?;
        }
        Ok(())
    }
}
