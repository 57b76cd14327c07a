//! Real-time scheduling (`Config::realtime`): executors run `SCHED_FIFO` at priority 1, and the
//! threads that carry migration steps (links, the thread running a change) at priority 2, so
//! the OS never makes a core or a step wait behind other threads of the machine. Measured on a
//! 2-vCPU machine whose CPUs the engine shares with its clients, this is the difference between
//! steps of ~2 ms and steps that now and then wait ~10 ms for a CPU (see `bench/RESULTS.md`).
//! Only for machines where each executor has its CPU: a busy `SCHED_FIFO` thread leaves other
//! threads on its CPU only what the kernel's real-time throttling reserves.

/// Priority of executors.
pub(crate) const CORE_PRIORITY: i32 = 1;
/// Priority of link threads and of the thread running a change: above the cores, so a
/// migration step is never queued behind a busy core; they block at once when idle.
pub(crate) const STEP_PRIORITY: i32 = 2;

/// Puts the calling thread under `SCHED_FIFO` at `priority`; logs why if the OS refuses.
pub(crate) fn enter(priority: i32, what: &str) {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        tracing::warn!(
            "cannot run {what} with real-time priority: {} (needs root or CAP_SYS_NICE)",
            std::io::Error::last_os_error()
        );
    }
}

/// Real-time priority for the calling thread while it lives; the previous policy after.
pub(crate) struct Guard {
    previous: Option<(i32, libc::sched_param)>,
}

impl Guard {
    pub fn new(enabled: bool, what: &str) -> Guard {
        if !enabled {
            return Guard { previous: None };
        }
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is writable.
        let policy = unsafe { libc::sched_getscheduler(0) };
        // SAFETY: as above.
        let got = unsafe { libc::sched_getparam(0, &mut param) };
        enter(STEP_PRIORITY, what);
        Guard {
            previous: (policy >= 0 && got == 0).then_some((policy, param)),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.previous {
            // SAFETY: restores the calling thread's own policy saved in `new`.
            unsafe { libc::sched_setscheduler(0, policy, &param) };
        }
    }
}
