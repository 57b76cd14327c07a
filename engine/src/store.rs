//! Keyed state of one core: entities grouped by slot, so a slot can be taken out whole.

use hashbrown::HashTable;

use crate::archive::Entity;
use crate::hash::{slot_of, stable_hash, table_hash};

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

    /// Takes every entity of `slot` out (to archive it), leaving the slot empty.
    pub fn take_slot(&mut self, slot: u32) -> Vec<Entity<S>> {
        let table = std::mem::take(&mut self.slots[slot as usize]);
        self.len -= table.len();
        table.into_iter().collect()
    }

    /// Puts `entities` (restored from an archive of `slot`) into the slot.
    pub fn install_slot(&mut self, slot: u32, entities: Vec<Entity<S>>) {
        let table = &mut self.slots[slot as usize];
        table.reserve(entities.len(), |e| table_hash(stable_hash(&e.key)));
        for e in entities {
            let th = table_hash(stable_hash(&e.key));
            debug_assert!(
                table.find(th, |x| x.key == e.key).is_none(),
                "a key installed twice"
            );
            table.insert_unique(th, e, |x| table_hash(stable_hash(&x.key)));
            self.len += 1;
        }
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
        b.install_slot(2, taken);
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
}
