//! Slot archives: every entity of one slot in one aligned rkyv buffer, the form in which state
//! moves between cores (in memory), between nodes and, later, to disk.
//!
//! The buffer is a flat sequence of (key, state) pairs, not an archived hash map (cheaper to
//! write and read). A receiver checks the checksum, then validates the archive with bytecheck
//! before it touches it; a bad archive is an error value, never a panic.

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;
use thiserror::Error;

use crate::app::State;
use crate::hash::stable_hash;

/// One state entity: its key and its state.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Entity<S> {
    pub key: Box<[u8]>,
    pub state: S,
}

/// The archived entities of one slot, with what a receiver needs to trust them.
#[derive(Debug, Clone)]
pub struct SlotArchive {
    pub slot: u32,
    pub entities: u32,
    /// XXH3-64 of `bytes`.
    pub checksum: u64,
    pub bytes: AlignedVec,
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
    pub fn write<S: State>(slot: u32, entities: &Vec<Entity<S>>) -> Result<Self, ArchiveError> {
        let bytes =
            rkyv::to_bytes::<BoxedError>(entities).map_err(|e| ArchiveError::Serialize {
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
    pub fn read<S: State>(&self) -> Result<Vec<Entity<S>>, ArchiveError> {
        let slot = self.slot;
        if stable_hash(&self.bytes) != self.checksum {
            return Err(ArchiveError::Checksum {
                slot,
                len: self.bytes.len(),
            });
        }
        let archived = rkyv::access::<rkyv::Archived<Vec<Entity<S>>>, BoxedError>(&self.bytes)
            .map_err(|e| ArchiveError::Invalid {
                slot,
                reason: e.to_string(),
            })?;
        if archived.len() != self.entities as usize {
            return Err(ArchiveError::Count {
                slot,
                got: archived.len(),
                want: self.entities,
            });
        }
        rkyv::deserialize::<Vec<Entity<S>>, BoxedError>(archived).map_err(|e| {
            ArchiveError::Invalid {
                slot,
                reason: e.to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize) -> Vec<Entity<u64>> {
        (0..n)
            .map(|i| Entity {
                key: format!("word{i}").into_bytes().into(),
                state: i as u64 * 3,
            })
            .collect()
    }

    #[test]
    fn round_trip() {
        let e = words(1000);
        let a = SlotArchive::write(7, &e).unwrap();
        assert_eq!(a.entities, 1000);
        assert_eq!(a.read::<u64>().unwrap(), e);
        let empty = SlotArchive::write::<u64>(1, &Vec::new()).unwrap();
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
        let e = vec![Entity {
            key: b"IBM ".to_vec().into(),
            state: Quote {
                bid: 1.5,
                offer: 1.6,
                reject: true,
                history: vec![1, 2],
            },
        }];
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
}
