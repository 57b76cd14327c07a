//! The coordinator's side of a change: prepare every step, then switch them in order, a
//! bounded number at a time, and wait for each to finish on every core.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::Coordinator;
use crate::migration::{ChangePlan, StepWindow};
use crate::node::status::{ChangeError, ChangeReport, MigrationProgress};
use crate::planner::{steps, Plan};
use crate::routing::CoreId;
use crate::runtime::messages::{CoreEvent, PeerMsg};

/// Slots moved per migration step: bounds how long any one key waits for its slot.
pub const MAX_SLOTS_PER_STEP: usize = 64;

/// Migration steps switched and not yet finished at once within a node. More overlap one
/// step's markers with another's handoffs and move state faster, but more keys wait at a time
/// and the new core installs in bursts: on the benchmark machine two steps moved state 20-45%
/// faster and raised p99.9 during a grow to 12-27 ms, past the 10 ms we promise
/// (bench/RESULTS.md), so latency wins.
const STEPS_IN_FLIGHT: usize = 1;

/// The same for a change that moves slots between nodes: every hop of a step crosses a link
/// (two threads and a TCP connection, ~0.1-0.3 ms each on the benchmark machine), so one step
/// at a time leaves the link idle most of the time. Two moved state ~25% faster at a join with
/// p99.9 during it of 15-17 ms (the promise there is 20 ms); three raised it to ~60 ms.
const STEPS_IN_FLIGHT_ACROSS_NODES: usize = 2;

impl Coordinator {
    /// Carries out `p` in bounded steps, each one epoch.
    pub(super) fn migrate(&mut self, p: Plan, label: &str) -> Result<ChangeReport, ChangeError> {
        let on_this_node = |c: &CoreId| self.cores.get(c).is_some_and(|h| h.executor.is_some());
        let across_nodes = p
            .moves
            .iter()
            .any(|m| !on_this_node(&m.from) || !on_this_node(&m.to));
        let steps = steps(&self.table, &p.moves, MAX_SLOTS_PER_STEP);
        let mut report = ChangeReport {
            slots_moved: p.moves.len(),
            ..ChangeReport::default()
        };
        let mut progress = MigrationProgress {
            change: label.to_string(),
            started: Instant::now(),
            steps_done: 0,
            steps: steps.len(),
            slots_moved: 0,
            slots: p.moves.len(),
        };
        self.publish(Some(progress.clone()));
        let producers: Vec<CoreId> = self.cores.keys().copied().collect();
        let change = ChangePlan::new(
            &self.table,
            steps.into_iter().map(|(_, moves)| moves).collect(),
            producers,
        );
        let transitions = change
            .transitions(self.table.n_slots())
            .expect("the planner's own steps fit its table");
        // Every step is prepared before the first switch, in one message per core: one round
        // trip per change, not one per step.
        for h in self.cores.values() {
            h.addr.send_control(PeerMsg::Prepare(change.clone()));
        }
        let n = self.cores.len();
        tracing::trace!("change: steps sent to prepare");
        if !transitions.is_empty() {
            let mut prepared = BTreeSet::new();
            self.wait_events("cores to prepare the change", |e| match e {
                CoreEvent::Prepared(core) => prepared.insert(*core) && prepared.len() == n,
                _ => false,
            })?;
        }
        // Then up to `window` steps are switched at once; each finished step releases the next.
        let window = if across_nodes {
            STEPS_IN_FLIGHT_ACROSS_NODES
        } else {
            STEPS_IN_FLIGHT
        };
        let first_epoch = self.table.epoch() + 1;
        let mut steps = StepWindow::new(first_epoch, transitions.len(), window, n);
        let mut released_at = Vec::new();
        while !steps.is_done() {
            for _ in 0..steps.release() {
                for h in self.cores.values() {
                    h.addr.send_control(PeerMsg::Switch);
                }
                tracing::trace!("step: released");
                released_at.push(Instant::now());
            }
            let mut finished = None;
            let waiting_for = steps.awaiting();
            self.wait_events(
                &format!("cores to finish epoch {waiting_for}"),
                |e| match e {
                    CoreEvent::StepDone { core, epoch } => {
                        finished = steps.finished(*core, *epoch);
                        finished.is_some()
                    }
                    CoreEvent::Installed {
                        entities, bytes, ..
                    } => {
                        report.entities_moved += u64::from(*entities);
                        report.bytes_moved += *bytes;
                        false
                    }
                    _ => false,
                },
            )?;
            let i = finished.expect("the wait ends on a finished step");
            let t = &transitions[i];
            tracing::debug!(
                epoch = first_epoch + i as u64,
                slots = t.moves.len(),
                took = ?released_at[i].elapsed(),
                "migration step done"
            );
            // The table moves on over the steps finished in a row from the first.
            if let Some(last) = steps.applied().checked_sub(1) {
                self.table = transitions[last].table.clone();
            }
            report.steps += 1;
            progress.steps_done += 1;
            progress.slots_moved += t.moves.len();
            self.publish(Some(progress.clone()));
        }
        self.publish(None);
        Ok(report)
    }

    /// Waits for core events until `done` says so; a core's protocol failure ends the wait.
    pub(super) fn wait_events(
        &self,
        what: &str,
        mut done: impl FnMut(&CoreEvent) -> bool,
    ) -> Result<(), ChangeError> {
        let mut waited = Duration::ZERO;
        loop {
            match self.events.recv_timeout(Duration::from_secs(5)) {
                Ok(CoreEvent::Failed { core, error }) => {
                    return Err(ChangeError::Protocol {
                        core,
                        reason: error,
                    });
                }
                Ok(e) => {
                    if done(&e) {
                        return Ok(());
                    }
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    waited += Duration::from_secs(5);
                    tracing::warn!(
                        "still waiting for {what} after {}s (is the sink up?)",
                        waited.as_secs()
                    );
                }
                Err(flume::RecvTimeoutError::Disconnected) => {
                    unreachable!("the coordinator holds a sender")
                }
            }
        }
    }
}
