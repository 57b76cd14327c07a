//! Slot handoffs, both sides. An old owner, once its outputs so far are written, hands each
//! complete slot to its new owner: to a core of this node as the slot's memory itself (nothing
//! copied), to a core of another node as an archive it keeps until acknowledged (a rejected
//! archive is sent again; the slot is never lost meanwhile). The new owner adopts the slot,
//! applies what waited for it and acknowledges.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Instant;

use super::Core;
use crate::dataflow::{MovedSlot, Refused};
use crate::routing::{CoreId, Move};
use crate::runtime::messages::{CoreEvent, CoreMsg, PeerMsg};

/// Times a rejected archive is sent again before the slot is reported stuck (it is never lost:
/// the old owner keeps it).
const HANDOFF_ATTEMPTS: u32 = 3;

/// Archives sent to another node and not yet acknowledged.
#[derive(Default)]
pub(super) struct Handoffs {
    /// Per slot: the new owner and the attempts so far.
    unacknowledged: RefCell<HashMap<u32, (CoreId, u32)>>,
}

impl Core {
    pub(super) fn start_handoffs(self: &Rc<Self>, moves: Vec<Move>) {
        if !moves.is_empty() {
            glommio::spawn_local(hand_off(self.clone(), moves)).detach();
        }
    }

    /// The new owner's side: adopts each slot, applies what waited for it, acknowledges.
    pub(super) async fn adopt(&self, from: CoreId, slots: Vec<MovedSlot>) {
        tracing::trace!(core = self.id, from, n = slots.len(), "step: handoff in");
        let (mut adopted, mut entities, mut bytes) = (Vec::new(), 0, 0);
        for moved in slots {
            self.sink.wait_room().await;
            let (slot, n, size) = (moved.slot, moved.entities, moved.bytes);
            let mut result = Ok(());
            self.with_keyed(|keyed, out, send| match keyed.adopt(moved, out, send) {
                Ok(misrouted) => misrouted,
                Err(refused) => {
                    result = Err(refused);
                    0
                }
            });
            match result {
                Ok(()) => {
                    adopted.push(slot);
                    entities += n;
                    bytes += size;
                }
                Err(refused) => self.refuse(from, refused),
            }
        }
        tracing::trace!(core = self.id, "step: handoff adopted");
        if !adopted.is_empty() {
            self.send_control(from, PeerMsg::HandoffAck { slots: adopted });
            let _ = self.events.send(CoreEvent::Adopted { entities, bytes });
            self.report_finished_steps();
        }
    }

    /// Gives a slot this core cannot adopt back to its old owner: the memory itself to a core
    /// of this node, else a rejection (the old owner still has the archive).
    fn refuse(&self, from: CoreId, refused: Refused) {
        let slot = refused.moved.slot;
        tracing::error!(
            core = self.id,
            from,
            "refused slot {slot}: {}",
            refused.reason
        );
        if self.peers.is_local(from) {
            self.send_control(
                from,
                CoreMsg::Refused {
                    by: self.id,
                    refused,
                },
            );
        } else {
            let reason = refused.reason;
            self.send_control(from, PeerMsg::HandoffRejected { slot, reason });
        }
    }

    /// A core of this node refused a slot handed to it: keep the slot here, and fail the change
    /// (a refusal of memory that never left the node is a bug, not something to retry).
    pub(super) fn refused(&self, by: CoreId, refused: Refused) {
        let slot = refused.moved.slot;
        self.keyed.borrow_mut().take_back(refused.moved);
        self.fail(format!(
            "core {by} refused slot {slot} ({}); its state stays on core {}",
            refused.reason, self.id
        ));
    }

    /// The new owner has `slots`: drop what was kept of them.
    pub(super) fn acknowledged(&self, slots: Vec<u32>) {
        tracing::trace!(core = self.id, n = slots.len(), "step: ack in");
        for slot in slots {
            self.handoffs.unacknowledged.borrow_mut().remove(&slot);
            let released = self.keyed.borrow_mut().release(slot);
            if let Err(e) = released {
                self.fail(format!("acknowledgement of slot {slot}: {e}"));
            }
        }
        self.report_finished_steps();
    }

    /// Cores of another node were lost mid-step: what was handed to them counts as
    /// acknowledged (a recovery restores it from the checkpoint), and slots that waited only
    /// for their markers go to their new owners now.
    pub(super) fn lose_peers(self: &Rc<Self>, lost: &BTreeSet<CoreId>) {
        let (handoffs, forsaken) = self.keyed.borrow_mut().lose(lost);
        self.report_forsaken(forsaken);
        let unacknowledged: Vec<u32> = (self.handoffs.unacknowledged.borrow().iter())
            .filter(|(_, (to, _))| lost.contains(to))
            .map(|(&slot, _)| slot)
            .collect();
        self.acknowledged(unacknowledged);
        self.start_handoffs(handoffs);
    }

    /// Tells the coordinator of slots that were coming from lost cores: it restores them.
    pub(super) fn report_forsaken(&self, slots: Vec<u32>) {
        if !slots.is_empty() {
            let core = self.id;
            let _ = self.events.send(CoreEvent::Forsaken { core, slots });
        }
    }

    pub(super) fn retry_handoff(&self, slot: u32, reason: &str) {
        let pending = self.handoffs.unacknowledged.borrow().get(&slot).copied();
        let Some((to, attempts)) = pending else {
            return self.fail(format!(
                "rejection of slot {slot}, which is not being handed off"
            ));
        };
        if attempts >= HANDOFF_ATTEMPTS {
            return self.fail(format!(
                "slot {slot} was rejected {attempts} times by core {to} ({reason}); its state stays on core {}",
                self.id
            ));
        }
        tracing::warn!(
            core = self.id,
            "core {to} rejected slot {slot} ({reason}); sending it again"
        );
        self.send_archive(to, slot, attempts + 1);
    }

    /// Sends `slot` (kept here until acknowledged) to core `to` of another node, whose link
    /// archives it.
    fn send_archive(&self, to: CoreId, slot: u32, attempt: u32) {
        let outgoing = self.keyed.borrow_mut().send_off(slot);
        (self.handoffs.unacknowledged.borrow_mut()).insert(slot, (to, attempt));
        let from = self.id;
        self.send_control(
            to,
            CoreMsg::SendSlot {
                from,
                slot: outgoing,
            },
        );
    }
}

/// An old owner's side of a handoff: once this core's outputs so far are written (so a reader
/// of the sink never sees a key's later count before an earlier one), hand each complete slot
/// to its new owner: in one message per core of this node, as archives to other nodes.
async fn hand_off(core: Rc<Core>, moves: Vec<Move>) {
    let started = Instant::now();
    tracing::trace!(core = core.id, "step: handoff start");
    core.sink.flushed().await;
    let flush = started.elapsed();
    let mut by_owner: BTreeMap<CoreId, Vec<u32>> = BTreeMap::new();
    for m in &moves {
        by_owner.entry(m.to).or_default().push(m.slot);
    }
    for (to, slots) in by_owner {
        tracing::trace!(core = core.id, to, "step: handoff out");
        if core.peers.is_local(to) {
            let slots = (slots.iter())
                .map(|&slot| core.keyed.borrow_mut().hand_over(slot))
                .collect();
            let adopt = CoreMsg::Adopt {
                from: core.id,
                slots,
            };
            if let Err(CoreMsg::Adopt { slots, .. }) = core.peers.send_local(to, adopt) {
                let n = slots.len();
                for moved in slots {
                    core.keyed.borrow_mut().take_back(moved);
                }
                core.fail(format!(
                    "core {to} is gone: the {n} slots handed to it stay on core {}",
                    core.id
                ));
            }
        } else {
            for slot in slots {
                core.send_archive(to, slot, 1);
            }
        }
        core.poke_inbox();
    }
    tracing::debug!(core = core.id, slots = moves.len(), ?flush, total = ?started.elapsed(), "handed off");
}
