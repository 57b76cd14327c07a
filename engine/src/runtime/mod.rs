//! The thread-per-core runtime: one pinned glommio executor per core, acceptor threads that deal
//! source connections to them, and a coordinator that adds and removes cores while the app runs.
//!
//! Data path: a core reads a source connection, runs the stateless steps and `key_by`, and
//! batches each keyed message for the core that owns its slot. Its own batches it applies in
//! place; the others go through an ordered outbox to the owner's bounded inbox (flume). A full
//! inbox holds the sender, which then stops reading its sockets: back-pressure, never a drop.

mod coordinator;
pub(crate) mod core;
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
use self::core::{CoreMsg, Handover};
pub use self::status::{ChangeError, ChangeReport, MigrationProgress, Status};
use crate::app::App;
use hdrhistogram::Histogram;

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
}

impl Config {
    /// Defaults for everything but the addresses.
    pub fn new(inputs: Vec<SocketAddr>, output: SocketAddr) -> Self {
        Self {
            cores: default_cores(),
            n_slots: 4096,
            inputs,
            output,
            max_frame: quokka_io::framing::DEFAULT_MAX_FRAME,
            sink_buffer: 4 << 20,
            drain_timeout: Duration::from_secs(10),
            source_names: Vec::new(),
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
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("core {core} failed to start: {reason} (glommio needs locked memory: try `ulimit -l unlimited`)")]
    Executor { core: usize, reason: String },
}

/// A running engine. Its methods take `&self`, so a control thread can share it.
pub struct Engine {
    coordinator: Mutex<Coordinator>,
    retired_latency: Arc<Mutex<Histogram<u64>>>,
    view: Arc<Mutex<status::View>>,
    listeners: Vec<TcpListener>,
    acceptors: Mutex<Vec<JoinHandle<()>>>,
    stopping: Arc<AtomicBool>,
    input_addrs: Vec<SocketAddr>,
    started: Instant,
}

impl Engine {
    /// Binds the inputs and starts the cores. Returns once every core runs.
    pub fn start(app: &App, mut config: Config) -> Result<Engine, StartError> {
        if config.inputs.len() != app.sources().len() {
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
        config.source_names = app.sources().to_vec();
        let listeners = config
            .inputs
            .iter()
            .map(|&addr| {
                TcpListener::bind(addr).map_err(|source| StartError::Listen { addr, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let input_addrs = listeners
            .iter()
            .map(|l| l.local_addr().expect("bound"))
            .collect();
        let n_slots = config.n_slots;
        let coordinator = Coordinator::start(Arc::new(config), app.dataflow.clone())?;
        let view = coordinator.view.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptors = listeners
            .iter()
            .enumerate()
            .map(|(source, listener)| {
                let listener = listener.try_clone().expect("clone listener");
                let (targets, stopping) = (coordinator.accept_targets.clone(), stopping.clone());
                std::thread::Builder::new()
                    .name(format!("quokka-accept-{source}"))
                    .spawn(move || accept(source, listener, targets, stopping))
                    .expect("spawn acceptor thread")
            })
            .collect();
        tracing::info!(
            cores = coordinator.cores.len(),
            slots = n_slots,
            "engine started"
        );
        Ok(Engine {
            retired_latency: coordinator.retired_latency.clone(),
            coordinator: Mutex::new(coordinator),
            view,
            listeners,
            acceptors: Mutex::new(acceptors),
            stopping,
            input_addrs,
            started: Instant::now(),
        })
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
        let (epoch, n_slots, cores, migration, retired) = {
            let v = self.view.lock().unwrap();
            (
                v.epoch,
                v.n_slots,
                v.cores.clone(),
                v.migration.clone(),
                v.retired,
            )
        };
        let inboxes: Vec<_> = cores.iter().map(|c| c.2.clone()).collect();
        let mut answers = ask_cores(&inboxes, CoreMsg::Status, Duration::from_secs(2));
        answers.sort_by_key(|s| s.core);
        let silent = cores
            .iter()
            .map(|c| c.0)
            .filter(|id| !answers.iter().any(|s| s.core == *id))
            .collect();
        Status {
            epoch,
            n_slots,
            cores: answers,
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
        all
    }

    /// Stops reading sources, applies everything in flight, flushes the sinks, and reports.
    /// Waits for a change in progress to finish first.
    pub fn stop(&self) -> Summary {
        self.stopping.store(true, Ordering::Release);
        for l in &self.listeners {
            // Wakes the acceptor blocked in accept() (Linux returns EINVAL after shutdown).
            let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Both);
        }
        for a in std::mem::take(&mut *self.acceptors.lock().unwrap()) {
            let _ = a.join();
        }
        let mut coordinator = self.coordinator.lock().unwrap_or_else(|e| e.into_inner());
        let cores = coordinator.stop();
        Summary {
            cores,
            elapsed: self.started.elapsed(),
        }
    }
}

/// Asks every core one question on its control channel (served first, so a busy core still
/// answers soon); returns the answers that arrive within `wait`.
fn ask_cores<T>(
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
                let core = next % targets.len();
                next += 1;
                let handover = Handover {
                    source,
                    stream,
                    pending: Vec::new(),
                };
                if targets[core].send(CoreMsg::Connection(handover)).is_err() {
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
