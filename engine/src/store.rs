//! Keyed state of one core: entities grouped by slot, so a slot can be taken out whole.
//!
//! A slot keeps its keys back to back in one buffer and a hash table of (key span, state), so
//! taking a slot out, archiving it and installing it elsewhere costs a few bulk copies and one
//! table insert per entity, not an allocation and a free per key.

use hashbrown::HashTable;
use thiserror::Error;

use crate::hash::{slot_of, stable_hash, table_hash};

/// The entities of one slot taken out of a store: what a slot archive holds.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SlotEntities<S> {
    /// Every key's bytes, back to back.
    pub keys: Vec<u8>,
    /// Per entity, where its key is in `keys`: `[start, len]`.
    pub spans: Vec<[u32; 2]>,
    /// Per entity, its state.
    pub states: Vec<S>,
}

impl<S> SlotEntities<S> {
    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// (key, state) of every entity.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &S)> {
        (self.spans.iter().map(|&s| span(&self.keys, s))).zip(&self.states)
    }

    /// Builds the entities from (key, state) pairs.
    #[cfg(test)]
    pub fn from_pairs<'k>(pairs: impl IntoIterator<Item = (&'k [u8], S)>) -> Self {
        let mut e = Self {
            keys: Vec::new(),
            spans: Vec::new(),
            states: Vec::new(),
        };
        for (key, state) in pairs {
            e.spans.push(append_key(&mut e.keys, key));
            e.states.push(state);
        }
        e
    }
}

/// A slot's entities could not be installed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InstallSlotError {
    #[error("slot {slot} already holds entities; a slot is installed only into an empty slot")]
    NotEmpty { slot: u32 },
    #[error("slot {slot}: the key {key:?} appears twice")]
    DuplicateKey { slot: u32, key: String },
    #[error("slot {slot}: the key {key:?} belongs to slot {home}")]
    WrongSlot { slot: u32, home: u32, key: String },
}

struct Entry<S> {
    span: [u32; 2],
    state: S,
}

/// One slot: its keys' bytes and a table of entries pointing into them.
struct Slot<S> {
    keys: Vec<u8>,
    table: HashTable<Entry<S>>,
}

impl<S> Default for Slot<S> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            table: HashTable::new(),
        }
    }
}

fn span(keys: &[u8], [start, len]: [u32; 2]) -> &[u8] {
    &keys[start as usize..start as usize + len as usize]
}

fn append_key(keys: &mut Vec<u8>, key: &[u8]) -> [u32; 2] {
    let start = u32::try_from(keys.len()).expect("a slot holds at most 4 GiB of keys");
    let len = u32::try_from(key.len()).expect("a key is at most 4 GiB");
    keys.extend_from_slice(key);
    [start, len]
}

/// The state entities a core holds, one table per slot.
pub struct SlotStore<S> {
    n_slots: u32,
    slots: Vec<Slot<S>>,
    len: usize,
}

impl<S: Default> SlotStore<S> {
    pub fn new(n_slots: u32) -> Self {
        Self {
            n_slots,
            slots: (0..n_slots).map(|_| Slot::default()).collect(),
            len: 0,
        }
    }

    /// The state of `key` (whose stable hash is `hash`), created with `S::default()` if new.
    pub fn entry(&mut self, hash: u64, key: &[u8]) -> &mut S {
        let Slot { keys, table } = &mut self.slots[slot_of(hash, self.n_slots) as usize];
        let entry = table.entry(
            table_hash(hash),
            |e| span(keys, e.span) == key,
            |e| table_hash(stable_hash(span(keys, e.span))),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(e) => &mut e.into_mut().state,
            hashbrown::hash_table::Entry::Vacant(e) => {
                self.len += 1;
                let span = append_key(keys, key);
                let entry = Entry {
                    span,
                    state: S::default(),
                };
                &mut e.insert(entry).into_mut().state
            }
        }
    }

    /// The state of `key`, if it exists.
    pub fn get(&self, key: &[u8]) -> Option<&S> {
        let hash = stable_hash(key);
        let Slot { keys, table } = &self.slots[slot_of(hash, self.n_slots) as usize];
        table
            .find(table_hash(hash), |e| span(keys, e.span) == key)
            .map(|e| &e.state)
    }

    /// Entities held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entities held in `slot`.
    pub fn slot_len(&self, slot: u32) -> usize {
        self.slots[slot as usize].table.len()
    }

    /// Takes every entity of `slot` out (to archive it), leaving the slot empty. The keys' buffer
    /// moves as it is; spans and states are gathered from the table.
    pub fn take_slot(&mut self, slot: u32) -> SlotEntities<S> {
        let Slot { keys, table } = std::mem::take(&mut self.slots[slot as usize]);
        self.len -= table.len();
        let mut spans = Vec::with_capacity(table.len());
        let mut states = Vec::with_capacity(table.len());
        for e in table {
            spans.push(e.span);
            states.push(e.state);
        }
        SlotEntities {
            keys,
            spans,
            states,
        }
    }

    /// Puts `entities` (restored from an archive of `slot`) into the empty slot; their keys'
    /// buffer becomes the slot's. `spans` must lie within `keys` (`archive` checks that).
    pub fn install_slot(
        &mut self,
        slot: u32,
        entities: SlotEntities<S>,
    ) -> Result<(), InstallSlotError> {
        let target = &self.slots[slot as usize];
        if !target.table.is_empty() || !target.keys.is_empty() {
            return Err(InstallSlotError::NotEmpty { slot });
        }
        let SlotEntities {
            keys,
            spans,
            states,
        } = entities;
        let mut table = HashTable::with_capacity(spans.len());
        let hasher = |e: &Entry<S>| table_hash(stable_hash(span(&keys, e.span)));
        for (span_, state) in spans.into_iter().zip(states) {
            let key = span(&keys, span_);
            let hash = stable_hash(key);
            let home = slot_of(hash, self.n_slots);
            if home != slot {
                let key = String::from_utf8_lossy(key).into_owned();
                return Err(InstallSlotError::WrongSlot { slot, home, key });
            }
            match table.entry(
                table_hash(hash),
                |e: &Entry<S>| span(&keys, e.span) == key,
                hasher,
            ) {
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(Entry { span: span_, state });
                }
                hashbrown::hash_table::Entry::Occupied(_) => {
                    return Err(InstallSlotError::DuplicateKey {
                        slot,
                        key: String::from_utf8_lossy(key).into_owned(),
                    })
                }
            }
        }
        self.len += table.len();
        self.slots[slot as usize] = Slot { keys, table };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_start_at_default_and_persist() {
        let mut store = SlotStore::<u64>::new(16);
        for word in ["a", "b", "a", "c", "a"] {
            *store.entry(stable_hash(word.as_bytes()), word.as_bytes()) += 1;
        }
        assert_eq!(store.get(b"a"), Some(&3));
        assert_eq!(store.get(b"b"), Some(&1));
        assert_eq!(store.get(b"zzz"), None);
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn a_slot_taken_out_and_installed_elsewhere_keeps_every_entity() {
        let mut a = SlotStore::<u64>::new(4);
        for i in 0..1000u64 {
            let k = format!("k{i}");
            *a.entry(stable_hash(k.as_bytes()), k.as_bytes()) = i;
        }
        let in_slot_2 = a.slot_len(2);
        let taken = a.take_slot(2);
        assert_eq!(taken.len(), in_slot_2);
        assert_eq!(a.len(), 1000 - in_slot_2);
        assert_eq!(a.slot_len(2), 0);
        let mut b = SlotStore::<u64>::new(4);
        b.install_slot(2, taken).unwrap();
        assert_eq!(b.len(), in_slot_2);
        for i in 0..1000u64 {
            let k = format!("k{i}");
            let home = slot_of(stable_hash(k.as_bytes()), 4);
            let (here, there) = if home == 2 { (&b, &a) } else { (&a, &b) };
            assert_eq!(here.get(k.as_bytes()), Some(&i));
            assert_eq!(there.get(k.as_bytes()), None);
        }
    }

    #[test]
    fn entities_live_in_their_slot_and_survive_growth() {
        let mut store = SlotStore::<u32>::new(8);
        let keys: Vec<String> = (0..10_000).map(|i| format!("key{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            *store.entry(stable_hash(k.as_bytes()), k.as_bytes()) = i as u32;
        }
        assert_eq!(store.len(), 10_000);
        assert_eq!((0..8).map(|s| store.slot_len(s)).sum::<usize>(), 10_000);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(store.get(k.as_bytes()), Some(&(i as u32)));
        }
    }

    #[test]
    fn a_slot_installs_only_into_an_empty_slot_and_without_duplicate_keys() {
        let mut store = SlotStore::<u64>::new(1);
        *store.entry(stable_hash(b"a"), b"a") = 1;
        let one = SlotEntities::from_pairs([(&b"b"[..], 2)]);
        assert_eq!(
            store.install_slot(0, one),
            Err(InstallSlotError::NotEmpty { slot: 0 })
        );
        let taken = store.take_slot(0);
        assert_eq!(taken.iter().collect::<Vec<_>>(), vec![(&b"a"[..], &1)]);
        let twice = SlotEntities::from_pairs([(&b"x"[..], 1), (&b"y"[..], 2), (&b"x"[..], 3)]);
        let err = store.install_slot(0, twice).unwrap_err();
        assert_eq!(err.to_string(), "slot 0: the key \"x\" appears twice");
        assert!(store.is_empty());
        store.install_slot(0, taken).unwrap();
        assert_eq!(store.get(b"a"), Some(&1));
    }

    #[test]
    fn new_keys_after_an_install_append_to_the_installed_keys() {
        let mut store = SlotStore::<u64>::new(1);
        store
            .install_slot(
                0,
                SlotEntities::from_pairs([(&b"one"[..], 1), (&b"two"[..], 2)]),
            )
            .unwrap();
        *store.entry(stable_hash(b"three"), b"three") += 3;
        *store.entry(stable_hash(b"one"), b"one") += 10;
        assert_eq!(store.len(), 3);
        let mut pairs: Vec<_> = store
            .take_slot(0)
            .iter()
            .map(|(k, s)| (String::from_utf8(k.to_vec()).unwrap(), *s))
            .collect();
        pairs.sort();
        assert_eq!(
            pairs,
            [("one".into(), 11), ("three".into(), 3), ("two".into(), 2)]
        );
    }

    #[test]
    fn keys_of_another_slot_are_refused() {
        let mut store = SlotStore::<u64>::new(2);
        let (mine, theirs): (Vec<_>, Vec<_>) = (0..100)
            .map(|i| format!("k{i}"))
            .partition(|k| slot_of(stable_hash(k.as_bytes()), 2) == 0);
        let stray = SlotEntities::from_pairs([(mine[0].as_bytes(), 1), (theirs[0].as_bytes(), 2)]);
        let err = store.install_slot(0, stray).unwrap_err();
        assert!(
            matches!(
                err,
                InstallSlotError::WrongSlot {
                    slot: 0,
                    home: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("belongs to slot 1"), "{err}");
        assert!(store.is_empty());
    }
}
