//! The control protocol spoken by `quokka ctl`, by a joining node and by `quokka run --control`:
//! requests and responses, each a Wallaroo frame (`u32` big-endian length + payload) whose
//! payload starts with a magic, a version and a kind. A request then carries the cluster token
//! (one length byte, then the bytes), then its body. Decoding is pure and total: any bytes give
//! a message or an error, never a panic.

use std::io::{Read, Write};

use thiserror::Error;

use crate::framing::encode_frame;

/// First bytes of every control payload.
pub const MAGIC: [u8; 2] = *b"QK";
/// The protocol version this build speaks.
pub const VERSION: u8 = 2;
/// Largest control payload accepted.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    GrowCores(u16),
    ShrinkCores(u16),
    /// Move a node's slots away, then let it exit.
    RemoveNode(String),
    /// A node asks to join; the body is the engine's join request (opaque here).
    Join(Vec<u8>),
    /// The joining node started its cores and links: move slots to it.
    Ready,
}

/// A request with the cluster token it was sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub token: String,
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Ok(String),
    Error(String),
    /// The answer to a join: the engine's welcome (opaque here).
    Welcome(Vec<u8>),
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
    #[error("cluster token longer than 255 bytes")]
    TokenTooLong,
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
const REMOVE_NODE: u8 = 4;
const JOIN: u8 = 5;
const READY: u8 = 6;
const OK: u8 = 0x81;
const ERROR: u8 = 0x82;
const WELCOME: u8 = 0x83;

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
    /// The payload of this request sent with `token` (at most 255 bytes).
    pub fn encode(&self, token: &str) -> Result<Vec<u8>, ControlError> {
        let (kind, body): (u8, &[u8]) = match self {
            Request::Status => (STATUS, &[]),
            Request::GrowCores(n) => return Self::with_body(GROW_CORES, token, &n.to_be_bytes()),
            Request::ShrinkCores(n) => {
                return Self::with_body(SHRINK_CORES, token, &n.to_be_bytes())
            }
            Request::RemoveNode(name) => (REMOVE_NODE, name.as_bytes()),
            Request::Join(body) => (JOIN, body),
            Request::Ready => (READY, &[]),
        };
        Self::with_body(kind, token, body)
    }

    fn with_body(kind: u8, token: &str, body: &[u8]) -> Result<Vec<u8>, ControlError> {
        let len = u8::try_from(token.len()).map_err(|_| ControlError::TokenTooLong)?;
        let mut out = header(kind);
        out.push(len);
        out.extend_from_slice(token.as_bytes());
        out.extend_from_slice(body);
        Ok(out)
    }

    pub fn decode(payload: &[u8]) -> Result<Envelope, ControlError> {
        let (kind, rest) = open(payload)?;
        if !(STATUS..=READY).contains(&kind) {
            return Err(ControlError::UnknownKind(kind));
        }
        let len = usize::from(*rest.first().ok_or(ControlError::Truncated)?);
        let token = rest.get(1..1 + len).ok_or(ControlError::Truncated)?;
        let token = String::from_utf8(token.to_vec()).map_err(|_| ControlError::BadText)?;
        let body = &rest[1 + len..];
        let count = |body: &[u8]| -> Result<u16, ControlError> {
            let bytes: [u8; 2] = body.try_into().map_err(|_| ControlError::BadLength {
                kind,
                len: body.len(),
                expected: "2",
            })?;
            Ok(u16::from_be_bytes(bytes))
        };
        let empty = |body: &[u8], r: Request| {
            if body.is_empty() {
                Ok(r)
            } else {
                Err(ControlError::BadLength {
                    kind,
                    len: body.len(),
                    expected: "0",
                })
            }
        };
        let request = match kind {
            STATUS => empty(body, Request::Status)?,
            GROW_CORES => Request::GrowCores(count(body)?),
            SHRINK_CORES => Request::ShrinkCores(count(body)?),
            REMOVE_NODE => Request::RemoveNode(
                String::from_utf8(body.to_vec()).map_err(|_| ControlError::BadText)?,
            ),
            JOIN => Request::Join(body.to_vec()),
            READY => empty(body, Request::Ready)?,
            _ => return Err(ControlError::UnknownKind(kind)),
        };
        Ok(Envelope { token, request })
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body) = match self {
            Response::Ok(t) => (OK, t.as_bytes()),
            Response::Error(t) => (ERROR, t.as_bytes()),
            Response::Welcome(body) => (WELCOME, &body[..]),
        };
        let mut out = header(kind);
        out.extend_from_slice(body);
        out
    }

    pub fn decode(payload: &[u8]) -> Result<Response, ControlError> {
        let (kind, body) = open(payload)?;
        let text = || String::from_utf8(body.to_vec()).map_err(|_| ControlError::BadText);
        match kind {
            OK => Ok(Response::Ok(text()?)),
            ERROR => Ok(Response::Error(text()?)),
            WELCOME => Ok(Response::Welcome(body.to_vec())),
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

    fn env(token: &str, request: Request) -> Envelope {
        Envelope {
            token: token.into(),
            request,
        }
    }

    #[test]
    fn requests_and_responses_round_trip() {
        for r in [
            Request::Status,
            Request::GrowCores(1),
            Request::ShrinkCores(65535),
            Request::RemoveNode("w2".into()),
            Request::Join(vec![0, 1, 2, 255]),
            Request::Join(Vec::new()),
            Request::Ready,
        ] {
            for token in ["", "secret", &"t".repeat(255)] {
                let payload = r.encode(token).unwrap();
                assert_eq!(Request::decode(&payload), Ok(env(token, r.clone())));
            }
        }
        assert_eq!(
            Request::Status.encode(&"t".repeat(256)),
            Err(ControlError::TokenTooLong)
        );
        for r in [
            Response::Ok("fine\nlines".into()),
            Response::Error("no".into()),
            Response::Ok(String::new()),
            Response::Welcome(vec![9, 8, 7]),
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
        assert_eq!(Request::decode(b"QK\x02"), Err(ControlError::Truncated));
        assert_eq!(
            Request::decode(b"QK\x00\x01"),
            Err(ControlError::Version(0))
        );
        // Version 1 (before cluster tokens) is refused by name.
        assert_eq!(
            Request::decode(b"QK\x01\x01"),
            Err(ControlError::Version(1))
        );
        assert_eq!(Request::decode(b"QK\x02\x01"), Err(ControlError::Truncated));
        assert_eq!(
            Request::decode(b"QK\x02\x01\x05ab"),
            Err(ControlError::Truncated),
            "token shorter than its length"
        );
        assert_eq!(
            Request::decode(b"QK\x02\x01\x02\xff\xfe"),
            Err(ControlError::BadText),
            "token not UTF-8"
        );
        assert_eq!(
            Request::decode(b"QK\x02\x09\x00"),
            Err(ControlError::UnknownKind(9))
        );
        assert!(matches!(
            Request::decode(b"QK\x02\x01\x00x"),
            Err(ControlError::BadLength { kind: 1, .. })
        ));
        assert!(matches!(
            Request::decode(b"QK\x02\x06\x00x"),
            Err(ControlError::BadLength { kind: 6, .. })
        ));
        assert!(matches!(
            Request::decode(b"QK\x02\x02\x00\x00"),
            Err(ControlError::BadLength {
                kind: 2,
                len: 1,
                ..
            })
        ));
        assert!(matches!(
            Request::decode(b"QK\x02\x03\x00\x00\x01\x02"),
            Err(ControlError::BadLength { len: 3, .. })
        ));
        assert_eq!(
            Request::decode(b"QK\x02\x04\x00\xff"),
            Err(ControlError::BadText),
            "node name not UTF-8"
        );
        assert_eq!(
            Request::decode(&Response::Ok("x".into()).encode()),
            Err(ControlError::UnknownKind(OK))
        );
        assert_eq!(
            Response::decode(b"QK\x02\x81\xff\xfe"),
            Err(ControlError::BadText)
        );
        assert_eq!(
            Response::decode(b"QK\x02\x05"),
            Err(ControlError::UnknownKind(JOIN))
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
            for prefix in [&b"QK\x02"[..], b"QK\x02\x05", b"QK\x02\x04\x00"] {
                let mut prefixed = prefix.to_vec();
                prefixed.extend_from_slice(&bytes);
                let _ = Request::decode(&prefixed);
                let _ = Response::decode(&prefixed);
            }
        }
    }

    #[test]
    fn frames_are_bounded_and_whole() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::GrowCores(2).encode("").unwrap()).unwrap();
        assert_eq!(
            Request::decode(&read_frame(&mut &buf[..]).unwrap()),
            Ok(env("", Request::GrowCores(2)))
        );
        assert_eq!(read_frame(&mut &buf[..5]), Err(ControlError::Truncated));
        let huge = (MAX_CONTROL_FRAME as u32 + 1).to_be_bytes();
        assert_eq!(
            read_frame(&mut &huge[..]),
            Err(ControlError::Oversized(MAX_CONTROL_FRAME + 1))
        );
    }
}
