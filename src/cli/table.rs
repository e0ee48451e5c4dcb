//! Plain-text tables for terminals and bug reports: left-aligned first columns, right-aligned numbers.

use std::time::{Duration, SystemTime};

/// Render rows under a header; columns listed in `right` are right-aligned.
pub fn render(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if right.contains(&i) {
                    format!("{c:>w$}", w = widths[i])
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out.push('\n');
    out
}

/// Milliseconds with precision that suits the magnitude; "-" when there is no value.
pub fn ms(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.3}"),
        Some(v) if v < 100.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// "2026-11-21T16:40:05Z (12s ago)".
pub fn last_seen(timestamp_ns: i64, now: SystemTime) -> String {
    let at =
        SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(timestamp_ns).unwrap_or(0));
    let ago = now.duration_since(at).unwrap_or_default();
    let ago = humantime::format_duration(Duration::from_secs(ago.as_secs()));
    format!("{} ({ago} ago)", humantime::format_rfc3339_seconds(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_align_right_and_text_left() {
        let table = render(
            &["TARGET", "LOSS%"],
            &[
                vec!["a".into(), "5.0%".into()],
                vec!["long-name".into(), "100.0%".into()],
            ],
            &[1],
        );
        assert_eq!(
            table,
            "TARGET      LOSS%\na            5.0%\nlong-name  100.0%\n"
        );
    }

    #[test]
    fn last_seen_is_absolute_and_relative() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_072);
        assert_eq!(
            last_seen(1_800_000_000_000_000_000, now),
            "2027-01-15T08:00:00Z (1m 12s ago)"
        );
        assert_eq!(ms(None), "-");
        assert_eq!(ms(Some(0.0421)), "0.042");
        assert_eq!(ms(Some(42.123)), "42.12");
    }
}
