//! A core's end on stop: its sources close, everything they routed reaches its owners, and it
//! tells every core that no batch from it follows (`ProducerDone`); it ends once it holds that
//! word from every producer still alive, so nothing in flight is lost.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use super::Core;
use crate::routing::CoreId;
use crate::runtime::messages::{CoreMsg, PeerMsg};

#[derive(Default)]
pub(super) struct Shutdown {
    /// Set on stop: the producers whose `ProducerDone` this core waits for.
    pending: RefCell<Option<BTreeSet<CoreId>>>,
    done: RefCell<BTreeSet<CoreId>>,
}

impl Shutdown {
    pub fn expect(&self, producers: Vec<CoreId>) {
        *self.pending.borrow_mut() = Some(producers.into_iter().collect());
    }

    /// `from` sends nothing more (it finished, or its node was lost).
    pub fn producers_done(&self, from: impl IntoIterator<Item = CoreId>) {
        self.done.borrow_mut().extend(from);
    }

    /// Stopping, and every expected producer has said it is done.
    pub fn is_complete(&self) -> bool {
        let done = self.done.borrow();
        self.pending
            .borrow()
            .as_ref()
            .is_some_and(|pending| pending.is_subset(&done))
    }
}

/// On stop: closes the read side of every source connection, waits for their tasks to flush,
/// then tells every core (this one too) that no batch from here follows.
pub(super) async fn finish_producing(core: Rc<Core>) {
    core.sources.shut_reads();
    core.sources.all_closed().await;
    let from = core.id;
    core.peers
        .send_all(|| CoreMsg::Peer(PeerMsg::ProducerDone { from }));
    // Through the inbox, so the loop waiting there wakes up and counts it.
    core.send_control(core.id, PeerMsg::ProducerDone { from });
}
