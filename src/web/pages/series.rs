//! Chart series thinned to what a chart can show: a 30-day chart is 800 pixels wide, and 130,000
//! rounds would be a polygon of 260,000 points. Rounds are merged per time bucket: percentiles
//! averaged over the rounds that have them, loss weighted by echoes sent.

use std::fmt::Write as _;

use crate::incident::chart::loss_colour;
use crate::store::PingPoint;

/// Points per chart: about one per pixel pair of the 800-pixel panel.
pub const CHART_POINTS: usize = 400;

/// `points` (oldest first) merged into at most `buckets` equal time slices of `from_ns..=to_ns`.
pub fn thin(points: Vec<PingPoint>, from_ns: i64, to_ns: i64, buckets: usize) -> Vec<PingPoint> {
    if points.len() <= buckets || buckets == 0 {
        return points;
    }
    let width = ((to_ns - from_ns) / buckets as i64).max(1);
    let mut out: Vec<PingPoint> = Vec::with_capacity(buckets);
    let mut group: Vec<PingPoint> = Vec::new();
    let mut current = None;
    for point in points {
        let bucket = (point.timestamp_ns - from_ns) / width;
        if current.is_some_and(|c| c != bucket) {
            out.push(merge(std::mem::take(&mut group)));
        }
        current = Some(bucket);
        group.push(point);
    }
    if !group.is_empty() {
        out.push(merge(group));
    }
    out
}

fn merge(group: Vec<PingPoint>) -> PingPoint {
    let mean = |value: fn(&PingPoint) -> Option<f64>| {
        let values: Vec<f64> = group.iter().filter_map(value).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let sent: u32 = group.iter().map(|p| p.sent).sum();
    let loss_pct = if sent == 0 {
        group.iter().map(|p| p.loss_pct).sum::<f64>() / group.len() as f64
    } else {
        group
            .iter()
            .map(|p| p.loss_pct * f64::from(p.sent))
            .sum::<f64>()
            / f64::from(sent)
    };
    let last = group.last().cloned();
    PingPoint {
        // In i128: a few nanosecond timestamps of today already overflow an i64 sum.
        timestamp_ns: (group
            .iter()
            .map(|p| i128::from(p.timestamp_ns))
            .sum::<i128>()
            / group.len() as i128) as i64,
        address: last.as_ref().and_then(|p| p.address.clone()),
        failure_kind: last.as_ref().and_then(|p| p.failure_kind.clone()),
        failure: last.and_then(|p| p.failure),
        sent,
        loss_pct,
        rtt_p10_ms: mean(|p| p.rtt_p10_ms),
        rtt_p25_ms: mean(|p| p.rtt_p25_ms),
        rtt_median_ms: mean(|p| p.rtt_median_ms),
        rtt_p75_ms: mean(|p| p.rtt_p75_ms),
        rtt_p90_ms: mean(|p| p.rtt_p90_ms),
        rounds: group.iter().map(|p| p.rounds).sum(),
        step_ns: group.iter().map(|p| p.step_ns).max().unwrap_or(0),
    }
}

/// A 160×28 sparkline of the median (grey; a lone median a 4-pixel tick) with loss as bars in
/// the loss colours, as an inline `<svg>` element (numbers only: no text from the store goes in).
pub fn sparkline(points: &[PingPoint], from_ns: i64, to_ns: i64) -> String {
    let (w, h) = (160.0, 28.0);
    let span = (to_ns - from_ns).max(1) as f64;
    let x = |ns: i64| (ns - from_ns) as f64 / span * w;
    let max = points
        .iter()
        .filter_map(|p| p.rtt_median_ms)
        .fold(0.0_f64, f64::max)
        .max(0.001)
        * 1.2;
    let y = |ms: f64| h - ms / max * h;
    let mut svg = format!(
        r##"<svg class="sparkline" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><rect x="0" y="0" width="{w}" height="{h}" fill="#f4f4f4"/>"##
    );
    for p in points.iter().filter(|p| p.loss_pct > 0.0) {
        let bar = (p.loss_pct / 100.0 * h).max(3.0);
        let _ = write!(
            svg,
            r#"<rect class="sparkline-loss" x="{:.1}" y="{:.1}" width="2" height="{bar:.1}" fill="{}"/>"#,
            x(p.timestamp_ns),
            h - bar,
            loss_colour(p.loss_pct)
        );
    }
    // Written in place: the overview draws one per target (1,000 × 36 points).
    let mut line = String::with_capacity(points.len() * 12);
    let mut medians = points
        .iter()
        .filter_map(|p| Some((x(p.timestamp_ns), y(p.rtt_median_ms?))));
    let (first, second) = (medians.next(), medians.next());
    // A polyline of one point draws nothing: a single median is a short tick.
    let ticked = match (first, second) {
        (Some((x, y)), None) => [Some(((x - 2.0).max(0.0), y)), Some(((x + 2.0).min(w), y))],
        _ => [first, second],
    };
    for (x, y) in ticked.into_iter().flatten().chain(medians) {
        let separator = if line.is_empty() { "" } else { " " };
        let _ = write!(line, "{separator}{x:.1},{y:.1}");
    }
    if !line.is_empty() {
        let _ = write!(
            svg,
            r##"<polyline class="sparkline-median" points="{line}" fill="none" stroke="#444444" stroke-width="1.2"/>"##
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(ts: i64, median: Option<f64>, loss: f64) -> PingPoint {
        PingPoint {
            timestamp_ns: ts,
            address: None,
            failure_kind: None,
            failure: None,
            sent: 20,
            loss_pct: loss,
            rtt_p10_ms: median,
            rtt_p25_ms: median,
            rtt_median_ms: median,
            rtt_p75_ms: median,
            rtt_p90_ms: median,
            rounds: 1,
            step_ns: 0,
        }
    }

    /// The `points` of the sparkline's median line, as (x, y) pairs.
    fn median_line(svg: &str) -> Option<Vec<(f64, f64)>> {
        let marker = r#"class="sparkline-median" points=""#;
        let rest = &svg[svg.find(marker)? + marker.len()..];
        let pairs = rest[..rest.find('"').expect("closing quote")]
            .split(' ')
            .map(|pair| {
                let (x, y) = pair.split_once(',').expect("x,y");
                (x.parse().expect("x"), y.parse().expect("y"))
            })
            .collect();
        Some(pairs)
    }

    /// A polyline of one point draws nothing: a target with a single median (the first five
    /// minutes of a new target, or one round answered in hours of loss) must still show it.
    #[test]
    fn a_sparkline_with_one_median_draws_a_tick() {
        let svg = sparkline(&[point(50, Some(10.0), 0.0)], 0, 100);
        let line = median_line(&svg).unwrap_or_else(|| panic!("no median line: {svg}"));
        assert_eq!(line.len(), 2, "{svg}");
        let ((x0, y0), (x1, y1)) = (line[0], line[1]);
        assert!(x1 - x0 >= 3.0 && x0 <= 80.0 && x1 >= 80.0, "{svg}");
        assert_eq!(y0, y1, "{svg}");
        // At the chart's edge the tick stays inside it.
        let edge = median_line(&sparkline(&[point(100, Some(10.0), 0.0)], 0, 100)).expect("line");
        assert!(
            edge.iter().all(|(x, _)| (0.0..=160.0).contains(x)),
            "{edge:?}"
        );
        // Lost rounds (no median) beside it change nothing; none at all draws no line.
        let svg = sparkline(
            &[point(10, None, 100.0), point(50, Some(10.0), 0.0)],
            0,
            100,
        );
        assert_eq!(median_line(&svg).map(|l| l.len()), Some(2), "{svg}");
        assert_eq!(
            median_line(&sparkline(&[point(10, None, 100.0)], 0, 100)),
            None
        );
        // Two medians or more: the line through them, as before.
        let svg = sparkline(
            &[
                point(0, Some(10.0), 0.0),
                point(50, Some(5.0), 0.0),
                point(100, Some(10.0), 0.0),
            ],
            0,
            100,
        );
        let line = median_line(&svg).expect("line");
        assert_eq!(
            line.iter().map(|(x, _)| *x).collect::<Vec<_>>(),
            [0.0, 80.0, 160.0],
            "{svg}"
        );
    }

    #[test]
    fn thinning_merges_buckets_weighting_loss_by_echoes() {
        let points: Vec<PingPoint> = (0..100)
            .map(|i| {
                point(
                    i,
                    (i % 2 == 0).then_some(10.0),
                    if i < 50 { 0.0 } else { 10.0 },
                )
            })
            .collect();
        let thinned = thin(points, 0, 100, 10);
        assert_eq!(thinned.len(), 10);
        assert_eq!(thinned[0].sent, 200);
        assert_eq!(thinned[0].rtt_median_ms, Some(10.0));
        assert_eq!(thinned[0].loss_pct, 0.0);
        assert_eq!(thinned[9].loss_pct, 10.0);
        // Real timestamps (2026): their sum does not fit an i64.
        let now = 1_795_000_000_000_000_000;
        let points: Vec<PingPoint> = (0..100).map(|i| point(now + i, Some(1.0), 0.0)).collect();
        assert_eq!(thin(points, now, now + 100, 10)[0].timestamp_ns, now + 4);
        // Fewer points than buckets: unchanged.
        assert_eq!(thin(vec![point(5, None, 100.0)], 0, 100, 10).len(), 1);
    }
}
