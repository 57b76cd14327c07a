//! The control protocol spoken by `quokka ctl`, by a joining node and by `quokka run --control`.
//!
//! Every message is a Wallaroo frame (`u32` big-endian length + payload, see [`crate::framing`])
//! whose payload starts with a magic, a version and a kind. The endpoint speaks first: as soon
//! as it accepts a connection it sends a [`Greeting`] (or, when it serves too many connections
//! already, a refusal, and closes). A client sends nothing, in particular not the cluster token,
//! until it has read a valid greeting within a deadline: a port that is not a control endpoint
//! (a source, a sink) never sees the token. A request then carries the cluster token (one
//! length byte, then the bytes), then its body; the endpoint answers with a [`Response`]. A join
//! is a conversation of two requests on one connection: `Join`, answered by a `Welcome`, then
//! `Ready`, answered by `Joined` (the join's report) or an error. The engine's bodies (join
//! request, welcome, report) are opaque bytes here.
//!
//! Decoding is pure and total: any bytes give a message or an error, never a panic. The
//! blocking ends are [`Client`] (`quokka ctl`, a joining or leaving node) and [`serve`] with its
//! [`Session`]s (the endpoint), each bounded by deadlines for the whole exchange.

mod client;
mod deadline;
#[cfg(test)]
mod handshake_tests;
mod server;

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::framing::FrameError;

pub use self::client::{Client, Timeouts, JOIN_ANSWER};
pub use self::server::{serve, Limits, Session, READY_DEADLINE};

/// First bytes of every control payload.
pub const MAGIC: [u8; 2] = *b"QK";
/// The protocol version this build speaks. Version 3: the endpoint greets first. Older versions
/// are refused by number.
pub const VERSION: u8 = 3;
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
    /// Take a checkpoint now and answer once it is durable.
    Checkpoint,
    /// What `Status` says, as one JSON object.
    StatusJson,
    /// Autoscaling `on`, `off`, or on between `MIN..MAX` cores.
    Autoscale(String),
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
    /// The answer to a joining node's `Ready` once slots moved to it: the engine's report of
    /// the change (opaque here).
    Joined(Vec<u8>),
}

/// What the endpoint sends first on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// Go ahead: send a request.
    Ready,
    /// The endpoint will not serve this connection (it serves too many already) and closes it.
    Refused(String),
}

/// A step of a control conversation, to say which one did not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Greeting,
    Request,
    Answer,
    /// A joining node's second request, after the welcome.
    Ready,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Greeting => "greeting",
            Step::Request => "request",
            Step::Answer => "answer",
            Step::Ready => "Ready",
        })
    }
}

/// Why a peer without a greeting is taken for something else than a control endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoGreeting {
    /// It accepted the connection and said nothing (a source port, a sink, an HTTP server).
    Silent(Duration),
    /// It closed the connection without a word.
    Closed,
    /// It sent bytes that are not a control greeting.
    Garbage,
}

impl std::fmt::Display for NoGreeting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoGreeting::Silent(after) => write!(f, "no greeting within {after:?}"),
            NoGreeting::Closed => f.write_str("it closed the connection without a greeting"),
            NoGreeting::Garbage => f.write_str("it sent something other than a greeting"),
        }
    }
}

/// Why a control message or conversation failed. Bad input (a message that does not decode),
/// the peer (no greeting, a refusal, a deadline), or the network.
#[derive(Debug, Error)]
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
    #[error("control message is cut short")]
    Truncated,
    /// An oversized or truncated frame (never [`FrameError::Io`]: that becomes [`Self::Io`]).
    #[error(transparent)]
    Frame(FrameError),
    #[error("{addr} is not a Quokka control endpoint ({why})")]
    NotAnEndpoint { addr: SocketAddr, why: NoGreeting },
    #[error("{addr} refused the connection: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("no {step} within {after:?}")]
    Timeout { step: Step, after: Duration },
    #[error("the peer did not read the {step} within {after:?}")]
    Unread { step: Step, after: Duration },
    #[error("the connection closed with no {0}")]
    Closed(Step),
    #[error("cannot reach the control endpoint at {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("control connection failed")]
    Io(#[source] std::io::Error),
}

impl From<FrameError> for ControlError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => ControlError::Io(e),
            e => ControlError::Frame(e),
        }
    }
}

const STATUS: u8 = 1;
const GROW_CORES: u8 = 2;
const SHRINK_CORES: u8 = 3;
const REMOVE_NODE: u8 = 4;
const JOIN: u8 = 5;
const READY: u8 = 6;
const CHECKPOINT: u8 = 7;
const STATUS_JSON: u8 = 8;
const AUTOSCALE: u8 = 9;
const GREETING: u8 = 0x80;
const OK: u8 = 0x81;
const ERROR: u8 = 0x82;
const WELCOME: u8 = 0x83;
const JOINED: u8 = 0x84;

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
            Request::Checkpoint => (CHECKPOINT, &[]),
            Request::StatusJson => (STATUS_JSON, &[]),
            Request::Autoscale(how) => (AUTOSCALE, how.as_bytes()),
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
        if !(STATUS..=AUTOSCALE).contains(&kind) {
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
            CHECKPOINT => empty(body, Request::Checkpoint)?,
            STATUS_JSON => empty(body, Request::StatusJson)?,
            AUTOSCALE => Request::Autoscale(
                String::from_utf8(body.to_vec()).map_err(|_| ControlError::BadText)?,
            ),
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
            Response::Joined(body) => (JOINED, &body[..]),
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
            JOINED => Ok(Response::Joined(body.to_vec())),
            _ => Err(ControlError::UnknownKind(kind)),
        }
    }
}

impl Greeting {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Greeting::Ready => header(GREETING),
            // The bytes of an error response: a client that reads it as an answer sees why.
            Greeting::Refused(reason) => Response::Error(reason.clone()).encode(),
        }
    }

    pub fn decode(payload: &[u8]) -> Result<Greeting, ControlError> {
        let (kind, body) = open(payload)?;
        match kind {
            GREETING if body.is_empty() => Ok(Greeting::Ready),
            GREETING => Err(ControlError::BadLength {
                kind,
                len: body.len(),
                expected: "0",
            }),
            ERROR => Ok(Greeting::Refused(
                String::from_utf8(body.to_vec()).map_err(|_| ControlError::BadText)?,
            )),
            _ => Err(ControlError::UnknownKind(kind)),
        }
    }
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

    /// The error of a request that must not decode.
    fn bad_request(payload: &[u8]) -> ControlError {
        match Request::decode(payload) {
            Ok(e) => panic!("{payload:?} decoded as {e:?}"),
            Err(e) => e,
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
            Request::Checkpoint,
            Request::StatusJson,
            Request::Autoscale("1..4".into()),
        ] {
            for token in ["", "secret", &"t".repeat(255)] {
                let payload = r.encode(token).unwrap();
                assert_eq!(Request::decode(&payload).unwrap(), env(token, r.clone()));
            }
        }
        assert!(matches!(
            Request::Status.encode(&"t".repeat(256)),
            Err(ControlError::TokenTooLong)
        ));
        for r in [
            Response::Ok("fine\nlines".into()),
            Response::Error("no".into()),
            Response::Ok(String::new()),
            Response::Welcome(vec![9, 8, 7]),
            Response::Joined(vec![6, 5]),
            Response::Joined(Vec::new()),
        ] {
            assert_eq!(Response::decode(&r.encode()).unwrap(), r);
        }
        for g in [Greeting::Ready, Greeting::Refused("busy".into())] {
            assert_eq!(Greeting::decode(&g.encode()).unwrap(), g);
        }
        assert_eq!(Greeting::Ready.encode(), b"QK\x03\x80");
    }

    #[test]
    fn every_malformed_request_is_an_error() {
        assert!(matches!(bad_request(b""), ControlError::BadMagic));
        assert!(matches!(
            bad_request(b"GET / HTTP/1.1"),
            ControlError::BadMagic
        ));
        assert!(matches!(bad_request(b"QK"), ControlError::Truncated));
        assert!(matches!(bad_request(b"QK\x03"), ControlError::Truncated));
        assert!(matches!(
            bad_request(b"QK\x00\x01"),
            ControlError::Version(0)
        ));
        // Versions 1 (before cluster tokens) and 2 (before the greeting) are refused by number.
        assert!(matches!(
            bad_request(b"QK\x01\x01"),
            ControlError::Version(1)
        ));
        let v2 = bad_request(b"QK\x02\x01\x00");
        assert!(matches!(v2, ControlError::Version(2)));
        assert_eq!(
            v2.to_string(),
            "control protocol version 2 is not supported (this build speaks 3)"
        );
        assert!(matches!(
            bad_request(b"QK\x03\x01"),
            ControlError::Truncated
        ));
        assert!(
            matches!(bad_request(b"QK\x03\x01\x05ab"), ControlError::Truncated),
            "token shorter than its length"
        );
        assert!(
            matches!(
                bad_request(b"QK\x03\x01\x02\xff\xfe"),
                ControlError::BadText
            ),
            "token not UTF-8"
        );
        assert!(matches!(
            bad_request(b"QK\x03\x0a\x00"),
            ControlError::UnknownKind(10)
        ));
        assert!(matches!(
            bad_request(b"QK\x03\x01\x00x"),
            ControlError::BadLength { kind: 1, .. }
        ));
        assert!(matches!(
            bad_request(b"QK\x03\x06\x00x"),
            ControlError::BadLength { kind: 6, .. }
        ));
        assert!(matches!(
            bad_request(b"QK\x03\x02\x00\x00"),
            ControlError::BadLength {
                kind: 2,
                len: 1,
                ..
            }
        ));
        assert!(matches!(
            bad_request(b"QK\x03\x03\x00\x00\x01\x02"),
            ControlError::BadLength { len: 3, .. }
        ));
        assert!(
            matches!(bad_request(b"QK\x03\x04\x00\xff"), ControlError::BadText),
            "node name not UTF-8"
        );
        assert!(matches!(
            bad_request(&Response::Ok("x".into()).encode()),
            ControlError::UnknownKind(OK)
        ));
        assert!(
            matches!(
                bad_request(&Greeting::Ready.encode()),
                ControlError::UnknownKind(GREETING)
            ),
            "a greeting is not a request"
        );
        assert!(matches!(
            Response::decode(b"QK\x03\x81\xff\xfe"),
            Err(ControlError::BadText)
        ));
        assert_eq!(Response::Joined(vec![7]).encode(), b"QK\x03\x84\x07");
        assert!(matches!(
            Response::decode(b"QK\x03\x85"),
            Err(ControlError::UnknownKind(0x85))
        ));
        assert!(matches!(
            Response::decode(b"QK\x03\x05"),
            Err(ControlError::UnknownKind(JOIN))
        ));
    }

    #[test]
    fn every_malformed_greeting_is_an_error() {
        assert!(matches!(
            Greeting::decode(b"SSH-2.0-OpenSSH"),
            Err(ControlError::BadMagic)
        ));
        assert!(matches!(
            Greeting::decode(b"QK\x02\x80"),
            Err(ControlError::Version(2))
        ));
        assert!(matches!(
            Greeting::decode(b"QK\x04\x80"),
            Err(ControlError::Version(4))
        ));
        assert!(matches!(
            Greeting::decode(b"QK\x03"),
            Err(ControlError::Truncated)
        ));
        assert!(matches!(
            Greeting::decode(b"QK\x03\x80x"),
            Err(ControlError::BadLength { .. })
        ));
        assert!(matches!(
            Greeting::decode(b"QK\x03\x81ok"),
            Err(ControlError::UnknownKind(OK))
        ));
        assert!(matches!(
            Greeting::decode(b"QK\x03\x82\xff"),
            Err(ControlError::BadText)
        ));
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
            let _ = Greeting::decode(&bytes);
            for prefix in [
                &b"QK\x03"[..],
                b"QK\x03\x05",
                b"QK\x03\x04\x00",
                b"QK\x03\x80",
            ] {
                let mut prefixed = prefix.to_vec();
                prefixed.extend_from_slice(&bytes);
                let _ = Request::decode(&prefixed);
                let _ = Response::decode(&prefixed);
                let _ = Greeting::decode(&prefixed);
            }
        }
    }

    #[test]
    fn errors_read_as_what_happened() {
        let timeout = ControlError::Timeout {
            step: Step::Request,
            after: Duration::from_secs(10),
        };
        assert_eq!(timeout.to_string(), "no request within 10s");
        let silent = ControlError::NotAnEndpoint {
            addr: "127.0.0.1:7002".parse().unwrap(),
            why: NoGreeting::Silent(Timeouts::GREETING),
        };
        assert_eq!(
            silent.to_string(),
            "127.0.0.1:7002 is not a Quokka control endpoint (no greeting within 5s)"
        );
        let io = ControlError::from(FrameError::Io(std::io::ErrorKind::BrokenPipe.into()));
        assert!(matches!(&io, ControlError::Io(_)));
        assert!(
            std::error::Error::source(&io).is_some(),
            "the io::Error is the source"
        );
    }
}
