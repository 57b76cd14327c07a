//! Slot archives: every entity of one slot in one aligned rkyv buffer, the form in which state
//! crosses to another node (and, later, to disk).
//!
//! The buffer's layout is the store's own ([`SlotMemory`]: keys back to back, a span and a state
//! per entity, and the index), so writing it is bulk copies and the receiver uses it in place. A
//! receiver checks the checksum, then validates the archive (bytecheck, and what a lookup relies
//! on) before it touches it; a bad archive is an error value, never a panic.

use rkyv::util::AlignedVec;
use thiserror::Error;

use crate::hash::stable_hash;
use crate::step::State;
#[cfg(doc)]
use crate::store::SlotMemory;
use crate::store::{Malformed, Slot};

/// The archived entities of one slot, with what a receiver needs to trust them. It crosses a
/// link as itself; the receiving node reads it into an aligned buffer that becomes the slot's
/// storage.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SlotArchive {
    pub slot: u32,
    pub entities: u32,
    /// XXH3-64 of `bytes`.
    pub checksum: u64,
    #[rkyv(with = rkyv::with::AsVec)]
    pub bytes: AlignedVec,
    /// Where each part ends in `bytes`, when the slot has several (a pipeline of several keyed
    /// stages has one per stage, and one more for a stage's timers); empty for one part.
    pub parts: Vec<u64>,
}

impl PartialEq for SlotArchive {
    fn eq(&self, other: &Self) -> bool {
        (self.slot, self.entities, self.checksum) == (other.slot, other.entities, other.checksum)
            && self.bytes.as_slice() == other.bytes.as_slice()
            && self.parts == other.parts
    }
}

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("slot {slot}: archive checksum mismatch ({len} bytes): corrupt in transit")]
    Checksum { slot: u32, len: usize },
    #[error("slot {slot}: archive failed validation: {source}")]
    Invalid {
        slot: u32,
        #[source]
        source: Malformed,
    },
    #[error("slot {slot}: archive holds {got} entities, its header says {want}")]
    Count { slot: u32, got: usize, want: u32 },
    #[error("slot {slot}: cannot archive state: {reason}")]
    Serialize { slot: u32, reason: String },
    #[error("slot {slot}: archived timers: {reason}")]
    Timers { slot: u32, reason: String },
    #[error("slot {slot}: the archive has {got} parts, the app's stages make {want}")]
    PartCount { slot: u32, got: usize, want: usize },
    #[error("slot {slot}: archive parts do not fit its {len} bytes ({parts:?})")]
    Parts {
        slot: u32,
        len: usize,
        parts: Vec<u64>,
    },
}

/// Where each part of a several-part archive starts: parts are padded to this, so a part's
/// alignment within the archive is what it was when written.
const PART_ALIGN: usize = 16;

impl SlotArchive {
    /// Archives the entities of `slot` (a received slot whose states were all used in place is
    /// copied as it is).
    pub fn write<S: State>(slot: u32, entities: &mut Slot<S>) -> Result<Self, ArchiveError> {
        Self::write_in(slot, entities, AlignedVec::new())
    }

    /// The same, into `buf` (a writer's buffer, reused from archive to archive).
    pub fn write_in<S: State>(
        slot: u32,
        entities: &mut Slot<S>,
        buf: AlignedVec,
    ) -> Result<Self, ArchiveError> {
        let bytes = entities
            .write_archive(buf)
            .map_err(|e| ArchiveError::Serialize {
                slot,
                reason: e.to_string(),
            })?;
        Ok(Self {
            slot,
            entities: entities.len() as u32,
            checksum: stable_hash(&bytes),
            bytes,
            parts: Vec::new(),
        })
    }

    /// One archive of several parts (each an archive of its own), holding `entities` in all.
    pub fn join(slot: u32, entities: u32, parts: Vec<AlignedVec>) -> Self {
        if parts.len() == 1 {
            let bytes = parts.into_iter().next().expect("one part");
            return Self {
                slot,
                entities,
                checksum: stable_hash(&bytes),
                bytes,
                parts: Vec::new(),
            };
        }
        let total = parts
            .iter()
            .map(|p| p.len().next_multiple_of(PART_ALIGN))
            .sum();
        let mut bytes = AlignedVec::with_capacity(total);
        let mut ends = Vec::with_capacity(parts.len());
        for part in &parts {
            bytes.resize(bytes.len().next_multiple_of(PART_ALIGN), 0);
            bytes.extend_from_slice(part);
            ends.push(bytes.len() as u64);
        }
        Self {
            slot,
            entities,
            checksum: stable_hash(&bytes),
            bytes,
            parts: ends,
        }
    }

    /// Checks the checksum and cuts the archive into its parts: the first keeps the buffer (a
    /// slot of one part is used where it arrived), the others are copied out.
    pub fn split(self) -> Result<Vec<AlignedVec>, ArchiveError> {
        let slot = self.slot;
        if stable_hash(&self.bytes) != self.checksum {
            return Err(ArchiveError::Checksum {
                slot,
                len: self.bytes.len(),
            });
        }
        if self.parts.is_empty() {
            return Ok(vec![self.bytes]);
        }
        let bad = || ArchiveError::Parts {
            slot,
            len: self.bytes.len(),
            parts: self.parts.clone(),
        };
        let mut ranges = Vec::with_capacity(self.parts.len());
        let mut start = 0usize;
        for &end in &self.parts {
            let end = usize::try_from(end).map_err(|_| bad())?;
            if end < start || end > self.bytes.len() {
                return Err(bad());
            }
            ranges.push(start..end);
            start = end.next_multiple_of(PART_ALIGN);
        }
        let mut rest: Vec<AlignedVec> = ranges[1..]
            .iter()
            .map(|r| {
                let mut part = AlignedVec::with_capacity(r.len());
                part.extend_from_slice(&self.bytes[r.clone()]);
                part
            })
            .collect();
        let mut first = self.bytes;
        first.resize(ranges[0].end, 0);
        rest.insert(0, first);
        Ok(rest)
    }

    /// One part of an archive, a slot's entities, checked and made the slot's storage.
    pub fn read_part<S: State>(slot: u32, bytes: AlignedVec) -> Result<Slot<S>, ArchiveError> {
        Slot::from_archive(bytes).map_err(|source| ArchiveError::Invalid { slot, source })
    }

    /// Checks the archive and makes its buffer the slot's storage, used in place.
    pub fn read<S: State>(self) -> Result<Slot<S>, ArchiveError> {
        let slot = self.slot;
        if stable_hash(&self.bytes) != self.checksum {
            return Err(ArchiveError::Checksum {
                slot,
                len: self.bytes.len(),
            });
        }
        let entities = Slot::from_archive(self.bytes)
            .map_err(|source| ArchiveError::Invalid { slot, source })?;
        if entities.len() != self.entities as usize {
            return Err(ArchiveError::Count {
                slot,
                got: entities.len(),
                want: self.entities,
            });
        }
        Ok(entities)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SlotMemory;

    fn words(n: usize) -> Slot<u64> {
        let keys: Vec<String> = (0..n).map(|i| format!("word{i}")).collect();
        SlotMemory::of(
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.as_bytes(), i as u64 * 3)),
        )
        .into_slot()
    }

    #[test]
    fn round_trip() {
        let mut e = words(1000);
        let a = SlotArchive::write(7, &mut e).unwrap();
        assert_eq!(a.entities, 1000);
        let mut read = a.read::<u64>().unwrap();
        assert!(read.is_received());
        assert_eq!(read.pairs(), e.pairs());
        let empty = SlotArchive::write::<u64>(1, &mut Slot::default()).unwrap();
        assert!(empty.read::<u64>().unwrap().is_empty());
    }

    #[test]
    fn structured_state_round_trips() {
        #[derive(
            Debug,
            Default,
            Clone,
            PartialEq,
            Eq,
            PartialOrd,
            Ord,
            rkyv::Archive,
            rkyv::Serialize,
            rkyv::Deserialize,
        )]
        struct Quote {
            bid: u64,
            reject: bool,
            history: Vec<u32>,
        }
        let quote = Quote {
            bid: 15,
            reject: true,
            history: vec![1, 2],
        };
        let mut e = SlotMemory::of([(&b"IBM "[..], quote.clone())]).into_slot();
        let mut read = SlotArchive::write(0, &mut e)
            .unwrap()
            .read::<Quote>()
            .unwrap();
        assert_eq!(read.pairs(), vec![(b"IBM ".to_vec(), quote)]);
    }

    #[test]
    fn corruption_is_caught_by_the_checksum() {
        let mut a = SlotArchive::write(3, &mut words(10)).unwrap();
        let mid = a.bytes.len() / 2;
        a.bytes[mid] ^= 0x40;
        let err = a.read::<u64>().unwrap_err();
        assert!(
            matches!(err, ArchiveError::Checksum { slot: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("corrupt"));
    }

    #[test]
    fn structurally_invalid_bytes_fail_validation() {
        let mut a = SlotArchive::write(4, &mut words(10)).unwrap();
        let n = a.bytes.len();
        // Point the root's arrays far outside the buffer, and fix the checksum so validation runs.
        for b in &mut a.bytes[n - 16..] {
            *b = 0x7f;
        }
        a.checksum = stable_hash(&a.bytes);
        let err = a.read::<u64>().unwrap_err();
        assert!(
            matches!(err, ArchiveError::Invalid { slot: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn entity_count_must_match() {
        let mut a = SlotArchive::write(5, &mut words(3)).unwrap();
        a.entities = 4;
        assert!(matches!(
            a.read::<u64>(),
            Err(ArchiveError::Count {
                got: 3,
                want: 4,
                ..
            })
        ));
    }
}
