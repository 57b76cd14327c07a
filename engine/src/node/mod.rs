//! A node: the [`Engine`] a program starts (or joins a cluster with), its coordinator (which
//! decides and drives every change: grow, shrink, a node joining or leaving), what `status`
//! reports, and the acceptors that deal source connections to the cores. The top layer: it
//! stands on the runtime (cores) and the cluster (links, wire).

mod autoscaling;
mod background;
mod change_lock;
mod coordinator;
mod join;
mod prometheus;
mod scale_commands;
mod state_dir;
mod status;
mod status_json;
#[cfg(test)]
mod tests;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use thiserror::Error;

pub use self::autoscaling::AutoscaleStatus;
use self::background::{checkpoint_every, recover_lost};
use self::change_lock::{hold, Changing, Wait, CHECKPOINT};
pub use self::coordinator::{
    CheckpointError, CheckpointInfo, CheckpointStatus, RecoveryError, RecoveryStatus,
    MAX_SLOTS_PER_STEP,
};
use self::coordinator::{Checkpoints, Coordinator, Gate};
pub use self::join::{JoinError, SourcesClosed};
pub use self::state_dir::StateDirError;
pub use self::status::{
    ChangeError, ChangeReport, ChangeTally, JoinRefusal, LostReport, MigrationProgress, NodeInfo,
    Status,
};
use crate::app::App;
use crate::cluster::wire;
use crate::cluster::{link, Ending, Node, Role};
use crate::metrics::{latency_histogram, Summary};
use crate::routing::CoreId;
use crate::runtime::messages::{ConnectionKind, CoreMsg, SourceConnection};
use crate::runtime::{ask_cores, online_cpus, Config};

/// Why the engine could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("app `{app}` has {sources} source(s) but {inputs} input address(es) were given")]
    InputCount {
        app: String,
        sources: usize,
        inputs: usize,
    },
    #[error("app `{app}` has {} sink(s) ({}) but {given} output address(es) were given", .sinks.len(), .sinks.join(", "))]
    Sinks {
        app: String,
        sinks: Vec<String>,
        given: usize,
    },
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    #[error("a node runs 1 to {limit} cores; {asked} were asked for (--cores)")]
    Cores { asked: usize, limit: usize },
    #[error("a cluster has 1 to {limit} slots; {asked} were asked for (--slots)")]
    Slots { asked: u32, limit: u32 },
    #[error("the sink buffer must hold at least 1 byte (--sink-buffer): with 0 a core could never apply anything")]
    SinkBufferZero,
    #[error("CPU {cpu} is not online on this host (--cpus); its online CPUs are {online}")]
    Cpu { cpu: usize, online: String },
    // Not `source`: thiserror would make it the error's cause too, and `{:#}` would print the
    // reason twice.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("core {core} failed to start: {reason}{}", locked_memory_hint(.reason))]
    Executor { core: usize, reason: String },
    // The reason is the source only, so `{:#}` shows it once.
    #[error("cannot join the cluster at {addr}")]
    Join {
        addr: SocketAddr,
        #[source]
        error: JoinError,
    },
}

/// The advice for an executor that failed to start, when its reason is one locked memory
/// explains (io_uring's rings are locked memory: `ENOMEM`, `EPERM`); none for other reasons.
fn locked_memory_hint(reason: &str) -> &'static str {
    let memory = [
        "Cannot allocate memory",
        "Operation not permitted",
        "os error 12",
    ];
    if memory.iter().any(|m| reason.contains(m)) {
        " (glommio needs locked memory: try `ulimit -l unlimited`)"
    } else {
        ""
    }
}

/// CPU ids as ranges: `0-3,6`.
fn cpu_list(cpus: &[usize]) -> String {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for &c in cpus {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == c => *end = c,
            _ => ranges.push((c, c)),
        }
    }
    ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a node starts a cluster or joins one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Starting {
    Cluster,
    Joining,
}

/// A running engine. Its methods take `&self`, so a control thread can share it.
pub struct Engine {
    coordinator: Arc<Mutex<Coordinator>>,
    node: Arc<Node>,
    app_name: String,
    /// A member's coordinator: its control address (for leaving) and its node name.
    joined: Option<(SocketAddr, String)>,
    retired_latency: Arc<Mutex<Histogram<u64>>>,
    view: Arc<Mutex<status::View>>,
    listeners: Vec<TcpListener>,
    acceptors: Mutex<Vec<JoinHandle<()>>>,
    /// The change that holds the coordinator's lock, and since when.
    changing: Arc<Changing>,
    /// Take a checkpoint every interval (with a state dir and an interval), and recover the
    /// slots of lost nodes (on the coordinator, with a state dir).
    background: Mutex<Vec<JoinHandle<()>>>,
    stopping: Arc<AtomicBool>,
    /// Each TCP source's index and bound address.
    input_addrs: Vec<(usize, SocketAddr)>,
    started: Instant,
    /// Shut while a restored cluster waits for its nodes: the acceptors wait on it.
    sources: Arc<Gate>,
    autoscaling: autoscaling::Autoscaling,
}

impl Engine {
    /// Binds the inputs and starts the cores as the coordinator of a new cluster (of one node
    /// until others join). Returns once every core runs.
    pub fn start(app: &App, config: Config) -> Result<Engine, StartError> {
        let config = Self::check(app, config, Starting::Cluster)?;
        let data = Self::bind_data(config.data.unwrap_or(([127, 0, 0, 1], 0).into()))?;
        let events = flume::unbounded();
        let node = Node::new(
            &config,
            app.dataflow.clone(),
            data.local_addr().expect("bound"),
            events.0.clone(),
            Role::Coordinator,
        );
        let checkpoints = match &config.state_dir {
            Some(dir) => {
                let mut c = Checkpoints::open(
                    state_dir::StateDir::open(dir, app.name(), config.n_slots)?,
                    app.name(),
                    &config.name,
                )?;
                c.lead()?;
                Some(c)
            }
            None => None,
        };
        link::serve(node.clone(), data);
        let coordinator = Coordinator::start(
            Arc::new(config),
            app.dataflow.clone(),
            node.clone(),
            events,
            checkpoints,
        )?;
        Self::serve_inputs(app, coordinator, node, None)
    }

    fn check(app: &App, mut config: Config, starting: Starting) -> Result<Config, StartError> {
        let inputs_ok = config.inputs.len() == app.sources().len()
            || (starting == Starting::Joining && config.inputs.is_empty());
        if !inputs_ok {
            return Err(StartError::InputCount {
                app: app.name().into(),
                sources: app.sources().len(),
                inputs: config.inputs.len(),
            });
        }
        // A joining node learns the cluster's sinks (it checks them then).
        if config.outputs.len() != app.sinks().len() && starting != Starting::Joining {
            return Err(StartError::Sinks {
                app: app.name().into(),
                sinks: app.sinks().to_vec(),
                given: config.outputs.len(),
            });
        }
        if config.cores == 0 || config.cores > Config::MAX_CORES {
            return Err(StartError::Cores {
                asked: config.cores,
                limit: Config::MAX_CORES,
            });
        }
        if config.n_slots == 0 || config.n_slots > Config::MAX_SLOTS {
            return Err(StartError::Slots {
                asked: config.n_slots,
                limit: Config::MAX_SLOTS,
            });
        }
        if config.sink_buffer == 0 {
            return Err(StartError::SinkBufferZero);
        }
        if config.max_frame == 0 {
            return Err(StartError::Config(
                "the largest frame (--max-frame) must be at least 1 byte: with 0 every frame would close its connection",
            ));
        }
        let online = online_cpus();
        if let Some(&cpu) = config.cpus.iter().find(|c| !online.contains(c)) {
            return Err(StartError::Cpu {
                cpu,
                online: cpu_list(&online),
            });
        }
        if config.token.len() > 255 {
            return Err(StartError::Config(
                "the cluster token must be at most 255 bytes",
            ));
        }
        if config.name.is_empty() {
            return Err(StartError::Config("the node name must not be empty"));
        }
        if config.guarantee == crate::runtime::Guarantee::ExactlyOnce && config.state_dir.is_none()
        {
            return Err(StartError::Config(
                "--guarantee exactly-once needs --state-dir: outputs are released by durable checkpoints",
            ));
        }
        if starting == Starting::Joining
            && (config.inputs.iter()).any(|i| matches!(i, crate::runtime::Input::File(_)))
        {
            return Err(StartError::Config(
                "a file source on a joining node: a node may leave the cluster, and a file being read cannot move with its slots; read files on the coordinator's node",
            ));
        }
        config.source_names = app.sources().to_vec();
        Ok(config)
    }

    fn bind_data(addr: SocketAddr) -> Result<TcpListener, StartError> {
        TcpListener::bind(addr).map_err(|error| StartError::Listen { addr, error })
    }

    fn serve_inputs(
        app: &App,
        coordinator: Coordinator,
        node: Arc<Node>,
        joined: Option<(SocketAddr, String)>,
    ) -> Result<Engine, StartError> {
        let inputs = coordinator.config_inputs();
        let listeners = (inputs.iter().enumerate())
            .filter_map(|(source, addr)| Some((source, (*addr)?)))
            .map(|(source, addr)| match TcpListener::bind(addr) {
                Ok(l) => Ok((source, l)),
                Err(error) => Err(StartError::Listen { addr, error }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let input_addrs = listeners
            .iter()
            .map(|(source, l)| (*source, l.local_addr().expect("bound")))
            .collect();
        let view = coordinator.view.clone();
        let stopping = coordinator.stopping.clone();
        let checkpoint_interval = coordinator.checkpoint_interval();
        let (range, knobs, commands) = coordinator.autoscale();
        let autoscaling = autoscaling::Autoscaling::new(range, knobs, commands);
        let checkpoints_on = coordinator.checkpoints_on();
        let sources = coordinator.sources.clone();
        let acceptors = listeners
            .iter()
            .map(|&(source, ref listener)| {
                let listener = listener.try_clone().expect("clone listener");
                let (targets, stopping) = (coordinator.accept_targets.clone(), stopping.clone());
                let (node, sources) = (node.clone(), sources.clone());
                std::thread::Builder::new()
                    .name(format!("quokka-accept-{source}"))
                    .spawn(move || {
                        sources.wait();
                        accept(source, listener, targets, stopping, &node)
                    })
                    .expect("spawn acceptor thread")
            })
            .collect();
        tracing::info!(
            node = %node.name,
            cores = node.local.read().unwrap().len(),
            data = %node.data_addr,
            "engine started"
        );
        let retired_latency = coordinator.retired_latency.clone();
        let coordinator = Arc::new(Mutex::new(coordinator));
        if joined.is_some() {
            answer_upward(&node, &coordinator);
        }
        let changing = Arc::new(Mutex::new(None));
        let checkpointer = checkpoint_interval.map(|every| {
            let (coordinator, changing) = (coordinator.clone(), changing.clone());
            let stopping = stopping.clone();
            std::thread::Builder::new()
                .name("quokka-checkpoint".into())
                .spawn(move || checkpoint_every(every, &coordinator, &changing, &stopping))
                .expect("spawn the checkpoint thread")
        });
        let recoverer = (joined.is_none() && checkpoints_on).then(|| {
            let (lost_tx, lost) = flume::unbounded();
            *node.on_lost.lock().unwrap() = Some(lost_tx);
            let (coordinator, changing) = (coordinator.clone(), changing.clone());
            let stopping = stopping.clone();
            std::thread::Builder::new()
                .name("quokka-recover".into())
                .spawn(move || recover_lost(&lost, &coordinator, &changing, &stopping))
                .expect("spawn the recovery thread")
        });
        Ok(Engine {
            retired_latency,
            coordinator,
            node,
            app_name: app.name().to_string(),
            joined,
            view,
            listeners: listeners.into_iter().map(|(_, l)| l).collect(),
            acceptors: Mutex::new(acceptors),
            sources,
            changing,
            background: Mutex::new(checkpointer.into_iter().chain(recoverer).collect()),
            stopping,
            input_addrs,
            started: Instant::now(),
            autoscaling,
        })
    }

    pub fn is_coordinator(&self) -> bool {
        self.node.is_coordinator()
    }

    /// This node's name and where other nodes link to it.
    pub fn node_name(&self) -> &str {
        &self.node.name
    }

    pub fn data_addr(&self) -> SocketAddr {
        self.node.data_addr
    }

    /// Whether a request's cluster token is this cluster's.
    pub fn token_matches(&self, token: &str) -> bool {
        self.node.token_matches(token)
    }

    /// On a member: how the cluster let this node go (removed, or the whole cluster stopped).
    pub fn ended(&self) -> &flume::Receiver<Ending> {
        &self.node.ended
    }

    /// On a member: whether the coordinator went away without leaving (then this node can
    /// only [`Self::stop`] on its own).
    pub fn coordinator_lost(&self) -> bool {
        self.joined
            .as_ref()
            .is_some_and(|(_, lead)| self.node.lost_nodes().iter().any(|l| &l.name == lead))
    }

    /// On a member, after [`Self::ended`]: retires (departed), waits for (cluster stopped) or
    /// stops on its own (coordinator lost) this node's cores, closes the links, and reports.
    /// Once the engine is dropped its ports and state dir are free for a new one.
    pub fn finish(&self, ending: Ending) -> Summary {
        self.close_inputs();
        let mut coordinator = self.coordinator.lock().unwrap_or_else(|e| e.into_inner());
        let cores = match ending {
            Ending::Departed => coordinator.retire_all(),
            Ending::ClusterStopped => coordinator.finish(),
            Ending::CoordinatorLost => coordinator.stop(),
            Ending::Rollback => coordinator.abandon(),
        };
        Summary {
            cores,
            retired: coordinator.retired(),
            elapsed: self.started.elapsed(),
            checkpoint: coordinator.last_checkpoint(),
        }
    }

    /// On the coordinator, before a rollback's [`Self::finish`]: the lost members and their
    /// state dirs, for [`Config::adopt`].
    pub fn lost_dirs(&self) -> Vec<(String, std::path::PathBuf)> {
        let coordinator = self.coordinator.lock().unwrap_or_else(|e| e.into_inner());
        coordinator.lost_dirs()
    }

    /// On the coordinator: moves a member's slots away and lets it exit.
    pub fn remove_node(&self, name: &str) -> Result<ChangeReport, ChangeError> {
        self.change(format!("remove-node {name}"), |c| c.remove_node(name))
    }

    /// The bound input addresses (useful when a configured port was 0), of the TCP sources in
    /// source order (an app whose sources are all TCP: one per source).
    pub fn input_addrs(&self) -> Vec<SocketAddr> {
        self.input_addrs.iter().map(|(_, a)| *a).collect()
    }

    /// Each TCP source's index and bound address.
    pub fn listening(&self) -> &[(usize, SocketAddr)] {
        &self.input_addrs
    }

    /// Adds `n` cores while the app runs; slots rebalance onto them.
    pub fn grow(&self, n: usize) -> Result<ChangeReport, ChangeError> {
        self.change(format!("grow-cores {n}"), |c| c.grow(n))
    }

    /// Removes the `n` newest cores while the app runs: their slots and source connections move
    /// to the others, then their executors stop.
    pub fn shrink(&self, n: usize) -> Result<ChangeReport, ChangeError> {
        self.change(format!("shrink-cores {n}"), |c| c.shrink(n))
    }

    /// One change at a time: a second one is refused, not queued behind the first, with what
    /// runs: its migration's progress, or else the change `what` names (a join waiting for its
    /// node's Ready, cores starting).
    fn change(
        &self,
        what: String,
        f: impl FnOnce(&mut Coordinator) -> Result<ChangeReport, ChangeError>,
    ) -> Result<ChangeReport, ChangeError> {
        let Ok(mut coordinator) = hold(
            &self.coordinator,
            &self.changing,
            &what,
            Wait::ForCheckpoint,
        ) else {
            // Refused too: the autoscaler waits out its cooldown rather than ask every second.
            self.autoscaling.changed(self.started.elapsed());
            return Err(ChangeError::Busy {
                doing: self.doing(),
            });
        };
        let report = f(&mut coordinator);
        // Every change, done or not, the autoscaler's or a person's, restarts its cooldown.
        self.autoscaling.changed(self.started.elapsed());
        let report = report?;
        // The slots stand where they moved in a checkpoint at once: a node lost later is
        // restored from where its slots were, not from before they moved (which would repeat
        // or drop outputs a survivor made for them meanwhile).
        if report.slots_moved > 0 && coordinator.checkpoints_on() {
            if let Err(e) = coordinator.checkpoint() {
                tracing::warn!("no checkpoint after the change: {e}");
            }
        }
        Ok(report)
    }

    /// Takes a checkpoint now and waits until it is durable. Refused while a change runs (a
    /// migration and a checkpoint never overlap); waits for a checkpoint already running.
    pub fn checkpoint(&self) -> Result<CheckpointInfo, CheckpointError> {
        let held = hold(
            &self.coordinator,
            &self.changing,
            CHECKPOINT,
            Wait::ForCheckpoint,
        );
        let Ok(mut coordinator) = held else {
            return Err(CheckpointError::Busy {
                doing: self.doing(),
            });
        };
        coordinator.checkpoint()
    }

    /// What holds the change lock, for a refusal.
    fn doing(&self) -> String {
        if let Some(m) = &self.view.lock().unwrap().migration {
            return m.to_string();
        }
        match &*self.changing.lock().unwrap() {
            Some((what, since)) => {
                format!("{what}, running {:.1}s", since.elapsed().as_secs_f64())
            }
            // Only a stop holds the lock unnamed (or it was let go of just now).
            None => "the engine is stopping, or a change just ended".into(),
        }
    }

    /// Cores, slots, epoch, per-core rates and latency over the last second, and any migration:
    /// every node's cores (the others are asked, each within 2 s).
    pub fn status(&self) -> Status {
        self.status_asking(true)
    }

    /// As [`Self::status`], with this node's cores only: the other nodes are listed, not asked
    /// (a member's dashboard shows itself and links to the others').
    pub fn own_status(&self) -> Status {
        self.status_asking(false)
    }

    fn status_asking(&self, others: bool) -> Status {
        let (table, cores, migration, retired, checkpoints, recovery, changes) = {
            let v = self.view.lock().unwrap();
            (
                v.table.clone(),
                v.cores.clone(),
                v.migration.clone(),
                v.retired,
                v.checkpoints.clone(),
                v.recovery.clone(),
                v.changes.clone(),
            )
        };
        let autoscale = self.autoscaling.status();
        let mut answers = self.node.local_status();
        let mut silent: Vec<CoreId> = cores
            .iter()
            .map(|c| c.0)
            .filter(|id| !answers.iter().any(|s| s.core == *id))
            .collect();
        let mut nodes = vec![NodeInfo {
            name: self.node.name.clone(),
            data_addr: self.node.data_addr.to_string(),
            http: Some(self.node.http.clone()).filter(|h| !h.is_empty()),
            coordinator: self.node.is_coordinator(),
        }];
        for m in self.node.members() {
            if others {
                match (self.node).ask(&m.name, wire::Question::Status, Duration::from_secs(2)) {
                    Some(wire::Answer::Status(s)) => answers.extend(s),
                    _ => silent.extend(&m.cores),
                }
            }
            let leads =
                matches!(&self.node.role, Role::Member { coordinator } if *coordinator == m.name);
            nodes.push(NodeInfo {
                name: m.name,
                data_addr: m.data_addr,
                http: Some(m.http).filter(|h| !h.is_empty()),
                coordinator: leads,
            });
        }
        let lost = self
            .node
            .lost_nodes()
            .into_iter()
            .map(|node| LostReport {
                slots: node.cores.iter().map(|&c| table.slots_of(c)).sum(),
                node,
            })
            .collect();
        Status {
            epoch: table.epoch(),
            n_slots: table.n_slots(),
            nodes,
            cores: answers,
            lost,
            silent,
            migration,
            retired,
            checkpoints,
            recovery,
            changes,
            autoscale,
        }
    }

    /// This node's metrics in the Prometheus text format (`/metrics`): its cores' counters as
    /// they last published them (at most a second old: reading them never asks a core), and on
    /// the coordinator the cluster's changes and checkpoints.
    pub fn metrics(&self) -> String {
        let cores = self.node.board.read();
        let coordinator = self.node.is_coordinator();
        let facts = {
            let v = self.view.lock().unwrap();
            prometheus::NodeFacts {
                node: self.node.name.clone(),
                app: self.app_name.clone(),
                coordinator,
                nodes: self.node.members().len() + 1,
                lost_nodes: self.node.lost_nodes().len(),
                retired_cores: v.retired,
                event_time: self.node.dataflow.stages.iter().any(|s| s.has_timers())
                    || cores.iter().any(|c| c.status.watermark.is_some()),
                changes: coordinator.then(|| v.changes.clone()),
                migration: v.migration.clone(),
                checkpoints: v.checkpoints.clone(),
                recovering: (v.recovery.as_ref())
                    .is_some_and(|r| r.took.is_none() && r.failed.is_none()),
                autoscale: coordinator.then(|| self.autoscaling.status()),
            }
        };
        prometheus::render(facts, cores)
    }

    /// Source-to-sink latency of the outputs written since the previous call (all cores), for
    /// measuring a window of time such as a migration.
    pub fn take_latency(&self) -> Histogram<u64> {
        let inboxes: Vec<_> = self
            .view
            .lock()
            .unwrap()
            .cores
            .iter()
            .map(|c| c.2.clone())
            .collect();
        let mut all = std::mem::replace(
            &mut *self.retired_latency.lock().unwrap(),
            latency_histogram(),
        );
        for h in ask_cores(&inboxes, CoreMsg::TakeLatency, Duration::from_secs(10)) {
            all.add(&h).expect("same histogram bounds");
        }
        for m in self.node.members() {
            if let Some(wire::Answer::Latency(bytes)) =
                self.node
                    .ask(&m.name, wire::Question::Latency, Duration::from_secs(10))
            {
                let h: Result<Histogram<u64>, _> =
                    hdrhistogram::serialization::Deserializer::new().deserialize(&mut &bytes[..]);
                match h {
                    Ok(h) => {
                        let _ = all.add(&h);
                    }
                    Err(e) => tracing::warn!("node {}: garbled latency histogram: {e}", m.name),
                }
            }
        }
        all
    }

    /// Stops reading sources, applies everything in flight, flushes the sinks, and reports.
    /// A change in progress ends at its next wait (within 100 ms; the steps not switched yet are
    /// called off; a join waiting for its node's `Ready` holds on for at most 15 s). On the
    /// coordinator this stops the whole cluster, letting go of a member that does not answer
    /// within 2 s; on a member whose coordinator was lost, this node alone.
    pub fn stop(&self) -> Summary {
        self.close_inputs();
        let mut coordinator = self.coordinator.lock().unwrap_or_else(|e| e.into_inner());
        let cores = coordinator.stop();
        Summary {
            cores,
            retired: coordinator.retired(),
            elapsed: self.started.elapsed(),
            checkpoint: coordinator.last_checkpoint(),
        }
    }
}

impl Engine {
    fn close_inputs(&self) {
        self.stopping.store(true, Ordering::Release);
        // Acceptors still waiting for the sources to open go on, and see the stop.
        self.sources.open();
        for t in std::mem::take(&mut *self.background.lock().unwrap()) {
            let _ = t.join();
        }
        for l in &self.listeners {
            // Wakes the acceptor blocked in accept() (Linux returns EINVAL after shutdown).
            let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Both);
        }
        for a in std::mem::take(&mut *self.acceptors.lock().unwrap()) {
            let _ = a.join();
        }
    }
}

/// On a member: answers the questions of the coordinator that the node layer answers (its part
/// of a checkpoint, opening its sources), on a thread of its own, in turn.
fn answer_upward(node: &Node, coordinator: &Arc<Mutex<Coordinator>>) {
    let (up, questions) = flume::unbounded::<crate::cluster::Upward>();
    *node.upward.lock().unwrap() = Some(up);
    let coordinator = Arc::downgrade(coordinator);
    std::thread::Builder::new()
        .name("quokka-upward".into())
        .spawn(move || {
            for (question, reply) in questions {
                let Some(c) = coordinator.upgrade() else {
                    return;
                };
                let answer = c
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .answer_upward(question);
                reply.send(answer);
            }
        })
        .expect("spawn the upward answering thread");
}

/// Accepts connections of one source and deals them to the cores in turn.
fn accept(
    source: usize,
    listener: TcpListener,
    targets: Arc<RwLock<Vec<flume::Sender<CoreMsg>>>>,
    stopping: Arc<AtomicBool>,
    node: &Node,
) {
    let mut next = source;
    for stream in listener.incoming() {
        if stopping.load(Ordering::Acquire) {
            return;
        }
        match stream {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                // Holding the read lock while sending: a shrink that takes a core out of the
                // targets waits for this send, so no connection reaches a core after it left.
                let targets = targets.read().unwrap();
                if !node.accepting.load(Ordering::Acquire) {
                    tracing::warn!(
                        source,
                        "refused a source connection: this node is leaving the cluster"
                    );
                    continue;
                }
                node.open_sources.fetch_add(1, Ordering::AcqRel);
                let core = next % targets.len();
                next += 1;
                let conn = SourceConnection {
                    source,
                    stream,
                    pending: Vec::new(),
                    latest: None,
                    kind: ConnectionKind::Unread,
                };
                if targets[core].send(CoreMsg::Connection(conn)).is_err() {
                    node.open_sources.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(source, "accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod config_tests {
    use super::{cpu_list, locked_memory_hint};

    #[test]
    fn cpu_lists_read_as_ranges() {
        assert_eq!(cpu_list(&[0]), "0");
        assert_eq!(cpu_list(&[0, 1]), "0-1");
        assert_eq!(cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(cpu_list(&[]), "");
    }

    #[test]
    fn only_memory_errors_blame_locked_memory() {
        assert!(locked_memory_hint("Cannot allocate memory (os error 12)").contains("ulimit -l"));
        assert!(locked_memory_hint("Operation not permitted (os error 1)").contains("ulimit -l"));
        assert_eq!(locked_memory_hint("Too many open files (os error 24)"), "");
        assert_eq!(locked_memory_hint("CPU 5 not found"), "");
    }
}
