//! The erased form of an app that the runtime drives: per-connection [`SourcePipeline`] objects
//! (decode, event time, stateless steps, the first `key_by`, batches per owner core) and one
//! [`Stages`] per core: the migration protocol's view of the slots, and every keyed stage's
//! entities, timers and steps up to the next stage's `key_by` or a sink.
//!
//! Messages cross cores as `Box<dyn Any>` batches of a `Vec<KeyedMsg<T>>`, tagged with the
//! stage they are for: one allocation per batch, never per message. A slot number means the same
//! range of key hashes in every stage, so slot s of every stage lives on one core and moves as
//! one [`MovedSlot`]; one protocol covers them all, and a message buffered for a slot on its way
//! keeps its place among every stage's messages.

mod outlet;
mod stage;

use std::any::Any;
use std::sync::Arc;

use thiserror::Error;

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

pub(crate) use self::outlet::{Discard, Outlet, OutletDef, SourceDef, Tap, Taps, ToSink, ToStage};
pub(crate) use self::stage::{Late, StageFns, Typed};
use crate::archive::{ArchiveError, SlotArchive};
use crate::checkpoint::{Alignment, BarrierError};
use crate::metrics::now_ns;
use crate::migration::{Protocol, ProtocolError, Switched, Transition};
use crate::routing::{CoreId, Move, RoutingTable};
use crate::sink_buffer::SinkBuffer;
use crate::step::{Context, DecodeError, Emit, Time};

// The app's closures, erased: the builder (`app.rs`) makes them, the runtime calls them.
pub(crate) type Decode<I> = Arc<dyn Fn(&[u8]) -> Result<I, DecodeError> + Send + Sync>;
pub(crate) type Chain<I, T> = Arc<dyn Fn(I, &mut dyn FnMut(T)) + Send + Sync>;
pub(crate) type KeyFn<T> = Arc<dyn Fn(&T) -> &[u8] + Send + Sync>;
/// A stateful step: plain (`stateful`: an emitter only, the hot path of most apps, called
/// directly) or with a context (`process`: timers, key, times).
pub(crate) enum StepFn<S, T, R> {
    Plain(PlainStep<S, T, R>),
    Timed(TimedStep<S, T, R>),
}
pub(crate) type PlainStep<S, T, R> = Arc<dyn Fn(&mut S, T, &mut Emit<R>) + Send + Sync>;
pub(crate) type TimedStep<S, T, R> = Arc<dyn Fn(&mut S, T, &mut Context<R>) + Send + Sync>;
pub(crate) type TimerFn<S, R> = Arc<dyn Fn(&mut S, Time, &mut Context<R>) + Send + Sync>;
pub(crate) type Encode<O> = Arc<dyn Fn(&O, &mut Vec<u8>) + Send + Sync>;
pub(crate) type Stamp<I> = Arc<dyn Fn(&I) -> u64 + Send + Sync>;

pub(crate) use crate::time::NO_TIME;

/// Extends a chain of stateless steps by one step.
pub(crate) fn then<I: 'static, T: 'static, U: 'static>(
    chain: Chain<I, T>,
    step: impl Fn(T, &mut Emit<U>) + Send + Sync + 'static,
) -> Chain<I, U> {
    Arc::new(move |input, out| chain(input, &mut |t| step(t, &mut Emit(out))))
}

/// A batch that could not be encoded for, or decoded from, another node.
#[derive(Debug, Error)]
pub(crate) enum BatchError {
    #[error("batch archive: {0}")]
    Archive(#[source] BoxedError),
    #[error("a batch for stage {0}, and the app has {1}")]
    NoStage(u32, usize),
}

/// A batch of keyed messages for one core's stage `stage`: a `Vec<KeyedMsg<T>>` behind `Any`.
pub(crate) struct Batch {
    pub stage: u32,
    /// The core that routed it (set as it leaves that core): what barrier alignment holds back.
    pub from: CoreId,
    pub msgs: Box<dyn Any + Send>,
}

/// A message after `key_by`, on its way to the core that owns its slot.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct KeyedMsg<T> {
    hash: u64,
    ingress_ns: u64,
    /// Event time, or [`NO_TIME`].
    event: u64,
    value: T,
}

/// Where a stage's outputs go: the sink buffers of this core, and the routing table for the
/// next stage's keys.
pub(crate) struct Out<'a> {
    pub sinks: &'a mut [SinkBuffer],
    pub routes: &'a RoutingTable,
}

/// A message's times, passed along the steps after its stage.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub ingress_ns: u64,
    pub event: u64,
}

/// The app as the runtime sees it.
pub(crate) struct Dataflow {
    /// Per source: makes the part that runs on the core reading one of its connections.
    pub sources: Vec<Arc<dyn Fn() -> Box<dyn SourcePipeline> + Send + Sync>>,
    /// The keyed stages, in pipeline order.
    pub stages: Vec<Arc<dyn StageDef>>,
    /// The sinks' names, in the order outputs index them.
    pub sinks: Vec<String>,
}

impl Dataflow {
    /// The part that runs on the core reading a connection of source `source`.
    pub fn source_pipeline(&self, source: usize) -> Box<dyn SourcePipeline> {
        (self.sources[source])()
    }

    /// The keyed part of core `me`, owning what `table` gives it.
    pub fn keyed(
        &self,
        me: CoreId,
        table: &RoutingTable,
        producers: impl IntoIterator<Item = CoreId>,
    ) -> Stages {
        Stages {
            me,
            protocol: Protocol::new(me, table),
            stages: self
                .stages
                .iter()
                .map(|s| s.core(table.n_slots()))
                .collect(),
            local: Vec::new(),
            alignment: Alignment::new(self.stages.len(), producers),
            held: Vec::new(),
        }
    }

    /// A stage's share of a slot read back from a checkpoint: its archive and, if the stage
    /// has timers, theirs.
    pub fn read_part(
        &self,
        stage: u32,
        slot: u32,
        n_slots: u32,
        parts: Vec<AlignedVec>,
    ) -> Result<StagePart, ArchiveError> {
        let def = self
            .stages
            .get(stage as usize)
            .ok_or(ArchiveError::PartCount {
                slot,
                got: stage as usize + 1,
                want: self.stages.len(),
            })?;
        def.receive(slot, n_slots, &mut parts.into_iter())
    }

    fn stage(&self, stage: u32) -> Result<&Arc<dyn StageDef>, BatchError> {
        (self.stages.get(stage as usize)).ok_or(BatchError::NoStage(stage, self.stages.len()))
    }

    /// A batch as bytes, to cross to another node.
    pub fn encode_batch(&self, batch: &Batch) -> Result<AlignedVec, BatchError> {
        self.stage(batch.stage)?.encode_batch(&*batch.msgs)
    }

    /// A batch from another node (its archive, as sent), validated before it is read.
    pub fn decode_batch(
        &self,
        stage: u32,
        from: CoreId,
        bytes: &AlignedVec,
    ) -> Result<Batch, BatchError> {
        let msgs = self.stage(stage)?.decode_batch(bytes)?;
        Ok(Batch { stage, from, msgs })
    }

    /// A slot from another node (its archive, as sent), checked; its buffers become the
    /// slot's storage, for the new owner to adopt.
    pub fn receive_slot(
        &self,
        archive: SlotArchive,
        n_slots: u32,
    ) -> Result<MovedSlot, ArchiveError> {
        let (slot, want) = (archive.slot, archive.entities);
        let parts = archive.split()?;
        let expected: usize = (self.stages.iter())
            .map(|s| 1 + usize::from(s.has_timers()))
            .sum();
        if parts.len() != expected {
            return Err(ArchiveError::PartCount {
                slot,
                got: parts.len(),
                want: expected,
            });
        }
        let mut parts = parts.into_iter();
        let mut stage_parts = Vec::with_capacity(self.stages.len());
        for s in &self.stages {
            stage_parts.push(s.receive(slot, n_slots, &mut parts)?);
        }
        let moved = MovedSlot::new(slot, stage_parts);
        if moved.entities != want {
            return Err(ArchiveError::Count {
                slot,
                got: moved.entities as usize,
                want,
            });
        }
        Ok(moved)
    }
}

/// One stage's share of a moving slot: its entities and their timers (a `stage::Part<S>`).
pub(crate) struct StagePart {
    pub entities: u32,
    pub bytes: u64,
    pub part: Box<dyn Any + Send>,
}

/// One stage's share of a slot, archived for a checkpoint: its entities, and its timers (with
/// the slot's watermark) if the stage has any.
pub(crate) struct SavedPart {
    pub stage: u32,
    pub slot: u32,
    pub entities: u32,
    pub memory: AlignedVec,
    pub timers: Option<AlignedVec>,
}

/// A slot's entities of every stage on their way to a core of this node, as they are: moved by
/// ownership, never copied.
pub(crate) struct MovedSlot {
    pub slot: u32,
    pub entities: u32,
    /// Bytes of the slot's arrays.
    pub bytes: u64,
    parts: Vec<StagePart>,
}

impl MovedSlot {
    fn new(slot: u32, parts: Vec<StagePart>) -> Self {
        MovedSlot {
            slot,
            entities: parts.iter().map(|p| p.entities).sum(),
            bytes: parts.iter().map(|p| p.bytes).sum(),
            parts,
        }
    }
}

impl std::fmt::Debug for MovedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MovedSlot({}, {} entities)", self.slot, self.entities)
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

/// One stage's frozen share of a slot handed to another node.
pub(crate) trait FrozenPart: Send + Sync {
    /// Appends this stage's archives (its entities, then its timers if it has any) to
    /// `parts`; the first archive of all is written into `buf`'s memory. Returns the entities.
    fn archive(
        &self,
        slot: u32,
        buf: &mut Option<AlignedVec>,
        parts: &mut Vec<AlignedVec>,
    ) -> Result<u32, ArchiveError>;
}

struct FrozenSlot {
    slot: u32,
    parts: Vec<Arc<dyn FrozenPart>>,
}

impl OutgoingSlot for FrozenSlot {
    fn slot(&self) -> u32 {
        self.slot
    }

    fn archive_in(&self, buf: AlignedVec) -> Result<SlotArchive, ArchiveError> {
        let (mut buf, mut parts, mut entities) = (Some(buf), Vec::new(), 0);
        for part in &self.parts {
            entities += part.archive(self.slot, &mut buf, &mut parts)?;
        }
        Ok(SlotArchive::join(self.slot, entities, parts))
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
    /// The connection's watermark: its largest event time so far minus the allowed lateness
    /// (`None` before its first stamped message, or if its source stamps none).
    fn watermark(&self) -> Option<u64>;
    /// The largest event time read so far.
    fn latest(&self) -> Option<u64>;
    /// Goes on from a previous reader's largest event time.
    fn resume(&mut self, latest: Option<u64>);
}

/// A slot its new owner could not adopt (a runtime bug: the memory itself was checked or
/// never left the node), given back so it is not lost.
#[derive(Debug, Error)]
#[error("{reason}")]
pub(crate) struct Refused {
    pub reason: String,
    pub moved: MovedSlot,
}

/// The app's part for one stage, made once: its per-core part, and its batches' and slots'
/// archives.
pub(crate) trait StageDef: Send + Sync {
    fn core(&self, n_slots: u32) -> Box<dyn StageCore>;
    /// Whether the stage sets timers (and so its slots carry them).
    fn has_timers(&self) -> bool;
    fn encode_batch(&self, msgs: &(dyn Any + Send)) -> Result<AlignedVec, BatchError>;
    fn decode_batch(&self, bytes: &AlignedVec) -> Result<Box<dyn Any + Send>, BatchError>;
    /// This stage's share of a received slot, from the archive's next parts.
    fn receive(
        &self,
        slot: u32,
        n_slots: u32,
        parts: &mut dyn Iterator<Item = AlignedVec>,
    ) -> Result<StagePart, ArchiveError>;
}

/// A buffered message for a slot on its way here: a `KeyedMsg<T>` of stage `stage`.
pub(crate) struct Pending {
    stage: u32,
    msg: Box<dyn Any + Send>,
}

/// One stage on one core: its entities, timers and steps.
pub(crate) trait StageCore {
    /// Applies (or buffers, per `protocol`) a batch for this stage. Returns how many messages
    /// were misrouted.
    fn apply(
        &mut self,
        msgs: &mut (dyn Any + Send),
        protocol: &mut Protocol<Pending>,
        out: &mut Out,
    ) -> usize;
    /// Applies one message that waited for its slot.
    fn apply_pending(&mut self, msg: Box<dyn Any + Send>, out: &mut Out);
    /// Takes the batches waiting for the next stage, with the core each is for.
    fn take_batches(&mut self, each: &mut dyn FnMut(CoreId, Batch));
    /// Fires the timers due at `at` (an event time: the stage's watermark has reached it);
    /// what they emit counts its latency from `since_ns`.
    fn advance(&mut self, at: Time, since_ns: u64, out: &mut Out);
    /// Fires the timers the stage's watermark here has passed (those of a slot just adopted).
    fn catch_up(&mut self, out: &mut Out);
    /// `slot` will leave: its timers wait from now on, and it keeps the watermark it has
    /// reached, for its new owner (nothing has been routed there yet).
    fn leave(&mut self, slot: u32);
    /// A change that would have moved `slot` was called off: it stays, its timers fire again.
    fn stay(&mut self, slot: u32);
    /// Slots that [`Self::leave`] was called for and that have not left.
    fn leaving(&self) -> Vec<u32>;
    fn take_part(&mut self, slot: u32) -> StagePart;
    fn has_slot(&self, slot: u32) -> bool;
    fn put_part(&mut self, slot: u32, part: StagePart);
    fn freeze(&mut self, slot: u32) -> Arc<dyn FrozenPart>;
    fn keep_frozen(&mut self, slot: u32, part: StagePart);
    /// Archives every slot changed since the last call (its entities and timers), for a
    /// checkpoint; they count as unchanged from then on.
    fn snapshot(&mut self, each: &mut dyn FnMut(SavedPart)) -> Result<(), ArchiveError>;
    fn mark_all_changed(&mut self);
    /// Puts a slot read back from a checkpoint in: unchanged since that checkpoint.
    fn restore(&mut self, slot: u32, part: StagePart);
    fn release(&mut self, slot: u32);
    fn entities(&self) -> usize;
    fn state_bytes(&self) -> u64;
    fn applied(&self) -> u64;
    fn late(&self) -> u64;
    fn timers(&self) -> usize;
}

/// One core's keyed part: the slot protocol and every stage.
pub(crate) struct Stages {
    me: CoreId,
    protocol: Protocol<Pending>,
    stages: Vec<Box<dyn StageCore>>,
    /// Batches for this core's own next stage, applied before this call returns.
    local: Vec<Batch>,
    /// Which producers passed a checkpoint's barrier, per stage.
    alignment: Alignment,
    /// Batches from producers past their barrier, waiting until their stage is snapshotted,
    /// in arrival order.
    held: Vec<Batch>,
}

/// Where a core sends a batch for another core.
pub(crate) type SendBatch<'a> = &'a mut dyn FnMut(CoreId, Batch);

impl Stages {
    /// Applies (or buffers, for a slot on its way here) a batch, and everything it leads to
    /// on this core's later stages; batches for other cores go to `send`. Returns how many
    /// messages were misrouted (a bug; they are logged and counted).
    pub fn apply(&mut self, mut batch: Batch, out: &mut Out, send: SendBatch) -> usize {
        let stage = batch.stage as usize;
        if self.alignment.holds(batch.from, stage) {
            self.held.push(batch);
            return 0;
        }
        let Some(s) = self.stages.get_mut(stage) else {
            return 1;
        };
        let misrouted = s.apply(&mut *batch.msgs, &mut self.protocol, out);
        misrouted + self.route_from(stage, out, send)
    }

    /// Takes each stage's outputs for the next, from `first` on: this core's are applied in
    /// place (in order, so they keep their place behind what this core routed before).
    fn route_from(&mut self, first: usize, out: &mut Out, send: SendBatch) -> usize {
        let Stages {
            me,
            protocol,
            stages,
            local,
            alignment,
            held,
        } = self;
        let mut misrouted = 0;
        for i in first..stages.len() {
            stages[i].take_batches(&mut |core, mut batch| {
                batch.from = *me;
                if core == *me {
                    local.push(batch)
                } else {
                    send(core, batch)
                }
            });
            for mut batch in local.drain(..) {
                if alignment.holds(*me, batch.stage as usize) {
                    held.push(batch);
                    continue;
                }
                match stages.get_mut(batch.stage as usize) {
                    Some(s) => misrouted += s.apply(&mut *batch.msgs, protocol, out),
                    None => misrouted += 1,
                }
            }
        }
        misrouted
    }

    /// `from`'s barrier of checkpoint `checkpoint` for `stage` is here: returns the stages
    /// that are now aligned (snapshot each, in order, then [`Self::release_held`]).
    pub fn on_barrier(
        &mut self,
        checkpoint: u64,
        from: CoreId,
        stage: usize,
    ) -> Result<Vec<usize>, BarrierError> {
        self.alignment.on_barrier(checkpoint, from, stage)
    }

    /// Checkpoint `checkpoint` starts on this core.
    pub fn begin_checkpoint(&mut self, checkpoint: u64) -> Result<(), BarrierError> {
        self.alignment.begin(checkpoint)
    }

    pub fn alignment(&mut self) -> &mut Alignment {
        &mut self.alignment
    }

    /// Archives what stage `stage` changed since the last checkpoint.
    pub fn snapshot(&mut self, stage: usize) -> Result<Vec<SavedPart>, ArchiveError> {
        let mut saved = Vec::new();
        if let Some(s) = self.stages.get_mut(stage) {
            s.snapshot(&mut |p| saved.push(p))?;
        }
        Ok(saved)
    }

    /// Applies the held batches alignment no longer holds, in the order they came.
    pub fn release_held(&mut self, out: &mut Out, send: SendBatch) -> usize {
        let held = std::mem::take(&mut self.held);
        let mut misrouted = 0;
        for batch in held {
            // Held again if its stage still aligns: `apply` checks.
            misrouted += self.apply(batch, out, send);
        }
        misrouted
    }

    /// Counts every slot as changed: the next checkpoint archives them all.
    pub fn mark_all_changed(&mut self) {
        for s in &mut self.stages {
            s.mark_all_changed();
        }
    }

    /// Puts slots read back from a checkpoint in (before this core runs anything).
    pub fn restore(&mut self, parts: Vec<(u32, u32, StagePart)>) {
        for (stage, slot, part) in parts {
            if let Some(s) = self.stages.get_mut(stage as usize) {
                s.restore(slot, part);
            }
        }
    }

    /// Stage `stage`'s watermark reached `at` (moved by frames read at `since_ns`): fires its
    /// event-time timers, and routes what they emit.
    pub fn watermark(
        &mut self,
        stage: usize,
        at: u64,
        since_ns: u64,
        out: &mut Out,
        send: SendBatch,
    ) -> usize {
        let Some(s) = self.stages.get_mut(stage) else {
            return 0;
        };
        s.advance(Time::Event(at), since_ns, out);
        self.route_from(stage, out, send)
    }

    /// The wall clock reached `now_ms`: fires every stage's processing-time timers (not while
    /// a checkpoint aligns here: a stage already snapshotted would change after its snapshot
    /// while its outputs still count as the checkpoint's; they fire at the next tick).
    pub fn clock(&mut self, now_ms: u64, out: &mut Out, send: SendBatch) -> usize {
        if self.alignment.running().is_some() {
            return 0;
        }
        let now = now_ns();
        for s in &mut self.stages {
            s.advance(Time::Processing(now_ms), now, out);
        }
        self.route_from(0, out, send)
    }

    pub fn prepare(&mut self, t: &Transition) -> Result<(), ProtocolError> {
        self.protocol.prepare(t)?;
        for m in t.moves.iter().filter(|m| m.from == self.me) {
            for s in &mut self.stages {
                s.leave(m.slot);
            }
        }
        Ok(())
    }

    pub fn switch(&mut self) -> Result<Switched, ProtocolError> {
        let switched = self.protocol.switch()?;
        self.drop_slots(&switched.dropped);
        Ok(switched)
    }

    pub fn on_marker(&mut self, from: CoreId, epoch: u64) -> Result<Vec<Move>, ProtocolError> {
        self.protocol.on_marker(from, epoch)
    }

    /// Cores of another node were lost mid-step (see [`crate::migration::Protocol::lose`]):
    /// the slots that were to go to them are dropped here; returns the slots now complete and
    /// those forsaken.
    pub fn lose(&mut self, lost: &std::collections::BTreeSet<CoreId>) -> (Vec<Move>, Vec<u32>) {
        let lost = self.protocol.lose(lost);
        self.drop_slots(&lost.dropped);
        (lost.handoffs, lost.forsaken)
    }

    /// Drops the state of slots that were to go to a lost core.
    fn drop_slots(&mut self, slots: &[u32]) {
        for &slot in slots {
            for s in &mut self.stages {
                s.freeze(slot);
                s.release(slot);
            }
        }
    }

    /// Takes a handed-off slot out of every stage, for a core of this node to adopt as it is.
    pub fn hand_over(&mut self, slot: u32) -> MovedSlot {
        MovedSlot::new(
            slot,
            self.stages.iter_mut().map(|s| s.take_part(slot)).collect(),
        )
    }

    /// Keeps a slot its new owner refused (until [`Self::release`], which will not come).
    pub fn take_back(&mut self, refused: MovedSlot) {
        let slot = refused.slot;
        for (s, part) in self.stages.iter_mut().zip(refused.parts) {
            s.keep_frozen(slot, part);
        }
    }

    /// A slot handed off to another node, for the link to archive; it stays here until
    /// [`Self::release`], so a rejected archive can be sent again.
    pub fn send_off(&mut self, slot: u32) -> Arc<dyn OutgoingSlot> {
        let parts = self.stages.iter_mut().map(|s| s.freeze(slot)).collect();
        Arc::new(FrozenSlot { slot, parts })
    }

    /// Adopts a handed-off slot into every stage and applies the messages that waited for it,
    /// in the order they arrived. Returns how many messages were misrouted on the way on.
    pub fn adopt(
        &mut self,
        moved: MovedSlot,
        out: &mut Out,
        send: SendBatch,
    ) -> Result<usize, Refused> {
        let slot = moved.slot;
        // Every check before any change: a refusal gives the slot back whole.
        let refusal = if moved.parts.len() != self.stages.len() {
            Some(format!(
                "slot {slot} has {} stages' entities, the app {}",
                moved.parts.len(),
                self.stages.len()
            ))
        } else if self.stages.iter().any(|s| s.has_slot(slot)) {
            Some(format!("slot {slot} is already stored here"))
        } else if self.protocol.route(slot) != crate::migration::Route::Buffer {
            Some(format!("slot {slot} is not on its way here"))
        } else {
            None
        };
        if let Some(reason) = refusal {
            return Err(Refused { reason, moved });
        }
        for (s, part) in self.stages.iter_mut().zip(moved.parts) {
            s.put_part(slot, part);
        }
        let waiting = self
            .protocol
            .adopt(slot)
            .expect("checked: the slot is incoming");
        for p in waiting {
            self.stages[p.stage as usize].apply_pending(p.msg, out);
        }
        // After the waiting messages: a window they fall in closes with them.
        for s in &mut self.stages {
            s.catch_up(out);
        }
        Ok(self.route_from(0, out, send))
    }

    /// The new owner has the slot: drop what was kept of it here.
    pub fn release(&mut self, slot: u32) -> Result<(), ProtocolError> {
        self.protocol.acknowledged(slot)?;
        for s in &mut self.stages {
            s.release(slot);
        }
        Ok(())
    }

    /// Forgets the prepared steps not switched to yet; returns how many.
    pub fn abort(&mut self) -> Result<usize, ProtocolError> {
        let dropped = self.protocol.abort()?;
        for s in &mut self.stages {
            for slot in s.leaving() {
                if !self.protocol.is_leaving(slot) {
                    s.stay(slot);
                }
            }
        }
        Ok(dropped)
    }

    /// Epochs of the migration steps finished here since the last call.
    pub fn take_finished_steps(&mut self) -> Vec<u64> {
        self.protocol.take_finished()
    }

    pub fn epoch(&self) -> u64 {
        self.protocol.epoch()
    }

    /// Whether a step of a change is unfinished here (prepared, or a slot still on its way).
    pub fn in_step(&self) -> bool {
        self.protocol.in_step()
    }

    pub fn owned_slots(&self) -> usize {
        self.protocol.owned()
    }

    pub fn buffered(&self) -> usize {
        self.protocol.buffered()
    }

    pub fn entities(&self) -> usize {
        self.stages.iter().map(|s| s.entities()).sum()
    }

    /// Bytes of the slots owned here.
    pub fn state_bytes(&self) -> u64 {
        self.stages.iter().map(|s| s.state_bytes()).sum()
    }

    /// Keyed messages applied so far, every stage's.
    pub fn applied(&self) -> u64 {
        self.stages.iter().map(|s| s.applied()).sum()
    }

    /// Messages that came later than their stage's watermark.
    pub fn late(&self) -> u64 {
        self.stages.iter().map(|s| s.late()).sum()
    }

    /// Pending timers, every stage's.
    pub fn timers(&self) -> usize {
        self.stages.iter().map(|s| s.timers()).sum()
    }
}
