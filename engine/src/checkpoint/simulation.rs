//! A seeded simulation of barrier alignment (tests only), in the style of the migration
//! protocol's: cores of a two-stage pipeline exchange messages and barriers over FIFO lanes,
//! delivered in a random interleaving; each core follows [`Alignment`] as the runtime does
//! (hold what follows a producer's barrier, snapshot a stage once aligned, pass the barrier on,
//! release what was held once every stage is done). Checked: every snapshot is a consistent
//! cut (stage 0 holds exactly what the producers sent before their barriers; stage 1 exactly
//! what stage 0's snapshotted messages led to), and every message is applied once, in order.
//!
//! Migrations are not interleaved here: a checkpoint holds the coordinator's lock, so no
//! change of cores runs while cores align (and a core refuses a second checkpoint while one
//! aligns: `BarrierError::Busy`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::Alignment;
use crate::routing::CoreId;

/// A message: stage 0 ones are (producer, number); a stage 1 one is what stage 0 made of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Msg {
    origin: (CoreId, u32),
}

#[derive(Debug, Clone, Copy)]
enum Lane {
    Data { stage: usize, msg: Msg },
    Barrier { stage: usize },
}

struct Core {
    id: CoreId,
    alignment: Alignment,
    /// What each stage applied, in order.
    applied: [Vec<Msg>; 2],
    held: Vec<(CoreId, usize, Msg)>,
    snapshots: [Option<BTreeSet<Msg>>; 2],
}

struct Sim {
    cores: Vec<Core>,
    /// FIFO lanes (from, to).
    lanes: BTreeMap<(CoreId, CoreId), VecDeque<Lane>>,
    rng: u64,
    /// Per core: stage-0 messages it sent before its barrier, per receiver.
    before_barrier: BTreeSet<Msg>,
    barriers_sent: BTreeSet<CoreId>,
}

impl Sim {
    fn next(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }

    fn send(&mut self, from: CoreId, to: CoreId, lane: Lane) {
        self.lanes.entry((from, to)).or_default().push_back(lane);
    }

    /// Where a stage's message for `msg` goes (its key's owner).
    fn owner(&self, msg: Msg, stage: usize) -> CoreId {
        let n = self.cores.len() as u32;
        ((msg.origin.0 as u32 * 7 + msg.origin.1 * 13 + stage as u32 * 5) % n) as CoreId
    }

    /// Core `c` applies `msg` at `stage` (a stage-0 message leads to one for stage 1).
    fn apply(&mut self, c: usize, stage: usize, msg: Msg) {
        self.cores[c].applied[stage].push(msg);
        if stage == 0 {
            let to = self.owner(msg, 1);
            let from = self.cores[c].id;
            if to == from {
                self.deliver(c, from, Lane::Data { stage: 1, msg });
            } else {
                self.send(from, to, Lane::Data { stage: 1, msg });
            }
        }
    }

    /// What arrives at core `c` from `from` (a lane, or itself in place).
    fn deliver(&mut self, c: usize, from: CoreId, lane: Lane) {
        match lane {
            Lane::Data { stage, msg } => {
                if self.cores[c].alignment.holds(from, stage) {
                    self.cores[c].held.push((from, stage, msg));
                } else {
                    self.apply(c, stage, msg);
                }
            }
            Lane::Barrier { stage } => {
                let aligned = (self.cores[c].alignment.on_barrier(1, from, stage)).unwrap();
                for s in aligned {
                    let snapshot = self.cores[c].applied[s].iter().copied().collect();
                    self.cores[c].snapshots[s] = Some(snapshot);
                    if s == 0 {
                        self.barrier_from(c, 1);
                    }
                }
                if self.cores[c].alignment.is_complete() {
                    self.cores[c].alignment.finish();
                    for (from, stage, msg) in std::mem::take(&mut self.cores[c].held) {
                        self.deliver(c, from, Lane::Data { stage, msg });
                    }
                }
            }
        }
    }

    /// Core `c` sends its barrier for `stage` to every core, itself in place.
    fn barrier_from(&mut self, c: usize, stage: usize) {
        let id = self.cores[c].id;
        for to in 0..self.cores.len() as CoreId {
            if to != id {
                self.send(id, to, Lane::Barrier { stage });
            }
        }
        self.deliver(c, id, Lane::Barrier { stage });
    }
}

/// One seeded run: `n` cores, each sending `per_core` stage-0 messages, the checkpoint starting
/// on each core at a random point.
fn run(seed: u64, n: usize, per_core: u32) {
    let ids: Vec<CoreId> = (0..n as CoreId).collect();
    let mut sim = Sim {
        cores: (ids.iter())
            .map(|&id| Core {
                id,
                alignment: Alignment::new(2, ids.iter().copied()),
                applied: [Vec::new(), Vec::new()],
                held: Vec::new(),
                snapshots: [None, None],
            })
            .collect(),
        lanes: BTreeMap::new(),
        rng: seed | 1,
        before_barrier: BTreeSet::new(),
        barriers_sent: BTreeSet::new(),
    };
    let mut sent = vec![0u32; n];
    loop {
        // Some core sends a message, starts the checkpoint, or a lane delivers one thing.
        let busy: Vec<(CoreId, CoreId)> = (sim.lanes.iter())
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        let senders: Vec<usize> = (0..n).filter(|&c| sent[c] < per_core).collect();
        let starters: Vec<usize> = (0..n)
            .filter(|&c| !sim.barriers_sent.contains(&(c as CoreId)))
            .collect();
        if busy.is_empty() && senders.is_empty() && starters.is_empty() {
            break;
        }
        match sim.next(3) {
            0 if !senders.is_empty() => {
                let c = senders[sim.next(senders.len() as u64) as usize];
                let msg = Msg {
                    origin: (c as CoreId, sent[c]),
                };
                sent[c] += 1;
                if !sim.barriers_sent.contains(&(c as CoreId)) {
                    sim.before_barrier.insert(msg);
                }
                let to = sim.owner(msg, 0);
                if to == c as CoreId {
                    sim.deliver(c, to, Lane::Data { stage: 0, msg });
                } else {
                    sim.send(c as CoreId, to, Lane::Data { stage: 0, msg });
                }
            }
            1 if !starters.is_empty() => {
                let c = starters[sim.next(starters.len() as u64) as usize];
                sim.barriers_sent.insert(c as CoreId);
                sim.cores[c].alignment.begin(1).unwrap();
                sim.barrier_from(c, 0);
            }
            _ if !busy.is_empty() => {
                let (from, to) = busy[sim.next(busy.len() as u64) as usize];
                let lane = sim.lanes.get_mut(&(from, to)).unwrap().pop_front().unwrap();
                sim.deliver(to as usize, from, lane);
            }
            _ => {}
        }
    }
    let snap = |stage: usize| -> BTreeSet<Msg> {
        (sim.cores.iter())
            .flat_map(|c| c.snapshots[stage].clone().expect("every stage snapshotted"))
            .collect()
    };
    assert_eq!(snap(0), sim.before_barrier, "seed {seed}: stage 0's cut");
    assert_eq!(
        snap(1),
        sim.before_barrier,
        "seed {seed}: stage 1's cut follows stage 0's"
    );
    for stage in 0..2 {
        let mut all: Vec<Msg> = sim
            .cores
            .iter()
            .flat_map(|c| c.applied[stage].clone())
            .collect();
        let total = all.len();
        all.sort();
        all.dedup();
        assert_eq!(
            all.len(),
            total,
            "seed {seed}: stage {stage} applied a message twice"
        );
        assert_eq!(
            total as u32,
            per_core * n as u32,
            "seed {seed}: stage {stage} lost one"
        );
    }
    // Per producer, in the order it sent them.
    for c in &sim.cores {
        let mut last: BTreeMap<CoreId, u32> = BTreeMap::new();
        for m in &c.applied[0] {
            let before = last.insert(m.origin.0, m.origin.1);
            assert!(
                before.is_none_or(|b| b < m.origin.1),
                "seed {seed}: reordered"
            );
        }
    }
}

#[test]
fn barriers_cut_every_stage_consistently_in_any_interleaving() {
    for seed in 1..=3000u64 {
        let n = 1 + (seed % 4) as usize;
        run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), n, 12);
    }
}
