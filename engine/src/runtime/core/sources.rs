//! A core's source connections: a task per connection that reads, decodes, routes and applies
//! in bounded steps; on leave, the connections (with the bytes not yet decoded) go to the heirs;
//! on stop (or when the node leaves the cluster), their read sides are shut: everything already
//! received is still read and applied, and a frame cut in half there is the engine's doing, not
//! the peer's (an info line and a count of its own, not an error).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_lite::future;
use quokka_io::framing::FrameError;
use quokka_io::tcp::{FrameReader, SourceError};

use super::durable::{DurableConn, DurableStreams, Durables, Recovery, Refusal, Rewind, StreamId};
use super::replay::Replay;
use super::Core;
use crate::checkpoint::SourceMark;
use crate::dataflow::SourcePipeline;
use crate::metrics::now_ns;
use crate::routing::CoreId;
use crate::runtime::messages::{ConnectionKind, CoreEvent, CoreMsg, FileSource, SourceConnection};
use crate::runtime::notify::Notify;
use crate::step::DecodeError;
use quokka_io::durable::Answer;

/// Frames a source connection handles before it dispatches its batches and lets other tasks
/// run: bounds the time a message waits behind the rest of its read.
pub(super) const FRAMES_PER_STEP: usize = 64;

pub(super) struct Sources {
    /// Duplicates of open connections: to shut down on stop, to hand over on leave.
    open: RefCell<HashMap<u64, TcpStream>>,
    changed: Notify,
    next_key: Cell<u64>,
    /// Source connections open on this node (shared with the acceptors).
    open_on_node: Arc<AtomicUsize>,
    leaving: Cell<bool>,
    /// Set once this core shut the read side of its connections (stop, or the node leaving):
    /// connections adopted from then on are cut at once.
    cut: Cell<bool>,
    leave_signal: Notify,
    /// Connections stopped for leaving, waiting to go to an heir.
    handovers: RefCell<Vec<SourceConnection>>,
    heirs: RefCell<Vec<CoreId>>,
    next_heir: Cell<usize>,
    /// Per file source read here: the offset of its first message not routed yet (kept once
    /// the file is read to its end: a checkpoint says where every file stands).
    pub(super) file_offsets: RefCell<std::collections::BTreeMap<u32, u64>>,
    /// File sources no longer read here, and how each ended (for `status`).
    pub(super) file_ended: RefCell<std::collections::BTreeMap<u32, String>>,
    /// File sources being read here.
    pub(super) files_open: Cell<usize>,
    /// Durable TCP streams read here.
    pub(super) durables: RefCell<Durables>,
    /// Each file source's offset at the barriers of the last few checkpoints (where a
    /// recovery rewinds it to).
    file_noted: RefCell<std::collections::BTreeMap<u64, Vec<(u32, u64)>>>,
    /// File sources a recovery rewinds.
    file_rewinds: RefCell<std::collections::BTreeMap<u32, FileRewind>>,
    /// File sources replaying for a recovery.
    pub(super) file_replays: RefCell<std::collections::BTreeMap<u32, Replay>>,
    /// Each file source read here (a recovery reads one again that had ended).
    pub(super) file_inputs: RefCell<std::collections::BTreeMap<u32, FileSource>>,
}

impl Sources {
    pub fn new(open_on_node: Arc<AtomicUsize>) -> Self {
        Sources {
            open: RefCell::default(),
            changed: Notify::default(),
            next_key: Cell::new(0),
            open_on_node,
            leaving: Cell::new(false),
            cut: Cell::new(false),
            leave_signal: Notify::default(),
            handovers: RefCell::default(),
            heirs: RefCell::default(),
            next_heir: Cell::new(0),
            file_offsets: RefCell::default(),
            file_ended: RefCell::default(),
            files_open: Cell::new(0),
            durables: RefCell::default(),
            file_noted: RefCell::default(),
            file_rewinds: RefCell::default(),
            file_replays: RefCell::default(),
            file_inputs: RefCell::default(),
        }
    }

    /// Sources being read here: connections and files.
    pub fn count(&self) -> usize {
        self.open.borrow().len() + self.files_open.get()
    }

    /// Bytes the kernel holds for the open connections, not read yet (`FIONREAD`).
    pub fn unread(&self) -> u64 {
        use std::os::fd::AsRawFd;
        let open = self.open.borrow();
        let unread = open.values().map(|stream| {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one c_int through a pointer to one; the fd is open for
            // as long as `stream` is.
            let done = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
            if done == 0 {
                n.max(0) as u64
            } else {
                0
            }
        });
        unread.sum()
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.get()
    }

    /// From now on connections go to `heirs`; the reading tasks stop between two steps.
    pub fn start_leaving(&self, heirs: Vec<CoreId>) {
        *self.heirs.borrow_mut() = heirs;
        self.leaving.set(true);
        self.leave_signal.notify_all();
    }

    /// The heir for the next connection, in turn.
    pub fn next_heir(&self) -> CoreId {
        let heirs = self.heirs.borrow();
        let i = self.next_heir.get();
        self.next_heir.set(i + 1);
        heirs[i % heirs.len()]
    }

    /// Shuts the read side of every connection, and of any adopted later: their tasks read
    /// what was received to the end and finish.
    pub fn shut_reads(&self) {
        self.cut.set(true);
        for stream in self.open.borrow().values() {
            let _ = stream.shutdown(std::net::Shutdown::Read);
        }
    }

    /// Waits until every reading task has finished.
    pub async fn all_closed(&self) {
        while !self.open.borrow().is_empty() || self.files_open.get() > 0 {
            self.changed.wait().await;
        }
    }

    /// Where each replayable source read here stands, for checkpoint `checkpoint`'s barrier:
    /// its files (byte offsets) and durable streams (frame counts).
    pub fn marks(&self, checkpoint: u64, streams: &DurableStreams) -> Vec<SourceMark> {
        let offsets = self.file_offsets();
        self.file_noted
            .borrow_mut()
            .insert(checkpoint, offsets.clone());
        let files = offsets.into_iter().map(|(source, offset)| SourceMark {
            source,
            stream: String::new(),
            offset,
        });
        let streams = self.durables.borrow_mut().barrier(checkpoint, streams);
        files.chain(streams).collect()
    }

    /// A recovery to checkpoint `checkpoint`, whose `restored` slots are on their way to
    /// their new owners: every replayable source read here resends what followed that
    /// checkpoint, to those slots only up to where it is now. Files are rewound by their
    /// task before it routes anything more; durable connections ask their senders.
    pub fn rewind(&self, recovery: &Recovery, streams: &DurableStreams) {
        let noted = self.file_noted.borrow().get(&recovery.checkpoint).cloned();
        if noted.is_none() && !self.file_offsets.borrow().is_empty() {
            tracing::error!(
                checkpoint = recovery.checkpoint,
                "no record of where the file sources stood at the checkpoint recovered: they are not rewound, and the restored slots miss what followed it"
            );
        }
        for (source, now) in self.file_offsets().into_iter().filter(|_| noted.is_some()) {
            let to = (noted.iter().flatten())
                .find(|(s, _)| *s == source)
                .map_or(0, |&(_, offset)| offset);
            if to < now {
                // The task rewinds it before it routes anything more. Two recoveries before
                // it does: neither replay has begun, both sets get everything again.
                let mut rewinds = self.file_rewinds.borrow_mut();
                let rewind = rewinds.entry(source).or_insert_with(|| FileRewind {
                    to,
                    restored: BTreeSet::new(),
                    n_slots: recovery.n_slots,
                });
                rewind.restored.extend(recovery.restored.iter());
            }
        }
        streams.recover(recovery);
        for conn in self.durables.borrow_mut().open.values_mut() {
            if streams.claim(&conn.id, recovery) {
                conn.rewind(streams.at(recovery.checkpoint, &conn.id), recovery);
            }
        }
    }

    /// Checkpoint `checkpoint` is durable: where sources stood at older ones is needed no
    /// more (a recovery rewinds to the last durable one).
    pub fn committed(&self, checkpoint: u64) {
        self.file_noted.borrow_mut().retain(|&n, _| n >= checkpoint);
    }

    /// Whether a recovery's replay (or a rewind about to start one) is under way here: a
    /// checkpoint now would note a position some slots are past.
    pub fn replaying(&self) -> bool {
        !self.file_rewinds.borrow().is_empty()
            || !self.file_replays.borrow().is_empty()
            || self
                .durables
                .borrow()
                .open
                .values()
                .any(|c| c.rewind.is_active())
    }

    /// File source `source` starts at `offset`, where checkpoint `checkpoint` left it (unless
    /// that checkpoint's barrier noted it here already).
    pub(super) fn note_start(&self, checkpoint: u64, source: u32, offset: u64) {
        let mut noted = self.file_noted.borrow_mut();
        let at = noted.entry(checkpoint).or_default();
        if !at.iter().any(|(s, _)| *s == source) {
            at.push((source, offset));
        }
    }

    /// File sources a recovery rewound whose reading had ended: to read again.
    pub(super) fn ended_rewound_files(&self) -> Vec<FileSource> {
        let rewinds = self.file_rewinds.borrow();
        let mut ended = self.file_ended.borrow_mut();
        let inputs = self.file_inputs.borrow();
        (rewinds.keys())
            .filter(|s| ended.remove(s).is_some())
            .filter_map(|s| inputs.get(s).cloned())
            .collect()
    }

    /// The rewind waiting for file source `source`, if any.
    pub(super) fn take_file_rewind(&self, source: u32) -> Option<FileRewind> {
        self.file_rewinds.borrow_mut().remove(&source)
    }

    /// Where each file source read here stands.
    pub fn file_offsets(&self) -> Vec<(u32, u64)> {
        self.file_offsets
            .borrow()
            .iter()
            .map(|(&s, &o)| (s, o))
            .collect()
    }

    /// A reading task ended (wakes [`Self::all_closed`]).
    pub(super) fn task_ended(&self) {
        self.changed.notify_all();
    }

    /// A key for a reading task's watermark.
    pub(super) fn next_key(&self) -> u64 {
        let key = self.next_key.get();
        self.next_key.set(key + 1);
        key
    }

    fn closed(&self) {
        self.open_on_node.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A recovery's rewind of a file source, until its task carries it out.
pub(super) struct FileRewind {
    /// The offset to read from again.
    pub to: u64,
    /// The slots that get what it reads again.
    pub restored: BTreeSet<u32>,
    pub n_slots: u32,
}

/// Why a source connection is closed.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("a frame was rejected by the decoder: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Read(#[from] SourceError),
    #[error("durable stream refused: {0}")]
    Durable(#[from] Refusal),
    #[error("cannot answer the durable sender: {0}")]
    Answer(std::io::Error),
}

enum Wake {
    Read(Result<bool, SourceError>),
    Leave,
}

/// How a connection's reading ended.
enum Ended {
    /// The peer closed it.
    Closed,
    /// The core is leaving: hand it over.
    Leaving,
    /// This core shut its read side (stopping, or the node leaving); `unread` bytes of a
    /// frame cut in half were received and dropped.
    Cut {
        unread: usize,
    },
    Failed(ConnectionError),
}

impl Ended {
    /// How a read that ended the connection counts: after this core cut the connection, its
    /// end (clean or inside a frame) is the cut, not the peer's doing.
    fn from_read(end: Result<(), SourceError>, cut: bool) -> Ended {
        match end {
            Ok(()) if cut => Ended::Cut { unread: 0 },
            Ok(()) => Ended::Closed,
            Err(SourceError::Framing(FrameError::Truncated { have, .. })) if cut => {
                Ended::Cut { unread: have }
            }
            Err(e) => Ended::Failed(e.into()),
        }
    }
}

/// Reads one source connection until it ends, fails, the core stops, or the core leaves (then
/// the connection is handed over with the bytes not yet decoded).
pub(super) async fn read_source(core: Rc<Core>, conn: SourceConnection) {
    let SourceConnection {
        source,
        stream,
        pending,
        latest,
        kind,
    } = conn;
    let mut kind = kind;
    let sources = &core.sources;
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
    let key = sources.next_key.get();
    sources.next_key.set(key + 1);
    match stream.try_clone() {
        Ok(handle) => {
            if is_cut(&core) {
                // Stopping or leaving already: read only what it has received.
                let _ = handle.shutdown(std::net::Shutdown::Read);
            }
            sources.open.borrow_mut().insert(key, handle);
        }
        Err(e) => {
            tracing::error!(core = core.id, %peer, "cannot adopt source connection: {e}");
            sources.closed();
            return;
        }
    }
    core.report.borrow_mut().connections += 1;
    let source_name = core
        .config
        .source_names
        .get(source)
        .cloned()
        .unwrap_or_default();
    tracing::debug!(core = core.id, %peer, source = %source_name, "reading source connection");

    if let ConnectionKind::Durable {
        id,
        position,
        rewind,
    } = &mut kind
    {
        if let Some(writer) = sources
            .open
            .borrow()
            .get(&key)
            .and_then(|s| s.try_clone().ok())
        {
            let conn =
                DurableConn::new(id.clone(), *position, std::mem::take(&mut **rewind), writer);
            sources.durables.borrow_mut().open.insert(key, conn);
        }
    }
    let mut reader = FrameReader::new(stream, core.config.max_frame, &pending);
    let mut pipeline = core.dataflow.source_pipeline(source);
    if latest.is_some() {
        // Handed over by a leaving core, which kept its word for it: say it at once.
        pipeline.resume(latest);
        core.source_mark(key, pipeline.watermark(), now_ns());
    }
    let mut now = now_ns();
    let ended = 'read: loop {
        // Work through what was read in bounded steps, yielding between them.
        loop {
            if kind == ConnectionKind::Unread {
                match hello(&core, key, source, &mut reader) {
                    Ok(ConnectionKind::Unread) => break,
                    Ok(k) => kind = k,
                    Err(e) => break 'read Ended::Failed(e),
                }
            }
            let durable = matches!(kind, ConnectionKind::Durable { .. });
            let Stepped { more, error } = step(
                &core,
                &mut reader,
                &mut *pipeline,
                now,
                durable.then_some(key),
            )
            .await;
            core.source_mark(key, pipeline.watermark(), now);
            if let ConnectionKind::Durable { id, position, .. } = &mut kind {
                // Every frame taken off the stream counts, a rejected one too: a resend goes
                // on after it (the error says which frame it was).
                *position = sources.durables.borrow_mut().routed(key, id);
            }
            if let Some(e) = error {
                break 'read Ended::Failed(e);
            }
            if !more {
                break;
            }
            core.poke_inbox();
            future::yield_now().await
        }
        if sources.leaving.get() {
            break Ended::Leaving;
        }
        let leave = sources.leave_signal.wait();
        let woke = future::or(async { Wake::Read(reader.read_more().await) }, async {
            leave.await;
            Wake::Leave
        })
        .await;
        match woke {
            Wake::Read(Ok(true)) => now = now_ns(),
            Wake::Read(Ok(false)) => break Ended::from_read(Ok(()), is_cut(&core)),
            Wake::Read(Err(e)) => break Ended::from_read(Err(e), is_cut(&core)),
            Wake::Leave => break Ended::Leaving,
        }
    };
    let handle = sources.open.borrow_mut().remove(&key);
    let durable = sources.durables.borrow_mut().open.remove(&key);
    if let (
        ConnectionKind::Durable {
            id,
            position,
            rewind,
        },
        Some(mut conn),
    ) = (&mut kind, durable)
    {
        *position = conn.position;
        if matches!(ended, Ended::Leaving) {
            // The heir carries the rewind on.
            **rewind = std::mem::take(&mut conn.rewind);
        } else {
            core.streams.disconnect(id, conn.position, conn.replay());
        }
    }
    if let (Ended::Cut { .. } | Ended::Failed(_), Some(stream)) = (&ended, &handle) {
        // Closed before its end: a reset, not a clean close, tells the sender that what it
        // sent was not all read (`quokka-send` then fails).
        let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
    }
    if !matches!(ended, Ended::Leaving) {
        core.source_mark(key, None, now_ns());
    }
    match ended {
        // This core's word for the connection stands until it leaves the producers, and the
        // heir says it again as soon as it takes the connection, so the watermark does not
        // jump past the connection meanwhile (unless a core hears this one's removal before
        // the heir's word: a narrow race, noted on issue 16).
        Ended::Leaving => {
            if let Some(stream) = handle {
                let pending = reader.pending();
                sources.handovers.borrow_mut().push(SourceConnection {
                    source,
                    stream,
                    pending,
                    latest: pipeline.latest(),
                    kind,
                });
            }
        }
        Ended::Closed => {
            sources.closed();
            tracing::debug!(core = core.id, %peer, "source connection closed");
        }
        Ended::Cut { unread } => {
            sources.closed();
            core.report.borrow_mut().connections_cut += 1;
            if unread > 0 {
                tracing::info!(core = core.id, %peer, source = %source_name, "closed source connection: this node stopped reading it inside a frame ({unread} bytes of it unread)");
            } else {
                tracing::debug!(core = core.id, %peer, "closed source connection: this node stopped reading it");
            }
        }
        Ended::Failed(reason) => {
            sources.closed();
            tracing::error!(core = core.id, %peer, source = %source_name, "closing source connection: {reason}");
            core.report.borrow_mut().connection_errors += 1;
        }
    }
    sources.changed.notify_all();
}

/// Whether this core cut (or is about to cut) its connections' read sides: stopping, or its
/// node leaving.
pub(super) fn is_cut(core: &Core) -> bool {
    core.sources.cut.get() || core.sink.is_draining()
}

/// A fresh connection's first frame, once it is here: a durable hello makes it a durable
/// stream (answered with where the stream stands, or refused), anything else a plain
/// connection. `Unread` while the frame is not whole yet.
fn hello(
    core: &Core,
    key: u64,
    source: usize,
    reader: &mut FrameReader,
) -> Result<ConnectionKind, ConnectionError> {
    let frame = match reader.peek_frame() {
        Ok(Some(frame)) => frame,
        Ok(None) => return Ok(ConnectionKind::Unread),
        // The step reports it.
        Err(_) => return Ok(ConnectionKind::Plain),
    };
    let Some(name) = quokka_io::durable::hello_name(frame) else {
        return Ok(ConnectionKind::Plain);
    };
    let name = name.map(str::to_owned);
    let _ = reader.next_frame();
    let Some(writer) = (core.sources.open.borrow().get(&key)).and_then(|s| s.try_clone().ok())
    else {
        return Err(ConnectionError::Answer(std::io::Error::other(
            "no socket to answer on",
        )));
    };
    let id: StreamId = (source as u32, name.clone().unwrap_or_default());
    let connected = match name {
        Err(why) => Err(Refusal::BadHello(why)),
        Ok(_) if core.config.state_dir.is_none() => Err(Refusal::NoStateDir),
        Ok(_) => core.streams.connect(&id),
    };
    let mut conn = DurableConn::new(id.clone(), 0, Rewind::default(), writer);
    match connected {
        Ok((position, replay)) => {
            conn.answer(&Answer::Position(position));
            conn.position = position;
            conn.rewind = Rewind::replaying(replay);
            tracing::info!(core = core.id, stream = ?id.1, position, "durable stream connected");
            core.sources.durables.borrow_mut().open.insert(key, conn);
            Ok(ConnectionKind::Durable {
                id,
                position,
                rewind: Box::default(),
            })
        }
        Err(refusal) => {
            conn.answer(&refusal.answer());
            Err(ConnectionError::Durable(refusal))
        }
    }
}

/// One bounded step of a connection: up to [`FRAMES_PER_STEP`] frames decoded, routed and
/// dispatched in one synchronous action.
async fn step(
    core: &Core,
    reader: &mut FrameReader,
    pipeline: &mut dyn SourcePipeline,
    ingress_ns: u64,
    durable: Option<u64>,
) -> Stepped {
    core.wait_room().await;
    let table = core.table.borrow().clone();
    let mut durables = core.sources.durables.borrow_mut();
    let mut conn = durable.and_then(|key| durables.open.get_mut(&key));
    let mut frames = 0;
    let mut bytes = 0;
    let mut taken = 0;
    let mut error = None;
    while taken < FRAMES_PER_STEP {
        match reader.next_frame() {
            Ok(Some(frame)) => {
                taken += 1;
                bytes += 4 + frame.len() as u64;
                let routes = match conn.as_deref_mut() {
                    Some(c) => match c.take(frame, &table) {
                        Some(routes) => routes,
                        // Sent before the sender heard of a rewind.
                        None => continue,
                    },
                    None => &table,
                };
                match pipeline.push(frame, ingress_ns, routes) {
                    Ok(()) => frames += 1,
                    Err(e) => {
                        error = Some(e.into());
                        break;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                error = Some(SourceError::from(e).into());
                break;
            }
        }
    }
    drop(durables);
    let mut report = core.report.borrow_mut();
    report.frames += frames as u64;
    report.bytes_in += bytes;
    drop(report);
    core.dispatch(pipeline);
    Stepped {
        more: error.is_none() && taken == FRAMES_PER_STEP,
        error,
    }
}

/// What a step did.
struct Stepped {
    /// More frames may be waiting.
    more: bool,
    error: Option<ConnectionError>,
}

/// A leaving core: once its connection tasks have stopped and everything they routed has
/// reached its owners, the connections (with their undecoded bytes) go to the heirs.
pub(super) async fn leave(core: Rc<Core>) {
    core.sources.all_closed().await;
    core.peers.flush().await;
    let handovers = std::mem::take(&mut *core.sources.handovers.borrow_mut());
    let moved = handovers.len();
    core.report.borrow_mut().handed_over += moved as u64;
    for conn in handovers {
        let heir = core.sources.next_heir();
        core.send_to(heir, CoreMsg::Connection(conn));
    }
    core.peers.flush().await;
    tracing::info!(
        core = core.id,
        "left; {moved} source connections handed to other cores"
    );
    let _ = core.events.send(CoreEvent::Left(core.id));
}
