//! A seeded simulation of a recovery's replay (tests only): two sources read on two cores
//! route to four cores over FIFO lanes in a random interleaving; a checkpoint is taken; one
//! core is lost with whatever was on its way to it; its slots come back from the checkpoint
//! on the survivors, which take them over at random moments; each source core switches to the
//! recovery's table and rewinds to the checkpoint at a random moment of its own, replaying
//! through [`Replay`]. Checked: every slot applies each (stream, position) routed to it once,
//! in the stream's order, as if nothing had been lost.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::replay::Replay;
use crate::routing::{CoreId, Move, RoutingTable, NOWHERE};

const SLOTS: u32 = 16;
const CORES: u16 = 4;
const LOST: CoreId = 3;

type Msg = (usize, u64);

struct Source {
    core: CoreId,
    position: u64,
    /// Switched to the recovery's table (and rewound).
    switched: bool,
    replay: Option<Replay>,
    /// Once the loss is known: where the checkpoint left it, and the restored slots.
    rewind_to: Option<(u64, Arc<BTreeSet<u32>>)>,
}

struct Sim {
    rng: u64,
    total: u64,
    table: RoutingTable,
    next: RoutingTable,
    sources: Vec<Source>,
    lanes: BTreeMap<(CoreId, CoreId), VecDeque<Msg>>,
    /// What each slot applied, in order (a lost slot's is reset to the checkpoint's).
    applied: BTreeMap<u32, Vec<Msg>>,
    /// Restored slots not taken over yet, with what waits for them.
    incoming: BTreeMap<u32, Vec<Msg>>,
    lost: bool,
}

fn slot_of((stream, position): Msg) -> u32 {
    (crate::hash::stable_hash(&[stream as u8, position as u8, (position >> 8) as u8]) % 16) as u32
}

impl Sim {
    fn next(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }

    /// Source `i` reads its next message and routes it.
    fn read(&mut self, i: usize) {
        let s = &mut self.sources[i];
        if s.position >= self.total {
            return;
        }
        let msg = (i, s.position);
        let routes = match (&mut s.replay, s.switched) {
            (Some(r), _) => r.routes(s.position, &self.next).clone(),
            (None, true) => self.next.clone(),
            (None, false) => self.table.clone(),
        };
        s.position += 1;
        let to = routes.owner(slot_of(msg));
        if to != NOWHERE {
            self.lanes.entry((s.core, to)).or_default().push_back(msg);
        }
    }

    /// The head of one lane arrives at its core.
    fn deliver(&mut self, lane: (CoreId, CoreId)) {
        let Some(msg) = self.lanes.get_mut(&lane).and_then(VecDeque::pop_front) else {
            return;
        };
        let slot = slot_of(msg);
        if lane.1 == LOST && self.lost {
            return;
        }
        match self.incoming.get_mut(&slot) {
            Some(waiting) => waiting.push(msg),
            None => self.applied.entry(slot).or_default().push(msg),
        }
    }

    fn nonempty_lanes(&self) -> Vec<(CoreId, CoreId)> {
        (self.lanes.iter())
            .filter(|(_, q)| !q.is_empty())
            .map(|(&l, _)| l)
            .collect()
    }

    /// One random step: a read, a delivery, a switch or a takeover.
    fn step(&mut self) {
        let lanes = self.nonempty_lanes();
        match self.next(4) {
            0 | 1 => {
                let i = self.next(self.sources.len() as u64) as usize;
                self.read(i);
            }
            2 if !lanes.is_empty() => {
                let lane = lanes[self.next(lanes.len() as u64) as usize];
                self.deliver(lane);
            }
            _ if self.lost => {
                // A survivor takes a restored slot over, or a source core switches.
                if self.next(2) == 0 {
                    if let Some(&slot) = self.incoming.keys().next() {
                        let waiting = self.incoming.remove(&slot).unwrap_or_default();
                        self.applied.entry(slot).or_default().extend(waiting);
                    }
                } else {
                    self.switch_one();
                }
            }
            _ => {}
        }
    }

    fn switch_one(&mut self) {
        let Some(i) = self.sources.iter().position(|s| !s.switched) else {
            return;
        };
        let s = &mut self.sources[i];
        s.switched = true;
        s.replay = s.rewind_to.clone().map(|(to, restored)| {
            let replay = Replay::new(s.position, restored);
            s.position = to;
            replay
        });
    }
}

impl Source {
    fn new(core: CoreId) -> Self {
        Source {
            core,
            position: 0,
            switched: false,
            replay: None,
            rewind_to: None,
        }
    }
}

fn run(seed: u64, total: u64) {
    let table = RoutingTable::uniform(SLOTS, CORES);
    let lost_slots: BTreeSet<u32> = table.owned_by(LOST).collect();
    let moves: Vec<Move> = (lost_slots.iter().enumerate())
        .map(|(i, &slot)| Move {
            slot,
            from: LOST,
            to: (i % 3) as CoreId,
        })
        .collect();
    let mut sim = Sim {
        rng: seed | 1,
        total,
        next: table.with_moves(&moves),
        table,
        sources: vec![Source::new(0), Source::new(1)],
        lanes: BTreeMap::new(),
        applied: BTreeMap::new(),
        incoming: BTreeMap::new(),
        lost: false,
    };
    // A random number of random steps, below `n`.
    let steps = |sim: &mut Sim, n: u64| {
        for _ in 0..sim.next(n) {
            sim.step();
        }
    };
    steps(&mut sim, total * 2);
    // A checkpoint: a consistent cut (the barriers' alignment is simulated elsewhere).
    while let Some(&lane) = sim.nonempty_lanes().first() {
        sim.deliver(lane);
    }
    let at: Vec<u64> = sim.sources.iter().map(|s| s.position).collect();
    let saved = sim.applied.clone();
    steps(&mut sim, total * 2);
    // LOST goes, with what was on its way to it; its slots come back from the checkpoint.
    sim.lost = true;
    let restored = Arc::new(lost_slots.clone());
    for &slot in &lost_slots {
        sim.applied
            .insert(slot, saved.get(&slot).cloned().unwrap_or_default());
        sim.incoming.insert(slot, Vec::new());
    }
    for (s, &to) in sim.sources.iter_mut().zip(&at) {
        s.rewind_to = Some((to, restored.clone()));
    }
    steps(&mut sim, total * 4);
    // Everything ends: every source switches, reads to its end, every lane drains.
    while sim.sources.iter().any(|s| !s.switched) {
        sim.switch_one();
    }
    for (slot, waiting) in std::mem::take(&mut sim.incoming) {
        sim.applied.entry(slot).or_default().extend(waiting);
    }
    for i in 0..sim.sources.len() {
        while sim.sources[i].position < total {
            sim.read(i);
        }
    }
    while let Some(&lane) = sim.nonempty_lanes().first() {
        sim.deliver(lane);
    }
    for slot in 0..SLOTS {
        let got = sim.applied.remove(&slot).unwrap_or_default();
        for stream in 0..2 {
            let mine: Vec<u64> = (got.iter().filter(|m| m.0 == stream))
                .map(|m| m.1)
                .collect();
            let want: Vec<u64> = (0..total)
                .filter(|&p| slot_of((stream, p)) == slot)
                .collect();
            assert_eq!(mine, want, "seed {seed}: slot {slot}, stream {stream}");
        }
    }
}

#[test]
fn every_slot_applies_each_message_once_in_order_across_a_recovery() {
    for seed in 0..400 {
        run(seed, 40 + seed % 60);
    }
}
