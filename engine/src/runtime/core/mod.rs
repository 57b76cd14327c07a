//! One core: a glommio executor that owns a share of the slots. Its tasks: one per source
//! connection it reads (`sources.rs`), the inbox loop (batches from other cores, control and
//! migration messages), one sender per peer core (`peers.rs`, `outbox.rs`), the sink writer
//! (`sink.rs`, a writer per sink), a hand-off task per step it gives slots up in (`handoff.rs`),
//! a ticker that keeps per-second figures for `status`, and, if a stage sets timers, a clock
//! task that fires processing-time ones (`time.rs`, which also carries watermarks). Stopping is
//! in `shutdown.rs`.
//!
//! Tasks share [`Core`] through an `Rc`; `RefCell` borrows never span an `.await`.

mod checkpoint;
mod durable;
mod exactly_once;
mod files;
mod handoff;
mod peers;
mod recover;
mod replay;
#[cfg(test)]
mod replay_simulation;
mod shutdown;
mod sink;
mod sources;
mod time;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;

pub(crate) use self::durable::{DurableStreams, Rewind, StreamId};
use self::handoff::Handoffs;
use self::peers::{NoRoute, Peers};
use self::shutdown::Shutdown;
use self::sink::Sink;
use self::sources::Sources;
use super::messages::{CoreAddr, CoreEvent, CoreMsg, PeerMsg, Scope, Snapshot};
use super::notify::Notify;
use super::{Config, Guarantee};
use crate::dataflow::{Dataflow, Out, SendBatch, SourcePipeline, StagePart, Stages};
use crate::metrics::{Board, CoreReport, CoreStatus, LatencyBuckets, Published, Window};
use crate::migration::{ChangePlan, Transition};
use crate::routing::{CoreId, RoutingTable};
use crate::sink_buffer::Mark;

/// The state shared by the tasks of one core.
pub(crate) struct Core {
    id: CoreId,
    cpu: usize,
    config: Arc<Config>,
    dataflow: Arc<Dataflow>,
    table: RefCell<Arc<RoutingTable>>,
    /// Steps prepared and not yet switched to, in epoch order.
    prepared: RefCell<VecDeque<Arc<Transition>>>,
    /// The change this core takes part in (its id and cores), until it is done with it here.
    change: RefCell<Option<(u64, Vec<CoreId>)>>,
    /// Cores of lost nodes whose slots were recovered, with their node's name (exactly-once
    /// receivers name their streams by it).
    lost_nodes: RefCell<std::collections::BTreeMap<CoreId, String>>,
    keyed: RefCell<Stages>,
    time: time::EventTime,
    /// This core's inbox (data and control lanes), to see whether messages wait there.
    inbox: (flume::Receiver<CoreMsg>, flume::Receiver<CoreMsg>),
    /// Wakes the inbox task when a busy task sees messages waiting (see `poke_inbox`).
    inbox_poke: Notify,
    events: flume::Sender<CoreEvent>,
    peers: Peers,
    sink: Sink,
    sources: Sources,
    handoffs: Handoffs,
    shutdown: Shutdown,
    checkpointing: checkpoint::Checkpointing,
    /// Where this core's checkpoint snapshots go (its node writes them).
    snapshots: flume::Sender<Snapshot>,
    /// This engine run's id (new at every start), for exactly-once sink connections.
    run: u64,
    /// The last durable checkpoint this core heard of.
    durable: std::cell::Cell<u64>,
    /// The node's durable TCP streams.
    streams: Arc<DurableStreams>,
    /// The last checkpoint this core did its part of (or restored): its outputs since belong
    /// to a later one.
    epoch: std::cell::Cell<u64>,
    report: RefCell<CoreReport>,
    window: RefCell<Window>,
    /// Where this core publishes its status and latency once a second (`/metrics` reads it).
    board: Board,
}

pub(crate) struct CoreSetup {
    pub id: CoreId,
    pub cpu: usize,
    pub config: Arc<Config>,
    pub dataflow: Arc<Dataflow>,
    pub table: Arc<RoutingTable>,
    pub peers: Vec<(CoreId, CoreAddr)>,
    pub data: flume::Receiver<CoreMsg>,
    pub control: flume::Receiver<CoreMsg>,
    pub events: flume::Sender<CoreEvent>,
    pub open_sources: Arc<AtomicUsize>,
    pub snapshots: flume::Sender<Snapshot>,
    /// Slots read back from a checkpoint: (stage, slot, its part).
    pub restored: Vec<(u32, u32, StagePart)>,
    pub run: u64,
    /// The last durable checkpoint (0: none).
    pub durable: u64,
    pub streams: Arc<DurableStreams>,
    pub board: Board,
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
        snapshots,
        restored,
        run,
        durable,
        streams,
        board,
    } = setup;
    let producers: Vec<CoreId> = peers.iter().map(|(p, _)| *p).chain([id]).collect();
    let mut keyed = dataflow.keyed(id, &table, producers.iter().copied());
    keyed.restore(restored);
    let core = Rc::new(Core {
        id,
        cpu,
        keyed: RefCell::new(keyed),
        time: time::EventTime::new(dataflow.stages.len(), producers),
        shutdown: Shutdown::new(dataflow.stages.len()),
        table: RefCell::new(table),
        prepared: RefCell::new(VecDeque::new()),
        change: RefCell::new(None),
        lost_nodes: RefCell::default(),
        sink: Sink::new(config.sink_buffer, config.outputs.len()),
        config,
        dataflow,
        inbox: (data, control),
        inbox_poke: Notify::default(),
        events,
        peers: Peers::default(),
        sources: Sources::new(open_sources),
        handoffs: Handoffs::default(),
        checkpointing: checkpoint::Checkpointing::default(),
        snapshots,
        run,
        durable: std::cell::Cell::new(durable),
        epoch: std::cell::Cell::new(durable),
        streams,
        report: RefCell::new(CoreReport::new(usize::from(id))),
        window: RefCell::new(Window::default()),
        board,
    });
    core.peers.add(id, peers);
    core.speak_first();
    let writers: Vec<_> = (0..core.config.outputs.len())
        .map(|i| {
            let core = core.clone();
            glommio::spawn_local(async move {
                match core.config.guarantee {
                    Guarantee::AtLeastOnce => sink::write_outputs(&core, i).await,
                    Guarantee::ExactlyOnce => exactly_once::write_outputs(&core, i).await,
                }
            })
        })
        .collect();
    let ticker = glommio::spawn_local(tick(core.clone()));
    let clock = (core.dataflow.stages.iter().any(|s| s.has_timers()))
        .then(|| glommio::spawn_local(time::clock(core.clone())));

    let mut released = None;
    while !core.shutdown.is_complete() {
        let Some(msg) = core.next_message().await else {
            break;
        };
        match msg {
            CoreMsg::Retire { released: r } => {
                if core.config.guarantee == Guarantee::ExactlyOnce {
                    // This core's outputs since its last checkpoint would never see another:
                    // they end an epoch that the next checkpoint anywhere commits (a later
                    // number commits every epoch up to it; a crash first drops it, and the
                    // replay from the last durable one makes these outputs again).
                    core.sink.mark(Mark::EpochEnd(core.epoch.get() + 1));
                }
                // A connection dealt here just before this core left the acceptors' targets
                // may still wait on the data channel: pass it on before ending.
                while let Ok(msg) = core.inbox.0.try_recv() {
                    core.handle(msg).await;
                }
                released = Some(r);
                break;
            }
            msg => core.handle(msg).await,
        }
    }
    core.peers.flush().await;
    core.sink.finish();
    for writer in writers {
        writer.await;
    }
    // Every task must end (not merely be cancelled) before the executor does. A task still
    // parked then is never freed: its waker sits in a structure the task itself holds (an
    // outbox's `Notify`), or, dropped after the executor stopped polling (a timer's), is queued
    // for an executor that will never run it. With the task go this `Core` and the executor's
    // eventfd (issue 14 (10): every retired core leaked both).
    ticker.await;
    if let Some(clock) = clock {
        clock.await;
    }
    core.peers.close_all().await;
    core.window
        .borrow_mut()
        .fold(&mut core.report.borrow_mut().latency);
    let mut report = core.report.borrow().clone();
    report.entities = core.keyed.borrow().entities() as u64;
    report.late = core.keyed.borrow().late();
    if let Some(released) = released {
        // Blocks this (finished) executor until the retiring thread is done with our waker.
        let _ = released.recv();
    }
    report
}

impl Core {
    /// The next message: control first; data only while the sink has room (a full sink holds
    /// data back, never control, so a migration step or a status question does not wait for a
    /// slow sink). `None` once every sender is gone.
    async fn next_message(&self) -> Option<CoreMsg> {
        let (data, control) = &self.inbox;
        loop {
            if let Ok(msg) = control.try_recv() {
                return Some(msg);
            }
            let received = if self.sink.is_full() {
                let progress = self.sink.progress();
                future::or(async { Some(control.recv_async().await) }, async {
                    progress.await;
                    None
                })
                .await
            } else {
                let poked = self.inbox_poke.wait();
                let received =
                    async { Some(future::or(control.recv_async(), data.recv_async()).await) };
                future::or(received, async {
                    poked.await;
                    None
                })
                .await
            };
            match received {
                Some(msg) => return msg.ok(),
                None => continue,
            }
        }
    }

    async fn handle(self: &Rc<Self>, msg: CoreMsg) {
        match msg {
            CoreMsg::Peer(msg) => self.handle_peer(msg).await,
            CoreMsg::Batch(batch) => {
                self.sink.wait_room().await;
                self.with_keyed(|keyed, out, send| keyed.apply(batch, out, send));
                glommio::yield_if_needed().await;
            }
            CoreMsg::Connection(conn) => {
                if self.sources.is_leaving() {
                    let heir = self.sources.next_heir();
                    self.send_to(heir, CoreMsg::Connection(conn));
                } else {
                    glommio::spawn_local(sources::read_source(self.clone(), conn)).detach();
                }
            }
            CoreMsg::ReadFile(file) => {
                glommio::spawn_local(files::read_file(self.clone(), file)).detach();
            }
            CoreMsg::Adopt { from, slots } => self.adopt(from, slots).await,
            CoreMsg::Refused { by, refused } => self.refused(by, refused),
            CoreMsg::SendSlot { slot, .. } => self.fail(format!(
                "slot {} to archive for another node reached a core",
                slot.slot()
            )),
            CoreMsg::AddPeers(peers) => {
                let new: Vec<CoreId> = peers.iter().map(|(id, _)| *id).collect();
                for &p in &new {
                    self.keyed.borrow_mut().alignment().add_producer(p);
                }
                self.peers.add(self.id, peers);
                self.greet(&new);
            }
            CoreMsg::Leave { heirs } => {
                self.sources.start_leaving(heirs);
                glommio::spawn_local(sources::leave(self.clone())).detach();
            }
            CoreMsg::Status(reply) => {
                let _ = reply.send(self.status());
            }
            CoreMsg::TakeLatency(reply) => {
                let total = &mut self.report.borrow_mut().latency;
                let _ = reply.send(self.window.borrow_mut().take_interval(total));
            }
            // Their outboxes stay: what is routed to them is dropped (and counted) by the
            // broken link, so routing needs no special case and nothing waits on them.
            CoreMsg::PeerLost(peers) => {
                self.lose_peers(&peers.iter().copied().collect());
                for &peer in &peers {
                    self.forget_producer(peer, true);
                    self.forget_barriers(peer);
                }
                self.shutdown.producers_done(peers, None);
                self.end_stages();
            }
            CoreMsg::CutSources => self.sources.shut_reads(),
            CoreMsg::Retire { .. } => unreachable!("handled by the inbox loop"),
        }
    }

    async fn handle_peer(self: &Rc<Self>, msg: PeerMsg) {
        match msg {
            PeerMsg::Marker { from, epoch } => {
                tracing::trace!(core = self.id, from, epoch, "step: marker in");
                let ready = self.keyed.borrow_mut().on_marker(from, epoch);
                match ready {
                    Ok(moves) => self.start_handoffs(moves),
                    Err(e) => self.fail(format!("marker from core {from}: {e}")),
                }
            }
            PeerMsg::ProducerDone { from, stage } => {
                self.shutdown.producers_done([from], Some(stage as usize));
                self.end_stages();
            }
            PeerMsg::Watermark {
                from,
                stage,
                at,
                ingress_ns,
            } => self.on_watermark(from, stage as usize, at, ingress_ns),
            PeerMsg::Hold { change, at } => self.time.hold(change, &at),
            PeerMsg::ChangeDone { from, change } => self.change_done(from, change),
            PeerMsg::Barrier {
                from,
                checkpoint,
                stage,
            } => self.barrier_in(checkpoint, from, stage as usize),
            PeerMsg::Checkpoint { checkpoint, scope } => {
                if scope == Scope::Everything {
                    self.keyed.borrow_mut().mark_all_changed();
                }
                self.start_checkpoint(checkpoint)
            }
            PeerMsg::CheckpointAbort { checkpoint } => self.abort_checkpoint(checkpoint),
            PeerMsg::Commit { checkpoint } => {
                self.durable.set(checkpoint);
                self.sources.committed(checkpoint);
                self.streams.committed(checkpoint);
                self.sources.durables.borrow_mut().durable(checkpoint);
                if self.config.guarantee == Guarantee::ExactlyOnce {
                    self.sink.mark(Mark::Commit(checkpoint));
                }
            }
            PeerMsg::Handoff { from, .. } => self.fail(format!(
                "an unchecked slot archive from core {from} (its node adopts archives for its cores)"
            )),
            PeerMsg::HandoffAck { slots } => self.acknowledged(slots),
            PeerMsg::HandoffRejected { slot, reason } => self.retry_handoff(slot, &reason),
            PeerMsg::Prepare(plan) => self.prepare(&plan),
            PeerMsg::Switch => {
                tracing::trace!(core = self.id, "step: switch");
                self.switch();
            }
            PeerMsg::Recover {
                checkpoint,
                lost,
                streams,
            } => self.recover(checkpoint, lost, streams),
            PeerMsg::Abort => {
                let dropped = self.keyed.borrow_mut().abort();
                match dropped {
                    Ok(n) => {
                        self.prepared.borrow_mut().clear();
                        tracing::debug!(core = self.id, steps = n, "change aborted");
                        self.end_change_if_done();
                    }
                    Err(e) => self.fail(format!("abort: {e}")),
                }
            }
            PeerMsg::RemovePeer(peer) => {
                self.peers.forget(peer);
                self.forget_producer(peer, false);
                self.forget_barriers(peer);
            }
            PeerMsg::Stop { producers } => {
                self.shutdown.expect(producers);
                self.sink
                    .drain_until(crate::runtime::deadline_after(self.config.drain_timeout));
                glommio::spawn_local(shutdown::finish_producing(self.clone())).detach();
            }
        }
    }

    /// Learns every step of a change (incoming slots start buffering) and says so.
    fn prepare(&self, plan: &ChangePlan) {
        // First: should a step fail to prepare, the abort that follows still ends the change.
        self.begin_change(plan);
        let steps = match plan.transitions(self.table.borrow().n_slots()) {
            Ok(steps) => steps,
            Err(e) => return self.fail(format!("prepare: {e}")),
        };
        for t in steps {
            let prepared = self.keyed.borrow_mut().prepare(&t);
            if let Err(e) = prepared {
                return self.fail(format!("prepare: {e}"));
            }
            self.prepared.borrow_mut().push_back(t);
        }
        self.end_change_if_done();
        let _ = self.events.send(CoreEvent::Prepared(self.id));
    }

    /// Switches to the prepared epoch: one synchronous action, so every batch this core routed
    /// at the old epoch is already queued ahead of the markers.
    fn switch(self: &Rc<Self>) -> bool {
        let Some(t) = self.prepared.borrow_mut().pop_front() else {
            self.fail("switch without a prepared step".into());
            return false;
        };
        let switched = self.keyed.borrow_mut().switch();
        match switched {
            Ok(sw) => {
                *self.table.borrow_mut() = t.table.clone();
                let epoch = t.table.epoch() - 1;
                for peer in sw.markers_to {
                    let from = self.id;
                    self.send_to(peer, CoreMsg::Peer(PeerMsg::Marker { from, epoch }));
                }
                self.start_handoffs(sw.handoffs);
                self.report_forsaken(sw.forsaken);
                self.report_finished_steps();
                true
            }
            Err(e) => {
                self.fail(format!("switch: {e}"));
                false
            }
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
        self.end_change_if_done();
    }

    /// Queues `msg` for `peer`. A peer this core cannot reach (its node could not be linked)
    /// is a cluster fault, not a reason to crash: the message is dropped, logged and counted.
    fn send_to(&self, peer: CoreId, msg: CoreMsg) {
        if let Err(NoRoute) = self.peers.send(peer, msg) {
            tracing::error!(
                core = self.id,
                "no route to core {peer}: a message was dropped"
            );
            self.report.borrow_mut().misrouted += 1;
        }
    }

    /// Sends on a peer's control lane (unbounded: never waits).
    fn send_control(&self, peer: CoreId, msg: impl Into<CoreMsg>) {
        if let Err(NoRoute) = self.peers.send_control(peer, msg) {
            tracing::error!(
                core = self.id,
                "core {peer} is gone: a control message to it was lost"
            );
        }
    }

    fn fail(&self, error: String) {
        tracing::error!(core = self.id, "migration protocol violation: {error}");
        let _ = self.events.send(CoreEvent::Failed {
            core: self.id,
            error,
        });
    }

    fn after_apply(&self, misrouted: usize) {
        self.sink.pushed();
        if misrouted > 0 {
            tracing::error!(
                core = self.id,
                "{misrouted} messages for slots this core does not own"
            );
            self.report.borrow_mut().misrouted += misrouted as u64;
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

    /// Waits until the sink and every outbox can take another step's output.
    async fn wait_room(&self) {
        loop {
            self.sink.wait_room().await;
            if self.peers.have_room() {
                return;
            }
            self.peers.progress().await;
        }
    }

    /// Runs `f` over the keyed stages with this core's sinks and routing table; what it routes
    /// to other cores is queued for them.
    fn with_keyed(&self, f: impl FnOnce(&mut Stages, &mut Out, SendBatch) -> usize) {
        let misrouted = {
            let table = self.table.borrow();
            let mut sinks = self.sink.buffers();
            let mut out = Out {
                sinks: &mut sinks,
                routes: &table,
            };
            f(
                &mut self.keyed.borrow_mut(),
                &mut out,
                &mut |core, batch| self.send_to(core, CoreMsg::Batch(batch)),
            )
        };
        self.after_apply(misrouted);
    }

    /// Routes a connection's waiting batches: this core's own are applied in place, the others
    /// queued for their owners.
    fn dispatch(&self, pipeline: &mut dyn SourcePipeline) {
        pipeline.take_batches(&mut |owner, mut batch| {
            batch.from = self.id;
            if owner == self.id {
                self.with_keyed(|keyed, out, send| keyed.apply(batch, out, send));
            } else {
                self.send_to(owner, CoreMsg::Batch(batch));
            }
        });
    }

    /// Sleeps for `period`; false if the core finished meanwhile (for tasks that end with it).
    async fn sleep_unless_done(&self, period: Duration) -> bool {
        let slept = async {
            glommio::timer::sleep(period).await;
            true
        };
        let finished = async {
            self.sink.finished().await;
            false
        };
        future::or(finished, slept).await
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
            state_bytes: keyed.state_bytes(),
            buffered: keyed.buffered(),
            connections: self.sources.count(),
            frames: report.frames,
            bytes_in: report.bytes_in,
            source_errors: report.connection_errors,
            inbox: self.inbox.0.len() + self.inbox.1.len(),
            outbox: self.peers.queued(),
            unread: self.sources.unread(),
            busy: window.last_busy,
            busy_seconds: report.busy.as_secs_f64(),
            applied: keyed.applied(),
            late: keyed.late(),
            timers: keyed.timers(),
            watermark: self.time.watermark(0),
            outputs: report.outputs,
            sink_failures: report.sink_failures,
            sink_down: self.sink.is_down(),
            at_risk: report.at_risk,
            frames_per_sec: window.last_frames_per_sec,
            outputs_per_sec: window.last_outputs_per_sec,
            latency_p50: last.map(|h| h.value_at_quantile(0.5)),
            latency_p99: last.map(|h| h.value_at_quantile(0.99)),
            latency_p999: last.map(|h| h.value_at_quantile(0.999)),
            latency_max: last.map(|h| h.max()),
            replaying: self.sources.replaying(),
            files: (self.sources.file_offsets().into_iter())
                .map(|(s, offset)| {
                    let name = self.config.source_names.get(s as usize);
                    let ended = self.sources.file_ended.borrow().get(&s).cloned();
                    (name.cloned().unwrap_or_default(), offset, ended)
                })
                .collect(),
        }
    }
}

/// Every second: the last second's rates and latency, for `status`, published on the node's
/// board. Ends with the core, taking its copy off the board.
async fn tick(core: Rc<Core>) {
    let mut last = Instant::now();
    let (mut frames, mut outputs) = (0, 0);
    core.publish();
    while core.sleep_unless_done(Duration::from_secs(1)).await {
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        {
            let mut report = core.report.borrow_mut();
            let mut w = core.window.borrow_mut();
            // glommio hands over (and resets) the time its executor ran tasks since last asked;
            // nothing else on this core asks.
            let ran = glommio::executor().executor_stats().executor_runtime();
            report.busy += ran;
            w.last_busy = (ran.as_secs_f64() / secs).min(1.0);
            w.last_frames_per_sec = (report.frames - frames) as f64 / secs;
            w.last_outputs_per_sec = (report.outputs - outputs) as f64 / secs;
            (frames, outputs) = (report.frames, report.outputs);
            w.end_second(&mut report.latency);
        }
        core.publish();
    }
    core.board.remove(core.id);
}

impl Core {
    fn publish(&self) {
        let latency = LatencyBuckets::of(&self.report.borrow().latency);
        let status = self.status();
        self.board.publish(self.id, Published { status, latency });
    }
}
