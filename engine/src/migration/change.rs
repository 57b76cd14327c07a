//! A change's steps as every core receives them, inside a node or across a link: the table
//! before the first step, each step's moves, and the producers. Each step's table follows from
//! the one before, so a change of 64 steps is not 64 copies of a 4096-slot table. Turning it
//! into [`Transition`]s is where a peer's plan is checked: a slot out of range, a table of
//! another slot count or a move by a core that does not own the slot is an error, never a panic.

use std::sync::Arc;

use thiserror::Error;

use super::Transition;
use crate::routing::{CoreId, Move, RoutingTable};

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ChangePlan {
    /// Tells this change from every other of the cluster (an aborted change and the next may
    /// start at the same epoch).
    pub id: u64,
    /// The epoch before the first step.
    pub epoch: u64,
    /// The owner of every slot before the first step.
    pub owners: Vec<CoreId>,
    /// Each step's moves, in epoch order.
    pub steps: Vec<Vec<Move>>,
    /// Every core that routes keyed messages while the change runs.
    pub producers: Vec<CoreId>,
}

/// Why a received plan cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BadPlan {
    #[error("the plan's table has {got} slots, this cluster {expected}")]
    SlotCount { got: usize, expected: u32 },
    #[error("a move of slot {slot} from core {from} at epoch {epoch}: not its owner there")]
    NotOwner { slot: u32, from: CoreId, epoch: u64 },
    #[error("a move of slot {slot}, beyond the table's {n_slots} slots")]
    NoSuchSlot { slot: u32, n_slots: u32 },
    #[error("a step with no moves")]
    EmptyStep,
}

impl ChangePlan {
    /// The plan that takes `base` through `steps` (each step's moves), routed by `producers`.
    pub fn new(
        id: u64,
        base: &RoutingTable,
        steps: Vec<Vec<Move>>,
        producers: Vec<CoreId>,
    ) -> Self {
        ChangePlan {
            id,
            epoch: base.epoch(),
            owners: (0..base.n_slots()).map(|s| base.owner(s)).collect(),
            steps,
            producers,
        }
    }

    /// Each step as a transition, every table built from the one before, checked against a
    /// cluster of `n_slots` slots.
    pub fn transitions(&self, n_slots: u32) -> Result<Vec<Arc<Transition>>, BadPlan> {
        if self.owners.len() != n_slots as usize {
            return Err(BadPlan::SlotCount {
                got: self.owners.len(),
                expected: n_slots,
            });
        }
        let mut current = RoutingTable::from_owners(self.epoch, self.owners.clone()).ok_or(
            BadPlan::SlotCount {
                got: 0,
                expected: n_slots,
            },
        )?;
        let mut out = Vec::with_capacity(self.steps.len());
        for moves in &self.steps {
            if moves.is_empty() {
                return Err(BadPlan::EmptyStep);
            }
            for m in moves {
                if m.slot >= n_slots {
                    return Err(BadPlan::NoSuchSlot {
                        slot: m.slot,
                        n_slots,
                    });
                }
                if current.owner(m.slot) != m.from {
                    return Err(BadPlan::NotOwner {
                        slot: m.slot,
                        from: m.from,
                        epoch: current.epoch(),
                    });
                }
            }
            current = current.with_moves(moves);
            out.push(Arc::new(Transition {
                table: Arc::new(current.clone()),
                moves: moves.clone(),
                producers: self.producers.clone(),
            }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::steps;

    fn mv(slot: u32, from: CoreId, to: CoreId) -> Move {
        Move { slot, from, to }
    }

    #[test]
    fn steps_come_back_with_the_planner_s_tables() {
        let base = RoutingTable::uniform(8, 1);
        let moves = [mv(0, 0, 1), mv(1, 0, 1), mv(2, 0, 1)];
        let planned = steps(&base, &moves, 2);
        let plan = ChangePlan::new(
            1,
            &base,
            planned.iter().map(|(_, m)| m.clone()).collect(),
            vec![0, 1],
        );
        let back = plan.transitions(8).unwrap();
        assert_eq!(back.len(), 2);
        for (t, (table, moves)) in back.iter().zip(&planned) {
            assert_eq!(*t.table, *table);
            assert_eq!(&t.moves, moves);
            assert_eq!(t.producers, vec![0, 1]);
        }
    }

    #[test]
    fn a_plan_that_does_not_fit_this_cluster_is_refused() {
        let base = RoutingTable::uniform(8, 1);
        let plan = |steps| ChangePlan::new(1, &base, steps, vec![0, 1]);
        assert_eq!(
            plan(vec![vec![mv(0, 0, 1)]]).transitions(16),
            Err(BadPlan::SlotCount {
                got: 8,
                expected: 16
            })
        );
        assert_eq!(
            plan(vec![vec![mv(8, 0, 1)]]).transitions(8),
            Err(BadPlan::NoSuchSlot {
                slot: 8,
                n_slots: 8
            })
        );
        assert_eq!(
            plan(vec![vec![mv(0, 0, 1)], vec![mv(0, 0, 1)]]).transitions(8),
            Err(BadPlan::NotOwner {
                slot: 0,
                from: 0,
                epoch: 1
            })
        );
        assert_eq!(plan(vec![vec![]]).transitions(8), Err(BadPlan::EmptyStep));
        let mut empty = plan(vec![]);
        empty.owners.clear();
        assert!(empty.transitions(0).is_err());
    }
}
