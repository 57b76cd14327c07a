//! The erased form of an app that the runtime drives: per-connection [`SourcePipeline`] objects
//! (decode, stateless steps, `key_by`, batches per owner core) and one [`KeyedCore`] per core
//! (slot protocol, state entities, the stateful step and everything after it).
//!
//! Messages cross cores as `Box<dyn Any>` batches of a `Vec<KeyedMsg<T>>`: one allocation per
//! batch, never per message.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use thiserror::Error;

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

use crate::archive::{ArchiveError, SlotArchive};
use crate::hash::{slot_of, stable_hash};
use crate::migration::{Delivery, Protocol, ProtocolError, Switched, Transition};
use crate::routing::{CoreId, Move, RoutingTable};
use crate::sink_buffer::SinkBuffer;
use crate::step::{DecodeError, Emit, Message, State};
use crate::store::{Slot, SlotStore};

// The app's closures, erased: the builder (`app.rs`) makes them, the runtime calls them.
pub(crate) type Decode<I> = Arc<dyn Fn(&[u8]) -> Result<I, DecodeError> + Send + Sync>;
pub(crate) type Chain<I, T> = Arc<dyn Fn(I, &mut dyn FnMut(T)) + Send + Sync>;
pub(crate) type KeyFn<T> = Arc<dyn Fn(&T) -> &[u8] + Send + Sync>;
pub(crate) type StepFn<S, T, R> = Arc<dyn Fn(&mut S, T, &mut Emit<R>) + Send + Sync>;
pub(crate) type Encode<O> = Arc<dyn Fn(&O, &mut Vec<u8>) + Send + Sync>;

/// A batch that could not be encoded for, or decoded from, another node.
#[derive(Debug, Error)]
#[error("batch archive: {0}")]
pub(crate) struct BatchError(#[source] BoxedError);

/// A batch of keyed messages for one core: a `Vec<KeyedMsg<T>>` behind `Any`.
pub(crate) type Batch = Box<dyn Any + Send>;

/// A message after `key_by`, on its way to the core that owns its slot.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct KeyedMsg<T> {
    hash: u64,
    ingress_ns: u64,
    value: T,
}

/// The app as the runtime sees it: factories for per-connection and per-core parts.
pub(crate) trait Dataflow: Send + Sync {
    /// The part that runs on the core reading a connection of source `source`.
    fn source_pipeline(&self, source: usize) -> Box<dyn SourcePipeline>;
    /// The keyed part of core `me`, owning what `table` gives it.
    fn keyed(&self, me: CoreId, table: &RoutingTable) -> Box<dyn KeyedCore>;
    /// A batch as bytes, to cross to another node.
    fn encode_batch(&self, batch: &(dyn Any + Send)) -> Result<AlignedVec, BatchError>;
    /// A batch from another node (its archive, as sent), validated before it is read.
    fn decode_batch(&self, bytes: &AlignedVec) -> Result<Batch, BatchError>;
    /// A slot from another node (its archive, as sent), checked; its buffer becomes the slot's
    /// storage, for the new owner to adopt.
    fn receive_slot(&self, archive: SlotArchive) -> Result<MovedSlot, ArchiveError>;
}

/// A slot's entities on their way to a core of this node, as they are (a `store::Slot` of the
/// app's state type, erased): moved by ownership, never copied.
pub(crate) struct MovedSlot {
    pub slot: u32,
    pub entities: u32,
    /// Bytes of the slot's arrays.
    pub bytes: u64,
    memory: Box<dyn Any + Send>,
}

impl MovedSlot {
    fn new<S: State>(slot: u32, memory: Slot<S>) -> Self {
        MovedSlot {
            slot,
            entities: memory.len() as u32,
            bytes: memory.byte_len() as u64,
            memory: Box::new(memory),
        }
    }

    fn into_memory<S: State>(self) -> Slot<S> {
        *self.memory.downcast().expect("a slot of this dataflow")
    }
}

/// A slot handed to a core of another node: its old owner keeps it until the new owner
/// acknowledges, and the link that carries it archives it (so the old owner's core does no
/// per-byte work for a move; a rejected archive is made again from the same slot).
pub(crate) trait OutgoingSlot: Send + Sync {
    fn slot(&self) -> u32;
    /// The slot's archive, written into `buf` (a link's buffer, reused from slot to slot).
    fn archive_in(&self, buf: AlignedVec) -> Result<SlotArchive, ArchiveError>;
}

/// The old owner's copy of a slot handed to another node (or refused by a core of its own).
struct Frozen<S: State> {
    slot: u32,
    memory: Mutex<Slot<S>>,
}

impl<S: State> Frozen<S> {
    fn new(slot: u32, memory: Slot<S>) -> Arc<Self> {
        Arc::new(Frozen {
            slot,
            memory: Mutex::new(memory),
        })
    }

    fn len(&self) -> usize {
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl<S: State> OutgoingSlot for Frozen<S> {
    fn slot(&self) -> u32 {
        self.slot
    }

    fn archive_in(&self, buf: AlignedVec) -> Result<SlotArchive, ArchiveError> {
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        SlotArchive::write_in(self.slot, &mut memory, buf)
    }
}

impl std::fmt::Debug for MovedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MovedSlot({}, {} entities)", self.slot, self.entities)
    }
}

/// One source connection's pipeline up to `key_by`, with batches waiting per owner core.
pub(crate) trait SourcePipeline {
    /// Decodes a frame read at `ingress_ns` and runs it to `key_by`; the keyed messages wait in
    /// per-core batches.
    fn push(
        &mut self,
        frame: &[u8],
        ingress_ns: u64,
        routes: &RoutingTable,
    ) -> Result<(), DecodeError>;
    /// Takes every waiting batch, with the core it is for.
    fn take_batches(&mut self, each: &mut dyn FnMut(CoreId, Batch));
}

/// A slot its new owner could not adopt (a runtime bug: the memory itself was checked or
/// never left the node), given back so it is not lost.
#[derive(Debug, Error)]
#[error("{reason}")]
pub(crate) struct Refused {
    pub reason: String,
    pub moved: MovedSlot,
}

/// One core's keyed state and the steps from the stateful one to the sink encoder.
pub(crate) trait KeyedCore {
    /// Applies (or buffers, for a slot on its way here) a batch from
    /// [`SourcePipeline::take_batches`].
    /// Returns how many messages were misrouted (a bug; they are logged and counted).
    fn apply(&mut self, batch: &mut (dyn Any + Send), sink: &mut SinkBuffer) -> usize;
    fn prepare(&mut self, t: &Transition) -> Result<(), ProtocolError>;
    fn switch(&mut self) -> Result<Switched, ProtocolError>;
    fn on_marker(&mut self, from: CoreId, epoch: u64) -> Result<Vec<Move>, ProtocolError>;
    /// Takes a handed-off slot out, for a core of this node to adopt as it is.
    fn hand_over(&mut self, slot: u32) -> MovedSlot;
    /// Keeps a slot its new owner refused (until [`Self::release`], which will not come).
    fn take_back(&mut self, refused: MovedSlot);
    /// A slot handed off to another node, for the link to archive; it stays here until
    /// [`Self::release`], so a rejected archive can be sent again.
    fn send_off(&mut self, slot: u32) -> Arc<dyn OutgoingSlot>;
    /// Adopts a handed-off slot and applies the messages that waited for it.
    fn adopt(&mut self, moved: MovedSlot, sink: &mut SinkBuffer) -> Result<(), Refused>;
    /// The new owner has the slot: drop what was kept of it here.
    fn release(&mut self, slot: u32) -> Result<(), ProtocolError>;
    /// Forgets the prepared steps not switched to yet; returns how many.
    fn abort(&mut self) -> Result<usize, ProtocolError>;
    /// Epochs of the migration steps finished here since the last call.
    fn take_finished_steps(&mut self) -> Vec<u64>;
    fn epoch(&self) -> u64;
    fn owned_slots(&self) -> usize;
    fn buffered(&self) -> usize;
    fn entities(&self) -> usize;
    /// Bytes of the slots owned here.
    fn state_bytes(&self) -> u64;
    /// Keyed messages applied so far.
    fn applied(&self) -> u64;
}

pub(crate) struct Typed<I, T, S, R, O> {
    pub decoders: Vec<Decode<I>>,
    pub pre: Chain<I, T>,
    pub key: KeyFn<T>,
    pub step: StepFn<S, T, R>,
    pub post: Chain<R, O>,
    pub encode: Encode<O>,
}

impl<I, T, S, R, O> Dataflow for Typed<I, T, S, R, O>
where
    I: Send + 'static,
    T: Message,
    S: State,
    R: 'static,
    O: 'static,
{
    fn source_pipeline(&self, source: usize) -> Box<dyn SourcePipeline> {
        Box::new(TypedSource {
            decode: self.decoders[source].clone(),
            pre: self.pre.clone(),
            key: self.key.clone(),
            batches: Vec::new(),
        })
    }

    fn keyed(&self, me: CoreId, table: &RoutingTable) -> Box<dyn KeyedCore> {
        Box::new(TypedKeyed {
            protocol: Protocol::new(me, table),
            store: SlotStore::new(table.n_slots()),
            frozen: HashMap::new(),
            applied: 0,
            n_slots: table.n_slots(),
            key: self.key.clone(),
            step: self.step.clone(),
            post: self.post.clone(),
            encode: self.encode.clone(),
        })
    }

    fn encode_batch(&self, batch: &(dyn Any + Send)) -> Result<AlignedVec, BatchError> {
        let batch: &Vec<KeyedMsg<T>> = batch.downcast_ref().expect("a batch of this dataflow");
        rkyv::to_bytes::<BoxedError>(batch).map_err(BatchError)
    }

    fn decode_batch(&self, bytes: &AlignedVec) -> Result<Batch, BatchError> {
        let batch = rkyv::from_bytes::<Vec<KeyedMsg<T>>, BoxedError>(bytes).map_err(BatchError)?;
        Ok(Box::new(batch))
    }

    fn receive_slot(&self, archive: SlotArchive) -> Result<MovedSlot, ArchiveError> {
        let slot = archive.slot;
        Ok(MovedSlot::new(slot, archive.read::<S>()?))
    }
}

struct TypedSource<I, T> {
    decode: Decode<I>,
    pre: Chain<I, T>,
    key: KeyFn<T>,
    /// Waiting messages, indexed by owner core.
    batches: Vec<Vec<KeyedMsg<T>>>,
}

impl<I, T: Send + 'static> SourcePipeline for TypedSource<I, T> {
    fn push(
        &mut self,
        frame: &[u8],
        ingress_ns: u64,
        routes: &RoutingTable,
    ) -> Result<(), DecodeError> {
        let input = (self.decode)(frame)?;
        let Self {
            pre, key, batches, ..
        } = self;
        pre(input, &mut |value| {
            let hash = stable_hash(key(&value));
            let owner = usize::from(routes.owner(slot_of(hash, routes.n_slots())));
            if owner >= batches.len() {
                batches.resize_with(owner + 1, Vec::new);
            }
            batches[owner].push(KeyedMsg {
                hash,
                ingress_ns,
                value,
            });
        });
        Ok(())
    }

    fn take_batches(&mut self, each: &mut dyn FnMut(CoreId, Batch)) {
        for (core, batch) in self.batches.iter_mut().enumerate() {
            if !batch.is_empty() {
                each(core as CoreId, Box::new(std::mem::take(batch)));
            }
        }
    }
}

struct TypedKeyed<T, S: State, R, O> {
    protocol: Protocol<KeyedMsg<T>>,
    store: SlotStore<S>,
    /// Slots handed off to another node (or refused), kept until the new owner acknowledges.
    frozen: HashMap<u32, Arc<Frozen<S>>>,
    applied: u64,
    n_slots: u32,
    key: KeyFn<T>,
    step: StepFn<S, T, R>,
    post: Chain<R, O>,
    encode: Encode<O>,
}

impl<T, S: State, R, O> TypedKeyed<T, S, R, O> {
    fn apply_one(&mut self, msg: KeyedMsg<T>, sink: &mut SinkBuffer) {
        self.applied += 1;
        let Self {
            store,
            key,
            step,
            post,
            encode,
            ..
        } = self;
        let state = store.entry(msg.hash, key(&msg.value));
        let ingress_ns = msg.ingress_ns;
        step(
            state,
            msg.value,
            &mut Emit(&mut |r| post(r, &mut |o| sink.push(ingress_ns, |bytes| encode(&o, bytes)))),
        );
    }
}

impl<T: 'static, S: State, R, O> KeyedCore for TypedKeyed<T, S, R, O> {
    fn apply(&mut self, batch: &mut (dyn Any + Send), sink: &mut SinkBuffer) -> usize {
        let batch: &mut Vec<KeyedMsg<T>> = batch.downcast_mut().expect("a batch of this dataflow");
        let mut misrouted = 0;
        for msg in batch.drain(..) {
            match self.protocol.deliver(slot_of(msg.hash, self.n_slots), msg) {
                Delivery::Apply(msg) => self.apply_one(msg, sink),
                Delivery::Buffered => {}
                Delivery::Misrouted(_) => misrouted += 1,
            }
        }
        misrouted
    }

    fn prepare(&mut self, t: &Transition) -> Result<(), ProtocolError> {
        self.protocol.prepare(t)
    }

    fn switch(&mut self) -> Result<Switched, ProtocolError> {
        self.protocol.switch()
    }

    fn on_marker(&mut self, from: CoreId, epoch: u64) -> Result<Vec<Move>, ProtocolError> {
        self.protocol.on_marker(from, epoch)
    }

    fn hand_over(&mut self, slot: u32) -> MovedSlot {
        MovedSlot::new(slot, self.store.take(slot))
    }

    fn take_back(&mut self, refused: MovedSlot) {
        let slot = refused.slot;
        self.frozen
            .insert(slot, Frozen::new(slot, refused.into_memory()));
    }

    fn send_off(&mut self, slot: u32) -> Arc<dyn OutgoingSlot> {
        let store = &mut self.store;
        let frozen =
            (self.frozen.entry(slot)).or_insert_with(|| Frozen::new(slot, store.take(slot)));
        frozen.clone()
    }

    fn adopt(&mut self, moved: MovedSlot, sink: &mut SinkBuffer) -> Result<(), Refused> {
        let slot = moved.slot;
        // Either refusal leaves everything as it was, the slot given back whole.
        if let Err(occupied) = self.store.put(slot, moved.into_memory()) {
            let reason = occupied.to_string();
            let moved = MovedSlot::new(slot, occupied.returned);
            return Err(Refused { reason, moved });
        }
        let waiting = match self.protocol.adopt(slot) {
            Ok(waiting) => waiting,
            Err(e) => {
                let moved = MovedSlot::new(slot, self.store.take(slot));
                let reason = e.to_string();
                return Err(Refused { reason, moved });
            }
        };
        for msg in waiting {
            self.apply_one(msg, sink);
        }
        Ok(())
    }

    fn release(&mut self, slot: u32) -> Result<(), ProtocolError> {
        self.protocol.acknowledged(slot)?;
        self.frozen.remove(&slot);
        Ok(())
    }

    fn abort(&mut self) -> Result<usize, ProtocolError> {
        self.protocol.abort()
    }

    fn take_finished_steps(&mut self) -> Vec<u64> {
        self.protocol.take_finished()
    }

    fn epoch(&self) -> u64 {
        self.protocol.epoch()
    }

    fn owned_slots(&self) -> usize {
        self.protocol.owned()
    }

    fn buffered(&self) -> usize {
        self.protocol.buffered()
    }

    fn entities(&self) -> usize {
        self.store.len() + self.frozen.values().map(|f| f.len()).sum::<usize>()
    }

    fn state_bytes(&self) -> u64 {
        self.store.byte_len() as u64
    }

    fn applied(&self) -> u64 {
        self.applied
    }
}
