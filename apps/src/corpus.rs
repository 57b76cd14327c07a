//! Deterministic generated text for word count: Zipf-distributed words, a few capitalised or
//! with punctuation, so demos, tests and benchmarks share one reproducible corpus.

/// SplitMix64: a tiny, fixed pseudo-random generator, so a seed means the same corpus forever.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The `rank`-th vocabulary word: distinct lowercase letters, short words for low ranks.
pub fn vocab_word(rank: usize) -> String {
    // Bijective base 26 on rank + 1 ("a", "b", ..., "z", "aa", ...), letters shuffled by
    // position so neighbouring ranks do not share prefixes.
    let mut n = rank + 1;
    let mut word = Vec::new();
    while n > 0 {
        n -= 1;
        let pos = word.len();
        word.push(b'a' + ((n % 26 + pos * 7) % 26) as u8);
        n /= 26;
    }
    String::from_utf8(word).expect("ascii")
}

/// Shape of a generated corpus.
#[derive(Debug, Clone, Copy)]
pub struct CorpusSpec {
    pub seed: u64,
    /// Words in the whole corpus.
    pub words: usize,
    /// Vocabulary size; the Zipf exponent is 1.
    pub vocabulary: usize,
    pub words_per_line: usize,
}

impl Default for CorpusSpec {
    fn default() -> Self {
        Self {
            seed: 42,
            words: 1_000_000,
            vocabulary: 100_000,
            words_per_line: 12,
        }
    }
}

/// Generates the corpus as lines of text (no newline characters).
pub fn lines(spec: CorpusSpec) -> Vec<String> {
    let mut cdf = Vec::with_capacity(spec.vocabulary);
    let mut total = 0.0;
    for rank in 0..spec.vocabulary {
        total += 1.0 / (rank + 1) as f64;
        cdf.push(total);
    }
    let vocab: Vec<String> = (0..spec.vocabulary).map(vocab_word).collect();
    let mut rng = SplitMix64::new(spec.seed);
    let mut lines = Vec::with_capacity(spec.words / spec.words_per_line + 1);
    let mut left = spec.words;
    while left > 0 {
        let n = left.min(spec.words_per_line);
        left -= n;
        let mut line = String::new();
        for i in 0..n {
            let u = rng.next_f64() * total;
            let rank = cdf.partition_point(|&c| c < u).min(spec.vocabulary - 1);
            if i > 0 {
                line.push(' ');
            }
            let word = &vocab[rank];
            match rng.next_u64() % 40 {
                0 => {
                    let mut w = word.clone();
                    w[..1].make_ascii_uppercase();
                    line.push_str(&w);
                }
                1 => {
                    line.push_str(word);
                    line.push(',');
                }
                2 => {
                    line.push('"');
                    line.push_str(word);
                    line.push_str(".\"");
                }
                _ => line.push_str(word),
            }
        }
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_words_are_distinct_letters() {
        let words: std::collections::HashSet<String> = (0..200_000).map(vocab_word).collect();
        assert_eq!(words.len(), 200_000);
        assert!(words
            .iter()
            .all(|w| w.bytes().all(|b| b.is_ascii_lowercase())));
    }

    #[test]
    fn corpus_is_deterministic_and_sized() {
        let spec = CorpusSpec {
            words: 10_000,
            vocabulary: 1000,
            ..CorpusSpec::default()
        };
        let a = lines(spec);
        assert_eq!(a, lines(spec));
        let n: usize = a.iter().map(|l| l.split(' ').count()).sum();
        assert_eq!(n, 10_000);
        assert_ne!(a, lines(CorpusSpec { seed: 7, ..spec }));
    }
}
