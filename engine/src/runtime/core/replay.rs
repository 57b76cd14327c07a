//! A source's replay after a node was lost. Its slots are restored from the last durable
//! checkpoint on the surviving cores, and every replayable source rewinds to where that
//! checkpoint says it stood. What a source reads again up to where it was when it rewound (its
//! horizon) every surviving slot has applied already: it goes to the restored slots only, so
//! the survivors neither stop nor apply anything twice. From the horizon on, routing is as
//! usual. Pure: the sources carry it out.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::routing::RoutingTable;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replay {
    /// The source's position when it rewound: what is before it is sent again.
    horizon: u64,
    /// The restored slots.
    restored: Arc<BTreeSet<u32>>,
    /// The live table for the restored slots only, as of the live table's epoch (a change
    /// after the recovery moves restored slots too).
    table: Option<RoutingTable>,
}

impl Replay {
    pub fn new(horizon: u64, restored: Arc<BTreeSet<u32>>) -> Self {
        Replay {
            horizon,
            restored,
            table: None,
        }
    }

    /// Whether the message at `position` is sent again.
    pub fn replays(&self, position: u64) -> bool {
        position < self.horizon
    }

    /// The table to route the message at `position` with, when the live one is `live`.
    pub fn routes<'a>(&'a mut self, position: u64, live: &'a RoutingTable) -> &'a RoutingTable {
        if !self.replays(position) {
            return live;
        }
        if self
            .table
            .as_ref()
            .is_none_or(|t| t.epoch() != live.epoch())
        {
            self.table = Some(live.only(&self.restored));
        }
        self.table.as_ref().expect("just made")
    }

    /// This replay begun while `older` was still under way (a second node lost soon after a
    /// first): both sets of restored slots get what either replays. The first set may get
    /// some messages twice; losing none is the lesser fault.
    pub fn merge(self, older: Option<Replay>) -> Replay {
        let Some(older) = older.filter(|o| o.horizon > 0) else {
            return self;
        };
        let restored = self.restored.union(&older.restored).copied().collect();
        Replay::new(self.horizon.max(older.horizon), Arc::new(restored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::NOWHERE;

    fn slots(s: &[u32]) -> Arc<BTreeSet<u32>> {
        Arc::new(s.iter().copied().collect())
    }

    #[test]
    fn only_what_came_before_the_horizon_goes_to_the_restored_slots_only() {
        let live = RoutingTable::uniform(8, 2);
        let mut r = Replay::new(10, slots(&[1, 6]));
        let t = r.routes(9, &live).clone();
        let owners: Vec<_> = (0..8).map(|s| t.owner(s)).collect();
        assert_eq!(
            owners,
            [NOWHERE, 0, NOWHERE, NOWHERE, NOWHERE, NOWHERE, 1, NOWHERE]
        );
        assert_eq!(r.routes(10, &live), &live);
        assert!(r.replays(0) && !r.replays(10));
    }

    #[test]
    fn the_replay_table_follows_a_later_change() {
        let live = RoutingTable::uniform(8, 2);
        let mut r = Replay::new(10, slots(&[1]));
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
    fn a_second_replay_covers_both_sets_up_to_the_later_horizon() {
        let first = Replay::new(20, slots(&[1]));
        let mut both = Replay::new(15, slots(&[5])).merge(Some(first));
        let live = RoutingTable::uniform(8, 2);
        assert!(both.replays(19));
        let t = both.routes(19, &live);
        assert_ne!(t.owner(1), NOWHERE);
        assert_ne!(t.owner(5), NOWHERE);
        assert_eq!(t.owner(0), NOWHERE);
    }
}
