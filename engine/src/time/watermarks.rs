//! The watermarks a core derives, one per stage input, from every producer's word: the
//! minimum over them, never going back, and held through a change of slot owners.

use std::collections::{BTreeMap, BTreeSet};

use crate::routing::CoreId;

/// A producer's word on a watermark level: an instant, or idle (it has no source to speak for,
/// so it holds nobody back).
pub type Mark = Option<u64>;

/// The watermarks a core derives, one per stage input: each is the minimum over its producers'
/// words (idle ones excluded), held back while a producer has not spoken yet, and never goes
/// back.
#[derive(Debug, Default)]
pub struct Watermarks {
    levels: Vec<Level>,
    /// Changes of slot owners on their way, by id: what they hold the levels at.
    changes: BTreeMap<u64, ChangeHold>,
    /// Changes whose holds ended: a word about one that comes later changes nothing.
    ended: BTreeSet<u64>,
    /// Producers removed while a change still waits for their word that they are done: they
    /// count (as does what they said) until it comes, on the data lane, behind their holds.
    retiring: BTreeSet<CoreId>,
    /// Producers whose node was lost: a change they were part of can no longer be exact.
    lost: BTreeSet<CoreId>,
}

/// While a change moves slots, a moving slot's timers fire, and the messages that waited for
/// it are applied, on its new owner after that core and the old one may have said later
/// watermarks for the next stage; those outputs would be late there. So each old owner holds
/// every later level at the watermark its stage had when it prepared (outputs of the moving
/// slots are never older), until every core of the change says it is done with it. Both words
/// travel on the data lanes, so "done" comes after everything the core emitted for the change.
#[derive(Debug, Default)]
struct ChangeHold {
    /// Per level, the lowest watermark an old owner holds it at.
    at: Vec<Option<u64>>,
    /// The change's cores, once this core prepared it (until then it holds and never ends).
    cores: Option<BTreeSet<CoreId>>,
    done: BTreeSet<CoreId>,
}

#[derive(Debug, Default, Clone)]
struct Level {
    /// Per producer, its last word (`None`: none yet).
    from: BTreeMap<CoreId, Option<Mark>>,
    /// Forgotten producers, with what was heard from them since.
    gone: BTreeMap<CoreId, Option<Mark>>,
    /// Per producer, the last instant it said (kept when it goes idle).
    last: BTreeMap<CoreId, u64>,
    current: Option<u64>,
}

impl ChangeHold {
    fn at(&self, level: usize) -> Option<u64> {
        self.at.get(level).copied().flatten()
    }

    fn waits_for(&self, core: CoreId) -> bool {
        self.cores.as_ref().is_none_or(|c| c.contains(&core)) && !self.done.contains(&core)
    }

    fn is_done(&self) -> bool {
        (self.cores.as_ref()).is_some_and(|cores| cores.iter().all(|c| self.done.contains(c)))
    }
}

impl Watermarks {
    /// Watermarks over `producers`, none of which has spoken yet.
    pub fn new(levels: usize, producers: impl IntoIterator<Item = CoreId>) -> Self {
        let from: BTreeMap<CoreId, Option<Mark>> =
            producers.into_iter().map(|p| (p, None)).collect();
        let level = Level {
            from,
            gone: BTreeMap::new(),
            last: BTreeMap::new(),
            current: None,
        };
        Watermarks {
            levels: vec![level; levels],
            ..Watermarks::default()
        }
    }

    pub fn current(&self, level: usize) -> Option<u64> {
        self.levels.get(level).and_then(|l| l.current)
    }

    /// New producers: each holds every level back until it speaks (unless it spoke already:
    /// its word may overtake the news of it).
    pub fn add_producers(&mut self, producers: &[CoreId]) {
        for &p in producers {
            // The id of a removed core that a change still counted: from now on it names a new
            // core, which must speak for itself (the old one's "done" still ends the change).
            if self.retiring.remove(&p) {
                for l in &mut self.levels {
                    l.from.insert(p, None);
                }
            }
        }
        for l in &mut self.levels {
            for &p in producers {
                match l.gone.remove(&p) {
                    // An id used again: what was heard from it since it was forgotten counts.
                    Some(word) => {
                        l.from.insert(p, word);
                    }
                    None => {
                        l.from.entry(p).or_insert(None);
                    }
                }
            }
        }
    }

    /// `from` reports `mark` on `level`; returns the level's watermark if it advanced. A word
    /// from a forgotten producer (one that overtook the news of its removal) is kept aside.
    pub fn update(&mut self, level: usize, from: CoreId, mark: Mark) -> Option<u64> {
        let l = self.levels.get_mut(level)?;
        if let Some(word) = l.gone.get_mut(&from) {
            *word = Some(mark);
            return None;
        }
        l.from.insert(from, Some(mark));
        if let Some(t) = mark {
            l.last.insert(from, t);
        }
        self.advance(level)
    }

    /// This core prepared change `change` of `cores` (on its control lane, so before any
    /// removal of one of them).
    pub fn begin_change(&mut self, change: u64, cores: &[CoreId]) -> Vec<(usize, u64)> {
        if self.ended.contains(&change) {
            return Vec::new();
        }
        if cores.iter().any(|c| self.lost.contains(c)) {
            return self.end_change(change);
        }
        self.changes.entry(change).or_default().cores = Some(cores.iter().copied().collect());
        self.end_done_changes()
    }

    /// An old owner of change `change` holds each level at most at `at[level]` (`None`: not
    /// at all) until the change is done.
    pub fn hold(&mut self, change: u64, at: &[Option<u64>]) {
        if self.ended.contains(&change) {
            return;
        }
        let hold = self.changes.entry(change).or_default();
        if hold.at.len() < at.len() {
            hold.at.resize(at.len(), None);
        }
        for (held, &new) in hold.at.iter_mut().zip(at) {
            *held = match (*held, new) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }

    /// `from` is done with change `change`: once every core of it is, its holds end. Returns
    /// the levels that advanced.
    pub fn change_done(&mut self, change: u64, from: CoreId) -> Vec<(usize, u64)> {
        if self.ended.contains(&change) {
            return Vec::new();
        }
        self.changes.entry(change).or_default().done.insert(from);
        let mut advanced = self.end_done_changes();
        // A removed producer the change waited for can go now.
        let free: Vec<CoreId> = (self.retiring.iter().copied())
            .filter(|&r| !self.changes.values().any(|h| h.waits_for(r)))
            .collect();
        for core in free {
            self.retiring.remove(&core);
            merge(&mut advanced, self.forget_now(core));
        }
        advanced
    }

    fn end_change(&mut self, change: u64) -> Vec<(usize, u64)> {
        self.changes.remove(&change);
        self.ended.insert(change);
        self.advance_all()
    }

    fn end_done_changes(&mut self) -> Vec<(usize, u64)> {
        let done: Vec<u64> = (self.changes.iter())
            .filter(|(_, h)| h.is_done())
            .map(|(&id, _)| id)
            .collect();
        let mut advanced = Vec::new();
        for change in done {
            merge(&mut advanced, self.end_change(change));
        }
        advanced
    }

    fn advance_all(&mut self) -> Vec<(usize, u64)> {
        (0..self.levels.len())
            .filter_map(|i| self.advance(i).map(|w| (i, w)))
            .collect()
    }

    /// Moves `level` to the lowest word, within the holds.
    fn advance(&mut self, level: usize) -> Option<u64> {
        let held = self.changes.values().filter_map(|h| h.at(level)).min();
        self.levels.get_mut(level)?.advance(held)
    }

    /// Input ended on `level` (every producer is done): the watermark jumps to the end of time.
    pub fn end(&mut self, level: usize) -> Option<u64> {
        let l = self.levels.get_mut(level)?;
        (l.current != Some(u64::MAX)).then(|| {
            l.current = Some(u64::MAX);
            u64::MAX
        })
    }

    /// `core` was removed (`lost`: its node was lost): it holds nobody back any more, except
    /// that a change still waiting for a removed core's "done" keeps it until that comes (it
    /// is on its way, behind the core's holds); a change a lost core was part of ends. Returns
    /// the levels that advanced.
    pub fn forget(&mut self, core: CoreId, lost: bool) -> Vec<(usize, u64)> {
        let mut advanced = Vec::new();
        if lost {
            self.lost.insert(core);
            let broken: Vec<u64> = (self.changes.iter())
                .filter(|(_, h)| h.cores.as_ref().is_some_and(|c| c.contains(&core)))
                .map(|(&id, _)| id)
                .collect();
            for change in broken {
                merge(&mut advanced, self.end_change(change));
            }
        } else if self.changes.values().any(|h| h.waits_for(core)) {
            self.retiring.insert(core);
            return advanced;
        }
        self.retiring.remove(&core);
        merge(&mut advanced, self.forget_now(core));
        advanced
    }

    fn forget_now(&mut self, core: CoreId) -> Vec<(usize, u64)> {
        let mut advanced = Vec::new();
        for i in 0..self.levels.len() {
            let l = &mut self.levels[i];
            l.gone.insert(core, None);
            l.last.remove(&core);
            if l.from.remove(&core).is_some() {
                if let Some(w) = self.advance(i) {
                    advanced.push((i, w));
                }
            }
        }
        advanced
    }
}

/// Adds `more` advanced levels to `into`, keeping the latest watermark per level.
fn merge(into: &mut Vec<(usize, u64)>, more: Vec<(usize, u64)>) {
    for (level, w) in more {
        into.retain(|&(l, _)| l != level);
        into.push((level, w));
    }
    into.sort_unstable();
}

impl Level {
    /// Moves to the lowest word (but no further than `held`), if every producer has spoken.
    fn advance(&mut self, held: Option<u64>) -> Option<u64> {
        if self.from.values().any(Option::is_none) {
            return None;
        }
        // Idle producers hold nobody back. With every one idle, the lowest last instant stands
        // (as it would have, had the words come in another order: a core's first "idle" may
        // reach another core after the reading core has said its last instant and closed).
        let lowest = (self.from.values().flatten().flatten().min())
            .or_else(|| self.last.values().min())
            .copied()?;
        let min = held.map_or(lowest, |h| h.min(lowest));
        if self.current.is_some_and(|c| c >= min) {
            return None;
        }
        self.current = Some(min);
        Some(min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_the_minimum_over_producers_and_never_goes_back() {
        let mut w = Watermarks::new(2, [1, 2]);
        assert_eq!(w.update(0, 1, Some(100)), None, "core 2 has not spoken");
        assert_eq!(w.update(0, 2, Some(50)), Some(50));
        assert_eq!(w.update(0, 1, Some(200)), None, "core 2 holds it at 50");
        assert_eq!(w.update(0, 2, Some(150)), Some(150));
        assert_eq!(w.update(0, 2, Some(120)), None, "it never goes back");
        assert_eq!(w.current(0), Some(150));
        assert_eq!(
            w.update(0, 2, None),
            Some(200),
            "an idle producer holds none back"
        );
        assert_eq!(w.current(1), None, "levels are apart");
        w.update(1, 1, None);
        assert_eq!(w.update(1, 2, None), None, "all idle: no watermark yet");
        assert_eq!(w.end(0), Some(u64::MAX));
        assert_eq!(w.end(0), None);
    }

    #[test]
    fn the_order_in_which_an_idle_word_arrives_does_not_hold_the_watermark() {
        // Core 1 reads a connection, says 2100 and closes it; core 2's first word (idle) comes
        // only after all that: the watermark gets to 2100 all the same (the windows test
        // lost a window to this under load).
        let mut w = Watermarks::new(1, [1, 2]);
        assert_eq!(w.update(0, 1, Some(2100)), None, "core 2 has not spoken");
        assert_eq!(w.update(0, 1, None), None);
        assert_eq!(w.update(0, 2, None), Some(2100));
        // The other order gives the same.
        let mut w = Watermarks::new(1, [1, 2]);
        w.update(0, 2, None);
        assert_eq!(w.update(0, 1, Some(2100)), Some(2100));
        assert_eq!(w.update(0, 1, None), None);
    }

    #[test]
    fn a_new_producer_holds_back_until_it_speaks_and_a_removed_one_releases() {
        let mut w = Watermarks::new(1, [1]);
        assert_eq!(w.update(0, 1, Some(10)), Some(10));
        w.add_producers(&[2]);
        assert_eq!(w.update(0, 1, Some(20)), None, "core 2 is new and silent");
        assert_eq!(w.update(0, 2, Some(90)), Some(20));
        w.add_producers(&[2]);
        assert_eq!(
            w.update(0, 1, Some(30)),
            Some(30),
            "a spoken producer stays heard"
        );
        assert_eq!(w.forget(1, false), vec![(0, 90)]);
        assert_eq!(
            w.update(0, 1, Some(40)),
            None,
            "a forgotten producer's late word holds nobody back"
        );
        assert_eq!(w.update(0, 2, Some(95)), Some(95));
        w.add_producers(&[1]);
        assert_eq!(w.current(0), Some(95));
        assert_eq!(
            w.update(0, 2, Some(99)),
            None,
            "an id used again counts its word"
        );
        assert_eq!(w.update(0, 1, Some(120)), Some(99));
    }

    #[test]
    fn a_change_holds_later_levels_until_each_of_its_cores_is_done() {
        let mut w = Watermarks::new(2, [1, 2, 3]);
        for core in [1, 2, 3] {
            w.update(0, core, Some(100));
            w.update(1, core, Some(100));
        }
        // Core 1 gives slots up while its stage 0 is at 100: level 1 stays there.
        w.hold(7, &[None, Some(100)]);
        for core in [1, 2, 3] {
            w.update(0, core, Some(500));
        }
        assert_eq!(w.current(0), Some(500), "level 0 is not held");
        for core in [1, 2] {
            assert_eq!(w.update(1, core, Some(500)), None);
        }
        assert_eq!(w.update(1, 3, Some(500)), None, "held at 100");
        assert_eq!(w.current(1), Some(100));
        // Every core's "done" may come before this core prepared the change (other lanes):
        // nothing ends until it knows the change's cores, and all of them are done.
        for core in [2, 1, 3] {
            assert!(w.change_done(7, core).is_empty());
        }
        assert_eq!(w.begin_change(7, &[1, 2, 3]), vec![(1, 500)]);
        assert!(w.changes.is_empty(), "a finished change is forgotten");
        // A word about it that comes later (a removed core's, behind a control message)
        // holds nothing and is not kept.
        w.hold(7, &[None, Some(100)]);
        assert!(w.change_done(7, 2).is_empty());
        assert!(w.changes.is_empty());
        assert_eq!(w.update(1, 1, Some(600)), None);
        assert_eq!(w.update(1, 2, Some(600)), None);
        assert_eq!(w.update(1, 3, Some(600)), Some(600));
    }

    #[test]
    fn a_removed_core_counts_until_it_is_done_and_a_lost_one_ends_its_changes() {
        let mut w = Watermarks::new(2, [1, 2, 3]);
        for core in [1, 2, 3] {
            w.update(1, core, Some(100));
        }
        w.begin_change(8, &[1, 2, 3]);
        // Core 3 gives slots up and retires; its removal overtakes its hold and its "done".
        assert!(w.forget(3, false).is_empty(), "it still counts");
        w.update(1, 1, Some(300));
        assert_eq!(
            w.update(1, 2, Some(300)),
            None,
            "core 3's word (100) still counts"
        );
        w.hold(8, &[None, Some(100)]);
        assert!(w.change_done(8, 1).is_empty());
        assert!(w.change_done(8, 2).is_empty());
        assert_eq!(w.change_done(8, 3), vec![(1, 300)], "done, then forgotten");
        assert!(w.retiring.is_empty());
        assert_eq!(
            w.update(1, 3, Some(50)),
            None,
            "its late word holds nobody back"
        );

        // A lost core's changes end (they cannot be exact any more), and so do its words.
        w.begin_change(9, &[1, 2]);
        w.hold(9, &[None, Some(300)]);
        w.update(1, 1, Some(400));
        assert_eq!(w.update(1, 2, Some(400)), None, "held");
        assert_eq!(w.forget(2, true), vec![(1, 400)]);
        assert!(w.changes.is_empty());
        // A change prepared after the loss of one of its cores does not hold either.
        w.hold(10, &[None, Some(400)]);
        assert!(w.begin_change(10, &[1, 2]).is_empty());
        assert!(w.changes.is_empty());
        assert_eq!(w.update(1, 1, Some(500)), Some(500));
    }

    #[test]
    fn an_id_used_again_before_the_old_cores_done_names_the_new_core() {
        let mut w = Watermarks::new(2, [1, 2, 3]);
        for core in [1, 2, 3] {
            w.update(1, core, Some(300));
        }
        w.begin_change(11, &[1, 2, 3]);
        assert!(
            w.forget(3, false).is_empty(),
            "core 3 retires; the change counts it"
        );
        w.add_producers(&[3]);
        assert_eq!(w.update(1, 1, Some(900)), None);
        assert_eq!(
            w.update(1, 2, Some(900)),
            None,
            "the new core 3 has not spoken"
        );
        for core in [1, 2, 3] {
            assert!(
                w.change_done(11, core).is_empty(),
                "the old core 3's done removes nobody"
            );
        }
        assert_eq!(
            w.update(1, 3, Some(700)),
            Some(700),
            "the new core 3 counts"
        );
    }
}
