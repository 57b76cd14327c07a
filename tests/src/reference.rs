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

/// Checks word count's whole output: for every word exactly the running totals 1..=n in order
/// (within the one sink connection that carried it), no gap, no duplicate, and the final counts
/// equal `expected`. `outputs` holds each sink connection's lines in arrival order.
pub fn check_running_totals(outputs: &[Vec<String>], expected: &HashMap<String, u64>) {
    let mut seen: HashMap<&str, (usize, u64)> = HashMap::new();
    for (conn, lines) in outputs.iter().enumerate() {
        for line in lines {
            let (word, count) = line
                .rsplit_once(" => ")
                .unwrap_or_else(|| panic!("bad output line {line:?}"));
            let count: u64 = count
                .parse()
                .unwrap_or_else(|_| panic!("bad count in {line:?}"));
            let last = seen.entry(word).or_insert((conn, 0));
            assert_eq!(
                last.0, conn,
                "word {word:?} arrived on two sink connections"
            );
            assert_eq!(
                count,
                last.1 + 1,
                "word {word:?}: {count} follows {}",
                last.1
            );
            last.1 = count;
        }
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|(w, _)| !seen.contains_key(w.as_str()))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "words never output, e.g. {missing:?}");
    for (word, (_, count)) in &seen {
        assert_eq!(Some(count), expected.get(*word), "final count of {word:?}");
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
    #[should_panic(expected = "follows")]
    fn a_gap_is_caught() {
        let expected = reference_counts(["a a a"]);
        check_running_totals(&[vec!["a => 1".into(), "a => 3".into()]], &expected);
    }

    #[test]
    #[should_panic(expected = "final count")]
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
}
