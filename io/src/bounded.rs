//! An accept loop that serves at most so many connections at once, each on a thread of its own;
//! one beyond the limit is turned away on the accepting thread, without a thread of its own.
//! The control endpoint and the HTTP endpoint both run on it.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Serves `listener` for as long as the process runs, on a thread named `name`: each accepted
/// connection goes to `handle` on its own thread while fewer than `limit` are served, else to
/// `refuse` on the accepting thread (which must not block for long).
pub fn serve(
    listener: TcpListener,
    name: &'static str,
    limit: usize,
    refuse: impl Fn(TcpStream) + Send + 'static,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("quokka-{name}"))
        .spawn(move || accept(listener, name, limit, refuse, Arc::new(handle)))
}

fn accept(
    listener: TcpListener,
    name: &'static str,
    limit: usize,
    refuse: impl Fn(TcpStream),
    handle: Arc<dyn Fn(TcpStream) + Send + Sync>,
) {
    let served = Arc::new(AtomicUsize::new(0));
    let (mut refused, mut failed) = (0u64, 0u64);
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, say: do not spin, and say so once per spell.
                if failed == 0 {
                    tracing::warn!("{name} endpoint: accept failed: {e}; retrying");
                }
                failed += 1;
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if failed > 0 {
            tracing::info!("{name} endpoint: accepting again after {failed} failed attempts");
            failed = 0;
        }
        // Only this thread adds; handlers only take away, so the check cannot overshoot.
        if served.load(Ordering::Acquire) >= limit {
            if refused == 0 {
                tracing::warn!(
                    "{name} endpoint: {limit} connections are being served; refusing more"
                );
            }
            refused += 1;
            refuse(stream);
            continue;
        }
        if refused > 0 {
            tracing::info!("{name} endpoint: refused {refused} connections while at the limit");
            refused = 0;
        }
        served.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(served.clone());
        let handle = handle.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("quokka-{name}-conn"))
            .spawn(move || {
                let _slot = slot;
                handle(stream)
            });
        if let Err(e) = spawned {
            // The closure, and the slot with it, was dropped.
            tracing::warn!("{name} endpoint: cannot start a thread for a connection: {e}");
        }
    }
}

/// One of the connections being served; frees its place when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
