//! Wallaroo framing: each message is a `u32` big-endian length followed by that many bytes.
//!
//! [`FrameDecoder`] is a pure codec: bytes go in through [`FrameDecoder::spare`] and
//! [`FrameDecoder::filled`], whole frames come out of [`FrameDecoder::next_frame`], however the
//! reads split them.

use thiserror::Error;

/// Bytes of the length prefix.
pub const HEADER: usize = 4;

/// Default largest accepted payload (1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Why a connection's byte stream is not valid framing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    Oversized { len: usize, max: usize },
    #[error("stream ended inside a frame ({have} of {need} bytes received)")]
    Truncated { have: usize, need: usize },
}

/// Appends one frame (header and payload) to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("payload longer than u32::MAX");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Splits a byte stream into frames; keeps the tail of a frame that is not complete yet.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the first byte not yet returned as part of a frame.
    start: usize,
    /// End of the received bytes.
    end: usize,
    max_frame: usize,
}

impl FrameDecoder {
    /// Reads are at least this large, so small frames are decoded many per read.
    const MIN_READ: usize = 64 * 1024;

    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: vec![0; Self::MIN_READ],
            start: 0,
            end: 0,
            max_frame,
        }
    }

    /// Space to read into; call [`filled`](Self::filled) with the bytes written.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < Self::MIN_READ && self.start > 0 {
            // Move the partial frame to the front instead of growing.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < Self::MIN_READ {
            self.buf.resize(self.end + Self::MIN_READ, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of [`spare`](Self::spare) as received.
    pub fn filled(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.buf.len());
    }

    /// The next whole frame's payload, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let avail = self.end - self.start;
        if avail < HEADER {
            return Ok(None);
        }
        let header: [u8; HEADER] = self.buf[self.start..self.start + HEADER]
            .try_into()
            .unwrap();
        let len = u32::from_be_bytes(header) as usize;
        if len > self.max_frame {
            return Err(FrameError::Oversized {
                len,
                max: self.max_frame,
            });
        }
        if avail < HEADER + len {
            return Ok(None);
        }
        let payload = self.start + HEADER..self.start + HEADER + len;
        self.start = payload.end;
        Ok(Some(&self.buf[payload]))
    }

    /// Bytes received but not yet returned as frames (a partial frame, or frames not yet taken).
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Starts a decoder with bytes already received elsewhere (a connection changing readers).
    pub fn with_pending(max_frame: usize, pending: &[u8]) -> Self {
        let mut dec = Self::new(max_frame);
        if dec.buf.len() < pending.len() {
            dec.buf.resize(pending.len(), 0);
        }
        dec.buf[..pending.len()].copy_from_slice(pending);
        dec.end = pending.len();
        dec
    }

    /// Checks the stream may end here: not inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        let have = self.end - self.start;
        if have == 0 {
            return Ok(());
        }
        let need = if have < HEADER {
            HEADER
        } else {
            let header: [u8; HEADER] = self.buf[self.start..self.start + HEADER]
                .try_into()
                .unwrap();
            HEADER + u32::from_be_bytes(header) as usize
        };
        Err(FrameError::Truncated { have, need })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(dec: &mut FrameDecoder, bytes: &[u8]) {
        let spare = dec.spare();
        spare[..bytes.len()].copy_from_slice(bytes);
        dec.filled(bytes.len());
    }

    fn drain(dec: &mut FrameDecoder) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = dec.next_frame().unwrap() {
            out.push(f.to_vec());
        }
        out
    }

    fn stream(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode_frame(p, &mut out);
        }
        out
    }

    #[test]
    fn decodes_whole_frames_including_empty_ones() {
        let mut dec = FrameDecoder::new(100);
        feed(&mut dec, &stream(&[b"hello", b"", b"world"]));
        assert_eq!(
            drain(&mut dec),
            vec![b"hello".to_vec(), vec![], b"world".to_vec()]
        );
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let bytes = stream(&[b"a", b"bcd", b"", b"efghijkl"]);
        for cut1 in 0..=bytes.len() {
            for cut2 in cut1..=bytes.len() {
                let mut dec = FrameDecoder::new(100);
                let mut got = Vec::new();
                for part in [&bytes[..cut1], &bytes[cut1..cut2], &bytes[cut2..]] {
                    feed(&mut dec, part);
                    got.extend(drain(&mut dec));
                }
                assert_eq!(got.len(), 4, "cuts {cut1} {cut2}");
                assert_eq!(got[3], b"efghijkl");
                assert_eq!(dec.finish(), Ok(()));
            }
        }
    }

    #[test]
    fn byte_at_a_time_over_many_reads_compacts_and_keeps_order() {
        let payloads: Vec<Vec<u8>> = (0..5000u32).map(|i| i.to_string().into_bytes()).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let bytes = stream(&refs);
        let mut dec = FrameDecoder::new(100);
        let mut got = Vec::new();
        for chunk in bytes.chunks(7) {
            feed(&mut dec, chunk);
            got.extend(drain(&mut dec));
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn oversized_frame_is_an_error() {
        let mut dec = FrameDecoder::new(4);
        feed(&mut dec, &stream(&[b"ok", b"too long"]));
        assert_eq!(dec.next_frame().unwrap(), Some(&b"ok"[..]));
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::Oversized { len: 8, max: 4 })
        );
    }

    #[test]
    fn frame_larger_than_one_read_is_assembled() {
        let big = vec![7u8; 300_000];
        let bytes = stream(&[&big]);
        let mut dec = FrameDecoder::new(1 << 20);
        let mut got = Vec::new();
        for chunk in bytes.chunks(50_000) {
            feed(&mut dec, chunk);
            got.extend(drain(&mut dec));
        }
        assert_eq!(got, vec![big]);
    }

    #[test]
    fn pending_bytes_carry_over_to_a_new_decoder() {
        let bytes = stream(&[b"one", b"two", b"three"]);
        let mut dec = FrameDecoder::new(100);
        feed(&mut dec, &bytes[..12]); // "one" whole, "two" cut after 1 byte of payload
        assert_eq!(dec.next_frame().unwrap(), Some(&b"one"[..]));
        let mut next = FrameDecoder::with_pending(100, dec.pending());
        feed(&mut next, &bytes[12..]);
        assert_eq!(drain(&mut next), vec![b"two".to_vec(), b"three".to_vec()]);
    }

    #[test]
    fn truncation_is_reported_at_finish() {
        let mut dec = FrameDecoder::new(100);
        feed(&mut dec, &[0, 0]);
        assert_eq!(
            dec.finish(),
            Err(FrameError::Truncated { have: 2, need: 4 })
        );
        feed(&mut dec, &[0, 5, b'a']);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(
            dec.finish(),
            Err(FrameError::Truncated { have: 5, need: 9 })
        );
    }
}
