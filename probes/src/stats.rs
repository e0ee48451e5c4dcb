//! Smokeping-style statistics of one round of echoes. Pure functions, no I/O.

use serde::Serialize;

/// The `ping` measurement: what one round of `sent` echoes looked like.
///
/// RTT fields are `None` when nothing came back. `rtts_ms` keeps every echo in send order
/// (`None` = lost) as evidence for incidents and for `fping -C`-style output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    pub loss_pct: f64,
    pub rtt_min_ms: Option<f64>,
    pub rtt_p10_ms: Option<f64>,
    pub rtt_p25_ms: Option<f64>,
    pub rtt_median_ms: Option<f64>,
    pub rtt_p75_ms: Option<f64>,
    pub rtt_p90_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_stddev_ms: Option<f64>,
    /// Mean absolute difference between consecutive received RTTs (RFC 3550's idea, unsmoothed).
    pub jitter_ms: Option<f64>,
    pub rtts_ms: Vec<Option<f64>>,
}

/// A round that sent nothing: 100% loss, no RTTs.
impl Default for PingStats {
    fn default() -> Self {
        PingStats::from_rtts(Vec::new())
    }
}

impl PingStats {
    /// Summarise a round: one entry per echo sent, in send order, `None` for a lost echo.
    pub fn from_rtts(rtts_ms: Vec<Option<f64>>) -> Self {
        let sent = u32::try_from(rtts_ms.len()).unwrap_or(u32::MAX);
        let received_in_order: Vec<f64> = rtts_ms.iter().flatten().copied().collect();
        let received = u32::try_from(received_in_order.len()).unwrap_or(u32::MAX);
        let loss_pct = if sent == 0 {
            100.0
        } else {
            100.0 * f64::from(sent - received) / f64::from(sent)
        };

        let mut sorted = received_in_order.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let avg = (!sorted.is_empty()).then(|| sorted.iter().sum::<f64>() / n);
        let stddev =
            avg.map(|mean| (sorted.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt());
        let jitter = (received_in_order.len() >= 2).then(|| {
            let diffs = received_in_order.windows(2).map(|w| (w[1] - w[0]).abs());
            diffs.sum::<f64>() / (n - 1.0)
        });

        PingStats {
            sent,
            received,
            loss_pct,
            rtt_min_ms: sorted.first().copied(),
            rtt_p10_ms: percentile(&sorted, 10.0),
            rtt_p25_ms: percentile(&sorted, 25.0),
            rtt_median_ms: percentile(&sorted, 50.0),
            rtt_p75_ms: percentile(&sorted, 75.0),
            rtt_p90_ms: percentile(&sorted, 90.0),
            rtt_max_ms: sorted.last().copied(),
            rtt_avg_ms: avg,
            rtt_stddev_ms: stddev,
            jitter_ms: jitter,
            rtts_ms,
        }
    }
}

/// Percentile of sorted values by linear interpolation between closest ranks (Hyndman & Fan type 7,
/// the default of numpy and R), so p50 of an even count is the mean of the middle two.
pub fn percentile(sorted: &[f64], pct: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = pct.clamp(0.0, 100.0) / 100.0 * last as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64))
}

/// The median of `values` in any order (the mean of the middle two for an even count); `None`
/// when there are none.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts_in_any_order() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median([]), None);
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert!(close(percentile(&sorted, 50.0), 2.5));
        assert!(close(percentile(&sorted, 0.0), 1.0));
        assert!(close(percentile(&sorted, 100.0), 4.0));
        assert!(close(percentile(&sorted, 10.0), 1.3));
        assert!(close(percentile(&[7.0], 90.0), 7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_round_with_losses_counts_them_and_ignores_them_in_rtt_fields() {
        let stats = PingStats::from_rtts(vec![Some(10.0), None, Some(30.0), Some(20.0), None]);
        assert_eq!((stats.sent, stats.received), (5, 3));
        assert!((stats.loss_pct - 40.0).abs() < 1e-9);
        assert!(close(stats.rtt_min_ms, 10.0));
        assert!(close(stats.rtt_median_ms, 20.0));
        assert!(close(stats.rtt_max_ms, 30.0));
        assert!(close(stats.rtt_avg_ms, 20.0));
        // population stddev of 10, 30, 20
        assert!(close(stats.rtt_stddev_ms, (200.0f64 / 3.0).sqrt()));
        // jitter in send order: |30-10| and |20-30| → 15
        assert!(close(stats.jitter_ms, 15.0));
        assert_eq!(stats.rtts_ms.len(), 5);
    }

    #[test]
    fn total_loss_has_no_rtt_fields() {
        let stats = PingStats::from_rtts(vec![None, None]);
        assert_eq!((stats.sent, stats.received), (2, 0));
        assert!((stats.loss_pct - 100.0).abs() < 1e-9);
        assert_eq!(stats.rtt_median_ms, None);
        assert_eq!(stats.jitter_ms, None);
        assert_eq!(stats.rtt_stddev_ms, None);
    }

    #[test]
    fn an_empty_round_is_total_loss_not_a_division_by_zero() {
        let stats = PingStats::from_rtts(vec![]);
        assert_eq!(stats.sent, 0);
        assert!((stats.loss_pct - 100.0).abs() < 1e-9);
    }

    #[test]
    fn distribution_fields_are_ordered_for_any_input() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..200 {
            let rtts: Vec<Option<f64>> = (0..(round % 37 + 1))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % 5 != 0).then(|| (seed % 100_000) as f64 / 1000.0)
                })
                .collect();
            let s = PingStats::from_rtts(rtts);
            let Some(min) = s.rtt_min_ms else { continue };
            let chain = [
                min,
                s.rtt_p10_ms.unwrap_or(f64::NAN),
                s.rtt_p25_ms.unwrap_or(f64::NAN),
                s.rtt_median_ms.unwrap_or(f64::NAN),
                s.rtt_p75_ms.unwrap_or(f64::NAN),
                s.rtt_p90_ms.unwrap_or(f64::NAN),
                s.rtt_max_ms.unwrap_or(f64::NAN),
            ];
            assert!(
                chain.windows(2).all(|w| w[0] <= w[1]),
                "unordered: {chain:?}"
            );
            let avg = s.rtt_avg_ms.unwrap_or(f64::NAN);
            assert!(min <= avg && avg <= chain[6]);
        }
    }
}
