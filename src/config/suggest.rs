//! "Did you mean ...?": the closest known word to a misspelt one.

/// The candidate closest to `word` by edit distance (optimal string alignment: a swap of two
/// neighbours counts as one edit), if it is close enough to be a plausible typo: at most two
/// edits, and at most a third of the candidate's length. Case is ignored; ties go to the earlier candidate.
pub fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(&word, &c.to_lowercase()), c))
        .filter(|&(d, c)| d <= 2 && d * 3 <= c.chars().count())
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE_KEYS: [&str; 7] = [
        "name", "kind", "interval", "timeout", "targets", "count", "spacing",
    ];

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
        assert_eq!(
            closest("cuont", PROBE_KEYS),
            Some("count"),
            "a swap is one edit"
        );
    }
}
