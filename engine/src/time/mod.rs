//! Event time on one core, as plain data: the timers of a stage's entities, kept per slot so
//! they move with the slot, and the watermarks a core derives from its producers (the minimum
//! over them, never going back).

use std::collections::{BTreeSet, HashMap};

use crate::step::Time;

mod watermarks;

pub use watermarks::{Mark, Watermarks};

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

    pub fn has_slot(&self, slot: u32) -> bool {
        self.by_slot.contains_key(&slot)
    }

    /// A copy of every timer of `slot` (for a checkpoint; they stay).
    pub fn of_slot(&self, slot: u32) -> Vec<Timer> {
        let Some(pending) = self.by_slot.get(&slot) else {
            return Vec::new();
        };
        (pending.iter())
            .map(|(clock, due, key)| Timer {
                clock: *clock,
                due: *due,
                key: key.to_vec(),
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
}
