//! Durable TCP streams on a core (protocol in `quokka_io::durable`). A connection whose first
//! frame is a durable hello is a stream the sender can resend: the node's registry
//! ([`DurableStreams`]) says how many of its frames were applied, the core answers with that
//! position and counts the frames it routes from there. A checkpoint's barrier notes each
//! stream's count; once that checkpoint is durable the core acknowledges it to the sender,
//! which then drops those frames. After a crash the registry starts from the checkpoint's
//! counts, so the sender resends what the crash lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use quokka_io::durable::Answer;

use super::replay::Replay;
use crate::checkpoint::SourceMark;
use crate::routing::RoutingTable;

/// Why a durable stream is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// For now: its last connection has not ended here yet.
    #[error("stream `{0}` is connected already")]
    Connected(String),
    #[error("stream `{0}` was read by a node that was lost: where it stands is not known (the cluster applied part of what the node had read), so it cannot go on exactly; send it again under a new name")]
    Lost(String),
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
    /// A recovery's replay still under way (the connection that carries it on takes it).
    replay: Option<Replay>,
    /// The last recovery that rewound it.
    rewound: u64,
}

/// A recovery as the node's streams see it: every stream is rewound once for it, by the core
/// that reads it, or here if none does.
#[derive(Debug, Clone)]
pub(crate) struct Recovery {
    /// Tells recoveries apart (the id of the change that carried it out).
    pub id: u64,
    pub checkpoint: u64,
    pub restored: Arc<BTreeSet<u32>>,
    pub n_slots: u32,
}

/// The durable streams of a node: where each stands and whether a connection reads it now.
/// Shared by the node's cores (a sender may reconnect to any of them).
#[derive(Debug, Default)]
pub(crate) struct DurableStreams {
    streams: Mutex<HashMap<StreamId, Stream>>,
    /// Each stream's count at the barriers of the last few checkpoints: where a recovery
    /// rewinds it to.
    noted: Mutex<BTreeMap<u64, HashMap<StreamId, u64>>>,
    /// The last recovery: a stream connecting that it has not rewound yet is rewound then.
    recovery: Mutex<Option<Recovery>>,
    /// Streams lost nodes read: refused.
    lost: Mutex<BTreeSet<StreamId>>,
}

impl DurableStreams {
    /// The streams as a checkpoint left them.
    pub fn restored(marks: &[SourceMark], checkpoint: u64) -> Self {
        let streams: HashMap<StreamId, Stream> = (marks.iter().filter(|m| !m.stream.is_empty()))
            .map(|m| {
                let stream = Stream {
                    position: m.offset,
                    ..Stream::default()
                };
                ((m.source, m.stream.clone()), stream)
            })
            .collect();
        let counts = (streams.iter())
            .map(|(id, s)| (id.clone(), s.position))
            .collect();
        DurableStreams {
            streams: Mutex::new(streams),
            noted: Mutex::new(BTreeMap::from([(checkpoint, counts)])),
            ..Default::default()
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Stream>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection takes `id` over: where it stands (and the replay it carries on), or why
    /// not.
    pub fn connect(&self, id: &StreamId) -> Result<(u64, Option<Replay>), Refusal> {
        if self
            .lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
        {
            return Err(Refusal::Lost(id.1.clone()));
        }
        let mut streams = self.streams();
        let s = streams.entry(id.clone()).or_default();
        if s.connected {
            return Err(Refusal::Connected(id.1.clone()));
        }
        s.connected = true;
        if let Some(r) = self
            .recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            self.rewind(id, s, r);
        }
        Ok((s.position, s.replay.take()))
    }

    /// Rewinds stream `s` for recovery `r`, unless it was already.
    fn rewind(&self, id: &StreamId, s: &mut Stream, r: &Recovery) {
        if s.rewound >= r.id {
            return;
        }
        s.rewound = r.id;
        let to = self.at(r.checkpoint, id);
        if to < s.position {
            s.replay = Some(Replay::rewound(
                s.position,
                &r.restored,
                r.n_slots,
                s.replay.as_ref(),
            ));
            s.position = to;
        }
    }

    /// Recovery `r` begins on a core of this node: streams no connection reads are rewound
    /// now, and any that connects later when it does.
    pub fn recover(&self, r: &Recovery) {
        {
            let mut current = self.recovery.lock().unwrap_or_else(|e| e.into_inner());
            if current.as_ref().is_some_and(|c| c.id >= r.id) {
                return;
            }
            *current = Some(r.clone());
        }
        let mut streams = self.streams();
        for (id, s) in streams.iter_mut().filter(|(_, s)| !s.connected) {
            self.rewind(id, s, r);
        }
    }

    /// Whether the connection reading `id` is to rewind for recovery `r` (once).
    pub fn claim(&self, id: &StreamId, r: &Recovery) -> bool {
        let mut streams = self.streams();
        let s = streams.entry(id.clone()).or_default();
        let claimed = s.rewound < r.id;
        s.rewound = s.rewound.max(r.id);
        claimed
    }

    /// The connection reading `id` ended at `position`, with what is left of its replay.
    pub fn disconnect(&self, id: &StreamId, position: u64, replay: Option<Replay>) {
        let mut streams = self.streams();
        let s = streams.entry(id.clone()).or_default();
        s.connected = false;
        s.position = position;
        s.replay = replay.filter(|r| r.replays(position));
    }

    /// Checkpoint `checkpoint` is durable: counts at older ones are needed no more.
    pub fn committed(&self, checkpoint: u64) {
        let mut noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        noted.retain(|&n, _| n >= checkpoint);
    }

    /// Whether a stream no connection reads waits to replay.
    pub fn replaying(&self) -> bool {
        self.streams().values().any(|s| s.replay.is_some())
    }

    /// Streams that lost nodes read: refused from now on.
    pub fn refuse(&self, lost: impl IntoIterator<Item = StreamId>) {
        (self.lost.lock().unwrap_or_else(|e| e.into_inner())).extend(lost);
    }

    /// Streams counted at checkpoint `checkpoint`'s barrier by one core (the node's count is
    /// the highest: a stream another core read before counts less there).
    pub fn note(&self, checkpoint: u64, counts: &BTreeMap<StreamId, u64>) {
        let mut noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        let at = noted.entry(checkpoint).or_default();
        for (id, &n) in counts {
            let c = at.entry(id.clone()).or_default();
            *c = (*c).max(n);
        }
    }

    /// Where stream `id` stood at checkpoint `checkpoint` (0 if it began after it).
    pub fn at(&self, checkpoint: u64, id: &StreamId) -> u64 {
        let noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        (noted.get(&checkpoint))
            .and_then(|at| at.get(id))
            .copied()
            .unwrap_or(0)
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
    pub rewind: Rewind,
}

/// Where a durable connection stands in a recovery's rewind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rewind {
    /// Asked to rewind to this count: frames are dropped until the sender's rewound frame.
    rewinding: Option<u64>,
    /// What it sends again, up to where it was.
    replay: Option<Replay>,
}

impl Rewind {
    /// Whether it waits for the sender's rewound frame or replays.
    pub fn is_active(&self) -> bool {
        self.rewinding.is_some() || self.replay.is_some()
    }

    /// A connection that takes a stream's replay over.
    pub fn replaying(replay: Option<Replay>) -> Self {
        Rewind {
            rewinding: None,
            replay,
        }
    }
}

impl DurableConn {
    pub fn new(id: StreamId, position: u64, rewind: Rewind, writer: TcpStream) -> Self {
        DurableConn {
            id,
            position,
            writer,
            partial: Vec::new(),
            rewind,
        }
    }

    /// A recovery to a checkpoint that holds `to` frames: the sender resends from there, and
    /// what it sent since goes to the slots `recovery` restores only.
    pub fn rewind(&mut self, to: u64, recovery: &Recovery) {
        let r = &mut self.rewind;
        if to >= self.position && r.rewinding.is_none() {
            return;
        }
        let (restored, n_slots) = (&recovery.restored, recovery.n_slots);
        r.replay = Some(Replay::rewound(
            self.position,
            restored,
            n_slots,
            r.replay.as_ref(),
        ));
        if r.rewinding == Some(to) {
            // Asked already, and not rewound yet: one rewound frame answers both (a second
            // request would make the sender resend twice).
            return;
        }
        r.rewinding = Some(to);
        self.position = to;
        self.answer(&Answer::Rewind(to));
    }

    /// Takes the connection's next frame: the table to route it with (`live`, or its replay's),
    /// or `None` to drop it.
    pub fn take<'a>(
        &'a mut self,
        frame: &[u8],
        live: &'a RoutingTable,
    ) -> Option<&'a RoutingTable> {
        let r = &mut self.rewind;
        if let Some(to) = r.rewinding {
            if quokka_io::durable::rewound_at(frame) == Some(to) {
                r.rewinding = None;
            }
            return None;
        }
        let n = self.position;
        self.position += 1;
        Some(match &mut r.replay {
            Some(replay) => replay.routes(n, live),
            None => live,
        })
    }

    /// Ends the replay once past it.
    pub fn replayed(&mut self) {
        let done = (self.rewind.replay.as_ref()).is_some_and(|r| !r.replays(self.position));
        if done {
            self.rewind.replay = None;
        }
    }

    /// Its replay, if one is still under way (for the registry or an heir).
    pub fn replay(&mut self) -> Option<Replay> {
        (self.rewind.replay.take()).filter(|r| r.replays(self.position))
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
    /// Where connection `key` (stream `id`) stands after a step: its count, now the stream's
    /// mark here.
    pub fn routed(&mut self, key: u64, id: &StreamId) -> u64 {
        let Some(conn) = self.open.get_mut(&key) else {
            return 0;
        };
        conn.replayed();
        let position = conn.position;
        self.marks.insert(id.clone(), position);
        position
    }

    /// The counts at checkpoint `checkpoint`'s barrier (kept to acknowledge it once durable,
    /// and noted in `streams` for a recovery).
    pub fn barrier(&mut self, checkpoint: u64, streams: &DurableStreams) -> Vec<SourceMark> {
        streams.note(checkpoint, &self.marks);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::NOWHERE;
    use quokka_io::durable::encode_rewound;

    fn recovery(id: u64, checkpoint: u64, restored: &[u32]) -> Recovery {
        Recovery {
            id,
            checkpoint,
            restored: Arc::new(restored.iter().copied().collect()),
            n_slots: 4,
        }
    }

    /// A connection whose answers go to a socket nobody reads (they are not checked here).
    fn conn(position: u64) -> (DurableConn, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let id = (0, "s".to_string());
        (
            DurableConn::new(id, position, Rewind::default(), ours),
            peer,
        )
    }

    #[test]
    fn a_rewound_connection_drops_what_precedes_the_rewound_frame_then_replays() {
        let live = RoutingTable::uniform(4, 2);
        let (mut c, _peer) = conn(10);
        c.rewind(6, &recovery(1, 1, &[3]));
        // A second recovery from the same checkpoint before the sender rewound: no second
        // request (its rewound frame would make it resend twice).
        c.rewind(6, &recovery(2, 1, &[2]));
        assert_eq!(c.position, 6);
        // In flight before the sender heard: dropped, and so is an older rewound frame.
        assert!(c.take(b"frame 10", &live).is_none());
        assert!(c.take(&encode_rewound(2), &live).is_none());
        assert!(c.take(&encode_rewound(6), &live).is_none());
        // Frames 6..10 go to slot 3 only; from 10 on, everywhere.
        for _ in 6..10 {
            let t = c.take(b"again", &live).unwrap();
            assert_eq!((t.owner(0), t.owner(2), t.owner(3)), (NOWHERE, 1, 1));
        }
        // The rewound frame came once: what follows is the stream's.
        assert!(c.take(&encode_rewound(6), &live).is_some());
        assert_eq!(c.position, 11);
        assert!(c.replay().is_none(), "the replay is over");
    }

    #[test]
    fn every_stream_is_rewound_once_per_recovery_wherever_it_is_read() {
        let streams = DurableStreams::default();
        let (a, b, c) = (
            (0, "a".to_string()),
            (0, "b".to_string()),
            (0, "c".to_string()),
        );
        streams.note(7, &BTreeMap::from([(a.clone(), 5), (b.clone(), 3)]));
        // a is read by a connection; b was read and ended at 9; c is read too.
        assert_eq!(streams.connect(&a).unwrap().0, 0);
        streams.connect(&b).unwrap();
        streams.disconnect(&b, 9, None);
        streams.connect(&c).unwrap();
        let r = recovery(40, 7, &[1]);
        streams.recover(&r);
        // b, not read now, resends from 3 and replays to 9.
        let (at, replay) = streams.connect(&b).unwrap();
        assert_eq!(at, 3);
        assert!(replay.is_some_and(|r| r.replays(8) && !r.replays(9)));
        // a's and c's cores claim them once (a second core of the node gets no claim).
        assert!(streams.claim(&a, &r));
        assert!(!streams.claim(&a, &r));
        assert!(streams.claim(&c, &r));
        assert_eq!(streams.at(7, &c), 0, "c began after checkpoint 7");
        // The same recovery seen by another core changes nothing.
        streams.disconnect(&b, 4, None);
        streams.recover(&r);
        assert_eq!(streams.connect(&b).unwrap().0, 4);
    }

    #[test]
    fn a_stream_that_connects_after_a_recovery_began_is_rewound_then() {
        let streams = DurableStreams::restored(
            &[SourceMark {
                source: 0,
                stream: "a".into(),
                offset: 2,
            }],
            5,
        );
        let a = (0, "a".to_string());
        streams.connect(&a).unwrap();
        streams.disconnect(&a, 8, None);
        // Connected elsewhere when the recovery began, it drops before its core rewinds it.
        streams.connect(&a).unwrap();
        streams.recover(&recovery(12, 5, &[0]));
        streams.disconnect(&a, 9, None);
        let (at, replay) = streams.connect(&a).unwrap();
        assert_eq!(at, 2, "from the checkpoint this run restored");
        assert!(replay.is_some_and(|r| r.replays(8)));
    }
}
