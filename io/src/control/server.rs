//! The control endpoint's side: an accept loop that bounds the connections it serves at once,
//! greets each one first, and hands it to the caller as a [`Session`] whose reads are bounded
//! by deadlines for the whole message.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::deadline::{read_message, write_message, Deadline};
use super::{ControlError, Envelope, Greeting, Request, Response, Step};

/// How long a joining node has, once welcomed, to start its cores, link to every member and
/// send `Ready` (the coordinator holds its change lock meanwhile, so every other change waits).
pub const READY_DEADLINE: Duration = Duration::from_secs(15);

/// What an endpoint serves at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (each holds a thread until it ends). Beyond it, a connection
    /// gets a refusal instead of a greeting and is closed at once.
    pub connections: usize,
    /// For a connection's (first) request to arrive whole, from its accept.
    pub request: Duration,
    /// For the peer to take each greeting or answer.
    pub write: Duration,
}

impl Limits {
    /// Default [`Limits::connections`].
    pub const CONNECTIONS: usize = 64;
    /// Default [`Limits::request`].
    pub const REQUEST: Duration = Duration::from_secs(10);
    /// Default [`Limits::write`].
    pub const WRITE: Duration = Duration::from_secs(10);
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: Self::CONNECTIONS,
            request: Self::REQUEST,
            write: Self::WRITE,
        }
    }
}

/// Serves control connections on `listener` for as long as the process runs: at most
/// `limits.connections` at once, each greeted and handed to `handle` on its own thread (so a
/// status answers while a change is in progress). A connection beyond the limit is refused
/// with a clear message on the accepting thread, without a thread of its own.
pub fn serve(
    listener: TcpListener,
    limits: Limits,
    handle: impl Fn(Session) + Send + Sync + 'static,
) -> std::io::Result<JoinHandle<()>> {
    crate::bounded::serve(
        listener,
        "control",
        limits.connections,
        move |stream| refuse(stream, &limits),
        move |stream| match Session::open(stream, limits) {
            Ok(session) => handle(session),
            Err(e) => tracing::debug!("control connection gone before its greeting: {e}"),
        },
    )
}

/// Turns a connection away: a refusal in place of the greeting, then close. The peer has not
/// been greeted, so it has sent nothing we would leave unread.
fn refuse(stream: TcpStream, limits: &Limits) {
    let reason = format!(
        "too many control connections ({} being served); try again shortly",
        limits.connections
    );
    let payload = Greeting::Refused(reason).encode();
    // A fresh socket's buffer takes these few bytes at once; the deadline only guards the
    // accepting thread.
    let deadline = Deadline::after(Duration::from_millis(100));
    let _ = write_message(&stream, &payload, Step::Greeting, deadline);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// The endpoint's side of one greeted control connection.
#[derive(Debug)]
pub struct Session {
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    limits: Limits,
}

impl Session {
    /// Greets a connection just accepted.
    fn open(stream: TcpStream, limits: Limits) -> Result<Session, ControlError> {
        let accepted = Instant::now();
        let peer = stream.peer_addr().map_err(ControlError::Io)?;
        stream.set_nodelay(true).map_err(ControlError::Io)?;
        let greeting = Greeting::Ready.encode();
        write_message(
            &stream,
            &greeting,
            Step::Greeting,
            Deadline::after(limits.write),
        )?;
        Ok(Session {
            stream,
            peer,
            accepted,
            limits,
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The connection's request, which must arrive whole within [`Limits::request`] of the
    /// accept. [`ControlError::Closed`] if the peer left without one.
    pub fn request(&mut self) -> Result<Envelope, ControlError> {
        let deadline = Deadline::from(self.accepted, self.limits.request);
        Request::decode(&read_message(&self.stream, Step::Request, deadline)?)
    }

    /// A later request of the same conversation (a joining node's `Ready`), which must arrive
    /// whole within `within` from now.
    pub fn next_request(&mut self, step: Step, within: Duration) -> Result<Envelope, ControlError> {
        let deadline = Deadline::after(within);
        Request::decode(&read_message(&self.stream, step, deadline)?)
    }

    /// Sends an answer; the peer must take it within [`Limits::write`].
    pub fn answer(&mut self, response: &Response) -> Result<(), ControlError> {
        let deadline = Deadline::after(self.limits.write);
        write_message(&self.stream, &response.encode(), Step::Answer, deadline)
    }
}
