//! Keyed state of one core: entities grouped by slot, so a slot can be taken out whole.
//!
//! A slot keeps its entities in three flat arrays (every key's bytes back to back, a key span
//! and a state per entity) plus an open-addressing index over them. The arrays are exactly what
//! a slot archive holds, so taking a slot out moves three vectors and installing one copies
//! them in and builds the index: no per-entity allocation, and no table walk to gather entries.

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
    pub fn from_pairs<'k>(pairs: impl IntoIterator<Item = (&'k [u8], S)>) -> Self
    where
        S: Default,
    {
        let mut e = Self::default();
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
    #[error("slot {slot}: {reason}")]
    Malformed { slot: u32, reason: String },
}

/// An index bucket: 0 when free, else `tag << 32 | (entity + 1)`. The tag (the high half of the
/// key's table hash) also places the bucket, so most probes never touch a key, and the index
/// grows without hashing a key again.
type Bucket = u64;

fn bucket(tag: u32, entity: usize) -> Bucket {
    u64::from(tag) << 32 | (entity as u64 + 1)
}

fn tag_of(hash: u64) -> u32 {
    (table_hash(hash) >> 32) as u32
}

/// One slot: its entities' arrays and an index over them.
#[derive(Default)]
struct Slot<S> {
    entities: SlotEntities<S>,
    /// A power of two of buckets (or none), at most 3/4 used.
    index: Vec<Bucket>,
}

/// Where a probe for a key ended.
enum Probe {
    Found(usize),
    /// The free bucket where the key would go.
    Free(usize),
}

impl<S> Slot<S> {
    fn len(&self) -> usize {
        self.entities.states.len()
    }

    fn probe(&self, tag: u32, key: &[u8]) -> Probe {
        let mask = self.index.len() - 1;
        let mut at = tag as usize & mask;
        loop {
            let b = self.index[at];
            if b == 0 {
                return Probe::Free(at);
            }
            if (b >> 32) as u32 == tag {
                let e = (b as u32 - 1) as usize;
                if span(&self.entities.keys, self.entities.spans[e]) == key {
                    return Probe::Found(e);
                }
            }
            at = (at + 1) & mask;
        }
    }

    /// Makes room for one more entity: doubles the index when it would be over 3/4 full,
    /// placing every bucket again by its tag.
    fn reserve_one(&mut self) {
        if (self.len() + 1) * 4 <= self.index.len() * 3 {
            return;
        }
        let buckets = (self.index.len() * 2).max(8);
        let old = std::mem::replace(&mut self.index, vec![0; buckets]);
        let mask = self.index.len() - 1;
        for b in old.into_iter().filter(|&b| b != 0) {
            let mut at = (b >> 32) as usize & mask;
            while self.index[at] != 0 {
                at = (at + 1) & mask;
            }
            self.index[at] = b;
        }
    }

    /// Builds the index of `entities` (checked: every key in `slot`, no key twice).
    fn indexed(
        slot: u32,
        n_slots: u32,
        entities: SlotEntities<S>,
    ) -> Result<Self, InstallSlotError> {
        let n = entities.len();
        let buckets = ((n * 4).div_ceil(3)).next_power_of_two().max(8);
        let mut s = Slot {
            entities,
            index: vec![0; if n == 0 { 0 } else { buckets }],
        };
        for e in 0..n {
            let [start, len] = s.entities.spans[e];
            let Some(key) = (s.entities.keys).get(start as usize..start as usize + len as usize)
            else {
                let reason = format!("key span [{start}, {len}] outside the keys");
                return Err(InstallSlotError::Malformed { slot, reason });
            };
            let hash = stable_hash(key);
            let home = slot_of(hash, n_slots);
            if home != slot {
                let key = String::from_utf8_lossy(key).into_owned();
                return Err(InstallSlotError::WrongSlot { slot, home, key });
            }
            let tag = tag_of(hash);
            match s.probe(tag, key) {
                Probe::Free(at) => s.index[at] = bucket(tag, e),
                Probe::Found(_) => {
                    let key = String::from_utf8_lossy(key).into_owned();
                    return Err(InstallSlotError::DuplicateKey { slot, key });
                }
            }
        }
        Ok(s)
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
        let slot = &mut self.slots[slot_of(hash, self.n_slots) as usize];
        slot.reserve_one();
        let tag = tag_of(hash);
        let e = match slot.probe(tag, key) {
            Probe::Found(e) => e,
            Probe::Free(at) => {
                let e = slot.len();
                let entities = &mut slot.entities;
                entities.spans.push(append_key(&mut entities.keys, key));
                entities.states.push(S::default());
                slot.index[at] = bucket(tag, e);
                self.len += 1;
                e
            }
        };
        &mut slot.entities.states[e]
    }

    /// The state of `key`, if it exists.
    pub fn get(&self, key: &[u8]) -> Option<&S> {
        let hash = stable_hash(key);
        let slot = &self.slots[slot_of(hash, self.n_slots) as usize];
        if slot.index.is_empty() {
            return None;
        }
        match slot.probe(tag_of(hash), key) {
            Probe::Found(e) => Some(&slot.entities.states[e]),
            Probe::Free(_) => None,
        }
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

    /// Takes every entity of `slot` out (to archive it), leaving the slot empty: its arrays move
    /// out as they are, its index is dropped.
    pub fn take_slot(&mut self, slot: u32) -> SlotEntities<S> {
        let taken = std::mem::take(&mut self.slots[slot as usize]);
        self.len -= taken.len();
        taken.entities
    }

    /// Puts `entities` (restored from an archive of `slot`) into the empty slot and indexes
    /// them. `spans` must lie within `keys` and match `states` in number (`archive` checks
    /// both); a key of another slot or a key twice is refused and the slot stays empty.
    pub fn install_slot(
        &mut self,
        slot: u32,
        entities: SlotEntities<S>,
    ) -> Result<(), InstallSlotError> {
        if self.slots[slot as usize].len() != 0 {
            return Err(InstallSlotError::NotEmpty { slot });
        }
        let (spans, states) = (entities.spans.len(), entities.states.len());
        if spans != states {
            let reason = format!("{spans} key spans for {states} states");
            return Err(InstallSlotError::Malformed { slot, reason });
        }
        let installed = Slot::indexed(slot, self.n_slots, entities)?;
        self.len += installed.len();
        self.slots[slot as usize] = installed;
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

    #[test]
    fn malformed_entities_are_refused_not_panicked_on() {
        let mut store = SlotStore::<u64>::new(1);
        let mut e = SlotEntities::from_pairs([(&b"a"[..], 1), (&b"b"[..], 2)]);
        e.spans[1] = [1, 7];
        let err = store.install_slot(0, e).unwrap_err();
        assert!(err.to_string().contains("outside the keys"), "{err}");
        let mut e = SlotEntities::from_pairs([(&b"a"[..], 1), (&b"b"[..], 2)]);
        e.states.pop();
        let err = store.install_slot(0, e).unwrap_err();
        assert_eq!(err.to_string(), "slot 0: 2 key spans for 1 states");
        assert!(store.is_empty());
    }

    proptest::proptest! {
        /// The store against a map: updates, lookups, and slots moved to another store and back
        /// (every move rebuilds the index), with keys of many lengths.
        #[test]
        fn behaves_like_a_map_across_moves(
            ops in proptest::collection::vec((0u16..400, 0u8..4), 1..600),
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
                        let taken = from.take_slot(slot);
                        to.install_slot(slot, taken).unwrap();
                        in_b[slot as usize] = !in_b[slot as usize];
                    }
                }
            }
            proptest::prop_assert_eq!(a.len() + b.len(), model.len());
            for (key, v) in &model {
                let slot = slot_of(stable_hash(key), n_slots) as usize;
                let store = if in_b[slot] { &b } else { &a };
                proptest::prop_assert_eq!(store.get(key), Some(v));
            }
        }
    }
}
