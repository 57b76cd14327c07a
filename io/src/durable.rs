//! The durable TCP source protocol: a sender that asks for it keeps its frames until the
//! engine says a durable checkpoint holds them, and after a reconnect (the engine crashed and
//! came back, the network broke) resends from where the engine says. The frames are the
//! source's usual frames (`u32` big-endian length + payload); the protocol adds:
//! - the sender's first frame, the hello: `\0QKDURABLE\x01` then the stream's name (UTF-8, 1
//!   to 255 bytes; one name per sender, the same on every reconnect);
//! - the engine's answers, frames on the same connection: `P` + `u64` LE: it has applied
//!   this many frames of the stream, send the next one; `A` + `u64` LE: a durable checkpoint
//!   holds the first n frames, drop them; `B` + a reason: the stream is connected already (a
//!   previous connection the engine has not seen end yet): try again later; `X` + a reason
//!   (UTF-8): refused for good (no `--state-dir`, a bad name), then it closes; `R` + `u64`
//!   LE: rewind (a node of the cluster was lost and its slots restored from a checkpoint that
//!   holds this many frames): send a rewound frame, `\0QKREWOUND\x01` + that `u64` LE, then
//!   the frames from there again. The engine drops what arrives before the rewound frame.
//!
//! [`send_durably`] is the blocking client `quokka-send --durable` uses.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::framing::{read_frame, write_frame};

/// What a durable sender's first frame starts with.
pub const HELLO: &[u8] = b"\0QKDURABLE\x01";

/// What a sender's rewound frame starts with (then the frame count it resends from).
pub const REWOUND: &[u8] = b"\0QKREWOUND\x01";

pub fn encode_rewound(from: u64) -> Vec<u8> {
    [REWOUND, &from.to_le_bytes()].concat()
}

/// The frame count a rewound frame resends from; `None` if the frame is not one.
pub fn rewound_at(frame: &[u8]) -> Option<u64> {
    let n = frame.strip_prefix(REWOUND)?;
    Some(u64::from_le_bytes(n.try_into().ok()?))
}

/// The stream name in a hello: `None` if the frame is not one; an error if it is one with a
/// bad name.
pub fn hello_name(frame: &[u8]) -> Option<Result<&str, String>> {
    let name = frame.strip_prefix(HELLO)?;
    Some(match std::str::from_utf8(name) {
        Ok(n) if !n.is_empty() && n.len() <= 255 => Ok(n),
        Ok(n) => Err(format!(
            "a durable stream's name is 1 to 255 bytes, not {}",
            n.len()
        )),
        Err(_) => Err("a durable stream's name is not UTF-8".into()),
    })
}

pub fn encode_hello(name: &str) -> Vec<u8> {
    [HELLO, name.as_bytes()].concat()
}

/// An answer of the engine to a durable sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It has applied this many frames: send from the next.
    Position(u64),
    /// A durable checkpoint holds this many frames.
    Ack(u64),
    /// The stream is connected already: try again later.
    Busy(String),
    Refused(String),
    /// Send a rewound frame, then the frames from this count again.
    Rewind(u64),
}

impl Answer {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Answer::Position(n) => [&[b'P'][..], &n.to_le_bytes()].concat(),
            Answer::Ack(n) => [&[b'A'][..], &n.to_le_bytes()].concat(),
            Answer::Busy(why) => [&[b'B'][..], why.as_bytes()].concat(),
            Answer::Refused(why) => [&[b'X'][..], why.as_bytes()].concat(),
            Answer::Rewind(n) => [&[b'R'][..], &n.to_le_bytes()].concat(),
        }
    }

    /// The payload framed, ready to write.
    pub fn framed(&self) -> Vec<u8> {
        let mut out = Vec::new();
        crate::framing::encode_frame(&self.encode(), &mut out);
        out
    }

    pub fn decode(payload: &[u8]) -> Option<Answer> {
        let number = || Some(u64::from_le_bytes(payload.get(1..9)?.try_into().ok()?));
        match payload.first()? {
            b'P' if payload.len() == 9 => Some(Answer::Position(number()?)),
            b'A' if payload.len() == 9 => Some(Answer::Ack(number()?)),
            b'R' if payload.len() == 9 => Some(Answer::Rewind(number()?)),
            b'B' => Some(Answer::Busy(
                String::from_utf8_lossy(&payload[1..]).into_owned(),
            )),
            b'X' => Some(Answer::Refused(
                String::from_utf8_lossy(&payload[1..]).into_owned(),
            )),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("the engine refused the stream: {0}")]
    Refused(String),
    #[error("the engine says it applied {position} frames of a stream of {total}: another sender used this name")]
    Ahead { position: u64, total: u64 },
    #[error("no progress for {0:?}: the engine is down or does not answer")]
    NoProgress(Duration),
    #[error("reading the input: {0}")]
    Input(#[source] io::Error),
}

/// How a durable send went.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// Frames written, resends included.
    pub frames_written: u64,
    /// Connections it took.
    pub connections: u64,
}

/// Frames from a given index on: what the sender resends after a reconnect.
pub type Frames = Box<dyn Iterator<Item = io::Result<Vec<u8>>>>;

/// Sends `total` frames as durable stream `name` to `addr`, reconnecting (with backoff) as
/// often as needed, until the engine acknowledges that a durable checkpoint holds all of them.
/// `from(n)` gives the frames from index n on. Gives up after `patience` without progress.
pub fn send_durably(
    addr: SocketAddr,
    name: &str,
    total: u64,
    from: &dyn Fn(u64) -> io::Result<Frames>,
    patience: Duration,
) -> Result<Sent, DurableError> {
    let acked = Arc::new(AtomicU64::new(0));
    let mut sent = Sent::default();
    let mut backoff = Duration::from_millis(20);
    let mut progress_at = Instant::now();
    let mut last_acked = 0;
    loop {
        if acked.load(Ordering::Acquire) > last_acked {
            last_acked = acked.load(Ordering::Acquire);
            progress_at = Instant::now();
        }
        if last_acked >= total {
            return Ok(sent);
        }
        if progress_at.elapsed() > patience {
            return Err(DurableError::NoProgress(patience));
        }
        match connection(addr, name, total, from, &acked, &mut sent) {
            Ok(()) => backoff = Duration::from_millis(20),
            Err(Stop(Some(e))) => return Err(e),
            Err(Stop(None)) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// How long written frames may wait in the sender's buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(2);

/// Why a connection ended: an error to give up with, or `None` to reconnect.
struct Stop(Option<DurableError>);

impl From<io::Error> for Stop {
    fn from(_: io::Error) -> Self {
        Stop(None)
    }
}

/// One connection: hello, position, frames from there, then acknowledgements until every
/// frame is durable (or the connection breaks).
fn connection(
    addr: SocketAddr,
    name: &str,
    total: u64,
    from: &dyn Fn(u64) -> io::Result<Frames>,
    acked: &Arc<AtomicU64>,
    sent: &mut Sent,
) -> Result<(), Stop> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_nodelay(true)?;
    sent.connections += 1;
    write_frame(&mut stream, &encode_hello(name)).map_err(io::Error::from)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let answer = read_frame(&mut stream, 1 << 16).map_err(io::Error::from)?;
    let position = match answer.as_deref().and_then(Answer::decode) {
        Some(Answer::Position(p)) => p,
        Some(Answer::Busy(_)) => return Err(Stop(None)),
        Some(Answer::Refused(why)) => return Err(Stop(Some(DurableError::Refused(why)))),
        _ => return Err(Stop(None)),
    };
    if position > total {
        return Err(Stop(Some(DurableError::Ahead { position, total })));
    }
    stream.set_read_timeout(None)?;
    // Acknowledgements (and rewinds) come on their own thread while frames go out.
    let broken = Arc::new(AtomicBool::new(false));
    // A rewind asked for: the count to resend from, plus one (0: none).
    let rewind = Arc::new(AtomicU64::new(0));
    let rewound = || rewind.swap(0, Ordering::AcqRel).checked_sub(1);
    let reader = {
        let (mut input, acked, broken) = (stream.try_clone()?, acked.clone(), broken.clone());
        let rewind = rewind.clone();
        std::thread::spawn(move || {
            while let Ok(Some(frame)) = read_frame(&mut input, 1 << 16) {
                match Answer::decode(&frame) {
                    Some(Answer::Ack(n)) => {
                        acked.fetch_max(n, Ordering::AcqRel);
                    }
                    Some(Answer::Rewind(n)) => rewind.store(n + 1, Ordering::Release),
                    _ => {}
                }
            }
            broken.store(true, Ordering::Release);
        })
    };
    let result = (|| -> Result<(), Stop> {
        let mut out = io::BufWriter::with_capacity(1 << 16, &stream);
        let mut flushed = Instant::now();
        let mut position = position;
        'send: loop {
            for frame in from(position).map_err(|e| Stop(Some(DurableError::Input(e))))? {
                if let Some(n) = rewound() {
                    write_frame(&mut out, &encode_rewound(n)).map_err(io::Error::from)?;
                    position = n;
                    continue 'send;
                }
                let frame = frame.map_err(|e| Stop(Some(DurableError::Input(e))))?;
                write_frame(&mut out, &frame).map_err(io::Error::from)?;
                sent.frames_written += 1;
                // Frames that come slowly (a paced sender) go out as they come, not 64 KiB later.
                if flushed.elapsed() >= FLUSH_EVERY {
                    out.flush()?;
                    flushed = Instant::now();
                }
                if broken.load(Ordering::Acquire) {
                    return Err(Stop(None));
                }
            }
            out.flush()?;
            // Everything is sent: wait until it is durable.
            while acked.load(Ordering::Acquire) < total {
                if broken.load(Ordering::Acquire) {
                    return Err(Stop(None));
                }
                if let Some(n) = rewound() {
                    write_frame(&mut out, &encode_rewound(n)).map_err(io::Error::from)?;
                    position = n;
                    continue 'send;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            return Ok(());
        }
    })();
    let _ = stream.shutdown(Shutdown::Both);
    let _ = reader.join();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_and_answers_read_back() {
        assert_eq!(hello_name(&encode_hello("sender-1")), Some(Ok("sender-1")));
        assert_eq!(hello_name(b"plain frame"), None);
        assert!(matches!(hello_name(HELLO), Some(Err(_))));
        assert!(matches!(
            hello_name(&[HELLO, &[0xff][..]].concat()),
            Some(Err(_))
        ));
        for a in [
            Answer::Position(7),
            Answer::Ack(u64::MAX),
            Answer::Busy("later".into()),
            Answer::Refused("no".into()),
            Answer::Rewind(12),
        ] {
            assert_eq!(Answer::decode(&a.encode()), Some(a));
        }
        assert_eq!(Answer::decode(b"P12"), None);
        assert_eq!(rewound_at(&encode_rewound(41)), Some(41));
        assert_eq!(rewound_at(&encode_hello("x")), None);
        assert_eq!(rewound_at(REWOUND), None);
        assert_eq!(Answer::decode(b""), None);
    }
}
