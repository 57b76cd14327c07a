//! What nodes say to each other: the join handshake (inside control frames) and the messages on
//! node-to-node links. Every link frame is a Wallaroo frame whose payload is `QN`, a version
//! byte, then one rkyv archive of a [`Wire`] message, validated (bytecheck) before it is read:
//! garbage, a truncated archive or another version is an error value, never a panic. A slot
//! handoff's frame holds the slot's archive first, as it is, and then the `Wire::Slot` archive.

use std::io::{Read, Write};

use quokka_io::framing::{self, FrameError};
use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;
use thiserror::Error;

use crate::archive::SlotArchive;
use crate::metrics::CoreStatus;
use crate::routing::{CoreId, RoutingTable};
use crate::runtime::messages::{CoreEvent, PeerMsg};

/// First bytes of every link payload.
pub const MAGIC: [u8; 2] = *b"QN";
/// The node protocol version this build speaks (2: slot archives are three flat arrays; 3: a
/// `Prepare` carries every step of a change; 4: a core's status tells of its sink connection;
/// 5: a core's message crosses as itself, `Wire::Core`; 6: a hello names its lane and carries
/// the link secret its two nodes share, which a welcome and `Expect` hand out, and is answered
/// with `Admitted`; a join's `Ready` is answered with the change report, control `Joined`;
/// 7: a slot archive carries its index, one slot per handoff frame; 8: a batch names its
/// stage, a slot archive has a part per stage (and per stage's timers), cores exchange
/// watermarks and say when they are done per stage; a welcome names every sink; 9: a plan has
/// an id, and cores hold later stages' watermarks through a change, `Hold` and `ChangeDone`;
/// 14: a join and a member carry the node's HTTP address, a core's status its bytes in,
/// source errors and queue depths; 15: and its busy fraction; 16: and its unread source bytes).
pub const VERSION: u8 = 16;
/// Largest link frame accepted (a batch or one slot's archive).
pub const MAX_LINK_FRAME: usize = 256 << 20;

/// A node asking to join (the body of a control `Join` request).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JoinRequest {
    pub version: u8,
    pub node: String,
    pub app: String,
    pub n_slots: u32,
    pub cores: u16,
    /// Where the joining node accepts links from the others.
    pub data_addr: String,
    /// Whether it was started with a state dir (a cluster that checkpoints needs one on every
    /// node; one that does not, on none).
    pub state_dir: bool,
    /// Its state dir, absolute: should the node be lost, the coordinator reads its part of the
    /// last checkpoint from there (the same machine, or a directory both mount).
    pub state_path: String,
    /// Where it serves HTTP (`/metrics`, its dashboard), or empty.
    pub http: String,
}

/// A member of the cluster as others reach it.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Member {
    pub name: String,
    pub data_addr: String,
    /// Where it serves HTTP (`/metrics`, its dashboard), or empty.
    pub http: String,
    pub cores: Vec<CoreId>,
    /// The secret of the links between this member and the node this value is sent to: both
    /// say it in their hellos, and no third node knows it.
    pub secret: LinkSecret,
}

/// What a link's hello proves its sender with: random bytes the coordinator made for one pair
/// of nodes. Compared in constant time; never printed.
#[derive(Clone, Copy, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LinkSecret(pub [u8; 16]);

impl LinkSecret {
    /// A new secret from the operating system's random source.
    pub fn random() -> Result<LinkSecret, getrandom::Error> {
        let mut bytes = [0; 16];
        getrandom::fill(&mut bytes)?;
        Ok(LinkSecret(bytes))
    }
}

/// Takes the same time wherever the first difference is, so a peer cannot find a secret byte by
/// byte from response times.
impl PartialEq for LinkSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
    }
}

impl Eq for LinkSecret {}

impl std::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSecret(..)")
    }
}

/// Which of a link's two connections a hello opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Lane {
    /// Batches and what must stay in order with them (bounded).
    Data,
    /// Migration steps, handoffs and node messages.
    Control,
}

/// The coordinator's answer to an accepted join.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Welcome {
    /// The core ids the joining node runs.
    pub cores: Vec<CoreId>,
    /// Every current member, the coordinator first.
    pub members: Vec<Member>,
    pub table: TableWire,
    /// The sink addresses the cluster writes to, one per sink of the app.
    pub outputs: Vec<String>,
    /// The cluster's run number (exactly-once sinks fence off older runs by it).
    pub run: u64,
    /// The cluster's id, which every node's checkpoint parts carry (0: no checkpoints).
    pub cluster: u64,
    /// Whether the cluster's outputs are exactly-once (every node must hold them back alike).
    pub exactly_once: bool,
    /// The checkpoint the joining node restores its cores from (its part of it, in its state
    /// dir), or 0: it starts empty and slots move to it.
    pub restore: u64,
    /// Durable streams of lost nodes, which the cluster refuses (source, name).
    pub lost_streams: Vec<(u32, String)>,
}

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TableWire {
    pub epoch: u64,
    pub owners: Vec<CoreId>,
}

impl From<&RoutingTable> for TableWire {
    fn from(t: &RoutingTable) -> Self {
        TableWire {
            epoch: t.epoch(),
            owners: (0..t.n_slots()).map(|s| t.owner(s)).collect(),
        }
    }
}

impl TableWire {
    /// The table, refused unless it has `n_slots` slots.
    pub fn to_table(&self, n_slots: u32) -> Result<RoutingTable, WireError> {
        if self.owners.len() != n_slots as usize {
            return Err(WireError::SlotCount {
                got: self.owners.len(),
                expected: n_slots,
            });
        }
        RoutingTable::from_owners(self.epoch, self.owners.clone()).ok_or(WireError::SlotCount {
            got: 0,
            expected: n_slots,
        })
    }
}

/// Bytes that are themselves an rkyv archive (a batch, a slot): read straight into an aligned
/// buffer, so the receiver accesses them without another copy.
#[derive(Debug, Clone, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Payload(#[rkyv(with = rkyv::with::AsVec)] pub AlignedVec);

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_slice() == other.0.as_slice()
    }
}

impl From<&[u8]> for Payload {
    fn from(bytes: &[u8]) -> Self {
        let mut aligned = AlignedVec::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        Payload(aligned)
    }
}

/// One message on a link. `to` names the core a message is for; the rest are for the node.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) enum Wire {
    /// The first message on a link: who is speaking, on which lane, with the cluster token and
    /// the secret the two nodes share.
    Hello {
        node: String,
        lane: Lane,
        token: String,
        secret: LinkSecret,
    },
    /// The receiver's answer to a hello it admitted, the one message that goes back on a
    /// connection: until it arrives, the sender does not count the connection as open.
    Admitted,
    /// The last message on a link: the sender closes it on purpose (not a failure).
    Bye,
    /// A core's message for core `to`, as it travels between cores inside a node.
    Core {
        to: CoreId,
        msg: PeerMsg,
    },
    /// A slot handoff (`Core` with `PeerMsg::Handoff`) as it is framed: the frame holds the
    /// archive's bytes first, as they are, and this header after them; the reader's buffer
    /// becomes the slot's storage and it reads the handoff back as `Core`.
    Slot(SlotHeader),
    /// A batch of keyed messages for stage `stage` of core `to` (the app's rkyv archive of
    /// them).
    Batch {
        to: CoreId,
        from: CoreId,
        stage: u32,
        bytes: Payload,
    },
    /// Peers by core id and the node that runs them.
    AddPeers {
        to: CoreId,
        peers: Vec<(CoreId, String)>,
    },
    /// From a member to the coordinator.
    Event(CoreEvent),
    /// The node this one was told to expect joined: open a link to it.
    Joined {
        node: String,
    },
    /// A node left on purpose: close the link to it.
    Gone {
        node: String,
    },
    /// Questions with an id; the answer goes back on the asker's link.
    Ask {
        id: u64,
        question: Question,
    },
    Answer {
        id: u64,
        answer: Answer,
    },
    /// The coordinator tells a node whose slots all moved away to retire its cores and exit.
    Depart,
}

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) enum Question {
    Status,
    /// Latency since the last such question (hdrhistogram V2 serialization).
    Latency,
    /// Stop accepting source connections and say how many are open (before a removal).
    Quiesce,
    /// Accept source connections again (a removal was refused).
    Resume,
    /// Are you there? (Answered `Done` by a node whose answering thread runs.)
    Ping,
    /// A node is about to join: accept its links (they prove themselves with the member's
    /// secret) and link to it when it has `Joined`. Answered once it is expected.
    Expect(Member),
    /// Write this node's part of checkpoint `checkpoint` (its cores were asked for their
    /// snapshots), with the cluster's routing table, and keep only it and the parts of `keep`
    /// (the checkpoints the coordinator keeps). Answered `Written` once it is durable, or
    /// `Failed`.
    WritePart {
        checkpoint: u64,
        keep: Vec<u64>,
        table: TableWire,
    },
    /// Every node of a restored cluster is back: start reading sources.
    OpenSources,
    /// The cluster stops: stop accepting source connections and end the open ones where they
    /// are (what they received is applied), for a last checkpoint.
    CutSources,
}

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) enum Answer {
    Status(Vec<CoreStatus>),
    Latency(Vec<u8>),
    Quiesced {
        open_sources: u32,
    },
    Done,
    /// A node's part of a checkpoint is durable: bytes it wrote, bytes of state it holds.
    Written {
        written: u64,
        state_bytes: u64,
    },
    Failed(String),
}

#[derive(Debug, Error)]
pub enum WireError {
    #[error("not a Quokka node message (bad magic)")]
    BadMagic,
    #[error("node protocol version {0} is not supported (this build speaks {VERSION})")]
    Version(u8),
    #[error("a {0}-byte frame is too short for a node message")]
    Short(usize),
    #[error("node message failed validation")]
    Invalid(#[source] BoxedError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("link closed")]
    Closed,
    #[error("a slot header says {len} bytes of archive, which do not fill its {frame}-byte frame")]
    SlotLength { len: u64, frame: usize },
    #[error("a routing table of {got} slots, where this cluster has {expected}")]
    SlotCount { got: usize, expected: u32 },
}

/// Writes `msg` as one link frame, straight into `out` (no intermediate payload buffer).
pub(crate) fn write(out: &mut impl Write, msg: &Wire) -> Result<(), FrameError> {
    if let Wire::Core {
        to,
        msg: PeerMsg::Handoff { from, archive },
    } = msg
    {
        return write_slot(out, *to, *from, archive);
    }
    let bytes = archive_of(msg);
    framing::write_header(out, PREFIX_LEN + bytes.len())?;
    out.write_all(&MAGIC)?;
    out.write_all(&[VERSION])?;
    out.write_all(&bytes)?;
    Ok(())
}

/// The answer to an accepted hello (public so black-box tests can play a node that admits links
/// and then says nothing).
pub fn admitted_frame() -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out, &Wire::Admitted).expect("writing to a Vec cannot fail");
    out
}

/// The first frame of a link: who is speaking on which lane, with the cluster token and the
/// link secret (public so black-box tests can knock on a data port).
pub fn hello_frame(node: &str, lane: Lane, token: &str, secret: LinkSecret) -> Vec<u8> {
    let mut out = Vec::new();
    let hello = Wire::Hello {
        node: node.to_string(),
        lane,
        token: token.to_string(),
        secret,
    };
    write(&mut out, &hello).expect("writing to a Vec cannot fail");
    out
}

/// Reads one link frame of at most `max` bytes. `buf` is reused from frame to frame and keeps
/// the archive aligned, so it is validated where it was read.
pub(crate) fn read(
    input: &mut impl Read,
    buf: &mut AlignedVec,
    max: usize,
) -> Result<Wire, WireError> {
    let len = framing::read_header(input, max)?.ok_or(WireError::Closed)?;
    if len < PREFIX_LEN {
        return Err(WireError::Short(len));
    }
    let mut prefix = [0u8; PREFIX_LEN];
    framing::read_payload(input, &mut prefix)?;
    check_prefix(&prefix)?;
    // The buffer grows as the bytes arrive, not to the announced length up front: a peer that
    // announces 256 MiB and sends nothing holds no memory here.
    let body = len - PREFIX_LEN;
    buf.clear();
    if body <= READ_CHUNK {
        // Exactly: a slot's frame buffer becomes its storage, capacity and all.
        buf.reserve_exact(body);
    }
    while buf.len() < body {
        let start = buf.len();
        let end = body.min(start + READ_CHUNK);
        buf.resize(end, 0);
        framing::read_payload(input, &mut buf[start..end])?;
    }
    let wire = rkyv::access::<ArchivedWire, BoxedError>(buf).map_err(WireError::Invalid)?;
    if let ArchivedWire::Slot(header) = wire {
        let header =
            rkyv::deserialize::<SlotHeader, BoxedError>(header).map_err(WireError::Invalid)?;
        return header.with_archive(buf);
    }
    rkyv::deserialize::<Wire, BoxedError>(wire).map_err(WireError::Invalid)
}

/// What precedes a slot's archive on a link (see [`Wire::Slot`]).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct SlotHeader {
    to: CoreId,
    from: CoreId,
    slot: u32,
    entities: u32,
    checksum: u64,
    /// Bytes of the archive at the start of the frame.
    len: u64,
    /// Where each of its parts ends, if it has several (see [`SlotArchive::parts`]).
    parts: Vec<u64>,
}

/// Bytes a slot's archive is padded to on a link, so the header after it is aligned where the
/// reader's buffer holds it.
const SLOT_PAD: usize = 16;

impl SlotHeader {
    /// The handoff this header ends: its archive is the first `len` bytes of `frame`. The
    /// frame's buffer becomes the slot's storage (taken from the reader, who reads the next frame
    /// into a new one) if it is not much larger than the archive; else (a buffer grown by
    /// earlier, larger frames) the archive is copied out of it.
    fn with_archive(self, frame: &mut AlignedVec) -> Result<Wire, WireError> {
        let len = usize::try_from(self.len).unwrap_or(usize::MAX);
        // The header: the archived `Wire` and, before it, the list of parts' ends.
        let header = std::mem::size_of::<ArchivedWire>() + self.parts.len() * 8;
        if len
            .checked_next_multiple_of(SLOT_PAD)
            .and_then(|l| l.checked_add(header))
            != Some(frame.len())
        {
            return Err(WireError::SlotLength {
                len: self.len,
                frame: frame.len(),
            });
        }
        let bytes = if frame.capacity() <= frame.len() + frame.len() / 8 {
            let mut taken = std::mem::take(frame);
            taken.resize(len, 0);
            taken
        } else {
            let mut copy = AlignedVec::with_capacity(len);
            copy.extend_from_slice(&frame[..len]);
            copy
        };
        let archive = SlotArchive {
            slot: self.slot,
            entities: self.entities,
            checksum: self.checksum,
            bytes,
            parts: self.parts,
        };
        let msg = PeerMsg::Handoff {
            from: self.from,
            archive,
        };
        Ok(Wire::Core { to: self.to, msg })
    }
}

/// Writes a handoff as its archive's bytes as they are, padding, then a [`SlotHeader`]: the
/// bytes are not copied into a message first.
pub(crate) fn write_slot(
    out: &mut impl Write,
    to: CoreId,
    from: CoreId,
    archive: &SlotArchive,
) -> Result<(), FrameError> {
    let len = archive.bytes.len();
    let pad = len.next_multiple_of(SLOT_PAD) - len;
    let header = archive_of(&Wire::Slot(SlotHeader {
        to,
        from,
        slot: archive.slot,
        entities: archive.entities,
        checksum: archive.checksum,
        len: len as u64,
        parts: archive.parts.clone(),
    }));
    framing::write_header(out, PREFIX_LEN + len + pad + header.len())?;
    out.write_all(&MAGIC)?;
    out.write_all(&[VERSION])?;
    out.write_all(&archive.bytes)?;
    out.write_all(&[0; SLOT_PAD][..pad])?;
    out.write_all(&header)?;
    Ok(())
}

/// Bytes of a link frame read (and allocated) at a time.
const READ_CHUNK: usize = 1 << 20;

pub fn encode_join(j: &JoinRequest) -> Vec<u8> {
    prefixed(&archive_of(j))
}

pub fn decode_join(payload: &[u8]) -> Result<JoinRequest, WireError> {
    decode_body(payload)
}

pub fn encode_welcome(w: &Welcome) -> Vec<u8> {
    prefixed(&archive_of(w))
}

pub fn decode_welcome(payload: &[u8]) -> Result<Welcome, WireError> {
    decode_body(payload)
}

/// A control-frame body of a type the layers above define (a change report): magic, version,
/// archive; read back with [`decode_body`].
pub(crate) fn encode_body<T: Archivable>(value: &T) -> Vec<u8> {
    prefixed(&archive_of(value))
}

/// A control-frame body: magic, version, archive.
fn prefixed(archive: &[u8]) -> Vec<u8> {
    [&MAGIC[..], &[VERSION], archive].concat()
}

/// Magic and version before every archive.
const PREFIX_LEN: usize = 3;

/// What rkyv archives into an aligned buffer, as every wire message is.
pub(crate) trait Archivable:
    for<'a> rkyv::Serialize<
    rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, BoxedError>,
>
{
}

impl<T> Archivable for T where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            BoxedError,
        >,
    >
{
}

fn archive_of<T: Archivable>(value: &T) -> AlignedVec {
    rkyv::to_bytes::<BoxedError>(value).expect("wire messages always serialize")
}

fn check_prefix(prefix: &[u8]) -> Result<(), WireError> {
    if prefix.len() < 2 || prefix[..2] != MAGIC {
        return Err(WireError::BadMagic);
    }
    match prefix.get(2) {
        Some(&VERSION) => Ok(()),
        Some(&v) => Err(WireError::Version(v)),
        None => Err(WireError::Short(prefix.len())),
    }
}

pub(crate) fn decode_body<T>(payload: &[u8]) -> Result<T, WireError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, BoxedError>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<BoxedError>>,
{
    check_prefix(payload)?;
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len() - 3);
    aligned.extend_from_slice(&payload[3..]);
    rkyv::from_bytes::<T, BoxedError>(&aligned).map_err(WireError::Invalid)
}

#[cfg(test)]
mod tests;
