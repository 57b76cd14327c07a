//! The coordinator's side of a change: prepare every step, then switch them in order, a
//! bounded number at a time, and wait for each to finish on every core. Every wait has a
//! deadline (`Config::change_timeout`) and ends early when the engine stops; a change that ends
//! early tells every core to forget the steps not switched yet, so it stops where it is.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Coordinator, Unfinished};
use crate::cluster::wire::{Answer, Question};
use crate::migration::{ChangePlan, StepWindow, Transition};
use crate::node::status::{ChangeError, ChangeReport, MigrationProgress};
use crate::planner::{steps, Plan};
use crate::routing::CoreId;
use crate::runtime::messages::{CoreEvent, PeerMsg};

/// How often a wait looks at whether the engine is stopping.
const POLL: Duration = Duration::from_millis(100);

/// How often a long wait says in the log what it waits for.
const REMIND: Duration = Duration::from_secs(5);

/// A change that ended early, with how many of its steps had been switched: those carry on on
/// every core (and finish once every core takes part again); the rest were aborted.
#[derive(Debug)]
pub(crate) struct Aborted {
    pub error: ChangeError,
    pub switched: usize,
}

/// Slots moved per migration step between nodes, at most: bounds how long any one key waits
/// for its slot, as a step's slots are archived, sent and checked one after the other.
pub const MAX_SLOTS_PER_STEP: usize = 64;

/// Bytes of state a step between nodes carries, about. With 10M words in state (~84 KB slots)
/// steps of 64 slots carried 5.4 MB, and keys waited that long: p99.9 during a join 26 ms, a
/// removal 15 ms. Steps of ~1 MB brought that to 11.7 and 8.2 ms, for 30-35% less MB/s
/// (bench/RESULTS.md): a key's wait is the promise, the rate a target.
const STEP_BYTES: u64 = 1 << 20;

/// How long the coordinator waits for a member's status to size steps (then it takes the most).
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// Slots per step between nodes for slots of `bytes / slots` bytes on average: about
/// [`STEP_BYTES`] a step, at least one slot and at most [`MAX_SLOTS_PER_STEP`].
fn slots_per_step(bytes: u64, slots: u64) -> usize {
    let per_slot = bytes.checked_div(slots).unwrap_or(0).max(1);
    usize::try_from(STEP_BYTES / per_slot)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_SLOTS_PER_STEP)
}

/// The same inside a node, where a slot changes owner without a copy: a step takes its hops
/// (switch, markers, one message of slots, acknowledgement), not time per slot, so fewer and
/// larger steps move state faster at no cost to the wait. On the benchmark machine a grow of
/// 2048 slots in steps of 64 moved 1.4 GB/s, of 256 6 GB/s, of 1024 10 GB/s, with p99.9 during
/// the move under 2.2 ms in each (bench/RESULTS.md).
const MAX_SLOTS_PER_STEP_IN_NODE: usize = 512;

/// Migration steps switched and not yet finished at once within a node. More would overlap one
/// step's hops with another's, but make more keys wait at a time; with slots adopted as they
/// are, larger steps (above) give the speed without that.
const STEPS_IN_FLIGHT: usize = 1;

/// The same for a change that moves slots between nodes: every hop of a step crosses a link
/// (two threads and a TCP connection, ~0.1-0.3 ms each on the benchmark machine), so one step
/// at a time leaves the link idle most of the time. Two moved state ~25% faster at a join with
/// p99.9 during it of 15-17 ms (the promise there is 20 ms); three raised it to ~60 ms.
const STEPS_IN_FLIGHT_ACROSS_NODES: usize = 2;

impl Coordinator {
    /// Changes are decided here only on the coordinator, only while every node is alive, and
    /// only once the switched steps of a change that ended early are done.
    pub(super) fn check_can_change(&mut self) -> Result<(), ChangeError> {
        self.check_running()?;
        if !self.node.is_coordinator() {
            return Err(ChangeError::NotCoordinator);
        }
        if !self.awaiting.is_empty() {
            return Err(ChangeError::Awaiting {
                checkpoint: self.last_durable(),
                nodes: self.awaiting().join(", "),
            });
        }
        if let Some(lost) = self.node.lost_nodes().into_iter().next() {
            return Err(ChangeError::NodeLost {
                node: lost.name,
                reason: lost.reason,
            });
        }
        self.drain_unfinished();
        if let Some(u) = &self.unfinished {
            let epoch = u.window.awaiting();
            return Err(ChangeError::Unfinished {
                epoch,
                cores: u.window.missing(epoch, &u.cores),
            });
        }
        Ok(())
    }

    /// Drops the events of an earlier, failed change (they must not end the next one), counting
    /// them for its unfinished steps; forgets those steps once they are done.
    pub(super) fn drain_unfinished(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            if let (CoreEvent::StepDone { core, epoch }, Some(u)) = (&e, &mut self.unfinished) {
                u.window.finished(*core, *epoch);
            }
            self.note_forsaken(&e);
        }
        if self.unfinished.as_ref().is_some_and(|u| u.window.is_done()) {
            self.unfinished = None;
        }
    }

    /// Tells the cores `old` about the cores `new`, then moves slots onto `new` as planned.
    pub(super) fn move_onto(
        &mut self,
        old: &[CoreId],
        new: &[CoreId],
        p: Plan,
        label: &str,
        started: Instant,
        before: usize,
    ) -> Result<ChangeReport, Aborted> {
        self.introduce(old, new);
        let report = self.migrate(p, label)?;
        Ok(self.finished(report, label, started, before))
    }

    /// Completes and logs the report of a change.
    pub(super) fn finished(
        &self,
        mut report: ChangeReport,
        label: &str,
        started: Instant,
        before: usize,
    ) -> ChangeReport {
        report.cores_before = before;
        report.cores_after = self.cores.len();
        report.elapsed = started.elapsed();
        tracing::info!("{label}: {report}");
        report
    }

    /// Carries out `p` in bounded steps, each one epoch. On an error the steps not switched yet
    /// are aborted on every core and the routing table stands after the switched ones.
    pub(super) fn migrate(&mut self, p: Plan, label: &str) -> Result<ChangeReport, Aborted> {
        let on_this_node = |c: &CoreId| self.cores.get(c).is_some_and(|h| h.executor.is_some());
        let across_nodes = p
            .moves
            .iter()
            .any(|m| !on_this_node(&m.from) || !on_this_node(&m.to));
        let per_step = if across_nodes {
            self.slots_per_step_between_nodes(&p)
        } else {
            MAX_SLOTS_PER_STEP_IN_NODE
        };
        let steps = steps(&self.table, &p.moves, per_step);
        let progress = MigrationProgress {
            change: label.to_string(),
            started: Instant::now(),
            steps_done: 0,
            steps: steps.len(),
            slots_moved: 0,
            slots: p.moves.len(),
        };
        self.publish(Some(progress.clone()));
        let producers: Vec<CoreId> = self.cores.keys().copied().collect();
        self.changes += 1;
        let change = ChangePlan::new(
            self.changes,
            &self.table,
            steps.into_iter().map(|(_, moves)| moves).collect(),
            producers.clone(),
        );
        let transitions = change
            .transitions(self.table.n_slots())
            .expect("the planner's own steps fit its table");
        let window = if across_nodes {
            STEPS_IN_FLIGHT_ACROSS_NODES
        } else {
            STEPS_IN_FLIGHT
        };
        let first_epoch = self.table.epoch() + 1;
        let mut window = StepWindow::new(first_epoch, transitions.len(), window, producers.len());
        let result = self.run_steps(&change, &transitions, &mut window, progress, &producers);
        self.view.lock().unwrap().changes.count(&result);
        self.publish(None);
        result.map_err(|error| self.abort(error, &transitions, window, producers))
    }

    /// Sizes the steps of a change between nodes by the bytes the giving cores hold per slot.
    fn slots_per_step_between_nodes(&self, p: &Plan) -> usize {
        let givers: BTreeSet<CoreId> = p.moves.iter().map(|m| m.from).collect();
        let mut statuses = self.node.local_status();
        for m in self.node.members() {
            if m.cores.iter().any(|c| givers.contains(c)) {
                if let Some(Answer::Status(s)) =
                    self.node.ask(&m.name, Question::Status, STATUS_WAIT)
                {
                    statuses.extend(s);
                }
            }
        }
        let (bytes, slots) = (statuses.iter())
            .filter(|s| givers.contains(&s.core))
            .fold((0, 0), |(b, n), s| (b + s.state_bytes, n + s.slots as u64));
        slots_per_step(bytes, slots)
    }

    /// Prepares every step, then switches them through `window` until all are done.
    fn run_steps(
        &mut self,
        change: &ChangePlan,
        transitions: &[Arc<Transition>],
        window: &mut StepWindow,
        mut progress: MigrationProgress,
        cores: &[CoreId],
    ) -> Result<ChangeReport, ChangeError> {
        let mut report = ChangeReport {
            slots_moved: progress.slots,
            ..ChangeReport::default()
        };
        // Every step is prepared before the first switch, in one message per core: one round
        // trip per change, not one per step.
        for h in self.cores.values() {
            h.addr.send_control(PeerMsg::Prepare(change.clone()));
        }
        tracing::trace!("change: steps sent to prepare");
        if !transitions.is_empty() {
            let prepared = RefCell::new(BTreeSet::new());
            self.wait_events(
                "cores to prepare the change",
                |e| match e {
                    CoreEvent::Prepared(core) => {
                        let mut prepared = prepared.borrow_mut();
                        prepared.insert(*core);
                        prepared.len() == cores.len()
                    }
                    _ => false,
                },
                || {
                    let prepared = prepared.borrow();
                    cores
                        .iter()
                        .filter(|c| !prepared.contains(c))
                        .copied()
                        .collect()
                },
            )?;
        }
        // Then up to the window's width are switched at once; each finished step releases the
        // next.
        let mut released_at = Vec::new();
        let first_switch = Instant::now();
        while !window.is_done() {
            for _ in 0..window.release() {
                for h in self.cores.values() {
                    h.addr.send_control(PeerMsg::Switch);
                }
                tracing::trace!("step: released");
                released_at.push(Instant::now());
            }
            let mut finished = None;
            let epoch = window.awaiting();
            let shared = RefCell::new(&mut *window);
            self.wait_events(
                &format!("cores to finish epoch {epoch}"),
                |e| match e {
                    CoreEvent::StepDone { core, epoch } => {
                        finished = shared.borrow_mut().finished(*core, *epoch);
                        finished.is_some()
                    }
                    CoreEvent::Adopted {
                        entities, bytes, ..
                    } => {
                        report.entities_moved += u64::from(*entities);
                        report.bytes_moved += *bytes;
                        report.moving = first_switch.elapsed();
                        false
                    }
                    _ => false,
                },
                || shared.borrow().missing(epoch, cores),
            )?;
            let i = finished.expect("the wait ends on a finished step");
            let t = &transitions[i];
            tracing::debug!(
                epoch = window.first_epoch() + i as u64,
                slots = t.moves.len(),
                took = ?released_at[i].elapsed(),
                "migration step done"
            );
            // The table moves on over the steps finished in a row from the first.
            if let Some(last) = window.applied().checked_sub(1) {
                self.table = transitions[last].table.clone();
            }
            report.steps += 1;
            progress.steps_done += 1;
            progress.slots_moved += t.moves.len();
            self.publish(Some(progress.clone()));
        }
        Ok(report)
    }

    /// Ends a change early: every core forgets the steps not switched yet (a core that is slow
    /// to answer does so once it reads this, after the switches before it: its control lane is
    /// FIFO). The table stands after the switched steps; while some of them are unfinished,
    /// further changes wait for them.
    fn abort(
        &mut self,
        error: ChangeError,
        transitions: &[Arc<Transition>],
        mut window: StepWindow,
        cores: Vec<CoreId>,
    ) -> Aborted {
        for h in self.cores.values() {
            h.addr.send_control(PeerMsg::Abort);
        }
        let switched = window.released();
        window.call_off();
        if let Some(last) = switched.checked_sub(1) {
            self.table = transitions[last].table.clone();
        }
        if !window.is_done() && switched > 0 {
            let moves = (transitions[..switched].iter())
                .flat_map(|t| t.moves.iter().copied())
                .collect();
            self.unfinished = Some(Unfinished {
                window,
                cores,
                moves,
            });
        }
        tracing::warn!(
            "change ended early after {switched} of {} steps: {error}",
            transitions.len()
        );
        self.publish(None);
        Aborted { error, switched }
    }

    /// Keeps the slots a survivor will never get from a lost core, whenever it says so.
    fn note_forsaken(&self, e: &CoreEvent) {
        if let CoreEvent::Forsaken { slots, .. } = e {
            self.forsaken.borrow_mut().extend(slots);
        }
    }

    /// Waits for core events until `done` says so. Ends with an error when a core reports a
    /// protocol failure, when the engine stops, or when the change timeout passes; `missing`
    /// names the cores not heard from yet, for the log and the error.
    pub(super) fn wait_events(
        &self,
        what: &str,
        mut done: impl FnMut(&CoreEvent) -> bool,
        missing: impl Fn() -> Vec<CoreId>,
    ) -> Result<(), ChangeError> {
        let started = Instant::now();
        let deadline = started + self.config.change_timeout;
        let mut remind = started + REMIND;
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return Err(ChangeError::Stopped);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ChangeError::Timeout {
                    waiting_for: what.to_string(),
                    after: self.config.change_timeout,
                    cores: missing(),
                });
            }
            if now >= remind {
                remind += REMIND;
                tracing::warn!(
                    "still waiting for {what} after {}s: no word from cores {:?} (the change gives up after {:?})",
                    started.elapsed().as_secs(),
                    missing(),
                    self.config.change_timeout
                );
            }
            match self.events.recv_timeout(POLL.min(deadline - now)) {
                Ok(CoreEvent::Failed { core, error }) => {
                    return Err(ChangeError::Protocol {
                        core,
                        reason: error,
                    });
                }
                Ok(e) => {
                    self.note_forsaken(&e);
                    if done(&e) {
                        return Ok(());
                    }
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => {
                    unreachable!("the coordinator holds a sender")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_between_nodes_carry_about_a_megabyte() {
        // 1M words: ~9 KB slots, the most slots a step takes.
        assert_eq!(slots_per_step(9_000 * 4096, 4096), MAX_SLOTS_PER_STEP);
        // 10M words: ~84 KB slots.
        assert_eq!(slots_per_step(84_000 * 4096, 4096), 12);
        // Slots larger than a step's bytes: one at a time.
        assert_eq!(slots_per_step(5 << 20, 1), 1);
        // Nothing known (no answer, or no state): the most.
        assert_eq!(slots_per_step(0, 0), MAX_SLOTS_PER_STEP);
        assert_eq!(slots_per_step(0, 4096), MAX_SLOTS_PER_STEP);
    }
}
