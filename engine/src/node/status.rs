//! What the engine reports about itself: `status`, and the outcome of a change of cores.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::coordinator::{CheckpointStatus, RecoveryStatus};
use super::StartError;
use crate::cluster::wire::{self, WireError};
use crate::cluster::{LinkError, LostNode};
use crate::metrics::{human_ns, CoreStatus};
use crate::planner::PlanError;
use crate::routing::{CoreId, RoutingTable};
use crate::runtime::messages::CoreMsg;

/// The coordinator's published picture, readable while a change runs.
pub(crate) struct View {
    pub table: Arc<RoutingTable>,
    pub cores: Vec<(CoreId, usize, flume::Sender<CoreMsg>)>,
    pub migration: Option<MigrationProgress>,
    pub retired: usize,
    pub checkpoints: Option<CheckpointStatus>,
    pub recovery: Option<RecoveryStatus>,
    pub changes: ChangeTally,
}

impl View {
    pub fn new(table: &Arc<RoutingTable>) -> Self {
        Self {
            table: table.clone(),
            cores: Vec::new(),
            migration: None,
            retired: 0,
            checkpoints: None,
            recovery: None,
            changes: ChangeTally::default(),
        }
    }
}

/// The changes of cores this coordinator carried out since it started, added up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeTally {
    /// Changes that moved their slots (joins, grows, shrinks, removals, recoveries' moves).
    pub done: u64,
    /// Changes that ended early (called off, a core failed, a node lost).
    pub failed: u64,
    pub slots_moved: u64,
    pub entities_moved: u64,
    pub bytes_moved: u64,
    /// Time spent moving: from each change's first switch to its last slot adopted.
    pub moving: Duration,
    /// The last completed change's moving time.
    pub last_moving: Duration,
}

impl ChangeTally {
    pub fn count<E>(&mut self, outcome: &Result<ChangeReport, E>) {
        match outcome {
            Ok(r) => {
                self.done += 1;
                self.slots_moved += r.slots_moved as u64;
                self.entities_moved += r.entities_moved;
                self.bytes_moved += r.bytes_moved;
                self.moving += r.moving;
                self.last_moving = r.moving;
            }
            Err(_) => self.failed += 1,
        }
    }
}

/// A change of cores under way.
#[derive(Debug, Clone)]
pub struct MigrationProgress {
    pub change: String,
    pub started: Instant,
    pub steps_done: usize,
    pub steps: usize,
    pub slots_moved: usize,
    pub slots: usize,
}

impl fmt::Display for MigrationProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: step {}/{}, {}/{} slots moved, running {:.1}s",
            self.change,
            self.steps_done,
            self.steps,
            self.slots_moved,
            self.slots,
            self.started.elapsed().as_secs_f64()
        )
    }
}

/// What a finished change of cores did. A joining node receives its join's report from the
/// coordinator as an rkyv archive ([`Self::encode`]).
#[derive(Debug, Clone, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ChangeReport {
    pub cores_before: usize,
    pub cores_after: usize,
    pub steps: usize,
    pub slots_moved: usize,
    pub entities_moved: u64,
    /// Bytes of the slots moved (their arrays, index included).
    pub bytes_moved: u64,
    /// From the request to the end of the last step.
    pub elapsed: Duration,
    /// From the first step's switch to the last slot adopted: the moving itself, without
    /// starting cores or a node, preparing, or retiring cores.
    pub moving: Duration,
}

impl ChangeReport {
    /// The report as the coordinator sends it to a joining node (the body of a control
    /// `Joined` answer): the node protocol's magic and version, then an rkyv archive.
    pub(crate) fn encode(&self) -> Vec<u8> {
        wire::encode_body(self)
    }

    /// A report from [`Self::encode`], validated: bad bytes are an error, never a panic.
    pub(crate) fn decode(body: &[u8]) -> Result<Self, WireError> {
        wire::decode_body(body)
    }
}

impl fmt::Display for ChangeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let moving = self.moving.as_secs_f64().max(1e-9);
        write!(
            f,
            "{} -> {} cores in {:.1} ms: {} slots in {} steps, {} entities, {:.1} MB of state moved in {:.1} ms ({:.0} MB/s)",
            self.cores_before,
            self.cores_after,
            self.elapsed.as_secs_f64() * 1e3,
            self.slots_moved,
            self.steps,
            self.entities_moved,
            self.bytes_moved as f64 / 1e6,
            moving * 1e3,
            self.bytes_moved as f64 / 1e6 / moving
        )
    }
}

/// Why a change of cores was refused or failed.
#[derive(Debug, Error)]
pub enum ChangeError {
    #[error("a change is already in progress ({doing}); try again when `status` shows none")]
    Busy { doing: String },
    #[error("this node is a member: send changes to the coordinator")]
    NotCoordinator,
    #[error("the cluster is restoring checkpoint {checkpoint} and waits for nodes {nodes} to come back: changes wait until then")]
    Awaiting { checkpoint: u64, nodes: String },
    #[error("node {node} was lost ({reason}) and its slots were not recovered (see `status` and the log); changes are refused")]
    NodeLost { node: String, reason: String },
    #[error("grow-cores needs at least 1")]
    GrowByZero,
    #[error("shrink-cores needs at least 1")]
    ShrinkByZero,
    #[error("cannot shrink {cores} core(s) by {by}: at least one must remain")]
    LastCore { cores: usize, by: usize },
    #[error("the cluster would have {requested} cores; at most {limit} are allowed (core ids are 16 bits)")]
    TooManyCores { requested: usize, limit: usize },
    #[error("node {node} runs {cores} core(s); {by} more would pass the limit of {limit} cores per node")]
    CoresPerNode {
        node: String,
        cores: usize,
        by: usize,
        limit: usize,
    },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    JoinRefused(#[from] JoinRefusal),
    #[error("node {node} went away while joining: {reason}")]
    JoinerLost { node: String, reason: String },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(
        "{node} is the coordinator and cannot be removed; stop the cluster with SIGTERM on it"
    )]
    CoordinatorStays { node: String },
    #[error("no member named `{node}` (members: {members})")]
    NoSuchMember { node: String, members: String },
    #[error("node {node} has {open} open source connection(s); close them (or send to another node) and try again")]
    OpenSources { node: String, open: u32 },
    #[error("node {node} did not answer within {waited:?}")]
    NoAnswer { node: String, waited: Duration },
    /// A core that failed to start (the change was undone: nothing changed).
    #[error(transparent)]
    Start(StartError),
    #[error("migration failed: core {core}: {reason}")]
    Protocol { core: CoreId, reason: String },
    #[error("gave up waiting for {waiting_for} after {after:?} (no word from cores {cores:?}); the steps not switched yet were called off")]
    Timeout {
        waiting_for: String,
        after: Duration,
        cores: Vec<CoreId>,
    },
    #[error("an earlier change that ended early still finishes its switched steps (epoch {epoch} waits for cores {cores:?}); try again once they answer")]
    Unfinished { epoch: u64, cores: Vec<CoreId> },
    #[error("the engine is stopping")]
    Stopped,
}

/// Why the coordinator refused a node's join.
#[derive(Debug, Error)]
pub enum JoinRefusal {
    #[error("node protocol version {got} is not supported (this cluster speaks {speaks})")]
    Version { got: u8, speaks: u8 },
    #[error("this cluster runs app `{cluster}`, the joining node runs `{joining}`")]
    App { cluster: String, joining: String },
    #[error("this cluster has {cluster} slots, the joining node was started with {joining}")]
    SlotCount { cluster: u32, joining: u32 },
    #[error("a node named `{0}` is already a member; choose another --name")]
    NameTaken(String),
    #[error("the joining node asks for {asked} cores; a node runs 1 to {limit}")]
    Cores { asked: u16, limit: usize },
    #[error("{}", if *.cluster { "this cluster takes checkpoints: start the joining node with a --state-dir of its own" } else { "this cluster takes no checkpoints (its coordinator has no --state-dir): start the joining node without one" })]
    StateDir { cluster: bool },
}

/// A node of the cluster as `status` shows it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    /// Where the other nodes reach it.
    pub data_addr: String,
    /// Where it serves HTTP (`/metrics`, its dashboard), if it does.
    pub http: Option<String>,
    pub coordinator: bool,
}

/// A node that went away without leaving, with the slots that went with it.
#[derive(Debug, Clone)]
pub struct LostReport {
    pub node: LostNode,
    pub slots: u32,
}

/// The engine as `status` shows it.
#[derive(Debug, Clone)]
pub struct Status {
    pub epoch: u64,
    pub n_slots: u32,
    pub nodes: Vec<NodeInfo>,
    /// Every core of the cluster that answered, by node then id.
    pub cores: Vec<CoreStatus>,
    pub lost: Vec<LostReport>,
    /// Cores that did not answer in time (busy).
    pub silent: Vec<CoreId>,
    pub migration: Option<MigrationProgress>,
    pub retired: usize,
    /// With a state dir: the last checkpoint, and any failure since.
    pub checkpoints: Option<CheckpointStatus>,
    /// The last recovery of a lost node's slots (running, done or failed).
    pub recovery: Option<RecoveryStatus>,
    /// The changes the coordinator carried out (on a member, none).
    pub changes: ChangeTally,
    /// What the autoscaler does (on a member, off).
    pub autoscale: super::AutoscaleStatus,
}

impl fmt::Display for RecoveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = format!(
            "node {}: {} slots from checkpoint {}",
            self.node, self.slots, self.checkpoint
        );
        match (&self.failed, self.took) {
            (Some(why), _) => write!(f, "recovery FAILED for {what}: {why}"),
            (None, Some(took)) => {
                write!(
                    f,
                    "recovered {what} in {:.2}s, {:.0}s ago (the sources replay what followed it",
                    took.as_secs_f64(),
                    self.started.elapsed().as_secs_f64()
                )?;
                if !self.lost_streams.is_empty() {
                    write!(f, "; not the lost node's own durable streams {}, nor plain TCP inputs the lost slots had applied since", self.lost_streams.join(", "))?;
                } else {
                    write!(f, "; not plain TCP inputs the lost slots had applied since")?;
                }
                write!(f, ")")
            }
            (None, None) => write!(
                f,
                "RECOVERING {what}, for {:.1}s (changes are refused meanwhile)",
                self.started.elapsed().as_secs_f64()
            ),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "routing epoch {}, {} slots, {} cores ({} retired)",
            self.epoch,
            self.n_slots,
            self.cores.len() + self.silent.len(),
            self.retired
        )?;
        match &self.migration {
            Some(m) => writeln!(f, "migration in progress: {m}")?,
            None => writeln!(f, "no migration in progress")?,
        }
        if let Some(c) = &self.checkpoints {
            write_checkpoints(f, c)?;
        }
        if let Some(r) = &self.recovery {
            writeln!(f, "{r}")?;
        }
        let a = &self.autoscale;
        let last = (a.last.as_ref())
            .map(|(at, what)| format!("; last, {:.0}s ago: {what}", at.elapsed().as_secs_f64()))
            .unwrap_or_default();
        let nodes = match (a.nodes_asked, a.nodes_let_go) {
            (0, 0) => String::new(),
            (asked, let_go) => format!(", nodes asked for: {asked}, let go: {let_go}"),
        };
        match a.range {
            Some((min, max)) => writeln!(
                f,
                "autoscale {min}..{max} cores: {} grows, {} shrinks{nodes}, {} failed{last}",
                a.grows, a.shrinks, a.failed
            )?,
            None if a.last.is_some() => writeln!(f, "autoscale off{last}")?,
            None => {}
        }
        for n in &self.nodes {
            let role = if n.coordinator { " (coordinator)" } else { "" };
            write!(f, "node {}{role}: data {}", n.name, n.data_addr)?;
            match &n.http {
                Some(http) => writeln!(f, ", dashboard http://{http}/")?,
                None => writeln!(f)?,
            }
        }
        for l in &self.lost {
            writeln!(
                f,
                "LOST node {}: cores {:?}, {} slots without an owner ({})",
                l.node.name, l.node.cores, l.slots, l.node.reason
            )?;
        }
        writeln!(
            f,
            "{:>8} {:>4} {:>3} {:>5} {:>6} {:>10} {:>9} {:>5} {:>11} {:>12} {:>9} {:>9} {:>9}  sink",
            "node",
            "core",
            "cpu",
            "busy",
            "slots",
            "entities",
            "state",
            "conns",
            "frames/s",
            "outputs/s",
            "p50",
            "p99",
            "max"
        )?;
        for c in &self.cores {
            let show = |ns: Option<u64>| ns.map_or("-".to_string(), human_ns);
            let (p50, p99, max) = (
                show(c.latency_p50),
                show(c.latency_p99),
                show(c.latency_max),
            );
            // The sink column: `down (N failed attempts)` while outputs wait for it, and the
            // outputs written to connections that then failed, which the sink may not have.
            let mut sink = match (c.sink_down, c.outputs) {
                (true, _) => format!("down ({} failed attempts)", c.sink_failures),
                (false, 0) => "-".to_string(),
                (false, _) => "up".to_string(),
            };
            if c.at_risk > 0 {
                sink += &format!(", {} outputs at risk", c.at_risk);
            }
            if c.late > 0 {
                sink += &format!(", {} late messages", c.late);
            }
            if c.replaying {
                sink += ", a source replays for a recovery";
            }
            writeln!(
                f,
                "{:>8} {:>4} {:>3} {:>5} {:>6} {:>10} {:>9} {:>5} {:>11.0} {:>12.0} {:>9} {:>9} {:>9}  {}",
                c.node,
                c.core,
                c.cpu,
                format!("{:.0}%", c.busy * 100.0),
                c.slots,
                c.entities,
                human_bytes(c.state_bytes),
                c.connections,
                c.frames_per_sec,
                c.outputs_per_sec,
                p50,
                p99,
                max,
                sink
            )?;
        }
        for id in &self.silent {
            writeln!(f, "{id:>4} (busy: no answer within 2 s)")?;
        }
        for c in &self.cores {
            for (name, offset, ended) in &c.files {
                write!(
                    f,
                    "file source {name} (core {}): read to byte {offset}",
                    c.core
                )?;
                match ended {
                    Some(how) => writeln!(f, ", {how}")?,
                    None => writeln!(f)?,
                }
            }
        }
        Ok(())
    }
}

/// Bytes for a person: `812 B`, `9.1 KB`, `18.6 MB`, `1.2 GB` (powers of 1000, as the benchmarks'
/// MB).
fn human_bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n < 1e3 => format!("{n} B"),
        n if n < 1e6 => format!("{:.1} KB", n / 1e3),
        n if n < 1e9 => format!("{:.1} MB", n / 1e6),
        n => format!("{:.1} GB", n / 1e9),
    }
}

/// The checkpoint lines of `status`.
fn write_checkpoints(f: &mut fmt::Formatter<'_>, c: &CheckpointStatus) -> fmt::Result {
    write!(f, "checkpoints in {}: ", c.state_dir.display())?;
    match &c.last {
        Some(last) => {
            let age = std::time::SystemTime::now()
                .duration_since(last.taken)
                .unwrap_or_default();
            writeln!(
                f,
                "last complete {} ({:.1}s ago, {} bytes written, {} bytes of state, took {} ms)",
                last.checkpoint,
                age.as_secs_f64(),
                last.written,
                last.state_bytes,
                last.duration.as_millis()
            )?;
        }
        None => writeln!(f, "none complete yet")?,
    }
    if let Some(n) = c.restored_from {
        writeln!(f, "restored from checkpoint {n} at start")?;
    }
    if !c.awaiting.is_empty() {
        writeln!(
            f,
            "WAITING for nodes {} to come back with their part of it: no source is read until then",
            c.awaiting.join(", ")
        )?;
    }
    if let Some(e) = &c.failure {
        writeln!(f, "LAST CHECKPOINT FAILED: {e}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_report_crosses_as_itself_and_garbage_is_an_error() {
        let report = ChangeReport {
            cores_before: 1,
            cores_after: 2,
            steps: 32,
            slots_moved: 2048,
            entities_moved: 1_000_000,
            bytes_moved: 48_000_000,
            elapsed: Duration::from_micros(1_234_567),
            moving: Duration::from_micros(20_345),
        };
        let body = report.encode();
        assert_eq!(ChangeReport::decode(&body).unwrap(), report);
        assert!(ChangeReport::decode(&body[..body.len() - 1]).is_err());
        assert!(ChangeReport::decode(b"").is_err());
        assert!(ChangeReport::decode(b"QN").is_err());
        let mut other_version = body.clone();
        other_version[2] = other_version[2].wrapping_add(1);
        assert!(matches!(
            ChangeReport::decode(&other_version),
            Err(WireError::Version(_))
        ));
        assert!(ChangeReport::decode(&[b'Q', b'N', body[2], 1, 2, 3]).is_err());
    }

    #[test]
    fn bytes_read_as_a_person_would() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(812), "812 B");
        assert_eq!(human_bytes(9_100), "9.1 KB");
        assert_eq!(human_bytes(18_600_000), "18.6 MB");
        assert_eq!(human_bytes(1_234_000_000), "1.2 GB");
    }
}
