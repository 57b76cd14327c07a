//! Reading and writing control messages by a deadline for the whole message: a timeout per
//! `read` would let a peer that sends one byte now and then hold a connection forever.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{ControlError, Step, MAX_CONTROL_FRAME};
use crate::framing;

/// A point in time, and the span it was set for (to say "no answer within 2m").
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    at: Instant,
    span: Duration,
}

impl Deadline {
    pub(super) fn after(span: Duration) -> Self {
        Self {
            at: Instant::now() + span,
            span,
        }
    }

    /// A deadline `span` after `start`.
    pub(super) fn from(start: Instant, span: Duration) -> Self {
        Self {
            at: start + span,
            span,
        }
    }

    /// Time left; a `TimedOut` error once passed (a zero socket timeout would mean "none").
    fn left(&self) -> io::Result<Duration> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::ErrorKind::TimedOut.into())
        } else {
            Ok(left)
        }
    }
}

/// A socket whose every read and write ends by one deadline.
struct ByDeadline<'a> {
    stream: &'a TcpStream,
    deadline: Deadline,
}

impl Read for ByDeadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.deadline.left()?))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

impl Write for ByDeadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.deadline.left()?))?;
        let mut stream = self.stream;
        stream.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.deadline.left()?))?;
        let mut stream = self.stream;
        stream.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads one control payload, the whole of it by `deadline`.
pub(super) fn read_message(
    stream: &TcpStream,
    step: Step,
    deadline: Deadline,
) -> Result<Vec<u8>, ControlError> {
    let mut input = ByDeadline { stream, deadline };
    match framing::read_frame(&mut input, MAX_CONTROL_FRAME) {
        Ok(Some(payload)) => Ok(payload),
        Ok(None) => Err(ControlError::Closed(step)),
        Err(e) if e.is_timeout() => Err(ControlError::Timeout {
            step,
            after: deadline.span,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Writes one control payload, the whole of it by `deadline`.
pub(super) fn write_message(
    stream: &TcpStream,
    payload: &[u8],
    step: Step,
    deadline: Deadline,
) -> Result<(), ControlError> {
    let mut out = ByDeadline { stream, deadline };
    match framing::write_frame(&mut out, payload) {
        Ok(()) => Ok(()),
        Err(e) if e.is_timeout() => Err(ControlError::Unread {
            step,
            after: deadline.span,
        }),
        Err(e) => Err(e.into()),
    }
}
