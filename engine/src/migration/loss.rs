//! Losing cores of another node mid-change: what a core's protocol does so that every step it
//! switched finishes without them.

use std::collections::BTreeSet;

use super::{Protocol, SlotState};
use crate::routing::{CoreId, Move};

/// What a core does once peers are lost ([`Protocol::lose`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Slots now complete (no marker is awaited from the lost cores): hand them off.
    pub handoffs: Vec<Move>,
    /// Slots that were to go to a lost core and are absent now: drop their state here (a
    /// recovery restores them from the checkpoint).
    pub dropped: Vec<u32>,
    /// Slots that were to come from a lost core and never will: the coordinator restores them.
    pub forsaken: Vec<u32>,
}

impl<M> Protocol<M> {
    /// Cores of another node were lost: in the switched steps, no marker is awaited from them,
    /// slots they were to hand here are forsaken, slots this core was to hand them are
    /// dropped, so every switched step can finish without them. Steps not switched are left
    /// as they are (the change is called off: [`Self::abort`]).
    pub fn lose(&mut self, lost: &BTreeSet<CoreId>) -> Lost {
        let lost = self.apply_loss(lost);
        self.finish_done();
        lost
    }

    /// [`Self::lose`] without forgetting the steps it finished (their indexes stay valid).
    pub(super) fn apply_loss(&mut self, lost: &BTreeSet<CoreId>) -> Lost {
        self.lost.extend(lost);
        let (mut dropped, mut forsaken) = (Vec::new(), Vec::new());
        for step in self.steps.iter_mut().filter(|s| s.switched) {
            step.markers_missing.retain(|c| !lost.contains(c));
            let (gone, kept) = (step.outgoing.iter()).partition(|m| lost.contains(&m.to));
            step.outgoing = kept;
            for m in gone {
                self.slots[m.slot as usize] = SlotState::Absent;
                dropped.push(m.slot);
            }
        }
        for (slot, state) in self.slots.iter_mut().enumerate() {
            let SlotState::Incoming { epoch, from, .. } = state else {
                continue;
            };
            let step = self.steps.iter_mut().find(|s| s.to_epoch == *epoch);
            if let Some(step) = step.filter(|s| s.switched && lost.contains(from)) {
                step.incoming_left -= 1;
                *state = SlotState::Forsaken;
                forsaken.push(slot as u32);
            }
        }
        let handoffs = (0..self.steps.len())
            .flat_map(|i| self.ready_handoffs(i))
            .collect();
        Lost {
            handoffs,
            dropped,
            forsaken,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::migration::{Delivery, Route, Transition};
    use crate::routing::RoutingTable;

    /// Slots 0..6 over cores 0, 1 (this node) and 2 (another node, lost mid-step): slot 1
    /// moves 0 -> 1, slot 4 moves 2 -> 0, slot 0 moves 0 -> 2.
    fn step_with_a_lost_core() -> (RoutingTable, Transition) {
        let t0 = RoutingTable::uniform(6, 3);
        let moves = vec![
            Move {
                slot: 0,
                from: 0,
                to: 2,
            },
            Move {
                slot: 1,
                from: 0,
                to: 1,
            },
            Move {
                slot: 4,
                from: 2,
                to: 0,
            },
        ];
        let t1 = t0.with_moves(&moves);
        let tr = Transition {
            table: Arc::new(t1),
            moves,
            producers: vec![0, 1, 2],
        };
        (t0, tr)
    }

    /// A core lost mid-step owes no marker: the slot going to a survivor leaves once the
    /// survivors' markers are in; the slot going to the lost core is dropped here; the slot
    /// coming from it is forsaken (what arrives for it dropped, not misrouted); the step
    /// finishes without the lost core.
    #[test]
    fn a_step_finishes_without_a_lost_core() {
        let (t0, tr) = step_with_a_lost_core();
        let mut p = Protocol::<&str>::new(0, &t0);
        p.prepare(&tr).unwrap();
        let sw = p.switch().unwrap();
        assert!(sw.handoffs.is_empty());
        assert_eq!(p.on_marker(1, 0), Ok(vec![]), "core 2's marker is missing");
        assert_eq!(p.deliver(4, "buffered"), Delivery::Buffered);
        let lost = p.lose(&BTreeSet::from([2]));
        let to_1 = Move {
            slot: 1,
            from: 0,
            to: 1,
        };
        assert_eq!(
            lost,
            Lost {
                handoffs: vec![to_1],
                dropped: vec![0],
                forsaken: vec![4],
            }
        );
        assert_eq!(p.route(4), Route::Forsaken);
        assert_eq!(p.route(0), Route::Misrouted);
        assert_eq!(
            p.buffered(),
            0,
            "what waited for the forsaken slot is dropped"
        );
        assert!(p.in_step(), "slot 1 waits for its acknowledgement");
        p.acknowledged(1).unwrap();
        assert!(!p.in_step());
        assert_eq!(p.take_finished(), vec![1]);
        assert_eq!(p.owned(), 0, "slots 0 and 1 left, slot 4 never came");
        assert_eq!(p.deliver(4, "late"), Delivery::Forsaken);
        // A later step may bring the forsaken slot here again (a recovery restoring it).
        let back = vec![Move {
            slot: 4,
            from: 2,
            to: 0,
        }];
        // The recovery plans from the table with the forsaken slot back on its lost owner.
        let mut t2 = tr.table.with_moves(&[Move {
            slot: 4,
            from: 0,
            to: 2,
        }]);
        t2.set_epoch(1);
        let again = Transition {
            table: Arc::new(t2.with_moves(&back)),
            moves: back,
            producers: vec![0, 1],
        };
        assert!(p.prepare(&again).is_ok());
        assert_eq!(p.route(4), Route::Buffer);
    }

    /// A core whose node sees the loss before the coordinator's switch reaches it applies
    /// the loss at the switch; a later change that counts the core among its producers again
    /// (a replacement under its id) expects its markers.
    #[test]
    fn a_loss_seen_before_the_switch_applies_at_the_switch() {
        let (t0, tr) = step_with_a_lost_core();
        let mut p = Protocol::<&str>::new(0, &t0);
        p.prepare(&tr).unwrap();
        assert_eq!(p.lose(&BTreeSet::from([2])), Lost::default());
        assert_eq!(p.route(4), Route::Buffer, "not switched: left as it is");
        assert_eq!(p.on_marker(1, 0), Ok(vec![]));
        let sw = p.switch().unwrap();
        assert_eq!(sw.dropped, vec![0]);
        assert_eq!(
            sw.handoffs.iter().map(|m| m.slot).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(p.route(4), Route::Forsaken);
        p.acknowledged(1).unwrap();
        assert!(!p.in_step());
        let back = vec![Move {
            slot: 5,
            from: 2,
            to: 0,
        }];
        let next = Transition {
            table: Arc::new(tr.table.with_moves(&back)),
            moves: back,
            producers: vec![0, 1, 2],
        };
        p.prepare(&next).unwrap();
        p.switch().unwrap();
        assert!(p.in_step(), "slot 5 comes from core 2, alive again");
    }

    /// A step that a loss seen before its switch finishes at that switch (its only slot here
    /// was coming from the lost core) ends cleanly.
    #[test]
    fn a_step_the_loss_finishes_at_its_switch_ends() {
        let t0 = RoutingTable::uniform(6, 3);
        let moves = vec![Move {
            slot: 4,
            from: 2,
            to: 0,
        }];
        let tr = Transition {
            table: Arc::new(t0.with_moves(&moves)),
            moves,
            producers: vec![0, 1, 2],
        };
        let mut p = Protocol::<&str>::new(0, &t0);
        p.prepare(&tr).unwrap();
        p.lose(&BTreeSet::from([2]));
        let sw = p.switch().unwrap();
        assert_eq!(sw.forsaken, vec![4]);
        assert!(!p.in_step());
        assert_eq!(p.take_finished(), vec![1]);
    }

    /// A marker the lost core sent before it died, read after the loss, is ignored; a slot
    /// whose every other marker had come is never handed to the lost core at the switch.
    #[test]
    fn a_lost_core_s_late_marker_is_ignored_and_nothing_goes_to_it_at_the_switch() {
        let (t0, tr) = step_with_a_lost_core();
        let mut p = Protocol::<&str>::new(0, &t0);
        p.prepare(&tr).unwrap();
        assert_eq!(p.on_marker(1, 0), Ok(vec![]));
        p.lose(&BTreeSet::from([2]));
        assert_eq!(p.on_marker(2, 0), Ok(vec![]), "queued before the loss");
        let sw = p.switch().unwrap();
        assert!(sw.handoffs.iter().all(|m| m.to != 2), "{:?}", sw.handoffs);
        assert_eq!(sw.dropped, vec![0]);
        assert_eq!(sw.forsaken, vec![4]);
    }
}
