//! A core's peers: an ordered outbox per other core (data lane, back-pressured) and every
//! core's address for the control lane (handoffs, acknowledgements).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::routing::CoreId;
use crate::runtime::messages::{CoreAddr, CoreMsg};
use crate::runtime::notify::Notify;
use crate::runtime::outbox::Outbox;

#[derive(Default)]
pub(super) struct Peers {
    outboxes: RefCell<BTreeMap<CoreId, Rc<Outbox>>>,
    /// Outboxes of forgotten peers whose sender tasks may still be draining.
    closing: RefCell<Vec<Rc<Outbox>>>,
    controls: RefCell<BTreeMap<CoreId, CoreAddr>>,
    /// Signalled when an outbox sends a message.
    progress: Rc<Notify>,
}

/// A message could not be sent: the peer is unknown or gone.
pub(super) struct NoRoute;

impl Peers {
    /// Learns `peers`; an outbox for each but `me`.
    pub fn add(&self, me: CoreId, peers: Vec<(CoreId, CoreAddr)>) {
        let mut outboxes = self.outboxes.borrow_mut();
        for (peer, addr) in peers {
            if peer != me {
                outboxes.insert(
                    peer,
                    Outbox::start(peer, addr.clone(), self.progress.clone()),
                );
            }
            self.controls.borrow_mut().insert(peer, addr);
        }
    }

    pub fn forget(&self, peer: CoreId) {
        self.controls.borrow_mut().remove(&peer);
        if let Some(outbox) = self.outboxes.borrow_mut().remove(&peer) {
            outbox.close();
            let mut closing = self.closing.borrow_mut();
            closing.retain(|o| !o.is_finished());
            closing.push(outbox);
        }
    }

    /// Closes every outbox and waits until their sender tasks have ended (the core is done:
    /// a task left parked would never be freed, nor what it holds).
    pub async fn close_all(&self) {
        let mut all: Vec<Rc<Outbox>> = std::mem::take(&mut *self.outboxes.borrow_mut())
            .into_values()
            .collect();
        all.append(&mut self.closing.borrow_mut());
        self.controls.borrow_mut().clear();
        for outbox in &all {
            outbox.close();
        }
        while all.iter().any(|o| !o.is_finished()) {
            self.progress.wait().await;
        }
    }

    /// Messages queued in the outboxes, not yet in their peers' inboxes.
    pub fn queued(&self) -> usize {
        self.outboxes.borrow().values().map(|o| o.queued()).sum()
    }

    /// Queues `msg` for `peer`'s data lane, behind everything queued for it before.
    pub fn send(&self, peer: CoreId, msg: CoreMsg) -> Result<(), NoRoute> {
        let outbox = self.outboxes.borrow().get(&peer).cloned();
        outbox.map(|o| o.push(msg)).ok_or(NoRoute)
    }

    /// Queues `msg` for every peer's data lane.
    pub fn send_all(&self, msg: impl Fn() -> CoreMsg) {
        for outbox in self.outboxes.borrow().values() {
            outbox.push(msg());
        }
    }

    /// Sends on `peer`'s control lane (unbounded: never waits).
    pub fn send_control(&self, peer: CoreId, msg: impl Into<CoreMsg>) -> Result<(), NoRoute> {
        let control = self.controls.borrow().get(&peer).cloned();
        match control {
            Some(c) if c.send_control(msg) => Ok(()),
            _ => Err(NoRoute),
        }
    }

    /// Sends on the control lane of `peer`, a core of this node; gives the message back if it
    /// is gone (or not on this node), so what it carries is not lost.
    pub fn send_local(&self, peer: CoreId, msg: CoreMsg) -> Result<(), CoreMsg> {
        match self.controls.borrow().get(&peer) {
            Some(CoreAddr::Local { control, .. }) => control.send(msg).map_err(|e| e.into_inner()),
            _ => Err(msg),
        }
    }

    /// Whether `peer` is a core of this node (a slot reaches it by ownership, not archived).
    pub fn is_local(&self, peer: CoreId) -> bool {
        matches!(
            self.controls.borrow().get(&peer),
            Some(CoreAddr::Local { .. })
        )
    }

    /// Whether every outbox can take another step's batches.
    pub fn have_room(&self) -> bool {
        self.outboxes.borrow().values().all(|o| o.has_room())
    }

    /// Waits until an outbox sends something.
    pub async fn progress(&self) {
        self.progress.wait().await
    }

    /// Waits until everything queued for other cores has reached their inboxes.
    pub async fn flush(&self) {
        loop {
            let pending = self.outboxes.borrow().values().any(|o| !o.is_flushed());
            if !pending {
                return;
            }
            self.progress.wait().await;
        }
    }
}
