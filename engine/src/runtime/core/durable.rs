//! Durable TCP streams on a core (protocol in `quokka_io::durable`). A connection whose first
//! frame is a durable hello is a stream the sender can resend: the node's registry
//! ([`DurableStreams`]) says how many of its frames were applied, the core answers with that
//! position and counts the frames it routes from there. A checkpoint's barrier notes each
//! stream's count; once that checkpoint is durable the core acknowledges it to the sender,
//! which then drops those frames. After a crash the registry starts from the checkpoint's
//! counts, so the sender resends what the crash lost.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::sync::Mutex;

use quokka_io::durable::Answer;

use crate::checkpoint::SourceMark;

/// Why a durable stream is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// For now: its last connection has not ended here yet.
    #[error("stream `{0}` is connected already")]
    Connected(String),
    #[error("durable streams need checkpoints: start the engine with --state-dir")]
    NoStateDir,
    #[error("{0}")]
    BadHello(String),
}

impl Refusal {
    pub fn answer(&self) -> Answer {
        match self {
            Refusal::Connected(_) => Answer::Busy(self.to_string()),
            _ => Answer::Refused(self.to_string()),
        }
    }
}

/// A stream: its source and the name its sender gave.
pub(crate) type StreamId = (u32, String);

#[derive(Debug, Default)]
struct Stream {
    /// Frames applied so far.
    position: u64,
    connected: bool,
}

/// The durable streams of a node: where each stands and whether a connection reads it now.
/// Shared by the node's cores (a sender may reconnect to any of them).
#[derive(Debug, Default)]
pub(crate) struct DurableStreams(Mutex<HashMap<StreamId, Stream>>);

impl DurableStreams {
    /// The streams as a checkpoint left them.
    pub fn restored(marks: &[SourceMark]) -> Self {
        let streams = (marks.iter().filter(|m| !m.stream.is_empty()))
            .map(|m| {
                let stream = Stream {
                    position: m.offset,
                    connected: false,
                };
                ((m.source, m.stream.clone()), stream)
            })
            .collect();
        DurableStreams(Mutex::new(streams))
    }

    /// A connection takes `id` over: where it stands, or why not.
    pub fn connect(&self, id: &StreamId) -> Result<u64, Refusal> {
        let mut streams = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let s = streams.entry(id.clone()).or_default();
        if s.connected {
            return Err(Refusal::Connected(id.1.clone()));
        }
        s.connected = true;
        Ok(s.position)
    }

    /// The connection reading `id` ended at `position`.
    pub fn disconnect(&self, id: &StreamId, position: u64) {
        let mut streams = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let s = streams.entry(id.clone()).or_default();
        s.connected = false;
        s.position = s.position.max(position);
    }
}

/// One durable connection read by this core.
pub(super) struct DurableConn {
    pub id: StreamId,
    /// Frames of the stream routed so far.
    pub position: u64,
    /// Where to write answers (a duplicate of the connection's socket, non-blocking).
    writer: TcpStream,
    /// An answer the socket did not take whole yet.
    partial: Vec<u8>,
}

impl DurableConn {
    pub fn new(id: StreamId, position: u64, writer: TcpStream) -> Self {
        DurableConn {
            id,
            position,
            writer,
            partial: Vec::new(),
        }
    }

    /// Writes `answer` (after what is left of the last one); what the socket does not take
    /// now waits for the next answer (acknowledgements only grow, so a late one is harmless).
    pub fn answer(&mut self, answer: &Answer) {
        if self.partial.is_empty() {
            self.partial = answer.framed();
        } else {
            // Finish the frame that was cut first; the newest acknowledgement follows.
            self.partial.extend_from_slice(&answer.framed());
        }
        match self.writer.write(&self.partial) {
            Ok(n) => {
                self.partial.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::debug!(stream = ?self.id.1, "durable stream answer: {e}"),
        }
    }
}

/// The durable streams a core reads, and where each stood at the last barrier.
#[derive(Default)]
pub(super) struct Durables {
    /// Per connection key.
    pub open: HashMap<u64, DurableConn>,
    /// Every stream this core has read, with its count (kept after its connection ends, so a
    /// checkpoint still says where it stands).
    pub marks: BTreeMap<StreamId, u64>,
    /// The last barrier's checkpoint and each stream's count then.
    at_barrier: Option<(u64, BTreeMap<StreamId, u64>)>,
}

impl Durables {
    /// Connection `key` (stream `id`) has routed `position` frames of its stream.
    pub fn routed(&mut self, key: u64, id: &StreamId, position: u64) {
        if let Some(c) = self.open.get_mut(&key) {
            c.position = position;
        }
        self.marks.insert(id.clone(), position);
    }

    /// The counts at checkpoint `checkpoint`'s barrier (kept to acknowledge it once durable).
    pub fn barrier(&mut self, checkpoint: u64) -> Vec<SourceMark> {
        self.at_barrier = Some((checkpoint, self.marks.clone()));
        (self.marks.iter())
            .map(|((source, stream), &offset)| SourceMark {
                source: *source,
                stream: stream.clone(),
                offset,
            })
            .collect()
    }

    /// Checkpoint `checkpoint` is durable: each open stream's sender may drop what it held.
    pub fn durable(&mut self, checkpoint: u64) {
        let Some((at, counts)) = &self.at_barrier else {
            return;
        };
        if *at != checkpoint {
            return;
        }
        for conn in self.open.values_mut() {
            if let Some(&n) = counts.get(&conn.id) {
                conn.answer(&Answer::Ack(n));
            }
        }
    }
}
