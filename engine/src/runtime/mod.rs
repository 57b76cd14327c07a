//! The thread-per-core runtime: one pinned glommio executor per core, acceptor threads that deal
//! source connections to them, and a coordinator that adds and removes cores while the app runs.
//!
//! Data path: a core reads a source connection, runs the stateless steps and `key_by`, and
//! batches each keyed message for the core that owns its slot. Its own batches it applies in
//! place; the others go through an ordered outbox to the owner's bounded inbox (flume). A full
//! inbox holds the sender, which then stops reading its sockets: back-pressure, never a drop.

mod coordinator;
pub(crate) mod core;
pub(crate) mod messages;
mod notify;
mod outbox;
pub mod sink;
mod status;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use self::coordinator::Coordinator;
pub use self::coordinator::MAX_SLOTS_PER_STEP;
use self::messages::{CoreMsg, Handover};
pub use self::status::{
    ChangeError, ChangeReport, LostReport, MigrationProgress, NodeInfo, Status,
};
use crate::app::App;
use crate::cluster::wire::{self, JoinRequest, Welcome};
use crate::cluster::{link, Ending, Node};
use crate::routing::CoreId;
use hdrhistogram::Histogram;
use quokka_io::control::{
    Client, ControlError, Request, Response, Session, Step, Timeouts, JOIN_ANSWER, READY_DEADLINE,
};

use crate::metrics::{latency_histogram, Summary};

/// How to run an app.
#[derive(Debug, Clone)]
pub struct Config {
    /// Executors to start, one per CPU in production; more than the CPUs wrap around.
    pub cores: usize,
    /// Slots in the routing table; fixed for the life of a cluster.
    pub n_slots: u32,
    /// One listen address per source of the app, in the app's source order.
    pub inputs: Vec<SocketAddr>,
    /// The sink address; every core connects to it.
    pub output: SocketAddr,
    /// Largest accepted frame payload, in bytes.
    pub max_frame: usize,
    /// Bytes of encoded outputs a core buffers before it stops applying (back-pressure).
    pub sink_buffer: usize,
    /// On stop, how long a core keeps retrying an unreachable sink before giving up.
    pub drain_timeout: Duration,
    /// Source names, for log lines (filled from the app).
    pub source_names: Vec<String>,
    /// This node's name in the cluster.
    pub name: String,
    /// Where other nodes link to this one (port 0: any free port).
    pub data: Option<SocketAddr>,
    /// The shared secret every join, control and data connection must present.
    pub token: String,
    /// The CPUs this node's executors are placed on (empty: every online CPU).
    pub cpus: Vec<usize>,
}

impl Config {
    /// Slots unless told otherwise: 64 cores would get 64 each.
    pub const DEFAULT_SLOTS: u32 = 4096;
    /// Bytes of outputs a core buffers for the sink unless told otherwise.
    pub const DEFAULT_SINK_BUFFER: usize = 4 << 20;

    /// Defaults for everything but the addresses.
    pub fn new(inputs: Vec<SocketAddr>, output: SocketAddr) -> Self {
        Self {
            cores: default_cores(),
            n_slots: Self::DEFAULT_SLOTS,
            inputs,
            output,
            max_frame: quokka_io::framing::DEFAULT_MAX_FRAME,
            sink_buffer: Self::DEFAULT_SINK_BUFFER,
            drain_timeout: Duration::from_secs(10),
            source_names: Vec::new(),
            name: "w1".into(),
            data: None,
            token: String::new(),
            cpus: Vec::new(),
        }
    }
}

/// The machine's online CPUs: the default core count, and what placement wraps around. Not the
/// calling thread's affinity (a pinned caller must not squeeze every executor onto its CPU).
pub fn default_cores() -> usize {
    glommio::CpuSet::online().map_or(1, |set| set.len().max(1))
}

/// Why the engine could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("app `{app}` has {sources} source(s) but {inputs} input address(es) were given")]
    InputCount {
        app: String,
        sources: usize,
        inputs: usize,
    },
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    // Not `source`: thiserror would make it the error's cause too, and `{:#}` would print the
    // reason twice.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("core {core} failed to start: {reason} (glommio needs locked memory: try `ulimit -l unlimited`)")]
    Executor { core: usize, reason: String },
    #[error("cannot join the cluster at {addr}: {reason}")]
    Join { addr: SocketAddr, reason: String },
    #[error("cannot join the cluster at {addr}")]
    JoinControl {
        addr: SocketAddr,
        #[source]
        source: ControlError,
    },
}

/// Why a member could not leave the cluster.
#[derive(Debug, Error)]
pub enum LeaveError {
    #[error("this node is the coordinator")]
    Coordinator,
    #[error("the coordinator refused: {0}")]
    Refused(String),
    #[error("the coordinator answered with a welcome")]
    Unexpected,
    #[error("cannot ask the coordinator at {addr}")]
    Control {
        addr: SocketAddr,
        #[source]
        source: ControlError,
    },
}

/// A running engine. Its methods take `&self`, so a control thread can share it.
pub struct Engine {
    coordinator: Mutex<Coordinator>,
    node: Arc<Node>,
    app_name: String,
    /// A member's coordinator: its control address (for leaving) and its node name.
    joined: Option<(SocketAddr, String)>,
    retired_latency: Arc<Mutex<Histogram<u64>>>,
    view: Arc<Mutex<status::View>>,
    listeners: Vec<TcpListener>,
    acceptors: Mutex<Vec<JoinHandle<()>>>,
    stopping: Arc<AtomicBool>,
    input_addrs: Vec<SocketAddr>,
    started: Instant,
}

impl Engine {
    /// Binds the inputs and starts the cores as the coordinator of a new cluster (of one node
    /// until others join). Returns once every core runs.
    pub fn start(app: &App, config: Config) -> Result<Engine, StartError> {
        let config = Self::check(app, config, false)?;
        let data = Self::bind_data(config.data.unwrap_or(([127, 0, 0, 1], 0).into()))?;
        let events = flume::unbounded();
        let node = Arc::new(Node::new(
            config.name.clone(),
            config.token.clone(),
            app.dataflow.clone(),
            data.local_addr().expect("bound"),
            events.0.clone(),
            true,
        ));
        link::serve(node.clone(), data);
        let coordinator =
            Coordinator::start(Arc::new(config), app.dataflow.clone(), node.clone(), events)?;
        Self::serve_inputs(app, coordinator, node, None)
    }

    /// Joins the cluster whose coordinator listens for control at `coordinator`: the
    /// coordinator checks the app, slot count and token, this node links to every member and
    /// starts its cores, then slots move to them. Returns once the join is complete, with the
    /// coordinator's report. `output`, if given, replaces the cluster's sink address here.
    pub fn join(
        app: &App,
        config: Config,
        coordinator: SocketAddr,
        output: Option<SocketAddr>,
    ) -> Result<(Engine, String), StartError> {
        let mut config = Self::check(app, config, true)?;
        let refused = |reason: String| StartError::Join {
            addr: coordinator,
            reason,
        };
        let conversation = |source| StartError::JoinControl {
            addr: coordinator,
            source,
        };
        let mut control =
            Client::connect(coordinator, Timeouts::default()).map_err(conversation)?;
        let local_ip = control.local_addr().map_err(conversation)?.ip();
        let data = Self::bind_data(config.data.unwrap_or((local_ip, 0).into()))?;
        let data_addr = data.local_addr().expect("bound");
        let request = JoinRequest {
            version: wire::VERSION,
            node: config.name.clone(),
            app: app.name().to_string(),
            n_slots: config.n_slots,
            cores: config.cores as u16,
            data_addr: data_addr.to_string(),
        };
        let welcome = match control
            .request(&config.token, &Request::Join(wire::encode_join(&request)))
            .map_err(conversation)?
        {
            Response::Welcome(body) => {
                wire::decode_welcome(&body).map_err(|e| refused(format!("garbled welcome: {e}")))?
            }
            Response::Error(e) => return Err(refused(e)),
            Response::Ok(text) => return Err(refused(format!("unexpected answer: {text}"))),
        };
        let Welcome {
            members,
            output: cluster_output,
            ..
        } = &welcome;
        let Some(lead) = members.first().map(|m| m.name.clone()) else {
            return Err(refused("the welcome lists no coordinator".into()));
        };
        config.output = match output {
            Some(o) => o,
            None => cluster_output
                .parse()
                .map_err(|e| refused(format!("bad sink address {cluster_output}: {e}")))?,
        };
        let table = welcome
            .table
            .to_table()
            .map_err(|e| refused(e.to_string()))?;
        let (forward, forwarded) = flume::unbounded();
        let node = Arc::new(Node::new(
            config.name.clone(),
            config.token.clone(),
            app.dataflow.clone(),
            data_addr,
            forward.clone(),
            false,
        ));
        link::serve(node.clone(), data);
        for m in members {
            node.add_member(m.clone()).map_err(refused)?;
        }
        // This node's core events go to the coordinator.
        std::thread::Builder::new()
            .name("quokka-events".into())
            .spawn({
                let node = node.clone();
                move || {
                    for e in forwarded {
                        if let Some(link) = node.link(&lead) {
                            link.send_node(wire::Wire::Event(e));
                        }
                    }
                }
            })
            .expect("spawn event forwarder");
        let coordinator_state = Coordinator::start_member(
            Arc::new(config),
            app.dataflow.clone(),
            node.clone(),
            (forward, flume::unbounded().1),
            &welcome,
            table,
        )?;
        let lead_name = welcome.members[0].name.clone();
        let engine =
            Self::serve_inputs(app, coordinator_state, node, Some((coordinator, lead_name)))?;
        // The cores run and the links are open: now the coordinator moves slots here.
        match control.request_within(&engine.node.token, &Request::Ready, JOIN_ANSWER) {
            Ok(Response::Ok(report)) => Ok((engine, report)),
            Ok(Response::Error(e)) => {
                engine.finish(Ending::Departed);
                Err(refused(e))
            }
            Err(e) => {
                engine.finish(Ending::Departed);
                Err(conversation(e))
            }
            Ok(Response::Welcome(_)) => {
                engine.finish(Ending::Departed);
                Err(refused("unexpected second welcome".into()))
            }
        }
    }

    fn check(app: &App, mut config: Config, member: bool) -> Result<Config, StartError> {
        let inputs_ok =
            config.inputs.len() == app.sources().len() || (member && config.inputs.is_empty());
        if !inputs_ok {
            return Err(StartError::InputCount {
                app: app.name().into(),
                sources: app.sources().len(),
                inputs: config.inputs.len(),
            });
        }
        if config.cores == 0 || config.cores > usize::from(u16::MAX) {
            return Err(StartError::Config("cores must be between 1 and 65535"));
        }
        if config.n_slots == 0 {
            return Err(StartError::Config("n_slots must be at least 1"));
        }
        if config.token.len() > 255 {
            return Err(StartError::Config(
                "the cluster token must be at most 255 bytes",
            ));
        }
        if config.name.is_empty() {
            return Err(StartError::Config("the node name must not be empty"));
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
        let listeners = inputs
            .iter()
            .map(|&addr| {
                TcpListener::bind(addr).map_err(|error| StartError::Listen { addr, error })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let input_addrs = listeners
            .iter()
            .map(|l| l.local_addr().expect("bound"))
            .collect();
        let view = coordinator.view.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptors = listeners
            .iter()
            .enumerate()
            .map(|(source, listener)| {
                let listener = listener.try_clone().expect("clone listener");
                let (targets, stopping) = (coordinator.accept_targets.clone(), stopping.clone());
                let node = node.clone();
                std::thread::Builder::new()
                    .name(format!("quokka-accept-{source}"))
                    .spawn(move || accept(source, listener, targets, stopping, &node))
                    .expect("spawn acceptor thread")
            })
            .collect();
        tracing::info!(
            node = %node.name,
            cores = node.local.read().unwrap().len(),
            data = %node.data_addr,
            "engine started"
        );
        Ok(Engine {
            retired_latency: coordinator.retired_latency.clone(),
            coordinator: Mutex::new(coordinator),
            node,
            app_name: app.name().to_string(),
            joined,
            view,
            listeners,
            acceptors: Mutex::new(acceptors),
            stopping,
            input_addrs,
            started: Instant::now(),
        })
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

    /// On a member: asks the coordinator to remove this node. On success the coordinator has
    /// moved every slot away and [`Self::ended`] reports [`Ending::Departed`].
    pub fn request_leave(&self) -> Result<String, LeaveError> {
        let Some((addr, _)) = self.joined else {
            return Err(LeaveError::Coordinator);
        };
        let asked = Client::connect(addr, Timeouts::default()).and_then(|mut control| {
            control.request(
                &self.node.token,
                &Request::RemoveNode(self.node.name.clone()),
            )
        });
        match asked.map_err(|source| LeaveError::Control { addr, source })? {
            Response::Ok(text) => Ok(text),
            Response::Error(e) => Err(LeaveError::Refused(e)),
            Response::Welcome(_) => Err(LeaveError::Unexpected),
        }
    }

    /// On a member: whether the coordinator went away without leaving (then this node can
    /// only [`Self::stop`] on its own).
    pub fn coordinator_lost(&self) -> bool {
        self.joined
            .as_ref()
            .is_some_and(|(_, lead)| self.node.lost_nodes().iter().any(|l| &l.name == lead))
    }

    /// On a member, after [`Self::ended`]: retires (departed) or waits for (cluster stopped)
    /// this node's cores, closes the links, and reports.
    pub fn finish(&self, ending: Ending) -> Summary {
        self.close_inputs();
        let mut coordinator = self.coordinator.lock().unwrap_or_else(|e| e.into_inner());
        let cores = match ending {
            Ending::Departed => coordinator.retire_all(),
            Ending::ClusterStopped => coordinator.finish(),
        };
        Summary {
            cores,
            elapsed: self.started.elapsed(),
        }
    }

    /// On the coordinator: the conversation with a joining node, after its `Join` request
    /// arrived on `session`. Answers with a welcome, waits for the node's `Ready` (at most
    /// [`READY_DEADLINE`], the change lock held meanwhile), moves slots to it; returns the final
    /// answer for the joining node.
    pub fn admit(&self, session: &mut Session, body: &[u8]) -> Response {
        let join = match wire::decode_join(body) {
            Ok(j) => j,
            Err(e) => return Response::Error(format!("bad join request: {e}")),
        };
        let result = self.change(|c| {
            let welcome = c.welcome(&join, &self.app_name)?;
            let lost = |e: &dyn std::fmt::Display| {
                ChangeError::Invalid(format!("node {} went away while joining: {e}", join.node))
            };
            session
                .answer(&Response::Welcome(wire::encode_welcome(&welcome)))
                .map_err(|e| lost(&e))?;
            let ready = session
                .next_request(Step::Ready, READY_DEADLINE)
                .map_err(|e| lost(&e))?;
            if ready.request != Request::Ready || !self.token_matches(&ready.token) {
                return Err(lost(&"it did not say it was ready"));
            }
            c.add_node(&join, &welcome.cores)
        });
        match result {
            Ok(report) => Response::Ok(format!("join {}: {report}", join.node)),
            Err(e) => {
                tracing::warn!("refused the join of node `{}`: {e}", join.node);
                Response::Error(e.to_string())
            }
        }
    }

    /// On the coordinator: moves a member's slots away and lets it exit.
    pub fn remove_node(&self, name: &str) -> Result<ChangeReport, ChangeError> {
        self.change(|c| c.remove_node(name))
    }

    /// The bound input addresses (useful when a configured port was 0).
    pub fn input_addrs(&self) -> &[SocketAddr] {
        &self.input_addrs
    }

    /// Adds `n` cores while the app runs; slots rebalance onto them.
    pub fn grow(&self, n: usize) -> Result<ChangeReport, ChangeError> {
        self.change(|c| c.grow(n))
    }

    /// Removes the `n` newest cores while the app runs: their slots and source connections move
    /// to the others, then their executors stop.
    pub fn shrink(&self, n: usize) -> Result<ChangeReport, ChangeError> {
        self.change(|c| c.shrink(n))
    }

    /// One change at a time: a second one is refused, not queued behind the first.
    fn change(
        &self,
        f: impl FnOnce(&mut Coordinator) -> Result<ChangeReport, ChangeError>,
    ) -> Result<ChangeReport, ChangeError> {
        let mut coordinator = match self.coordinator.try_lock() {
            Ok(c) => c,
            Err(TryLockError::WouldBlock) => {
                let doing = self
                    .view
                    .lock()
                    .unwrap()
                    .migration
                    .as_ref()
                    .map_or("starting".into(), |m| m.to_string());
                return Err(ChangeError::Busy(doing));
            }
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
        };
        f(&mut coordinator)
    }

    /// Cores, slots, epoch, per-core rates and latency over the last second, and any migration.
    pub fn status(&self) -> Status {
        let (table, cores, migration, retired) = {
            let v = self.view.lock().unwrap();
            (
                v.table.clone(),
                v.cores.clone(),
                v.migration.clone(),
                v.retired,
            )
        };
        let mut answers = self.node.local_status();
        let mut silent: Vec<CoreId> = cores
            .iter()
            .map(|c| c.0)
            .filter(|id| !answers.iter().any(|s| s.core == *id))
            .collect();
        let mut nodes = vec![NodeInfo {
            name: self.node.name.clone(),
            data_addr: self.node.data_addr.to_string(),
            coordinator: self.node.coordinator,
        }];
        for m in self.node.members() {
            match self
                .node
                .ask(&m.name, wire::Question::Status, Duration::from_secs(2))
            {
                Some(wire::Answer::Status(s)) => answers.extend(s),
                _ => silent.extend(&m.cores),
            }
            nodes.push(NodeInfo {
                name: m.name,
                data_addr: m.data_addr,
                coordinator: false,
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
        }
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
    /// Waits for a change in progress to finish first. On the coordinator this stops the whole
    /// cluster; on a member whose coordinator was lost, this node alone.
    pub fn stop(&self) -> Summary {
        self.close_inputs();
        let mut coordinator = self.coordinator.lock().unwrap_or_else(|e| e.into_inner());
        let cores = coordinator.stop();
        Summary {
            cores,
            elapsed: self.started.elapsed(),
        }
    }
}

impl Engine {
    fn close_inputs(&self) {
        self.stopping.store(true, Ordering::Release);
        for l in &self.listeners {
            // Wakes the acceptor blocked in accept() (Linux returns EINVAL after shutdown).
            let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Both);
        }
        for a in std::mem::take(&mut *self.acceptors.lock().unwrap()) {
            let _ = a.join();
        }
    }
}

/// Asks every core one question on its control channel (served first, so a busy core still
/// answers soon); returns the answers that arrive within `wait`.
pub(crate) fn ask_cores<T>(
    inboxes: &[flume::Sender<CoreMsg>],
    ask: impl Fn(flume::Sender<T>) -> CoreMsg,
    wait: Duration,
) -> Vec<T> {
    let (reply_tx, reply_rx) = flume::unbounded();
    for inbox in inboxes {
        let _ = inbox.send(ask(reply_tx.clone()));
    }
    drop(reply_tx);
    let deadline = Instant::now() + wait;
    let mut answers = Vec::with_capacity(inboxes.len());
    while answers.len() < inboxes.len() {
        match reply_rx.recv_deadline(deadline) {
            Ok(a) => answers.push(a),
            Err(_) => break,
        }
    }
    answers
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
                let handover = Handover {
                    source,
                    stream,
                    pending: Vec::new(),
                };
                if targets[core].send(CoreMsg::Connection(handover)).is_err() {
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
