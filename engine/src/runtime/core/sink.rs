//! A core's sinks: outputs are encoded into a bounded buffer per sink, and a writer task per
//! sink sends its buffer to the core's connection to it, recording each output's source-to-sink latency once it is
//! written. A full buffer holds back the core's data (never its control messages). Outputs
//! written to a connection that then failed are counted as at risk (the sink may not have read
//! them; TCP cannot tell).

use std::cell::{Cell, RefCell, RefMut};
use std::time::Instant;

use futures_lite::future;
use quokka_io::tcp::{SinkError, TcpSink};

use super::Core;
use crate::metrics::now_ns;
use crate::runtime::notify::Notify;
use crate::sink_buffer::SinkBuffer;

pub(super) struct Sink {
    /// One per sink of the app, in its order.
    pub(super) buffers: RefCell<Vec<SinkBuffer>>,
    /// Bytes buffered (for any one sink) before the core stops applying.
    limit: usize,
    /// Signalled when outputs are added, and when the core finishes.
    pub(super) ready: Notify,
    /// Signalled when the writer takes the buffer and when it finishes a write.
    pub(super) progress: Notify,
    /// Per sink: outputs written (or given up on).
    pub(super) written: Vec<Cell<u64>>,
    /// Per sink: the last attempt to connect failed; outputs wait for it.
    pub(super) down: Vec<Cell<bool>>,
    /// Per sink: outputs written to a connection that then failed.
    at_risk: Vec<Cell<u64>>,
    /// Per sink (exactly-once): the last epoch the receiver holds whole.
    pub(super) acked: Vec<Cell<u64>>,
    /// Set on stop: when the writer gives up on a receiver that is unreachable or not reading.
    pub(super) drain_deadline: Cell<Option<Instant>>,
    /// Signalled when the drain deadline is set.
    draining: Notify,
    /// Set when the core is done: the writer exits once the buffer is empty.
    pub(super) finished: Cell<bool>,
    /// Signalled when the core is done (for tasks that end with it).
    done: Notify,
}

impl Sink {
    pub fn new(limit: usize, sinks: usize) -> Self {
        Sink {
            buffers: RefCell::new((0..sinks).map(|_| SinkBuffer::default()).collect()),
            limit,
            ready: Notify::default(),
            progress: Notify::default(),
            written: (0..sinks).map(|_| Cell::new(0)).collect(),
            down: (0..sinks).map(|_| Cell::new(false)).collect(),
            at_risk: (0..sinks).map(|_| Cell::new(0)).collect(),
            acked: (0..sinks).map(|_| Cell::new(0)).collect(),
            drain_deadline: Cell::new(None),
            draining: Notify::default(),
            finished: Cell::new(false),
            done: Notify::default(),
        }
    }

    /// The buffers the keyed steps push outputs into, one per sink; call [`Self::pushed`]
    /// after.
    pub fn buffers(&self) -> RefMut<'_, Vec<SinkBuffer>> {
        self.buffers.borrow_mut()
    }

    /// Outputs were pushed: wake the writer.
    pub fn pushed(&self) {
        self.ready.notify_all();
    }

    pub fn is_full(&self) -> bool {
        (self.buffers.borrow().iter()).any(|b| b.len_bytes() >= self.limit)
    }

    pub fn is_down(&self) -> bool {
        self.down.iter().any(Cell::get)
    }

    pub async fn wait_room(&self) {
        while self.is_full() {
            self.progress.wait().await;
        }
    }

    /// Waits until the writer makes progress.
    pub async fn progress(&self) {
        self.progress.wait().await
    }

    /// Waits until every output pushed so far has been written (or given up on).
    pub async fn flushed(&self) {
        let targets = self.pushed_so_far();
        self.written_up_to(&targets).await;
    }

    /// How much each sink was given so far, for [`Self::written_up_to`].
    pub fn pushed_so_far(&self) -> Vec<u64> {
        self.buffers.borrow().iter().map(|b| b.pushed()).collect()
    }

    /// Completes once each sink's connection took what `targets` counts.
    pub async fn written_up_to(&self, targets: &[u64]) {
        let behind = || (self.written.iter().zip(targets)).any(|(w, &t)| w.get() < t);
        while behind() {
            self.progress.wait().await;
        }
    }

    /// Stopping: an unreachable sink is given up on at `deadline`.
    pub fn drain_until(&self, deadline: Instant) {
        self.drain_deadline.set(Some(deadline));
        self.draining.notify_all();
    }

    /// Completes once a stop's drain deadline has passed: a sink that accepts and never reads
    /// must not hold the core, and so the stop, forever.
    async fn drain_expired(&self) {
        loop {
            let waiting = self.draining.wait();
            if let Some(at) = self.drain_deadline.get() {
                glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await;
                return;
            }
            waiting.await;
        }
    }

    pub fn is_draining(&self) -> bool {
        self.drain_deadline.get().is_some()
    }

    /// The core is done: the writer exits once the buffer is empty.
    pub fn finish(&self) {
        self.finished.set(true);
        self.ready.notify_all();
        self.done.notify_all();
    }

    /// Marks the point after every output so far in every sink's buffer.
    pub fn mark(&self, mark: crate::sink_buffer::Mark) {
        for b in self.buffers.borrow_mut().iter_mut() {
            b.push_mark(mark);
        }
        self.ready.notify_all();
    }

    /// Waits until every sink's receiver holds epoch `epoch` whole.
    pub async fn acknowledged(&self, epoch: u64) {
        while self.acked.iter().any(|a| a.get() < epoch) {
            self.progress.wait().await;
        }
    }

    /// Waits until the core is done.
    pub async fn finished(&self) {
        while !self.finished.get() {
            self.done.wait().await;
        }
    }
}

/// Drains the core's buffer for sink `i` into its connection until the core finishes.
pub(super) async fn write_outputs(core: &Core, i: usize) {
    let state = &core.sink;
    let addr = core.config.outputs[i];
    let mut sink = TcpSink::new(addr);
    let mut writing = SinkBuffer::default();
    // Counts every failed attempt to reach the sink; gives up only once a stop's drain
    // deadline has passed.
    let failed_attempt = || {
        core.report.borrow_mut().sink_failures += 1;
        state.down[i].set(true);
        state
            .drain_deadline
            .get()
            .is_some_and(|t| Instant::now() >= t)
    };
    loop {
        while state.buffers.borrow()[i].is_empty() {
            if state.finished.get() {
                future::or(sink.close(), state.drain_expired()).await;
                return;
            }
            state.ready.wait().await;
        }
        state.buffers.borrow_mut()[i].swap_contents(&mut writing);
        state.progress.notify_all();
        let (bytes, ends, ingress_ns) = writing.records();
        let taken = now_ns();
        {
            let mut report = core.report.borrow_mut();
            for &t in ingress_ns {
                report
                    .engine_latency
                    .saturating_record(taken.saturating_sub(t).max(1));
            }
        }
        let result = future::or(sink.write_records(bytes, ends, &failed_attempt), async {
            state.drain_expired().await;
            Err(SinkError::GaveUp {
                addr,
                records: ends.len(),
                bytes: bytes.len(),
                reason: "the drain timeout passed while the sink was not reading".into(),
            })
        })
        .await;
        state.down[i].set(result.is_err());
        let n = ends.len() as u64;
        {
            let mut report = core.report.borrow_mut();
            state.at_risk[i].set(sink.at_risk());
            report.at_risk = state.at_risk.iter().map(Cell::get).sum();
            match result {
                Ok(()) => {
                    core.record_latencies(ingress_ns);
                    report.outputs += n;
                }
                Err(e) => {
                    tracing::error!(core = core.id, "{e}");
                    report.undelivered += n;
                }
            }
        }
        state.written[i].set(state.written[i].get() + n);
        state.progress.notify_all();
        writing.clear();
    }
}

impl Core {
    /// Source-to-sink latency of outputs written now, from their inputs' ingress times.
    pub(super) fn record_latencies(&self, ingress_ns: &[u64]) {
        let now = now_ns();
        let mut window = self.window.borrow_mut();
        for &t in ingress_ns {
            window.record(now.saturating_sub(t));
        }
    }
}
