//! A core's ordered queue of messages for one peer core, drained into the peer's inbox by a task
//! of its own. A message with nothing ahead of it goes straight into the inbox if there is
//! room: the sender task runs only when the core's busy tasks let it (a marker waited up to a
//! preempt period behind a stream of batches being applied).
//!
//! Tasks enqueue without awaiting, so routing a step's messages, an epoch switch and its markers
//! are each one synchronous action, and the order they are enqueued in is the order the peer
//! receives them. Only the sender task awaits the peer's bounded inbox; data producers wait for
//! [`Outbox::has_room`] before a step, which is how back-pressure reaches the sockets. Protocol
//! messages (markers, handoffs, acknowledgements) are never held back.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use super::messages::{CoreAddr, CoreMsg, PeerMsg};
use super::notify::Notify;
use crate::routing::CoreId;

/// Data batches queued for one peer before producers wait.
const MAX_QUEUED_BATCHES: usize = 4;

pub(crate) struct Outbox {
    pub peer: CoreId,
    inbox: CoreAddr,
    queue: RefCell<VecDeque<CoreMsg>>,
    queued_batches: Cell<usize>,
    sending: Cell<bool>,
    closed: Cell<bool>,
    /// The sender task has ended (closed and drained).
    finished: Cell<bool>,
    ready: Notify,
}

impl Outbox {
    /// Creates the outbox and starts its sender task on this executor. `progress` is signalled
    /// whenever a message leaves the queue (room for producers, flush waiters).
    pub fn start(peer: CoreId, inbox: CoreAddr, progress: Rc<Notify>) -> Rc<Outbox> {
        let outbox = Rc::new(Outbox {
            peer,
            inbox,
            queue: RefCell::default(),
            queued_batches: Cell::new(0),
            sending: Cell::new(false),
            closed: Cell::new(false),
            finished: Cell::new(false),
            ready: Notify::default(),
        });
        let me = outbox.clone();
        glommio::spawn_local(async move {
            me.send_all(&progress).await;
            me.finished.set(true);
            progress.notify_all();
        })
        .detach();
        outbox
    }

    pub fn push(&self, msg: CoreMsg) {
        let msg = if self.is_flushed() {
            match self.inbox.try_send_data(msg) {
                Ok(()) => return,
                Err(msg) => msg,
            }
        } else {
            msg
        };
        if matches!(msg, CoreMsg::Batch(_)) {
            self.queued_batches.set(self.queued_batches.get() + 1);
        }
        self.queue.borrow_mut().push_back(msg);
        self.ready.notify_all();
    }

    /// Messages queued and not yet handed to the peer's inbox.
    pub fn queued(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Whether producers may add another step's batches.
    pub fn has_room(&self) -> bool {
        self.queued_batches.get() < MAX_QUEUED_BATCHES
    }

    /// Everything enqueued so far has been handed to the peer's inbox.
    pub fn is_flushed(&self) -> bool {
        self.queue.borrow().is_empty() && !self.sending.get()
    }

    /// Whether the sender task has ended (after [`Self::close`], once the queue is drained).
    pub fn is_finished(&self) -> bool {
        self.finished.get()
    }

    /// Sends what is queued, then stops the sender task.
    pub fn close(&self) {
        self.closed.set(true);
        self.ready.notify_all();
    }

    async fn send_all(&self, progress: &Notify) {
        loop {
            let next = self.queue.borrow_mut().pop_front();
            let Some(msg) = next else {
                if self.closed.get() {
                    return;
                }
                self.ready.wait().await;
                continue;
            };
            if matches!(msg, CoreMsg::Batch(_)) {
                self.queued_batches.set(self.queued_batches.get() - 1);
            }
            // What a core says about event time and changes concerns only its receiver: one
            // that retired before the news of it reached this core misses nothing.
            let news = matches!(
                &msg,
                CoreMsg::Peer(
                    PeerMsg::Watermark { .. } | PeerMsg::Hold { .. } | PeerMsg::ChangeDone { .. }
                )
            );
            self.sending.set(true);
            let sent = self.inbox.send_data(msg).await;
            self.sending.set(false);
            progress.notify_all();
            if !sent && news {
                tracing::debug!(
                    peer = self.peer,
                    "core {} is gone: news to it dropped",
                    self.peer
                );
            } else if !sent {
                tracing::error!(
                    peer = self.peer,
                    "core {} is gone: a message to it was lost",
                    self.peer
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(msg: CoreMsg) -> u64 {
        match msg {
            CoreMsg::Peer(PeerMsg::Marker { epoch, .. }) => epoch,
            _ => panic!("only markers were sent"),
        }
    }

    #[test]
    fn messages_keep_their_order_whether_sent_directly_or_queued() {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 << 10)
            .make()
            .expect("executor");
        executor.run(async {
            let (data, lane) = flume::bounded(2);
            let (control, _control) = flume::unbounded();
            let outbox = Outbox::start(1, CoreAddr::Local { data, control }, Rc::default());
            let marker = |epoch| CoreMsg::Peer(PeerMsg::Marker { from: 0, epoch });
            // Two fit in the peer's lane and go straight in; the rest wait in the queue.
            for e in 0..6 {
                outbox.push(marker(e));
            }
            assert_eq!(lane.len(), 2, "the first two went in directly");
            assert!(!outbox.is_flushed());
            let mut got = Vec::new();
            for next in 6..10 {
                got.push(epoch(lane.recv_async().await.unwrap()));
                // The lane has room now, but a new message must not overtake the queue.
                outbox.push(marker(next));
            }
            while got.len() < 10 {
                got.push(epoch(lane.recv_async().await.unwrap()));
            }
            assert_eq!(got, (0..10).collect::<Vec<_>>());
            // Drained: the next message goes straight in again.
            while !outbox.is_flushed() {
                futures_lite::future::yield_now().await;
            }
            outbox.push(marker(10));
            assert_eq!(lane.try_recv().map(epoch).ok(), Some(10));
            outbox.close();
        });
    }
}
