//! A deterministic, seeded simulation of the migration protocol: cores produce keyed messages,
//! FIFO channels between every pair of cores deliver them in random interleavings, and a series
//! of grow/shrink changes runs through prepare (every step up front), switch (in random order and
//! at random times, with up to three steps in flight), markers, handoffs and acknowledgements.
//! Checks per-key order and exactly-once. Messages carry event times; producers send
//! watermarks in order with their data, and applying a message sets a timer of its key: every
//! timer moves with its key's slot and fires exactly once, on the core that owns the slot then,
//! once that core's watermark has passed it, in due order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::{Delivery, Protocol, Transition};
use crate::planner::{plan, steps, Change};
use crate::routing::{CoreId, Move, RoutingTable};
use crate::step::Time;
use crate::time::{Clock, SlotTime, StageClock, Timers, Watermarks};

/// A message: which producer sent it, its sequence number for that (producer, key), the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Msg {
    producer: CoreId,
    seq: u64,
    key: u32,
    /// Event time: the producer's clock, which never goes back.
    ts: u64,
}

/// Per-key state: messages applied, and the last sequence number seen per producer.
#[derive(Debug, Clone, Default)]
struct KeyState {
    applied: u64,
    last_seq: HashMap<CoreId, u64>,
}

enum Wire {
    Data(u32, Msg),
    Marker(u64),
    Handoff(u32, HashMap<u32, KeyState>, SlotTime),
    Ack(u32),
    Watermark(u64),
}

struct Core {
    protocol: Protocol<Msg>,
    table: Arc<RoutingTable>,
    state: HashMap<u32, KeyState>,
    /// Tables of the prepared steps this core has yet to switch to, in order.
    prepared: VecDeque<Arc<RoutingTable>>,
    /// Switches the coordinator released to this core that it has not carried out yet.
    pending_switches: usize,
    timers: Timers,
    marks: Watermarks,
    /// Per adopted slot, the watermark its old owner had reached.
    /// The stage's watermark here, per slot where it differs (the engine's own type).
    clock: StageClock,
}

/// xorshift64*: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const N_CORES: usize = 4;
const N_SLOTS: u32 = 16;
const N_KEYS: u32 = 40;

struct Sim {
    rng: Rng,
    cores: Vec<Core>,
    /// FIFO channel from core `i` to core `j` at `i * N_CORES + j`.
    channels: Vec<VecDeque<Wire>>,
    produced: HashMap<(CoreId, u32), u64>,
    members: Vec<CoreId>,
    table: RoutingTable,
    /// Steps of the current change prepared and not yet released for switching.
    unreleased: usize,
    /// Released steps not yet finished on every core: epoch -> cores finished.
    in_flight: HashMap<u64, usize>,
    /// Steps allowed in flight at once in the current change.
    window: usize,
    /// The most steps seen in flight at once.
    most_in_flight: usize,
    /// Per producer, its event-time clock.
    clocks: Vec<u64>,
    /// Timers pending anywhere, as (key, due): setting one again while it waits is a no-op.
    pending: HashSet<(u32, u64)>,
    /// Per (key, due): timers set (while none was pending), and timers fired.
    set: HashMap<(u32, u64), usize>,
    fired: HashMap<(u32, u64), usize>,
    /// Pending timers handed over with their slots.
    timers_moved: usize,
}

fn slot_of_key(key: u32) -> u32 {
    key % N_SLOTS
}

impl Sim {
    fn new(seed: u64) -> Self {
        let table = RoutingTable::uniform(N_SLOTS, 1);
        let cores = (0..N_CORES as CoreId)
            .map(|c| Core {
                protocol: Protocol::new(c, &table),
                table: Arc::new(table.clone()),
                state: HashMap::new(),
                prepared: VecDeque::new(),
                pending_switches: 0,
                timers: Timers::default(),
                marks: Watermarks::new(1, 0..N_CORES as CoreId),
                clock: StageClock::default(),
            })
            .collect();
        let mut sim = Sim {
            rng: Rng(seed | 1),
            cores,
            channels: (0..N_CORES * N_CORES).map(|_| VecDeque::new()).collect(),
            produced: HashMap::new(),
            members: vec![0],
            table,
            unreleased: 0,
            in_flight: HashMap::new(),
            window: 1,
            most_in_flight: 0,
            clocks: vec![0; N_CORES],
            pending: HashSet::new(),
            set: HashMap::new(),
            timers_moved: 0,
            fired: HashMap::new(),
        };
        // Every producer speaks first: a silent one holds the watermark back.
        for core in 0..N_CORES {
            sim.watermark(core);
        }
        sim
    }

    fn send(&mut self, from: usize, to: usize, wire: Wire) {
        if from == to {
            self.receive(to, from, wire);
        } else {
            self.channels[from * N_CORES + to].push_back(wire);
        }
    }

    fn produce(&mut self, core: usize) {
        let key = self.rng.below(N_KEYS as usize) as u32;
        let seq = self.produced.entry((core as CoreId, key)).or_insert(0);
        *seq += 1;
        self.clocks[core] += self.rng.below(3) as u64;
        let msg = Msg {
            producer: core as CoreId,
            seq: *seq,
            key,
            ts: self.clocks[core],
        };
        let slot = slot_of_key(key);
        let owner = usize::from(self.cores[core].table.owner(slot));
        self.send(core, owner, Wire::Data(slot, msg));
    }

    fn apply(&mut self, core: usize, msg: Msg) {
        let entry = self.cores[core].state.entry(msg.key).or_default();
        let last = entry.last_seq.entry(msg.producer).or_insert(0);
        assert_eq!(
            msg.seq,
            *last + 1,
            "key {} from producer {}: order or exactly-once broken",
            msg.key,
            msg.producer
        );
        *last = msg.seq;
        entry.applied += 1;
        let due = msg.ts + 1 + self.rng.below(40) as u64;
        let c = &mut self.cores[core];
        c.timers.set(
            slot_of_key(msg.key),
            Time::Event(due),
            &msg.key.to_le_bytes(),
        );
        if self.pending.insert((msg.key, due)) {
            *self.set.entry((msg.key, due)).or_insert(0) += 1;
        }
    }

    /// Fires the timers of `core` due by its watermark.
    fn fire(&mut self, core: usize) {
        let Some(w) = self.cores[core].clock.watermark() else {
            return;
        };
        let mut last = 0;
        for (slot, t) in self.cores[core].timers.due(Clock::Event, w) {
            let key = u32::from_le_bytes(t.key.as_slice().try_into().unwrap());
            assert_eq!(slot, slot_of_key(key));
            assert!(t.due <= w);
            assert_eq!(
                self.cores[core].protocol.route(slot),
                super::Route::Apply,
                "core {core} fired a timer of slot {slot}, which it does not own"
            );
            assert!(self.pending.remove(&(key, t.due)), "a timer fired twice");
            *self.fired.entry((key, t.due)).or_insert(0) += 1;
            assert!(
                t.due >= last,
                "timers fire in due order: {} after {last}",
                t.due
            );
            last = t.due;
        }
    }

    /// `core` tells every core (itself too) its event time so far.
    fn watermark(&mut self, core: usize) {
        let at = self.clocks[core];
        for to in 0..N_CORES {
            self.send(core, to, Wire::Watermark(at));
        }
    }

    fn receive(&mut self, core: usize, from: usize, wire: Wire) {
        match wire {
            Wire::Data(slot, msg) => {
                // Producers never send late, so every message must be on time where it arrives,
                // by the core's watermark and by the one its slot came with (a message that
                // waits for its slot is applied later, when the watermark may have passed it).
                let c = &self.cores[core];
                assert!(
                    !c.clock.is_late(slot, msg.ts),
                    "key {}: a message at {} arrived after watermark {:?}",
                    msg.key,
                    msg.ts,
                    c.clock.of(slot)
                );
                self.deliver(core, slot, msg)
            }

            Wire::Marker(epoch) => {
                let ready = self.cores[core]
                    .protocol
                    .on_marker(from as CoreId, epoch)
                    .unwrap();
                self.hand_off(core, ready);
            }
            Wire::Handoff(slot, entities, time) => {
                let c = &mut self.cores[core];
                c.state.extend(entities);
                c.timers.put_slot(slot, time.timers);
                c.clock.adopt(slot, time.watermark);
                for m in self.cores[core].protocol.adopt(slot).unwrap() {
                    assert!(
                        !self.cores[core].clock.is_below_floor(slot, m.ts),
                        "key {}: a message at {} waited for a slot that came with watermark {:?}",
                        m.key,
                        m.ts,
                        time.watermark
                    );
                    self.apply(core, m);
                }
                // Timers this core's watermark has passed already fire now.
                self.fire(core);
                self.send(core, from, Wire::Ack(slot));
            }
            Wire::Ack(slot) => self.cores[core].protocol.acknowledged(slot).unwrap(),
            Wire::Watermark(at) => {
                let c = &mut self.cores[core];
                if let Some(w) = c.marks.update(0, from as CoreId, Some(at)) {
                    c.clock.advance(w);
                    self.fire(core);
                }
            }
        }
    }

    fn deliver(&mut self, core: usize, slot: u32, msg: Msg) {
        match self.cores[core].protocol.deliver(slot, msg) {
            Delivery::Apply(m) => self.apply(core, m),
            Delivery::Buffered => {}
            Delivery::Misrouted(m) => {
                panic!("core {core} got {m:?} for slot {slot} it does not own")
            }
            Delivery::Forsaken => panic!("no core is lost here"),
        }
    }

    fn hand_off(&mut self, core: usize, moves: Vec<Move>) {
        for m in moves {
            let keys: Vec<u32> = self.cores[core]
                .state
                .keys()
                .copied()
                .filter(|&k| slot_of_key(k) == m.slot)
                .collect();
            let entities = keys
                .iter()
                .map(|k| (*k, self.cores[core].state.remove(k).unwrap()))
                .collect();
            let c = &mut self.cores[core];
            let time = SlotTime {
                watermark: c.clock.take(m.slot),
                timers: c.timers.take_slot(m.slot),
            };
            self.timers_moved += time.timers.len();
            self.send(
                core,
                usize::from(m.to),
                Wire::Handoff(m.slot, entities, time),
            );
        }
    }

    fn switch(&mut self, core: usize) {
        let c = &mut self.cores[core];
        c.pending_switches -= 1;
        c.table = c.prepared.pop_front().unwrap();
        let sw = c.protocol.switch().unwrap();
        let epoch = c.protocol.epoch() - 1;
        for target in sw.markers_to {
            self.send(core, usize::from(target), Wire::Marker(epoch));
        }
        self.hand_off(core, sw.handoffs);
    }

    /// Counts finished steps; releases further steps of the change while the window allows, or
    /// plans a new random change (every step prepared on every core at once).
    fn coordinate(&mut self, may_plan: bool) {
        for c in &mut self.cores {
            for epoch in c.protocol.take_finished() {
                *self.in_flight.get_mut(&epoch).unwrap() += 1;
            }
        }
        self.in_flight.retain(|_, finished| *finished < N_CORES);
        if self.unreleased > 0 {
            if self.in_flight.len() < self.window {
                let epoch = self.cores[0].prepared[self.cores[0].pending_switches].epoch();
                self.in_flight.insert(epoch, 0);
                self.most_in_flight = self.most_in_flight.max(self.in_flight.len());
                for c in &mut self.cores {
                    c.pending_switches += 1;
                }
                self.unreleased -= 1;
            }
            return;
        }
        if !self.in_flight.is_empty() || !may_plan {
            return;
        }
        let grow =
            self.members.len() == 1 || (self.members.len() < N_CORES && self.rng.below(2) == 0);
        let change = if grow {
            let free: Vec<CoreId> = (0..N_CORES as CoreId)
                .filter(|c| !self.members.contains(c))
                .collect();
            Change::Add(vec![free[self.rng.below(free.len())]])
        } else {
            Change::Remove(vec![self.members[self.rng.below(self.members.len())]])
        };
        let p = plan(&self.table, &self.members, &change).unwrap();
        self.members = p.members;
        self.window = 1 + self.rng.below(3);
        for (next, moves) in steps(&self.table, &p.moves, 1 + self.rng.below(5)) {
            let next = Arc::new(next);
            let t = Transition {
                table: next.clone(),
                moves,
                producers: (0..N_CORES as CoreId).collect(),
            };
            for (i, c) in self.cores.iter_mut().enumerate() {
                c.protocol.prepare(&t).unwrap();
                c.prepared.push_back(next.clone());
                // A leaving slot's timers wait from now on, and it takes the watermark it has
                // reached: no producer has routed anything to its new owner yet.
                for m in t.moves.iter().filter(|m| usize::from(m.from) == i) {
                    c.timers.freeze(m.slot);
                    c.clock.leave(m.slot);
                }
            }
            self.table = (*next).clone();
            self.unreleased += 1;
        }
    }

    fn step(&mut self) {
        if self.rng.below(32) == 0 {
            let core = self.rng.below(N_CORES);
            return self.watermark(core);
        }
        match self.rng.below(10) {
            0..=3 => {
                let core = self.rng.below(N_CORES);
                self.produce(core);
            }
            4..=7 => {
                let busy: Vec<usize> = (0..self.channels.len())
                    .filter(|&i| !self.channels[i].is_empty())
                    .collect();
                if !busy.is_empty() {
                    let ch = busy[self.rng.below(busy.len())];
                    let wire = self.channels[ch].pop_front().unwrap();
                    self.receive(ch % N_CORES, ch / N_CORES, wire);
                }
            }
            8 => {
                let waiting: Vec<usize> = (0..N_CORES)
                    .filter(|&c| self.cores[c].pending_switches > 0)
                    .collect();
                if !waiting.is_empty() {
                    let core = waiting[self.rng.below(waiting.len())];
                    self.switch(core);
                }
            }
            _ => self.coordinate(true),
        }
    }

    /// Releases the rest of the current change and delivers everything in flight; then the
    /// producers' clocks pass every timer.
    fn drain(&mut self) {
        self.deliver_all();
        for core in 0..N_CORES {
            self.clocks[core] = u64::MAX;
            self.watermark(core);
        }
        self.deliver_all();
    }

    fn deliver_all(&mut self) {
        self.window = usize::MAX;
        loop {
            self.coordinate(false);
            for c in 0..N_CORES {
                while self.cores[c].pending_switches > 0 {
                    self.switch(c);
                }
            }
            if let Some(ch) = (0..self.channels.len()).find(|&i| !self.channels[i].is_empty()) {
                let wire = self.channels[ch].pop_front().unwrap();
                self.receive(ch % N_CORES, ch / N_CORES, wire);
            } else if self.unreleased == 0 {
                break;
            }
        }
    }

    fn check(&self) {
        assert!(
            self.pending.is_empty(),
            "timers that never fired, e.g. {:?}",
            self.pending.iter().next()
        );
        assert_eq!(self.fired, self.set, "every timer fired once");
        assert!(!self.fired.is_empty());
        for c in &self.cores {
            assert!(!c.protocol.in_step(), "a step never finished");
            assert_eq!(c.protocol.buffered(), 0);
        }
        let mut applied: HashMap<u32, KeyState> = HashMap::new();
        for (core, c) in self.cores.iter().enumerate() {
            for (&key, st) in &c.state {
                assert_eq!(
                    usize::from(self.table.owner(slot_of_key(key))),
                    core,
                    "key {key} lives on its owner"
                );
                assert!(
                    applied.insert(key, st.clone()).is_none(),
                    "key {key} on two cores"
                );
            }
        }
        for (&(producer, key), &n) in &self.produced {
            let st = &applied[&key];
            assert_eq!(
                st.last_seq[&producer], n,
                "key {key} producer {producer}: every message applied"
            );
        }
        for (key, st) in &applied {
            let sent: u64 = self
                .produced
                .iter()
                .filter(|((_, k), _)| k == key)
                .map(|(_, n)| n)
                .sum();
            assert_eq!(st.applied, sent, "key {key} applied exactly once each");
        }
    }
}

#[test]
fn random_interleavings_keep_order_and_exactly_once() {
    for seed in 1..=300u64 {
        let mut sim = Sim::new(seed);
        for _ in 0..3000 {
            sim.step();
        }
        sim.drain();
        sim.check();
    }
}

#[test]
fn simulation_really_migrates() {
    let mut sim = Sim::new(42);
    let mut epochs = 0;
    for _ in 0..3000 {
        sim.step();
        epochs = epochs.max(sim.table.epoch());
    }
    sim.drain();
    sim.check();
    assert!(
        epochs >= 10,
        "only {epochs} epochs: the simulation must exercise many steps"
    );
    assert!(sim.most_in_flight >= 2, "steps must overlap");
    assert!(
        sim.timers_moved > 0,
        "pending timers must move with their slots"
    );
    assert!(sim.cores.iter().filter(|c| !c.state.is_empty()).count() >= 1);
}
