//! Keyed state of one core: entities grouped by slot, so a slot can be taken out whole.

use hashbrown::HashTable;

use crate::hash::{slot_of, stable_hash, table_hash};

struct Entity<S> {
    key: Box<[u8]>,
    state: S,
}

/// The state entities a core holds, one hash table per slot.
pub struct SlotStore<S> {
    n_slots: u32,
    slots: Vec<HashTable<Entity<S>>>,
    len: usize,
}

impl<S: Default> SlotStore<S> {
    pub fn new(n_slots: u32) -> Self {
        Self {
            n_slots,
            slots: (0..n_slots).map(|_| HashTable::new()).collect(),
            len: 0,
        }
    }

    /// The state of `key` (whose stable hash is `hash`), created with `S::default()` if new.
    pub fn entry(&mut self, hash: u64, key: &[u8]) -> &mut S {
        let table = &mut self.slots[slot_of(hash, self.n_slots) as usize];
        let th = table_hash(hash);
        let entry = table.entry(th, |e| *e.key == *key, |e| table_hash(stable_hash(&e.key)));
        let entity = entry.or_insert_with(|| {
            self.len += 1;
            Entity {
                key: key.into(),
                state: S::default(),
            }
        });
        &mut entity.into_mut().state
    }

    /// The state of `key`, if it exists.
    pub fn get(&self, key: &[u8]) -> Option<&S> {
        let hash = stable_hash(key);
        let table = &self.slots[slot_of(hash, self.n_slots) as usize];
        table
            .find(table_hash(hash), |e| *e.key == *key)
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
        self.slots[slot as usize].len()
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
}
