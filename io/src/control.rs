//! The control protocol spoken by `quokka ctl` and `quokka run --control`: one request frame,
//! one response frame, each a Wallaroo frame (`u32` big-endian length + payload) whose payload
//! starts with a magic, a version and a kind. Decoding is pure and total: any bytes give a
//! message or an error, never a panic.

use std::io::{Read, Write};

use thiserror::Error;

use crate::framing::encode_frame;

/// First bytes of every control payload.
pub const MAGIC: [u8; 2] = *b"QK";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Largest control payload accepted.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    GrowCores(u16),
    ShrinkCores(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Ok(String),
    Error(String),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("not a Quokka control message (bad magic)")]
    BadMagic,
    #[error("control protocol version {0} is not supported (this build speaks {VERSION})")]
    Version(u8),
    #[error("unknown control message kind {0}")]
    UnknownKind(u8),
    #[error("control message of kind {kind} has a {len}-byte body, expected {expected}")]
    BadLength {
        kind: u8,
        len: usize,
        expected: &'static str,
    },
    #[error("control message text is not UTF-8")]
    BadText,
    #[error("control frame of {0} bytes exceeds the maximum")]
    Oversized(usize),
    #[error("control connection closed before a whole message")]
    Truncated,
    #[error("control connection: {0}")]
    Io(String),
}

const STATUS: u8 = 1;
const GROW_CORES: u8 = 2;
const SHRINK_CORES: u8 = 3;
const OK: u8 = 0x81;
const ERROR: u8 = 0x82;

fn header(kind: u8) -> Vec<u8> {
    vec![MAGIC[0], MAGIC[1], VERSION, kind]
}

/// Checks magic and version, returns the kind and the body.
fn open(payload: &[u8]) -> Result<(u8, &[u8]), ControlError> {
    if payload.len() < 2 || payload[..2] != MAGIC {
        return Err(ControlError::BadMagic);
    }
    match payload.get(2) {
        Some(&VERSION) => {}
        Some(&v) => return Err(ControlError::Version(v)),
        None => return Err(ControlError::Truncated),
    }
    let kind = *payload.get(3).ok_or(ControlError::Truncated)?;
    Ok((kind, &payload[4..]))
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Request::Status => header(STATUS),
            Request::GrowCores(n) => [header(GROW_CORES), n.to_be_bytes().to_vec()].concat(),
            Request::ShrinkCores(n) => [header(SHRINK_CORES), n.to_be_bytes().to_vec()].concat(),
        }
    }

    pub fn decode(payload: &[u8]) -> Result<Request, ControlError> {
        let (kind, body) = open(payload)?;
        let count = |body: &[u8]| -> Result<u16, ControlError> {
            let bytes: [u8; 2] = body.try_into().map_err(|_| ControlError::BadLength {
                kind,
                len: body.len(),
                expected: "2",
            })?;
            Ok(u16::from_be_bytes(bytes))
        };
        match kind {
            STATUS if body.is_empty() => Ok(Request::Status),
            STATUS => Err(ControlError::BadLength {
                kind,
                len: body.len(),
                expected: "0",
            }),
            GROW_CORES => Ok(Request::GrowCores(count(body)?)),
            SHRINK_CORES => Ok(Request::ShrinkCores(count(body)?)),
            _ => Err(ControlError::UnknownKind(kind)),
        }
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, text) = match self {
            Response::Ok(t) => (OK, t),
            Response::Error(t) => (ERROR, t),
        };
        let mut out = header(kind);
        out.extend_from_slice(text.as_bytes());
        out
    }

    pub fn decode(payload: &[u8]) -> Result<Response, ControlError> {
        let (kind, body) = open(payload)?;
        let text = || String::from_utf8(body.to_vec()).map_err(|_| ControlError::BadText);
        match kind {
            OK => Ok(Response::Ok(text()?)),
            ERROR => Ok(Response::Error(text()?)),
            _ => Err(ControlError::UnknownKind(kind)),
        }
    }
}

/// Writes one control payload as a frame.
pub fn write_frame(out: &mut impl Write, payload: &[u8]) -> Result<(), ControlError> {
    let mut framed = Vec::with_capacity(payload.len() + 4);
    encode_frame(payload, &mut framed);
    out.write_all(&framed)
        .and_then(|()| out.flush())
        .map_err(|e| ControlError::Io(e.to_string()))
}

/// Reads one control frame's payload.
pub fn read_frame(input: &mut impl Read) -> Result<Vec<u8>, ControlError> {
    let mut header = [0u8; 4];
    read_exact(input, &mut header)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_CONTROL_FRAME {
        return Err(ControlError::Oversized(len));
    }
    let mut payload = vec![0; len];
    read_exact(input, &mut payload)?;
    Ok(payload)
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), ControlError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ControlError::Truncated,
        _ => ControlError::Io(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        for r in [
            Request::Status,
            Request::GrowCores(1),
            Request::ShrinkCores(65535),
        ] {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
        for r in [
            Response::Ok("fine\nlines".into()),
            Response::Error("no".into()),
            Response::Ok(String::new()),
        ] {
            assert_eq!(Response::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn every_malformed_request_is_an_error() {
        assert_eq!(Request::decode(b""), Err(ControlError::BadMagic));
        assert_eq!(
            Request::decode(b"GET / HTTP/1.1"),
            Err(ControlError::BadMagic)
        );
        assert_eq!(Request::decode(b"QK"), Err(ControlError::Truncated));
        assert_eq!(Request::decode(b"QK\x01"), Err(ControlError::Truncated));
        assert_eq!(
            Request::decode(b"QK\x00\x01"),
            Err(ControlError::Version(0))
        );
        assert_eq!(
            Request::decode(b"QK\x02\x01"),
            Err(ControlError::Version(2))
        );
        assert_eq!(
            Request::decode(b"QK\x01\x09"),
            Err(ControlError::UnknownKind(9))
        );
        assert!(matches!(
            Request::decode(b"QK\x01\x01x"),
            Err(ControlError::BadLength { kind: 1, .. })
        ));
        assert!(matches!(
            Request::decode(b"QK\x01\x02\x00"),
            Err(ControlError::BadLength {
                kind: 2,
                len: 1,
                ..
            })
        ));
        assert!(matches!(
            Request::decode(b"QK\x01\x03\x00\x01\x02"),
            Err(ControlError::BadLength { len: 3, .. })
        ));
        assert_eq!(
            Request::decode(&Response::Ok("x".into()).encode()),
            Err(ControlError::UnknownKind(OK))
        );
        assert_eq!(
            Response::decode(b"QK\x01\x81\xff\xfe"),
            Err(ControlError::BadText)
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x1234_5678;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
            let mut prefixed = b"QK\x01".to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = Request::decode(&prefixed);
        }
    }

    #[test]
    fn frames_are_bounded_and_whole() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::GrowCores(2).encode()).unwrap();
        assert_eq!(
            Request::decode(&read_frame(&mut &buf[..]).unwrap()),
            Ok(Request::GrowCores(2))
        );
        assert_eq!(read_frame(&mut &buf[..5]), Err(ControlError::Truncated));
        let huge = (MAX_CONTROL_FRAME as u32 + 1).to_be_bytes();
        assert_eq!(
            read_frame(&mut &huge[..]),
            Err(ControlError::Oversized(MAX_CONTROL_FRAME + 1))
        );
    }
}
