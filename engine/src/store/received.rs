//! A slot received from another node, used in place: the archive's buffer is the slot's storage
//! (its keys, spans and index are read where they arrived). States whose archived form is their
//! native form (rkyv's copy optimization: `u64`, structs of plain numbers without padding) are
//! updated in place too; any other state (a `String`, a `Vec`, a map) is converted when its
//! entity is first used, not for the whole slot up front.
//!
//! The store's `unsafe` lives here, in [`checked`]: reading the validated archive without
//! validating it again, and handing out a plain state inside the buffer as `&mut S`.

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

use self::checked::Checked;
use super::slot::{probe, ArchivedSlotMemory, Probe, SlotMemory, Table};
use crate::step::State;

/// Why a received archive does not hold a well-formed slot (bad input from a peer).
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    #[error("failed validation")]
    Validation(#[source] BoxedError),
    #[error("{spans} key spans for {states} states")]
    SpanCount { spans: usize, states: usize },
    #[error("key span [{start}, {len}] outside the {keys} bytes of keys")]
    SpanOutside { start: u32, len: u32, keys: u64 },
    #[error(
        "an index of {buckets} buckets for {entities} entities (a power of two, at most 3/4 full)"
    )]
    IndexShape { buckets: usize, entities: usize },
    #[error("an index bucket names entity {entity} of 1..={entities}")]
    BucketEntity { entity: u64, entities: usize },
    #[error("{used} index buckets for {entities} entities")]
    BucketCount { used: u64, entities: usize },
}

/// Whether a received slot's states of type `S` are used in place (else converted on first
/// use): rkyv says archiving `S` copies its bytes, and the archived form has `S`'s size, at
/// least its alignment, and at most the buffer's (16).
pub const fn used_in_place<S: State>() -> bool {
    S::COPY_OPTIMIZATION.is_enabled()
        && std::mem::size_of::<S>() == std::mem::size_of::<S::Archived>()
        && std::mem::align_of::<S>() <= std::mem::align_of::<S::Archived>()
        && std::mem::align_of::<S::Archived>() <= 16
}

/// A slot whose storage is a received archive.
pub(super) struct Received<S: State> {
    bytes: Checked<S>,
    /// Converted states, for a state type not used in place: empty until an entity is used.
    converted: Vec<Option<S>>,
}

impl<S: State> Received<S> {
    pub fn new(bytes: AlignedVec) -> Result<Self, Malformed> {
        Ok(Received {
            bytes: Checked::new(bytes)?,
            converted: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.bytes.image().states.len()
    }

    pub fn byte_len(&self) -> usize {
        self.bytes.as_bytes().len()
    }

    pub fn find(&self, tag: u32, key: &[u8]) -> Option<usize> {
        match probe(self.bytes.image(), tag, key) {
            Probe::Found(e) => Some(e),
            Probe::Free(_) => None,
        }
    }

    pub fn state_mut(&mut self, e: usize) -> &mut S {
        if used_in_place::<S>() {
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
        self.converted.is_empty().then_some(self.bytes.as_bytes())
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

mod checked {
    //! Bytes known to hold a well-formed slot archive. Its own module, so nothing else can
    //! touch the buffer behind the guarantee.

    use rkyv::util::AlignedVec;

    use super::{check, used_in_place, ArchivedSlotMemory, Malformed};
    use crate::step::State;

    /// Made only by [`Checked::new`], which validates the bytes; changed since only by
    /// [`Checked::plain_state_mut`].
    pub(super) struct Checked<S>(AlignedVec, std::marker::PhantomData<S>);

    impl<S: State> Checked<S> {
        pub fn new(bytes: AlignedVec) -> Result<Self, Malformed> {
            check::<S>(&bytes)?;
            Ok(Checked(bytes, std::marker::PhantomData))
        }

        pub fn as_bytes(&self) -> &[u8] {
            &self.0
        }

        pub fn image(&self) -> &ArchivedSlotMemory<S> {
            // SAFETY: the bytes passed `check` (rkyv's validation of this very type) when this
            // value was made, and the only writes since are whole states through
            // `plain_state_mut`, each of which leaves a valid archived state (see there).
            unsafe { rkyv::access_unchecked::<ArchivedSlotMemory<S>>(&self.0) }
        }

        /// A state inside the buffer as `&mut S` (only if [`used_in_place`]).
        pub fn plain_state_mut(&mut self, e: usize) -> &mut S {
            assert!(used_in_place::<S>());
            let archived: *const S::Archived = &self.image().states[e];
            let offset = archived as usize - self.0.as_ptr() as usize;
            // SAFETY: `offset` is where the validated archived state `e` sits inside the buffer:
            // in bounds, and aligned for `S::Archived` (bytecheck checks alignment; the buffer is
            // 16-aligned and never moves while borrowed), whose size is `S`'s and alignment at
            // least `S`'s (`used_in_place`). With the copy optimization, archiving an `S` is
            // copying its bytes, and for rkyv's own impls and derives (a derive turns it on only
            // for a struct whose every field has it, at the same offsets, without padding) the
            // two forms accept the same bytes: these bytes are a valid `S`, and any `S` written
            // through the reference is a valid `S::Archived` again. A hand-written impl that
            // turns the optimization on must promise the same (`State` says so). The pointer is
            // derived from `&mut self.0`, and the `&mut self` borrow keeps it the only reference
            // into the buffer.
            unsafe { &mut *self.0.as_mut_ptr().add(offset).cast::<S>() }
        }
    }
}

/// Validates a slot archive: rkyv's bytecheck (every array inside the buffer), then what a
/// lookup relies on so it can never index out of bounds or probe forever: spans inside the
/// keys, a power-of-two index at most 3/4 full, every bucket naming an entity. A key is not
/// hashed again (that is the work a move no longer does): an archive that lies about its keys
/// (one of another slot, or a key twice) can make them unreachable, never crash a core.
fn check<S: State>(bytes: &[u8]) -> Result<(), Malformed> {
    let image =
        rkyv::access::<ArchivedSlotMemory<S>, BoxedError>(bytes).map_err(Malformed::Validation)?;
    let entities = image.states.len();
    if image.spans.len() != entities {
        return Err(Malformed::SpanCount {
            spans: image.spans.len(),
            states: entities,
        });
    }
    let keys = image.keys.len() as u64;
    let end = |[start, len]: &[rkyv::rend::u32_le; 2]| {
        u64::from(start.to_native()) + u64::from(len.to_native())
    };
    // The furthest end first (a loop without branches), the culprit only if there is one.
    if image.spans.iter().map(end).max().unwrap_or(0) > keys {
        if let Some([start, len]) = image.spans.iter().find(|s| end(s) > keys) {
            let (start, len) = (start.to_native(), len.to_native());
            return Err(Malformed::SpanOutside { start, len, keys });
        }
    }
    let buckets = image.index.len();
    if (buckets != 0 && !buckets.is_power_of_two()) || entities * 4 > buckets * 3 {
        return Err(Malformed::IndexShape { buckets, entities });
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
    if worst > entities as u64 {
        let entity = worst & 0xffff_ffff;
        return Err(Malformed::BucketEntity { entity, entities });
    }
    if used != entities as u64 {
        return Err(Malformed::BucketCount { used, entities });
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
