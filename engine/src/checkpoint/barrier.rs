//! Barrier alignment on one core: which producers have passed checkpoint n's barrier for each
//! stage, which of their messages must wait (they come after the barrier), and when a stage may
//! be snapshotted (every producer's barrier is in). Pure: the runtime carries it out.
//!
//! A producer's barrier for stage k follows everything it routed to stage k before it (lanes
//! are FIFO), so once every producer's barrier for stage k is here, stage k has applied exactly
//! the messages before the checkpoint, and its slots are snapshotted. What a producer that
//! already passed its barrier sends for stage k waits (it belongs after the checkpoint), until
//! every stage here is snapshotted: so every output this core emits before that is the
//! checkpoint's, and every one after it the next's (what an exactly-once sink's epochs need).
//! Stages align in order on every core: a core sends its own stage k + 1 barrier once its
//! stage k is snapshotted, and no barrier waits for what is held, so nothing waits in a cycle.

use std::collections::BTreeSet;

use thiserror::Error;

use crate::routing::CoreId;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum BarrierError {
    #[error("checkpoint {new} started while checkpoint {running} is aligning")]
    Busy { running: u64, new: u64 },
    #[error("a barrier of checkpoint {got} while checkpoint {want:?} is aligning")]
    Stray { got: u64, want: Option<u64> },
    #[error("stage {stage}: the app has {stages}")]
    NoStage { stage: usize, stages: usize },
    #[error("checkpoint {checkpoint} ended here already (the newest that did: {ended})")]
    Ended { checkpoint: u64, ended: u64 },
}

/// One checkpoint's alignment in progress.
#[derive(Debug, Clone)]
struct Round {
    checkpoint: u64,
    /// Per stage: producers whose barrier is here.
    arrived: Vec<BTreeSet<CoreId>>,
    /// Stages snapshotted so far (they align in order).
    aligned: usize,
}

/// The alignment state of one core.
#[derive(Debug, Clone)]
pub(crate) struct Alignment {
    producers: BTreeSet<CoreId>,
    stages: usize,
    round: Option<Round>,
    /// The newest checkpoint that ended here (done or called off): a barrier of it, or of an
    /// older one, that is still on its way starts nothing.
    ended: u64,
}

impl Alignment {
    pub fn new(stages: usize, producers: impl IntoIterator<Item = CoreId>) -> Self {
        Alignment {
            producers: producers.into_iter().collect(),
            stages,
            round: None,
            ended: 0,
        }
    }

    pub fn add_producer(&mut self, core: CoreId) {
        self.producers.insert(core);
    }

    /// A producer that left or was lost: nothing more comes from it. Returns the stages this
    /// aligned (a barrier it will never send no longer holds them).
    pub fn forget(&mut self, core: CoreId) -> Vec<usize> {
        self.producers.remove(&core);
        self.newly_aligned()
    }

    /// The checkpoint being aligned here, if any.
    pub fn running(&self) -> Option<u64> {
        self.round.as_ref().map(|r| r.checkpoint)
    }

    /// Checkpoint `checkpoint` starts here (the first barrier of it, from anyone, including
    /// this core's own). Starting the running one again is a no-op.
    pub fn begin(&mut self, checkpoint: u64) -> Result<(), BarrierError> {
        if checkpoint <= self.ended {
            return Err(BarrierError::Ended {
                checkpoint,
                ended: self.ended,
            });
        }
        match &self.round {
            Some(r) if r.checkpoint == checkpoint => Ok(()),
            Some(r) => Err(BarrierError::Busy {
                running: r.checkpoint,
                new: checkpoint,
            }),
            None => {
                self.round = Some(Round {
                    checkpoint,
                    arrived: vec![BTreeSet::new(); self.stages],
                    aligned: 0,
                });
                Ok(())
            }
        }
    }

    /// `from`'s barrier of `checkpoint` for `stage` is here. Returns the stages it aligned, in
    /// order (snapshot each, then send its next stage's barrier).
    pub fn on_barrier(
        &mut self,
        checkpoint: u64,
        from: CoreId,
        stage: usize,
    ) -> Result<Vec<usize>, BarrierError> {
        if stage >= self.stages {
            return Err(BarrierError::NoStage {
                stage,
                stages: self.stages,
            });
        }
        if checkpoint <= self.ended {
            // A barrier of a checkpoint that ended here (called off before it came): nothing.
            return Ok(Vec::new());
        }
        if self.round.is_none() {
            self.begin(checkpoint)?;
        }
        let round = self.round.as_mut().expect("begun");
        if round.checkpoint != checkpoint {
            return Err(BarrierError::Stray {
                got: checkpoint,
                want: Some(round.checkpoint),
            });
        }
        round.arrived[stage].insert(from);
        Ok(self.newly_aligned())
    }

    fn newly_aligned(&mut self) -> Vec<usize> {
        let Some(round) = &mut self.round else {
            return Vec::new();
        };
        let mut aligned = Vec::new();
        while round.aligned < self.stages && self.producers.is_subset(&round.arrived[round.aligned])
        {
            aligned.push(round.aligned);
            round.aligned += 1;
        }
        aligned
    }

    /// Whether what `from` sends for `stage` must wait: it passed its barrier there, and the
    /// checkpoint is not done here.
    pub fn holds(&self, from: CoreId, stage: usize) -> bool {
        (self.round.as_ref())
            .is_some_and(|r| r.arrived.get(stage).is_some_and(|a| a.contains(&from)))
    }

    /// Whether every stage is snapshotted: the checkpoint is done here.
    pub fn is_complete(&self) -> bool {
        self.round
            .as_ref()
            .is_some_and(|r| r.aligned == self.stages)
    }

    /// Ends the round (complete, or called off): nothing waits any more.
    pub fn finish(&mut self) -> Option<u64> {
        let ended = self.round.take().map(|r| r.checkpoint);
        self.ended = self.ended.max(ended.unwrap_or(0));
        ended
    }

    /// Checkpoint `checkpoint` is called off by the node: its round ends if it runs, and its
    /// barriers still on their way start nothing. Returns whether a round ended.
    pub fn call_off(&mut self, checkpoint: u64) -> bool {
        self.ended = self.ended.max(checkpoint);
        if self
            .round
            .as_ref()
            .is_some_and(|r| r.checkpoint <= checkpoint)
        {
            self.round = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_aligns_when_every_producer_passed_its_barrier() {
        let mut a = Alignment::new(1, [0, 1, 2]);
        assert_eq!(a.on_barrier(1, 1, 0), Ok(vec![]));
        assert!(a.holds(1, 0), "1 passed its barrier: its messages wait");
        assert!(!a.holds(0, 0) && !a.holds(2, 0));
        assert_eq!(a.on_barrier(1, 0, 0), Ok(vec![]));
        assert_eq!(a.on_barrier(1, 2, 0), Ok(vec![0]));
        assert!(
            a.holds(1, 0),
            "what follows the barrier waits until the checkpoint is done"
        );
        assert!(a.is_complete());
        assert_eq!(a.finish(), Some(1));
        assert!(!a.holds(1, 0), "done: nothing waits");
        assert!(!a.is_complete() && a.running().is_none());
    }

    #[test]
    fn stages_align_in_order_even_when_later_barriers_come_first() {
        let mut a = Alignment::new(2, [0, 1]);
        // Core 1 is done with stage 0 already and says so for stage 1.
        assert_eq!(a.on_barrier(7, 1, 1), Ok(vec![]));
        assert!(a.holds(1, 1) && !a.holds(1, 0));
        assert_eq!(a.on_barrier(7, 0, 1), Ok(vec![]), "stage 0 is not aligned");
        assert_eq!(a.on_barrier(7, 0, 0), Ok(vec![]));
        assert_eq!(a.on_barrier(7, 1, 0), Ok(vec![0, 1]));
        assert!(a.is_complete());
    }

    #[test]
    fn a_lost_producer_no_longer_holds_a_stage() {
        let mut a = Alignment::new(1, [0, 1]);
        assert_eq!(a.on_barrier(3, 0, 0), Ok(vec![]));
        assert_eq!(a.forget(1), vec![0]);
        assert!(a.is_complete());
        // With no round, forgetting aligns nothing.
        let mut idle = Alignment::new(1, [0, 1]);
        assert_eq!(idle.forget(1), Vec::<usize>::new());
    }

    #[test]
    fn a_second_checkpoint_waits_for_the_first() {
        let mut a = Alignment::new(1, [0, 1]);
        a.begin(4).unwrap();
        assert_eq!(a.begin(4), Ok(()));
        assert_eq!(a.begin(5), Err(BarrierError::Busy { running: 4, new: 5 }));
        assert_eq!(
            a.on_barrier(5, 0, 0),
            Err(BarrierError::Stray {
                got: 5,
                want: Some(4)
            })
        );
        assert_eq!(
            a.on_barrier(4, 0, 3),
            Err(BarrierError::NoStage {
                stage: 3,
                stages: 1
            })
        );
    }

    #[test]
    fn barriers_of_a_called_off_checkpoint_start_nothing() {
        let mut a = Alignment::new(1, [0, 1]);
        // The node calls checkpoint 3 off before this core read any barrier of it.
        assert!(!a.call_off(3));
        assert_eq!(a.on_barrier(3, 1, 0), Ok(vec![]));
        assert!(a.running().is_none() && !a.holds(1, 0), "nothing is held");
        assert!(a.begin(3).is_err());
        // A round that runs ends when it is called off.
        assert_eq!(a.on_barrier(4, 1, 0), Ok(vec![]));
        assert!(a.holds(1, 0));
        assert!(a.call_off(4));
        assert!(!a.holds(1, 0));
        assert_eq!(a.on_barrier(4, 0, 0), Ok(vec![]));
        assert!(a.running().is_none());
        // The next checkpoint runs as usual.
        assert_eq!(a.on_barrier(5, 0, 0), Ok(vec![]));
        assert_eq!(a.on_barrier(5, 1, 0), Ok(vec![0]));
    }

    #[test]
    fn a_new_producer_must_pass_the_barrier_too() {
        let mut a = Alignment::new(1, [0]);
        a.begin(1).unwrap();
        a.add_producer(1);
        assert_eq!(a.on_barrier(1, 0, 0), Ok(vec![]));
        assert_eq!(a.on_barrier(1, 1, 0), Ok(vec![0]));
    }
}
