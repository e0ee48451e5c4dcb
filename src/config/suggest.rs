//! "Did you mean ...?": the closest known word to a misspelt one.

/// The candidate closest to `word` by edit distance (a swap of two neighbours counts as one edit),
/// if it is close enough to be a plausible typo: at most two edits, and at most a third of the
/// candidate's length. Case is ignored; ties go to the earlier candidate.
pub fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (distance(&word, &c.to_lowercase()), c))
        .filter(|&(d, c)| d <= 2 && d * 3 <= c.chars().count())
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and transpositions of
/// adjacent characters each cost one.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j] = distance between a[..i] and b[..j]
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE_KEYS: [&str; 7] = [
        "name", "kind", "interval", "timeout", "targets", "count", "spacing",
    ];

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("interval", "interval"), 0);
        assert_eq!(distance("intervall", "interval"), 1);
        assert_eq!(distance("hots", "host"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
    }

    #[test]
    fn suggests_plausible_typos_only() {
        assert_eq!(closest("intervall", PROBE_KEYS), Some("interval"));
        assert_eq!(closest("timout", PROBE_KEYS), Some("timeout"));
        assert_eq!(closest("Count", PROBE_KEYS), Some("count"));
        assert_eq!(closest("target", PROBE_KEYS), Some("targets"));
        assert_eq!(closest("cnt", PROBE_KEYS), None);
        assert_eq!(closest("protocol", PROBE_KEYS), None);
        assert_eq!(closest("v4", ["any", "ipv4", "ipv6"]), None);
        assert_eq!(closest("ipv5", ["any", "ipv4", "ipv6"]), Some("ipv4"));
    }
}
