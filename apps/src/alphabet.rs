//! Alphabet (Wallaroo's example): each frame is a vote, `u8 letter` then `u32` big-endian
//! votes; keyed by letter, the state is the letter's running total, and every vote outputs
//! `letter => total\n`.

use quokka_engine::{App, DecodeError, Emit};

/// A decoded vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Vote {
    pub letter: u8,
    pub votes: u32,
}

pub fn decode(frame: &[u8]) -> Result<Vote, DecodeError> {
    match *frame {
        [letter, a, b, c, d] => Ok(Vote {
            letter,
            votes: u32::from_be_bytes([a, b, c, d]),
        }),
        _ => Err(DecodeError::new(format!(
            "a vote is 5 bytes, this frame has {}",
            frame.len()
        ))),
    }
}

fn tally(total: &mut u64, vote: Vote, out: &mut Emit<(u8, u64)>) {
    *total += u64::from(vote.votes);
    out.emit((vote.letter, *total));
}

/// One output line, the letter as a byte.
pub fn encode(letter: u8, total: u64, out: &mut Vec<u8>) {
    out.push(letter);
    out.extend_from_slice(b" => ");
    out.extend_from_slice(itoa::Buffer::new().format(total).as_bytes());
    out.push(b'\n');
}

pub fn app() -> App {
    App::source("votes", decode)
        .key_by(|v: &Vote| std::slice::from_ref(&v.letter))
        .stateful(tally)
        .sink(
            "totals",
            |&(letter, total): &(u8, u64), out: &mut Vec<u8>| encode(letter, total, out),
        )
        .named("alphabet")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_votes_and_rejects_other_lengths() {
        assert_eq!(
            decode(&[b'q', 0, 0, 1, 2]).unwrap(),
            Vote {
                letter: b'q',
                votes: 258
            }
        );
        assert!(decode(&[b'q', 0, 0, 1]).is_err());
        assert!(decode(&[]).is_err());
        assert!(decode(&[0; 6]).unwrap_err().to_string().contains("6"));
    }

    #[test]
    fn encodes_lines() {
        let mut out = Vec::new();
        encode(b'a', 12, &mut out);
        assert_eq!(out, b"a => 12\n");
    }
}
