//! A core's task for one source connection: read, decode, route and apply in bounded steps,
//! and hand the connection over (with the bytes not yet decoded) when the core leaves.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use futures_lite::future;
use quokka_io::tcp::{FrameReader, SourceError};

use super::Core;
use crate::dataflow::Ingress;
use crate::metrics::now_ns;
use crate::runtime::messages::Handover;

/// Frames a source connection handles before it dispatches its batches and lets other tasks
/// run: bounds the time a message waits behind the rest of its read.
const FRAMES_PER_STEP: usize = 64;

enum Wake {
    Read(Result<bool, SourceError>),
    Leave,
}

/// Reads one source connection until it ends, fails, the core stops, or the core leaves (then
/// the connection is handed over with the bytes not yet decoded).
pub(super) async fn read_source(core: Rc<Core>, handover: Handover) {
    let Handover {
        source,
        stream,
        pending,
    } = handover;
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
    let key = core.next_source.get();
    core.next_source.set(key + 1);
    match stream.try_clone() {
        Ok(handle) => {
            if core.drain_deadline.get().is_some() {
                // Stopping already: the connection arrived too late to be read.
                let _ = handle.shutdown(std::net::Shutdown::Read);
            }
            core.sources.borrow_mut().insert(key, handle);
        }
        Err(e) => {
            tracing::error!(core = core.id, %peer, "cannot adopt source connection: {e}");
            core.open_sources.fetch_sub(1, Ordering::AcqRel);
            return;
        }
    }
    core.report.borrow_mut().connections += 1;
    let source_name = core
        .config
        .source_names
        .get(source)
        .cloned()
        .unwrap_or_default();
    tracing::debug!(core = core.id, %peer, source = %source_name, "reading source connection");

    let mut reader = FrameReader::new(stream, core.config.max_frame, &pending);
    let mut ingress = core.dataflow.ingress(source);
    let mut now = now_ns();
    let outcome: Result<bool, String> = 'read: loop {
        // Work through what was read in bounded steps, yielding between them.
        loop {
            match step(&core, &mut reader, &mut *ingress, now).await {
                Ok(true) => {
                    core.poke_inbox();
                    future::yield_now().await
                }
                Ok(false) => break,
                Err(e) => break 'read Err(e),
            }
        }
        if core.leaving.get() {
            break Ok(true);
        }
        let leave = core.leave_signal.wait();
        let woke = future::or(async { Wake::Read(reader.read_more().await) }, async {
            leave.await;
            Wake::Leave
        })
        .await;
        match woke {
            Wake::Read(Ok(true)) => now = now_ns(),
            Wake::Read(Ok(false)) => break Ok(false),
            Wake::Read(Err(e)) => break Err(e.to_string()),
            Wake::Leave => break Ok(true),
        }
    };
    let handle = core.sources.borrow_mut().remove(&key);
    match outcome {
        Ok(true) => {
            if let Some(stream) = handle {
                let pending = reader.pending();
                core.handovers.borrow_mut().push(Handover {
                    source,
                    stream,
                    pending,
                });
            }
        }
        Ok(false) => {
            core.open_sources.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(core = core.id, %peer, "source connection closed");
        }
        Err(reason) => {
            core.open_sources.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(core = core.id, %peer, source = %source_name, "closing source connection: {reason}");
            core.report.borrow_mut().connection_errors += 1;
        }
    }
    core.sources_changed.notify_all();
}

/// One bounded step of a connection: up to [`FRAMES_PER_STEP`] frames decoded, routed and
/// dispatched in one synchronous action. `Ok(true)` if more frames may be waiting.
async fn step(
    core: &Core,
    reader: &mut FrameReader,
    ingress: &mut dyn Ingress,
    now: u64,
) -> Result<bool, String> {
    core.wait_room().await;
    let table = core.table.borrow().clone();
    let mut frames = 0;
    let mut error = None;
    while frames < FRAMES_PER_STEP {
        match reader.next_frame() {
            Ok(Some(frame)) => match ingress.push(frame, now, &table) {
                Ok(()) => frames += 1,
                Err(e) => {
                    error = Some(format!("a frame was rejected by the decoder: {e}"));
                    break;
                }
            },
            Ok(None) => break,
            Err(e) => {
                error = Some(SourceError::from(e).to_string());
                break;
            }
        }
    }
    core.report.borrow_mut().frames += frames as u64;
    core.dispatch(ingress);
    match error {
        Some(e) => Err(e),
        None => Ok(frames == FRAMES_PER_STEP),
    }
}
