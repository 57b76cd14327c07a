//! One core: a glommio executor that owns a share of the slots, reads the source connections it
//! was given, applies keyed batches from every core, and writes its outputs to its own sink
//! connection.
//!
//! Tasks on a core share [`Core`] through an `Rc`; `RefCell` borrows never span an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use quokka_io::tcp::{FrameReader, SourceError};

use super::notify::Notify;
use super::sink::{write_outputs, SinkBuffer};
use super::Config;
use crate::app::{Batch, Dataflow, Ingress, KeyedCore};
use crate::metrics::{now_ns, CoreReport};
use crate::routing::RoutingTable;

/// What travels on a core's inbox channel.
pub(crate) enum CoreMsg {
    /// A source connection for this core to read.
    Connection { source: usize, stream: TcpStream },
    /// Keyed messages whose slots this core owns, from one source connection, in order.
    Batch(Batch),
    /// The sending core has no more batches for anyone (its sources are closed and flushed).
    ProducerDone,
    /// Stop reading sources, finish what is in flight, flush the sink.
    Stop,
}

/// Frames a source connection handles before it flushes its batches and lets other tasks run:
/// bounds the time a message waits behind the rest of its read.
const FRAMES_PER_STEP: usize = 64;

/// The state shared by the tasks of one core.
pub(crate) struct Core {
    pub id: usize,
    pub config: Arc<Config>,
    dataflow: Arc<dyn Dataflow>,
    routes: RoutingTable,
    /// Every core's inbox, this one's included.
    peers: Vec<flume::Sender<CoreMsg>>,
    keyed: RefCell<Box<dyn KeyedCore>>,
    pub sink: RefCell<SinkBuffer>,
    /// Signalled when outputs are added to `sink`, and when the core finishes.
    pub sink_ready: Notify,
    /// Signalled when the writer takes the buffer.
    pub sink_drained: Notify,
    pub report: RefCell<CoreReport>,
    /// Read halves of open source connections, to shut down on stop.
    sources: RefCell<HashMap<u64, TcpStream>>,
    sources_closed: Notify,
    next_source: Cell<u64>,
    /// Set on stop: when the sink stops retrying an unreachable receiver.
    pub drain_deadline: Cell<Option<Instant>>,
    /// Set when every producer is done: the writer exits once the buffer is empty.
    pub finished: Cell<bool>,
}

pub(crate) struct CoreSetup {
    pub id: usize,
    pub config: Arc<Config>,
    pub dataflow: Arc<dyn Dataflow>,
    pub routes: RoutingTable,
    pub peers: Vec<flume::Sender<CoreMsg>>,
    pub inbox: flume::Receiver<CoreMsg>,
}

/// Runs one core until it is stopped and every core's in-flight messages are applied.
pub(crate) async fn run(setup: CoreSetup) -> CoreReport {
    let CoreSetup {
        id,
        config,
        dataflow,
        routes,
        peers,
        inbox,
    } = setup;
    let core = Rc::new(Core {
        id,
        keyed: RefCell::new(dataflow.keyed(routes.n_slots())),
        config,
        dataflow,
        routes,
        peers,
        sink: RefCell::default(),
        sink_ready: Notify::default(),
        sink_drained: Notify::default(),
        report: RefCell::new(CoreReport::new(id)),
        sources: RefCell::default(),
        sources_closed: Notify::default(),
        next_source: Cell::new(0),
        drain_deadline: Cell::new(None),
        finished: Cell::new(false),
    });
    let writer = glommio::spawn_local({
        let core = core.clone();
        async move { write_outputs(&core).await }
    });

    let mut producers_done = 0;
    while producers_done < core.peers.len() {
        let Ok(msg) = inbox.recv_async().await else {
            break;
        };
        match msg {
            CoreMsg::Connection { source, stream } => {
                glommio::spawn_local(read_source(core.clone(), source, stream)).detach();
            }
            CoreMsg::Batch(mut batch) => {
                core.apply(&mut batch).await;
                glommio::yield_if_needed().await;
            }
            CoreMsg::ProducerDone => producers_done += 1,
            CoreMsg::Stop => {
                let deadline = Instant::now() + core.config.drain_timeout;
                core.drain_deadline.set(Some(deadline));
                glommio::spawn_local(finish_producing(core.clone())).detach();
            }
        }
    }
    core.finished.set(true);
    core.sink_ready.notify_all();
    writer.await;
    let mut report = core.report.borrow().clone();
    report.entities = core.keyed.borrow().entities() as u64;
    report
}

impl Core {
    /// Applies a batch owned by this core, once the sink buffer has room.
    async fn apply(&self, batch: &mut Batch) {
        while self.sink.borrow().len_bytes() >= self.config.sink_buffer {
            self.sink_drained.wait().await;
        }
        self.keyed
            .borrow_mut()
            .apply(&mut **batch, &mut self.sink.borrow_mut());
        self.sink_ready.notify_all();
    }

    /// Sends every waiting batch of a connection to its owner core (applying its own directly).
    /// Awaiting each send in turn keeps the connection's order on every channel.
    async fn flush(&self, ingress: &mut dyn Ingress) {
        for dest in 0..self.peers.len() {
            let Some(mut batch) = ingress.take_batch(dest) else {
                continue;
            };
            if dest == self.id {
                self.apply(&mut batch).await;
            } else if self.peers[dest]
                .send_async(CoreMsg::Batch(batch))
                .await
                .is_err()
            {
                tracing::error!(
                    core = self.id,
                    "core {dest} is gone; a batch for it was lost"
                );
            }
        }
    }
}

/// On stop: closes the read side of every source connection, waits for their tasks to flush,
/// then tells every core (this one too) that no batch from here follows.
async fn finish_producing(core: Rc<Core>) {
    for stream in core.sources.borrow().values() {
        let _ = stream.shutdown(std::net::Shutdown::Read);
    }
    while !core.sources.borrow().is_empty() {
        core.sources_closed.wait().await;
    }
    for peer in &core.peers {
        let _ = peer.send_async(CoreMsg::ProducerDone).await;
    }
}

/// Reads one source connection until it ends, fails, or the core stops.
async fn read_source(core: Rc<Core>, source: usize, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
    let key = core.next_source.get();
    core.next_source.set(key + 1);
    match stream.try_clone() {
        Ok(handle) => {
            core.sources.borrow_mut().insert(key, handle);
        }
        Err(e) => {
            tracing::error!(core = core.id, %peer, "cannot adopt source connection: {e}");
            return;
        }
    }
    if core.drain_deadline.get().is_some() {
        // Stopping already: the connection arrived too late to be read.
        let _ = stream.shutdown(std::net::Shutdown::Read);
    }
    core.report.borrow_mut().connections += 1;
    let source_name = core.dataflow_source_name(source);
    tracing::debug!(core = core.id, %peer, source = %source_name, "source connection opened");

    let mut reader = FrameReader::new(stream, core.config.max_frame);
    let mut ingress = core.dataflow.ingress(source, core.peers.len());
    let error = 'read: loop {
        match reader.read_more().await {
            Ok(true) => {}
            Ok(false) => break None,
            Err(e) => break Some(e.to_string()),
        }
        let now = now_ns();
        // Work through what was read in steps of FRAMES_PER_STEP, flushing and yielding between
        // steps so the sink writer and other connections are never held up by one large read.
        loop {
            let mut frames = 0;
            let mut error = None;
            while frames < FRAMES_PER_STEP {
                match reader.next_frame() {
                    Ok(Some(frame)) => match ingress.push(frame, now, &core.routes) {
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
            core.flush(&mut *ingress).await;
            if error.is_some() {
                break 'read error;
            }
            if frames < FRAMES_PER_STEP {
                break;
            }
            futures_lite::future::yield_now().await;
        }
    };
    if let Some(reason) = error {
        tracing::error!(core = core.id, %peer, source = %source_name, "closing source connection: {reason}");
        core.report.borrow_mut().connection_errors += 1;
    } else {
        tracing::debug!(core = core.id, %peer, "source connection closed");
    }
    core.sources.borrow_mut().remove(&key);
    core.sources_closed.notify_all();
}

impl Core {
    fn dataflow_source_name(&self, source: usize) -> String {
        self.config
            .source_names
            .get(source)
            .cloned()
            .unwrap_or_default()
    }
}
