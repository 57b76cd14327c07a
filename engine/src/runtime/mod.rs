//! The thread-per-core runtime: starts one pinned glommio executor per core, hands source
//! connections to them, and stops them in order.
//!
//! Data path: a core reads a source connection, runs the stateless steps and `key_by`, and
//! batches each keyed message for the core that owns its slot. Its own batches it applies in
//! place; the others go on the owner's bounded inbox (flume). A full inbox blocks the sender,
//! which then stops reading its sockets: back-pressure, never a drop.

pub(crate) mod core;
mod notify;
pub mod sink;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use thiserror::Error;

use self::core::{CoreMsg, CoreSetup};
use crate::app::App;
use crate::metrics::{CoreReport, Summary};
use crate::routing::RoutingTable;

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

/// The CPUs this process may run on.
pub fn default_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
    #[error(
        "core {core} failed to start: {reason} (glommio needs locked memory: try `ulimit -l unlimited`)"
    )]
    Executor { core: usize, reason: String },
}

/// A running engine.
pub struct Engine {
    inboxes: Vec<flume::Sender<CoreMsg>>,
    executors: Vec<ExecutorJoinHandle<CoreReport>>,
    listeners: Vec<TcpListener>,
    acceptors: Vec<JoinHandle<()>>,
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

        let n = config.cores;
        let cpus = default_cores();
        if n > cpus {
            tracing::warn!(
                "{n} cores on {cpus} CPUs: executors share CPUs (placement wraps around)"
            );
        }
        let config = Arc::new(config);
        let routes = RoutingTable::uniform(config.n_slots, n as u16);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| flume::bounded(64)).unzip();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut executors = Vec::with_capacity(n);
        for (id, inbox) in receivers.into_iter().enumerate() {
            let setup = CoreSetup {
                id,
                config: config.clone(),
                dataflow: app.dataflow.clone(),
                routes: routes.clone(),
                peers: senders.clone(),
                inbox,
            };
            let ready = ready_tx.clone();
            let spawned = LocalExecutorBuilder::new(Placement::Fixed(id % cpus))
                .name(&format!("quokka-core-{id}"))
                .spawn(move || async move {
                    let _ = ready.send(id);
                    core::run(setup).await
                });
            match spawned {
                Ok(handle) => executors.push(handle),
                Err(e) => {
                    return Err(StartError::Executor {
                        core: id,
                        reason: e.to_string(),
                    })
                }
            }
        }
        drop(ready_tx);
        for _ in 0..n {
            if ready_rx.recv().is_err() {
                // A core's closure was dropped unrun: its executor failed; join tells why.
                for (core, handle) in executors.into_iter().enumerate() {
                    if let Err(e) = handle.join() {
                        return Err(StartError::Executor {
                            core,
                            reason: e.to_string(),
                        });
                    }
                }
                return Err(StartError::Executor {
                    core: 0,
                    reason: "unknown".into(),
                });
            }
        }

        let stopping = Arc::new(AtomicBool::new(false));
        let acceptors = listeners
            .iter()
            .enumerate()
            .map(|(source, listener)| {
                let listener = listener.try_clone().expect("clone listener");
                let (inboxes, stopping) = (senders.clone(), stopping.clone());
                std::thread::Builder::new()
                    .name(format!("quokka-accept-{source}"))
                    .spawn(move || accept(source, listener, inboxes, stopping))
                    .expect("spawn acceptor thread")
            })
            .collect();
        tracing::info!(cores = n, slots = config.n_slots, "engine started");
        Ok(Engine {
            inboxes: senders,
            executors,
            listeners,
            acceptors,
            stopping,
            input_addrs,
            started: Instant::now(),
        })
    }

    /// The bound input addresses (useful when a configured port was 0).
    pub fn input_addrs(&self) -> &[SocketAddr] {
        &self.input_addrs
    }

    /// Stops reading sources, applies everything in flight, flushes the sinks, and reports.
    pub fn stop(self) -> Summary {
        self.stopping.store(true, Ordering::Release);
        for l in &self.listeners {
            // Wakes the acceptor blocked in accept() (Linux returns EINVAL after shutdown).
            let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Both);
        }
        for a in self.acceptors {
            let _ = a.join();
        }
        for inbox in &self.inboxes {
            let _ = inbox.send(CoreMsg::Stop);
        }
        let cores = self
            .executors
            .into_iter()
            .enumerate()
            .map(|(id, h)| {
                h.join().unwrap_or_else(|e| {
                    tracing::error!(core = id, "core failed: {e}");
                    CoreReport::new(id)
                })
            })
            .collect();
        Summary {
            cores,
            elapsed: self.started.elapsed(),
        }
    }
}

/// Accepts connections of one source and deals them to the cores in turn.
fn accept(
    source: usize,
    listener: TcpListener,
    inboxes: Vec<flume::Sender<CoreMsg>>,
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
                let core = next % inboxes.len();
                next += 1;
                if inboxes[core]
                    .send(CoreMsg::Connection { source, stream })
                    .is_err()
                {
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
