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
/// 7: a slot archive carries its index, one slot per handoff frame).
pub const VERSION: u8 = 7;
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
}

/// A member of the cluster as others reach it.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Member {
    pub name: String,
    pub data_addr: String,
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
    /// The sink address the cluster writes to.
    pub output: String,
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
    /// A batch of keyed messages for core `to` (the app's rkyv archive of them).
    Batch {
        to: CoreId,
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
}

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) enum Answer {
    Status(Vec<CoreStatus>),
    Latency(Vec<u8>),
    Quiesced { open_sources: u32 },
    Done,
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
        let header = std::mem::size_of::<ArchivedWire>();
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
pub(crate) fn encode_body<T>(value: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            BoxedError,
        >,
    >,
{
    prefixed(&archive_of(value))
}

/// A control-frame body: magic, version, archive.
fn prefixed(archive: &[u8]) -> Vec<u8> {
    [&MAGIC[..], &[VERSION], archive].concat()
}

/// Magic and version before every archive.
const PREFIX_LEN: usize = 3;

fn archive_of<T>(value: &T) -> AlignedVec
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            BoxedError,
        >,
    >,
{
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
mod tests {
    use super::*;
    use crate::archive::SlotArchive;
    use crate::migration::ChangePlan;
    use crate::routing::Move;

    fn samples() -> Vec<Wire> {
        let archive = SlotArchive {
            slot: 4095,
            entities: 2,
            checksum: 99,
            bytes: Payload::from(&[0; 100][..]).0,
        };
        let plan = ChangePlan::new(
            &RoutingTable::uniform(3, 2),
            vec![vec![Move {
                slot: 1,
                from: 1,
                to: 2,
            }]],
            vec![0, 1, 2],
        );
        let core = |to, msg| Wire::Core { to, msg };
        vec![
            Wire::Hello {
                node: "w1".into(),
                lane: Lane::Control,
                token: "token".into(),
                secret: LinkSecret([7; 16]),
            },
            Wire::Admitted,
            Wire::Joined { node: "w3".into() },
            Wire::Bye,
            Wire::Batch {
                to: 3,
                bytes: Payload::from(&[1, 2, 3][..]),
            },
            core(1, PeerMsg::Marker { from: 2, epoch: 7 }),
            core(1, PeerMsg::Handoff { from: 0, archive }),
            core(0, PeerMsg::HandoffAck { slots: vec![1, 2] }),
            core(2, PeerMsg::Prepare(plan)),
            core(
                2,
                PeerMsg::Stop {
                    producers: vec![0, 1],
                },
            ),
            Wire::AddPeers {
                to: 0,
                peers: vec![(4, "w3".into())],
            },
            Wire::Event(CoreEvent::Failed {
                core: 1,
                error: "x".into(),
            }),
            Wire::Ask {
                id: 5,
                question: Question::Quiesce,
            },
            Wire::Ask {
                id: 6,
                question: Question::Expect(Member {
                    name: "w3".into(),
                    data_addr: "127.0.0.1:6001".into(),
                    cores: vec![4, 5],
                    secret: LinkSecret([9; 16]),
                }),
            },
            Wire::Answer {
                id: 5,
                answer: Answer::Quiesced { open_sources: 2 },
            },
            Wire::Depart,
        ]
    }

    /// One frame as a link carries it.
    fn frame(m: &Wire) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, m).unwrap();
        out
    }

    /// A frame around an arbitrary payload.
    fn framed(payload: &[u8]) -> Vec<u8> {
        [&(payload.len() as u32).to_be_bytes()[..], payload].concat()
    }

    fn read_one(bytes: &[u8]) -> Result<Wire, WireError> {
        read(&mut &bytes[..], &mut AlignedVec::new(), MAX_LINK_FRAME)
    }

    #[test]
    fn messages_round_trip() {
        let mut stream = Vec::new();
        for m in samples() {
            assert_eq!(read_one(&frame(&m)).unwrap(), m);
            write(&mut stream, &m).unwrap();
        }
        // Back to back on one stream, through one reused buffer.
        let (mut input, mut buf) = (&stream[..], AlignedVec::new());
        for m in samples() {
            assert_eq!(read(&mut input, &mut buf, MAX_LINK_FRAME).unwrap(), m);
        }
        assert!(matches!(
            read(&mut input, &mut buf, MAX_LINK_FRAME),
            Err(WireError::Closed)
        ));
        let j = JoinRequest {
            version: VERSION,
            node: "w2".into(),
            app: "word_count".into(),
            n_slots: 4096,
            cores: 1,
            data_addr: "127.0.0.1:6001".into(),
        };
        assert_eq!(decode_join(&encode_join(&j)).unwrap(), j);
    }

    /// A handoff of slot 3 holding the key "k" with the count 7.
    fn handoff_of_k() -> Wire {
        let mut entities = crate::store::SlotMemory::<u64>::of([(&b"k"[..], 7)]).into_slot();
        let archive = SlotArchive::write(3, &mut entities).unwrap();
        Wire::Core {
            to: 1,
            msg: PeerMsg::Handoff { from: 0, archive },
        }
    }

    #[test]
    fn a_handoff_frame_becomes_the_slot_storage_as_it_was_read() {
        let sent = handoff_of_k();
        let mut buf = AlignedVec::new();
        let got = read(&mut &frame(&sent)[..], &mut buf, MAX_LINK_FRAME).unwrap();
        assert_eq!(got, sent);
        // The frame's buffer left with the archive (the link reads the next frame into a new
        // one): nothing was copied out of it.
        assert_eq!(buf.capacity(), 0);
        let Wire::Core {
            msg: PeerMsg::Handoff { archive, .. },
            ..
        } = got
        else {
            unreachable!()
        };
        let mut slot = archive.read::<u64>().unwrap();
        assert_eq!(slot.pairs(), [(b"k".to_vec(), &7)]);
    }

    #[test]
    fn a_handoff_read_into_a_buffer_grown_by_a_larger_frame_is_copied_out_of_it() {
        let big = Wire::Batch {
            to: 0,
            bytes: Payload::from(&[7; 300_000][..]),
        };
        let slot = handoff_of_k();
        let stream = [frame(&big), frame(&slot)].concat();
        let (mut input, mut buf) = (&stream[..], AlignedVec::new());
        assert_eq!(read(&mut input, &mut buf, MAX_LINK_FRAME).unwrap(), big);
        let grown = buf.capacity();
        assert_eq!(read(&mut input, &mut buf, MAX_LINK_FRAME).unwrap(), slot);
        // The slot did not keep 300 KB for its few bytes: the reader keeps its buffer.
        assert_eq!(buf.capacity(), grown);
    }

    #[test]
    fn a_slot_header_that_does_not_match_its_frame_is_an_error() {
        let slot_frame = |len_says: u64, archive: &[u8]| {
            let header = archive_of(&Wire::Slot(SlotHeader {
                to: 1,
                from: 0,
                slot: 2,
                entities: 0,
                checksum: 0,
                len: len_says,
            }));
            let pad = archive.len().next_multiple_of(SLOT_PAD) - archive.len();
            let payload = [
                &MAGIC[..],
                &[VERSION],
                archive,
                &[0; SLOT_PAD][..pad],
                &header,
            ]
            .concat();
            framed(&payload)
        };
        assert!(read_one(&slot_frame(32, &[0; 32])).is_ok());
        for (len, archive) in [
            (33, &[0; 32][..]),
            (16, &[0; 32]),
            (u64::MAX, &[0; 32]),
            (1 << 40, &[]),
        ] {
            assert!(
                matches!(
                    read_one(&slot_frame(len, archive)),
                    Err(WireError::SlotLength { .. })
                ),
                "a header saying {len} bytes over {} bytes of archive",
                archive.len()
            );
        }
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(matches!(read_one(b""), Err(WireError::Closed)));
        assert!(matches!(
            read_one(b"\x00\x00"),
            Err(WireError::Frame(FrameError::Truncated { .. }))
        ));
        assert!(matches!(read_one(&framed(b"")), Err(WireError::Short(0))));
        assert!(matches!(
            read_one(&framed(b"QK\x01")),
            Err(WireError::BadMagic)
        ));
        assert!(matches!(read_one(&framed(b"QN")), Err(WireError::Short(2))));
        assert!(matches!(
            read_one(&framed(b"QN\x00abc")),
            Err(WireError::Version(0))
        ));
        assert!(matches!(
            read_one(&framed(b"QN\x01abc")),
            Err(WireError::Version(1))
        ));
        assert!(matches!(
            read_one(&framed(&[b'Q', b'N', VERSION])),
            Err(WireError::Invalid(_))
        ));
        assert!(matches!(
            read_one(&(MAX_LINK_FRAME as u32 + 1).to_be_bytes()),
            Err(WireError::Frame(FrameError::Oversized { len, .. })) if len == MAX_LINK_FRAME + 1
        ));
        assert!(matches!(decode_join(b"QK\x01"), Err(WireError::BadMagic)));
        assert!(matches!(
            decode_join(&[&b"QN"[..], &[VERSION], b"garbage!"].concat()),
            Err(WireError::Invalid(_))
        ));
        // Every truncation of every sample is refused, never a panic; so is every shortened
        // payload inside a whole frame.
        for m in samples() {
            let bytes = frame(&m);
            for cut in 0..bytes.len() {
                assert!(read_one(&bytes[..cut]).is_err());
            }
            let payload = &bytes[4..];
            for cut in 0..payload.len() {
                assert_ne!(read_one(&framed(&payload[..cut])).ok(), Some(m.clone()));
            }
        }
    }

    /// A frame that announces the maximum and then stops holds no more memory than it sent
    /// (found by the probe of issue 14: 256 MiB per connection on the data port).
    #[test]
    fn an_announced_length_is_not_allocated_before_its_bytes_arrive() {
        let mut header = (MAX_LINK_FRAME as u32).to_be_bytes().to_vec();
        header.extend_from_slice(&[b'Q', b'N', VERSION]);
        header.extend_from_slice(&[0; 100]);
        let mut buf = AlignedVec::new();
        let read = read(&mut &header[..], &mut buf, MAX_LINK_FRAME);
        assert!(matches!(
            read,
            Err(WireError::Frame(FrameError::Truncated { .. }))
        ));
        assert!(
            buf.capacity() <= 2 * READ_CHUNK,
            "{} bytes held",
            buf.capacity()
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9;
        for len in 0..300 {
            let mut bytes = vec![b'Q', b'N', VERSION];
            bytes.extend((0..len).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }));
            let _ = read_one(&framed(&bytes));
            let _ = read_one(&bytes);
            let _ = decode_join(&bytes);
            let _ = decode_welcome(&bytes);
        }
    }

    #[test]
    fn link_secrets_are_random_unprinted_and_equal_only_whole() {
        let (a, b) = (LinkSecret::random().unwrap(), LinkSecret::random().unwrap());
        assert!(a != b);
        for at in 0..16 {
            let mut bytes = a.0;
            bytes[at] ^= 1;
            assert!(LinkSecret(bytes) != a);
        }
        let welcome = Welcome {
            cores: vec![2],
            members: vec![Member {
                name: "w1".into(),
                data_addr: "127.0.0.1:6001".into(),
                cores: vec![0, 1],
                secret: a,
            }],
            table: TableWire::from(&RoutingTable::uniform(8, 2)),
            output: "127.0.0.1:7002".into(),
        };
        let printed = format!("{welcome:?}");
        assert!(printed.contains("LinkSecret(..)"), "{printed}");
        assert!(!printed.contains(&format!("{:?}", a.0)), "{printed}");
        let back = decode_welcome(&encode_welcome(&welcome)).unwrap();
        assert!(back == welcome && back.members[0].secret == a);
    }

    #[test]
    fn a_table_of_another_slot_count_is_refused() {
        let table = TableWire::from(&RoutingTable::uniform(8, 2));
        assert_eq!(table.to_table(8).unwrap(), RoutingTable::uniform(8, 2));
        assert!(matches!(
            table.to_table(4096),
            Err(WireError::SlotCount {
                got: 8,
                expected: 4096
            })
        ));
        let empty = TableWire {
            epoch: 0,
            owners: Vec::new(),
        };
        assert!(empty.to_table(0).is_err());
    }
}
