//! Wallaroo framing: each message is a `u32` big-endian length followed by that many bytes.
//!
//! The one framing codec of the workspace, in two forms:
//! - [`FrameDecoder`] is pure: bytes go in through [`FrameDecoder::spare`] and
//!   [`FrameDecoder::filled`], whole frames come out of [`FrameDecoder::next_frame`], however the
//!   reads split them (the engine's source connections, on glommio).
//! - [`read_frame`] and [`write_frame`] are blocking, over any `Read`/`Write` (the control
//!   protocol, the node links, the tools). [`read_header`] and [`read_payload`] are the two
//!   halves of [`read_frame`], for a reader that keeps its own buffer (an rkyv `AlignedVec`).
//!
//! Every malformed input is a [`FrameError`], never a panic.

use std::io::{self, IoSlice, Read, Write};

use thiserror::Error;

/// Bytes of the length prefix.
pub const HEADER: usize = 4;

/// Default largest accepted payload (1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Why a byte stream is not valid framing, or could not be read or written.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    Oversized { len: usize, max: usize },
    /// `have` and `need` count the frame's bytes, header included; from [`read_payload`] they
    /// count the bytes of the part being read.
    #[error("stream ended inside a frame ({have} of {need} bytes received)")]
    Truncated { have: usize, need: usize },
    /// The connection failed (a read timeout shows here too: see [`FrameError::is_timeout`]).
    #[error("connection failed")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// Whether a read or write timeout (`SO_RCVTIMEO`, `SO_SNDTIMEO`) ended the operation.
    pub fn is_timeout(&self) -> bool {
        matches!(self, FrameError::Io(e) if is_timeout(e))
    }
}

/// Whether an I/O error is a socket timeout (`EAGAIN` from `SO_RCVTIMEO`, or `TimedOut`).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The payload length a header announces.
pub fn frame_len(header: [u8; HEADER]) -> usize {
    u32::from_be_bytes(header) as usize
}

/// The header of a `len`-byte payload.
pub fn header_of(len: usize) -> Result<[u8; HEADER], FrameError> {
    let len32 = u32::try_from(len).map_err(|_| FrameError::Oversized {
        len,
        max: u32::MAX as usize,
    })?;
    Ok(len32.to_be_bytes())
}

/// Appends one frame (header and payload) to `out`.
///
/// # Panics
/// If `payload` is longer than `u32::MAX` (use [`write_frame`] for a checked write).
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let header = header_of(payload.len()).expect("payload longer than u32::MAX");
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// The first whole frame at the front of `buf`: its payload and the bytes it spans (header
/// included); `None` if `buf` holds only part of it. No size limit: the caller checks.
pub fn split_frame(buf: &[u8]) -> Option<(&[u8], usize)> {
    let header: [u8; HEADER] = buf.get(..HEADER)?.try_into().ok()?;
    let end = HEADER.checked_add(frame_len(header))?;
    Some((buf.get(HEADER..end)?, end))
}

/// Reads one frame's header and checks its length against `max`. `Ok(None)`: the stream ended
/// cleanly, before the first byte of a frame.
pub fn read_header(input: &mut impl Read, max: usize) -> Result<Option<usize>, FrameError> {
    let mut header = [0u8; HEADER];
    match fill(input, &mut header)? {
        0 => return Ok(None),
        HEADER => {}
        have => return Err(FrameError::Truncated { have, need: HEADER }),
    }
    let len = frame_len(header);
    if len > max {
        return Err(FrameError::Oversized { len, max });
    }
    Ok(Some(len))
}

/// Reads exactly `buf.len()` bytes of a payload (all of it, or a part: a reader may read a
/// prefix into one buffer and the rest into another).
pub fn read_payload(input: &mut impl Read, buf: &mut [u8]) -> Result<(), FrameError> {
    let have = fill(input, buf)?;
    if have < buf.len() {
        return Err(FrameError::Truncated {
            have,
            need: buf.len(),
        });
    }
    Ok(())
}

/// Reads one whole frame's payload, at most `max` bytes. `Ok(None)`: the stream ended cleanly
/// between frames.
pub fn read_frame(input: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(len) = read_header(input, max)? else {
        return Ok(None);
    };
    let mut payload = vec![0; len];
    read_payload(input, &mut payload).map_err(|e| match e {
        FrameError::Truncated { have, need } => FrameError::Truncated {
            have: HEADER + have,
            need: HEADER + need,
        },
        e => e,
    })?;
    Ok(Some(payload))
}

/// Writes a frame's header for a `len`-byte payload; the caller writes the payload after it
/// (through a `BufWriter`, or the header and each part are separate writes).
pub fn write_header(out: &mut impl Write, len: usize) -> Result<(), FrameError> {
    out.write_all(&header_of(len)?)?;
    Ok(())
}

/// Writes one frame, header and payload in one vectored write where the writer allows (one
/// segment on an unbuffered socket). Does not flush.
pub fn write_frame(out: &mut impl Write, payload: &[u8]) -> Result<(), FrameError> {
    let header = header_of(payload.len())?;
    let mut slices = [IoSlice::new(&header), IoSlice::new(payload)];
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        match out.write_vectored(bufs) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match input.read(&mut buf[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

impl From<FrameError> for io::Error {
    /// For callers that speak `io::Result`: the I/O error itself, or `InvalidData`.
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
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
            .expect("HEADER bytes");
        let len = frame_len(header);
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

    /// The next whole frame without taking it, `None` if more bytes are needed.
    pub fn peek_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let start = self.start;
        let frame = self.next_frame()?.map(|f| f.len());
        let end = self.start;
        self.start = start;
        Ok(frame.map(|len| &self.buf[end - len..end]))
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
                .expect("HEADER bytes");
            HEADER + frame_len(header)
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
        assert!(dec.finish().is_ok());
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
                assert!(dec.finish().is_ok());
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
        assert!(matches!(
            dec.next_frame(),
            Err(FrameError::Oversized { len: 8, max: 4 })
        ));
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
        assert!(matches!(
            dec.finish(),
            Err(FrameError::Truncated { have: 2, need: 4 })
        ));
        feed(&mut dec, &[0, 5, b'a']);
        assert!(matches!(dec.next_frame(), Ok(None)));
        assert!(matches!(
            dec.finish(),
            Err(FrameError::Truncated { have: 5, need: 9 })
        ));
    }

    /// A reader that hands out at most `step` bytes per read, and can fail at the end.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
        then: Option<io::ErrorKind>,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.bytes.is_empty() {
                return match self.then {
                    Some(kind) => Err(kind.into()),
                    None => Ok(0),
                };
            }
            let n = self.step.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    fn trickle(bytes: &[u8], step: usize) -> Trickle<'_> {
        Trickle {
            bytes,
            step,
            then: None,
        }
    }

    /// A writer that takes at most `step` bytes per call (vectored or not).
    struct Narrow {
        out: Vec<u8>,
        step: usize,
    }

    impl Write for Narrow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len());
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn blocking_reads_give_the_same_frames_however_the_reads_split() {
        let bytes = stream(&[b"a", b"", b"bcdefgh", &[0xff; 300]]);
        for step in [1, 2, 3, 5, 7, 64, 1000] {
            let mut input = trickle(&bytes, step);
            let mut got = Vec::new();
            while let Some(frame) = read_frame(&mut input, 1000).unwrap() {
                got.push(frame);
            }
            assert_eq!(
                got,
                vec![b"a".to_vec(), vec![], b"bcdefgh".to_vec(), vec![0xff; 300]],
                "step {step}"
            );
        }
    }

    #[test]
    fn blocking_writes_survive_partial_writes_and_round_trip() {
        for step in [1, 3, 4, 5, 1 << 20] {
            let mut out = Narrow {
                out: Vec::new(),
                step,
            };
            for p in [&b"hello"[..], b"", &[7; 1000]] {
                write_frame(&mut out, p).unwrap();
            }
            assert_eq!(out.out, stream(&[b"hello", b"", &[7; 1000]]), "step {step}");
        }
        let mut out = Vec::new();
        write_header(&mut out, 3).unwrap();
        out.extend_from_slice(b"abc");
        assert_eq!(read_frame(&mut &out[..], 3).unwrap(), Some(b"abc".to_vec()));
    }

    #[test]
    fn blocking_reads_check_the_maximum_before_reading_the_payload() {
        let bytes = stream(&[&[1; 11]]);
        assert!(matches!(
            read_frame(&mut &bytes[..], 10),
            Err(FrameError::Oversized { len: 11, max: 10 })
        ));
        // The maximum is checked on the header alone: a 4 GiB claim allocates nothing.
        assert!(matches!(
            read_header(&mut &[0xff, 0xff, 0xff, 0xff][..], DEFAULT_MAX_FRAME),
            Err(FrameError::Oversized {
                len: 0xffff_ffff,
                ..
            })
        ));
        assert!(matches!(
            header_of(u32::MAX as usize + 1),
            Err(FrameError::Oversized { .. })
        ));
        assert!(matches!(
            write_header(&mut Vec::new(), u32::MAX as usize + 1),
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn blocking_truncation_and_clean_ends_are_told_apart() {
        assert!(matches!(read_frame(&mut &b""[..], 10), Ok(None)));
        assert!(matches!(
            read_frame(&mut trickle(&[0, 0], 1), 10),
            Err(FrameError::Truncated { have: 2, need: 4 })
        ));
        assert!(matches!(
            read_frame(&mut trickle(&[0, 0, 0, 5, b'a', b'b'], 1), 10),
            Err(FrameError::Truncated { have: 6, need: 9 })
        ));
        let mut part = [0u8; 4];
        assert!(matches!(
            read_payload(&mut &b"ab"[..], &mut part),
            Err(FrameError::Truncated { have: 2, need: 4 })
        ));
    }

    #[test]
    fn blocking_io_errors_keep_their_cause_and_timeouts_are_recognised() {
        let mut input = Trickle {
            bytes: &[0, 0],
            step: 1,
            then: Some(io::ErrorKind::WouldBlock),
        };
        let e = read_frame(&mut input, 10).unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        let source = std::error::Error::source(&e).expect("the io::Error is the source");
        assert!(source.downcast_ref::<io::Error>().is_some());
        let mut reset = Trickle {
            bytes: &[],
            step: 1,
            then: Some(io::ErrorKind::ConnectionReset),
        };
        let e = read_frame(&mut reset, 10).unwrap_err();
        assert!(!e.is_timeout());
        assert!(matches!(&e, FrameError::Io(io) if io.kind() == io::ErrorKind::ConnectionReset));
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn arbitrary_bytes_are_frames_or_errors_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly small lengths, so some frames decode.
                    if i % 4 < 2 {
                        0
                    } else {
                        x as u8
                    }
                })
                .collect();
            for step in [1, 3, 300] {
                let mut input = trickle(&bytes, step);
                let mut used = 0;
                loop {
                    match read_frame(&mut input, 64) {
                        Ok(Some(frame)) => {
                            used += HEADER + frame.len();
                            assert!(frame.len() <= 64);
                        }
                        Ok(None) => {
                            assert_eq!(used, bytes.len());
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            let mut rest = &bytes[..];
            while let Some((payload, used)) = split_frame(rest) {
                assert_eq!(used, HEADER + payload.len());
                rest = &rest[used..];
            }
        }
    }

    #[test]
    fn split_frame_takes_only_whole_frames() {
        let bytes = stream(&[b"xy", b""]);
        assert_eq!(split_frame(&bytes), Some((&b"xy"[..], 6)));
        assert_eq!(split_frame(&bytes[6..]), Some((&b""[..], 4)));
        assert_eq!(split_frame(&bytes[..5]), None);
        assert_eq!(split_frame(&bytes[..3]), None);
        assert_eq!(split_frame(&[0xff, 0xff, 0xff, 0xff, 1]), None);
    }
}
