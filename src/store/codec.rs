//! Compact encodings of the store's ping data. Pure functions, no I/O.
//!
//! - **A round's RTTs** ([`encode_rtts`]): one varint per echo in send order, in whole
//!   microseconds: `0` for a lost echo, else `1 + zigzag(rtt_us - previous received rtt_us)`.
//!   Echoes of one round differ by little, so most take one or two bytes (about 40 bytes for 20
//!   echoes) and every RTT and every loss position is kept.
//! - **A distribution** ([`Histogram`]): the RTTs of many rounds counted in logarithmic buckets
//!   1% wide (a value is read back within 1% of what was counted), stored as varint pairs
//!   (bucket index delta, count). Histograms merge by adding counts, so a rollup row is updated
//!   incrementally as rounds arrive.

use std::collections::BTreeMap;

/// The RTTs of a round, as stored: every echo in send order, `None` for a lost one.
pub fn encode_rtts(rtts_ms: &[Option<f64>]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(rtts_ms.len() * 2);
    let mut previous = 0i64;
    for rtt in rtts_ms {
        match rtt.map(ms_to_us) {
            None => blob.push(0),
            Some(us) => {
                write_varint(&mut blob, 1 + zigzag(us - previous));
                previous = us;
            }
        }
    }
    blob
}

/// The inverse of [`encode_rtts`]; `None` if the blob is truncated or malformed.
pub fn decode_rtts(blob: &[u8]) -> Option<Vec<Option<f64>>> {
    let mut rtts = Vec::with_capacity(blob.len());
    let mut previous = 0i64;
    let mut rest = blob;
    while !rest.is_empty() {
        let value = read_varint(&mut rest)?;
        if value == 0 {
            rtts.push(None);
        } else {
            previous = previous.checked_add(unzigzag(value - 1))?;
            rtts.push(Some(us_to_ms(previous)));
        }
    }
    Some(rtts)
}

/// Milliseconds to whole microseconds (negative or not finite: 0; the probes never give those).
pub fn ms_to_us(ms: f64) -> i64 {
    if ms.is_finite() && ms > 0.0 {
        (ms * 1000.0).round().min(i64::MAX as f64 / 4.0) as i64
    } else {
        0
    }
}

pub fn us_to_ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

/// Bucket width: a value is read back within `(GAMMA - 1) / (GAMMA + 1)` ≈ 1% of itself.
const GAMMA: f64 = 1.0202;

/// RTTs counted in logarithmic buckets (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Bucket index → count; index 0 holds 0 µs.
    counts: BTreeMap<u32, u64>,
}

impl Histogram {
    pub fn add_ms(&mut self, rtt_ms: f64) {
        *self.counts.entry(bucket(ms_to_us(rtt_ms))).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (index, count) in &other.counts {
            *self.counts.entry(*index).or_default() += count;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut blob = Vec::with_capacity(self.counts.len() * 3);
        let mut previous = 0u32;
        for (index, count) in &self.counts {
            write_varint(&mut blob, u64::from(index - previous));
            write_varint(&mut blob, *count);
            previous = *index;
        }
        blob
    }

    /// The inverse of [`Histogram::encode`]; `None` if the blob is truncated or malformed.
    pub fn decode(blob: &[u8]) -> Option<Histogram> {
        let mut counts = BTreeMap::new();
        let mut rest = blob;
        let mut index = 0u32;
        while !rest.is_empty() {
            index = index.checked_add(u32::try_from(read_varint(&mut rest)?).ok()?)?;
            let count = read_varint(&mut rest)?;
            *counts.entry(index).or_default() += count;
        }
        Some(Histogram { counts })
    }

    /// The `pct` percentile in ms, interpolated between closest ranks as
    /// [`probes::stats::percentile`] does, each rank read as its bucket's value.
    pub fn percentile_ms(&self, pct: f64) -> Option<f64> {
        let last = self.total().checked_sub(1)?;
        let rank = pct.clamp(0.0, 100.0) / 100.0 * last as f64;
        let (lo, hi) = (rank.floor() as u64, rank.ceil() as u64);
        let (lo_value, hi_value) = (self.value_at(lo)?, self.value_at(hi)?);
        Some(lo_value + (hi_value - lo_value) * (rank - lo as f64))
    }

    /// The value (ms) of the `rank`-th smallest RTT counted (0-based).
    fn value_at(&self, rank: u64) -> Option<f64> {
        let mut seen = 0;
        for (index, count) in &self.counts {
            seen += count;
            if rank < seen {
                return Some(bucket_value_us(*index) / 1000.0);
            }
        }
        None
    }
}

fn bucket(us: i64) -> u32 {
    if us <= 0 {
        0
    } else {
        1 + ((us as f64).ln() / GAMMA.ln()).ceil().max(0.0) as u32
    }
}

/// The value a bucket stands for: the middle (relative) of its range, so the error is at most
/// ≈1% either way; 1 µs exactly for the bucket that holds it.
fn bucket_value_us(index: u32) -> f64 {
    match index {
        0 => 0.0,
        1 => 1.0,
        _ => 2.0 * GAMMA.powi(index as i32 - 1) / (GAMMA + 1.0),
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtts_round_trip_to_the_microsecond_with_loss_positions() {
        let rtts = vec![
            Some(12.3456),
            None,
            Some(12.1),
            Some(250.0),
            None,
            None,
            Some(0.0004),
            Some(60_000.0),
        ];
        let blob = encode_rtts(&rtts);
        let back = decode_rtts(&blob).expect("decodes");
        assert_eq!(
            back,
            vec![
                Some(12.346),
                None,
                Some(12.1),
                Some(250.0),
                None,
                None,
                Some(0.0),
                Some(60_000.0)
            ]
        );
        assert_eq!(decode_rtts(&[]), Some(vec![]));
    }

    #[test]
    fn a_typical_round_of_20_echoes_takes_about_40_bytes() {
        let rtts: Vec<Option<f64>> = (0..20)
            .map(|i| (i != 7).then(|| 23.0 + f64::from(i % 5) * 0.137))
            .collect();
        let blob = encode_rtts(&rtts);
        assert!(blob.len() <= 42, "{} bytes", blob.len());
    }

    #[test]
    fn malformed_blobs_are_refused_not_panicked_on() {
        assert_eq!(decode_rtts(&[0x80]), None);
        assert_eq!(decode_rtts(&[0xff; 11]), None);
        assert_eq!(Histogram::decode(&[1]), None);
        assert_eq!(Histogram::decode(&[0xff, 0xff, 0xff, 0xff, 0x7f, 1]), None);
    }

    #[test]
    fn histogram_percentiles_are_within_one_percent_and_merge() {
        let mut sorted = Vec::new();
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        for i in 0..300 {
            let rtt = 10.0 + f64::from(i) * 0.37;
            sorted.push(rtt);
            if i % 2 == 0 { &mut a } else { &mut b }.add_ms(rtt);
        }
        a.merge(&b);
        let a = Histogram::decode(&a.encode()).expect("round trip");
        assert_eq!(a.total(), 300);
        for pct in [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 100.0] {
            let exact = probes::stats::percentile(&sorted, pct).expect("values");
            let approx = a.percentile_ms(pct).expect("values");
            assert!(
                (approx - exact).abs() <= exact * 0.0101,
                "p{pct}: {approx} vs {exact}"
            );
        }
        assert_eq!(Histogram::default().percentile_ms(50.0), None);
    }
}
