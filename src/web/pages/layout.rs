//! The frame every page shares (header, navigation, the stylesheet link) and the number formats
//! the pages share with `vantage report`.

use std::time::{Duration, SystemTime};

use maud::{DOCTYPE, Markup, html};

/// The one stylesheet, served at `/style.css` (the CSP allows styles from 'self' only).
pub const STYLESHEET: &str = r#"
body { font-family: sans-serif; margin: 0 1.5em 2em; color: #222; }
header { display: flex; gap: 1.5em; align-items: baseline; border-bottom: 2px solid #444; margin-bottom: 1em; }
header h1 { font-size: 1.3em; margin: 0.5em 0; }
nav a { margin-right: 1em; }
nav a.current { font-weight: bold; text-decoration: none; color: #000; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: middle; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.state-down td, tr.state-failing td { background: #fde8e8; }
tr.state-loss td { background: #fff4dd; }
.state { font-weight: bold; }
.state-ok .state { color: #26a626; }
.state-loss .state { color: #c87000; }
.state-down .state, .state-failing .state { color: #e00000; }
.incident-open { border-left: 4px solid #e00000; padding-left: 0.5em; }
.error { color: #b00000; }
.muted { color: #777; }
svg { display: block; max-width: 100%; height: auto; }
svg.sparkline { display: inline-block; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1em; }
.draft { max-width: 60em; }
.draft pre { background: #f4f4f4; padding: 0.5em; overflow-x: auto; }
"#;

/// Which navigation entry is the current page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Incidents,
    Agent,
    None,
}

/// A whole page: `title` in the tab and as the heading, `body` under the navigation.
pub fn page(title: &str, current: Nav, body: Markup) -> Markup {
    let link = |href: &str, label: &str, nav: Nav| {
        html! { a href=(href) class=[(current == nav).then_some("current")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — vantage" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    h1 { (title) }
                    nav {
                        (link("/", "Overview", Nav::Overview))
                        (link("/incidents", "Incidents", Nav::Incidents))
                        (link("/agent", "Agent", Nav::Agent))
                    }
                }
                main { (body) }
            }
        }
    }
}

/// Milliseconds with the precision `vantage report` prints; "-" when there is no value.
pub fn ms(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.3}"),
        Some(v) if v < 100.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// Loss as `vantage report` prints it: `12.5%`.
pub fn pct(loss: f64) -> String {
    format!("{loss:.1}%")
}

/// `2026-11-21T16:40:05Z`
pub fn at(timestamp_ns: i64) -> String {
    humantime::format_rfc3339_seconds(time(timestamp_ns)).to_string()
}

/// `3m 12s ago`
pub fn ago(timestamp_ns: i64, now: SystemTime) -> String {
    let elapsed = now.duration_since(time(timestamp_ns)).unwrap_or_default();
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(elapsed.as_secs()))
    )
}

pub fn time(timestamp_ns: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(timestamp_ns).unwrap_or(0))
}

/// A path segment for a link: everything but unreserved characters percent-encoded (names
/// from a store may hold `/`, `?`, `#` or markup).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_segments_encode_everything_but_unreserved_characters() {
        assert_eq!(segment("far-1.b_c~"), "far-1.b_c~");
        assert_eq!(segment("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(segment("<x> é"), "%3Cx%3E%20%C3%A9");
    }
}
