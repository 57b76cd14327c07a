//! Which ids new cores get: pure, over the ids the cluster's live cores hold.
//!
//! The coordinator keeps no id counter. A change (grow, or a join) takes the lowest ids that no
//! core of the cluster holds at that moment, and its cores become members only when the change
//! goes through; a change that fails leaves nothing behind, so its ids are free again with no
//! bookkeeping to undo. A counter that only went up leaked the ids of every failed join and
//! every retired core, and a `u16` counter wrapped into live ids (issue 14 (1)).
//!
//! A retired core's id is reused too, which is safe because by the time the next change can
//! run every core has forgotten it: the coordinator holds the change lock from a change's start
//! to its end, and a core leaves the cluster only at the end of one (shrink, remove-node) after
//! the coordinator has sent every other core `RemovePeer` for it on its control lane, and (on
//! this node) joined the retired core's executor. The next change introduces a new core with
//! `AddPeers` on the same FIFO lanes (a link's control lane is FIFO too), so a core always
//! learns that the old holder of an id is gone before it learns of the new one; no slot maps to
//! a retired core and no message waits for it (its slots moved away with every marker and
//! batch for them). The cores of a removed node may still be retiring in their own process,
//! but they own no slot and no source connection, and a core sends events only during a
//! change's steps, so nothing from them can be taken for the new holder's. A failed joiner's
//! ids were never introduced to any core at all. Lost nodes' cores stay members until their
//! slots are recovered (changes are refused until then); then every core is told `RemovePeer`
//! as for a removed node, and the ids are free again (an exactly-once receiver takes a hello
//! under a lost stream's name as that stream living again).
//! What reuse costs is only that a summary may list a retired core and a live one with the
//! same number.

use std::collections::BTreeSet;

use crate::routing::CoreId;

/// The lowest `n` ids not in `used`, or `None` if fewer than `n` are free.
pub(crate) fn free_ids(used: &BTreeSet<CoreId>, n: usize) -> Option<Vec<CoreId>> {
    let ids: Vec<CoreId> = (0..=CoreId::MAX)
        .filter(|id| !used.contains(id))
        .take(n)
        .collect();
    (ids.len() == n).then_some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(ids: &[CoreId]) -> BTreeSet<CoreId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn the_lowest_free_ids_fill_gaps_first() {
        assert_eq!(free_ids(&used(&[]), 3), Some(vec![0, 1, 2]));
        assert_eq!(free_ids(&used(&[0, 1]), 2), Some(vec![2, 3]));
        assert_eq!(free_ids(&used(&[0, 2, 5]), 4), Some(vec![1, 3, 4, 6]));
        assert_eq!(free_ids(&used(&[1, 2]), 1), Some(vec![0]));
        assert_eq!(free_ids(&used(&[3]), 0), Some(vec![]));
    }

    #[test]
    fn ids_never_collide_and_never_wrap() {
        let top = used(&[CoreId::MAX - 1, CoreId::MAX]);
        let got = free_ids(&top, 2).unwrap();
        assert_eq!(got, [0, 1]);
        let all_but_two: BTreeSet<CoreId> = (2..=CoreId::MAX).collect();
        assert_eq!(free_ids(&all_but_two, 2), Some(vec![0, 1]));
        assert_eq!(free_ids(&all_but_two, 3), None, "only two ids are free");
        let full: BTreeSet<CoreId> = (0..=CoreId::MAX).collect();
        assert_eq!(free_ids(&full, 1), None);
        assert_eq!(free_ids(&used(&[]), usize::from(CoreId::MAX) + 2), None);
        let every = free_ids(&used(&[]), usize::from(CoreId::MAX) + 1).unwrap();
        assert_eq!(every.len(), 65536);
        assert!(every.windows(2).all(|w| w[0] < w[1]), "distinct, rising");
    }

    /// Grows, failed joins and shrinks of arbitrary cores: a live id is never handed out again,
    /// and new ids stay below the number of cores (a counter would climb with every change).
    #[test]
    fn allocation_under_churn_never_hands_out_a_live_id() {
        let mut live = used(&[0]);
        let mut x: u32 = 7;
        let mut next = || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            x >> 8
        };
        for _ in 0..5000 {
            let n = next() as usize % 5 + 1;
            match next() % 3 {
                0 => {
                    let ids = free_ids(&live, n).unwrap();
                    assert!(ids.iter().all(|id| !live.contains(id)));
                    let max = usize::from(*ids.iter().max().unwrap());
                    assert!(max < live.len() + n, "{max} with {} live", live.len());
                    live.extend(ids);
                }
                // A join that fails: its ids are never recorded.
                1 => assert!(free_ids(&live, n).is_some()),
                _ => {
                    for _ in 0..n {
                        let all: Vec<CoreId> = live.iter().copied().collect();
                        if all.len() > 1 {
                            live.remove(&all[next() as usize % all.len()]);
                        }
                    }
                }
            }
        }
    }
}
