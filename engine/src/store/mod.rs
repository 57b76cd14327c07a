//! Keyed state of one core: entities grouped by slot, so a slot can move whole.
//!
//! A slot keeps its entities in flat arrays (every key's bytes back to back, a key span and a
//! state per entity) plus an open-addressing index over them ([`slot`]). Moving a slot never
//! copies it into a fresh heap or rebuilds its index: inside a node the [`Slot`] value itself
//! changes owner, and across nodes its archive (the same arrays, index included) becomes the
//! receiving slot's storage, used in place ([`received`]).

mod received;
mod slot;

use thiserror::Error;

use crate::hash::slot_of;
use crate::step::State;

pub use received::{used_in_place, Malformed};
use slot::tag_of;
pub use slot::{ArchivedSlotMemory, Slot, SlotMemory};

/// A slot could not be put into a store: it already holds entities there. The slot comes back.
#[derive(Debug, Error)]
#[error("slot {slot} already holds entities; a slot is put only into an empty slot")]
pub struct Occupied<S: State> {
    pub slot: u32,
    pub returned: Slot<S>,
}

/// The state entities a core holds, one table per slot.
pub struct SlotStore<S: State> {
    n_slots: u32,
    slots: Vec<Slot<S>>,
    len: usize,
}

impl<S: State> SlotStore<S> {
    pub fn new(n_slots: u32) -> Self {
        Self {
            n_slots,
            slots: (0..n_slots).map(|_| Slot::default()).collect(),
            len: 0,
        }
    }

    /// The state of `key` (whose stable hash is `hash`), created with `S::default()` if new.
    pub fn entry(&mut self, hash: u64, key: &[u8]) -> &mut S {
        let slot = &mut self.slots[slot_of(hash, self.n_slots) as usize];
        let (state, created) = slot.entry(tag_of(hash), key);
        self.len += usize::from(created);
        state
    }

    /// The state of `key`, if it exists (converting it out of a received archive if need be).
    pub fn get(&mut self, key: &[u8]) -> Option<&S> {
        let hash = crate::hash::stable_hash(key);
        self.slots[slot_of(hash, self.n_slots) as usize].get(tag_of(hash), key)
    }

    /// Entities held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of every slot's arrays (as moves carry them).
    pub fn byte_len(&self) -> usize {
        self.slots.iter().map(Slot::byte_len).sum()
    }

    /// Entities held in `slot`.
    pub fn slot_len(&self, slot: u32) -> usize {
        self.slots[slot as usize].len()
    }

    /// The entities of `slot`, in place (to archive them for a checkpoint).
    pub fn slot_mut(&mut self, slot: u32) -> &mut Slot<S> {
        &mut self.slots[slot as usize]
    }

    /// Takes every entity of `slot` out, leaving it empty: the slot's memory moves out as it is.
    pub fn take(&mut self, slot: u32) -> Slot<S> {
        let taken = std::mem::take(&mut self.slots[slot as usize]);
        self.len -= taken.len();
        taken
    }

    /// Puts `entities` (taken out of another store, or read from an archive) into `slot`, as
    /// they are. The slot must be empty here; if not, `entities` come back in the error.
    pub fn put(&mut self, slot: u32, entities: Slot<S>) -> Result<(), Occupied<S>> {
        if !self.slots[slot as usize].is_empty() {
            return Err(Occupied {
                slot,
                returned: entities,
            });
        }
        self.len += entities.len();
        self.slots[slot as usize] = entities;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::stable_hash;

    fn count(store: &mut SlotStore<u64>, key: &str, by: u64) {
        *store.entry(stable_hash(key.as_bytes()), key.as_bytes()) += by;
    }

    /// A slot's round trip through its archive bytes (without the checksum `archive` adds).
    fn through_archive<S: State>(mut slot: Slot<S>) -> Slot<S> {
        let bytes = slot.write_archive(Default::default()).unwrap();
        Slot::from_archive(bytes).unwrap()
    }

    #[test]
    fn entries_start_at_default_and_persist() {
        let mut store = SlotStore::<u64>::new(16);
        for word in ["a", "b", "a", "c", "a"] {
            count(&mut store, word, 1);
        }
        assert_eq!(store.get(b"a"), Some(&3));
        assert_eq!(store.get(b"b"), Some(&1));
        assert_eq!(store.get(b"zzz"), None);
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn entities_live_in_their_slot_and_survive_growth() {
        let mut store = SlotStore::<u64>::new(8);
        for i in 0..10_000 {
            count(&mut store, &format!("key{i}"), i);
        }
        assert_eq!(store.len(), 10_000);
        assert_eq!((0..8).map(|s| store.slot_len(s)).sum::<usize>(), 10_000);
        for i in 0..10_000 {
            assert_eq!(store.get(format!("key{i}").as_bytes()), Some(&i));
        }
    }

    /// Moves slot 2 of a store of 1000 keys to another store with `carry`, then checks that
    /// every key is found in exactly the store that holds its slot.
    fn moved_slot_keeps_every_entity(carry: fn(Slot<u64>) -> Slot<u64>) {
        let mut a = SlotStore::<u64>::new(4);
        for i in 0..1000 {
            count(&mut a, &format!("k{i}"), i);
        }
        let in_slot_2 = a.slot_len(2);
        let taken = a.take(2);
        assert_eq!(
            (taken.len(), a.len(), a.slot_len(2)),
            (in_slot_2, 1000 - in_slot_2, 0)
        );
        let mut b = SlotStore::<u64>::new(4);
        b.put(2, carry(taken)).unwrap();
        assert_eq!(b.len(), in_slot_2);
        for i in 0..1000u64 {
            let k = format!("k{i}");
            let home = slot_of(stable_hash(k.as_bytes()), 4);
            let (here, there) = if home == 2 {
                (&mut b, &mut a)
            } else {
                (&mut a, &mut b)
            };
            assert_eq!(here.get(k.as_bytes()), Some(&i));
            assert_eq!(there.get(k.as_bytes()), None);
        }
    }

    #[test]
    fn a_slot_moved_by_ownership_keeps_every_entity_where_they_were() {
        moved_slot_keeps_every_entity(|slot| slot);
        let mut a = SlotStore::<u64>::new(1);
        count(&mut a, "k", 1);
        let at = a.slots[0].storage();
        let mut b = SlotStore::<u64>::new(1);
        b.put(0, a.take(0)).unwrap();
        assert_eq!(b.slots[0].storage(), at, "moved, not copied");
    }

    #[test]
    fn a_slot_moved_as_an_archive_keeps_every_entity() {
        moved_slot_keeps_every_entity(|slot| {
            let received = through_archive(slot);
            assert!(received.is_received());
            received
        });
    }

    #[test]
    fn numbers_are_used_in_place_and_strings_are_not() {
        assert!(used_in_place::<u64>() && used_in_place::<[u32; 3]>());
        assert!(!used_in_place::<String>() && !used_in_place::<Vec<u64>>());
    }

    #[test]
    fn plain_states_are_updated_inside_the_received_buffer() {
        let mut store = SlotStore::<u64>::new(1);
        for (k, n) in [("one", 1), ("two", 2)] {
            count(&mut store, k, n);
        }
        let received = through_archive(store.take(0));
        let bytes = received.byte_len();
        store.put(0, received).unwrap();
        count(&mut store, "one", 10);
        // Still the received buffer: an update of a plain state converts nothing.
        assert!(store.slots[0].is_received());
        assert_eq!(store.slots[0].converted(), 0);
        assert_eq!(store.slots[0].byte_len(), bytes);
        // The archive of it again is the buffer, with the update in it.
        let pairs = through_archive(store.take(0)).pairs();
        assert_eq!(pairs, [(b"one".to_vec(), 11), (b"two".to_vec(), 2)]);
    }

    #[test]
    fn a_new_key_in_a_received_slot_makes_it_native_and_keeps_the_rest() {
        let mut store = SlotStore::<u64>::new(1);
        for (k, n) in [("one", 1), ("two", 2)] {
            count(&mut store, k, n);
        }
        let received = through_archive(store.take(0));
        store.put(0, received).unwrap();
        count(&mut store, "three", 3);
        count(&mut store, "one", 10);
        assert!(!store.slots[0].is_received());
        assert_eq!(store.len(), 3);
        let want = [("one", 11), ("three", 3), ("two", 2)];
        assert_eq!(
            store.take(0).pairs(),
            want.map(|(k, n)| (k.as_bytes().to_vec(), n))
        );
    }

    #[test]
    fn structured_states_are_converted_on_first_use_and_archived_with_their_updates() {
        let mut store = SlotStore::<String>::new(1);
        for k in ["a", "b", "c"] {
            store
                .entry(stable_hash(k.as_bytes()), k.as_bytes())
                .push_str(k);
        }
        let received = through_archive(store.take(0));
        store.put(0, received).unwrap();
        store.entry(stable_hash(b"b"), b"b").push('!');
        assert_eq!(store.get(b"a").map(String::as_str), Some("a"));
        assert_eq!(store.get(b"b").map(String::as_str), Some("b!"));
        assert!(store.slots[0].is_received());
        assert_eq!(
            store.slots[0].converted(),
            2,
            "converted per entity, not per slot"
        );
        let want = [("a", "a"), ("b", "b!"), ("c", "c")];
        assert_eq!(
            through_archive(store.take(0)).pairs(),
            want.map(|(k, s)| (k.as_bytes().to_vec(), s.to_string()))
        );
    }

    #[test]
    fn a_slot_is_put_only_into_an_empty_slot_and_comes_back_if_not() {
        let mut store = SlotStore::<u64>::new(1);
        count(&mut store, "a", 1);
        let one = SlotMemory::of([(&b"b"[..], 2)]).into_slot();
        let err = store.put(0, one).unwrap_err();
        assert_eq!(err.slot, 0);
        assert_eq!(err.returned.len(), 1);
        assert!(err.to_string().contains("already holds entities"), "{err}");
        assert_eq!(store.len(), 1);
    }

    /// The archive of hand-made arrays, read back: what a lying peer could send.
    fn read_raw(keys: &[u8], spans: Vec<[u32; 2]>, states: Vec<u64>, index: Vec<u64>) -> String {
        let mut slot = SlotMemory::raw(keys.to_vec(), spans, states, index).into_slot();
        match Slot::<u64>::from_archive(slot.write_archive(Default::default()).unwrap()) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn malformed_archives_are_refused_not_panicked_on() {
        let good = SlotMemory::<u64>::of([(&b"a"[..], 1), (&b"b"[..], 2)]);
        let (spans, index) = (good.spans.clone(), good.index.clone());
        assert_eq!(
            read_raw(b"ab", spans.clone(), vec![1, 2], index.clone()),
            "accepted"
        );
        let cases = [
            (
                read_raw(b"ab", vec![[0, 1], [1, 7]], vec![1, 2], index.clone()),
                "outside the 2 bytes",
            ),
            (
                read_raw(b"ab", spans.clone(), vec![1], index.clone()),
                "2 key spans for 1 states",
            ),
            (
                read_raw(b"ab", spans.clone(), vec![1, 2], vec![0; 2]),
                "an index of 2 buckets",
            ),
            (
                read_raw(b"ab", spans.clone(), vec![1, 2], vec![0; 12]),
                "an index of 12 buckets",
            ),
            (
                read_raw(b"ab", spans.clone(), vec![1, 2], vec![0; 8]),
                "0 index buckets for 2",
            ),
            (
                read_raw(
                    b"ab",
                    spans.clone(),
                    vec![1, 2],
                    vec![1, 7 << 32, 2, 0, 0, 0, 0, 0],
                ),
                "names entity 0",
            ),
            (
                read_raw(
                    b"ab",
                    spans.clone(),
                    vec![1, 2],
                    vec![3, 1, 2, 0, 0, 0, 0, 0],
                ),
                "names entity 3",
            ),
        ];
        for (got, want) in cases {
            assert!(got.contains(want), "{got:?} should say {want:?}");
        }
        let mut garbage = rkyv::util::AlignedVec::<16>::new();
        garbage.extend_from_slice(&[0x7f; 40]);
        let err = Slot::<u64>::from_archive(garbage).unwrap_err();
        assert!(err.to_string().contains("failed validation"), "{err}");
    }

    #[test]
    fn a_lying_archive_hides_keys_but_lookups_still_end() {
        // Every bucket's tag is wrong: no key is found, and each lookup ends at a free bucket.
        let mut m = SlotMemory::<u64>::of([(&b"a"[..], 1), (&b"b"[..], 2)]);
        for b in m.index.iter_mut().filter(|b| **b != 0) {
            *b ^= 0xffff << 32;
        }
        let mut slot =
            Slot::<u64>::from_archive(m.into_slot().write_archive(Default::default()).unwrap())
                .unwrap();
        assert_eq!(slot.get(tag_of(stable_hash(b"a")), b"a"), None);
    }

    proptest::proptest! {
        /// The store against a map: updates, lookups, and slots moved to the other store and
        /// back, by ownership or through an archive, with keys of many lengths.
        #[test]
        fn behaves_like_a_map_across_moves(
            ops in proptest::collection::vec((0u16..400, 0u8..5), 1..600),
        ) {
            let n_slots = 8;
            let mut model = std::collections::HashMap::<Vec<u8>, u64>::new();
            let (mut a, mut b) = (SlotStore::<u64>::new(n_slots), SlotStore::<u64>::new(n_slots));
            let mut in_b = [false; 8];
            for (k, op) in ops {
                let key = format!("{k:0w$}", w = usize::from(k % 7) + 1).into_bytes();
                let slot = slot_of(stable_hash(&key), n_slots);
                let store = if in_b[slot as usize] { &mut b } else { &mut a };
                match op {
                    0 | 1 => {
                        *store.entry(stable_hash(&key), &key) += u64::from(k) + 1;
                        *model.entry(key).or_default() += u64::from(k) + 1;
                    }
                    2 => proptest::prop_assert_eq!(store.get(&key), model.get(&key)),
                    _ => {
                        let (from, to) = if in_b[slot as usize] { (&mut b, &mut a) } else { (&mut a, &mut b) };
                        let taken = from.take(slot);
                        let carried = if op == 3 { taken } else { through_archive(taken) };
                        to.put(slot, carried).unwrap();
                        in_b[slot as usize] = !in_b[slot as usize];
                    }
                }
            }
            proptest::prop_assert_eq!(a.len() + b.len(), model.len());
            for (key, v) in &model {
                let slot = slot_of(stable_hash(key), n_slots) as usize;
                let store = if in_b[slot] { &mut b } else { &mut a };
                proptest::prop_assert_eq!(store.get(key), Some(v));
            }
        }

        /// The same with a state that is converted on use, not used in place.
        #[test]
        fn structured_states_behave_like_a_map_across_archives(
            ops in proptest::collection::vec((0u16..200, 0u8..4), 1..400),
        ) {
            let n_slots = 4;
            let mut model = std::collections::HashMap::<Vec<u8>, Vec<u16>>::new();
            let mut store = SlotStore::<Vec<u16>>::new(n_slots);
            for (k, op) in ops {
                let key = format!("k{k}").into_bytes();
                match op {
                    0 | 1 => {
                        store.entry(stable_hash(&key), &key).push(k);
                        model.entry(key).or_default().push(k);
                    }
                    2 => proptest::prop_assert_eq!(store.get(&key), model.get(&key)),
                    _ => {
                        let slot = slot_of(stable_hash(&key), n_slots);
                        let taken = store.take(slot);
                        store.put(slot, through_archive(taken)).unwrap();
                    }
                }
            }
            proptest::prop_assert_eq!(store.len(), model.len());
            for (key, v) in &model {
                proptest::prop_assert_eq!(store.get(key), Some(v));
            }
        }
    }
}
