//! A core's part in recovering a lost node's slots (the coordinator's side is
//! `node/coordinator/recover.rs`). The recovery is a change whose one step moves every slot of
//! the lost cores to a survivor; their state comes from the last durable checkpoint, handed to
//! the new owners as if the lost cores had handed it off. At the step's switch a core also
//! rewinds its replayable sources to where that checkpoint says they stood (`replay.rs`): one
//! synchronous action, so everything it routes to a restored slot from then on is what
//! followed the checkpoint, in order.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use super::durable::Recovery;
use super::Core;
use crate::routing::CoreId;
use crate::runtime::Guarantee;
use crate::sink_buffer::Mark;

impl Core {
    pub(super) fn recover(
        self: &Rc<Self>,
        checkpoint: u64,
        lost: Vec<(String, Vec<CoreId>)>,
        streams: Vec<(u32, String)>,
    ) {
        let step = self.prepared.borrow().front().cloned();
        let Some(step) = step else {
            return self.fail("a recovery without a prepared step".into());
        };
        let restored: BTreeSet<u32> = step.moves.iter().map(|m| m.slot).collect();
        let slots = restored.len();
        let recovery = Recovery {
            // The step's epoch tells recoveries apart: it grows with every change.
            id: step.table.epoch(),
            checkpoint,
            restored: Arc::new(restored),
            n_slots: step.table.n_slots(),
        };
        if !self.switch() {
            return;
        }
        self.streams.refuse(streams);
        self.sources.rewind(&recovery, &self.streams);
        for file in self.sources.ended_rewound_files() {
            glommio::spawn_local(super::files::read_file(self.clone(), file)).detach();
        }
        for (node, cores) in &lost {
            for &core in cores {
                self.lost_nodes.borrow_mut().insert(core, node.clone());
                if self.config.guarantee == Guarantee::ExactlyOnce {
                    // What the lost cores' receivers hold beyond the checkpoint comes again
                    // from the restored slots.
                    self.sink.mark(Mark::Dead { checkpoint, core });
                }
            }
        }
        tracing::info!(
            core = self.id,
            checkpoint,
            slots,
            "recovering lost slots: sources rewound to checkpoint {checkpoint}"
        );
    }
}
