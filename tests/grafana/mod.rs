//! What the dashboard tests need to read Grafana dashboards the way Grafana does: every query a
//! dashboard runs (panel targets, template variables, annotations), the names it references, the
//! columns it promises, and the InfluxDB data source's macro and variable interpolation. Also the
//! README's measurement schema, the contract the queries are checked against.
//!
//! Conventions of `dashboards/generate.py` this relies on: identifiers are double-quoted, every
//! selected expression of a panel query is named with `AS "…"`.
#![allow(dead_code)] // each test uses a part of it

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every dashboard in `dashboards/json/`: (file name, parsed JSON), sorted by name.
pub fn dashboards() -> Vec<(String, Value)> {
    let dir = repo().join("dashboards/json");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("read dashboard");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
            (file_name(path), json)
        })
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

/// Where a query comes from, and what Grafana does with its answer.
#[derive(Debug, Clone)]
pub enum Source {
    /// A panel target; `repeat` names the variable the panel is repeated over.
    Panel {
        title: String,
        repeat: Option<String>,
    },
    /// A template variable's query (`SHOW TAG VALUES …`): its values fill the variable.
    Variable { name: String, multi: bool },
    /// An annotation query: these columns become the annotation's title, text and tags.
    Annotation { name: String, columns: Vec<String> },
}

#[derive(Debug, Clone)]
pub struct Query {
    pub dashboard: String,
    pub source: Source,
    pub text: String,
}

impl Query {
    pub fn describe(&self) -> String {
        let what = match &self.source {
            Source::Panel { title, .. } => format!("panel \"{title}\""),
            Source::Variable { name, .. } => format!("variable ${name}"),
            Source::Annotation { name, .. } => format!("annotation \"{name}\""),
        };
        format!("{} {what}: {}", self.dashboard, self.text)
    }
}

/// Every query of a dashboard, variables first (in their order: later ones use earlier ones).
pub fn queries(dashboard: &str, json: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    let query = |source, text: &Value| Query {
        dashboard: dashboard.to_string(),
        source,
        text: text
            .as_str()
            .unwrap_or_else(|| panic!("{dashboard}: a query that is not a string: {text}"))
            .to_string(),
    };
    for var in json["templating"]["list"].as_array().expect("templating") {
        let source = Source::Variable {
            name: var["name"].as_str().expect("variable name").to_string(),
            multi: var["multi"].as_bool().unwrap_or(false)
                || var["includeAll"].as_bool().unwrap_or(false),
        };
        out.push(query(source, &var["query"]));
    }
    for panel in json["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let source = Source::Panel {
                title: panel["title"].as_str().expect("title").to_string(),
                repeat: panel["repeat"].as_str().map(String::from),
            };
            out.push(query(source, &target["query"]));
        }
    }
    for annotation in json["annotations"]["list"].as_array().expect("annotations") {
        let target = &annotation["target"];
        if target.is_null() {
            continue; // Grafana's built-in annotations (its own database)
        }
        let columns = ["titleColumn", "textColumn", "tagsColumn"]
            .iter()
            .filter_map(|key| target[key].as_str())
            .flat_map(|list| list.split(','))
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        let source = Source::Annotation {
            name: annotation["name"].as_str().expect("name").to_string(),
            columns,
        };
        out.push(query(source, &target["query"]));
    }
    out
}

/// The names a query references: (measurements, tags and fields).
pub fn references(query: &str) -> (Vec<String>, Vec<String>) {
    let from = Regex::new(r#"FROM\s+("[^"]+"(?:\s*,\s*"[^"]+")*)"#).expect("regex");
    let quoted = Regex::new(r#""([^"]+)""#).expect("regex");
    let measurements: Vec<String> = from
        .captures_iter(query)
        .flat_map(|c| {
            quoted
                .captures_iter(c.get(1).expect("group").as_str())
                .map(|q| q[1].to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let aliases = aliases(query);
    let names = quoted
        .captures_iter(query)
        .map(|c| c[1].to_string())
        .filter(|n| !measurements.contains(n) && !aliases.contains(n))
        .collect();
    (measurements, names)
}

/// The `AS "name"` aliases, in order: the columns a panel query promises after `time`.
pub fn aliases(query: &str) -> Vec<String> {
    Regex::new(r#"\bAS\s+"([^"]+)""#)
        .expect("regex")
        .captures_iter(query)
        .map(|c| c[1].to_string())
        .collect()
}

/// The quoted names between `SELECT` and `FROM` of a raw (unaggregated) select.
pub fn selected(query: &str) -> Vec<String> {
    let select = Regex::new(r#"SELECT\s+(.*?)\s+FROM"#).expect("regex");
    let quoted = Regex::new(r#""([^"]+)""#).expect("regex");
    select
        .captures(query)
        .map(|c| {
            quoted
                .captures_iter(c.get(1).expect("group").as_str())
                .map(|q| q[1].to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The tag keys of `GROUP BY` (not `time(…)`): every series of the answer must carry them.
pub fn group_by_tags(query: &str) -> Vec<String> {
    let group = Regex::new(r"GROUP BY\s+(.*?)(?:\s+fill\(|$)").expect("regex");
    let quoted = Regex::new(r#""([^"]+)""#).expect("regex");
    group
        .captures(query)
        .map(|c| {
            quoted
                .captures_iter(c.get(1).expect("group").as_str())
                .map(|q| q[1].to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The README's "Measurement schema": measurement → the tags and fields it may be queried by
/// (the common tags, less those its row says it does not carry, plus every name its row lists).
pub fn readme_schema() -> BTreeMap<String, BTreeSet<String>> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let section = readme
        .split("## Measurement schema")
        .nth(1)
        .expect("README has a \"## Measurement schema\" section");
    let ticked = Regex::new(r"`([^`]+)`").expect("regex");
    let names = |text: &str| -> BTreeSet<String> {
        ticked
            .captures_iter(text)
            .map(|c| c[1].to_string())
            .collect()
    };
    let sentence = section
        .split("Every observation carries the tags")
        .nth(1)
        .and_then(|rest| rest.split("and the time").next())
        .expect("the common-tags sentence");
    let common = names(sentence);
    assert!(common.contains("target_site"), "common tags: {common:?}");
    let without = Regex::new(r"no ((?:`[^`]+`/?)+)").expect("regex");
    let mut schema = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let measurement = cells[1].trim_matches('`').to_string();
        let rest = cells[2..].join(" | ");
        let excluded = without
            .captures_iter(&rest)
            .flat_map(|c| names(&c[1]))
            .collect::<BTreeSet<_>>();
        let mut known: BTreeSet<String> = common.difference(&excluded).cloned().collect();
        known.extend(names(&without.replace_all(&rest, "")));
        schema.insert(measurement, known);
    }
    assert!(schema.len() >= 8, "schema rows: {schema:?}");
    schema
}

/// A variable's values as Grafana's InfluxDB data source writes them into a query: regex-escaped
/// (the dashboards use variables only inside `/^$var$/`), several as `(a|b)`.
pub fn format_values(values: &[String]) -> String {
    let escape = |value: &String| {
        value.chars().fold(String::new(), |mut out, c| {
            if "\\^$.|?*+()[]{}/".contains(c) {
                out.push('\\');
            }
            out.push(c);
            out
        })
    };
    let escaped: Vec<String> = values.iter().map(escape).collect();
    match escaped.as_slice() {
        [one] => one.clone(),
        many => format!("({})", many.join("|")),
    }
}

/// The query Grafana sends for a time range [`from_ms`, `to_ms`] with `interval_ms` buckets and
/// these variable values (already formatted).
pub fn interpolate(
    query: &str,
    variables: &BTreeMap<String, String>,
    from_ms: i64,
    to_ms: i64,
    interval_ms: i64,
) -> String {
    let interval = format!("{}s", interval_ms / 1000);
    // Longest names first: `$__interval_ms` before `$__interval`.
    let mut text = query
        .replace(
            "$timeFilter",
            &format!("time >= {from_ms}ms and time <= {to_ms}ms"),
        )
        .replace("$__interval_ms", &interval_ms.to_string())
        .replace("$__interval", &interval)
        .replace("$interval", &interval);
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        text = text
            .replace(&format!("${{{name}}}"), &variables[name])
            .replace(&format!("${name}"), &variables[name]);
    }
    let left = Regex::new(r"\$[A-Za-z_{]").expect("regex");
    assert!(
        !left.is_match(&text),
        "a variable or macro is left after interpolation: {text}"
    );
    text
}
