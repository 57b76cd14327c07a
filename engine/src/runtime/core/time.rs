//! A core's event time: the watermark of its own source connections (the lowest of theirs),
//! sent to every core in order with its batches, and the watermark of each stage here (the
//! lowest over every producer, `time::Watermarks`). When a stage's watermark advances, its
//! timers fire, and this core passes the new watermark on as its word for the next stage.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use super::Core;
use crate::metrics::now_ns;
use crate::migration::ChangePlan;
use crate::routing::CoreId;
use crate::runtime::messages::{CoreMsg, PeerMsg};
use crate::step::now_ms;
use crate::time::{Mark, Watermarks};

pub(super) struct EventTime {
    /// Per source connection read here: its watermark, once it has one.
    connections: RefCell<BTreeMap<u64, u64>>,
    /// Per stage: what this core last told the others (`None`: nothing yet).
    said: RefCell<Vec<Option<Mark>>>,
    /// Per stage: the watermark here, from every producer's word.
    marks: RefCell<Watermarks>,
}

impl EventTime {
    /// Event time over `producers` (every core, this one too).
    pub fn new(stages: usize, producers: impl IntoIterator<Item = CoreId>) -> Self {
        EventTime {
            connections: RefCell::default(),
            said: RefCell::new(vec![None; stages]),
            marks: RefCell::new(Watermarks::new(stages, producers)),
        }
    }
}

impl EventTime {
    /// `stage`'s watermark here.
    pub fn watermark(&self, stage: usize) -> Option<u64> {
        self.marks.borrow().current(stage)
    }

    /// A core giving slots up in `change` holds later stages' watermarks (see
    /// `time::Watermarks`).
    pub fn hold(&self, change: u64, at: &[Option<u64>]) {
        self.marks.borrow_mut().hold(change, at)
    }
}

impl Core {
    /// Source connection `conn` reports its watermark (after a step of its frames, read at
    /// `ingress_ns`, was routed; `None`: it has none, or it closed).
    pub(super) fn source_mark(&self, conn: u64, mark: Mark, ingress_ns: u64) {
        let mut connections = self.time.connections.borrow_mut();
        let before = connections.get(&conn).copied();
        if before == mark {
            return;
        }
        match mark {
            Some(m) => connections.insert(conn, m),
            None => connections.remove(&conn),
        };
        let lowest = connections.values().min().copied();
        drop(connections);
        self.say(0, lowest, ingress_ns);
    }

    /// Tells every core (this one first) this core's word on `stage`'s watermark.
    fn say(&self, stage: usize, mark: Mark, ingress_ns: u64) {
        {
            let mut said = self.time.said.borrow_mut();
            if said[stage] == Some(mark) {
                return;
            }
            said[stage] = Some(mark);
        }
        let from = self.id;
        let msg = PeerMsg::Watermark {
            from,
            stage: stage as u32,
            at: mark,
            ingress_ns,
        };
        self.peers.send_all(|| CoreMsg::Peer(msg.clone()));
        self.on_watermark(from, stage, mark, ingress_ns);
    }

    /// A producer's word on `stage`'s watermark: if the stage's watermark here advances, its
    /// timers fire, and this core passes it on for the next stage.
    pub(super) fn on_watermark(&self, from: CoreId, stage: usize, at: Mark, ingress_ns: u64) {
        if self.hold_word(from, stage, at, ingress_ns) {
            return;
        }
        let advanced = self.time.marks.borrow_mut().update(stage, from, at);
        if let Some(w) = advanced {
            self.advance(stage, w, ingress_ns);
        }
    }

    fn advance(&self, stage: usize, at: u64, ingress_ns: u64) {
        self.with_keyed(|keyed, out, send| keyed.watermark(stage, at, ingress_ns, out, send));
        if stage + 1 < self.dataflow.stages.len() {
            self.say(stage + 1, Some(at), ingress_ns);
        }
    }

    /// A producer left (`lost`: its node was lost): it holds no watermark back any more.
    pub(super) fn forget_producer(&self, core: CoreId, lost: bool) {
        let advanced = self.time.marks.borrow_mut().forget(core, lost);
        self.advance_all(advanced);
    }

    /// Joins change `plan`. In a pipeline of several stages, a core that gives slots up holds
    /// every later stage's watermark where its own stages are now, until every core of the
    /// change is done with it: what the moving slots still emit (timers their new owner fires
    /// late, messages that waited for them) must not come late there.
    pub(super) fn begin_change(&self, plan: &ChangePlan) {
        let stages = self.dataflow.stages.len();
        if stages < 2 {
            return;
        }
        if let Some((open, _)) = *self.change.borrow() {
            tracing::warn!(
                core = self.id,
                open,
                next = plan.id,
                "a change prepared while one is open here"
            );
        }
        if plan.steps.iter().flatten().any(|m| m.from == self.id) {
            // Stage k's outputs feed level k + 1; level 0 is the sources'.
            let at: Vec<Option<u64>> = std::iter::once(None)
                .chain((0..stages - 1).map(|k| Some(self.time.watermark(k).unwrap_or(0))))
                .collect();
            let hold = PeerMsg::Hold {
                change: plan.id,
                at: at.clone(),
            };
            self.peers.send_all(|| CoreMsg::Peer(hold.clone()));
            self.time.marks.borrow_mut().hold(plan.id, &at);
        }
        *self.change.borrow_mut() = Some((plan.id, plan.producers.clone()));
        let advanced = (self.time.marks.borrow_mut()).begin_change(plan.id, &plan.producers);
        self.advance_all(advanced);
    }

    /// Once no step of its change is unfinished here, says so to every core (after all this
    /// core emitted for it, on the same lanes).
    pub(super) fn end_change_if_done(&self) {
        if self.keyed.borrow().in_step() {
            return;
        }
        let Some((change, _)) = self.change.borrow_mut().take() else {
            return;
        };
        let from = self.id;
        let done = PeerMsg::ChangeDone { from, change };
        self.peers.send_all(|| CoreMsg::Peer(done.clone()));
        self.change_done(from, change);
    }

    /// `from` is done with `change`: its holds may end.
    pub(super) fn change_done(&self, from: CoreId, change: u64) {
        let advanced = self.time.marks.borrow_mut().change_done(change, from);
        self.advance_all(advanced);
    }

    fn advance_all(&self, advanced: Vec<(usize, u64)>) {
        let now = now_ns();
        for (stage, w) in advanced {
            self.advance(stage, w, now);
        }
    }

    /// Says this core's first word (idle until a source connection here reports a watermark):
    /// every core holds its watermarks back until each producer has spoken.
    pub(super) fn speak_first(&self) {
        self.say(0, None, now_ns());
    }

    /// New cores hear what this core said so far, so they need not wait for its next word;
    /// their own words are awaited.
    pub(super) fn greet(&self, new: &[CoreId]) {
        self.time.marks.borrow_mut().add_producers(new);
        let said = self.time.said.borrow().clone();
        for (stage, mark) in said.into_iter().enumerate() {
            if let Some(at) = mark {
                for &peer in new {
                    let msg = PeerMsg::Watermark {
                        from: self.id,
                        stage: stage as u32,
                        at,
                        ingress_ns: now_ns(),
                    };
                    self.send_to(peer, CoreMsg::Peer(msg));
                }
            }
        }
    }

    /// Every producer is done with `stage`: its watermark passes the end of time here, and its
    /// pending event-time timers fire.
    pub(super) fn end_of_input(&self, stage: usize) {
        let ended = self.time.marks.borrow_mut().end(stage);
        if let Some(w) = ended {
            let now = now_ns();
            self.with_keyed(|keyed, out, send| keyed.watermark(stage, w, now, out, send));
        }
    }
}

/// How often a core looks for processing-time timers that are due.
const CLOCK_TICK: Duration = Duration::from_millis(10);

/// Fires processing-time timers as the wall clock passes them (within [`CLOCK_TICK`]). Ends
/// with the core.
pub(super) async fn clock(core: Rc<Core>) {
    while core.sleep_unless_done(CLOCK_TICK).await {
        let now = now_ms();
        core.with_keyed(|keyed, out, send| keyed.clock(now, out, send));
    }
}
