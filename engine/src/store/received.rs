//! A slot received from another node, used in place: the archive's buffer is the slot's storage
//! (its keys, spans and index are read where they arrived). States whose archived form is their
//! native form (rkyv's copy optimization: `u64`, structs of plain numbers without padding) are
//! updated in place too; any other state (a `String`, a `Vec`, a map) is converted when its
//! entity is first used, not for the whole slot up front.
//!
//! The store's one `unsafe` lives here: handing out a plain state inside the buffer as `&mut S`.

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

use super::slot::{probe, ArchivedSlotMemory, Probe, SlotMemory, Table};
use crate::step::State;

/// A received archive that does not hold a well-formed slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(String);

/// A slot whose storage is a received archive.
pub(super) struct Received<S: State> {
    bytes: Checked<S>,
    /// Converted states, for a state type not used in place: empty until an entity is used.
    converted: Vec<Option<S>>,
}

impl<S: State> Received<S> {
    /// Whether states are used in place: rkyv says archiving `S` copies its bytes, and the
    /// archived form has `S`'s size and at least its alignment.
    const IN_PLACE: bool = S::COPY_OPTIMIZATION.is_enabled()
        && std::mem::size_of::<S>() == std::mem::size_of::<S::Archived>()
        && std::mem::align_of::<S>() <= std::mem::align_of::<S::Archived>();

    pub fn new(bytes: AlignedVec) -> Result<Self, Malformed> {
        Ok(Received {
            bytes: Checked::new(bytes)?,
            converted: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.bytes.image().states.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes.0.len()
    }

    pub fn find(&self, tag: u32, key: &[u8]) -> Option<usize> {
        let image = self.bytes.image();
        if image.index.is_empty() {
            return None;
        }
        match probe(image, tag, key) {
            Probe::Found(e) => Some(e),
            Probe::Free(_) => None,
        }
    }

    pub fn state_mut(&mut self, e: usize) -> &mut S {
        if Self::IN_PLACE {
            return self.bytes.plain_state_mut(e);
        }
        let n = self.len();
        if self.converted.is_empty() {
            self.converted.resize_with(n, || None);
        }
        let archived = &self.bytes.image().states[e];
        self.converted[e].get_or_insert_with(|| deserialize(archived))
    }

    #[cfg(test)]
    pub fn converted(&self) -> usize {
        self.converted.iter().filter(|s| s.is_some()).count()
    }

    /// The archive as it is, if every state is in it (none was converted out of it).
    pub fn archive_bytes(&self) -> Option<&[u8]> {
        self.converted.is_empty().then_some(&self.bytes.0[..])
    }

    /// The slot as native vectors: the arrays copied out of the buffer, the index kept.
    pub fn into_memory(self) -> SlotMemory<S> {
        let image = self.bytes.image();
        let mut converted = self.converted;
        let states = (0..image.states.len())
            .map(|e| {
                let done = converted.get_mut(e).and_then(Option::take);
                done.unwrap_or_else(|| deserialize(&image.states[e]))
            })
            .collect();
        SlotMemory {
            keys: image.keys.as_slice().to_vec(),
            spans: (image.spans.iter())
                .map(|[start, len]| [start.to_native(), len.to_native()])
                .collect(),
            states,
            index: image.index.iter().map(|b| b.to_native()).collect(),
        }
    }
}

fn deserialize<S: State>(archived: &S::Archived) -> S {
    rkyv::deserialize::<S, BoxedError>(archived)
        .expect("a state in a validated archive deserializes (see `State`)")
}

/// Bytes that hold a well-formed slot archive: made only by [`Checked::new`], which validates
/// them, and changed since only by [`Checked::plain_state_mut`].
struct Checked<S>(AlignedVec, std::marker::PhantomData<S>);

impl<S: State> Checked<S> {
    fn new(bytes: AlignedVec) -> Result<Self, Malformed> {
        check::<S>(&bytes)?;
        Ok(Checked(bytes, std::marker::PhantomData))
    }

    fn image(&self) -> &ArchivedSlotMemory<S> {
        // SAFETY: the bytes passed `check` (rkyv's validation of this very type) when this value
        // was made, and the only writes since are whole plain states through
        // `plain_state_mut`, each of which leaves a valid archived state.
        unsafe { rkyv::access_unchecked::<ArchivedSlotMemory<S>>(&self.0) }
    }

    /// A state inside the buffer as `&mut S` (only for [`Received::IN_PLACE`] types).
    fn plain_state_mut(&mut self, e: usize) -> &mut S {
        assert!(Received::<S>::IN_PLACE);
        let archived: *const S::Archived = &self.image().states[e];
        let offset = archived as usize - self.0.as_ptr() as usize;
        // SAFETY: `offset` is where the validated archived state `e` sits inside the buffer, in
        // bounds and aligned for `S::Archived`, whose alignment is at least `S`'s and whose size
        // is `S`'s (`IN_PLACE`). rkyv's copy optimization says archiving an `S` is copying its
        // bytes, so these bytes (a valid `S::Archived`) are a valid `S`, and any `S` written
        // through the reference is in turn a valid `S::Archived`. The pointer is derived from
        // `&mut self.0`, and the `&mut self` borrow keeps it the only reference into the buffer.
        unsafe { &mut *self.0.as_mut_ptr().add(offset).cast::<S>() }
    }
}

/// Validates a slot archive: rkyv's bytecheck (every array inside the buffer), then what a
/// lookup relies on so it can never index out of bounds or probe forever: spans inside the
/// keys, a power-of-two index at most 3/4 full, every bucket naming an entity. A key is not
/// hashed again: a lying archive can make its keys unreachable, never crash a core.
fn check<S: State>(bytes: &[u8]) -> Result<(), Malformed> {
    let bad = |reason: String| Err(Malformed(reason));
    let image = match rkyv::access::<ArchivedSlotMemory<S>, BoxedError>(bytes) {
        Ok(image) => image,
        Err(e) => return bad(format!("failed validation: {e}")),
    };
    let n = image.states.len();
    if image.spans.len() != n {
        return bad(format!("{} key spans for {n} states", image.spans.len()));
    }
    let keys = image.keys.len() as u64;
    let end = |[start, len]: &[rkyv::rend::u32_le; 2]| {
        u64::from(start.to_native()) + u64::from(len.to_native())
    };
    // The furthest end first (a loop without branches), the culprit only if there is one.
    if image.spans.iter().map(end).max().unwrap_or(0) > keys {
        if let Some([start, len]) = image.spans.iter().find(|s| end(s) > keys) {
            return bad(format!(
                "key span [{start}, {len}] outside the {keys} bytes of keys"
            ));
        }
    }
    let buckets = image.index.len();
    if (buckets != 0 && !buckets.is_power_of_two()) || n * 4 > buckets * 3 {
        return bad(format!(
            "an index of {buckets} buckets for {n} entities (a power of two, at most 3/4 full)"
        ));
    }
    // Without branches (half the buckets are free, at random): the count of used buckets, and
    // the largest entity number in them, 1-based, where 0 counts as 2^32 (it is out of range).
    let (mut used, mut worst) = (0u64, 0u64);
    for b in image.index.as_slice() {
        let b = b.to_native();
        let in_use = u64::from(b != 0);
        used += in_use;
        worst = worst.max(in_use * ((b.wrapping_sub(1) & 0xffff_ffff) + 1));
    }
    if worst > n as u64 {
        let entity = worst & 0xffff_ffff;
        return bad(format!("an index bucket names entity {entity} of 1..={n}"));
    }
    if used != n as u64 {
        return bad(format!("{used} index buckets for {n} entities"));
    }
    Ok(())
}

impl<S: rkyv::Archive> Table for ArchivedSlotMemory<S> {
    fn buckets(&self) -> usize {
        self.index.len()
    }

    fn bucket(&self, at: usize) -> u64 {
        self.index[at].to_native()
    }

    fn key(&self, e: usize) -> &[u8] {
        let [start, len] = self.spans[e];
        let start = start.to_native() as usize;
        &self.keys[start..start + len.to_native() as usize]
    }
}
