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

/// An instant a timer waits for: the watermark passing an event time (in the app's own units,
/// as its `event_time` stamps), or the wall clock passing a processing time (milliseconds since
/// the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Time {
    Event(u64),
    Processing(u64),
}

impl Time {
    /// The wall clock now, as a processing time.
    pub fn now() -> Time {
        Time::Processing(now_ms())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a keyed step sees besides its state and message: an emitter, the key, event time and
/// watermark, and timers. A timer belongs to the entity: it moves with it, and when it fires the
/// stage's `on_timer` runs with the entity's state at hand.
pub struct Context<'a, R> {
    pub(crate) emit: &'a mut dyn FnMut(R),
    pub(crate) timers: &'a mut Vec<Time>,
    pub(crate) key: &'a [u8],
    pub(crate) event_time: Option<u64>,
    pub(crate) watermark: Option<u64>,
}

impl<'a, R> Context<'a, R> {
    /// A context for unit tests of steps: emits into `out`, records timers in `timers`.
    pub fn new(
        key: &'a [u8],
        out: &'a mut dyn FnMut(R),
        timers: &'a mut Vec<Time>,
        event_time: Option<u64>,
        watermark: Option<u64>,
    ) -> Self {
        Context {
            emit: out,
            timers,
            key,
            event_time,
            watermark,
        }
    }

    pub fn emit(&mut self, value: R) {
        (self.emit)(value)
    }

    /// Calls the stage's `on_timer` for this entity once `at` has passed (once per instant:
    /// setting the same one twice fires it once).
    pub fn timer_at(&mut self, at: Time) {
        self.timers.push(at)
    }

    /// The entity's key.
    pub fn key(&self) -> &[u8] {
        self.key
    }

    /// The message's event time, if its source stamps one; for an event-time timer, the
    /// instant it was set for (a processing-time timer has none).
    pub fn event_time(&self) -> Option<u64> {
        self.event_time
    }

    /// The stage's watermark on this core for this entity: a message with an earlier event time
    /// that arrives from now on is late and never reaches the step (one that arrived on time
    /// and waited for its entity to move here may be applied after the watermark passed it).
    /// `None` until every core has reported one.
    pub fn watermark(&self) -> Option<u64> {
        self.watermark
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
