//! The thread-per-core runtime of one node: a pinned glommio executor per core, its channels,
//! and the messages cores exchange. It knows nothing of links, members or coordinators: a core
//! on another node is a [`messages::RemotePeer`] that the cluster layer implements.
//!
//! Data path: a core reads a source connection, runs the stateless steps and `key_by`, and
//! batches each keyed message for the core that owns its slot. Its own batches it applies in
//! place; the others go through an ordered outbox to the owner's bounded inbox (flume). A full
//! inbox holds the sender, which then stops reading its sockets: back-pressure, never a drop.

pub(crate) mod core;
mod cpus;
pub(crate) mod messages;
mod notify;
mod outbox;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use self::core::CoreSetup;
pub use self::cpus::{auto_cores, usable_cpus};
use self::messages::{CoreAddr, CoreMsg};
use crate::metrics::CoreReport;

/// How to run an app.
#[derive(Debug, Clone)]
pub struct Config {
    /// Executors to start, one per CPU in production; more than the CPUs wrap around.
    pub cores: usize,
    /// Slots in the routing table; fixed for the life of a cluster.
    pub n_slots: u32,
    /// One input per source of the app, in the app's source order.
    pub inputs: Vec<Input>,
    /// One address per sink of the app, in the app's sink order; every core connects to each.
    pub outputs: Vec<SocketAddr>,
    /// Largest accepted frame payload, in bytes.
    pub max_frame: usize,
    /// Bytes of encoded outputs a core buffers before it stops applying (back-pressure).
    pub sink_buffer: usize,
    /// On stop, how long a core keeps retrying an unreachable sink before giving up.
    pub drain_timeout: Duration,
    /// How long a change waits for the cores at any one point (preparing, finishing a step)
    /// before it gives up and calls off the steps not switched yet.
    pub change_timeout: Duration,
    /// Source names, for log lines (filled from the app).
    pub source_names: Vec<String>,
    /// This node's name in the cluster.
    pub name: String,
    /// Where other nodes link to this one (port 0: any free port).
    pub data: Option<SocketAddr>,
    /// Where this node serves HTTP (`/metrics`, `/status.json`, its dashboard), if it does:
    /// the engine does not serve it (`quokka run --http` does), it tells the cluster, so that
    /// each node's dashboard links to the others'.
    pub http: Option<SocketAddr>,
    /// Autoscale the coordinator's cores between these counts from the start (`None`: off
    /// until `Engine::set_autoscale`).
    pub autoscale: Option<(usize, usize)>,
    /// The autoscaling policy's knobs (thresholds, windows, cooldown; its range is the one
    /// above or set later).
    pub autoscale_policy: crate::autoscale::Policy,
    /// The commands the autoscaler runs to ask the orchestrator for a node, or to say it let
    /// one go (`quokka run --on-scale-out/--on-scale-in`).
    pub on_scale: crate::autoscale::NodeCommands,
    /// The shared secret every join, control and data connection must present.
    pub token: String,
    /// The CPUs this node's executors are placed on (empty: every online CPU).
    pub cpus: Vec<usize>,
    /// Where checkpoints are kept (none: no checkpoints, a restart starts empty).
    pub state_dir: Option<PathBuf>,
    /// How often a checkpoint is taken (with a state dir; `None`: only when asked).
    pub checkpoint_interval: Option<Duration>,
    /// What a sink receives after a crash (exactly-once needs a state dir).
    pub guarantee: Guarantee,
    /// On a coordinator starting again after [`crate::Ending::Rollback`]: the members lost for
    /// good, with their state dirs. It restores their parts of the checkpoint onto cores of its
    /// own (their core ids) instead of waiting for them.
    pub adopt: Vec<(String, PathBuf)>,
}

/// `now + after`, or a moment past any run if that overflows the clock (a huge flag value).
pub(crate) fn deadline_after(after: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// What the sinks receive across a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guarantee {
    /// Outputs leave at once (lowest latency); after a crash, those produced after the last
    /// checkpoint are produced, and sent, again.
    #[default]
    AtLeastOnce,
    /// Outputs are released to the sink only once the checkpoint that covers them is durable
    /// (the exactly-once sink protocol, `quokka_io::exactly_once`): none lost, none twice.
    ExactlyOnce,
}

/// Where a source's messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Connections to this listen address (not replayable: what a crash catches in flight is
    /// lost).
    Tcp(SocketAddr),
    /// A file, read from where the last checkpoint stood (replayable).
    File(FileInput),
}

impl From<SocketAddr> for Input {
    fn from(addr: SocketAddr) -> Self {
        Input::Tcp(addr)
    }
}

/// A file source: frames or lines, read to its end, or on as it grows (`follow`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInput {
    pub path: PathBuf,
    pub format: quokka_io::file::FileFormat,
    pub follow: bool,
}

impl Config {
    /// Slots unless told otherwise: 64 cores would get 64 each.
    pub const DEFAULT_SLOTS: u32 = 4096;
    /// Bytes of outputs a core buffers for the sink unless told otherwise.
    pub const DEFAULT_SINK_BUFFER: usize = 4 << 20;
    /// Most cores one node runs (`--cores`, a grow, a joining node's request). Measured on the
    /// 2-CPU test machine (optimized build, idle, 4096 slots): a core costs ~2.6 MB of RSS (1
    /// core 10 MB, 32 cores 87 MB, 128 cores 336 MB), 4 file descriptors and 2 threads, so
    /// `grow-cores 65533` asked for ~170 GB. 256 covers one core per CPU on the largest common
    /// machines (cores beyond the CPUs only share them) for ~0.7 GB, 1024 descriptors (a node
    /// that runs out of them refuses the grow and changes nothing), and keeps a node's `status`
    /// (a line per core) within one control frame.
    pub const MAX_CORES: usize = 256;
    /// Most slots a cluster has (`--slots`). A joining node receives the routing table, 2 bytes
    /// per slot, in one control frame of at most 64 KiB, so past ~32000 slots no node could
    /// join; 16384 leaves half the frame to the members. Slots cost every core memory too:
    /// ~130 bytes of RSS per slot per core idle (measured: 1 core with 1M slots 142 MB, 4
    /// cores 541 MB; `--slots 4294967295` asked for ~0.5 TB per core), and a change builds a
    /// table per step on every core (2 bytes per slot each, a step per 64 slots moved): at
    /// 16384 slots at most ~2 MB per core idle and ~8 MB during a change.
    pub const MAX_SLOTS: u32 = 16384;

    /// A change's wait for the cores unless told otherwise: a step takes milliseconds, so this
    /// is only reached when a core, a node or a sink does not answer at all.
    pub const DEFAULT_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

    /// Defaults for everything but the addresses (`output`: the first sink's; an app with
    /// more sinks sets `outputs`).
    pub fn new(inputs: Vec<SocketAddr>, output: SocketAddr) -> Self {
        Self {
            cores: default_cores(),
            n_slots: Self::DEFAULT_SLOTS,
            inputs: inputs.into_iter().map(Input::Tcp).collect(),
            outputs: vec![output],
            max_frame: quokka_io::framing::DEFAULT_MAX_FRAME,
            sink_buffer: Self::DEFAULT_SINK_BUFFER,
            drain_timeout: Duration::from_secs(10),
            change_timeout: Self::DEFAULT_CHANGE_TIMEOUT,
            source_names: Vec::new(),
            name: "w1".into(),
            data: None,
            http: None,
            autoscale: None,
            autoscale_policy: crate::autoscale::Policy::new(1, 1),
            on_scale: Default::default(),
            token: String::new(),
            cpus: Vec::new(),
            state_dir: None,
            checkpoint_interval: None,
            guarantee: Guarantee::AtLeastOnce,
            adopt: Vec::new(),
        }
    }
}

/// The machine's online CPUs: the default core count, and what placement wraps around. Not the
/// calling thread's affinity (a pinned caller must not squeeze every executor onto its CPU).
pub fn default_cores() -> usize {
    online_cpus().len()
}

/// The ids of the machine's online CPUs, lowest first (`[0]` if they cannot be read).
pub fn online_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = glommio::CpuSet::online()
        .map(|set| set.into_iter().map(|l| l.cpu).collect())
        .unwrap_or_default();
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// How long a core runs ready tasks before it polls its reactor. A message from another thread
/// (a core, a link, the coordinator) wakes its task only there, so on a busy core this bounds
/// how late a marker, a handoff or an acknowledgement is seen (glommio's default: 100 ms).
const PREEMPT_TIMER: Duration = Duration::from_millis(1);

/// Memory an executor registers with io_uring for storage I/O (glommio's default: 10 MiB,
/// locked and registered with each of its three rings when the executor starts). Cores do no
/// storage I/O (socket reads use ordinary buffers), so they take glommio's minimum: a new core
/// starts several milliseconds sooner and locks far less memory.
const IO_MEMORY: usize = 64 << 10;

/// Capacity of a core's data channel, in messages (mostly batches): small, because everything
/// queued there is latency, for data and for the epoch markers behind it.
const INBOX_CAPACITY: usize = 16;

/// A core's two lanes: its address, and the receiving ends its executor takes.
pub(crate) fn core_channels() -> (CoreAddr, flume::Receiver<CoreMsg>, flume::Receiver<CoreMsg>) {
    let (data, data_rx) = flume::bounded(INBOX_CAPACITY);
    let (control, control_rx) = flume::unbounded();
    (CoreAddr::Local { data, control }, data_rx, control_rx)
}

/// Starts the executor of one core, pinned to `setup.cpu`. `started` hears the core's id once
/// its executor runs, and is dropped right after; an executor that fails to start drops it
/// unsent, and `join` says why. So a receiver whose senders are all gone has heard every core
/// that runs.
pub(crate) fn spawn_core(
    setup: CoreSetup,
    started: std::sync::mpsc::Sender<crate::routing::CoreId>,
) -> glommio::Result<ExecutorJoinHandle<CoreReport>, ()> {
    let id = setup.id;
    // `Placement::Fixed` reads the CPU topology inside glommio and panics if it cannot (out of
    // file descriptors, say); a one-CPU set read here turns that into an error.
    let cpu = glommio::CpuSet::online()?.filter(|l| l.cpu == setup.cpu);
    LocalExecutorBuilder::new(Placement::Fenced(cpu))
        .name(&format!("quokka-core-{id}"))
        .preempt_timer(PREEMPT_TIMER)
        .io_memory(IO_MEMORY)
        .spawn(move || async move {
            let _ = started.send(id);
            drop(started);
            core::run(setup).await
        })
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
