//! Checkpoints, pure: what a checkpoint holds (its [`Manifest`]: the routing table, where each
//! replayable source stood, and where each stage's share of each slot is stored), how a
//! manifest is framed and checked, how the next one follows from the last and what was written
//! for it (incremental: a slot unchanged since is found where it was), which data files the
//! kept manifests still need, and barrier alignment on a core (`barrier.rs`). The files
//! themselves are the node's (`node/state_dir.rs`).

mod barrier;
#[cfg(test)]
mod simulation;

use std::collections::{BTreeMap, BTreeSet};

use rkyv::rancor::BoxedError;
use thiserror::Error;

pub(crate) use self::barrier::{Alignment, BarrierError};
use crate::hash::stable_hash;
use crate::routing::{CoreId, RoutingTable};

/// Where one archive lies: in data file `file` (the checkpoint that wrote it), `len` bytes from
/// `offset`, with the XXH3-64 of those bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct Span {
    pub file: u64,
    pub offset: u64,
    pub len: u64,
    pub checksum: u64,
}

/// One stage's share of one slot: its entities' archive, and its timers' if the stage has any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct SlotPart {
    pub stage: u32,
    pub slot: u32,
    pub entities: u32,
    pub memory: Span,
    pub timers: Option<Span>,
}

/// Where a replayable source stood at the barrier: it resumes reading there. A file source's
/// offset is a byte offset (`stream` is empty); a durable TCP stream's is a frame count.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct SourceMark {
    pub source: u32,
    pub stream: String,
    pub offset: u64,
}

/// The sources' marks of the next checkpoint: `previous`'s, with those the cores noted now
/// taking their place (a durable stream read by two cores in turn: the larger), so a stream
/// no core reads any more keeps where it stood.
pub(crate) fn merge_marks(previous: &[SourceMark], now: Vec<SourceMark>) -> Vec<SourceMark> {
    let mut marks: BTreeMap<(u32, String), u64> = (previous.iter())
        .map(|m| ((m.source, m.stream.clone()), m.offset))
        .collect();
    let mut seen: BTreeMap<(u32, String), u64> = BTreeMap::new();
    for m in now {
        let at = seen.entry((m.source, m.stream)).or_insert(0);
        *at = (*at).max(m.offset);
    }
    marks.extend(seen);
    (marks.into_iter())
        .map(|((source, stream), offset)| SourceMark {
            source,
            stream,
            offset,
        })
        .collect()
}

/// A member node of a cluster checkpoint, with the cores it ran: it holds their slots' parts
/// (and its sources' marks) in its own state dir.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct MemberPart {
    pub node: String,
    pub cores: Vec<CoreId>,
}

/// A node's part of a checkpoint: written last, once every archive it names is durable. The
/// coordinator's is written once every member's part is durable, so it completes the
/// checkpoint of the whole cluster and names the members that hold the rest.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct Manifest {
    pub checkpoint: u64,
    pub app: String,
    /// The cluster it is of (the id its coordinator's state dir keeps).
    pub cluster: u64,
    /// The node that wrote it.
    pub node: String,
    /// On the coordinator, the other nodes' parts of this checkpoint (none on one node).
    pub members: Vec<MemberPart>,
    pub n_slots: u32,
    pub epoch: u64,
    /// Slot -> core.
    pub owners: Vec<CoreId>,
    pub sources: Vec<SourceMark>,
    /// Every stored slot part, by (stage, slot).
    pub parts: Vec<SlotPart>,
    /// Bytes this checkpoint wrote (its data file).
    pub written: u64,
    /// When its barriers were sent, in ms since the Unix epoch.
    pub taken_ms: u64,
}

/// What a manifest file starts with.
const MAGIC: &[u8; 4] = b"QKCP";
/// The manifest format; another is refused by name.
pub(crate) const FORMAT: u8 = 2;

#[derive(Debug, Error)]
pub(crate) enum ManifestError {
    #[error("not a Quokka checkpoint manifest (its first bytes are not `QKCP`)")]
    Magic,
    #[error("checkpoint format {0}; this build reads format {FORMAT}")]
    Format(u8),
    #[error("cut short or corrupt: its checksum does not match ({0} bytes)")]
    Checksum(usize),
    #[error("its archive is invalid: {0}")]
    Archive(#[source] BoxedError),
    #[error("it names a routing table of {owners} slots for a cluster of {n_slots}")]
    Table { owners: usize, n_slots: u32 },
}

impl Manifest {
    /// The manifest's file bytes: magic, format, the rkyv archive, then its checksum.
    pub fn encode(&self) -> Vec<u8> {
        let archive = rkyv::to_bytes::<BoxedError>(self).expect("a manifest always archives");
        let mut bytes = Vec::with_capacity(archive.len() + 13);
        bytes.extend_from_slice(MAGIC);
        bytes.push(FORMAT);
        bytes.extend_from_slice(&archive);
        let checksum = stable_hash(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// A manifest read back, checked (checksum first, then the archive) before use.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() < MAGIC.len() + 1 + 8 || &bytes[..4] != MAGIC {
            return Err(ManifestError::Magic);
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if stable_hash(body) != u64::from_le_bytes(sum.try_into().expect("8 bytes")) {
            return Err(ManifestError::Checksum(bytes.len()));
        }
        if body[4] != FORMAT {
            return Err(ManifestError::Format(body[4]));
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len() - 5);
        aligned.extend_from_slice(&body[5..]);
        let m =
            rkyv::from_bytes::<Manifest, BoxedError>(&aligned).map_err(ManifestError::Archive)?;
        if m.owners.len() != m.n_slots as usize {
            return Err(ManifestError::Table {
                owners: m.owners.len(),
                n_slots: m.n_slots,
            });
        }
        Ok(m)
    }

    /// The routing table it restores.
    pub fn table(&self) -> Option<RoutingTable> {
        RoutingTable::from_owners(self.epoch, self.owners.clone())
    }

    /// The next checkpoint: `written` replaces what `previous` stored of those (stage, slot)
    /// pairs; every other part is found where `previous` put it.
    pub fn next(previous: Option<&Manifest>, mut next: Manifest, written: Vec<SlotPart>) -> Self {
        let mut parts: BTreeMap<(u32, u32), SlotPart> = previous
            .map(|p| p.parts.iter().map(|s| ((s.stage, s.slot), *s)).collect())
            .unwrap_or_default();
        for part in written {
            parts.insert((part.stage, part.slot), part);
        }
        next.parts = parts.into_values().collect();
        next
    }

    /// The data files it reads.
    pub fn files(&self) -> BTreeSet<u64> {
        let spans = self.parts.iter().flat_map(|p| [Some(p.memory), p.timers]);
        spans.flatten().map(|s| s.file).collect()
    }

    /// Bytes of state it names.
    pub fn state_bytes(&self) -> u64 {
        let spans = self.parts.iter().flat_map(|p| [Some(p.memory), p.timers]);
        spans.flatten().map(|s| s.len).sum()
    }
}

/// Of the checkpoints on disk (newest first, each with the files it reads), the ones to keep:
/// the newest two that are complete, or on a member those of `only` (the checkpoints the
/// coordinator keeps, which complete the cluster's, and the one just written, which the next
/// builds on). Returns (manifests to keep, data files to keep).
pub(crate) fn keep(
    complete: &[(u64, BTreeSet<u64>)],
    only: Option<&BTreeSet<u64>>,
) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let kept: Vec<_> = match only {
        None => complete.iter().take(2).collect(),
        Some(only) => complete.iter().filter(|(n, _)| only.contains(n)).collect(),
    };
    let manifests = kept.iter().map(|(n, _)| *n).collect();
    let files = kept.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    (manifests, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(file: u64, offset: u64) -> Span {
        Span {
            file,
            offset,
            len: 10,
            checksum: 1,
        }
    }

    fn part(stage: u32, slot: u32, file: u64) -> SlotPart {
        SlotPart {
            stage,
            slot,
            entities: 1,
            memory: span(file, 0),
            timers: None,
        }
    }

    fn manifest(checkpoint: u64) -> Manifest {
        Manifest {
            checkpoint,
            app: "word_count".into(),
            cluster: 0x5eed,
            node: "w1".into(),
            members: vec![MemberPart {
                node: "w2".into(),
                cores: vec![1],
            }],
            n_slots: 4,
            epoch: 3,
            owners: vec![0, 0, 1, 1],
            sources: vec![SourceMark {
                source: 0,
                stream: String::new(),
                offset: 1234,
            }],
            parts: Vec::new(),
            written: 0,
            taken_ms: 0,
        }
    }

    #[test]
    fn a_manifest_reads_back_as_written() {
        let m = Manifest::next(None, manifest(1), vec![part(0, 2, 1)]);
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(m.table().unwrap().owner(2), 1);
    }

    #[test]
    fn a_cut_or_flipped_manifest_is_refused() {
        let bytes = manifest(1).encode();
        for cut in [0, 3, 12, bytes.len() / 2, bytes.len() - 1] {
            assert!(Manifest::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            assert!(Manifest::decode(&flipped).is_err(), "flipped byte {i}");
        }
        let mut other = bytes.clone();
        other[4] = FORMAT + 1;
        let body = other.len() - 8;
        let sum = stable_hash(&other[..body]).to_le_bytes();
        other[body..].copy_from_slice(&sum);
        assert!(matches!(
            Manifest::decode(&other),
            Err(ManifestError::Format(f)) if f == FORMAT + 1
        ));
    }

    #[test]
    fn the_next_checkpoint_keeps_what_did_not_change() {
        let first = Manifest::next(None, manifest(1), vec![part(0, 0, 1), part(0, 1, 1)]);
        let second = Manifest::next(
            Some(&first),
            manifest(2),
            vec![part(0, 1, 2), part(1, 3, 2)],
        );
        let at: Vec<_> = second
            .parts
            .iter()
            .map(|p| (p.stage, p.slot, p.memory.file))
            .collect();
        assert_eq!(at, vec![(0, 0, 1), (0, 1, 2), (1, 3, 2)]);
        assert_eq!(second.files(), BTreeSet::from([1, 2]));
        assert_eq!(second.state_bytes(), 30);
    }

    #[test]
    fn source_marks_go_on_from_the_last_checkpoint() {
        let mark = |source, stream: &str, offset| SourceMark {
            source,
            stream: stream.into(),
            offset,
        };
        let before = vec![mark(0, "", 100), mark(1, "a", 5), mark(1, "b", 7)];
        let now = vec![mark(0, "", 150), mark(1, "a", 9), mark(1, "a", 12)];
        assert_eq!(
            merge_marks(&before, now),
            vec![mark(0, "", 150), mark(1, "a", 12), mark(1, "b", 7)]
        );
    }

    #[test]
    fn the_newest_two_complete_checkpoints_are_kept_with_their_files() {
        let on_disk = vec![
            (5, BTreeSet::from([2, 5])),
            (4, BTreeSet::from([2, 4])),
            (3, BTreeSet::from([1, 3])),
        ];
        let (manifests, files) = keep(&on_disk, None);
        assert_eq!(manifests, BTreeSet::from([4, 5]));
        assert_eq!(files, BTreeSet::from([2, 4, 5]));
        assert_eq!(keep(&[], None), (BTreeSet::new(), BTreeSet::new()));
    }

    #[test]
    fn a_member_keeps_the_checkpoints_the_coordinator_keeps_and_its_newest() {
        // The coordinator keeps 3 and 5 (its 4 failed on another member), this member just
        // wrote 6: it keeps 3, 5 and 6 and whatever they read, not 4 (and not 7, a part the
        // cluster never completed before a restore from 5).
        let on_disk = vec![
            (7, BTreeSet::from([7])),
            (6, BTreeSet::from([4, 6])),
            (5, BTreeSet::from([5])),
            (4, BTreeSet::from([2, 4])),
            (3, BTreeSet::from([1, 3])),
        ];
        let (manifests, files) = keep(&on_disk, Some(&BTreeSet::from([3, 5, 6])));
        assert_eq!(manifests, BTreeSet::from([3, 5, 6]));
        assert_eq!(files, BTreeSet::from([1, 3, 4, 5, 6]));
    }
}
