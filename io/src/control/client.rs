//! The blocking control client of `quokka ctl`, of a joining node and of a leaving one: it
//! waits for the endpoint's greeting before it sends a byte, and bounds every wait.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::deadline::{read_message, write_message, Deadline};
use super::{ControlError, Greeting, NoGreeting, Request, Response, Step};

/// How long a client waits, at most, for each part of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To establish the TCP connection.
    pub connect: Duration,
    /// For the endpoint's greeting, once connected. A peer that says nothing in this time is
    /// not a control endpoint (a source or sink port, say).
    pub greeting: Duration,
    /// For the whole of each request: sending it and reading the answer. A change (grow-cores,
    /// a join's slot moves) may legitimately take tens of seconds.
    pub answer: Duration,
}

impl Timeouts {
    /// Default [`Timeouts::connect`].
    pub const CONNECT: Duration = Duration::from_secs(5);
    /// Default [`Timeouts::greeting`].
    pub const GREETING: Duration = Duration::from_secs(5);
    /// Default [`Timeouts::answer`].
    pub const ANSWER: Duration = Duration::from_secs(120);
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Self::CONNECT,
            greeting: Self::GREETING,
            answer: Self::ANSWER,
        }
    }
}

/// How long a joining node waits for the answer to its `Ready`: the coordinator answers once
/// every slot bound for the node has moved, which takes as long as the state takes to copy (10 MB
/// in 0.3 s on loopback; gigabytes take minutes). Giving up while slots move would strand the
/// ones already moved, so this is long; it only ends the wait on a coordinator that never
/// answers.
pub const JOIN_ANSWER: Duration = Duration::from_secs(30 * 60);

/// A connection to a control endpoint that has greeted us: requests may be sent.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    timeouts: Timeouts,
}

impl Client {
    /// Connects and reads the endpoint's greeting; sends nothing. Fails with
    /// [`ControlError::NotAnEndpoint`] if the peer does not greet within
    /// [`Timeouts::greeting`], and with [`ControlError::Refused`] if the endpoint turned the
    /// connection away (it serves too many).
    pub fn connect(addr: SocketAddr, timeouts: Timeouts) -> Result<Client, ControlError> {
        let stream = TcpStream::connect_timeout(&addr, timeouts.connect)
            .map_err(|source| ControlError::Connect { addr, source })?;
        stream.set_nodelay(true).map_err(ControlError::Io)?;
        let not_an_endpoint = |why| ControlError::NotAnEndpoint { addr, why };
        let payload =
            match read_message(&stream, Step::Greeting, Deadline::after(timeouts.greeting)) {
                Ok(payload) => payload,
                Err(ControlError::Timeout { after, .. }) => {
                    return Err(not_an_endpoint(NoGreeting::Silent(after)))
                }
                Err(ControlError::Closed(_)) => return Err(not_an_endpoint(NoGreeting::Closed)),
                Err(ControlError::Frame(_)) => return Err(not_an_endpoint(NoGreeting::Garbage)),
                Err(e) => return Err(e),
            };
        match Greeting::decode(&payload) {
            Ok(Greeting::Ready) => Ok(Client {
                stream,
                addr,
                timeouts,
            }),
            Ok(Greeting::Refused(reason)) => Err(ControlError::Refused { addr, reason }),
            Err(e @ ControlError::Version(_)) => Err(e),
            Err(_) => Err(not_an_endpoint(NoGreeting::Garbage)),
        }
    }

    /// The endpoint's address.
    pub fn peer(&self) -> SocketAddr {
        self.addr
    }

    /// This end's address (the interface that reaches the endpoint).
    pub fn local_addr(&self) -> Result<SocketAddr, ControlError> {
        self.stream.local_addr().map_err(ControlError::Io)
    }

    /// Sends `request` with the cluster token and reads the answer, the whole exchange within
    /// [`Timeouts::answer`]. A conversation (a join) sends several on one client.
    pub fn request(&mut self, token: &str, request: &Request) -> Result<Response, ControlError> {
        self.request_within(token, request, self.timeouts.answer)
    }

    /// Like [`Self::request`], the whole exchange within `within` (a join's `Ready`, whose
    /// answer comes once every slot moved: see [`JOIN_ANSWER`]).
    pub fn request_within(
        &mut self,
        token: &str,
        request: &Request,
        within: Duration,
    ) -> Result<Response, ControlError> {
        let payload = request.encode(token)?;
        self.exchange(&payload, within)
    }

    /// Like [`Self::request`], with a payload encoded by the caller (a test's deliberately
    /// broken one, say).
    pub fn request_payload(&mut self, payload: &[u8]) -> Result<Response, ControlError> {
        self.exchange(payload, self.timeouts.answer)
    }

    fn exchange(&mut self, payload: &[u8], within: Duration) -> Result<Response, ControlError> {
        let deadline = Deadline::after(within);
        write_message(&self.stream, payload, Step::Request, deadline)?;
        let answer = read_message(&self.stream, Step::Answer, deadline)?;
        Response::decode(&answer)
    }
}
