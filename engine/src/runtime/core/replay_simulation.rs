//! A seeded simulation of recovery replays (tests only): two sources read on two cores route
//! to four cores over FIFO lanes in a random interleaving; a checkpoint is taken; a core is
//! lost with whatever was on its way to it, and often a second one soon after (while the first
//! one's replay runs); each time, the lost slots come back from the checkpoint on survivors,
//! which take them over at random moments, and each source core switches to the recovery's
//! table and rewinds to the checkpoint at a random moment of its own (in order), replaying
//! through [`Replay`]. Checked: every slot applies each (stream, position) routed to it once,
//! in the stream's order, as if nothing had been lost. (No checkpoint completes while a
//! replay runs: a core refuses its barrier then, so a second loss recovers from the same one.)

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::replay::Replay;
use crate::routing::{CoreId, Move, RoutingTable, NOWHERE};

const SLOTS: u32 = 16;
const CORES: u16 = 4;

type Msg = (usize, u64);

/// A recovery as a source core sees it: the table to switch to, what to rewind to (the
/// checkpoint's position), and the slots it restores.
#[derive(Clone)]
struct Switch {
    table: RoutingTable,
    to: u64,
    restored: BTreeSet<u32>,
}

struct Source {
    core: CoreId,
    position: u64,
    table: RoutingTable,
    replay: Option<Replay>,
    /// Recoveries this core has not switched to yet, in order.
    pending: VecDeque<Switch>,
}

struct Sim {
    rng: u64,
    total: u64,
    sources: Vec<Source>,
    lanes: BTreeMap<(CoreId, CoreId), VecDeque<Msg>>,
    /// What each slot applied, in order (a lost slot's is reset to the checkpoint's).
    applied: BTreeMap<u32, Vec<Msg>>,
    /// Restored slots not taken over yet, with what waits for them.
    incoming: BTreeMap<u32, Vec<Msg>>,
    dead: BTreeSet<CoreId>,
}

fn slot_of((stream, position): Msg) -> u32 {
    let key = [stream as u8, position as u8, (position >> 8) as u8];
    (crate::hash::stable_hash(&key) % u64::from(SLOTS)) as u32
}

impl Sim {
    fn next(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }

    /// Source `i` reads its next message and routes it.
    fn read(&mut self, i: usize) {
        let s = &mut self.sources[i];
        if s.position >= self.total {
            return;
        }
        let msg = (i, s.position);
        let to = match &mut s.replay {
            Some(r) => r.routes(s.position, &s.table).owner(slot_of(msg)),
            None => s.table.owner(slot_of(msg)),
        };
        s.position += 1;
        if to != NOWHERE {
            self.lanes.entry((s.core, to)).or_default().push_back(msg);
        }
    }

    /// The head of one lane arrives at its core.
    fn deliver(&mut self, lane: (CoreId, CoreId)) {
        let Some(msg) = self.lanes.get_mut(&lane).and_then(VecDeque::pop_front) else {
            return;
        };
        if self.dead.contains(&lane.1) {
            return;
        }
        let slot = slot_of(msg);
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

    /// One random step: a read, a delivery, a takeover or a source core's switch.
    fn step(&mut self) {
        let lanes = self.nonempty_lanes();
        match self.next(5) {
            0 | 1 => {
                let i = self.next(self.sources.len() as u64) as usize;
                self.read(i);
            }
            2 if !lanes.is_empty() => {
                let lane = lanes[self.next(lanes.len() as u64) as usize];
                self.deliver(lane);
            }
            3 => {
                let incoming: Vec<u32> = self.incoming.keys().copied().collect();
                if !incoming.is_empty() {
                    let slot = incoming[self.next(incoming.len() as u64) as usize];
                    self.take_over(slot);
                }
            }
            _ => {
                let i = self.next(self.sources.len() as u64) as usize;
                self.switch(i);
            }
        }
    }

    fn take_over(&mut self, slot: u32) {
        let waiting = self.incoming.remove(&slot).unwrap_or_default();
        self.applied.entry(slot).or_default().extend(waiting);
    }

    /// Source `i`'s core switches to its next recovery, rewinding in the same action.
    fn switch(&mut self, i: usize) {
        let s = &mut self.sources[i];
        let Some(sw) = s.pending.pop_front() else {
            return;
        };
        s.replay = Some(Replay::rewound(
            s.position,
            &sw.restored,
            SLOTS,
            s.replay.as_ref(),
        ));
        s.position = sw.to;
        s.table = sw.table;
    }
}

/// Every slot of `core` in `table` moves to the cores not in `dead`, in turn.
fn recovery(table: &RoutingTable, core: CoreId, dead: &BTreeSet<CoreId>) -> RoutingTable {
    let alive: Vec<CoreId> = (0..CORES).filter(|c| !dead.contains(c)).collect();
    let moves: Vec<Move> = (table.owned_by(core).enumerate())
        .map(|(i, slot)| Move {
            slot,
            from: core,
            to: alive[i % alive.len()],
        })
        .collect();
    table.with_moves(&moves)
}

fn run(seed: u64, total: u64) {
    let table = RoutingTable::uniform(SLOTS, CORES);
    let source = |core| Source {
        core,
        position: 0,
        table: table.clone(),
        replay: None,
        pending: VecDeque::new(),
    };
    let mut sim = Sim {
        rng: seed | 1,
        total,
        sources: vec![source(0), source(1)],
        lanes: BTreeMap::new(),
        applied: BTreeMap::new(),
        incoming: BTreeMap::new(),
        dead: BTreeSet::new(),
    };
    // A random number of random steps, below `n`.
    let steps = |sim: &mut Sim, n: u64| {
        for _ in 0..sim.next(n) {
            sim.step();
        }
    };
    steps(&mut sim, total * 2);
    // A checkpoint: a consistent cut (barrier alignment is simulated in `checkpoint/`).
    while let Some(&lane) = sim.nonempty_lanes().first() {
        sim.deliver(lane);
    }
    let at: Vec<u64> = sim.sources.iter().map(|s| s.position).collect();
    let saved = sim.applied.clone();
    steps(&mut sim, total * 2);
    // Core 3 goes, then (in two runs of three) core 2, each recovered from the checkpoint.
    let losses: &[CoreId] = if seed.is_multiple_of(3) {
        &[3]
    } else {
        &[3, 2]
    };
    let mut current = table.clone();
    for &lost in losses {
        sim.dead.insert(lost);
        let restored: BTreeSet<u32> = current.owned_by(lost).collect();
        for &slot in &restored {
            sim.applied
                .insert(slot, saved.get(&slot).cloned().unwrap_or_default());
            sim.incoming.insert(slot, Vec::new());
        }
        current = recovery(&current, lost, &sim.dead);
        for (s, &to) in sim.sources.iter_mut().zip(&at) {
            s.pending.push_back(Switch {
                table: current.clone(),
                to,
                restored: restored.clone(),
            });
        }
        steps(&mut sim, total * 3);
    }
    // Everything ends: every source switches, reads to its end, every lane drains.
    for i in 0..sim.sources.len() {
        while !sim.sources[i].pending.is_empty() {
            sim.switch(i);
        }
    }
    for slot in sim.incoming.keys().copied().collect::<Vec<_>>() {
        sim.take_over(slot);
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
fn every_slot_applies_each_message_once_in_order_across_one_or_two_recoveries() {
    for seed in 0..600 {
        run(seed, 40 + seed % 60);
    }
}
