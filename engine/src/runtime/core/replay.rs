//! A source's replay after a node was lost. Its slots are restored from the last durable
//! checkpoint on the surviving cores, and every replayable source rewinds to where that
//! checkpoint says it stood. What a source reads again, every surviving slot has applied up to
//! where the source was when it rewound: each slot gets a message only from the position it
//! needs on (`from`), so the survivors neither stop nor apply anything twice. Once the source
//! is past every slot's `from`, routing is as usual. Pure: the sources carry it out.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::routing::RoutingTable;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replay {
    /// Per slot: the first position it has not applied.
    from: Arc<Vec<u64>>,
    /// The live table with the slots that skip messages before `valid.1` masked out, as of
    /// the live table's epoch (a change after the recovery moves restored slots too), for
    /// positions in `valid`.
    table: Option<(RoutingTable, (u64, u64))>,
}

impl Replay {
    /// A source rewound from `position` (where it was) for the `restored` slots of
    /// `n_slots`: they get every message again; any other has applied everything before
    /// `position`, and more if a replay `older` was under way (a second node lost soon after
    /// a first, recovered from the same checkpoint) that had given it more.
    pub fn rewound(
        position: u64,
        restored: &BTreeSet<u32>,
        n_slots: u32,
        older: Option<&Replay>,
    ) -> Self {
        let from = (0..n_slots)
            .map(|s| match older.and_then(|o| o.from.get(s as usize)) {
                _ if restored.contains(&s) => 0,
                Some(&had) => had.max(position),
                None => position,
            })
            .collect();
        Replay {
            from: Arc::new(from),
            table: None,
        }
    }

    /// Whether the message at `position` goes to some slots only.
    pub fn replays(&self, position: u64) -> bool {
        self.from.iter().any(|&f| f > position)
    }

    /// The table to route the message at `position` with, when the live one is `live`.
    pub fn routes<'a>(&'a mut self, position: u64, live: &'a RoutingTable) -> &'a RoutingTable {
        let fresh = self.table.as_ref().is_some_and(|(t, (lo, hi))| {
            t.epoch() == live.epoch() && (*lo..*hi).contains(&position)
        });
        if !fresh {
            let skipping: BTreeSet<u32> = (0..live.n_slots())
                .filter(|&s| self.from.get(s as usize).is_some_and(|&f| f > position))
                .collect();
            if skipping.is_empty() {
                return live;
            }
            let until = (self.from.iter()).filter(|&&f| f > position).min();
            let until = until.copied().unwrap_or(u64::MAX);
            let wanted = (0..live.n_slots())
                .filter(|s| !skipping.contains(s))
                .collect();
            self.table = Some((live.only(&wanted), (position, until)));
        }
        &self.table.as_ref().expect("made above").0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::NOWHERE;

    fn slots(s: &[u32]) -> BTreeSet<u32> {
        s.iter().copied().collect()
    }

    fn owners(t: &RoutingTable) -> Vec<u16> {
        (0..t.n_slots()).map(|s| t.owner(s)).collect()
    }

    #[test]
    fn only_what_came_before_the_horizon_goes_to_the_restored_slots_only() {
        let live = RoutingTable::uniform(8, 2);
        let mut r = Replay::rewound(10, &slots(&[1, 6]), 8, None);
        let t = r.routes(9, &live).clone();
        assert_eq!(
            owners(&t),
            [NOWHERE, 0, NOWHERE, NOWHERE, NOWHERE, NOWHERE, 1, NOWHERE]
        );
        assert_eq!(r.routes(10, &live), &live);
        assert!(r.replays(0) && r.replays(9) && !r.replays(10));
    }

    #[test]
    fn the_replay_table_follows_a_later_change() {
        let live = RoutingTable::uniform(8, 2);
        let mut r = Replay::rewound(10, &slots(&[1]), 8, None);
        assert_eq!(r.routes(0, &live).owner(1), 0);
        let moved = live.with_moves(&[crate::routing::Move {
            slot: 1,
            from: 0,
            to: 1,
        }]);
        assert_eq!(r.routes(0, &moved).owner(1), 1);
        assert_eq!(r.routes(0, &moved).owner(2), NOWHERE);
    }

    #[test]
    fn a_second_replay_gives_each_slot_what_it_lacks_exactly() {
        let live = RoutingTable::uniform(8, 2);
        // First loss: slot 1 restored; the source was at 20 and has replayed up to 12.
        let first = Replay::rewound(20, &slots(&[1]), 8, None);
        // Second loss, from the same checkpoint: slot 5 restored; the source was at 12.
        let mut both = Replay::rewound(12, &slots(&[5]), 8, Some(&first));
        let get = |r: &mut Replay, at: u64| -> Vec<u32> {
            let t = r.routes(at, &live).clone();
            (0..8).filter(|&s| t.owner(s) != NOWHERE).collect()
        };
        // Before 12: only slot 5 (slot 1 has it from the first replay, the rest from before).
        assert_eq!(get(&mut both, 3), vec![5]);
        // 12 to 20: slots 1 and 5; the others had it before the first rewind.
        assert_eq!(get(&mut both, 12), vec![1, 5]);
        assert_eq!(get(&mut both, 19), vec![1, 5]);
        assert_eq!(get(&mut both, 20), (0..8).collect::<Vec<_>>());
        assert!(!both.replays(20));
        // Rewound again at 0 (nothing read since the checkpoint at 0): still exact.
        let again = Replay::rewound(0, &slots(&[2]), 8, Some(&first));
        assert_eq!(again.from[1], 0, "slot 1 had got nothing of its replay yet");
        assert_eq!((again.from[0], again.from[2]), (20, 0));
    }
}
