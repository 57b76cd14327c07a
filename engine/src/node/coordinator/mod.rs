//! The coordinator: owns the set of cores (on this node and, in a cluster, on the others) and
//! the routing table, and carries out changes (grow, shrink, a node joining or leaving) as a
//! series of migration steps. It runs on the caller's thread (a control connection or the
//! embedding program) and talks to the cores only through their addresses (a core on another
//! node through the link to it) and the events they send back.
//!
//! A member node (one that joined) runs the same type for its own cores only: it starts them,
//! and stops or retires them when the coordinator says so; it never changes anything itself.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use glommio::ExecutorJoinHandle;
use hdrhistogram::Histogram;

use super::status::{ChangeError, ChangeReport, MigrationProgress, View};
use super::StartError;
use crate::cluster::wire::{Member, Question, Welcome};
use crate::cluster::Node;
use crate::dataflow::{Dataflow, StagePart};
use crate::metrics::{latency_histogram, CoreReport, Retired};
use crate::planner::{plan, Change};
use crate::routing::{CoreId, RoutingTable};
use crate::runtime::core::{CoreSetup, DurableStreams};
use crate::runtime::messages::{CoreAddr, CoreEvent, CoreMsg, PeerMsg, Snapshot};
use crate::runtime::{core_channels, online_cpus, spawn_core, Config, Input};

mod checkpoint;
mod ids;
mod members;
mod migrate;
mod recover;
mod restore;
pub(crate) use checkpoint::Checkpoints;
pub use checkpoint::{CheckpointError, CheckpointInfo, CheckpointStatus};
use migrate::Aborted;
pub use migrate::MAX_SLOTS_PER_STEP;
pub use recover::{RecoveryError, RecoveryStatus};
pub(crate) use restore::Gate;
use restore::Start;

/// Steps of a change that ended early after they were switched: every core carries them out,
/// and no other change starts until they are done.
pub(crate) struct Unfinished {
    window: crate::migration::StepWindow,
    cores: Vec<CoreId>,
    /// The moves of the switched steps (a recovery needs those a loss cut short).
    moves: Vec<crate::routing::Move>,
}

/// How long `stop` waits for a member to answer before stopping without it.
const STOP_PING: Duration = Duration::from_secs(2);

pub(crate) struct CoreHandle {
    pub addr: CoreAddr,
    pub cpu: usize,
    /// Only for a core on this node.
    executor: Option<ExecutorJoinHandle<CoreReport>>,
}

pub(crate) struct Coordinator {
    config: Arc<Config>,
    dataflow: Arc<Dataflow>,
    pub node: Arc<Node>,
    table: Arc<RoutingTable>,
    pub cores: BTreeMap<CoreId, CoreHandle>,
    events: flume::Receiver<CoreEvent>,
    /// The inboxes acceptor threads deal new connections to.
    pub accept_targets: Arc<RwLock<Vec<flume::Sender<CoreMsg>>>>,
    pub view: Arc<Mutex<View>>,
    /// The reports of the cores that retired, folded into one.
    retired: Retired,
    /// Latency recorded by retired cores since the last `take_latency`.
    pub retired_latency: Arc<Mutex<Histogram<u64>>>,
    stopped: bool,
    /// Set when the engine stops: a change in progress ends at its next wait.
    pub stopping: Arc<AtomicBool>,
    unfinished: Option<Unfinished>,
    /// The switched moves of a change a loss cut short, until a recovery has dealt with them.
    cut_short: Vec<crate::routing::Move>,
    /// Of those, the slots a survivor awaited from a lost core and will never get (the others
    /// arrived before the loss).
    forsaken: RefCell<BTreeSet<u32>>,
    /// Changes planned so far (each plan's id).
    changes: u64,
    /// With a state dir: the checkpoints taken and the last manifest.
    checkpoints: Option<Checkpoints>,
    /// Where cores send their checkpoint snapshots.
    snapshots: (flume::Sender<Snapshot>, flume::Receiver<Snapshot>),
    /// Snapshots of a checkpoint newer than the one being gathered, for when it is.
    early_snapshots: RefCell<Vec<Snapshot>>,
    /// Slots read back from a checkpoint, for cores about to start.
    restoring: BTreeMap<CoreId, Vec<(u32, u32, StagePart)>>,
    /// This run's id (new at every start), which exactly-once sink connections name.
    run: u64,
    /// Where each durable TCP stream of this node stands.
    streams: Arc<DurableStreams>,
    /// Whether this node reads its sources yet (not while a restored cluster is incomplete).
    pub sources: Arc<Gate>,
    /// Where this node's file sources stood in the checkpoint it started from, until they open.
    offsets: Vec<crate::checkpoint::SourceMark>,
    /// The members of the restored checkpoint not back yet, with the cores each ran.
    awaiting: BTreeMap<String, Vec<CoreId>>,
    /// Every member of the restored checkpoint, until the cluster is whole.
    restored_members: BTreeMap<String, Vec<CoreId>>,
    /// Each member's state dir, as it said when it joined (a lost one's part is read there).
    member_dirs: BTreeMap<String, std::path::PathBuf>,
    /// The last recovery of a lost node, for `status`.
    recovery: Option<RecoveryStatus>,
    /// Durable streams that lost nodes read: refused, since where they stand is not known.
    lost_streams: BTreeSet<(u32, String)>,
}

impl Coordinator {
    /// The coordinator of a new cluster (or of a single node): `config.cores` cores share the
    /// slots evenly.
    pub fn start(
        config: Arc<Config>,
        dataflow: Arc<Dataflow>,
        node: Arc<Node>,
        events: (flume::Sender<CoreEvent>, flume::Receiver<CoreEvent>),
        mut checkpoints: Option<Checkpoints>,
    ) -> Result<Self, StartError> {
        let start = Start::from(checkpoints.as_mut(), &dataflow, &config);
        let mut c = Self::new(config, dataflow, node, events, start.table);
        c.restoring = start.per_core;
        c.streams = Arc::new(DurableStreams::restored(&start.offsets, start.checkpoint));
        c.offsets = start.offsets;
        if let Some(k) = &checkpoints {
            c.run = k.run;
        }
        c.checkpoints = checkpoints;
        c.spawn_cores(&start.ids)?;
        c.awaiting = start.awaiting;
        c.restored_members = c.awaiting.clone();
        if c.awaiting.is_empty() {
            c.open_own_sources();
        } else {
            c.sources = Arc::new(Gate::new(false));
        }
        c.publish(None);
        c.publish_checkpoints();
        Ok(c)
    }

    /// A member node's cores, as the coordinator's welcome names them, knowing every core of
    /// the cluster as a peer (links to the other members are open already). With `restore`,
    /// they start with this node's part of a checkpoint, and its sources stay shut until the
    /// coordinator says the cluster is whole. `table` is the welcome's (a restored part's is the
    /// same: it is checked when read).
    pub fn start_member(
        config: Arc<Config>,
        dataflow: Arc<Dataflow>,
        node: Arc<Node>,
        events: (flume::Sender<CoreEvent>, flume::Receiver<CoreEvent>),
        welcome: &Welcome,
        table: RoutingTable,
        (checkpoints, restore): (Option<Checkpoints>, Option<restore::Restore>),
    ) -> Result<Self, StartError> {
        let mut c = Self::new(config, dataflow, node, events, table);
        c.run = welcome.run;
        c.checkpoints = checkpoints;
        if let Some(r) = restore {
            c.restoring = r.per_core;
            restore::warn_foreign(&mut c.restoring, |id| welcome.cores.contains(&id));
            c.streams = Arc::new(DurableStreams::restored(&r.offsets, welcome.restore));
            c.offsets = r.offsets;
            c.sources = Arc::new(Gate::new(false));
        }
        c.streams.refuse(welcome.lost_streams.iter().cloned());
        c.lost_streams = welcome.lost_streams.iter().cloned().collect();
        for m in &welcome.members {
            c.add_remote(m);
        }
        c.spawn_cores(&welcome.cores)?;
        c.publish(None);
        Ok(c)
    }

    fn new(
        config: Arc<Config>,
        dataflow: Arc<Dataflow>,
        node: Arc<Node>,
        (_, events): (flume::Sender<CoreEvent>, flume::Receiver<CoreEvent>),
        table: RoutingTable,
    ) -> Self {
        let table = Arc::new(table);
        Coordinator {
            view: Arc::new(Mutex::new(View::new(&table))),
            config,
            dataflow,
            node,
            table,
            cores: BTreeMap::new(),
            events,
            accept_targets: Arc::default(),
            retired: Retired::default(),
            retired_latency: Arc::new(Mutex::new(latency_histogram())),
            stopped: false,
            stopping: Arc::default(),
            unfinished: None,
            cut_short: Vec::new(),
            forsaken: RefCell::default(),
            changes: 0,
            checkpoints: None,
            snapshots: flume::unbounded(),
            early_snapshots: RefCell::default(),
            restoring: BTreeMap::new(),
            run: checkpoint::random_id(),
            streams: Arc::default(),
            sources: Arc::new(Gate::new(true)),
            offsets: Vec::new(),
            awaiting: BTreeMap::new(),
            restored_members: BTreeMap::new(),
            member_dirs: BTreeMap::new(),
            recovery: None,
            lost_streams: BTreeSet::new(),
        }
    }

    /// The sources' listen addresses (`None` for a file source).
    pub fn config_inputs(&self) -> Vec<Option<std::net::SocketAddr>> {
        (self.config.inputs.iter())
            .map(|i| match i {
                Input::Tcp(addr) => Some(*addr),
                Input::File(_) => None,
            })
            .collect()
    }

    /// Registers the cores of another node, reached through the link to it.
    fn add_remote(&mut self, m: &Member) {
        for &id in &m.cores {
            if let Some(addr) = self.node.addr_of(id, &m.name) {
                self.cores.insert(
                    id,
                    CoreHandle {
                        addr,
                        cpu: 0,
                        executor: None,
                    },
                );
            }
        }
    }

    /// Starts executors for `ids` that own no slots yet (at start, the table gives them
    /// theirs), each knowing every core as a peer. All or nothing: if one fails to start, the
    /// others are retired again and nothing is registered (cores, this node's local cores,
    /// the acceptors' targets); the error says why that one failed.
    fn spawn_cores(&mut self, ids: &[CoreId]) -> Result<(), StartError> {
        let cpus = if self.config.cpus.is_empty() {
            online_cpus()
        } else {
            self.config.cpus.clone()
        };
        let channels: Vec<_> = ids.iter().map(|_| core_channels()).collect();
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
        let mut spawned: Vec<(CoreId, CoreHandle)> = Vec::new();
        let mut failed = None;
        for (&id, (addr, data_rx, control_rx)) in ids.iter().zip(channels) {
            let placed: Vec<usize> = spawned.iter().map(|(_, h)| h.cpu).collect();
            let cpu = self.least_used_cpu(&cpus, &placed);
            let setup = CoreSetup {
                id,
                cpu,
                config: self.config.clone(),
                dataflow: self.dataflow.clone(),
                table: self.table.clone(),
                peers: peers.clone(),
                data: data_rx,
                control: control_rx,
                events: self.node.events.clone(),
                open_sources: self.node.open_sources.clone(),
                snapshots: self.snapshots.0.clone(),
                restored: self.restoring.remove(&id).unwrap_or_default(),
                run: self.run,
                durable: self.last_durable(),
                streams: self.streams.clone(),
                board: self.node.board.clone(),
            };
            match spawn_core(setup, ready_tx.clone()) {
                Ok(executor) => spawned.push((
                    id,
                    CoreHandle {
                        addr,
                        cpu,
                        executor: Some(executor),
                    },
                )),
                Err(e) => {
                    failed = Some(StartError::Executor {
                        core: usize::from(id),
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        drop(ready_tx);
        // A core sends its id once its executor runs and then lets go of its sender; one whose
        // executor failed drops it unsent. So this ends once every spawned core said either.
        let started: BTreeSet<CoreId> = ready_rx.iter().collect();
        if failed.is_none() && started.len() < spawned.len() {
            let (id, handle) = spawned
                .iter_mut()
                .find(|(id, _)| !started.contains(id))
                .expect("a core did not start");
            let reason = match handle.executor.take().map(ExecutorJoinHandle::join) {
                Some(Err(e)) => e.to_string(),
                _ => "its executor ended before it ran".to_string(),
            };
            failed = Some(StartError::Executor {
                core: usize::from(*id),
                reason,
            });
        }
        if let Some(error) = failed {
            // No other core knows these yet: each retires at once, with nothing to flush.
            for (id, handle) in spawned {
                handle.addr.retire();
                if let Some(Err(e)) = handle.executor.map(ExecutorJoinHandle::join) {
                    tracing::debug!(core = id, "a core that did not start: {e}");
                }
            }
            return Err(error);
        }
        {
            let mut local = self.node.local.write().unwrap();
            for (id, handle) in &spawned {
                local.insert(*id, handle.addr.clone());
            }
        }
        let mut targets = self.accept_targets.write().unwrap();
        targets.extend(
            spawned
                .iter()
                .filter_map(|(_, h)| h.addr.local_data().cloned()),
        );
        drop(targets);
        self.cores.extend(spawned);
        let local = self.local_ids().len();
        if local > cpus.len() {
            tracing::warn!(
                "{local} cores on {} CPUs: executors share CPUs (placement wraps around); production runs one per CPU",
                cpus.len()
            );
        }
        Ok(())
    }

    /// The CPU of `cpus` that runs the fewest of this node's cores, counting `placed` (cores
    /// being started) too.
    fn least_used_cpu(&self, cpus: &[usize], placed: &[usize]) -> usize {
        cpus.iter()
            .copied()
            .min_by_key(|&cpu| {
                let on_cpu = self
                    .cores
                    .values()
                    .filter(|h| h.executor.is_some() && h.cpu == cpu)
                    .count()
                    + placed.iter().filter(|&&p| p == cpu).count();
                (on_cpu, cpu)
            })
            .unwrap_or(0)
    }

    /// The cores this node runs, oldest first.
    fn local_ids(&self) -> Vec<CoreId> {
        self.cores
            .iter()
            .filter(|(_, h)| h.executor.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    /// Adds `n` cores and moves slots onto them. Refused, changing nothing, if this node would
    /// run more than [`Config::MAX_CORES`] or the cluster has no `n` free core ids; a core that
    /// fails to start changes nothing either.
    pub fn grow(&mut self, n: usize) -> Result<ChangeReport, ChangeError> {
        self.check_can_change()?;
        if n == 0 {
            return Err(ChangeError::GrowByZero);
        }
        let local = self.local_ids().len();
        if local.saturating_add(n) > Config::MAX_CORES {
            return Err(ChangeError::CoresPerNode {
                node: self.node.name.clone(),
                cores: local,
                by: n,
                limit: Config::MAX_CORES,
            });
        }
        let started = Instant::now();
        let before = self.cores.len();
        let old: Vec<CoreId> = self.cores.keys().copied().collect();
        let ids = self.free_ids(n)?;
        // Planned before anything starts: a plan that fails leaves nothing to undo.
        let p = plan(&self.table, &old, &Change::Add(ids.clone()))?;
        tracing::trace!("grow: starting cores");
        self.spawn_cores(&ids).map_err(ChangeError::Start)?;
        tracing::trace!("grow: cores started");
        match self.move_onto(&old, &ids, p, &format!("grow-cores {n}"), started, before) {
            Ok(report) => Ok(report),
            Err(Aborted { error, switched: 0 }) => {
                // Nothing moved: the new cores go again, and the cluster is as it was.
                let heirs: Vec<CoreId> = self
                    .local_ids()
                    .into_iter()
                    .filter(|id| !ids.contains(id))
                    .collect();
                self.set_accept_targets(&heirs);
                if let Err(e) = self.retire_cores(&ids, &heirs) {
                    tracing::error!("rolling back the grow: {e}");
                }
                Err(error)
            }
            Err(aborted) => Err(aborted.error),
        }
    }

    /// The lowest `n` core ids no core of the cluster holds (see `ids.rs` on reuse).
    fn free_ids(&self, n: usize) -> Result<Vec<CoreId>, ChangeError> {
        let used: BTreeSet<CoreId> = self.cores.keys().copied().collect();
        ids::free_ids(&used, n).ok_or(ChangeError::TooManyCores {
            requested: self.cores.len().saturating_add(n),
            limit: usize::from(CoreId::MAX) + 1,
        })
    }

    /// Tells the cores `old` about the cores `new` (the links to their node exist already).
    fn introduce(&self, old: &[CoreId], new: &[CoreId]) {
        let new_peers: Vec<_> = new
            .iter()
            .map(|id| (*id, self.cores[id].addr.clone()))
            .collect();
        for id in old {
            self.cores[id]
                .addr
                .send_control(CoreMsg::AddPeers(new_peers.clone()));
        }
    }

    /// Moves the slots of this node's `n` newest cores away, hands their connections to this
    /// node's other cores, stops them.
    pub fn shrink(&mut self, n: usize) -> Result<ChangeReport, ChangeError> {
        self.check_can_change()?;
        let local = self.local_ids();
        if n == 0 {
            return Err(ChangeError::ShrinkByZero);
        }
        if n >= local.len() {
            return Err(ChangeError::LastCore {
                cores: local.len(),
                by: n,
            });
        }
        let started = Instant::now();
        let before = self.cores.len();
        let members: Vec<CoreId> = self.cores.keys().copied().collect();
        let victims: Vec<CoreId> = local[local.len() - n..].to_vec();
        let heirs: Vec<CoreId> = local[..local.len() - n].to_vec();
        self.set_accept_targets(&heirs);
        let p = plan(&self.table, &members, &Change::Remove(victims.clone()))?;
        let label = format!("shrink-cores {n}");
        let report = match self.migrate(p, &label) {
            Ok(report) => report,
            Err(Aborted { error, switched }) => {
                if switched == 0 {
                    self.set_accept_targets(&local);
                }
                return Err(error);
            }
        };
        let migrated = started.elapsed();
        self.retire_cores(&victims, &heirs)?;
        tracing::debug!(?migrated, retired = ?started.elapsed(), "shrink phases");
        self.publish(None);
        Ok(self.finished(report, &label, started, before))
    }

    /// The cores the acceptors deal new source connections to.
    fn set_accept_targets(&self, ids: &[CoreId]) {
        let mut targets = self.accept_targets.write().unwrap();
        *targets = ids
            .iter()
            .filter_map(|id| self.cores[id].addr.local_data().cloned())
            .collect();
    }

    /// Retires this node's cores `victims`, which own no slot: their source connections go to
    /// `heirs`, every other core forgets them, their executors end.
    fn retire_cores(&mut self, victims: &[CoreId], heirs: &[CoreId]) -> Result<(), ChangeError> {
        for v in victims {
            self.cores[v].addr.send_control(CoreMsg::Leave {
                heirs: heirs.to_vec(),
            });
        }
        let left = RefCell::new(BTreeSet::new());
        self.wait_events(
            &format!("cores {victims:?} to hand over their connections"),
            |e| {
                let mut left = left.borrow_mut();
                if let CoreEvent::Left(c) = e {
                    left.insert(*c);
                }
                left.len() == victims.len()
            },
            || {
                let left = left.borrow();
                victims
                    .iter()
                    .filter(|v| !left.contains(v))
                    .copied()
                    .collect()
            },
        )?;
        self.forget(victims);
        for v in victims {
            self.node.local.write().unwrap().remove(v);
            let handle = self.cores.remove(v).expect("victim is a member");
            let (tx, rx) = flume::bounded(1);
            handle.addr.send_control(CoreMsg::TakeLatency(tx));
            if let Ok(h) = rx.recv() {
                let _ = self.retired_latency.lock().unwrap().add(&h);
            }
            handle.addr.retire();
            match handle.executor.map(|e| e.join()) {
                Some(Ok(r)) => self.retired.add(&r),
                Some(Err(e)) => tracing::error!(core = v, "retired core failed: {e}"),
                None => {}
            }
        }
        self.publish(None);
        Ok(())
    }

    /// Tells every core but `gone` to forget the cores `gone`.
    fn forget(&self, gone: &[CoreId]) {
        for (id, h) in &self.cores {
            if !gone.contains(id) {
                for g in gone {
                    h.addr.send_control(PeerMsg::RemovePeer(*g));
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
    /// The autoscaling range the engine was started with (on the coordinator only) and the
    /// policy's knobs, and the commands it runs for nodes.
    pub fn autoscale(
        &self,
    ) -> (
        Option<(usize, usize)>,
        crate::autoscale::Policy,
        crate::autoscale::NodeCommands,
    ) {
        let range = self.config.autoscale.filter(|_| self.node.is_coordinator());
        let c = &self.config;
        (range, c.autoscale_policy.clone(), c.on_scale.clone())
    }

    fn publish(&self, migration: Option<MigrationProgress>) {
        let mut view = self.view.lock().unwrap();
        view.table = self.table.clone();
        view.cores = self
            .cores
            .iter()
            .filter_map(|(&id, h)| Some((id, h.cpu, h.addr.local_control()?.clone())))
            .collect();
        view.migration = migration;
        view.recovery = self.recovery.clone();
        view.retired = self.retired.count;
    }

    /// Stops every core of the cluster: sources stop, everything in flight is applied, sinks
    /// flush. Returns this node's core reports once its cores are done. On a member (whose
    /// coordinator was lost) only this node's cores stop, waiting for each other only.
    pub fn stop(&mut self) -> Vec<CoreReport> {
        self.final_checkpoint();
        self.stopped = true;
        if self.node.is_coordinator() {
            self.let_go_of_silent_members();
        }
        let lost: Vec<CoreId> = self
            .node
            .lost_nodes()
            .into_iter()
            .flat_map(|l| l.cores)
            .collect();
        let producers: Vec<CoreId> = if self.node.is_coordinator() {
            self.cores
                .keys()
                .copied()
                .filter(|id| !lost.contains(id))
                .collect()
        } else {
            self.local_ids()
        };
        for id in &producers {
            self.cores[id].addr.send_control(PeerMsg::Stop {
                producers: producers.clone(),
            });
        }
        self.finish()
    }

    /// A member that does not answer within [`STOP_PING`] (stopped, hung, or cut off) would hold
    /// the stop forever: every core waits for its `ProducerDone`, and the links to it fill up.
    /// Such a member is let go like a lost node: its links are cut and nothing more is awaited
    /// from it; what it had in flight is lost, and the log says so.
    fn let_go_of_silent_members(&self) {
        for m in self.node.members() {
            if self.node.ask(&m.name, Question::Ping, STOP_PING).is_none() {
                let reason =
                    format!("it did not answer within {STOP_PING:?} when the cluster stopped");
                self.node.sever(&m.name, &reason);
            }
        }
    }

    /// A rollback ([`crate::Ending::Rollback`]): the members are cut off (each takes its
    /// coordinator for lost and joins it again), then this node's cores stop on their own,
    /// with no last checkpoint: the cluster goes on from the one before.
    pub fn abandon(&mut self) -> Vec<CoreReport> {
        self.stopped = true;
        for m in self.node.members() {
            (self.node).sever(&m.name, "the cluster goes back to its last checkpoint");
        }
        let local = self.local_ids();
        for id in &local {
            self.cores[id].addr.send_control(PeerMsg::Stop {
                producers: local.clone(),
            });
        }
        self.finish()
    }

    /// A member leaving the cluster: its cores (which own no slot any more) flush and end.
    pub fn retire_all(&mut self) -> Vec<CoreReport> {
        self.stopped = true;
        for id in self.local_ids() {
            self.cores[&id].addr.retire();
        }
        self.finish()
    }

    /// The retired cores' reports, folded into one.
    pub fn retired(&self) -> Retired {
        self.retired.clone()
    }

    /// Waits for this node's cores to end, then closes the links to the other nodes.
    pub fn finish(&mut self) -> Vec<CoreReport> {
        self.stopped = true;
        let mut reports: Vec<CoreReport> = std::mem::take(&mut self.cores)
            .into_iter()
            .filter_map(|(id, h)| {
                let executor = h.executor?;
                Some(executor.join().unwrap_or_else(|e| {
                    tracing::error!(core = id, "core failed: {e}");
                    CoreReport::new(usize::from(id))
                }))
            })
            .collect();
        self.node.local.write().unwrap().clear();
        self.node.close_links();
        reports.sort_by_key(|r| r.core);
        self.publish(None);
        reports
    }
}
