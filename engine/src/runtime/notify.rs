//! A wake-up for tasks of one executor: `wait()` completes at the next `notify_all()`.
//!
//! Single-threaded by design (glommio tasks on one core); the usual pattern
//! `while !ready() { notify.wait().await }` loses no wake-up because nothing runs between the
//! check and the creation of the wait. A waiting future holds one registered waker at most and
//! removes it when dropped, so a wait abandoned in a `select` leaves nothing behind (glommio
//! counts a task's wakers in 16 bits).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub(crate) struct Notify {
    generation: Cell<u64>,
    next_id: Cell<u64>,
    waiters: RefCell<BTreeMap<u64, Waker>>,
}

impl Notify {
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get() + 1);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters.into_values() {
            w.wake();
        }
    }

    pub fn wait(&self) -> Wait<'_> {
        Wait {
            notify: self,
            generation: self.generation.get(),
            id: None,
        }
    }

    #[cfg(test)]
    fn registered(&self) -> usize {
        self.waiters.borrow().len()
    }
}

pub(crate) struct Wait<'a> {
    notify: &'a Notify,
    generation: u64,
    id: Option<u64>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let notify = self.notify;
        let id = *self.id.get_or_insert_with(|| {
            let id = notify.next_id.get();
            notify.next_id.set(id + 1);
            id
        });
        notify.waiters.borrow_mut().insert(id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.notify.waiters.borrow_mut().remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn poll(w: &mut Wait<'_>, waker: &Waker) -> Poll<()> {
        Pin::new(w).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn wait_completes_after_notify_and_repolls_hold_one_waker() {
        let n = Notify::default();
        let count = Arc::new(Count(0.into()));
        let waker = Waker::from(count.clone());
        let mut w = n.wait();
        for _ in 0..100_000 {
            assert_eq!(poll(&mut w, &waker), Poll::Pending);
        }
        assert_eq!(n.registered(), 1, "re-polling replaces the waker");
        n.notify_all();
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(poll(&mut w, &waker), Poll::Ready(()));
    }

    #[test]
    fn dropped_waits_leave_nothing_behind() {
        let n = Notify::default();
        let waker = Waker::from(Arc::new(Count(0.into())));
        for _ in 0..100_000 {
            let mut w = n.wait();
            assert_eq!(poll(&mut w, &waker), Poll::Pending);
        }
        assert_eq!(n.registered(), 0);
    }

    #[test]
    fn a_wait_created_after_notify_waits_for_the_next() {
        let n = Notify::default();
        n.notify_all();
        let waker = Waker::from(Arc::new(Count(0.into())));
        let mut w = n.wait();
        assert_eq!(poll(&mut w, &waker), Poll::Pending);
        n.notify_all();
        assert_eq!(poll(&mut w, &waker), Poll::Ready(()));
    }
}
