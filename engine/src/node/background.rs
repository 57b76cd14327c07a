//! The coordinator's background threads: a checkpoint every interval, and the recovery of
//! lost nodes' slots (or the whole cluster's rollback when they cannot come back alone).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::change_lock::{hold, Changing, Wait, CHECKPOINT};
use super::coordinator::Coordinator;
use crate::cluster::Ending;

/// Takes a checkpoint every `every` until the engine stops; an interval that finds a change
/// running skips its turn (the next one tries again).
pub(super) fn checkpoint_every(
    every: Duration,
    coordinator: &Mutex<Coordinator>,
    changing: &Changing,
    stopping: &AtomicBool,
) {
    // An interval past any clock never comes.
    let Some(mut next) = Instant::now().checked_add(every) else {
        return;
    };
    loop {
        while Instant::now() < next {
            if stopping.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(20)));
        }
        let Some(after) = Instant::now().checked_add(every) else {
            return;
        };
        next = after;
        match hold(coordinator, changing, CHECKPOINT, Wait::Never) {
            // Failures are logged and shown by `status`.
            Ok(mut c) => drop(c.checkpoint()),
            Err(()) => tracing::debug!("checkpoint skipped: a change is running"),
        }
    }
}

/// On the coordinator: recovers the slots of lost nodes (`coordinator/recover.rs`) as soon as
/// no change holds the lock, until the engine stops; a recovery that failed for a reason that
/// may pass (a state dir still locked, a wait that timed out) is tried again.
pub(super) fn recover_lost(
    lost: &flume::Receiver<crate::cluster::LostNode>,
    coordinator: &Mutex<Coordinator>,
    changing: &Changing,
    stopping: &AtomicBool,
) {
    let poll = Duration::from_millis(50);
    let mut retry_at: Option<Instant> = None;
    while !stopping.load(Ordering::Acquire) {
        let heard = lost.recv_timeout(poll).is_ok();
        if !heard && retry_at.is_none_or(|at| Instant::now() < at) {
            continue;
        }
        // Nodes lost together are recovered together: wait a moment for the others.
        std::thread::sleep(poll);
        while lost.try_recv().is_ok() {}
        retry_at = None;
        let mut c = loop {
            if stopping.load(Ordering::Acquire) {
                return;
            }
            // A change the loss cut short ends at its next wait; a checkpoint fails at once.
            match hold(
                coordinator,
                changing,
                "recovery of lost nodes",
                Wait::ForCheckpoint,
            ) {
                Ok(c) => break c,
                Err(()) => std::thread::sleep(poll),
            }
        };
        if let Err(e) = c.recover() {
            if e.rolls_back() {
                tracing::error!("{e}: every node stops its cores and starts again from it");
                c.node.end(Ending::Rollback);
                return;
            }
            let again = e.may_pass();
            tracing::error!(
                "lost slots were not recovered: {e}; they stay without an owner (messages for them are dropped) and changes are refused{}",
                if again { "; trying again in 5s" } else { "" }
            );
            if again {
                retry_at = Some(Instant::now() + Duration::from_secs(5));
            }
        }
    }
}
