//! The coordinator's lock as changes and checkpoints take it: one at a time, each named while
//! it holds the lock (`changing`, which refusals and `status` read). The name is set and
//! cleared under `changing`'s own lock, in the same step as taking and releasing the
//! coordinator's, so whoever finds the lock taken always learns who holds it: a join that
//! meets a checkpoint waits for it instead of being refused as if a change ran.

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use super::coordinator::Coordinator;

/// Who holds the coordinator's lock, and since when.
pub(crate) type Changing = Mutex<Option<(String, Instant)>>;

/// What `changing` says while a checkpoint holds the coordinator's lock.
pub(crate) const CHECKPOINT: &str = "checkpoint";

/// Whether to wait when a checkpoint holds the lock (one ends within the change timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    ForCheckpoint,
    Never,
}

/// The coordinator's lock, held for one named change or checkpoint.
pub(crate) struct Held<'a> {
    guard: Option<MutexGuard<'a, Coordinator>>,
    changing: &'a Changing,
}

/// Takes the coordinator's lock for `what`; `Err` if something else holds it (and, with
/// [`Wait::ForCheckpoint`], it is not a checkpoint).
pub(crate) fn hold<'a>(
    coordinator: &'a Mutex<Coordinator>,
    changing: &'a Changing,
    what: &str,
    wait: Wait,
) -> Result<Held<'a>, ()> {
    loop {
        let mut named = changing.lock().unwrap_or_else(|e| e.into_inner());
        let guard = match coordinator.try_lock() {
            Ok(c) => c,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let checkpoint = named.as_ref().is_some_and(|(w, _)| w == CHECKPOINT);
                if !(checkpoint && wait == Wait::ForCheckpoint) {
                    return Err(());
                }
                drop(named);
                // Waits for the checkpoint to let go, then tries again (another change may
                // take the lock first: then this one is refused, as any second change is).
                drop(coordinator.lock().unwrap_or_else(|e| e.into_inner()));
                continue;
            }
        };
        *named = Some((what.to_string(), Instant::now()));
        return Ok(Held {
            guard: Some(guard),
            changing,
        });
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut named = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        self.guard = None;
        *named = None;
    }
}

impl Deref for Held<'_> {
    type Target = Coordinator;
    fn deref(&self) -> &Coordinator {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut Coordinator {
        self.guard.as_mut().expect("held until dropped")
    }
}
