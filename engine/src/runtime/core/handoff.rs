//! Slot handoffs, both sides: an old owner archives each complete slot (once its outputs so far
//! are written) and sends it to the new owner, which installs it, applies what waited for it and
//! acknowledges; a rejected archive is sent again, and the slot is never lost meanwhile.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Instant;

use super::Core;
use crate::archive::SlotArchive;
use crate::routing::{CoreId, Move};
use crate::runtime::messages::{CoreEvent, PeerMsg};

/// Handed-off slots sent as one message: the new owner installs one message while the next is
/// archived. Between messages the hand-off task yields only when the executor's preempt timer
/// asks (an unconditional yield cost a round of every other task per message).
const SLOTS_PER_MESSAGE: usize = 16;

/// Times a rejected handoff is sent again before the slot is reported stuck (it is never lost:
/// the old owner keeps it).
const HANDOFF_ATTEMPTS: u32 = 3;

/// Slots handed off and not yet acknowledged.
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

    /// The new owner's side: installs each archive, applies what waited for it, acknowledges.
    pub(super) async fn install(&self, from: CoreId, archives: Vec<SlotArchive>) {
        tracing::trace!(core = self.id, from, n = archives.len(), "step: handoff in");
        let (mut installed, mut entities, mut bytes) = (Vec::new(), 0, 0);
        for archive in archives {
            self.sink.wait_room().await;
            let result = self
                .keyed
                .borrow_mut()
                .install(&archive, &mut self.sink.buffer());
            self.sink.pushed();
            match result {
                Ok(n) => {
                    installed.push(archive.slot);
                    entities += n;
                    bytes += archive.bytes.len() as u64;
                }
                Err(e) => {
                    tracing::error!(
                        core = self.id,
                        from,
                        "rejected the handoff of slot {}: {e}",
                        archive.slot
                    );
                    let reason = e.to_string();
                    let slot = archive.slot;
                    self.send_control(from, PeerMsg::HandoffRejected { slot, reason });
                }
            }
        }
        tracing::trace!(core = self.id, "step: handoff installed");
        if !installed.is_empty() {
            self.send_control(from, PeerMsg::HandoffAck { slots: installed });
            let _ = self.events.send(CoreEvent::Installed { entities, bytes });
            self.report_finished_steps();
        }
    }

    /// The new owner has `slots`: drop the copies kept here.
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
        let archive = self.keyed.borrow_mut().archive(slot);
        match archive {
            Ok(archive) => {
                self.handoffs
                    .unacknowledged
                    .borrow_mut()
                    .insert(slot, (to, attempts + 1));
                self.send_control(
                    to,
                    PeerMsg::Handoff {
                        from: self.id,
                        archives: vec![archive],
                    },
                );
            }
            Err(e) => self.fail(format!("archiving slot {slot}: {e}")),
        }
    }
}

/// An old owner's side of a handoff: once this core's outputs so far are written (so a reader
/// of the sink never sees a key's later count before an earlier one), archive each complete
/// slot and send it to its new owner.
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
        for chunk in slots.chunks(SLOTS_PER_MESSAGE) {
            let mut archives = Vec::with_capacity(chunk.len());
            for &slot in chunk {
                let archive = core.keyed.borrow_mut().archive(slot);
                match archive {
                    Ok(archive) => {
                        core.handoffs
                            .unacknowledged
                            .borrow_mut()
                            .insert(slot, (to, 1));
                        archives.push(archive);
                    }
                    Err(e) => core.fail(format!("archiving slot {slot}: {e}")),
                }
            }
            let from = core.id;
            tracing::trace!(core = core.id, "step: handoff out");
            core.send_control(to, PeerMsg::Handoff { from, archives });
            core.poke_inbox();
            glommio::yield_if_needed().await;
        }
    }
    tracing::debug!(core = core.id, slots = moves.len(), ?flush, total = ?started.elapsed(), "handed off");
}
