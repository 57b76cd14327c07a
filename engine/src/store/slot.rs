//! One slot: its entities in flat arrays and an open-addressing index over them, in one of two
//! forms. Native: four vectors this core allocated. Received: the aligned buffer of an archive
//! that came from another node, validated once and used in place (the archive's layout is the
//! native one, so a lookup reads the received index and keys as they are).

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

use super::received::{Malformed, Received};
use crate::hash::table_hash;
use crate::step::State;

/// A slot's memory in its native form, and the layout of its archive: the same four arrays.
#[derive(Debug, Default, rkyv::Archive, rkyv::Serialize)]
pub struct SlotMemory<S> {
    /// Every key's bytes, back to back.
    pub(super) keys: Vec<u8>,
    /// Per entity, where its key is in `keys`: `[start, len]`.
    pub(super) spans: Vec<[u32; 2]>,
    /// Per entity, its state.
    pub(super) states: Vec<S>,
    /// A power of two of buckets (or none), at most 3/4 used; see [`bucket`].
    pub(super) index: Vec<u64>,
}

/// An index bucket: 0 when free, else `tag << 32 | (entity + 1)`. The tag (the high half of the
/// key's table hash) also places the bucket, so most probes never touch a key, and the index
/// grows without hashing a key again.
fn bucket(tag: u32, entity: usize) -> u64 {
    u64::from(tag) << 32 | (entity as u64 + 1)
}

pub(super) fn tag_of(hash: u64) -> u32 {
    (table_hash(hash) >> 32) as u32
}

/// What a probe reads, in either form: the index and the keys.
pub(super) trait Table {
    fn buckets(&self) -> usize;
    fn bucket(&self, at: usize) -> u64;
    fn key(&self, entity: usize) -> &[u8];
}

/// Where a probe for a key ended.
pub(super) enum Probe {
    Found(usize),
    /// The free bucket where the key would go.
    Free(usize),
}

/// Looks `key` up in a table with at least one free bucket, or none at all.
pub(super) fn probe(table: &impl Table, tag: u32, key: &[u8]) -> Probe {
    if table.buckets() == 0 {
        return Probe::Free(0);
    }
    let mask = table.buckets() - 1;
    let mut at = tag as usize & mask;
    loop {
        let b = table.bucket(at);
        if b == 0 {
            return Probe::Free(at);
        }
        if (b >> 32) as u32 == tag {
            let e = (b as u32 - 1) as usize;
            if table.key(e) == key {
                return Probe::Found(e);
            }
        }
        at = (at + 1) & mask;
    }
}

impl<S> Table for SlotMemory<S> {
    fn buckets(&self) -> usize {
        self.index.len()
    }

    fn bucket(&self, at: usize) -> u64 {
        self.index[at]
    }

    fn key(&self, e: usize) -> &[u8] {
        let [start, len] = self.spans[e];
        &self.keys[start as usize..start as usize + len as usize]
    }
}

impl<S> SlotMemory<S> {
    /// Makes room for one more entity: doubles the index when it would be over 3/4 full,
    /// placing every bucket again by its tag.
    fn reserve_one(&mut self) {
        if (self.states.len() + 1) * 4 <= self.index.len() * 3 {
            return;
        }
        let buckets = (self.index.len() * 2).max(8);
        let old = std::mem::replace(&mut self.index, vec![0; buckets]);
        let mask = buckets - 1;
        for b in old.into_iter().filter(|&b| b != 0) {
            let mut at = (b >> 32) as usize & mask;
            while self.index[at] != 0 {
                at = (at + 1) & mask;
            }
            self.index[at] = b;
        }
    }

    /// The entity of `key`, added with `S::default()` if new; and whether it was.
    fn find_or_insert(&mut self, tag: u32, key: &[u8]) -> (usize, bool)
    where
        S: Default,
    {
        self.reserve_one();
        match probe(self, tag, key) {
            Probe::Found(e) => (e, false),
            Probe::Free(at) => {
                let e = self.states.len();
                let start =
                    u32::try_from(self.keys.len()).expect("a slot holds at most 4 GiB of keys");
                let len = u32::try_from(key.len()).expect("a key is at most 4 GiB");
                self.keys.extend_from_slice(key);
                self.spans.push([start, len]);
                self.states.push(S::default());
                self.index[at] = bucket(tag, e);
                (e, true)
            }
        }
    }

    /// Bytes of the four arrays (what a move carries).
    fn byte_len(&self) -> usize {
        self.keys.len()
            + std::mem::size_of_val(&self.spans[..])
            + std::mem::size_of_val(&self.states[..])
            + std::mem::size_of_val(&self.index[..])
    }
}

/// One slot's entities, in whichever form they are. A slot moves between cores of a node as
/// this value (its memory changes owner; nothing is copied) and between nodes as its archive.
pub struct Slot<S: State>(Form<S>);

enum Form<S: State> {
    Native(SlotMemory<S>),
    Received(Received<S>),
}

impl<S: State> Default for Slot<S> {
    fn default() -> Self {
        Slot(Form::Native(SlotMemory::default()))
    }
}

impl<S: State> std::fmt::Debug for Slot<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let form = match self.0 {
            Form::Native(_) => "native",
            Form::Received(_) => "received",
        };
        write!(f, "Slot({} entities, {form})", self.len())
    }
}

impl<S: State> Slot<S> {
    /// Entities held.
    pub fn len(&self) -> usize {
        match &self.0 {
            Form::Native(m) => m.states.len(),
            Form::Received(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the slot's arrays: what a move hands over, or an archive of it holds.
    pub fn byte_len(&self) -> usize {
        match &self.0 {
            Form::Native(m) => m.byte_len(),
            Form::Received(r) => r.byte_len(),
        }
    }

    /// Whether the slot's storage is a received archive (used in place).
    pub fn is_received(&self) -> bool {
        matches!(self.0, Form::Received(_))
    }

    /// The state of `key` (whose table tag is `tag`), created with `S::default()` if new; and
    /// whether it was.
    pub(super) fn entry(&mut self, tag: u32, key: &[u8]) -> (&mut S, bool) {
        let (e, created) = match &self.0 {
            Form::Received(r) => match r.find(tag, key) {
                Some(e) => (e, false),
                // A new key: the slot grows, so its arrays leave the archive for vectors of
                // their own (as a vector reallocates when it grows; the index is kept).
                None => self.native().find_or_insert(tag, key),
            },
            Form::Native(_) => self.native().find_or_insert(tag, key),
        };
        (self.state_at(e), created)
    }

    /// The state of `key`, if it exists.
    pub(super) fn get(&mut self, tag: u32, key: &[u8]) -> Option<&S> {
        let e = match &self.0 {
            Form::Received(r) => r.find(tag, key)?,
            Form::Native(m) => match probe(m, tag, key) {
                Probe::Found(e) => e,
                Probe::Free(_) => return None,
            },
        };
        Some(self.state_at(e))
    }

    fn state_at(&mut self, e: usize) -> &mut S {
        match &mut self.0 {
            Form::Native(m) => &mut m.states[e],
            Form::Received(r) => r.state_mut(e),
        }
    }

    /// The slot in native form, converting a received one.
    fn native(&mut self) -> &mut SlotMemory<S> {
        if let Form::Received(_) = self.0 {
            let taken = std::mem::replace(&mut self.0, Form::Native(SlotMemory::default()));
            if let Form::Received(r) = taken {
                self.0 = Form::Native(r.into_memory());
            }
        }
        match &mut self.0 {
            Form::Native(m) => m,
            Form::Received(_) => unreachable!("converted above"),
        }
    }

    /// The slot's archive bytes (before the checksum), written into `buf` (cleared first, so a
    /// writer can reuse one buffer): a copy of a received buffer whose states are all in it,
    /// else the native arrays written by rkyv (bulk copies for plain data), after converting a
    /// received slot whose states were converted on use.
    pub(crate) fn write_archive(&mut self, mut buf: AlignedVec) -> Result<AlignedVec, BoxedError> {
        buf.clear();
        if let Form::Received(r) = &self.0 {
            if let Some(bytes) = r.archive_bytes() {
                buf.extend_from_slice(bytes);
                return Ok(buf);
            }
        }
        let memory = self.native();
        // Room for the arrays up front: growing the buffer would copy it again.
        let estimate = memory.keys.len()
            + memory.spans.len() * 8
            + memory.states.len() * std::mem::size_of::<S::Archived>()
            + memory.index.len() * 8
            + 128;
        buf.reserve(estimate);
        rkyv::api::high::to_bytes_in::<_, BoxedError>(&*memory, buf)
    }

    /// A slot whose storage is `bytes`, an archive from [`Self::write_archive`], once it is
    /// validated: no copy, no index rebuilt.
    pub(crate) fn from_archive(bytes: AlignedVec) -> Result<Self, Malformed> {
        Ok(Slot(Form::Received(Received::new(bytes)?)))
    }

    /// Where the slot's first array lives (for tests: a move by ownership keeps it).
    #[cfg(test)]
    pub fn storage(&self) -> *const u8 {
        match &self.0 {
            Form::Native(m) => m.keys.as_ptr(),
            Form::Received(r) => r.archive_bytes().map_or(std::ptr::null(), <[u8]>::as_ptr),
        }
    }

    /// States converted out of a received slot's buffer so far (for tests).
    #[cfg(test)]
    pub fn converted(&self) -> usize {
        match &self.0 {
            Form::Native(_) => 0,
            Form::Received(r) => r.converted(),
        }
    }

    /// (key, state) of every entity, sorted, converting a received slot (for tests).
    #[cfg(test)]
    pub fn pairs(&mut self) -> Vec<(Vec<u8>, S)>
    where
        S: Clone + Ord,
    {
        let m = self.native();
        let mut pairs: Vec<_> = (0..m.states.len())
            .map(|e| (m.key(e).to_vec(), m.states[e].clone()))
            .collect();
        pairs.sort();
        pairs
    }
}

#[cfg(test)]
impl<S: State> SlotMemory<S> {
    /// Arrays as given, unchecked (to build malformed archives).
    pub(crate) fn raw(
        keys: Vec<u8>,
        spans: Vec<[u32; 2]>,
        states: Vec<S>,
        index: Vec<u64>,
    ) -> Self {
        SlotMemory {
            keys,
            spans,
            states,
            index,
        }
    }

    /// A slot of `pairs`, indexed.
    pub(crate) fn of<'k>(pairs: impl IntoIterator<Item = (&'k [u8], S)>) -> Self {
        let mut m = SlotMemory::default();
        for (key, state) in pairs {
            let (e, _) = m.find_or_insert(tag_of(crate::hash::stable_hash(key)), key);
            m.states[e] = state;
        }
        m
    }

    pub(crate) fn into_slot(self) -> Slot<S> {
        Slot(Form::Native(self))
    }
}
