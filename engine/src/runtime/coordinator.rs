//! The coordinator: owns the set of cores and the routing table, and carries out changes of
//! cores (grow, shrink) as a series of migration steps. It runs on the caller's thread (a control
//! connection or the embedding program) and talks to the cores only through their inboxes and
//! the events they send back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use super::core::{self, CoreAddr, CoreEvent, CoreMsg, CoreSetup};
use super::status::{ChangeError, ChangeReport, MigrationProgress, View};
use super::{Config, StartError};
use crate::dataflow::Dataflow;
use hdrhistogram::Histogram;

use crate::metrics::{latency_histogram, CoreReport};
use crate::migration::Transition;
use crate::planner::{plan, steps, Change, Plan};
use crate::routing::{CoreId, RoutingTable};

/// Slots moved per migration step: bounds how long any one key waits for its slot.
pub const MAX_SLOTS_PER_STEP: usize = 64;

/// Capacity of a core's data channel, in messages (mostly batches): small, because everything
/// queued there is latency, for data and for the epoch markers behind it.
const INBOX_CAPACITY: usize = 16;

pub(crate) struct CoreHandle {
    pub addr: CoreAddr,
    pub cpu: usize,
    executor: ExecutorJoinHandle<CoreReport>,
}

pub(crate) struct Coordinator {
    config: Arc<Config>,
    dataflow: Arc<dyn Dataflow>,
    table: Arc<RoutingTable>,
    pub cores: BTreeMap<CoreId, CoreHandle>,
    next_id: CoreId,
    events_tx: flume::Sender<CoreEvent>,
    events: flume::Receiver<CoreEvent>,
    /// The inboxes acceptor threads deal new connections to.
    pub accept_targets: Arc<RwLock<Vec<flume::Sender<CoreMsg>>>>,
    pub view: Arc<Mutex<View>>,
    retired: Vec<CoreReport>,
    /// Latency recorded by retired cores since the last `take_latency`.
    pub retired_latency: Arc<Mutex<Histogram<u64>>>,
    stopped: bool,
}

impl Coordinator {
    pub fn start(config: Arc<Config>, dataflow: Arc<dyn Dataflow>) -> Result<Self, StartError> {
        let table = Arc::new(RoutingTable::uniform(
            config.n_slots,
            config.cores as CoreId,
        ));
        let (events_tx, events) = flume::unbounded();
        let mut c = Coordinator {
            view: Arc::new(Mutex::new(View::new(&table))),
            config,
            dataflow,
            table,
            cores: BTreeMap::new(),
            next_id: 0,
            events_tx,
            events,
            accept_targets: Arc::default(),
            retired: Vec::new(),
            retired_latency: Arc::new(Mutex::new(latency_histogram())),
            stopped: false,
        };
        let n = c.config.cores;
        c.spawn_cores(n)?;
        c.publish(None);
        Ok(c)
    }

    /// Starts `n` executors that own no slots yet (at start, the uniform table gives them
    /// theirs), each knowing every core as a peer.
    fn spawn_cores(&mut self, n: usize) -> Result<Vec<CoreId>, StartError> {
        let cpus = super::default_cores();
        let ids: Vec<CoreId> = (0..n).map(|i| self.next_id + i as CoreId).collect();
        self.next_id += n as CoreId;
        let channels: Vec<_> = ids
            .iter()
            .map(|_| {
                let (data, data_rx) = flume::bounded(INBOX_CAPACITY);
                let (control, control_rx) = flume::unbounded();
                (CoreAddr { data, control }, data_rx, control_rx)
            })
            .collect();
        let mut peers: Vec<(CoreId, CoreAddr)> = self
            .cores
            .iter()
            .map(|(&id, h)| (id, h.addr.clone()))
            .collect();
        peers.extend(
            ids.iter()
                .zip(&channels)
                .map(|(&id, (addr, _, _))| (id, addr.clone())),
        );

        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for (&id, (addr, data_rx, control_rx)) in ids.iter().zip(channels) {
            let cpu = self.least_used_cpu(cpus);
            let setup = CoreSetup {
                id,
                cpu,
                config: self.config.clone(),
                dataflow: self.dataflow.clone(),
                table: self.table.clone(),
                peers: peers.clone(),
                data: data_rx,
                control: control_rx,
                events: self.events_tx.clone(),
            };
            let ready = ready_tx.clone();
            let spawned = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("quokka-core-{id}"))
                .spawn(move || async move {
                    let _ = ready.send(id);
                    core::run(setup).await
                })
                .map_err(|e| StartError::Executor {
                    core: usize::from(id),
                    reason: e.to_string(),
                })?;
            self.cores.insert(
                id,
                CoreHandle {
                    addr,
                    cpu,
                    executor: spawned,
                },
            );
        }
        drop(ready_tx);
        for _ in &ids {
            if ready_rx.recv().is_err() {
                // A core's closure was dropped unrun: its executor failed; join tells why.
                let mut reason = "unknown".to_string();
                for id in &ids {
                    if let Some(h) = self.cores.remove(id) {
                        if let Err(e) = h.executor.join() {
                            reason = e.to_string();
                        }
                    }
                }
                return Err(StartError::Executor {
                    core: usize::from(ids[0]),
                    reason,
                });
            }
        }
        if self.cores.len() > cpus {
            tracing::warn!(
                "{} cores on {cpus} CPUs: executors share CPUs (placement wraps around); production runs one per CPU",
                self.cores.len()
            );
        }
        let mut targets = self.accept_targets.write().unwrap();
        targets.extend(ids.iter().map(|id| self.cores[id].addr.data.clone()));
        Ok(ids)
    }

    fn least_used_cpu(&self, cpus: usize) -> usize {
        (0..cpus)
            .min_by_key(|&cpu| (self.cores.values().filter(|h| h.cpu == cpu).count(), cpu))
            .unwrap_or(0)
    }

    /// Adds `n` cores and moves slots onto them.
    pub fn grow(&mut self, n: usize) -> Result<ChangeReport, ChangeError> {
        self.check_running()?;
        if n == 0 {
            return Err(ChangeError::Invalid("grow-cores needs at least 1".into()));
        }
        if self.cores.len() + n > usize::from(CoreId::MAX) {
            return Err(ChangeError::Invalid("too many cores".into()));
        }
        let started = Instant::now();
        let before = self.cores.len();
        let old: Vec<CoreId> = self.cores.keys().copied().collect();
        let ids = self
            .spawn_cores(n)
            .map_err(|e| ChangeError::Start(e.to_string()))?;
        let new_peers: Vec<_> = ids
            .iter()
            .map(|id| (*id, self.cores[id].addr.clone()))
            .collect();
        for id in &old {
            let _ = self.cores[id]
                .addr
                .control
                .send(CoreMsg::AddPeers(new_peers.clone()));
        }
        let p = plan(&self.table, &old, &Change::Add(ids.clone()))
            .map_err(|e| ChangeError::Invalid(e.to_string()))?;
        let label = format!("grow-cores {n}");
        let mut report = self.migrate(p, &label)?;
        report.cores_before = before;
        report.cores_after = self.cores.len();
        report.elapsed = started.elapsed();
        tracing::info!("{label}: {report}");
        Ok(report)
    }

    /// Moves the slots of the `n` newest cores away, hands their connections over, stops them.
    pub fn shrink(&mut self, n: usize) -> Result<ChangeReport, ChangeError> {
        self.check_running()?;
        if n == 0 || n >= self.cores.len() {
            return Err(ChangeError::Invalid(format!(
                "cannot shrink {} cores by {n}: at least one must remain and at least one must go",
                self.cores.len()
            )));
        }
        let started = Instant::now();
        let before = self.cores.len();
        let members: Vec<CoreId> = self.cores.keys().copied().collect();
        let victims: Vec<CoreId> = members[members.len() - n..].to_vec();
        let heirs: Vec<CoreId> = members[..members.len() - n].to_vec();
        {
            let mut targets = self.accept_targets.write().unwrap();
            *targets = heirs
                .iter()
                .map(|id| self.cores[id].addr.data.clone())
                .collect();
        }
        let p = plan(&self.table, &members, &Change::Remove(victims.clone()))
            .map_err(|e| ChangeError::Invalid(e.to_string()))?;
        let label = format!("shrink-cores {n}");
        let mut report = self.migrate(p, &label)?;

        for v in &victims {
            let _ = self.cores[v].addr.control.send(CoreMsg::Leave {
                heirs: heirs.clone(),
            });
        }
        let mut left: BTreeSet<CoreId> = BTreeSet::new();
        self.wait_events(
            &format!("cores {victims:?} to hand over their connections"),
            |e| {
                if let CoreEvent::Left(c) = e {
                    left.insert(*c);
                }
                left.len() == victims.len()
            },
        )?;
        for h in &heirs {
            for v in &victims {
                let _ = self.cores[h].addr.control.send(CoreMsg::RemovePeer(*v));
            }
        }
        for v in &victims {
            let handle = self.cores.remove(v).expect("victim is a member");
            let (tx, rx) = flume::bounded(1);
            let _ = handle.addr.control.send(CoreMsg::TakeLatency(tx));
            if let Ok(h) = rx.recv() {
                let _ = self.retired_latency.lock().unwrap().add(&h);
            }
            let _ = handle.addr.control.send(CoreMsg::Retire);
            match handle.executor.join() {
                Ok(r) => self.retired.push(CoreReport { retired: true, ..r }),
                Err(e) => tracing::error!(core = v, "retired core failed: {e}"),
            }
        }
        self.publish(None);
        report.cores_before = before;
        report.cores_after = self.cores.len();
        report.elapsed = started.elapsed();
        tracing::info!("{label}: {report}");
        Ok(report)
    }

    /// Carries out `p` in bounded steps, each one epoch.
    fn migrate(&mut self, p: Plan, label: &str) -> Result<ChangeReport, ChangeError> {
        let steps = steps(&self.table, &p.moves, MAX_SLOTS_PER_STEP);
        let mut report = ChangeReport {
            slots_moved: p.moves.len(),
            ..ChangeReport::default()
        };
        let mut progress = MigrationProgress {
            change: label.to_string(),
            started: Instant::now(),
            steps_done: 0,
            steps: steps.len(),
            slots_moved: 0,
            slots: p.moves.len(),
        };
        self.publish(Some(progress.clone()));
        for (table, moves) in steps {
            let epoch = table.epoch();
            let n_moves = moves.len();
            let t = Arc::new(Transition {
                table: Arc::new(table),
                moves,
                producers: self.cores.keys().copied().collect(),
            });
            let step_started = Instant::now();
            for h in self.cores.values() {
                let _ = h.addr.control.send(CoreMsg::Prepare(t.clone()));
            }
            let n = self.cores.len();
            let mut prepared = BTreeSet::new();
            self.wait_events(&format!("cores to prepare epoch {epoch}"), |e| {
                if let CoreEvent::Prepared(core) = e {
                    prepared.insert(*core);
                }
                prepared.len() == n
            })?;
            let prepared_in = step_started.elapsed();
            for h in self.cores.values() {
                let _ = h.addr.control.send(CoreMsg::Switch);
            }
            let mut done = BTreeSet::new();
            self.wait_events(&format!("cores to finish epoch {epoch}"), |e| match e {
                CoreEvent::StepDone { core, epoch: e } if *e == epoch => {
                    done.insert(*core);
                    done.len() == n
                }
                CoreEvent::Installed {
                    entities, bytes, ..
                } => {
                    report.entities_moved += u64::from(*entities);
                    report.bytes_moved += *bytes as u64;
                    false
                }
                _ => false,
            })?;
            tracing::debug!(epoch, slots = n_moves, ?prepared_in, total = ?step_started.elapsed(), "migration step done");
            self.table = t.table.clone();
            report.steps += 1;
            progress.steps_done += 1;
            progress.slots_moved += n_moves;
            self.publish(Some(progress.clone()));
        }
        self.publish(None);
        Ok(report)
    }

    /// Waits for core events until `done` says so; a core's protocol failure ends the wait.
    fn wait_events(
        &self,
        what: &str,
        mut done: impl FnMut(&CoreEvent) -> bool,
    ) -> Result<(), ChangeError> {
        let mut waited = Duration::ZERO;
        loop {
            match self.events.recv_timeout(Duration::from_secs(5)) {
                Ok(CoreEvent::Failed { core, error }) => {
                    return Err(ChangeError::Protocol(format!("core {core}: {error}")));
                }
                Ok(e) => {
                    if done(&e) {
                        return Ok(());
                    }
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    waited += Duration::from_secs(5);
                    tracing::warn!(
                        "still waiting for {what} after {}s (is the sink up?)",
                        waited.as_secs()
                    );
                }
                Err(flume::RecvTimeoutError::Disconnected) => {
                    unreachable!("the coordinator holds a sender")
                }
            }
        }
    }

    fn check_running(&self) -> Result<(), ChangeError> {
        if self.stopped {
            return Err(ChangeError::Stopped);
        }
        Ok(())
    }

    /// Makes the current membership and table visible to `status`.
    fn publish(&self, migration: Option<MigrationProgress>) {
        let mut view = self.view.lock().unwrap();
        view.epoch = self.table.epoch();
        view.cores = self
            .cores
            .iter()
            .map(|(&id, h)| (id, h.cpu, h.addr.control.clone()))
            .collect();
        view.migration = migration;
        view.retired = self.retired.len();
    }

    /// Stops every core: sources stop, everything in flight is applied, sinks flush.
    pub fn stop(&mut self) -> Vec<CoreReport> {
        self.stopped = true;
        let n = self.cores.len();
        for h in self.cores.values() {
            let _ = h.addr.control.send(CoreMsg::Stop { producers: n });
        }
        let mut reports: Vec<CoreReport> = std::mem::take(&mut self.cores)
            .into_iter()
            .map(|(id, h)| {
                h.executor.join().unwrap_or_else(|e| {
                    tracing::error!(core = id, "core failed: {e}");
                    CoreReport::new(usize::from(id))
                })
            })
            .collect();
        reports.append(&mut self.retired);
        reports.sort_by_key(|r| r.core);
        self.publish(None);
        reports
    }
}
