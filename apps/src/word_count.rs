//! Word count, with Wallaroo's semantics: each frame is a line of text; every word in it gets
//! one output line `word => count\n` with the word's running total.

use quokka_engine::{App, DecodeError, Emit};

/// Characters stripped from both ends of each token (Wallaroo's `string.punctuation`).
pub const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Wallaroo's word rule: lowercase the line, split on single spaces, strip punctuation from
/// both ends of each token, drop empty tokens.
pub fn words(line: &str, mut each: impl FnMut(&str)) {
    let lower;
    let line = if line.bytes().any(|b| b.is_ascii_uppercase()) || !line.is_ascii() {
        lower = line.to_lowercase();
        lower.as_str()
    } else {
        line
    };
    for token in line.split(' ') {
        let word = token.trim_matches(|c| PUNCTUATION.contains(c));
        if !word.is_empty() {
            each(word);
        }
    }
}

/// One output line.
pub fn encode(word: &str, count: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(word.as_bytes());
    out.extend_from_slice(b" => ");
    out.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
    out.push(b'\n');
}

pub(crate) fn decode(frame: &[u8]) -> Result<String, DecodeError> {
    std::str::from_utf8(frame)
        .map(str::to_owned)
        .map_err(|e| DecodeError::new(format!("line is not UTF-8: {e}")))
}

pub(crate) fn split(line: String, out: &mut Emit<String>) {
    words(&line, |w| out.emit(w.to_owned()));
}

pub(crate) fn count(total: &mut u64, word: String, out: &mut Emit<(String, u64)>) {
    *total += 1;
    out.emit((word, *total));
}

pub fn app() -> App {
    App::source("text", decode)
        .flat_map(split)
        .key_by(|word: &String| word.as_bytes())
        .stateful(count)
        .sink(
            "counts",
            |(word, count): &(String, u64), out: &mut Vec<u8>| encode(word, *count, out),
        )
        .named("word_count")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        words(line, |w| out.push(w.to_owned()));
        out
    }

    #[test]
    fn word_rule_matches_wallaroo() {
        assert_eq!(split_all("Hello, World!"), ["hello", "world"]);
        assert_eq!(split_all("  double  spaces  "), ["double", "spaces"]);
        assert_eq!(
            split_all("don't \"quote\" (x) -- ..."),
            ["don't", "quote", "x"]
        );
        assert_eq!(
            split_all("tab\tstays one token"),
            ["tab\tstays", "one", "token"]
        );
        assert_eq!(split_all("a.b.c. [_x_]"), ["a.b.c", "x"]);
        assert_eq!(split_all("ÉCOLE Straße"), ["école", "straße"]);
        assert_eq!(split_all(""), Vec::<String>::new());
        assert_eq!(split_all("!!! ?"), Vec::<String>::new());
    }

    #[test]
    fn encodes_wallaroo_lines() {
        let mut out = Vec::new();
        encode("w", 5, &mut out);
        encode("x", 1234567890, &mut out);
        assert_eq!(out, b"w => 5\nx => 1234567890\n");
    }

    #[test]
    fn decode_rejects_invalid_utf8() {
        assert!(decode(b"ok line").is_ok());
        assert!(decode(&[0xff, 0xfe]).is_err());
    }
}
