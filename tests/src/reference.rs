//! Reference results computed by the tests themselves, and the checks against them.

use std::collections::HashMap;

/// Word count's word rule, written independently of the app: lowercase, split on single spaces,
/// strip ASCII punctuation from both ends, drop empty tokens.
pub fn reference_words(line: &str) -> Vec<String> {
    line.to_lowercase()
        .split(' ')
        .map(|t| {
            t.trim_matches(|c: char| c.is_ascii_punctuation())
                .to_string()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Total count per word of all the lines.
pub fn reference_counts<'a>(lines: impl IntoIterator<Item = &'a str>) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for line in lines {
        for w in reference_words(line) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

/// Word buckets' final totals from word count's: per running count n, the words that reached
/// it (so its outputs for n are `n => 1` up to `n => that many`).
pub fn reference_buckets(counts: &HashMap<String, u64>) -> HashMap<String, u64> {
    let mut buckets = HashMap::new();
    for &c in counts.values() {
        for n in 1..=c {
            *buckets.entry(n.to_string()).or_insert(0) += 1;
        }
    }
    buckets
}

/// Checks word count's whole output (or any output of `key => running total` lines, as word
/// buckets' `n => k`): for every key exactly the running totals 1..=n, each once, no gap, no
/// duplicate, and the final counts equal `expected`. `outputs` holds each sink
/// connection's lines in arrival order; a word's outputs may be spread over several connections
/// when its slot moved between cores, but within each connection they must rise.
pub fn check_running_totals(outputs: &[Vec<String>], expected: &HashMap<String, u64>) {
    let mut seen: HashMap<&str, Vec<u64>> = HashMap::new();
    for lines in outputs {
        let mut last_here: HashMap<&str, u64> = HashMap::new();
        for line in lines {
            let (word, count) = line
                .rsplit_once(" => ")
                .unwrap_or_else(|| panic!("bad output line {line:?}"));
            let count: u64 = count
                .parse()
                .unwrap_or_else(|_| panic!("bad count in {line:?}"));
            let last = last_here.entry(word).or_insert(0);
            assert!(
                count > *last,
                "word {word:?}: {count} follows {} on one connection",
                *last
            );
            *last = count;
            seen.entry(word).or_default().push(count);
        }
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|(w, _)| !seen.contains_key(w.as_str()))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "words never output, e.g. {missing:?}");
    for (word, counts) in &mut seen {
        let n = *expected
            .get(*word)
            .unwrap_or_else(|| panic!("unexpected word {word:?}"));
        counts.sort_unstable();
        let exact =
            counts.len() as u64 == n && counts.iter().enumerate().all(|(i, &c)| c == i as u64 + 1);
        assert!(
            exact,
            "word {word:?}: want 1..={n} once each, got {} outputs {:?}...",
            counts.len(),
            &counts[..counts.len().min(8)]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_rule() {
        assert_eq!(
            reference_words("The cat's, \"HAT\"  ...!"),
            ["the", "cat's", "hat"]
        );
    }

    #[test]
    #[should_panic(expected = "once each")]
    fn a_gap_is_caught() {
        let expected = reference_counts(["a a a"]);
        check_running_totals(&[vec!["a => 1".into(), "a => 3".into()]], &expected);
    }

    #[test]
    #[should_panic(expected = "once each")]
    fn a_missing_tail_is_caught() {
        let expected = reference_counts(["a a a"]);
        check_running_totals(&[vec!["a => 1".into(), "a => 2".into()]], &expected);
    }

    #[test]
    #[should_panic(expected = "follows")]
    fn a_duplicate_is_caught() {
        let expected = reference_counts(["a a"]);
        check_running_totals(
            &[vec!["a => 1".into(), "a => 1".into(), "a => 2".into()]],
            &expected,
        );
    }

    #[test]
    #[should_panic(expected = "once each")]
    fn a_duplicate_across_connections_is_caught() {
        let expected = reference_counts(["a a"]);
        check_running_totals(
            &[
                vec!["a => 1".into()],
                vec!["a => 1".into(), "a => 2".into()],
            ],
            &expected,
        );
    }

    #[test]
    fn a_word_may_move_between_connections() {
        let expected = reference_counts(["a a a"]);
        check_running_totals(
            &[
                vec!["a => 1".into(), "a => 2".into()],
                vec!["a => 3".into()],
            ],
            &expected,
        );
    }
}
