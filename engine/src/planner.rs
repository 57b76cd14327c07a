//! Planning a change of cores: a pure function from the current routing table and the change to
//! the target table and the slot moves, with minimal movement, then cut into bounded steps.
//!
//! Balance: with `n` cores each ends with `n_slots / n` slots, give or take one. Minimal
//! movement: the cores that keep the larger share are the ones that hold most now, and a core
//! only gives up its surplus, so growing from `n` to `n + 1` balanced cores moves only the slots
//! the new core takes (when `n_slots >= n * (n + 1)`).

use std::collections::BTreeSet;

use thiserror::Error;

use crate::routing::{CoreId, Move, RoutingTable};

/// A change of the set of cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add(Vec<CoreId>),
    Remove(Vec<CoreId>),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("core {0} is already a member")]
    AlreadyMember(CoreId),
    #[error("core {0} is not a member")]
    NotMember(CoreId),
    #[error("cannot remove every core: at least one must remain")]
    NoCoreLeft,
    #[error("slot {slot} can only go to core {core}, which it was moving from or to when a loss cut its change short")]
    Stuck { slot: u32, core: CoreId },
}

/// Where a change ends: the members, the target table (epoch unchanged) and the moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub members: Vec<CoreId>,
    pub target: RoutingTable,
    pub moves: Vec<Move>,
}

/// Plans `change` from `current`, whose members are `members` (cores owning no slot included).
pub fn plan(
    current: &RoutingTable,
    members: &[CoreId],
    change: &Change,
) -> Result<Plan, PlanError> {
    let now: BTreeSet<CoreId> = members.iter().copied().collect();
    let (next, removed): (BTreeSet<CoreId>, BTreeSet<CoreId>) = match change {
        Change::Add(cores) => {
            let mut next = now.clone();
            for &c in cores {
                if !next.insert(c) {
                    return Err(PlanError::AlreadyMember(c));
                }
            }
            (next, BTreeSet::new())
        }
        Change::Remove(cores) => {
            let mut next = now.clone();
            for &c in cores {
                if !next.remove(&c) {
                    return Err(PlanError::NotMember(c));
                }
            }
            (next, cores.iter().copied().collect())
        }
    };
    if next.is_empty() {
        return Err(PlanError::NoCoreLeft);
    }

    let n_slots = current.n_slots();
    let held = |c: CoreId| current.slots_of(c);
    // Who keeps the larger share: the cores holding most now (ties: lower id).
    let mut by_share: Vec<CoreId> = next.iter().copied().collect();
    by_share.sort_by_key(|&c| (std::cmp::Reverse(held(c)), c));
    let (q, r) = (n_slots / next.len() as u32, n_slots as usize % next.len());
    let desired = |c: CoreId| q + u32::from(by_share.iter().position(|&x| x == c).unwrap() < r);

    // Free the removed cores' slots and every member's surplus (its highest slots).
    let mut pool: Vec<(u32, CoreId)> = Vec::new();
    for &c in &removed {
        pool.extend(current.owned_by(c).map(|s| (s, c)));
    }
    for &c in &next {
        let surplus = held(c).saturating_sub(desired(c)) as usize;
        let owned: Vec<u32> = current.owned_by(c).collect();
        pool.extend(owned[owned.len() - surplus..].iter().map(|&s| (s, c)));
    }
    pool.sort_unstable();

    // Deal the freed slots to the cores short of their share, lowest core first.
    let mut moves = Vec::with_capacity(pool.len());
    let mut freed = pool.into_iter();
    for &c in &next {
        for _ in held(c)..desired(c) {
            let (slot, from) = freed.next().expect("freed slots cover every deficit");
            moves.push(Move { slot, from, to: c });
        }
    }
    debug_assert!(freed.next().is_none(), "every freed slot has a new owner");
    moves.sort_unstable_by_key(|m| m.slot);
    let mut target = current.with_moves(&moves);
    target.set_epoch(current.epoch());
    Ok(Plan {
        members: next.into_iter().collect(),
        target,
        moves,
    })
}

/// A recovery: the table it starts from, and where each slot of the lost cores goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPlan {
    pub from: RoutingTable,
    pub moves: Vec<Move>,
}

/// Plans the recovery of the `lost` cores' slots onto the other `members`. `cut` are the moves
/// of switched steps that a loss cut short; `forsaken` the slots of those a survivor awaited
/// from a lost core and never got (the table names the survivor, which holds nothing): they
/// are the lost core's again, to restore. No slot of a cut move goes to the survivor it was
/// moving from or to, which may still await or hold it (and would take what producers routed
/// there before the recovery for the replay's). Only the lost cores' slots move.
pub fn plan_recovery(
    current: &RoutingTable,
    members: &[CoreId],
    lost: &BTreeSet<CoreId>,
    cut: &[Move],
    forsaken: &BTreeSet<u32>,
) -> Result<RecoveryPlan, PlanError> {
    let survivor = |c: &CoreId| !lost.contains(c);
    let back: Vec<Move> = (cut.iter())
        .filter(|m| forsaken.contains(&m.slot) && lost.contains(&m.from) && survivor(&m.to))
        .filter(|m| current.owner(m.slot) == m.to)
        .map(|m| Move {
            slot: m.slot,
            from: m.to,
            to: m.from,
        })
        .collect();
    let mut from = current.with_moves(&back);
    from.set_epoch(current.epoch());
    let avoid: std::collections::BTreeMap<u32, CoreId> = (cut.iter())
        .filter_map(|m| match (survivor(&m.from), survivor(&m.to)) {
            (false, true) => Some((m.slot, m.to)),
            (true, false) => Some((m.slot, m.from)),
            _ => None,
        })
        .collect();
    let removed = Change::Remove(lost.iter().copied().collect());
    let p = plan(&from, members, &removed)?;
    let mut moves: Vec<Move> = (p.moves.into_iter())
        .filter(|m| lost.contains(&m.from))
        .collect();
    // A swap of two targets keeps every core's share.
    for i in 0..moves.len() {
        let Some(&bad) = avoid.get(&moves[i].slot) else {
            continue;
        };
        if moves[i].to != bad {
            continue;
        }
        let other = (0..moves.len())
            .find(|&j| moves[j].to != bad && avoid.get(&moves[j].slot) != Some(&bad));
        if let Some(j) = other {
            let to = moves[j].to;
            moves[j].to = bad;
            moves[i].to = to;
            continue;
        }
        // No swap (most slots go to that core): another survivor takes it, a little over its
        // share; a later change evens it out.
        let elsewhere = (p.members.iter()).find(|&&c| c != bad);
        let Some(&to) = elsewhere else {
            return Err(PlanError::Stuck {
                slot: moves[i].slot,
                core: bad,
            });
        };
        moves[i].to = to;
    }
    Ok(RecoveryPlan { from, moves })
}

/// The slots that moved between the `lost` cores and the others since a checkpoint whose
/// table was `at`: by the table `now`, or in the switched steps of a change cut short (`cut`).
/// Outputs of such a slot since the checkpoint came partly from a survivor: restoring the lost
/// cores alone from the checkpoint would repeat or drop some of them.
pub fn moved_across(
    at: &RoutingTable,
    now: &RoutingTable,
    lost: &BTreeSet<CoreId>,
    cut: &[Move],
) -> BTreeSet<u32> {
    let lost_at = |t: &RoutingTable, s: u32| lost.contains(&t.owner(s));
    let by_table = (0..now.n_slots()).filter(|&s| lost_at(at, s) != lost_at(now, s));
    let in_cut = (cut.iter())
        .filter(|m| lost.contains(&m.from) != lost.contains(&m.to))
        .map(|m| m.slot);
    by_table.chain(in_cut).collect()
}

/// Cuts `moves` into steps of at most `max_slots` moves: each step is one epoch, so no slot waits
/// behind a large move. Returns each step's table (epochs `current + 1, + 2, ...`) and moves.
pub fn steps(
    current: &RoutingTable,
    moves: &[Move],
    max_slots: usize,
) -> Vec<(RoutingTable, Vec<Move>)> {
    let mut table = current.clone();
    moves
        .chunks(max_slots.max(1))
        .map(|chunk| {
            table = table.with_moves(chunk);
            (table.clone(), chunk.to_vec())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn check_balanced(t: &RoutingTable, members: &[CoreId]) {
        let n = members.len() as u32;
        let (lo, hi) = (t.n_slots() / n, t.n_slots().div_ceil(n));
        for &c in members {
            let k = t.slots_of(c);
            assert!(k == lo || k == hi, "core {c} holds {k}, want {lo}..={hi}");
        }
        let total: u32 = members.iter().map(|&c| t.slots_of(c)).sum();
        assert_eq!(total, t.n_slots(), "only members own slots");
    }

    #[test]
    fn grow_one_to_two_moves_half_to_the_new_core() {
        let t = RoutingTable::uniform(4096, 1);
        let p = plan(&t, &[0], &Change::Add(vec![1])).unwrap();
        assert_eq!(p.moves.len(), 2048);
        assert!(p.moves.iter().all(|m| m.from == 0 && m.to == 1));
        assert_eq!(p.members, vec![0, 1]);
        assert_eq!(p.target.epoch(), 0);
        check_balanced(&p.target, &p.members);
    }

    #[test]
    fn shrink_spreads_the_leaving_cores_slots() {
        let t = RoutingTable::uniform(4096, 4);
        let p = plan(&t, &[0, 1, 2, 3], &Change::Remove(vec![2])).unwrap();
        assert_eq!(p.moves.len(), 1024);
        assert!(p.moves.iter().all(|m| m.from == 2 && m.to != 2));
        check_balanced(&p.target, &[0, 1, 3]);
    }

    #[test]
    fn errors() {
        let t = RoutingTable::uniform(16, 2);
        assert_eq!(
            plan(&t, &[0, 1], &Change::Add(vec![1])),
            Err(PlanError::AlreadyMember(1))
        );
        assert_eq!(
            plan(&t, &[0, 1], &Change::Remove(vec![5])),
            Err(PlanError::NotMember(5))
        );
        assert_eq!(
            plan(&t, &[0, 1], &Change::Remove(vec![0, 1])),
            Err(PlanError::NoCoreLeft)
        );
    }

    /// Core 2 (of 0..3, 12 slots) is lost while a change that moved slot 0 to it and slot 8
    /// from it (to core 1) was switched and unfinished: slot 8 is core 2's again, and neither
    /// goes to the survivor it was moving from or to.
    #[test]
    fn a_recovery_takes_back_what_the_lost_core_was_handing_and_avoids_the_cut_survivors() {
        let t = RoutingTable::uniform(12, 3);
        let cut = [
            Move {
                slot: 0,
                from: 0,
                to: 2,
            },
            Move {
                slot: 8,
                from: 2,
                to: 1,
            },
        ];
        let now = t.with_moves(&cut);
        let lost = BTreeSet::from([2]);
        let r = plan_recovery(&now, &[0, 1, 2], &lost, &cut, &BTreeSet::from([8])).unwrap();
        assert_eq!(r.from.epoch(), now.epoch());
        assert_eq!(r.from.owner(8), 2, "slot 8 never reached core 1");
        assert_eq!(r.from.owner(0), 2);
        let mut slots: Vec<u32> = r.moves.iter().map(|m| m.slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, vec![0, 8, 9, 10, 11], "every slot of core 2 moves");
        assert!(r.moves.iter().all(|m| m.from == 2 && m.to != 2));
        let to = |slot| r.moves.iter().find(|m| m.slot == slot).unwrap().to;
        assert_eq!(to(0), 1, "not back to core 0, which handed it off");
        assert_eq!(to(8), 0, "not to core 1, which awaited it");
        let target = r.from.with_moves(&r.moves);
        check_balanced(&target, &[0, 1]);
        // A slot that reached the survivor before the loss (not forsaken) stays with it.
        let arrived = plan_recovery(&now, &[0, 1, 2], &lost, &cut, &BTreeSet::new()).unwrap();
        assert_eq!(arrived.from.owner(8), 1);
        assert!(arrived.moves.iter().all(|m| m.slot != 8));
        // One survivor only: the cut slot has nowhere else to go.
        let to_1 = [Move {
            slot: 0,
            from: 0,
            to: 1,
        }];
        let one = RoutingTable::uniform(4, 2).with_moves(&to_1);
        assert_eq!(
            plan_recovery(&one, &[0, 1], &BTreeSet::from([1]), &to_1, &BTreeSet::new()),
            Err(PlanError::Stuck { slot: 0, core: 0 })
        );
        // Most slots go to the core the cut slots must avoid: another one takes those.
        let t = RoutingTable::uniform(8, 3);
        let shrinking = [
            Move {
                slot: 0,
                from: 0,
                to: 2,
            },
            Move {
                slot: 1,
                from: 0,
                to: 2,
            },
        ];
        let now = t.with_moves(&shrinking);
        let r = plan_recovery(&now, &[0, 1, 2], &lost, &shrinking, &BTreeSet::new()).unwrap();
        assert!(r.moves.iter().all(|m| m.to != 2 && m.from == 2));
        assert!(
            (r.moves.iter()).all(|m| m.to != 0 || (m.slot != 0 && m.slot != 1)),
            "{:?}",
            r.moves
        );
        // Nothing cut: the plain removal.
        let plain = plan_recovery(&t, &[0, 1, 2], &lost, &[], &BTreeSet::new()).unwrap();

        assert_eq!(plain.from, t);
        assert_eq!(
            plain.moves,
            plan(&t, &[0, 1, 2], &Change::Remove(vec![2]))
                .unwrap()
                .moves
        );
    }

    #[test]
    fn slots_moved_between_lost_and_surviving_cores_since_a_checkpoint_are_found() {
        let at = RoutingTable::uniform(8, 2);
        let lost = BTreeSet::from([1]);
        assert!(moved_across(&at, &at, &lost, &[]).is_empty());
        let to_lost = Move {
            slot: 0,
            from: 0,
            to: 1,
        };
        let from_lost = Move {
            slot: 7,
            from: 1,
            to: 2,
        };
        let among_survivors = Move {
            slot: 1,
            from: 0,
            to: 2,
        };
        let now = at.with_moves(&[to_lost, from_lost, among_survivors]);
        assert_eq!(moved_across(&at, &now, &lost, &[]), BTreeSet::from([0, 7]));
        let cut = [Move {
            slot: 2,
            from: 0,
            to: 1,
        }];
        assert_eq!(moved_across(&at, &at, &lost, &cut), BTreeSet::from([2]));
    }

    #[test]
    fn steps_are_bounded_and_end_at_the_target() {
        let t = RoutingTable::uniform(4096, 1);
        let p = plan(&t, &[0], &Change::Add(vec![1, 2])).unwrap();
        let s = steps(&t, &p.moves, 100);
        assert_eq!(s.len(), p.moves.len().div_ceil(100));
        assert!(s.iter().all(|(_, m)| m.len() <= 100));
        assert_eq!(
            s.iter().map(|(t, _)| t.epoch()).collect::<Vec<_>>(),
            (1..=s.len() as u64).collect::<Vec<_>>()
        );
        let last = &s.last().unwrap().0;
        assert!((0..4096).all(|slot| last.owner(slot) == p.target.owner(slot)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Grow(u8),
        Shrink(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(1u8..=3).prop_map(Op::Grow), (1u8..=3).prop_map(Op::Shrink)]
    }

    proptest! {
        /// Any sequence of grows and shrinks stays balanced and moves only what it must.
        #[test]
        fn random_changes_stay_balanced_with_minimal_moves(
            n_slots in 1u32..600,
            ops in proptest::collection::vec(op(), 1..25),
        ) {
            let mut table = RoutingTable::uniform(n_slots, 1);
            let mut members: Vec<CoreId> = vec![0];
            let mut next_id: CoreId = 1;
            for op in ops {
                let change = match op {
                    Op::Grow(k) => {
                        let ids: Vec<CoreId> = (next_id..next_id + CoreId::from(k)).collect();
                        next_id += CoreId::from(k);
                        Change::Add(ids)
                    }
                    Op::Shrink(k) => {
                        let k = usize::from(k).min(members.len() - 1);
                        if k == 0 { continue; }
                        Change::Remove(members[members.len() - k..].to_vec())
                    }
                };
                let p = plan(&table, &members, &change).unwrap();
                check_balanced(&p.target, &p.members);
                // Minimal: exactly the slots of removed cores plus each member's surplus move.
                let lo = n_slots / p.members.len() as u32;
                let must_move: u32 = members.iter().map(|&c| {
                    let held = table.slots_of(c);
                    if p.members.contains(&c) { held.saturating_sub(lo + 1) } else { held }
                }).sum();
                prop_assert!(p.moves.len() as u32 >= must_move);
                let surplus_bound: u32 = members.iter().map(|&c| {
                    let held = table.slots_of(c);
                    if p.members.contains(&c) { held.saturating_sub(lo) } else { held }
                }).sum();
                prop_assert!(p.moves.len() as u32 <= surplus_bound);
                // Growing balanced cores by one moves slots only to the new core.
                if let Change::Add(ids) = &change {
                    let n = members.len() as u32;
                    if ids.len() == 1 && n_slots >= n * (n + 1) {
                        prop_assert!(p.moves.iter().all(|m| m.to == ids[0]));
                    }
                }
                for m in &p.moves {
                    prop_assert_eq!(table.owner(m.slot), m.from);
                    prop_assert_eq!(p.target.owner(m.slot), m.to);
                }
                let stepped = steps(&table, &p.moves, 7);
                table = stepped.last().map_or(table.clone(), |(t, _)| t.clone());
                members = p.members;
            }
        }
    }
}
