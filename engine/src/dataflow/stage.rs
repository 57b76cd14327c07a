//! One keyed stage, typed: its entities (a slot store), their timers, the stateful step and the
//! steps after it, and how its batches and slots are archived to cross nodes.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

use super::{
    Batch, BatchError, Chain, FrozenPart, KeyFn, KeyedMsg, Meta, Out, Outlet, OutletDef, Pending,
    SavedPart, StageCore, StageDef, StagePart, StepFn, TimerFn,
};
use crate::archive::{ArchiveError, SlotArchive};
use crate::hash::{slot_of, stable_hash};
use crate::metrics::now_ns;
use crate::migration::{Protocol, Route};
use crate::routing::CoreId;
use crate::sink_buffer::SinkBuffer;
use crate::step::{Context, Emit, Message, State, Time};
use crate::store::{Slot, SlotStore};
use crate::time::{split, Clock, SlotTime, StageClock, Timers, NO_TIME};

/// What to do with a message later than its stage's watermark (besides counting it).
pub(crate) type Late<T> = Option<Arc<dyn Fn(&T, u64, &mut [SinkBuffer]) + Send + Sync>>;

/// A stage as the builder makes it.
pub(crate) struct StageFns<T, S, R, O> {
    pub stage: u32,
    pub key: KeyFn<T>,
    pub step: StepFn<S, T, R>,
    pub on_timer: Option<TimerFn<S, R>>,
    pub post: Chain<R, O>,
    pub outlet: Arc<dyn OutletDef<O>>,
    pub late: Late<T>,
}

/// The stage, erased for the runtime.
pub(crate) struct Typed<T, S, R, O>(pub Arc<StageFns<T, S, R, O>>);

/// One stage's share of a slot: its entities, their pending timers, and its watermark.
struct Part<S: State> {
    memory: Slot<S>,
    time: SlotTime,
}

impl<S: State> Part<S> {
    fn erase(self) -> StagePart {
        StagePart {
            entities: self.memory.len() as u32,
            bytes: self.memory.byte_len() as u64,
            part: Box::new(self),
        }
    }

    fn of(part: StagePart) -> Self {
        *part.part.downcast().expect("a slot part of this stage")
    }
}

impl<T: Message, S: State, R: 'static, O: 'static> StageDef for Typed<T, S, R, O> {
    fn core(&self, n_slots: u32) -> Box<dyn StageCore> {
        Box::new(OnCore {
            fns: self.0.clone(),
            store: SlotStore::new(n_slots),
            timers: Timers::default(),
            clock: StageClock::default(),
            frozen: HashMap::new(),
            outlet: self.0.outlet.outlet(),
            requested: Vec::new(),
            key: Vec::new(),
            applied: 0,
            late: 0,
            changed: vec![false; n_slots as usize],
            n_slots,
        })
    }

    fn has_timers(&self) -> bool {
        self.0.on_timer.is_some()
    }

    fn encode_batch(&self, msgs: &(dyn Any + Send)) -> Result<AlignedVec, BatchError> {
        let msgs: &Vec<KeyedMsg<T>> = msgs.downcast_ref().expect("a batch of this stage");
        rkyv::to_bytes::<BoxedError>(msgs).map_err(BatchError::Archive)
    }

    fn decode_batch(&self, bytes: &AlignedVec) -> Result<Box<dyn Any + Send>, BatchError> {
        let msgs =
            rkyv::from_bytes::<Vec<KeyedMsg<T>>, BoxedError>(bytes).map_err(BatchError::Archive)?;
        Ok(Box::new(msgs))
    }

    fn receive(
        &self,
        slot: u32,
        n_slots: u32,
        parts: &mut dyn Iterator<Item = AlignedVec>,
    ) -> Result<StagePart, ArchiveError> {
        // The caller counted the parts: one per stage, one more per stage with timers.
        let missing = || ArchiveError::PartCount {
            slot,
            got: 0,
            want: 1,
        };
        let memory = SlotArchive::read_part::<S>(slot, parts.next().ok_or_else(missing)?)?;
        let time = if self.0.on_timer.is_some() {
            let bytes = parts.next().ok_or_else(missing)?;
            let time = rkyv::from_bytes::<SlotTime, BoxedError>(&bytes).map_err(|e| {
                ArchiveError::Timers {
                    slot,
                    reason: e.to_string(),
                }
            })?;
            // A timer names its entity by key: one of another slot would fire on the wrong core.
            if let Some(t) =
                (time.timers.iter()).find(|t| slot_of(stable_hash(&t.key), n_slots) != slot)
            {
                return Err(ArchiveError::Timers {
                    slot,
                    reason: format!("a timer at {} of a key in another slot", t.due),
                });
            }
            time
        } else {
            SlotTime::default()
        };
        Ok(Part { memory, time }.erase())
    }
}

struct OnCore<T, S: State, R, O> {
    fns: Arc<StageFns<T, S, R, O>>,
    store: SlotStore<S>,
    timers: Timers,
    /// This stage's watermark here, and per slot where it differs.
    clock: StageClock,
    /// Slots handed off to another node (or refused), kept until the new owner acknowledges.
    frozen: HashMap<u32, Arc<Frozen<S>>>,
    outlet: Box<dyn Outlet<O>>,
    /// Timers the step asked for while it ran.
    requested: Vec<Time>,
    /// The key of the message being applied (the step takes the message).
    key: Vec<u8>,
    applied: u64,
    late: u64,
    /// Per slot: changed since the last checkpoint (what an incremental checkpoint writes).
    changed: Vec<bool>,
    n_slots: u32,
}

impl<T: Message, S: State, R: 'static, O: 'static> OnCore<T, S, R, O> {
    /// The slot's event time, to move with it (see [`StageClock`]).
    fn take_time(&mut self, slot: u32) -> SlotTime {
        SlotTime {
            watermark: self.clock.take(slot),
            timers: self.timers.take_slot(slot),
        }
    }

    /// Counts a late message and hands it to the app's sink for them, if any.
    fn late_one(&mut self, msg: KeyedMsg<T>, out: &mut Out) {
        self.late += 1;
        if let Some(late) = &self.fns.late {
            late(&msg.value, msg.ingress_ns, out.sinks);
        }
    }

    /// Applies a message for `slot` that was on time where it arrived.
    fn apply_one(&mut self, msg: KeyedMsg<T>, slot: u32, out: &mut Out) {
        self.applied += 1;
        self.changed[slot as usize] = true;
        let Self {
            fns,
            store,
            timers,
            outlet,
            requested,
            key,
            clock,
            ..
        } = self;
        let meta = Meta {
            ingress_ns: msg.ingress_ns,
            event: msg.event,
        };
        let post = &fns.post;
        let emit = &mut |r| post(r, &mut |o| outlet.push(o, meta, out));
        match &fns.step {
            StepFn::Plain(step) => {
                let state = store.entry(msg.hash, (fns.key)(&msg.value));
                step(state, msg.value, &mut Emit(emit));
            }
            StepFn::Timed(step) => {
                // The step takes the message, and its context lends the key.
                key.clear();
                key.extend_from_slice((fns.key)(&msg.value));
                let state = store.entry(msg.hash, key);
                let mut ctx = Context {
                    emit,
                    timers: requested,
                    key,
                    event_time: (msg.event != NO_TIME).then_some(msg.event),
                    watermark: clock.of(slot),
                };
                step(state, msg.value, &mut ctx);
                for at in requested.drain(..) {
                    timers.set(slot, at, key);
                }
            }
        }
    }
}

impl<T: Message, S: State, R: 'static, O: 'static> StageCore for OnCore<T, S, R, O> {
    fn apply(
        &mut self,
        msgs: &mut (dyn Any + Send),
        protocol: &mut Protocol<Pending>,
        out: &mut Out,
    ) -> usize {
        let msgs: &mut Vec<KeyedMsg<T>> = msgs.downcast_mut().expect("a batch of this stage");
        let mut misrouted = 0;
        for msg in msgs.drain(..) {
            let slot = slot_of(msg.hash, self.n_slots);
            if self.clock.is_late(slot, msg.event) {
                // Lateness is judged on arrival: a message that waits for its slot is applied
                // once the slot is here, when this core's watermark may have passed it.
                match protocol.route(slot) {
                    Route::Misrouted => misrouted += 1,
                    // Replayed to the slot's restored copy.
                    Route::Forsaken => {}
                    Route::Apply | Route::Buffer => self.late_one(msg, out),
                }
                continue;
            }
            match protocol.route(slot) {
                Route::Apply => self.apply_one(msg, slot, out),
                Route::Buffer => {
                    let stage = self.fns.stage;
                    let msg = Box::new(msg);
                    protocol.buffer(slot, Pending { stage, msg });
                }
                Route::Misrouted => misrouted += 1,
                Route::Forsaken => {}
            }
        }
        misrouted
    }

    fn apply_pending(&mut self, msg: Box<dyn Any + Send>, out: &mut Out) {
        let msg: Box<KeyedMsg<T>> = msg.downcast().expect("a message of this stage");
        let slot = slot_of(msg.hash, self.n_slots);
        // On time where it arrived, but the slot may have come with a later watermark.
        if self.clock.is_below_floor(slot, msg.event) {
            return self.late_one(*msg, out);
        }
        self.apply_one(*msg, slot, out)
    }

    fn take_batches(&mut self, each: &mut dyn FnMut(CoreId, Batch)) {
        self.outlet.take_batches(each)
    }

    fn catch_up(&mut self, out: &mut Out) {
        if let Some(w) = self.clock.watermark() {
            self.advance(Time::Event(w), now_ns(), out)
        }
    }

    fn leave(&mut self, slot: u32) {
        self.timers.freeze(slot);
        self.clock.leave(slot);
    }

    fn stay(&mut self, slot: u32) {
        if self.clock.stay(slot) {
            self.timers.thaw(slot);
        }
    }

    fn leaving(&self) -> Vec<u32> {
        self.clock.leaving()
    }

    fn advance(&mut self, at: Time, since_ns: u64, out: &mut Out) {
        let (clock, upto) = split(at);
        if clock == Clock::Event {
            self.clock.advance(upto);
        }
        let Some(on_timer) = self.fns.on_timer.clone() else {
            return;
        };
        for (slot, timer) in self.timers.due(clock, upto) {
            self.changed[slot as usize] = true;
            let Self {
                fns,
                store,
                timers,
                outlet,
                clock: stage_clock,
                requested,
                ..
            } = self;
            let hash = stable_hash(&timer.key);
            let state = store.entry(hash, &timer.key);
            let event_time = (clock == Clock::Event).then_some(timer.due);
            let event = event_time.unwrap_or(NO_TIME);
            let meta = Meta {
                ingress_ns: since_ns,
                event,
            };
            let post = &fns.post;
            let mut ctx = Context {
                emit: &mut |r| post(r, &mut |o| outlet.push(o, meta, out)),
                timers: requested,
                key: &timer.key,
                event_time,
                watermark: stage_clock.of(slot),
            };
            on_timer(state, timer.at(), &mut ctx);
            for at in requested.drain(..) {
                timers.set(slot, at, &timer.key);
            }
        }
    }

    fn take_part(&mut self, slot: u32) -> StagePart {
        // Its new owner counts it as changed.
        self.changed[slot as usize] = false;
        Part {
            memory: self.store.take(slot),
            time: self.take_time(slot),
        }
        .erase()
    }

    fn has_slot(&self, slot: u32) -> bool {
        self.store.slot_len(slot) > 0
    }

    fn put_part(&mut self, slot: u32, part: StagePart) {
        let Part { memory, time } = Part::<S>::of(part);
        if let Err(occupied) = self.store.put(slot, memory) {
            // Checked by the caller (`has_slot`): unreachable, but never lose entities.
            tracing::error!("slot {slot}: {occupied}; its entities are kept aside");
            self.frozen.insert(
                slot,
                Frozen::new(Part {
                    memory: occupied.returned,
                    time: SlotTime::default(),
                }),
            );
        }
        self.clock.adopt(slot, time.watermark);
        self.timers.put_slot(slot, time.timers);
        // Where a checkpoint last stored it is not known here: store it again.
        self.changed[slot as usize] = true;
    }

    fn mark_all_changed(&mut self) {
        for slot in 0..self.n_slots {
            // Only what is stored here: a slot of another core is that core's to write.
            if self.store.slot_len(slot) > 0 || self.timers.has_slot(slot) {
                self.changed[slot as usize] = true;
            }
        }
    }

    fn restore(&mut self, slot: u32, part: StagePart) {
        self.put_part(slot, part);
        self.changed[slot as usize] = false;
    }

    fn snapshot(&mut self, each: &mut dyn FnMut(SavedPart)) -> Result<(), ArchiveError> {
        let with_timers = self.fns.on_timer.is_some();
        for slot in 0..self.n_slots {
            if !std::mem::take(&mut self.changed[slot as usize]) {
                continue;
            }
            let serialize = |reason: BoxedError| ArchiveError::Serialize {
                slot,
                reason: reason.to_string(),
            };
            let memory = self.store.slot_mut(slot);
            let entities = memory.len() as u32;
            let memory = memory.write_archive(AlignedVec::new()).map_err(serialize)?;
            let timers = if with_timers {
                let time = SlotTime {
                    watermark: self.clock.of(slot),
                    timers: self.timers.of_slot(slot),
                };
                Some(rkyv::to_bytes::<BoxedError>(&time).map_err(serialize)?)
            } else {
                None
            };
            each(SavedPart {
                stage: self.fns.stage,
                slot,
                entities,
                memory,
                timers,
            });
        }
        Ok(())
    }

    fn freeze(&mut self, slot: u32) -> Arc<dyn FrozenPart> {
        self.changed[slot as usize] = false;
        if !self.frozen.contains_key(&slot) {
            let part = Part {
                memory: self.store.take(slot),
                time: self.take_time(slot),
            };
            self.frozen.insert(slot, Frozen::new(part));
        }
        Arc::new(FrozenShare {
            part: self.frozen[&slot].clone(),
            with_timers: self.fns.on_timer.is_some(),
        })
    }

    fn keep_frozen(&mut self, slot: u32, part: StagePart) {
        self.frozen.insert(slot, Frozen::new(Part::<S>::of(part)));
    }

    fn release(&mut self, slot: u32) {
        self.frozen.remove(&slot);
    }

    fn entities(&self) -> usize {
        self.store.len() + self.frozen.values().map(|f| f.entities()).sum::<usize>()
    }

    fn state_bytes(&self) -> u64 {
        self.store.byte_len() as u64
    }

    fn applied(&self) -> u64 {
        self.applied
    }

    fn late(&self) -> u64 {
        self.late
    }

    fn timers(&self) -> usize {
        self.timers.len()
    }
}

/// The old owner's copy of a stage's share of a slot handed to another node (or refused by a
/// core of its own).
struct Frozen<S: State>(Mutex<Part<S>>);

impl<S: State> Frozen<S> {
    fn new(part: Part<S>) -> Arc<Self> {
        Arc::new(Frozen(Mutex::new(part)))
    }

    fn entities(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .memory
            .len()
    }
}

struct FrozenShare<S: State> {
    part: Arc<Frozen<S>>,
    with_timers: bool,
}

impl<S: State> FrozenPart for FrozenShare<S> {
    fn archive(
        &self,
        slot: u32,
        buf: &mut Option<AlignedVec>,
        parts: &mut Vec<AlignedVec>,
    ) -> Result<u32, ArchiveError> {
        let mut part = self.part.0.lock().unwrap_or_else(PoisonError::into_inner);
        let serialize = |reason: BoxedError| ArchiveError::Serialize {
            slot,
            reason: reason.to_string(),
        };
        let memory = part
            .memory
            .write_archive(buf.take().unwrap_or_default())
            .map_err(serialize)?;
        parts.push(memory);
        if self.with_timers {
            parts.push(rkyv::to_bytes::<BoxedError>(&part.time).map_err(serialize)?);
        }
        Ok(part.memory.len() as u32)
    }
}
