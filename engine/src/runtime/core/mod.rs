//! One core: a glommio executor that owns a share of the slots. Its tasks: one per source
//! connection it reads, the inbox loop (batches from other cores, control and migration
//! messages), one sender per peer core (see `outbox.rs`), the sink writer, and a ticker that
//! keeps per-second figures for `status`.
//!
//! Tasks share [`Core`] through an `Rc`; `RefCell` borrows never span an `.await`.

mod source;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;

use super::messages::{CoreAddr, CoreEvent, CoreMsg, Handover};
use super::notify::Notify;
use super::outbox::Outbox;
use super::sink::{flushed, write_outputs, SinkBuffer};
use super::Config;
use crate::dataflow::{Dataflow, Ingress, KeyedCore};
use crate::metrics::{CoreReport, CoreStatus, Window};
use crate::migration::Transition;
use crate::routing::{CoreId, Move, RoutingTable};
use source::read_source;

/// Handed-off slots sent as one message: the new owner installs one message while the next is
/// archived. Between messages the hand-off task yields only when the executor's preempt timer
/// asks (an unconditional yield cost a round of every other task per message).
const SLOTS_PER_MESSAGE: usize = 16;

/// Times a rejected handoff is sent again before the slot is reported stuck (it is never lost:
/// the old owner keeps it).
const HANDOFF_ATTEMPTS: u32 = 3;

/// The state shared by the tasks of one core.
pub(crate) struct Core {
    pub id: CoreId,
    pub cpu: usize,
    pub config: Arc<Config>,
    dataflow: Arc<dyn Dataflow>,
    table: RefCell<Arc<RoutingTable>>,
    /// Steps prepared and not yet switched to, in epoch order.
    prepared: RefCell<VecDeque<Arc<Transition>>>,
    keyed: RefCell<Box<dyn KeyedCore>>,
    outboxes: RefCell<BTreeMap<CoreId, Rc<Outbox>>>,
    /// Peers' addresses, for handoffs and acknowledgements on their control lanes.
    controls: RefCell<BTreeMap<CoreId, CoreAddr>>,
    /// Signalled when an outbox sends a message.
    outbox_progress: Rc<Notify>,
    /// This core's inbox (data and control lanes), to see whether messages wait there.
    inbox: (flume::Receiver<CoreMsg>, flume::Receiver<CoreMsg>),
    /// Wakes the inbox task when a busy task sees messages waiting (see `poke_inbox`).
    inbox_poke: Notify,
    events: flume::Sender<CoreEvent>,
    /// Slots handed off and not yet acknowledged: new owner and attempts.
    handing_off: RefCell<HashMap<u32, (CoreId, u32)>>,
    pub sink: RefCell<SinkBuffer>,
    /// Signalled when outputs are added to `sink`, and when the core finishes.
    pub sink_ready: Notify,
    /// Signalled when the writer takes the buffer and when it finishes a write.
    pub sink_progress: Notify,
    /// Outputs written to the sink (or given up on).
    pub written: Cell<u64>,
    /// The last attempt to connect to the sink failed; outputs wait for it.
    pub sink_down: Cell<bool>,
    pub report: RefCell<CoreReport>,
    pub window: RefCell<Window>,
    /// Duplicates of open source connections: to shut down on stop, to hand over on leave.
    sources: RefCell<HashMap<u64, TcpStream>>,
    sources_changed: Notify,
    next_source: Cell<u64>,
    leaving: Cell<bool>,
    leave_signal: Notify,
    handovers: RefCell<Vec<Handover>>,
    heirs: RefCell<Vec<CoreId>>,
    next_heir: Cell<usize>,
    /// On stop: the producers whose `ProducerDone` this core waits for.
    producers_pending: RefCell<Option<BTreeSet<CoreId>>>,
    producers_done: RefCell<BTreeSet<CoreId>>,
    /// Source connections open on this node (shared with the acceptors).
    open_sources: Arc<AtomicUsize>,
    /// Set on stop: when the sink stops retrying an unreachable receiver.
    pub drain_deadline: Cell<Option<Instant>>,
    /// Set when the core is done: the writer exits once the buffer is empty.
    pub finished: Cell<bool>,
}

pub(crate) struct CoreSetup {
    pub id: CoreId,
    pub cpu: usize,
    pub config: Arc<Config>,
    pub dataflow: Arc<dyn Dataflow>,
    pub table: Arc<RoutingTable>,
    pub peers: Vec<(CoreId, CoreAddr)>,
    pub data: flume::Receiver<CoreMsg>,
    pub control: flume::Receiver<CoreMsg>,
    pub events: flume::Sender<CoreEvent>,
    pub open_sources: Arc<AtomicUsize>,
}

/// Runs one core until it is stopped (or retired) and everything in flight is applied.
pub(crate) async fn run(setup: CoreSetup) -> CoreReport {
    let CoreSetup {
        id,
        cpu,
        config,
        dataflow,
        table,
        peers,
        data,
        control,
        events,
        open_sources,
    } = setup;
    let core = Rc::new(Core {
        id,
        cpu,
        keyed: RefCell::new(dataflow.keyed(id, &table)),
        table: RefCell::new(table),
        prepared: RefCell::new(VecDeque::new()),
        config,
        dataflow,
        outboxes: RefCell::default(),
        controls: RefCell::default(),
        outbox_progress: Rc::default(),
        inbox: (data, control),
        inbox_poke: Notify::default(),
        events,
        handing_off: RefCell::default(),
        sink: RefCell::default(),
        sink_ready: Notify::default(),
        sink_progress: Notify::default(),
        written: Cell::new(0),
        sink_down: Cell::new(false),
        report: RefCell::new(CoreReport::new(usize::from(id))),
        window: RefCell::new(Window::default()),
        sources: RefCell::default(),
        sources_changed: Notify::default(),
        next_source: Cell::new(0),
        leaving: Cell::new(false),
        leave_signal: Notify::default(),
        handovers: RefCell::default(),
        heirs: RefCell::default(),
        next_heir: Cell::new(0),
        producers_pending: RefCell::default(),
        producers_done: RefCell::default(),
        open_sources,
        drain_deadline: Cell::new(None),
        finished: Cell::new(false),
    });
    core.add_peers(peers);
    let writer = glommio::spawn_local({
        let core = core.clone();
        async move { write_outputs(&core).await }
    });
    glommio::spawn_local(tick(core.clone())).detach();

    let (data, control) = &core.inbox;
    loop {
        if core.all_producers_done() {
            break;
        }
        let next = match control.try_recv() {
            Ok(msg) => Ok(msg),
            // A full sink holds data back, never control: a migration step (or a status
            // question) does not wait for a slow sink to drain.
            Err(_) if core.sink_is_full() => {
                let progress = core.sink_progress.wait();
                match future::or(async { Some(control.recv_async().await) }, async {
                    progress.await;
                    None
                })
                .await
                {
                    Some(msg) => msg,
                    None => continue,
                }
            }
            Err(_) => {
                let poked = core.inbox_poke.wait();
                let received =
                    async { Some(future::or(control.recv_async(), data.recv_async()).await) };
                match future::or(received, async {
                    poked.await;
                    None
                })
                .await
                {
                    Some(msg) => msg,
                    None => continue,
                }
            }
        };
        let Ok(msg) = next else { break };
        match msg {
            CoreMsg::Retire => {
                // A connection dealt here just before this core left the acceptors' targets
                // may still wait on the data channel: pass it on before ending.
                while let Ok(msg) = data.try_recv() {
                    core.handle(msg).await;
                }
                break;
            }
            CoreMsg::Stop { producers } => {
                *core.producers_pending.borrow_mut() = Some(producers.into_iter().collect());
                core.drain_deadline
                    .set(Some(Instant::now() + core.config.drain_timeout));
                glommio::spawn_local(finish_producing(core.clone())).detach();
            }
            msg => core.handle(msg).await,
        }
    }
    core.flush_outboxes().await;
    core.finished.set(true);
    core.sink_ready.notify_all();
    writer.await;
    core.window
        .borrow_mut()
        .fold(&mut core.report.borrow_mut().latency);
    let mut report = core.report.borrow().clone();
    report.entities = core.keyed.borrow().entities() as u64;
    report
}

impl Core {
    async fn handle(self: &Rc<Self>, msg: CoreMsg) {
        match msg {
            CoreMsg::Connection(handover) => {
                if self.leaving.get() {
                    let heir = self.next_heir();
                    self.send_to(heir, CoreMsg::Connection(handover));
                } else {
                    glommio::spawn_local(read_source(self.clone(), handover)).detach();
                }
            }
            CoreMsg::Batch { mut batch } => {
                self.wait_sink_room().await;
                let misrouted = self
                    .keyed
                    .borrow_mut()
                    .apply(&mut *batch, &mut self.sink.borrow_mut());
                self.after_apply(misrouted);
                glommio::yield_if_needed().await;
            }
            CoreMsg::Marker { from, epoch } => {
                tracing::trace!(core = self.id, from, epoch, "step: marker in");
                let ready = self.keyed.borrow_mut().on_marker(from, epoch);
                match ready {
                    Ok(moves) => self.start_handoffs(moves),
                    Err(e) => self.fail(format!("marker from core {from}: {e}")),
                }
            }
            CoreMsg::Handoff { from, archives } => {
                tracing::trace!(core = self.id, from, n = archives.len(), "step: handoff in");
                let (mut installed, mut entities, mut bytes) = (Vec::new(), 0, 0);
                for archive in archives {
                    self.wait_sink_room().await;
                    let result = self
                        .keyed
                        .borrow_mut()
                        .install(&archive, &mut self.sink.borrow_mut());
                    self.sink_ready.notify_all();
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
                            self.send_control(from, CoreMsg::HandoffRejected { slot, reason });
                        }
                    }
                }
                tracing::trace!(core = self.id, "step: handoff installed");
                if !installed.is_empty() {
                    self.send_control(from, CoreMsg::HandoffAck { slots: installed });
                    let _ = self.events.send(CoreEvent::Installed { entities, bytes });
                    self.report_finished_steps();
                }
            }
            CoreMsg::HandoffAck { slots } => {
                tracing::trace!(core = self.id, n = slots.len(), "step: ack in");
                for slot in slots {
                    self.handing_off.borrow_mut().remove(&slot);
                    let released = self.keyed.borrow_mut().release(slot);
                    if let Err(e) = released {
                        self.fail(format!("acknowledgement of slot {slot}: {e}"));
                    }
                }
                self.report_finished_steps();
            }
            CoreMsg::HandoffRejected { slot, reason } => self.retry_handoff(slot, &reason),
            CoreMsg::Prepare(steps) => {
                for t in steps {
                    let prepared = self.keyed.borrow_mut().prepare(&t);
                    if let Err(e) = prepared {
                        return self.fail(format!("prepare: {e}"));
                    }
                    self.prepared.borrow_mut().push_back(t);
                }
                let _ = self.events.send(CoreEvent::Prepared(self.id));
            }
            CoreMsg::Switch => {
                tracing::trace!(core = self.id, "step: switch");
                self.switch()
            }
            CoreMsg::AddPeers(peers) => self.add_peers(peers),
            CoreMsg::RemovePeer(peer) => self.forget_peer(peer),
            CoreMsg::Leave { heirs } => {
                *self.heirs.borrow_mut() = heirs;
                self.leaving.set(true);
                self.leave_signal.notify_all();
                glommio::spawn_local(leave(self.clone())).detach();
            }
            CoreMsg::Status(reply) => {
                let _ = reply.send(self.status());
            }
            CoreMsg::TakeLatency(reply) => {
                let total = &mut self.report.borrow_mut().latency;
                let _ = reply.send(self.window.borrow_mut().take_interval(total));
            }
            CoreMsg::ProducerDone { from } => {
                self.producers_done.borrow_mut().insert(from);
            }
            CoreMsg::PeerLost(peers) => {
                // Their outboxes stay: what is routed to them is dropped (and counted) by the
                // broken link, so routing needs no special case and nothing waits on them.
                self.producers_done.borrow_mut().extend(peers);
            }
            CoreMsg::Stop { .. } | CoreMsg::Retire => unreachable!("handled by the inbox loop"),
        }
    }

    fn add_peers(&self, peers: Vec<(CoreId, CoreAddr)>) {
        let mut outboxes = self.outboxes.borrow_mut();
        for (peer, addr) in peers {
            if peer != self.id {
                outboxes.insert(
                    peer,
                    Outbox::start(peer, addr.clone(), self.outbox_progress.clone()),
                );
            }
            self.controls.borrow_mut().insert(peer, addr);
        }
    }

    fn forget_peer(&self, peer: CoreId) {
        self.controls.borrow_mut().remove(&peer);
        if let Some(outbox) = self.outboxes.borrow_mut().remove(&peer) {
            outbox.close();
        }
    }

    /// Stopping, and every expected producer has said it is done.
    fn all_producers_done(&self) -> bool {
        let done = self.producers_done.borrow();
        self.producers_pending
            .borrow()
            .as_ref()
            .is_some_and(|pending| pending.is_subset(&done))
    }

    /// Queues `msg` for `peer`. A peer this core cannot reach (its node could not be linked)
    /// is a cluster fault, not a reason to crash: the message is dropped, logged and counted.
    fn send_to(&self, peer: CoreId, msg: CoreMsg) {
        let outbox = self.outboxes.borrow().get(&peer).cloned();
        match outbox {
            Some(outbox) => outbox.push(msg),
            None => {
                tracing::error!(
                    core = self.id,
                    "no route to core {peer}: a message was dropped"
                );
                self.report.borrow_mut().misrouted += 1;
            }
        }
    }

    /// Sends on a peer's control channel (unbounded: never waits).
    fn send_control(&self, peer: CoreId, msg: CoreMsg) {
        let control = self.controls.borrow().get(&peer).cloned();
        match control {
            Some(c) if c.send_control(msg) => {}
            _ => tracing::error!(
                core = self.id,
                "core {peer} is gone: a control message to it was lost"
            ),
        }
    }

    fn next_heir(&self) -> CoreId {
        let heirs = self.heirs.borrow();
        let i = self.next_heir.get();
        self.next_heir.set(i + 1);
        heirs[i % heirs.len()]
    }

    fn fail(&self, error: String) {
        tracing::error!(core = self.id, "migration protocol violation: {error}");
        let _ = self.events.send(CoreEvent::Failed {
            core: self.id,
            error,
        });
    }

    fn after_apply(&self, misrouted: usize) {
        self.sink_ready.notify_all();
        if misrouted > 0 {
            tracing::error!(
                core = self.id,
                "{misrouted} messages for slots this core does not own"
            );
            self.report.borrow_mut().misrouted += misrouted as u64;
        }
    }

    /// Switches to the prepared epoch: one synchronous action, so every batch this core routed
    /// at the old epoch is already queued ahead of the markers.
    fn switch(self: &Rc<Self>) {
        let Some(t) = self.prepared.borrow_mut().pop_front() else {
            return self.fail("switch without a prepared step".into());
        };
        let switched = self.keyed.borrow_mut().switch();
        match switched {
            Ok(sw) => {
                *self.table.borrow_mut() = t.table.clone();
                let epoch = t.table.epoch() - 1;
                for peer in sw.markers_to {
                    self.send_to(
                        peer,
                        CoreMsg::Marker {
                            from: self.id,
                            epoch,
                        },
                    );
                }
                self.start_handoffs(sw.handoffs);
                self.report_finished_steps();
            }
            Err(e) => self.fail(format!("switch: {e}")),
        }
    }

    fn report_finished_steps(&self) {
        for epoch in self.keyed.borrow_mut().take_finished_steps() {
            tracing::trace!(core = self.id, epoch, "step: done here");
            let _ = self.events.send(CoreEvent::StepDone {
                core: self.id,
                epoch,
            });
        }
    }

    fn start_handoffs(self: &Rc<Self>, moves: Vec<Move>) {
        if !moves.is_empty() {
            glommio::spawn_local(hand_off(self.clone(), moves)).detach();
        }
    }

    fn retry_handoff(&self, slot: u32, reason: &str) {
        let Some(&(to, attempts)) = self.handing_off.borrow().get(&slot) else {
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
                self.handing_off
                    .borrow_mut()
                    .insert(slot, (to, attempts + 1));
                self.send_control(
                    to,
                    CoreMsg::Handoff {
                        from: self.id,
                        archives: vec![archive],
                    },
                );
            }
            Err(e) => self.fail(format!("archiving slot {slot}: {e}")),
        }
    }

    /// A message from another thread wakes the inbox task only when the executor next polls
    /// its reactor, which a busy core does once per preempt timer (1 ms). Busy tasks call this
    /// between bounded steps, so a waiting marker, handoff or batch is taken within a step.
    fn poke_inbox(&self) {
        let (data, control) = &self.inbox;
        if !control.is_empty() || !data.is_empty() {
            self.inbox_poke.notify_all();
        }
    }

    fn sink_is_full(&self) -> bool {
        self.sink.borrow().len_bytes() >= self.config.sink_buffer
    }

    async fn wait_sink_room(&self) {
        while self.sink_is_full() {
            self.sink_progress.wait().await;
        }
    }

    /// Waits until the sink and every outbox can take another step's output.
    async fn wait_room(&self) {
        loop {
            self.wait_sink_room().await;
            let full = self
                .outboxes
                .borrow()
                .values()
                .find(|o| !o.has_room())
                .cloned();
            match full {
                Some(_) => self.outbox_progress.wait().await,
                None => return,
            }
        }
    }

    /// Waits until everything queued for other cores has reached their inboxes.
    async fn flush_outboxes(&self) {
        loop {
            let pending = self.outboxes.borrow().values().any(|o| !o.is_flushed());
            if !pending {
                return;
            }
            self.outbox_progress.wait().await;
        }
    }

    /// Routes a connection's waiting batches: this core's own are applied in place, the others
    /// queued for their owners.
    fn dispatch(&self, ingress: &mut dyn Ingress) {
        let mut misrouted = 0;
        ingress.take_batches(&mut |owner, mut batch| {
            if owner == self.id {
                misrouted += self
                    .keyed
                    .borrow_mut()
                    .apply(&mut *batch, &mut self.sink.borrow_mut());
            } else {
                self.send_to(owner, CoreMsg::Batch { batch });
            }
        });
        self.after_apply(misrouted);
    }

    fn status(&self) -> CoreStatus {
        let keyed = self.keyed.borrow();
        let report = self.report.borrow();
        let window = self.window.borrow();
        let last = Some(&window.last_second).filter(|h| !h.is_empty());
        CoreStatus {
            node: String::new(),
            core: self.id,
            cpu: self.cpu,
            epoch: keyed.epoch(),
            slots: keyed.owned_slots(),
            entities: keyed.entities(),
            buffered: keyed.buffered(),
            connections: self.sources.borrow().len(),
            frames: report.frames,
            applied: keyed.applied(),
            outputs: report.outputs,
            sink_failures: report.sink_failures,
            sink_down: self.sink_down.get(),
            frames_per_sec: window.last_frames_per_sec,
            outputs_per_sec: window.last_outputs_per_sec,
            latency_p50: last.map(|h| h.value_at_quantile(0.5)),
            latency_p99: last.map(|h| h.value_at_quantile(0.99)),
            latency_max: last.map(|h| h.max()),
        }
    }
}

/// Every second: the last second's rates and latency, for `status`.
async fn tick(core: Rc<Core>) {
    let mut last = Instant::now();
    let (mut frames, mut outputs) = (0, 0);
    while !core.finished.get() {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        let mut report = core.report.borrow_mut();
        let mut w = core.window.borrow_mut();
        w.last_frames_per_sec = (report.frames - frames) as f64 / secs;
        w.last_outputs_per_sec = (report.outputs - outputs) as f64 / secs;
        (frames, outputs) = (report.frames, report.outputs);
        w.end_second(&mut report.latency);
    }
}

/// An old owner's side of a handoff: once this core's outputs so far are written (so a reader
/// of the sink never sees a key's later count before an earlier one), archive each complete
/// slot and send it to its new owner.
async fn hand_off(core: Rc<Core>, moves: Vec<Move>) {
    let started = Instant::now();
    tracing::trace!(core = core.id, "step: handoff start");
    flushed(&core).await;
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
                        core.handing_off.borrow_mut().insert(slot, (to, 1));
                        archives.push(archive);
                    }
                    Err(e) => core.fail(format!("archiving slot {slot}: {e}")),
                }
            }
            let from = core.id;
            tracing::trace!(core = core.id, "step: handoff out");
            core.send_control(to, CoreMsg::Handoff { from, archives });
            core.poke_inbox();
            glommio::yield_if_needed().await;
        }
    }
    tracing::debug!(core = core.id, slots = moves.len(), ?flush, total = ?started.elapsed(), "handed off");
}

/// A leaving core: once its connection tasks have stopped and everything they routed has
/// reached its owners, the connections (with their undecoded bytes) go to the heirs.
async fn leave(core: Rc<Core>) {
    while !core.sources.borrow().is_empty() {
        core.sources_changed.wait().await;
    }
    core.flush_outboxes().await;
    let handovers = std::mem::take(&mut *core.handovers.borrow_mut());
    let moved = handovers.len();
    core.report.borrow_mut().handed_over += moved as u64;
    for h in handovers {
        let heir = core.next_heir();
        core.send_to(heir, CoreMsg::Connection(h));
    }
    core.flush_outboxes().await;
    tracing::info!(
        core = core.id,
        "left; {moved} source connections handed to other cores"
    );
    let _ = core.events.send(CoreEvent::Left(core.id));
}

/// On stop: closes the read side of every source connection, waits for their tasks to flush,
/// then tells every core (this one too) that no batch from here follows.
async fn finish_producing(core: Rc<Core>) {
    for stream in core.sources.borrow().values() {
        let _ = stream.shutdown(std::net::Shutdown::Read);
    }
    while !core.sources.borrow().is_empty() {
        core.sources_changed.wait().await;
    }
    for outbox in core.outboxes.borrow().values() {
        outbox.push(CoreMsg::ProducerDone { from: core.id });
    }
    // Through the inbox, so the loop waiting there wakes up and counts it.
    core.send_control(core.id, CoreMsg::ProducerDone { from: core.id });
}
