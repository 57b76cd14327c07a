//! Word buckets: two keyed stages. Stage 1 counts each word (Wallaroo's word rule, as word count
//! does); its running count n goes to stage 2, keyed by n, which counts the words that have
//! reached n so far. Each input word yields one output line `n => k\n`: k words have now been
//! seen at least n times.

use quokka_engine::{App, Emit};

use crate::word_count::{count, decode, split};

/// One output line.
pub fn encode(n: u64, k: u64, out: &mut Vec<u8>) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(num.format(n).as_bytes());
    out.extend_from_slice(b" => ");
    out.extend_from_slice(num.format(k).as_bytes());
    out.push(b'\n');
}

/// Stage 2: one more word has reached count `n`.
fn bucket(reached: &mut u64, n: [u8; 8], out: &mut Emit<(u64, u64)>) {
    *reached += 1;
    out.emit((u64::from_be_bytes(n), *reached));
}

pub fn app() -> App {
    App::source("text", decode)
        .flat_map(split)
        .key_by(|word: &String| word.as_bytes())
        .stateful(count)
        .map(|(_, n): (String, u64)| n.to_be_bytes())
        .key_by(|n: &[u8; 8]| n)
        .stateful(bucket)
        .sink("buckets", |&(n, k): &(u64, u64), out: &mut Vec<u8>| {
            encode(n, k, out)
        })
        .named("word_buckets")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_words_per_reached_total() {
        let mut out = Vec::new();
        let mut reached = 0;
        bucket(
            &mut reached,
            3u64.to_be_bytes(),
            &mut Emit::new(&mut |o| out.push(o)),
        );
        bucket(
            &mut reached,
            3u64.to_be_bytes(),
            &mut Emit::new(&mut |o| out.push(o)),
        );
        assert_eq!(out, [(3, 1), (3, 2)]);
        let mut bytes = Vec::new();
        encode(3, 2, &mut bytes);
        assert_eq!(bytes, b"3 => 2\n");
    }
}
