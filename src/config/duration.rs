//! Durations in config files: a number and a unit, e.g. `"500ms"`, `"1.5s"`, `"14d"`.

use std::time::Duration;

/// The units a duration may use, longest first so that `ms` wins over `m`, with their length in
/// nanoseconds.
const UNITS: [(&str, u128); 5] = [
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
];

/// Parse a duration such as `"500ms"`, `"1.5s"`, `"20s"`, `"5m"`, `"1h"` or `"14d"`.
///
/// The number is a decimal with at most nine fractional digits; the unit is one of `ms`, `s`, `m`,
/// `h`, `d`. Spaces, signs and compound forms (`"1h30m"`) are rejected. The error is a short reason
/// meant to follow "invalid duration `...`: ".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("it is empty".into());
    }
    if text.contains(char::is_whitespace) {
        return Err("it contains a space".into());
    }
    if text.starts_with('-') {
        return Err("durations cannot be negative".into());
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err("it does not start with a number".into());
    }
    let unit_nanos = match UNITS.iter().find(|(name, _)| *name == unit) {
        Some((_, nanos)) => *nanos,
        None if unit.is_empty() => return Err("the unit is missing".into()),
        None => return Err(format!("unknown unit `{unit}`")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (number.contains('.') && !digits(fraction)) {
        return Err(format!("`{number}` is not a number"));
    }
    if fraction.len() > 9 {
        return Err("more than nine decimal places".into());
    }
    let too_large = || "it is too large".to_string();
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let fraction_nanos = match fraction {
        "" => 0,
        f => {
            let value: u128 = f.parse().map_err(|_| too_large())?;
            value * unit_nanos / 10u128.pow(f.len() as u32)
        }
    };
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or_else(too_large)?;
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| too_large())
}

/// Render a duration the way a config file would spell it: whole days, hours, minutes or seconds
/// when exact (`"14d"`, `"90s"`), else milliseconds below a second (`"900ms"`, `"0.25ms"`) and
/// seconds with up to three decimals above (`"1.5s"`, `"2.571s"`).
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    for (name, unit) in UNITS.iter().rev().take(4) {
        if nanos % unit == 0 {
            return format!("{}{name}", nanos / unit);
        }
    }
    let (value, unit) = if nanos < 1_000_000_000 {
        (nanos as f64 / 1e6, "ms")
    } else {
        (duration.as_secs_f64(), "s")
    };
    let value = format!("{value:.3}");
    format!(
        "{}{unit}",
        value.trim_end_matches('0').trim_end_matches('.')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        parse_duration(text).expect("a valid duration")
    }

    fn err(text: &str) -> String {
        parse_duration(text).expect_err("an invalid duration")
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("20s"), Duration::from_secs(20));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("2h"), Duration::from_secs(7200));
        assert_eq!(ok("14d"), Duration::from_secs(14 * 86_400));
        assert_eq!(ok("0s"), Duration::ZERO);
    }

    #[test]
    fn parses_fractions_exactly() {
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0.1s"), Duration::from_millis(100));
        assert_eq!(ok("0.5ms"), Duration::from_micros(500));
        assert_eq!(ok("1.25m"), Duration::from_secs(75));
        assert_eq!(ok("0.000000001s"), Duration::from_nanos(1));
        assert_eq!(ok("007s"), Duration::from_secs(7));
    }

    #[test]
    fn rejects_malformed_text_with_a_reason() {
        assert_eq!(err(""), "it is empty");
        assert_eq!(err("20"), "the unit is missing");
        assert_eq!(err("20 s"), "it contains a space");
        assert_eq!(err("s"), "it does not start with a number");
        assert_eq!(err("-5s"), "durations cannot be negative");
        assert_eq!(err("20sec"), "unknown unit `sec`");
        assert_eq!(err("1h30m"), "unknown unit `h30m`");
        assert_eq!(err("20S"), "unknown unit `S`");
        assert_eq!(err("1.5.2s"), "`1.5.2` is not a number");
        assert_eq!(err(".5s"), "`.5` is not a number");
        assert_eq!(err("5.s"), "`5.` is not a number");
        assert_eq!(err("0.0000000001s"), "more than nine decimal places");
        assert_eq!(err("99999999999999999999999d"), "it is too large");
        assert_eq!(err("300000000000d"), "it is too large");
    }

    #[test]
    fn formats_with_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(900)), "900ms");
        assert_eq!(format_duration(Duration::from_secs(20)), "20s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(14 * 86_400)), "14d");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_millis(10_300)), "10.3s");
        assert_eq!(format_duration(Duration::from_micros(250)), "0.25ms");
        assert_eq!(
            format_duration(Duration::from_nanos(2_571_428_571)),
            "2.571s"
        );
    }

    #[test]
    fn format_then_parse_round_trips_exact_values() {
        for text in ["900ms", "20s", "90s", "5m", "2h", "14d", "1.5s", "1.5ms"] {
            assert_eq!(format_duration(ok(text)), text);
        }
    }
}
