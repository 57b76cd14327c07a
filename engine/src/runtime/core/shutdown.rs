//! A core's end on stop, stage by stage: its sources close, everything they routed reaches its
//! owners, and it tells every core that no batch for stage 0 follows from it (`ProducerDone`).
//! A core holding that word from every producer still alive has applied all of stage 0's input:
//! its stage 0 watermark passes the end of time (every event-time timer fires), and it says the
//! same for stage 1, and so on. It ends once the last stage's input has ended, so nothing in
//! flight is lost.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;

use super::Core;
use crate::routing::CoreId;
use crate::runtime::messages::{CoreMsg, PeerMsg};

pub(super) struct Shutdown {
    /// Set on stop: the producers whose `ProducerDone` this core waits for, for each stage.
    pending: RefCell<Option<BTreeSet<CoreId>>>,
    /// Per stage: the producers that said they are done with it.
    done: RefCell<Vec<BTreeSet<CoreId>>>,
    /// Stages whose input has ended here, first to last.
    ended: Cell<usize>,
}

impl Shutdown {
    pub fn new(stages: usize) -> Self {
        Shutdown {
            pending: RefCell::default(),
            done: RefCell::new(vec![BTreeSet::new(); stages]),
            ended: Cell::new(0),
        }
    }

    pub fn expect(&self, producers: Vec<CoreId>) {
        *self.pending.borrow_mut() = Some(producers.into_iter().collect());
    }

    /// `from` sends nothing more for `stage` (`None`: for any stage; it finished, or its node
    /// was lost).
    pub fn producers_done(&self, from: impl IntoIterator<Item = CoreId>, stage: Option<usize>) {
        let mut done = self.done.borrow_mut();
        for core in from {
            match stage {
                Some(s) => {
                    if let Some(d) = done.get_mut(s) {
                        d.insert(core);
                    }
                }
                None => done.iter_mut().for_each(|d| {
                    d.insert(core);
                }),
            }
        }
    }

    /// The next stage whose input just ended (stopping, and every expected producer is done
    /// with it), once.
    pub fn next_ended(&self) -> Option<usize> {
        let stage = self.ended.get();
        let pending = self.pending.borrow();
        let done = self.done.borrow();
        let pending = pending.as_ref()?;
        let ended = done.get(stage).is_some_and(|d| pending.is_subset(d));
        ended.then(|| {
            self.ended.set(stage + 1);
            stage
        })
    }

    /// Stopping, and every stage's input has ended.
    pub fn is_complete(&self) -> bool {
        self.ended.get() == self.done.borrow().len()
    }
}

impl Core {
    /// Ends each stage whose every producer is done: its watermark passes the end of time, and
    /// the next stage hears that this core is done with it.
    pub(super) fn end_stages(&self) {
        while let Some(stage) = self.shutdown.next_ended() {
            self.end_of_input(stage);
            if stage + 1 < self.dataflow.stages.len() {
                self.announce_done(stage as u32 + 1);
            }
        }
    }

    /// Tells every core (this one too) that no batch for `stage` follows from here.
    fn announce_done(&self, stage: u32) {
        let from = self.id;
        self.peers
            .send_all(|| CoreMsg::Peer(PeerMsg::ProducerDone { from, stage }));
        // Through the inbox, so the loop waiting there wakes up and counts it.
        self.send_control(self.id, PeerMsg::ProducerDone { from, stage });
    }
}

/// On stop: closes the read side of every source connection, waits for their tasks to flush,
/// then tells every core (this one too) that no batch for the first stage follows from here.
pub(super) async fn finish_producing(core: Rc<Core>) {
    core.sources.shut_reads();
    core.sources.all_closed().await;
    core.announce_done(0);
}
