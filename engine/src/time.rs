//! Event time on one core, as plain data: the timers of a stage's entities, kept per slot so
//! they move with the slot, and the watermarks a core derives from its producers (the minimum
//! over them, never going back).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::routing::CoreId;
use crate::step::Time;

/// The event time of a message whose source stamps none: never late.
pub const NO_TIME: u64 = u64::MAX;

/// Which clock a timer waits for.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum Clock {
    /// The stage's watermark.
    Event,
    /// The wall clock (milliseconds since the Unix epoch).
    Processing,
}

const CLOCKS: [Clock; 2] = [Clock::Event, Clock::Processing];

/// A pending timer of one entity, as it moves with its slot.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Timer {
    pub clock: Clock,
    pub due: u64,
    pub key: Vec<u8>,
}

impl Timer {
    pub fn new(at: Time, key: &[u8]) -> Self {
        let (clock, due) = split(at);
        Timer {
            clock,
            due,
            key: key.to_vec(),
        }
    }

    pub fn at(&self) -> Time {
        match self.clock {
            Clock::Event => Time::Event(self.due),
            Clock::Processing => Time::Processing(self.due),
        }
    }
}

/// A timer's clock and instant.
pub fn split(at: Time) -> (Clock, u64) {
    match at {
        Time::Event(t) => (Clock::Event, t),
        Time::Processing(t) => (Clock::Processing, t),
    }
}

/// A slot's event time as it moves: how far its old owner's watermark had come (so a message
/// a closed window would have taken is late on the new owner too, whose watermark may lag), and
/// its entities' pending timers.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct SlotTime {
    pub watermark: Option<u64>,
    pub timers: Vec<Timer>,
}

type Pending = BTreeSet<(Clock, u64, Box<[u8]>)>;

/// The pending timers of one stage's entities on one core, per slot.
#[derive(Debug, Default)]
pub struct Timers {
    by_slot: HashMap<u32, Pending>,
    /// Per slot and clock, its earliest due instant: what fires next is at the front.
    next: BTreeSet<(Clock, u64, u32)>,
    /// Slots whose timers wait instead of firing (they are leaving this core).
    frozen: BTreeSet<u32>,
}

impl Timers {
    pub fn len(&self) -> usize {
        self.by_slot.values().map(BTreeSet::len).sum()
    }

    fn first(&self, slot: u32, clock: Clock) -> Option<u64> {
        let pending = self.by_slot.get(&slot)?;
        let (c, due, _) = pending.range((clock, 0, Box::default())..).next()?;
        (*c == clock).then_some(*due)
    }

    /// Sets a timer of entity `key` in `slot` (again: no change).
    pub fn set(&mut self, slot: u32, at: Time, key: &[u8]) {
        let (clock, due) = split(at);
        let before = self.first(slot, clock);
        (self.by_slot.entry(slot).or_default()).insert((clock, due, key.into()));
        if self.frozen.contains(&slot) {
            return;
        }
        if before.is_none_or(|b| due < b) {
            if let Some(b) = before {
                self.next.remove(&(clock, b, slot));
            }
            self.next.insert((clock, due, slot));
        }
    }

    /// Takes out, in order, every timer of `clock` due at or before `upto`, with its slot.
    pub fn due(&mut self, clock: Clock, upto: u64) -> Vec<(u32, Timer)> {
        let mut fired = Vec::new();
        while let Some(&(_, due, slot)) = self
            .next
            .range((clock, 0, 0)..=(clock, upto, u32::MAX))
            .next()
        {
            self.fire_first(clock, due, slot, &mut fired);
        }
        fired
    }

    fn fire_first(&mut self, clock: Clock, due: u64, slot: u32, fired: &mut Vec<(u32, Timer)>) {
        self.next.remove(&(clock, due, slot));
        let pending = self
            .by_slot
            .get_mut(&slot)
            .expect("indexed slot has timers");
        let entry = pending
            .range((clock, due, Box::default())..)
            .next()
            .cloned()
            .expect("indexed timer");
        pending.remove(&entry);
        if pending.is_empty() {
            self.by_slot.remove(&slot);
        }
        if let Some(next) = self.first(slot, clock) {
            self.next.insert((clock, next, slot));
        }
        fired.push((
            slot,
            Timer {
                clock,
                due,
                key: entry.2.into_vec(),
            },
        ));
    }

    /// Stops `slot`'s timers from firing (they, and any set meanwhile, wait) until
    /// [`Self::thaw`] or [`Self::take_slot`].
    pub fn freeze(&mut self, slot: u32) {
        self.unindex(slot);
        self.frozen.insert(slot);
    }

    pub fn thaw(&mut self, slot: u32) {
        if self.frozen.remove(&slot) {
            for clock in CLOCKS {
                if let Some(due) = self.first(slot, clock) {
                    self.next.insert((clock, due, slot));
                }
            }
        }
    }

    fn unindex(&mut self, slot: u32) {
        for clock in CLOCKS {
            if let Some(due) = self.first(slot, clock) {
                self.next.remove(&(clock, due, slot));
            }
        }
    }

    /// Takes every timer of `slot` out (the slot leaves this core).
    pub fn take_slot(&mut self, slot: u32) -> Vec<Timer> {
        self.unindex(slot);
        self.frozen.remove(&slot);
        let Some(pending) = self.by_slot.remove(&slot) else {
            return Vec::new();
        };
        (pending.into_iter())
            .map(|(clock, due, key)| Timer {
                clock,
                due,
                key: key.into_vec(),
            })
            .collect()
    }

    /// Puts a slot's timers in (the slot came to this core).
    pub fn put_slot(&mut self, slot: u32, timers: Vec<Timer>) {
        for t in timers {
            self.set(slot, t.at(), &t.key);
        }
    }
}

/// A stage's watermark on one core, and where a slot's differs from it: the watermark is where
/// timers fire; lateness is judged per slot. A slot that came from a core whose watermark was
/// ahead keeps that one (a floor) until this core's catches up, so a message a window closed
/// there would have taken is late here too. A slot prepared to leave keeps the watermark it had
/// then, and takes that with it: afterwards this core still hears producers that already route
/// the slot's messages to its new owner, and a later watermark could be past one of them.
#[derive(Debug, Default)]
pub struct StageClock {
    watermark: Option<u64>,
    /// Adopted slots whose old owner's watermark was ahead of this one.
    floors: HashMap<u32, u64>,
    /// Slots prepared to leave, with the watermark they had reached then.
    leaving: HashMap<u32, Option<u64>>,
}

impl StageClock {
    pub fn watermark(&self) -> Option<u64> {
        self.watermark
    }

    /// The watermark that judges messages for `slot`.
    pub fn of(&self, slot: u32) -> Option<u64> {
        if self.floors.is_empty() {
            return self.watermark;
        }
        self.watermark.max(self.floors.get(&slot).copied())
    }

    /// Whether a message at `event` for `slot` is late.
    pub fn is_late(&self, slot: u32, event: u64) -> bool {
        event != NO_TIME && self.of(slot).is_some_and(|w| event < w)
    }

    /// Whether a message that waited for `slot` is late by the watermark the slot came with
    /// (it was judged on arrival by this core's own).
    pub fn is_below_floor(&self, slot: u32, event: u64) -> bool {
        event != NO_TIME && self.floors.get(&slot).is_some_and(|&f| event < f)
    }

    /// The watermark advanced to `to`; returns whether it moved.
    pub fn advance(&mut self, to: u64) -> bool {
        if self.watermark >= Some(to) {
            return false;
        }
        self.watermark = Some(to);
        self.floors.retain(|_, floor| *floor > to);
        true
    }

    /// `slot` will leave: it keeps the watermark it has now.
    pub fn leave(&mut self, slot: u32) {
        let reached = self.of(slot);
        self.leaving.insert(slot, reached);
    }

    /// A move of `slot` was called off.
    pub fn stay(&mut self, slot: u32) -> bool {
        self.leaving.remove(&slot).is_some()
    }

    /// Slots prepared to leave and still here.
    pub fn leaving(&self) -> Vec<u32> {
        self.leaving.keys().copied().collect()
    }

    /// `slot` leaves: the watermark that travels with it.
    pub fn take(&mut self, slot: u32) -> Option<u64> {
        let floor = self.floors.remove(&slot);
        (self.leaving.remove(&slot).unwrap_or(self.watermark)).max(floor)
    }

    /// `slot` arrived with the watermark its old owner gave it.
    pub fn adopt(&mut self, slot: u32, came_with: Option<u64>) {
        if let Some(w) = came_with.filter(|&w| self.watermark < Some(w)) {
            self.floors.insert(slot, w);
        }
    }
}

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
        let lowest = self.from.values().flatten().flatten().min().copied()?;
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

    fn keys(fired: &[(u32, Timer)]) -> Vec<(u32, u64, &[u8])> {
        fired
            .iter()
            .map(|(s, t)| (*s, t.due, t.key.as_slice()))
            .collect()
    }

    #[test]
    fn timers_fire_in_due_order_across_slots_and_once() {
        let mut t = Timers::default();
        t.set(3, Time::Event(50), b"a");
        t.set(1, Time::Event(10), b"b");
        t.set(3, Time::Event(20), b"c");
        t.set(3, Time::Event(20), b"c");
        t.set(2, Time::Processing(5), b"p");
        assert_eq!(t.len(), 4, "the same timer twice is one timer");
        let fired = t.due(Clock::Event, 20);
        assert_eq!(keys(&fired), [(1, 10, &b"b"[..]), (3, 20, &b"c"[..])]);
        assert!(t.due(Clock::Event, 20).is_empty(), "a timer fires once");
        assert_eq!(keys(&t.due(Clock::Processing, 100)), [(2, 5, &b"p"[..])]);
        assert_eq!(keys(&t.due(Clock::Event, u64::MAX)), [(3, 50, &b"a"[..])]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn processing_timers_do_not_hide_event_timers() {
        let mut t = Timers::default();
        t.set(0, Time::Processing(1), b"p");
        t.set(9, Time::Event(7), b"e");
        assert_eq!(keys(&t.due(Clock::Event, 7)), [(9, 7, &b"e"[..])]);
        assert_eq!(keys(&t.due(Clock::Processing, 0)), []);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_slots_timers_move_whole() {
        let mut a = Timers::default();
        a.set(4, Time::Event(30), b"x");
        a.set(4, Time::Processing(9), b"y");
        a.set(5, Time::Event(10), b"z");
        let moved = a.take_slot(4);
        assert_eq!(moved.len(), 2);
        assert_eq!(keys(&a.due(Clock::Event, 100)), [(5, 10, &b"z"[..])]);
        assert!(
            a.due(Clock::Processing, 100).is_empty(),
            "the slot's processing timer left too"
        );
        let mut b = Timers::default();
        b.put_slot(4, moved);
        assert_eq!(keys(&b.due(Clock::Event, 100)), [(4, 30, &b"x"[..])]);
        assert_eq!(keys(&b.due(Clock::Processing, 100)), [(4, 9, &b"y"[..])]);
    }

    #[test]
    fn a_frozen_slots_timers_wait_and_move_whole() {
        let mut t = Timers::default();
        t.set(1, Time::Event(10), b"a");
        t.set(2, Time::Event(20), b"b");
        t.freeze(1);
        t.set(1, Time::Event(5), b"c");
        assert_eq!(keys(&t.due(Clock::Event, 100)), [(2, 20, &b"b"[..])]);
        assert_eq!(t.take_slot(1).len(), 2, "frozen timers move with the slot");
        t.set(3, Time::Event(1), b"d");
        t.freeze(3);
        t.thaw(3);
        assert_eq!(
            keys(&t.due(Clock::Event, 1)),
            [(3, 1, &b"d"[..])],
            "a thawed slot fires again"
        );
    }

    #[test]
    fn a_slot_keeps_the_watermark_it_left_with_and_takes_a_floor_where_it_lands() {
        let mut old = StageClock::default();
        old.advance(100);
        old.leave(7);
        old.advance(150);
        assert!(
            old.is_late(7, 120),
            "judged by the core's watermark while it is here"
        );
        assert!(!old.is_late(7, 150));
        assert_eq!(
            old.take(7),
            Some(100),
            "it takes the watermark of when it was prepared"
        );
        let mut new = StageClock::default();
        new.advance(40);
        new.adopt(7, Some(100));
        assert!(
            new.is_late(7, 99),
            "a window closed at the old owner stays closed"
        );
        assert!(
            !new.is_late(8, 99),
            "other slots go by this core's watermark"
        );
        assert!(new.is_below_floor(7, 99));
        new.leave(7);
        assert_eq!(new.take(7), Some(100), "the floor travels on");
        new.adopt(9, Some(30));
        assert!(
            !new.is_below_floor(9, 35),
            "a floor behind this core's watermark is none"
        );
        new.adopt(7, Some(100));
        assert!(new.advance(120));
        assert!(
            !new.is_below_floor(7, 110),
            "the floor goes once the watermark passes it"
        );
        new.leave(3);
        assert!(new.stay(3));
        assert!(new.leaving().is_empty());
    }

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
