//! A smokeping-style chart of an incident's window, as SVG: per target a panel with the p10–p90
//! and p25–p75 "smoke" bands, the median line coloured by loss, rounds with 100% loss as red
//! bars, and the moment of detection (and resolution) marked. A service check gets a panel of its
//! headline time (http total, dns latency, tcp connect) with failed runs as red bars. Written by a
//! small SVG writer of our own: a few elements, escaped text, no dependency. The web page draws
//! its per-target charts with the same panel ([`smoke_chart`]).

use std::fmt::Write as _;

use super::evidence::{CheckSeries, Series};
use super::{Incident, Timestamp};
use crate::store::PingPoint;

const WIDTH: f64 = 800.0;
const PANEL_HEIGHT: f64 = 160.0;
const MARGIN_LEFT: f64 = 60.0;
const MARGIN_RIGHT: f64 = 20.0;
const TITLE_HEIGHT: f64 = 50.0;
const PANEL_GAP: f64 = 40.0;
/// Panels beyond this many targets are left out (they are in evidence.json).
pub const MAX_PANELS: usize = 6;

/// Loss colours, smokeping's idea: green for none, through blue and purple, to red.
pub fn loss_colour(loss_pct: f64) -> &'static str {
    match loss_pct {
        l if l <= 0.0 => "#26a626",
        l if l < 5.0 => "#0066ff",
        l if l < 20.0 => "#8a2be2",
        l if l < 50.0 => "#ff8c00",
        _ => "#e00000",
    }
}

/// A minimal SVG writer.
#[derive(Debug, Default)]
pub struct Svg {
    body: String,
}

/// Escape text for XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn points(coords: &[(f64, f64)]) -> String {
    coords
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Svg {
    pub fn rect(&mut self, class: &str, x: f64, y: f64, w: f64, h: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect class="{class}" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}"/>"#
        );
    }

    pub fn rect_translucent(&mut self, class: &str, x: f64, y: f64, w: f64, h: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect class="{class}" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}" fill-opacity="0.6"/>"#
        );
    }

    pub fn line(
        &mut self,
        class: &str,
        from: (f64, f64),
        to: (f64, f64),
        stroke: &str,
        width: f64,
    ) {
        let _ = writeln!(
            self.body,
            r#"<line class="{class}" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{stroke}" stroke-width="{width}"/>"#,
            from.0, from.1, to.0, to.1
        );
    }

    pub fn polygon(&mut self, class: &str, coords: &[(f64, f64)], fill: &str) {
        if coords.len() >= 3 {
            let _ = writeln!(
                self.body,
                r#"<polygon class="{class}" points="{}" fill="{fill}" stroke="none"/>"#,
                points(coords)
            );
        }
    }

    pub fn text(&mut self, class: &str, x: f64, y: f64, anchor: &str, text: &str) {
        let _ = writeln!(
            self.body,
            r#"<text class="{class}" x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-family="sans-serif" font-size="11">{}</text>"#,
            escape(text)
        );
    }

    pub fn finish(self, width: f64, height: f64, title: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}",
            self.finish_inline(width, height, title)
        )
    }

    /// The `<svg>` element alone, for inlining into an HTML page.
    pub fn finish_inline(self, width: f64, height: f64, title: &str) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\">\n\
             <title>{}</title>\n<rect class=\"background\" x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{height:.0}\" fill=\"#ffffff\"/>\n{}</svg>\n",
            escape(title),
            self.body
        )
    }
}

/// The chart of an incident's evidence window.
pub fn render(incident: &Incident) -> String {
    let evidence = &incident.evidence;
    let series: Vec<(String, Series)> = evidence
        .series
        .iter()
        .map(|s| (format!("{} ({})", s.target, s.probe), s.clone()))
        .chain(evidence.checks.iter().map(check_as_series))
        .take(MAX_PANELS)
        .collect();
    let panels = series.len().max(1);
    let height = TITLE_HEIGHT + panels as f64 * (PANEL_HEIGHT + PANEL_GAP);
    let mut svg = Svg::default();
    svg.text("title", WIDTH / 2.0, 14.0, "middle", &incident.title);
    legend(&mut svg, 30.0);
    // The time axis covers the window, but starts no earlier than the first data point: an
    // agent that started just before the breach has no history to show for the rest.
    let first_data = series
        .iter()
        .filter_map(|(_, s)| s.points.first().map(|p| p.timestamp_ns))
        .min();
    let from = match (evidence.window_from.map(Timestamp::unix_ns), first_data) {
        (Some(from), Some(first)) => Some(from.max(first)),
        (from, first) => from.or(first),
    };
    let to = evidence.window_to.map(Timestamp::unix_ns);
    if series.is_empty() {
        svg.text(
            "empty",
            WIDTH / 2.0,
            TITLE_HEIGHT + PANEL_HEIGHT / 2.0,
            "middle",
            "no history in the store for the affected targets",
        );
    }
    for (i, (label, s)) in series.iter().enumerate() {
        let top = TITLE_HEIGHT + i as f64 * (PANEL_HEIGHT + PANEL_GAP) + 10.0;
        let mut marks = vec![("detected", incident.detected_at, "detected")];
        marks.extend(incident.resolved_at.map(|at| ("resolved", at, "resolved")));
        panel(&mut svg, label, s, top, from, to, &marks);
    }
    svg.finish(WIDTH, height, &incident.title)
}

/// One target's smokeping chart from `from_ns` to `to_ns` (the web page's target charts): the
/// legend and one panel, as an inline `<svg>` element.
pub fn smoke_chart(title: &str, series: &Series, from_ns: i64, to_ns: i64) -> String {
    let mut svg = Svg::default();
    svg.text("title", WIDTH / 2.0, 14.0, "middle", title);
    legend(&mut svg, 30.0);
    panel(
        &mut svg,
        &format!("{} ({})", series.target, series.probe),
        series,
        TITLE_HEIGHT + 10.0,
        Some(from_ns),
        Some(to_ns),
        &[],
    );
    svg.finish_inline(WIDTH, TITLE_HEIGHT + PANEL_HEIGHT + PANEL_GAP, title)
}

/// A service check drawn as a ping series: its headline time of each successful run as the median
/// line, a failed run as a round that lost everything (a red bar).
fn check_as_series(check: &CheckSeries) -> (String, Series) {
    let field = check
        .runs
        .first()
        .map_or("time", |r| r.figures.headline_field());
    let points = check
        .runs
        .iter()
        .map(|run| PingPoint {
            timestamp_ns: run.at.unix_ns(),
            address: run.address.clone(),
            failure_kind: run.failure_kind.clone(),
            failure: run.failure.clone(),
            sent: 1,
            loss_pct: if run.success { 0.0 } else { 100.0 },
            rtt_p10_ms: None,
            rtt_p25_ms: None,
            rtt_median_ms: run.figures.headline_ms().filter(|_| run.success),
            rtt_p75_ms: None,
            rtt_p90_ms: None,
            rounds: 1,
            step_ns: 0,
        })
        .collect();
    let label = format!(
        "{} ({}: {} {field}, failed runs red)",
        check.target, check.probe, check.kind
    );
    let series = Series {
        probe: check.probe.clone(),
        target: check.target.clone(),
        points,
    };
    (label, series)
}

/// What the marks mean: smoke bands, and the loss colours of the median and the loss bars.
fn legend(svg: &mut Svg, y: f64) {
    let mut x = MARGIN_LEFT;
    svg.rect("legend", x, y - 8.0, 12.0, 8.0, "#dddddd");
    svg.text("legend", x + 15.0, y, "start", "p10–p90");
    x += 70.0;
    svg.rect("legend", x, y - 8.0, 12.0, 8.0, "#bbbbbb");
    svg.text("legend", x + 15.0, y, "start", "p25–p75");
    x += 70.0;
    svg.text("legend", x, y, "start", "median and loss bars by loss:");
    x += 165.0;
    for (loss, label) in [
        (0.0, "0%"),
        (1.0, "<5%"),
        (10.0, "<20%"),
        (30.0, "<50%"),
        (100.0, "≥50%"),
    ] {
        svg.rect("legend", x, y - 8.0, 12.0, 8.0, loss_colour(loss));
        svg.text("legend", x + 15.0, y, "start", label);
        x += 55.0;
    }
}

fn panel(
    svg: &mut Svg,
    label: &str,
    series: &Series,
    top: f64,
    from: Option<i64>,
    to: Option<i64>,
    marks: &[(&str, Timestamp, &str)],
) {
    let left = MARGIN_LEFT;
    let right = WIDTH - MARGIN_RIGHT;
    let bottom = top + PANEL_HEIGHT;
    svg.rect("panel", left, top, right - left, PANEL_HEIGHT, "#f8f8f8");
    svg.text("panel-title", left, top - 2.0, "start", label);
    let first = series.points.first().map(|p| p.timestamp_ns);
    let last = series.points.last().map(|p| p.timestamp_ns);
    let (Some(t0), Some(t1)) = (from.or(first), to.or(last)) else {
        return;
    };
    let span = (t1 - t0).max(1) as f64;
    let x = |ns: i64| left + (ns - t0) as f64 / span * (right - left);
    let max_ms = series
        .points
        .iter()
        .filter_map(|p| p.rtt_p90_ms.or(p.rtt_median_ms))
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let y = |ms: f64| bottom - (ms / max_ms).min(1.0) * PANEL_HEIGHT;

    // Axes and labels.
    svg.line("axis", (left, bottom), (right, bottom), "#000000", 1.0);
    svg.line("axis", (left, top), (left, bottom), "#000000", 1.0);
    svg.text(
        "y-label",
        left - 4.0,
        top + 10.0,
        "end",
        &format!("{max_ms:.1} ms"),
    );
    svg.text("y-label", left - 4.0, bottom, "end", "0 ms");
    // Five time labels: the ends, and three ticks between them.
    for i in 0..=4 {
        let ns = t0 + (t1 - t0) * i / 4;
        let px = x(ns);
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        if i > 0 && i < 4 {
            svg.line("tick", (px, bottom), (px, bottom + 3.0), "#000000", 1.0);
        }
        svg.text(
            "x-label",
            px,
            bottom + 14.0,
            anchor,
            &time_label(Timestamp::from_unix_ns(ns), t1 - t0),
        );
    }

    // Smoke: one band from the points that have the percentiles, broken where rounds had none.
    let runs = contiguous(series, |p| p.rtt_p10_ms.is_some() && p.rtt_p90_ms.is_some());
    for run in &runs {
        // A rollup bucket covers its whole step, as SmokePing draws it: a band from its start
        // to its end (one bucket alone is still a band, not a line of no width); a raw round
        // is an instant.
        let span_of = |p: &PingPoint| {
            let end = if p.step_ns > 0 {
                (p.timestamp_ns + p.step_ns).min(t1)
            } else {
                p.timestamp_ns
            };
            [x(p.timestamp_ns), x(end)]
        };
        let band = |lo: fn(&PingPoint) -> Option<f64>, hi: fn(&PingPoint) -> Option<f64>| {
            let upper: Vec<(f64, f64)> = run
                .iter()
                .flat_map(|p| {
                    let (ys, [a, b]) = (y(hi(p).unwrap_or(0.0)), span_of(p));
                    [(a, ys), (b, ys)]
                })
                .collect();
            let lower = run.iter().rev().flat_map(|p| {
                let (ys, [a, b]) = (y(lo(p).unwrap_or(0.0)), span_of(p));
                [(b, ys), (a, ys)]
            });
            let mut band: Vec<(f64, f64)> = upper.into_iter().chain(lower).collect();
            band.dedup();
            band
        };
        svg.polygon(
            "smoke-p10-p90",
            &band(|p| p.rtt_p10_ms, |p| p.rtt_p90_ms),
            "#dddddd",
        );
        svg.polygon(
            "smoke-p25-p75",
            &band(|p| p.rtt_p25_ms, |p| p.rtt_p75_ms),
            "#bbbbbb",
        );
    }
    // The median, each segment coloured by the loss of the round it ends at.
    let medians: Vec<&PingPoint> = series
        .points
        .iter()
        .filter(|p| p.rtt_median_ms.is_some())
        .collect();
    for pair in medians.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        svg.line(
            "median",
            (x(a.timestamp_ns), y(a.rtt_median_ms.unwrap_or(0.0))),
            (x(b.timestamp_ns), y(b.rtt_median_ms.unwrap_or(0.0))),
            loss_colour(b.loss_pct),
            2.0,
        );
    }
    if let [only] = medians.as_slice() {
        let (px, py) = (x(only.timestamp_ns), y(only.rtt_median_ms.unwrap_or(0.0)));
        svg.line(
            "median",
            (px - 2.0, py),
            (px + 2.0, py),
            loss_colour(only.loss_pct),
            2.0,
        );
    }
    // Loss: a tick under every round with loss, full height for rounds that lost everything.
    for p in series.points.iter().filter(|p| p.loss_pct > 0.0) {
        let px = x(p.timestamp_ns);
        let h = if p.rtt_median_ms.is_none() {
            PANEL_HEIGHT
        } else {
            (p.loss_pct / 100.0 * PANEL_HEIGHT).max(4.0)
        };
        svg.rect_translucent(
            "loss",
            px - 1.5,
            bottom - h,
            3.0,
            h,
            loss_colour(p.loss_pct),
        );
    }
    // Detection and resolution.
    let mark = |svg: &mut Svg, class: &str, at: Timestamp, label: &str, line: f64| {
        let ns = at.unix_ns();
        if ns >= t0 && ns <= t1 {
            let px = x(ns);
            let ty = top + 10.0 + 12.0 * line;
            svg.line(class, (px, top), (px, bottom), "#000000", 1.0);
            // Labels near the right edge go to the left of their line.
            if px > right - 60.0 {
                svg.text(class, px - 3.0, ty, "end", label);
            } else {
                svg.text(class, px + 3.0, ty, "start", label);
            }
        }
    };
    // Each label a line lower, so that a short incident's two labels do not overlap.
    for (line, (class, at, label)) in marks.iter().enumerate() {
        mark(svg, class, *at, label, line as f64);
    }
}

/// A time axis label: the time of day, with the date once the axis spans more than two days.
fn time_label(at: Timestamp, span_ns: i64) -> String {
    if span_ns > 2 * 86_400 * 1_000_000_000 {
        format!("{} {}", &at.date()[5..], &at.time()[..5])
    } else {
        at.time()
    }
}

/// Maximal runs of consecutive points that satisfy `keep`.
fn contiguous(series: &Series, keep: impl Fn(&PingPoint) -> bool) -> Vec<Vec<&PingPoint>> {
    let mut runs: Vec<Vec<&PingPoint>> = Vec::new();
    let mut current = Vec::new();
    for p in &series.points {
        if keep(p) {
            current.push(p);
        } else if !current.is_empty() {
            runs.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(ts: i64, step_ns: i64) -> PingPoint {
        PingPoint {
            timestamp_ns: ts,
            address: None,
            failure_kind: None,
            failure: None,
            sent: 20,
            loss_pct: 0.0,
            rtt_p10_ms: Some(1.0),
            rtt_p25_ms: Some(2.0),
            rtt_median_ms: Some(3.0),
            rtt_p75_ms: Some(4.0),
            rtt_p90_ms: Some(5.0),
            rounds: if step_ns > 0 { 15 } else { 1 },
            step_ns,
        }
    }

    fn smoke_vertices(svg: &str) -> usize {
        let start = "class=\"smoke-p10-p90\" points=\"";
        let at = svg.find(start).expect("a smoke band");
        let rest = &svg[at + start.len()..];
        rest[..rest.find('"').expect("end")].split(' ').count()
    }

    /// A 30-hour chart of a young store is one 5-minute bucket: it was drawn as a band of no
    /// width (two vertices), invisible; a bucket covers its step.
    #[test]
    fn a_rollup_bucket_is_a_band_over_its_step_and_a_raw_round_an_instant() {
        let hour = 3_600_000_000_000_i64;
        let series = |points| Series {
            probe: "ping".into(),
            target: "far".into(),
            points,
        };
        let bucket = smoke_chart(
            "b",
            &series(vec![point(hour, 300_000_000_000)]),
            0,
            30 * hour,
        );
        assert_eq!(smoke_vertices(&bucket), 4, "{bucket}");
        let raw = smoke_chart(
            "r",
            &series(vec![point(hour, 0), point(2 * hour, 0)]),
            0,
            3 * hour,
        );
        assert_eq!(
            smoke_vertices(&raw),
            4,
            "two rounds, two vertices each way: {raw}"
        );
    }
}
