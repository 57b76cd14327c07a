//! What an app's steps see: the emitter they hand values to, the decoder's error, and the bounds
//! on keyed messages and state entities (plain rkyv-archivable values, so the engine can move
//! them between cores and nodes). The lowest layer of the API: the erased dataflow and the
//! builder both stand on it.

use std::borrow::Cow;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

/// A frame a source's decoder could not read: a bad input, reported per connection.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct DecodeError {
    reason: Cow<'static, str>,
}

impl DecodeError {
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// Hands values to the next step; a step may emit zero, one or many per input.
pub struct Emit<'a, T>(pub(crate) &'a mut dyn FnMut(T));

impl<'a, T> Emit<'a, T> {
    /// An emitter that hands values to `out` (for unit tests of steps).
    pub fn new(out: &'a mut dyn FnMut(T)) -> Self {
        Emit(out)
    }

    pub fn emit(&mut self, value: T) {
        (self.0)(value)
    }
}

/// What a keyed message must be: a plain value archivable with rkyv, so the engine can send it
/// to the node that owns its key.
pub trait Message:
    Sized
    + Send
    + 'static
    + rkyv::Archive<
        Archived: for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>
                      + rkyv::Deserialize<Self, HighDeserializer<rancor::BoxedError>>,
    >
    + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::BoxedError>>
{
}

impl<M> Message for M where
    M: Send
        + 'static
        + rkyv::Archive<
            Archived: for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>
                          + rkyv::Deserialize<Self, HighDeserializer<rancor::BoxedError>>,
        >
        + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::BoxedError>>
{
}

/// What a state entity must be: a plain value with a default, archivable with rkyv so the engine
/// can move it between cores and machines.
///
/// Inside a node a slot moves as it is. A slot from another node is used in place: if rkyv
/// says archiving `S` is copying its bytes (its copy optimization, which `#[derive(Archive)]`
/// turns on for a struct of such fields without padding, and which `u64` and the other numbers
/// have), the state is updated inside the received buffer; otherwise each entity's state is
/// deserialized on its first use after the move. Deserializing a state from a validated archive
/// must not fail (it cannot for rkyv's own types and derives).
pub trait State: Message + Default {}

impl<S: Message + Default> State for S {}
