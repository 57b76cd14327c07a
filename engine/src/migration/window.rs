//! The coordinator's side of a change, as a pure struct: which steps to switch next (at most
//! `window` switched and unfinished at once), which step every core has finished, and how far
//! the routing table may advance (over the steps finished in a row from the first).

use std::collections::{BTreeMap, BTreeSet};

use crate::routing::CoreId;

#[derive(Debug)]
pub struct StepWindow {
    first_epoch: u64,
    steps: usize,
    window: usize,
    cores: usize,
    released: usize,
    /// Per epoch, the cores that finished it.
    finished_by: BTreeMap<u64, BTreeSet<CoreId>>,
    done: BTreeSet<u64>,
    /// Steps finished in a row from the first: the table stands after this many.
    applied: usize,
}

impl StepWindow {
    /// A change of `steps` steps, the first to `first_epoch`, carried out by `cores` cores with at
    /// most `window` steps in flight (at least one).
    pub fn new(first_epoch: u64, steps: usize, window: usize, cores: usize) -> Self {
        StepWindow {
            first_epoch,
            steps,
            window: window.max(1),
            cores,
            released: 0,
            finished_by: BTreeMap::new(),
            done: BTreeSet::new(),
            applied: 0,
        }
    }

    /// How many more steps to switch now; counts them as released.
    pub fn release(&mut self) -> usize {
        let mut n = 0;
        while self.released < self.steps && self.released - self.done.len() < self.window {
            self.released += 1;
            n += 1;
        }
        n
    }

    /// Core `core` finished the step to `epoch`. Returns the step's index once every core has;
    /// an epoch outside this change, one not released yet, or a core reporting twice changes
    /// nothing (a confused peer cannot end a change early).
    pub fn finished(&mut self, core: CoreId, epoch: u64) -> Option<usize> {
        let index = epoch.checked_sub(self.first_epoch)? as usize;
        if index >= self.released || self.done.contains(&epoch) {
            return None;
        }
        let by = self.finished_by.entry(epoch).or_default();
        if !by.insert(core) || by.len() < self.cores {
            return None;
        }
        self.finished_by.remove(&epoch);
        self.done.insert(epoch);
        while self
            .done
            .contains(&(self.first_epoch + self.applied as u64))
        {
            self.applied += 1;
        }
        Some(index)
    }

    /// The change ends early: the steps not switched yet are called off, so the window is
    /// done once the switched ones are.
    pub fn call_off(&mut self) {
        self.steps = self.released;
    }

    /// Core `core` was lost: it finishes nothing more, so every released step counts it as
    /// finished (the others finish without it).
    pub fn forget(&mut self, core: CoreId) {
        for i in 0..self.released {
            self.finished(core, self.first_epoch + i as u64);
        }
    }

    /// The epoch of the first step.
    pub fn first_epoch(&self) -> u64 {
        self.first_epoch
    }

    /// Steps released (switched) so far.
    pub fn released(&self) -> usize {
        self.released
    }

    /// Of `cores`, those that have not finished the step to `epoch` yet.
    pub fn missing(&self, epoch: u64, cores: &[CoreId]) -> Vec<CoreId> {
        if self.done.contains(&epoch) {
            return Vec::new();
        }
        let by = self.finished_by.get(&epoch);
        cores
            .iter()
            .filter(|c| by.is_none_or(|by| !by.contains(c)))
            .copied()
            .collect()
    }

    /// Steps finished in a row from the first: the table may stand after the last of them.
    pub fn applied(&self) -> usize {
        self.applied
    }

    #[cfg(test)]
    pub fn steps_done(&self) -> usize {
        self.done.len()
    }

    pub fn is_done(&self) -> bool {
        self.done.len() == self.steps
    }

    /// The epoch of the earliest step not finished yet (for a message about what is awaited).
    pub fn awaiting(&self) -> u64 {
        (0..self.steps as u64)
            .map(|i| self.first_epoch + i)
            .find(|e| !self.done.contains(e))
            .unwrap_or(self.first_epoch + self.steps as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every one of `cores` reports `epoch` done; the last report's answer.
    fn all_finish(w: &mut StepWindow, cores: u16, epoch: u64) -> Option<usize> {
        (0..cores).map(|c| w.finished(c, epoch)).last().flatten()
    }

    #[test]
    fn one_step_in_flight_releases_one_per_finished_step() {
        let mut w = StepWindow::new(5, 3, 1, 2);
        assert_eq!(w.release(), 1);
        assert_eq!(w.release(), 0, "the window is full");
        assert_eq!(w.finished(0, 5), None, "one of two cores");
        assert_eq!(w.missing(5, &[0, 1]), vec![1]);
        assert_eq!(w.finished(0, 5), None, "the same core twice counts once");
        assert_eq!(w.finished(1, 5), Some(0));
        assert_eq!(w.missing(5, &[0, 1]), Vec::<CoreId>::new());
        assert_eq!((w.applied(), w.steps_done()), (1, 1));
        assert_eq!(w.release(), 1);
        assert_eq!(all_finish(&mut w, 2, 6), Some(1));
        assert_eq!(w.release(), 1);
        assert_eq!(w.release(), 0, "no steps left");
        assert!(!w.is_done());
        assert_eq!(all_finish(&mut w, 2, 7), Some(2));
        assert!(w.is_done());
        assert_eq!(w.applied(), 3);
    }

    #[test]
    fn steps_may_finish_out_of_order_and_the_table_waits_for_the_gap() {
        let mut w = StepWindow::new(1, 3, 2, 1);
        assert_eq!(w.release(), 2);
        assert_eq!(w.finished(0, 2), Some(1));
        assert_eq!(w.applied(), 0, "step 1 is not done: the table stays");
        assert_eq!(w.awaiting(), 1);
        assert_eq!(w.release(), 1, "a finished step frees its place");
        assert_eq!(w.finished(0, 1), Some(0));
        assert_eq!(w.applied(), 2);
        assert_eq!(w.finished(0, 3), Some(2));
        assert_eq!(w.applied(), 3);
        assert!(w.is_done());
    }

    #[test]
    fn reports_outside_the_change_change_nothing() {
        let mut w = StepWindow::new(10, 2, 1, 1);
        w.release();
        assert_eq!(w.finished(0, 9), None, "before the change");
        assert_eq!(w.finished(0, 12), None, "after it");
        assert_eq!(w.finished(0, 11), None, "not released yet");
        assert_eq!(w.steps_done(), 0);
        assert_eq!(w.finished(0, 10), Some(0));
        assert_eq!(w.finished(0, 10), None, "already done");
        assert_eq!(w.steps_done(), 1);
    }

    /// A core lost mid-change: the released steps finish without it, the later ones still
    /// wait for every other core.
    #[test]
    fn a_lost_core_counts_as_finished_for_the_released_steps() {
        let mut w = StepWindow::new(5, 3, 2, 3);
        assert_eq!(w.release(), 2);
        assert_eq!(w.finished(0, 5), None);
        assert_eq!(w.finished(1, 5), None);
        w.forget(2);
        assert!(w.missing(5, &[0, 1, 2]).is_empty());
        assert_eq!(w.missing(6, &[0, 1, 2]), vec![0, 1]);
        assert_eq!(w.finished(0, 6), None);
        assert_eq!(w.finished(1, 6), Some(1));
        assert_eq!(w.applied(), 2);
        assert!(
            !w.is_done(),
            "the unreleased step is not finished by a loss"
        );
        w.call_off();
        assert!(
            w.is_done(),
            "nothing left once the unreleased step is called off"
        );
    }

    #[test]
    fn an_empty_change_is_done_at_once() {
        let mut w = StepWindow::new(1, 0, 2, 3);
        assert_eq!(w.release(), 0);
        assert!(w.is_done());
    }
}
