//! What nodes say to each other: the join handshake (inside control frames) and the messages on
//! node-to-node links. Every link frame is a Wallaroo frame whose payload is `QN`, a version
//! byte, then one rkyv archive of a [`Wire`] message, validated (bytecheck) before it is read:
//! garbage, a truncated archive or another version is an error value, never a panic.

use std::io::{Read, Write};
use std::sync::Arc;

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;
use thiserror::Error;

use crate::metrics::CoreStatus;
use crate::migration::Transition;
use crate::routing::{CoreId, Move, RoutingTable};

/// First bytes of every link payload.
pub const MAGIC: [u8; 2] = *b"QN";
/// The node protocol version this build speaks (2: slot archives are three flat arrays; 3: a
/// `Prepare` carries every step of a change; 4: a core's status tells of its sink connection).
pub const VERSION: u8 = 4;
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
    pub fn to_table(&self) -> Result<RoutingTable, WireError> {
        RoutingTable::from_owners(self.epoch, self.owners.clone())
            .ok_or(WireError::Invalid("empty routing table".into()))
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

/// One slot's archive on the wire (see `archive::SlotArchive`).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ArchiveWire {
    pub slot: u32,
    pub entities: u32,
    pub checksum: u64,
    pub bytes: Payload,
}

/// What a core tells the coordinator, on its own node through a channel or from another node
/// in a [`Wire::Event`].
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum CoreEvent {
    Prepared(CoreId),
    StepDone { core: CoreId, epoch: u64 },
    Installed { entities: u32, bytes: u64 },
    Left(CoreId),
    Failed { core: CoreId, error: String },
}

/// One message on a link. `to` names the core a message is for; the rest are for the node.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Wire {
    /// The first message on a link: who is speaking, with the cluster token.
    Hello {
        node: String,
        token: String,
    },
    /// The last message on a link: the sender closes it on purpose (not a failure).
    Bye,
    Batch {
        to: CoreId,
        bytes: Payload,
    },
    Marker {
        to: CoreId,
        from: CoreId,
        epoch: u64,
    },
    ProducerDone {
        to: CoreId,
        from: CoreId,
    },
    Handoff {
        to: CoreId,
        from: CoreId,
        archives: Vec<ArchiveWire>,
    },
    HandoffAck {
        to: CoreId,
        slots: Vec<u32>,
    },
    HandoffRejected {
        to: CoreId,
        slot: u32,
        reason: String,
    },
    /// Every step of a change, in epoch order: the table before the first step and each step's
    /// moves (each step's table follows; the same producers for all).
    Prepare {
        to: CoreId,
        table: TableWire,
        steps: Vec<Vec<(u32, CoreId, CoreId)>>,
        producers: Vec<CoreId>,
    },
    Switch {
        to: CoreId,
    },
    /// Peers by core id and the node that runs them.
    AddPeers {
        to: CoreId,
        peers: Vec<(CoreId, String)>,
    },
    RemovePeer {
        to: CoreId,
        peer: CoreId,
    },
    Stop {
        to: CoreId,
        producers: Vec<CoreId>,
    },
    /// From a member to the coordinator.
    Event(CoreEvent),
    /// A node joined: open a link to it.
    Joined(Member),
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
pub enum Question {
    Status,
    /// Latency since the last such question (hdrhistogram V2 serialization).
    Latency,
    /// Stop accepting source connections and say how many are open (before a removal).
    Quiesce,
    /// Accept source connections again (a removal was refused).
    Resume,
}

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Answer {
    Status(Vec<CoreStatus>),
    Latency(Vec<u8>),
    Quiesced { open_sources: u32 },
    Done,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("not a Quokka node message (bad magic)")]
    BadMagic,
    #[error("node protocol version {0} is not supported (this build speaks {VERSION})")]
    Version(u8),
    #[error("node message failed validation: {0}")]
    Invalid(String),
    #[error("node message of {0} bytes exceeds the maximum")]
    Oversized(usize),
    #[error("link closed in the middle of a message")]
    Truncated,
    #[error("link: {0}")]
    Io(String),
}

/// Writes `msg` as one link frame, straight into `out` (no intermediate payload buffer).
pub fn write(out: &mut impl Write, msg: &Wire) -> std::io::Result<()> {
    let bytes = archive(msg);
    let len = u32::try_from(PREFIX_LEN + bytes.len()).expect("link messages fit a frame");
    out.write_all(&len.to_be_bytes())?;
    out.write_all(&MAGIC)?;
    out.write_all(&[VERSION])?;
    out.write_all(&bytes)
}

/// Reads one link frame of at most `max` bytes. `buf` is reused from frame to frame and keeps
/// the archive aligned, so it is validated where it was read.
pub fn read(input: &mut impl Read, buf: &mut AlignedVec, max: usize) -> Result<Wire, WireError> {
    let mut header = [0u8; 4 + PREFIX_LEN];
    read_exact(input, &mut header[..4])?;
    let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len > max {
        return Err(WireError::Oversized(len));
    }
    if len < PREFIX_LEN {
        return Err(WireError::Invalid(format!("a {len}-byte frame")));
    }
    read_exact(input, &mut header[4..])?;
    check_prefix(&header[4..])?;
    buf.clear();
    buf.resize(len - PREFIX_LEN, 0);
    read_exact(input, buf)?;
    rkyv::from_bytes::<Wire, BoxedError>(buf).map_err(|e| WireError::Invalid(e.to_string()))
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), WireError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => WireError::Truncated,
        _ => WireError::Io(e.to_string()),
    })
}

pub fn encode_join(j: &JoinRequest) -> Vec<u8> {
    prefixed(&archive(j))
}

pub fn decode_join(payload: &[u8]) -> Result<JoinRequest, WireError> {
    decode_body(payload)
}

pub fn encode_welcome(w: &Welcome) -> Vec<u8> {
    prefixed(&archive(w))
}

pub fn decode_welcome(payload: &[u8]) -> Result<Welcome, WireError> {
    decode_body(payload)
}

/// A control-frame body: magic, version, archive.
fn prefixed(archive: &[u8]) -> Vec<u8> {
    [&MAGIC[..], &[VERSION], archive].concat()
}

/// Magic and version before every archive.
const PREFIX_LEN: usize = 3;

fn archive<T>(value: &T) -> AlignedVec
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
        None => Err(WireError::Invalid("no version".into())),
    }
}

fn decode_body<T>(payload: &[u8]) -> Result<T, WireError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, BoxedError>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<BoxedError>>,
{
    check_prefix(payload)?;
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len() - 3);
    aligned.extend_from_slice(&payload[3..]);
    rkyv::from_bytes::<T, BoxedError>(&aligned).map_err(|e| WireError::Invalid(e.to_string()))
}

/// A change's steps as a `Prepare` for core `to`: the table before the first step, then only
/// each step's moves (not a table of every slot per step).
pub fn prepare_to_wire(to: CoreId, steps: &[Arc<Transition>]) -> Wire {
    let (table, producers) = match steps.first() {
        Some(first) => {
            let mut owners: Vec<CoreId> = (0..first.table.n_slots())
                .map(|s| first.table.owner(s))
                .collect();
            for m in &first.moves {
                owners[m.slot as usize] = m.from;
            }
            let epoch = first.table.epoch() - 1;
            (TableWire { epoch, owners }, first.producers.clone())
        }
        None => (
            TableWire {
                epoch: 0,
                owners: Vec::new(),
            },
            Vec::new(),
        ),
    };
    Wire::Prepare {
        to,
        table,
        steps: steps.iter().map(|t| moves_to_wire(&t.moves)).collect(),
        producers,
    }
}

/// The steps of a received `Prepare`, each table built from the one before; refused unless
/// every move names a slot of the table and its owner at that step.
pub fn prepare_from_wire(
    table: &TableWire,
    steps: &[Vec<(u32, CoreId, CoreId)>],
    producers: &[CoreId],
) -> Result<Vec<Arc<Transition>>, WireError> {
    let mut current = table.to_table()?;
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        let moves = moves_from_wire(step);
        if let Some(m) = moves
            .iter()
            .find(|m| m.slot >= current.n_slots() || current.owner(m.slot) != m.from)
        {
            return Err(WireError::Invalid(format!(
                "a move of slot {} from core {} at epoch {}: not its owner there",
                m.slot,
                m.from,
                current.epoch()
            )));
        }
        current = current.with_moves(&moves);
        out.push(Arc::new(Transition {
            table: Arc::new(current.clone()),
            moves,
            producers: producers.to_vec(),
        }));
    }
    Ok(out)
}

pub fn moves_to_wire(moves: &[Move]) -> Vec<(u32, CoreId, CoreId)> {
    moves.iter().map(|m| (m.slot, m.from, m.to)).collect()
}

pub fn moves_from_wire(moves: &[(u32, CoreId, CoreId)]) -> Vec<Move> {
    moves
        .iter()
        .map(|&(slot, from, to)| Move { slot, from, to })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Wire> {
        vec![
            Wire::Hello {
                node: "w1".into(),
                token: "secret".into(),
            },
            Wire::Bye,
            Wire::Batch {
                to: 3,
                bytes: Payload::from(&[1, 2, 3][..]),
            },
            Wire::Marker {
                to: 1,
                from: 2,
                epoch: 7,
            },
            Wire::Handoff {
                to: 1,
                from: 0,
                archives: vec![ArchiveWire {
                    slot: 4095,
                    entities: 2,
                    checksum: 99,
                    bytes: Payload::from(&[0; 100][..]),
                }],
            },
            Wire::HandoffAck {
                to: 0,
                slots: vec![1, 2],
            },
            Wire::Prepare {
                to: 2,
                table: TableWire {
                    epoch: 3,
                    owners: vec![0, 1, 1],
                },
                steps: vec![vec![(1, 1, 2)]],
                producers: vec![0, 1, 2],
            },
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
            assert_eq!(read_one(&frame(&m)), Ok(m.clone()));
            write(&mut stream, &m).unwrap();
        }
        // Back to back on one stream, through one reused buffer.
        let (mut input, mut buf) = (&stream[..], AlignedVec::new());
        for m in samples() {
            assert_eq!(read(&mut input, &mut buf, MAX_LINK_FRAME), Ok(m));
        }
        assert_eq!(
            read(&mut input, &mut buf, MAX_LINK_FRAME),
            Err(WireError::Truncated)
        );
        let j = JoinRequest {
            version: VERSION,
            node: "w2".into(),
            app: "word_count".into(),
            n_slots: 4096,
            cores: 1,
            data_addr: "127.0.0.1:6001".into(),
        };
        assert_eq!(decode_join(&encode_join(&j)), Ok(j));
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(read_one(b""), Err(WireError::Truncated));
        assert!(matches!(read_one(&framed(b"")), Err(WireError::Invalid(_))));
        assert_eq!(read_one(&framed(b"QK\x01")), Err(WireError::BadMagic));
        assert!(matches!(
            read_one(&framed(b"QN")),
            Err(WireError::Invalid(_))
        ));
        assert_eq!(read_one(&framed(b"QN\x00abc")), Err(WireError::Version(0)));
        assert_eq!(read_one(&framed(b"QN\x01abc")), Err(WireError::Version(1)));
        assert!(matches!(
            read_one(&framed(&[b'Q', b'N', VERSION])),
            Err(WireError::Invalid(_))
        ));
        assert_eq!(
            read_one(&(MAX_LINK_FRAME as u32 + 1).to_be_bytes()),
            Err(WireError::Oversized(MAX_LINK_FRAME + 1))
        );
        assert_eq!(decode_join(b"QK\x01"), Err(WireError::BadMagic));
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
    fn prepare_carries_the_base_table_and_moves_and_checks_them() {
        let base = RoutingTable::uniform(8, 1);
        let moves = [
            vec![
                Move {
                    slot: 0,
                    from: 0,
                    to: 1,
                },
                Move {
                    slot: 1,
                    from: 0,
                    to: 1,
                },
            ],
            vec![Move {
                slot: 2,
                from: 0,
                to: 1,
            }],
        ];
        let mut table = base.clone();
        let steps: Vec<Arc<Transition>> = moves
            .iter()
            .map(|m| {
                table = table.with_moves(m);
                Arc::new(Transition {
                    table: Arc::new(table.clone()),
                    moves: m.clone(),
                    producers: vec![0, 1],
                })
            })
            .collect();
        let Wire::Prepare {
            to,
            table,
            steps: wire_steps,
            producers,
        } = prepare_to_wire(1, &steps)
        else {
            panic!("not a prepare")
        };
        assert_eq!(to, 1);
        assert_eq!(table.to_table().unwrap(), base);
        let back = prepare_from_wire(&table, &wire_steps, &producers).unwrap();
        assert_eq!(back.len(), 2);
        for (a, b) in back.iter().zip(&steps) {
            assert_eq!(*a.table, *b.table);
            assert_eq!(a.moves, b.moves);
            assert_eq!(a.producers, b.producers);
        }
        // A move by a core that does not own the slot at that step, or of a slot that does not
        // exist, is refused.
        let stolen = vec![vec![(0, 0, 1)], vec![(0, 0, 1)]];
        let err = prepare_from_wire(&table, &stolen, &producers).unwrap_err();
        assert!(err.to_string().contains("not its owner"), "{err}");
        let beyond = vec![vec![(8, 0, 1)]];
        assert!(prepare_from_wire(&table, &beyond, &producers).is_err());
    }
}
