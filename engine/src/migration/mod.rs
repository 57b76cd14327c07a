//! The slot migration protocol of one core, as a pure state machine over plain data; the runtime
//! only carries out what it returns. One routing change is cut into steps; each step moves a
//! bounded set of slots from epoch `e` to `e + 1`:
//!
//! 1. **prepare** (every core, every step of the change, before any switches): a core learns
//!    which slots come to it and which leave. Incoming slots start buffering, so a message routed
//!    at `e + 1` can never reach a core that does not expect it.
//! 2. **switch** (every core, in any order): the core routes at `e + 1` from now on and sends an
//!    epoch marker to every old owner of a moving slot. Channels are FIFO, so nothing routed at
//!    `e` follows the marker.
//! 3. An old owner keeps applying messages of its leaving slots until it holds the markers of
//!    every producer; then the slots are complete and it hands them off.
//! 4. The new owner adopts a handed-off slot, applies the messages it buffered in arrival order,
//!    and acknowledges; the old owner keeps the slot's entities (if it sent an archive of them)
//!    until then.
//!
//! Slots that do not move are never held up: they stay `Owned` throughout.
//!
//! A core of another node lost mid-step ([`Protocol::lose`]) owes no marker any more; a slot
//! it was to hand here is forsaken (what arrives for it is dropped: a recovery restores it
//! from the checkpoint on another core and replays what it missed), and a slot this core was
//! to hand to it is dropped here (the recovery restores it too). So a switched step finishes
//! on every survivor.

mod change;
mod loss;
#[cfg(test)]
mod simulation;
mod window;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use thiserror::Error;

pub use self::change::ChangePlan;
pub use self::loss::Lost;
pub use self::window::StepWindow;
use crate::routing::{CoreId, Move, RoutingTable};

/// One step of a routing change: from the current epoch to `table.epoch()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The next epoch's table.
    pub table: Arc<RoutingTable>,
    /// The slots that change owner in this step.
    pub moves: Vec<Move>,
    /// Every core that routes keyed messages at the old epoch; each owes every old owner a marker.
    pub producers: Vec<CoreId>,
}

impl Transition {
    /// The cores giving up slots in this step.
    pub fn old_owners(&self) -> BTreeSet<CoreId> {
        self.moves.iter().map(|m| m.from).collect()
    }
}

/// A protocol violation: a bug in the runtime or the coordinator, reported, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("transition to epoch {got} does not follow epoch {current}")]
    EpochGap { current: u64, got: u64 },
    #[error("no step is in progress")]
    NoStep,
    #[error("slot {slot} is {state}, expected {expected}")]
    SlotState {
        slot: u32,
        state: &'static str,
        expected: &'static str,
    },
    #[error("marker from core {from} for epoch {epoch}, which this step does not expect")]
    UnexpectedMarker { from: CoreId, epoch: u64 },
}

/// What became of a keyed message delivered to this core.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery<M> {
    /// The core owns the slot: apply the message now.
    Apply(M),
    /// The slot is on its way here: the message waits for the handoff.
    Buffered,
    /// The core neither owns nor expects the slot: a routing bug; the message is returned.
    Misrouted(M),
    /// The slot was forsaken: dropped.
    Forsaken,
}

/// Where a keyed message for a slot goes on this core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Apply,
    Buffer,
    Misrouted,
    /// The slot was forsaken (its old owner was lost handing it here): dropped, as a recovery
    /// replays it to the slot's restored copy.
    Forsaken,
}

/// What a core must do after switching epochs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Switched {
    /// Send an epoch marker to each of these cores (after everything already sent to them).
    pub markers_to: Vec<CoreId>,
    /// Slots now complete: archive and hand them off.
    pub handoffs: Vec<Move>,
    /// Slots that were to go to a core lost before this switch: drop their state here.
    pub dropped: Vec<u32>,
    /// Slots that were to come from a core lost before this switch (the coordinator learns
    /// of them: they are restored).
    pub forsaken: Vec<u32>,
}

#[derive(Debug)]
enum SlotState<M> {
    Absent,
    Owned,
    /// Coming here from core `from` in the step to `epoch`; its messages wait in `buffer`.
    Incoming {
        epoch: u64,
        from: CoreId,
        buffer: Vec<M>,
    },
    /// Was coming here from a core that was lost: what arrives for it is dropped.
    Forsaken,
    Outgoing,
    /// Sent in the step to `epoch`; kept until the new owner acknowledges.
    HandedOff {
        epoch: u64,
    },
}

impl<M> SlotState<M> {
    fn name(&self) -> &'static str {
        match self {
            SlotState::Absent => "absent",
            SlotState::Owned => "owned",
            SlotState::Incoming { .. } => "incoming",
            SlotState::Outgoing => "outgoing",
            SlotState::HandedOff { .. } => "handed off",
            SlotState::Forsaken => "forsaken",
        }
    }
}

#[derive(Debug)]
struct Step {
    to_epoch: u64,
    switched: bool,
    outgoing: Vec<Move>,
    markers_missing: BTreeSet<CoreId>,
    marker_targets: Vec<CoreId>,
    incoming_left: usize,
    unacknowledged: usize,
    handed_off: bool,
}

impl Step {
    fn done(&self) -> bool {
        self.switched
            && self.markers_missing.is_empty()
            && self.outgoing.is_empty()
            && self.incoming_left == 0
            && self.unacknowledged == 0
    }
}

/// One core's view of slot ownership during migrations, generic over the buffered message type.
///
/// Every step of a change is prepared before the first switch, so several steps can be in flight
/// at once (switched in epoch order; they finish in any order): a slot moves at most once per
/// change, so steps share no slot, and markers name their step's epoch.
#[derive(Debug)]
pub struct Protocol<M> {
    me: CoreId,
    /// The epoch this core routes at: that of the last step it switched to.
    epoch: u64,
    slots: Vec<SlotState<M>>,
    /// Steps prepared and not yet finished here, in epoch order.
    steps: VecDeque<Step>,
    /// Epochs of steps finished since the runtime last took them.
    finished: Vec<u64>,
    /// Cores lost (a step switched after the loss is news to them too), until a change
    /// counts them among its producers again (a replacement took their ids).
    lost: BTreeSet<CoreId>,
}

impl<M> Protocol<M> {
    /// A core that owns what `table` gives it.
    pub fn new(me: CoreId, table: &RoutingTable) -> Self {
        let slots = (0..table.n_slots())
            .map(|s| {
                if table.owner(s) == me {
                    SlotState::Owned
                } else {
                    SlotState::Absent
                }
            })
            .collect();
        Self {
            me,
            epoch: table.epoch(),
            slots,
            steps: VecDeque::new(),
            finished: Vec::new(),
            lost: BTreeSet::new(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// True while a step involves this core.
    pub fn in_step(&self) -> bool {
        !self.steps.is_empty()
    }

    /// Epochs of the steps that finished here since the last call, in the order they finished.
    pub fn take_finished(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.finished)
    }

    /// Slots this core owns now (leaving slots count until they are handed off).
    pub fn owned(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, SlotState::Owned | SlotState::Outgoing))
            .count()
    }

    /// Messages waiting for incoming slots.
    pub fn buffered(&self) -> usize {
        self.slots
            .iter()
            .map(|s| match s {
                SlotState::Incoming { buffer, .. } => buffer.len(),
                _ => 0,
            })
            .sum()
    }

    /// Learns a step before anyone switches to it: starts buffering for incoming slots. Steps
    /// are prepared in epoch order, each following the last one prepared.
    pub fn prepare(&mut self, t: &Transition) -> Result<(), ProtocolError> {
        let last = self.steps.back().map_or(self.epoch, |s| s.to_epoch);
        let to_epoch = t.table.epoch();
        if to_epoch != last + 1 {
            return Err(ProtocolError::EpochGap {
                current: last,
                got: to_epoch,
            });
        }
        self.lost.retain(|c| !t.producers.contains(c));
        for m in &t.moves {
            let state = &self.slots[m.slot as usize];
            let ok = (m.to != self.me || matches!(state, SlotState::Absent | SlotState::Forsaken))
                && (m.from != self.me || matches!(state, SlotState::Owned));
            if !ok {
                let expected = if m.to == self.me { "absent" } else { "owned" };
                return Err(ProtocolError::SlotState {
                    slot: m.slot,
                    state: state.name(),
                    expected,
                });
            }
        }
        let outgoing: Vec<Move> = t
            .moves
            .iter()
            .filter(|m| m.from == self.me)
            .copied()
            .collect();
        let mut incoming_left = 0;
        for m in t.moves.iter().filter(|m| m.to == self.me) {
            self.slots[m.slot as usize] = SlotState::Incoming {
                epoch: to_epoch,
                from: m.from,
                buffer: Vec::new(),
            };
            incoming_left += 1;
        }
        for m in &outgoing {
            self.slots[m.slot as usize] = SlotState::Outgoing;
        }
        let markers_missing = if outgoing.is_empty() {
            BTreeSet::new()
        } else {
            t.producers.iter().copied().collect()
        };
        let marker_targets = t
            .old_owners()
            .into_iter()
            .filter(|&c| c != self.me)
            .collect();
        self.steps.push_back(Step {
            to_epoch,
            switched: false,
            outgoing,
            markers_missing,
            marker_targets,
            incoming_left,
            unacknowledged: 0,
            handed_off: false,
        });
        Ok(())
    }

    /// Forgets every prepared step not switched to yet (a change that ends early): their
    /// incoming slots go back to absent, their outgoing slots to owned. Steps already switched
    /// carry on. No message can wait for an unswitched step (nobody routes at its epoch yet), so
    /// a non-empty buffer is a protocol violation. Returns how many steps were dropped.
    pub fn abort(&mut self) -> Result<usize, ProtocolError> {
        let keep = self.steps.iter().take_while(|s| s.switched).count();
        let dropped: Vec<Step> = self.steps.drain(keep..).collect();
        for step in &dropped {
            for (slot, state) in self.slots.iter_mut().enumerate() {
                match state {
                    SlotState::Incoming { epoch, buffer, .. } if *epoch == step.to_epoch => {
                        if !buffer.is_empty() {
                            return Err(ProtocolError::SlotState {
                                slot: slot as u32,
                                state: "incoming with buffered messages",
                                expected: "incoming and untouched",
                            });
                        }
                        *state = SlotState::Absent;
                    }
                    _ => {}
                }
            }
            for m in &step.outgoing {
                self.slots[m.slot as usize] = SlotState::Owned;
            }
        }
        Ok(dropped.len())
    }

    /// Switches to the next prepared step's epoch: from now on this core routes with its table.
    pub fn switch(&mut self) -> Result<Switched, ProtocolError> {
        let me = self.me;
        let i = self
            .steps
            .iter()
            .position(|s| !s.switched)
            .ok_or(ProtocolError::NoStep)?;
        let step = &mut self.steps[i];
        step.switched = true;
        step.markers_missing.remove(&me);
        self.epoch = step.to_epoch;
        let markers_to = step.marker_targets.clone();
        // A loss seen before this switch applies first: nothing goes to a lost core.
        let lost = if self.lost.is_empty() {
            Lost::default()
        } else {
            self.apply_loss(&self.lost.clone())
        };
        let mut handoffs = lost.handoffs;
        handoffs.extend(self.ready_handoffs(i));
        self.finish_done();
        Ok(Switched {
            markers_to,
            handoffs,
            dropped: lost.dropped,
            forsaken: lost.forsaken,
        })
    }

    /// A producer's marker: it sends nothing more routed before `epoch + 1`. Returns the slots
    /// that became complete.
    pub fn on_marker(&mut self, from: CoreId, epoch: u64) -> Result<Vec<Move>, ProtocolError> {
        // Queued before its core was lost, read after: no step waits for it any more.
        if self.lost.contains(&from) {
            return Ok(Vec::new());
        }
        let i = self
            .steps
            .iter()
            .position(|s| s.to_epoch == epoch + 1)
            .ok_or(ProtocolError::UnexpectedMarker { from, epoch })?;
        if !self.steps[i].markers_missing.remove(&from) {
            return Err(ProtocolError::UnexpectedMarker { from, epoch });
        }
        Ok(self.ready_handoffs(i))
    }

    fn ready_handoffs(&mut self, i: usize) -> Vec<Move> {
        let step = &mut self.steps[i];
        if !step.switched || !step.markers_missing.is_empty() || step.handed_off {
            return Vec::new();
        }
        step.handed_off = true;
        step.unacknowledged += step.outgoing.len();
        for m in &step.outgoing {
            self.slots[m.slot as usize] = SlotState::HandedOff {
                epoch: step.to_epoch,
            };
        }
        std::mem::take(&mut step.outgoing)
    }

    /// Routes a keyed message for `slot` that arrived here.
    #[cfg(test)]
    pub fn deliver(&mut self, slot: u32, msg: M) -> Delivery<M> {
        match self.route(slot) {
            Route::Apply => Delivery::Apply(msg),
            Route::Buffer => {
                self.buffer(slot, msg);
                Delivery::Buffered
            }
            Route::Misrouted => Delivery::Misrouted(msg),
            Route::Forsaken => Delivery::Forsaken,
        }
    }

    /// What to do with a keyed message for `slot` (see [`Self::deliver`]), without taking it:
    /// a caller whose messages are typed per stage buffers them erased, and only those.
    pub fn route(&self, slot: u32) -> Route {
        match &self.slots[slot as usize] {
            SlotState::Owned | SlotState::Outgoing => Route::Apply,
            SlotState::Incoming { .. } => Route::Buffer,
            SlotState::Absent | SlotState::HandedOff { .. } => Route::Misrouted,
            SlotState::Forsaken => Route::Forsaken,
        }
    }

    /// Whether `slot` is leaving this core (in a prepared or switched step, not yet
    /// acknowledged by its new owner).
    pub fn is_leaving(&self, slot: u32) -> bool {
        matches!(
            self.slots[slot as usize],
            SlotState::Outgoing | SlotState::HandedOff { .. }
        )
    }

    /// Keeps a message for an incoming slot (one [`Self::route`] said to buffer) until the
    /// slot is adopted; a message for any other slot is dropped.
    pub fn buffer(&mut self, slot: u32, msg: M) {
        if let SlotState::Incoming { buffer, .. } = &mut self.slots[slot as usize] {
            buffer.push(msg);
        }
    }

    /// The handoff of `slot` is adopted: the slot is owned here; returns the messages that
    /// waited for it, in arrival order.
    pub fn adopt(&mut self, slot: u32) -> Result<Vec<M>, ProtocolError> {
        let state = std::mem::replace(&mut self.slots[slot as usize], SlotState::Owned);
        let SlotState::Incoming { epoch, buffer, .. } = state else {
            let name = state.name();
            self.slots[slot as usize] = state;
            return Err(ProtocolError::SlotState {
                slot,
                state: name,
                expected: "incoming",
            });
        };
        if let Some(step) = self.step_mut(epoch) {
            step.incoming_left -= 1;
        }
        self.finish_done();
        Ok(buffer)
    }

    /// The new owner acknowledged `slot`: its entities here may be dropped.
    pub fn acknowledged(&mut self, slot: u32) -> Result<(), ProtocolError> {
        let state = &self.slots[slot as usize];
        let &SlotState::HandedOff { epoch } = state else {
            return Err(ProtocolError::SlotState {
                slot,
                state: state.name(),
                expected: "handed off",
            });
        };
        self.slots[slot as usize] = SlotState::Absent;
        if let Some(step) = self.step_mut(epoch) {
            step.unacknowledged -= 1;
        }
        self.finish_done();
        Ok(())
    }

    /// The step to `epoch` (unfinished while a slot of it is incoming or handed off).
    fn step_mut(&mut self, epoch: u64) -> Option<&mut Step> {
        self.steps.iter_mut().find(|s| s.to_epoch == epoch)
    }

    fn finish_done(&mut self) {
        let finished = &mut self.finished;
        self.steps.retain(|s| {
            let done = s.done();
            if done {
                finished.push(s.to_epoch);
            }
            !done
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots 0..4; core 0 owns 0,1 and core 1 owns 2,3 at epoch 0; slot 1 moves to core 1.
    fn setup() -> (RoutingTable, Transition) {
        let t0 = RoutingTable::uniform(4, 2);
        let moves = vec![Move {
            slot: 1,
            from: 0,
            to: 1,
        }];
        let t1 = t0.with_moves(&moves);
        (
            t0,
            Transition {
                table: Arc::new(t1),
                moves,
                producers: vec![0, 1],
            },
        )
    }

    #[test]
    fn old_owner_applies_until_every_marker_then_hands_off() {
        let (t0, tr) = setup();
        let mut p = Protocol::<&str>::new(0, &t0);
        p.prepare(&tr).unwrap();
        assert_eq!(
            p.deliver(1, "late e0 message"),
            Delivery::Apply("late e0 message")
        );
        let sw = p.switch().unwrap();
        assert_eq!(sw.markers_to, Vec::<CoreId>::new(), "no other old owner");
        assert!(sw.handoffs.is_empty(), "core 1's marker is missing");
        assert_eq!(
            p.deliver(1, "still e0 from core 1"),
            Delivery::Apply("still e0 from core 1")
        );
        let ready = p.on_marker(1, 0).unwrap();
        assert_eq!(
            ready,
            vec![Move {
                slot: 1,
                from: 0,
                to: 1
            }]
        );
        assert!(matches!(p.deliver(1, "x"), Delivery::Misrouted("x")));
        assert!(p.in_step(), "waits for the acknowledgement");
        p.acknowledged(1).unwrap();
        assert!(!p.in_step());
        assert_eq!(p.epoch(), 1);
        assert_eq!(p.owned(), 1);
    }

    /// A change that ends before its steps are switched leaves every slot where it was, on the
    /// old and the new owner alike, and the next change prepares from the same epoch.
    #[test]
    fn an_aborted_step_leaves_ownership_as_before() {
        let (t0, tr) = setup();
        let mut old = Protocol::<&str>::new(0, &t0);
        let mut new = Protocol::<&str>::new(1, &t0);
        old.prepare(&tr).unwrap();
        new.prepare(&tr).unwrap();
        assert_eq!(old.abort(), Ok(1));
        assert_eq!(new.abort(), Ok(1));
        assert!(!old.in_step() && !new.in_step());
        assert_eq!((old.owned(), new.owned()), (2, 2));
        assert_eq!(old.deliver(1, "m"), Delivery::Apply("m"));
        assert_eq!(new.deliver(1, "m"), Delivery::Misrouted("m"));
        assert_eq!(old.epoch(), 0);
        old.prepare(&tr).unwrap();
        assert_eq!(old.switch().map(|s| s.handoffs.len()), Ok(0));
    }

    /// Steps already switched carry on after an abort; only the later ones are dropped.
    #[test]
    fn an_abort_keeps_switched_steps() {
        let (t0, tr) = setup();
        let moves = vec![Move {
            slot: 0,
            from: 0,
            to: 1,
        }];
        let second = Transition {
            table: Arc::new(tr.table.with_moves(&moves)),
            moves,
            producers: vec![0, 1],
        };
        let mut p = Protocol::<u8>::new(1, &t0);
        p.prepare(&tr).unwrap();
        p.prepare(&second).unwrap();
        p.switch().unwrap();
        assert_eq!(p.deliver(1, 7), Delivery::Buffered, "slot 1 still comes");
        assert_eq!(p.abort(), Ok(1));
        assert_eq!(p.deliver(0, 8), Delivery::Misrouted(8), "slot 0 stays away");
        assert_eq!(p.adopt(1), Ok(vec![7]));
        assert!(!p.in_step());
        assert_eq!(p.owned(), 3);
    }

    #[test]
    fn marker_before_own_switch_counts() {
        let (t0, tr) = setup();
        let mut p = Protocol::<u8>::new(0, &t0);
        p.prepare(&tr).unwrap();
        assert!(p.on_marker(1, 0).unwrap().is_empty(), "not switched yet");
        let sw = p.switch().unwrap();
        assert_eq!(sw.handoffs.len(), 1);
    }

    #[test]
    fn new_owner_buffers_until_adopting_and_returns_in_order() {
        let (t0, tr) = setup();
        let mut p = Protocol::<u32>::new(1, &t0);
        assert!(matches!(p.deliver(1, 0), Delivery::Misrouted(0)));
        p.prepare(&tr).unwrap();
        assert_eq!(p.deliver(1, 1), Delivery::Buffered);
        let sw = p.switch().unwrap();
        assert_eq!(
            sw.markers_to,
            vec![0],
            "core 0 gives up a slot and needs our marker"
        );
        assert!(sw.handoffs.is_empty());
        assert_eq!(p.deliver(1, 2), Delivery::Buffered);
        assert_eq!(
            p.deliver(2, 9),
            Delivery::Apply(9),
            "unmoved slots never wait"
        );
        assert_eq!(p.buffered(), 2);
        assert_eq!(p.adopt(1).unwrap(), vec![1, 2]);
        assert_eq!(p.deliver(1, 3), Delivery::Apply(3));
        assert!(!p.in_step());
        assert_eq!(p.owned(), 3);
    }

    #[test]
    fn bystander_finishes_at_switch() {
        let t0 = RoutingTable::uniform(6, 3);
        let moves = vec![Move {
            slot: 0,
            from: 0,
            to: 1,
        }];
        let tr = Transition {
            table: Arc::new(t0.with_moves(&moves)),
            moves,
            producers: vec![0, 1, 2],
        };
        let mut p = Protocol::<u8>::new(2, &t0);
        p.prepare(&tr).unwrap();
        assert_eq!(p.switch().unwrap().markers_to, vec![0]);
        assert!(!p.in_step());
    }

    #[test]
    fn violations_are_errors() {
        let (t0, tr) = setup();
        let mut p = Protocol::<u8>::new(0, &t0);
        assert_eq!(p.switch(), Err(ProtocolError::NoStep));
        assert_eq!(
            p.on_marker(1, 0),
            Err(ProtocolError::UnexpectedMarker { from: 1, epoch: 0 })
        );
        let mut skip = tr.clone();
        skip.table = Arc::new(tr.table.with_moves(&[]));
        assert_eq!(
            p.prepare(&skip),
            Err(ProtocolError::EpochGap { current: 0, got: 2 })
        );
        p.prepare(&tr).unwrap();
        assert_eq!(
            p.prepare(&tr),
            Err(ProtocolError::EpochGap { current: 1, got: 1 }),
            "the next step to prepare goes to epoch 2"
        );
        assert_eq!(
            p.on_marker(1, 5),
            Err(ProtocolError::UnexpectedMarker { from: 1, epoch: 5 })
        );
        assert_eq!(
            p.on_marker(7, 0),
            Err(ProtocolError::UnexpectedMarker { from: 7, epoch: 0 })
        );
        assert!(matches!(
            p.adopt(1),
            Err(ProtocolError::SlotState { slot: 1, .. })
        ));
        assert!(matches!(
            p.acknowledged(0),
            Err(ProtocolError::SlotState { slot: 0, .. })
        ));
        p.switch().unwrap();
        assert_eq!(p.switch(), Err(ProtocolError::NoStep));
        assert_eq!(p.on_marker(1, 0).unwrap().len(), 1);
        assert_eq!(
            p.on_marker(1, 0),
            Err(ProtocolError::UnexpectedMarker { from: 1, epoch: 0 })
        );
    }

    #[test]
    fn prepare_checks_slot_states() {
        let (t0, _) = setup();
        let moves = vec![Move {
            slot: 2,
            from: 0,
            to: 1,
        }]; // core 0 does not own slot 2
        let tr = Transition {
            table: Arc::new(t0.with_moves(&[])),
            moves,
            producers: vec![0, 1],
        };
        let mut p = Protocol::<u8>::new(0, &t0);
        assert!(matches!(
            p.prepare(&tr),
            Err(ProtocolError::SlotState { slot: 2, .. })
        ));
        let mut q = Protocol::<u8>::new(1, &t0);
        let moves = vec![Move {
            slot: 2,
            from: 0,
            to: 1,
        }]; // core 1 already owns slot 2
        let tr = Transition {
            table: Arc::new(t0.with_moves(&[])),
            moves,
            producers: vec![0, 1],
        };
        assert!(matches!(
            q.prepare(&tr),
            Err(ProtocolError::SlotState { slot: 2, .. })
        ));
    }

    #[test]
    fn steps_in_flight_together_finish_in_any_order() {
        // Core 0 owns slots 0..4 of 8 and gives slot 0 to core 1 at epoch 1, slot 1 at epoch 2.
        let t0 = RoutingTable::uniform(8, 2);
        let step = |from: &RoutingTable, slot: u32| {
            let moves = vec![Move {
                slot,
                from: 0,
                to: 1,
            }];
            Transition {
                table: Arc::new(from.with_moves(&moves)),
                moves,
                producers: vec![0, 1],
            }
        };
        let s1 = step(&t0, 0);
        let s2 = step(&s1.table, 1);
        let mut p = Protocol::<u8>::new(0, &t0);
        let mut q = Protocol::<u8>::new(1, &t0);
        for c in [&mut p, &mut q] {
            c.prepare(&s1).unwrap();
            c.prepare(&s2).unwrap();
        }
        assert_eq!(
            q.deliver(1, 7),
            Delivery::Buffered,
            "incoming from prepare on"
        );
        assert!(p.switch().unwrap().handoffs.is_empty());
        assert!(p.switch().unwrap().handoffs.is_empty());
        assert_eq!(p.epoch(), 2);
        q.switch().unwrap();
        q.switch().unwrap();
        // Core 1's marker for epoch 2 overtakes nothing (FIFO), but step 2 may finish first.
        assert_eq!(p.on_marker(1, 0).unwrap(), s1.moves);
        assert_eq!(p.on_marker(1, 1).unwrap(), s2.moves);
        assert_eq!(q.adopt(1).unwrap(), vec![7]);
        p.acknowledged(1).unwrap();
        assert_eq!(q.take_finished(), vec![2]);
        assert_eq!(p.take_finished(), vec![2]);
        assert!(p.in_step() && q.in_step());
        assert_eq!(q.adopt(0).unwrap(), Vec::<u8>::new());
        p.acknowledged(0).unwrap();
        assert_eq!((p.take_finished(), q.take_finished()), (vec![1], vec![1]));
        assert!(!p.in_step() && !q.in_step());
        assert_eq!((p.owned(), q.owned()), (2, 6));
        assert!(p.take_finished().is_empty());
    }
}
