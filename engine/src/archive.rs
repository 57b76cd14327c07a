//! Slot archives: every entity of one slot in one aligned rkyv buffer, the form in which state
//! moves between cores (in memory), between nodes and, later, to disk.
//!
//! The buffer is the slot's `SlotEntities`: its keys' bytes back to back, a span per entity and a
//! state per entity (three flat arrays, not an archived hash map, and not a record per key: plain
//! states and the keys are written and read as bulk copies). A receiver checks the checksum,
//! then validates the archive with bytecheck and every span before it touches it; a bad archive
//! is an error value, never a panic.

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;
use thiserror::Error;

use crate::hash::stable_hash;
use crate::step::State;
use crate::store::{ArchivedSlotEntities, SlotEntities};

/// The archived entities of one slot, with what a receiver needs to trust them. It crosses a
/// link as itself (its bytes are read straight into an aligned buffer there too).
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SlotArchive {
    pub slot: u32,
    pub entities: u32,
    /// XXH3-64 of `bytes`.
    pub checksum: u64,
    #[rkyv(with = rkyv::with::AsVec)]
    pub bytes: AlignedVec,
}

impl PartialEq for SlotArchive {
    fn eq(&self, other: &Self) -> bool {
        (self.slot, self.entities, self.checksum) == (other.slot, other.entities, other.checksum)
            && self.bytes.as_slice() == other.bytes.as_slice()
    }
}

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("slot {slot}: archive checksum mismatch ({len} bytes): corrupt in transit")]
    Checksum { slot: u32, len: usize },
    #[error("slot {slot}: archive failed validation: {reason}")]
    Invalid { slot: u32, reason: String },
    #[error("slot {slot}: archive holds {got} entities, its header says {want}")]
    Count { slot: u32, got: usize, want: u32 },
    #[error("slot {slot}: cannot archive state: {reason}")]
    Serialize { slot: u32, reason: String },
}

impl SlotArchive {
    /// Archives `entities` of `slot`.
    pub fn write<S: State>(slot: u32, entities: &SlotEntities<S>) -> Result<Self, ArchiveError> {
        // Room for the three arrays up front: growing the buffer would copy it again.
        let estimate = entities.keys.len()
            + entities.spans.len() * 8
            + entities.states.len() * std::mem::size_of::<S::Archived>()
            + 64;
        let bytes = rkyv::api::high::to_bytes_in::<_, BoxedError>(
            entities,
            AlignedVec::<16>::with_capacity(estimate),
        )
        .map_err(|e| ArchiveError::Serialize {
            slot,
            reason: e.to_string(),
        })?;
        Ok(Self {
            slot,
            entities: entities.len() as u32,
            checksum: stable_hash(&bytes),
            bytes,
        })
    }

    /// Checks and reads the entities back.
    pub fn read<S: State>(&self) -> Result<SlotEntities<S>, ArchiveError> {
        let slot = self.slot;
        if stable_hash(&self.bytes) != self.checksum {
            return Err(ArchiveError::Checksum {
                slot,
                len: self.bytes.len(),
            });
        }
        let invalid = |reason: String| ArchiveError::Invalid { slot, reason };
        let archived = rkyv::access::<ArchivedSlotEntities<S>, BoxedError>(&self.bytes)
            .map_err(|e| invalid(e.to_string()))?;
        let n = archived.states.len();
        if archived.spans.len() != n {
            return Err(invalid(format!(
                "{} key spans for {n} states",
                archived.spans.len()
            )));
        }
        if n != self.entities as usize {
            return Err(ArchiveError::Count {
                slot,
                got: n,
                want: self.entities,
            });
        }
        let keys_len = archived.keys.len() as u64;
        if let Some(bad) = archived.spans.iter().find(|[start, len]| {
            u64::from(start.to_native()) + u64::from(len.to_native()) > keys_len
        }) {
            return Err(invalid(format!(
                "key span [{}, {}] outside the {keys_len} bytes of keys",
                bad[0], bad[1]
            )));
        }
        rkyv::deserialize::<SlotEntities<S>, BoxedError>(archived)
            .map_err(|e| invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize) -> SlotEntities<u64> {
        let keys: Vec<String> = (0..n).map(|i| format!("word{i}")).collect();
        SlotEntities::from_pairs(
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.as_bytes(), i as u64 * 3)),
        )
    }

    #[test]
    fn round_trip() {
        let e = words(1000);
        let a = SlotArchive::write(7, &e).unwrap();
        assert_eq!(a.entities, 1000);
        assert_eq!(a.read::<u64>().unwrap(), e);
        let empty = SlotArchive::write::<u64>(1, &SlotEntities::default()).unwrap();
        assert!(empty.read::<u64>().unwrap().is_empty());
    }

    #[test]
    fn structured_state_round_trips() {
        #[derive(
            Debug, Default, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        struct Quote {
            bid: f64,
            offer: f64,
            reject: bool,
            history: Vec<u32>,
        }
        let e = SlotEntities::from_pairs([(
            &b"IBM "[..],
            Quote {
                bid: 1.5,
                offer: 1.6,
                reject: true,
                history: vec![1, 2],
            },
        )]);
        assert_eq!(
            SlotArchive::write(0, &e).unwrap().read::<Quote>().unwrap(),
            e
        );
    }

    #[test]
    fn corruption_is_caught_by_the_checksum() {
        let mut a = SlotArchive::write(3, &words(10)).unwrap();
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
        let mut a = SlotArchive::write(4, &words(10)).unwrap();
        let n = a.bytes.len();
        // Point the root vector far outside the buffer, and fix the checksum so validation runs.
        for b in &mut a.bytes[n - 8..] {
            *b = 0x7f;
        }
        a.checksum = stable_hash(&a.bytes);
        let err = a.read::<u64>().unwrap_err();
        assert!(
            matches!(err, ArchiveError::Invalid { slot: 4, .. }),
            "{err}"
        );
        assert!(!err.to_string().is_empty());
    }

    #[test]
    fn entity_count_must_match() {
        let mut a = SlotArchive::write(5, &words(3)).unwrap();
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

    #[test]
    fn a_key_span_outside_the_keys_is_rejected() {
        let mut e = words(3);
        e.spans[1] = [u32::MAX, 2];
        let err = SlotArchive::write(6, &e)
            .unwrap()
            .read::<u64>()
            .unwrap_err();
        assert!(
            matches!(err, ArchiveError::Invalid { slot: 6, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("outside"), "{err}");
        let mut e = words(3);
        e.states.pop();
        let err = SlotArchive::write(6, &e)
            .unwrap()
            .read::<u64>()
            .unwrap_err();
        assert!(
            err.to_string().contains("3 key spans for 2 states"),
            "{err}"
        );
    }
}
