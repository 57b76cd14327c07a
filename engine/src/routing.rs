//! The routing table: slot -> core, with an epoch that grows by one at every change.

/// A core (one executor) of the cluster: ids are unique across nodes, given out by the
/// coordinator, and never reused while the cluster runs.
pub type CoreId = u16;

/// What a replay table ([`RoutingTable::only`]) names as the owner of a slot that must not get
/// the message: routing drops it at the source.
pub(crate) const NOWHERE: CoreId = CoreId::MAX;

/// Which core owns each slot, at one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTable {
    epoch: u64,
    owners: Vec<CoreId>,
}

impl RoutingTable {
    /// Epoch 0: `n_slots` slots dealt to `n_cores` cores in contiguous, even ranges (each core
    /// gets `n_slots / n_cores` slots, give or take one).
    pub fn uniform(n_slots: u32, n_cores: u16) -> Self {
        assert!(
            n_slots > 0 && n_cores > 0,
            "need at least one slot and one core"
        );
        let owners = (0..u64::from(n_slots))
            .map(|s| (s * u64::from(n_cores) / u64::from(n_slots)) as CoreId)
            .collect();
        Self { epoch: 0, owners }
    }

    /// A table received from another node; `None` if it has no slot.
    pub fn from_owners(epoch: u64, owners: Vec<CoreId>) -> Option<Self> {
        (!owners.is_empty()).then_some(Self { epoch, owners })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(crate) fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    pub fn n_slots(&self) -> u32 {
        self.owners.len() as u32
    }

    /// The core that owns `slot`.
    pub fn owner(&self, slot: u32) -> CoreId {
        self.owners[slot as usize]
    }

    /// How many slots `core` owns.
    pub fn slots_of(&self, core: CoreId) -> u32 {
        self.owners.iter().filter(|&&o| o == core).count() as u32
    }

    /// The slots `core` owns, in order.
    pub fn owned_by(&self, core: CoreId) -> impl Iterator<Item = u32> + '_ {
        (0..self.n_slots()).filter(move |&s| self.owner(s) == core)
    }

    /// This table for `slots` only: every other slot is owned by [`NOWHERE`]. A recovery's
    /// sources replay through it what every surviving slot has already applied.
    pub(crate) fn only(&self, slots: &std::collections::BTreeSet<u32>) -> RoutingTable {
        let owners = (0..self.n_slots())
            .map(|s| {
                if slots.contains(&s) {
                    self.owner(s)
                } else {
                    NOWHERE
                }
            })
            .collect();
        RoutingTable {
            epoch: self.epoch,
            owners,
        }
    }

    /// The next epoch's table: this one with `moves` applied.
    pub fn with_moves(&self, moves: &[Move]) -> RoutingTable {
        let mut owners = self.owners.clone();
        for m in moves {
            debug_assert_eq!(
                owners[m.slot as usize], m.from,
                "move of slot {} from a non-owner",
                m.slot
            );
            owners[m.slot as usize] = m.to;
        }
        RoutingTable {
            epoch: self.epoch + 1,
            owners,
        }
    }
}

/// A slot changing owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Move {
    pub slot: u32,
    pub from: CoreId,
    pub to: CoreId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_tables_are_even_and_contiguous() {
        for (slots, cores) in [(4096, 1), (4096, 2), (4096, 3), (7, 3), (5, 5), (4096, 64)] {
            let t = RoutingTable::uniform(slots, cores);
            assert_eq!(t.epoch(), 0);
            let counts: Vec<u32> = (0..cores).map(|c| t.slots_of(c)).collect();
            let (lo, hi) = (slots / u32::from(cores), slots.div_ceil(u32::from(cores)));
            assert!(
                counts.iter().all(|&c| c == lo || c == hi),
                "{slots}/{cores}: {counts:?}"
            );
            assert_eq!(counts.iter().sum::<u32>(), slots);
            assert!(
                (1..slots).all(|s| t.owner(s) >= t.owner(s - 1)),
                "ranges are contiguous"
            );
        }
    }

    #[test]
    fn one_core_owns_everything() {
        let t = RoutingTable::uniform(4096, 1);
        assert!((0..4096).all(|s| t.owner(s) == 0));
    }
}
