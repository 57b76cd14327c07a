//! A core's part in a checkpoint. Asked for checkpoint n, the core notes where its replayable
//! sources stand and sends `Barrier(n)` for stage 0 to every core (itself too) behind what it
//! routed: one synchronous action, so the barrier sits between two messages of every source it
//! reads. A stage whose barriers from every producer are here (`checkpoint::Alignment`) is
//! snapshotted (the slots it changed since the last checkpoint are archived), this core sends
//! its own barrier for the next stage, and what the alignment held back is applied. When every
//! stage is done, the snapshot goes to the node, which writes it.

use std::cell::RefCell;
use std::rc::Rc;

use futures_lite::future;

use super::Core;
use crate::routing::CoreId;
use crate::runtime::messages::{CoreMsg, PeerMsg, Snapshot};
use crate::runtime::Guarantee;
use crate::sink_buffer::Mark;

/// A watermark word that came after its producer's barrier: it waits with the batches.
struct HeldWord {
    from: CoreId,
    stage: usize,
    at: Option<u64>,
    ingress_ns: u64,
}

#[derive(Default)]
pub(super) struct Checkpointing {
    /// The snapshot being gathered, stage by stage.
    snapshot: RefCell<Option<Snapshot>>,
    held_words: RefCell<Vec<HeldWord>>,
}

impl Core {
    /// The node asks for checkpoint `checkpoint`: note the sources' positions, send the
    /// stage-0 barriers.
    pub(super) fn start_checkpoint(self: &Rc<Self>, checkpoint: u64) {
        if let Err(e) = self.keyed.borrow_mut().begin_checkpoint(checkpoint) {
            return self.checkpoint_failed(checkpoint, e.to_string());
        }
        if self.sources.replaying() || self.streams.replaying() {
            // Its sources' positions say less than some slots have applied: a restart from
            // it would apply the difference twice. The next interval tries again.
            // Expected for a moment after a recovery: the coordinator says so once.
            let why = "a recovery's replay is under way here (the next checkpoint waits for it)";
            return self.send_failed(checkpoint, why.into());
        }
        let sources = self.sources.marks(checkpoint, &self.streams);
        *self.checkpointing.snapshot.borrow_mut() = Some(Snapshot {
            core: self.id,
            checkpoint,
            parts: Vec::new(),
            sources,
            error: None,
        });
        self.send_barrier(checkpoint, 0);
    }

    /// Sends this core's barrier for `stage` to every core, behind what it routed there.
    fn send_barrier(self: &Rc<Self>, checkpoint: u64, stage: usize) {
        let from = self.id;
        let msg = PeerMsg::Barrier {
            from,
            checkpoint,
            stage: stage as u32,
        };
        self.peers.send_all(|| CoreMsg::Peer(msg.clone()));
        self.barrier_in(checkpoint, from, stage);
    }

    /// `from`'s barrier for `stage` is here.
    pub(super) fn barrier_in(self: &Rc<Self>, checkpoint: u64, from: CoreId, stage: usize) {
        let aligned = self.keyed.borrow_mut().on_barrier(checkpoint, from, stage);
        match aligned {
            Ok(stages) => self.stages_aligned(checkpoint, stages),
            Err(e) => self.checkpoint_failed(checkpoint, e.to_string()),
        }
    }

    /// A producer is gone: its barriers will not come.
    pub(super) fn forget_barriers(self: &Rc<Self>, core: CoreId) {
        let aligned = self.keyed.borrow_mut().alignment().forget(core);
        // Not in the `if let`: its borrow would last through the block.
        let running = self.keyed.borrow_mut().alignment().running();
        if let Some(checkpoint) = running {
            self.stages_aligned(checkpoint, aligned);
        }
    }

    /// Snapshots each aligned stage and passes the barrier on; once every stage is done, ends
    /// the checkpoint here and applies what waited.
    fn stages_aligned(self: &Rc<Self>, checkpoint: u64, stages: Vec<usize>) {
        for stage in stages {
            let saved = self.keyed.borrow_mut().snapshot(stage);
            match (saved, &mut *self.checkpointing.snapshot.borrow_mut()) {
                (Ok(parts), Some(s)) => s.parts.extend(parts),
                (Ok(_), None) => {}
                (Err(e), Some(s)) => s.error = Some(e.to_string()),
                (Err(e), None) => tracing::error!(core = self.id, "checkpoint snapshot: {e}"),
            }
            if stage + 1 < self.dataflow.stages.len() {
                self.send_barrier(checkpoint, stage + 1);
            }
        }
        if self.keyed.borrow_mut().alignment().is_complete() {
            self.finish_checkpoint();
            self.release_held();
        }
    }

    /// Whether `from`'s word on `stage` must wait (it came after its barrier); if so it is kept.
    pub(super) fn hold_word(
        &self,
        from: CoreId,
        stage: usize,
        at: Option<u64>,
        ingress_ns: u64,
    ) -> bool {
        let holds = self.keyed.borrow_mut().alignment().holds(from, stage);
        if holds {
            self.checkpointing.held_words.borrow_mut().push(HeldWord {
                from,
                stage,
                at,
                ingress_ns,
            });
        }
        holds
    }

    /// Applies the batches and watermark words alignment no longer holds (batches first: a
    /// word applied after a batch that followed it only comes later, never too early).
    fn release_held(&self) {
        self.with_keyed(|keyed, out, send| keyed.release_held(out, send));
        let words = std::mem::take(&mut *self.checkpointing.held_words.borrow_mut());
        for w in words {
            // Held again if its stage still aligns.
            self.on_watermark(w.from, w.stage, w.at, w.ingress_ns);
        }
    }

    /// Every stage is snapshotted here. The snapshot goes to the node only once the outputs
    /// made before it are safe, since a restore from it does not make them again: at least
    /// once, written to the sinks' sockets (a crash loses what waits in the sink buffer, not
    /// what the kernel holds); exactly once, the epoch ends in every sink (every output before
    /// this is the checkpoint's) and every receiver holds it.
    fn finish_checkpoint(self: &Rc<Self>) {
        let Some(checkpoint) = self.keyed.borrow_mut().alignment().finish() else {
            return;
        };
        let Some(snapshot) = self.checkpointing.snapshot.borrow_mut().take() else {
            return;
        };
        self.epoch.set(checkpoint);
        if self.config.guarantee == Guarantee::AtLeastOnce {
            let targets = self.sink.pushed_so_far();
            let core = self.clone();
            glommio::spawn_local(async move {
                let written = future::or(
                    async {
                        core.sink.written_up_to(&targets).await;
                        true
                    },
                    async {
                        core.sink.finished().await;
                        false
                    },
                )
                .await;
                if written {
                    let _ = core.snapshots.send(snapshot);
                }
            })
            .detach();
            return;
        }
        self.sink.mark(Mark::EpochEnd(checkpoint));
        let core = self.clone();
        glommio::spawn_local(async move {
            let acknowledged = core.sink.acknowledged(checkpoint);
            if future::or(
                async {
                    acknowledged.await;
                    true
                },
                async {
                    core.sink.finished().await;
                    false
                },
            )
            .await
            {
                let _ = core.snapshots.send(snapshot);
            }
        })
        .detach();
    }

    /// The node gave up on `checkpoint` (a core did not answer in time): nothing waits any more.
    pub(super) fn abort_checkpoint(self: &Rc<Self>, checkpoint: u64) {
        // Also when it has not started here: its barriers still on the data lanes must not
        // start a round that nobody ends.
        let ended = self.keyed.borrow_mut().alignment().call_off(checkpoint);
        if (self.checkpointing.snapshot.borrow().as_ref())
            .is_some_and(|s| s.checkpoint <= checkpoint)
        {
            self.checkpointing.snapshot.borrow_mut().take();
        }
        if ended {
            self.release_held();
            tracing::warn!(core = self.id, checkpoint, "checkpoint called off");
        }
        // A member's node still gathering this checkpoint stops waiting for this core.
        self.send_failed(checkpoint, "called off".into());
    }

    fn checkpoint_failed(&self, checkpoint: u64, error: String) {
        tracing::error!(core = self.id, checkpoint, "checkpoint: {error}");
        self.send_failed(checkpoint, error);
    }

    /// Tells the node this core has no snapshot of `checkpoint`, and why.
    fn send_failed(&self, checkpoint: u64, error: String) {
        let _ = (self.snapshots).send(Snapshot::failed(self.id, checkpoint, error));
    }
}
