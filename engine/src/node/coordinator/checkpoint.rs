//! The coordinator's side of checkpoints: asks every core for checkpoint n, gathers their
//! snapshots (each core sends its own once it has aligned every stage), writes them with the
//! manifest (`node/state_dir.rs`), and keeps what `status` shows. It holds the coordinator's
//! lock, so a checkpoint and a change never overlap: a core never aligns barriers while a
//! slot it snapshots is on its way. At start, the newest complete checkpoint is read back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use super::Coordinator;
use crate::checkpoint::{merge_marks, Manifest, MemberPart, SourceMark};
use crate::cluster::wire::{Answer, Question, TableWire};
use crate::node::state_dir::StateDir;
use crate::routing::{CoreId, RoutingTable};
use crate::runtime::messages::{CoreMsg, FileSource, PeerMsg, Scope, Snapshot};
use crate::runtime::Input;

/// Why a checkpoint was not taken. The previous one stands; the next interval tries again.
#[derive(Debug, Clone, Error)]
pub enum CheckpointError {
    #[error("no --state-dir: checkpoints are off")]
    Off,
    #[error("a change is in progress ({doing}); ask for the checkpoint again once it ends")]
    Busy { doing: String },
    #[error("the engine is stopping")]
    Stopped,
    #[error("this node is a member: the coordinator takes the cluster's checkpoints (ask it)")]
    NotCoordinator,
    #[error("node {node} was lost: no checkpoint can be complete without it")]
    Lost { node: String },
    #[error("cores {cores:?} belong to no member that answers (their node was lost a moment ago): no checkpoint can be complete without them")]
    Unanswered { cores: Vec<CoreId> },
    #[error(
        "the cluster is restoring checkpoint {checkpoint} and waits for nodes {nodes} to come back"
    )]
    Awaiting { checkpoint: u64, nodes: String },
    #[error("checkpoint {checkpoint}: node {node} did not write its part: {reason}")]
    Member {
        checkpoint: u64,
        node: String,
        reason: String,
    },
    #[error("checkpoint {checkpoint}: core {core}: {reason}")]
    Core {
        checkpoint: u64,
        core: CoreId,
        reason: String,
    },
    #[error("checkpoint {checkpoint}: cores {missing:?} did not finish their snapshot within {waited:?}")]
    Timeout {
        checkpoint: u64,
        missing: Vec<CoreId>,
        waited: Duration,
    },
    #[error("checkpoint {checkpoint} could not be written: {reason}")]
    Write { checkpoint: u64, reason: String },
}

/// The last complete checkpoint, as `status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    pub checkpoint: u64,
    /// When its barriers were sent.
    pub taken: SystemTime,
    /// Bytes it wrote (only what changed since the one before).
    pub written: u64,
    /// Bytes of state it holds in all.
    pub state_bytes: u64,
    /// From the barriers to the manifest being durable.
    pub duration: Duration,
}

/// Checkpoints on this node, for `status`.
#[derive(Debug, Clone, Default)]
pub struct CheckpointStatus {
    pub state_dir: PathBuf,
    pub last: Option<CheckpointInfo>,
    /// The last failure, if it came after the last success.
    pub failure: Option<String>,
    /// The checkpoint this run restored from.
    pub restored_from: Option<u64>,
    /// The nodes of that checkpoint not back yet: until they are, no source is read.
    pub awaiting: Vec<String>,
    /// Checkpoints completed, and failed, since this node started.
    pub completed: u64,
    pub failed: u64,
    /// Bytes the completed ones wrote, in all.
    pub written: u64,
}

/// A node's checkpoints: its state dir and the last manifest written.
pub(crate) struct Checkpoints {
    pub(super) app: String,
    /// This node's name, which its manifests carry.
    pub(super) node: String,
    /// The cluster's id, which its manifests carry (see `state_dir.rs`).
    pub(super) cluster: u64,
    /// This start's run number on the state dir.
    pub run: u64,
    pub(super) dir: StateDir,
    pub(super) last: Option<Manifest>,
    pub(super) next: u64,
    /// The cores' archives of the last failed attempt were lost: write every slot next time.
    next_scope: Scope,
    pub status: CheckpointStatus,
}

impl Checkpoints {
    pub fn open(dir: StateDir, app: &str, node: &str) -> Result<Self, crate::node::StateDirError> {
        let run = dir.next_run()?;
        let status = CheckpointStatus {
            state_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        Ok(Checkpoints {
            app: app.into(),
            node: node.into(),
            cluster: 0,
            run,
            dir,
            last: None,
            next: 1,
            next_scope: Scope::Changed,
            status,
        })
    }

    /// On the coordinator: this cluster's id, from its state dir (made at its first start).
    pub fn lead(&mut self) -> Result<(), crate::node::StateDirError> {
        self.cluster = self.dir.cluster_id(random_id)?;
        Ok(())
    }

    /// On a joining node: joins cluster `cluster`. Refused if this dir holds parts of another
    /// cluster's checkpoints (its coordinator started on another state dir?): they are never
    /// restored there, and this cluster's first checkpoint would remove them.
    pub fn join_cluster(&mut self, cluster: u64) -> Result<(), crate::node::state_dir::Unusable> {
        if let Some(newest) = self.dir.newest() {
            if newest.cluster != cluster {
                return Err(crate::node::state_dir::Unusable::OtherCluster {
                    found: newest.cluster,
                    cluster,
                });
            }
        }
        self.cluster = cluster;
        Ok(())
    }
}

/// How long the coordinator waits for a member to answer a question at stop.
const ASK_WAIT: Duration = Duration::from_secs(10);

/// How much longer than a node waits for its cores the coordinator waits for a member's part.
const MEMBER_SLACK: Duration = Duration::from_secs(5);

/// Whether a checkpoint is the last one, taken as the engine stops (which a stop does not
/// call off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    NotYet,
    Final,
}

/// The source marks of the last checkpoint written, if any.
fn last_sources(c: &Option<Checkpoints>) -> &[SourceMark] {
    (c.as_ref().and_then(|c| c.last.as_ref())).map_or(&[], |m| &m.sources)
}

pub(super) fn info(m: &Manifest, duration: Duration) -> CheckpointInfo {
    CheckpointInfo {
        checkpoint: m.checkpoint,
        taken: UNIX_EPOCH + Duration::from_millis(m.taken_ms),
        written: m.written,
        state_bytes: m.state_bytes(),
        duration,
    }
}

impl Coordinator {
    /// Gives the file sources to this node's first core (no shrink removes it), each from
    /// where the checkpoint says it stood.
    pub(super) fn read_files(&self, offsets: &[SourceMark]) {
        let Some(first) = self.local_ids().first().map(|id| &self.cores[id].addr) else {
            return;
        };
        for (source, input) in self.config.inputs.iter().enumerate() {
            if let Input::File(input) = input {
                let offset = (offsets.iter())
                    .find(|m| m.source == source as u32 && m.stream.is_empty())
                    .map_or(0, |m| m.offset);
                first.send_control(CoreMsg::ReadFile(FileSource {
                    source,
                    input: input.clone(),
                    offset,
                }));
            }
        }
    }

    /// Makes the checkpoints' state visible to `status`.
    pub(super) fn publish_checkpoints(&self) {
        if let Some(c) = &self.checkpoints {
            let mut status = c.status.clone();
            status.awaiting = self.awaiting();
            self.view.lock().unwrap().checkpoints = Some(status);
        }
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The last durable checkpoint, if checkpoints are on and one was taken (or restored); on
    /// a member none (the coordinator's completes a checkpoint, and restarts the cluster).
    pub fn last_checkpoint(&self) -> Option<u64> {
        Some(self.last_durable()).filter(|&n| n > 0 && self.node.is_coordinator())
    }

    /// The last durable checkpoint's number (0: none).
    pub fn last_durable(&self) -> u64 {
        (self.checkpoints.as_ref())
            .and_then(|c| c.last.as_ref())
            .map_or(0, |m| m.checkpoint)
    }

    /// Whether this node has a state dir.
    pub fn checkpoints_on(&self) -> bool {
        self.checkpoints.is_some()
    }

    /// How often to take a checkpoint on its own (with a state dir and an interval).
    pub fn checkpoint_interval(&self) -> Option<Duration> {
        self.checkpoints.as_ref()?;
        if !self.node.is_coordinator() {
            return None;
        }
        self.config.checkpoint_interval
    }

    /// Stopping with a state dir: the sources stop where they are (on every node), and once
    /// everything they read is applied (the barriers follow it) a last checkpoint is taken, so
    /// a restart goes on from here and, with exactly-once sinks, every output so far is
    /// released.
    pub fn final_checkpoint(&mut self) {
        if self.checkpoints.is_none() || self.stopped || !self.node.is_coordinator() {
            return;
        }
        for id in self.local_ids() {
            self.cores[&id].addr.send_control(CoreMsg::CutSources);
        }
        let members = self.node.members();
        for m in &members {
            if self.node.ask(&m.name, Question::CutSources, ASK_WAIT) != Some(Answer::Done) {
                tracing::warn!(
                    "node {} did not end its sources: no final checkpoint",
                    m.name
                );
                return;
            }
        }
        let deadline = Instant::now() + self.config.change_timeout;
        while let Some(open) = self.open_source_somewhere(&members) {
            if Instant::now() > deadline {
                tracing::warn!("sources still open at stop ({open}): no final checkpoint");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match self.record(Last::Final) {
            Ok(c) => tracing::info!(
                checkpoint = c.checkpoint,
                "final checkpoint durable: a restart goes on from here"
            ),
            Err(e) => tracing::warn!("no final checkpoint: {e}"),
        }
    }

    /// A node with a source connection still open (or that did not say), if any.
    fn open_source_somewhere(&self, members: &[crate::cluster::wire::Member]) -> Option<String> {
        if (self.node.local_status().iter()).any(|s| s.connections > 0) {
            return Some(self.node.name.clone());
        }
        members.iter().find_map(
            |m| match self.node.ask(&m.name, Question::Status, ASK_WAIT) {
                Some(Answer::Status(cores)) if cores.iter().all(|c| c.connections == 0) => None,
                _ => Some(m.name.clone()),
            },
        )
    }

    /// Takes a checkpoint and waits until it is durable.
    pub fn checkpoint(&mut self) -> Result<CheckpointInfo, CheckpointError> {
        self.record(Last::NotYet)
    }

    /// Takes a checkpoint; what `status` shows follows its outcome.
    fn record(&mut self, last: Last) -> Result<CheckpointInfo, CheckpointError> {
        let result = self.try_checkpoint(last);
        if let Some(c) = &mut self.checkpoints {
            match &result {
                Ok(info) => {
                    c.status.last = Some(info.clone());
                    c.status.failure = None;
                    c.status.completed += 1;
                    c.status.written += info.written;
                }
                // Stopping is not a failure: the last checkpoint stands as the final one. Nor
                // is waiting for the nodes of a restored cluster (status says so).
                Err(CheckpointError::Stopped | CheckpointError::Awaiting { .. }) => {}
                Err(e) => {
                    let failure = Some(e.to_string());
                    // Once per reason in a row: a lost node fails every interval alike.
                    if c.status.failure != failure {
                        tracing::error!(
                            "checkpoint failed: {e}; the previous one stands, the next will try again"
                        );
                    }
                    c.status.failure = failure;
                    c.status.failed += 1;
                }
            }
        }
        self.publish_checkpoints();
        result
    }

    fn try_checkpoint(&mut self, last: Last) -> Result<CheckpointInfo, CheckpointError> {
        let Some(app) = self.checkpoints.as_ref().map(|c| c.app.clone()) else {
            return Err(CheckpointError::Off);
        };
        if self.stopped || (last == Last::NotYet && self.is_stopping()) {
            return Err(CheckpointError::Stopped);
        }
        if !self.node.is_coordinator() {
            return Err(CheckpointError::NotCoordinator);
        }
        if let Some(lost) = self.node.lost_nodes().into_iter().next() {
            return Err(CheckpointError::Lost { node: lost.name });
        }
        // A member whose link just broke is gone from the members a moment before it is
        // among the lost: a checkpoint without its cores' part would restore them empty.
        let members = self.node.members();
        let unanswered: Vec<CoreId> = (self.cores.iter())
            .filter(|(id, h)| h.executor.is_none() && !members.iter().any(|m| m.cores.contains(id)))
            .map(|(&id, _)| id)
            .collect();
        if !unanswered.is_empty() {
            return Err(CheckpointError::Unanswered { cores: unanswered });
        }
        if !self.awaiting.is_empty() {
            return Err(CheckpointError::Awaiting {
                checkpoint: self.last_durable(),
                nodes: self.awaiting().join(", "),
            });
        }
        if let Some(u) = &self.unfinished {
            if !u.window.is_done() {
                return Err(CheckpointError::Busy {
                    doing: "steps of a change that ended early".into(),
                });
            }
        }
        let started = Instant::now();
        let c = self.checkpoints.as_mut().expect("checked");
        let checkpoint = c.next;
        c.next += 1;
        let scope = std::mem::replace(&mut c.next_scope, Scope::Changed);
        let keep = c.dir.kept();
        let taken_ms = now_ms();
        let cores: Vec<CoreId> = self.cores.keys().copied().collect();
        for id in &cores {
            self.cores[id]
                .addr
                .send_control(PeerMsg::Checkpoint { checkpoint, scope });
        }
        let table = TableWire::from(&*self.table);
        // Each member writes its own cores' part while this node gathers and writes its own.
        let (node, wait) = (&self.node, self.config.change_timeout + MEMBER_SLACK);
        let (snapshots, parts) = std::thread::scope(|s| {
            let asks: Vec<_> = (members.iter())
                .map(|m| {
                    let question = Question::WritePart {
                        checkpoint,
                        keep: keep.clone(),
                        table: table.clone(),
                    };
                    let tell = self.snapshots.0.clone();
                    let ask = move || {
                        let answer = node.ask(&m.name, question, wait);
                        // A member that fails ends this node's wait too: its cores' barriers
                        // may never come.
                        if !matches!(answer, Some(Answer::Written { .. })) {
                            let why = match &answer {
                                Some(Answer::Failed(reason)) => {
                                    format!("node {}: {reason}", m.name)
                                }
                                _ => format!("node {} did not write its part", m.name),
                            };
                            let core = m.cores.first().copied().unwrap_or_default();
                            let _ = tell.send(Snapshot::failed(core, checkpoint, why));
                        }
                        answer
                    };
                    (m.name.clone(), s.spawn(ask))
                })
                .collect();
            let local = self.gather(checkpoint, &self.local_ids(), last);
            if local.is_err() {
                // The members' cores stop waiting for barriers that will not come.
                self.call_off(checkpoint, &cores);
            }
            let parts: Vec<_> = (asks.into_iter())
                .map(|(node, ask)| (node, ask.join().ok().flatten()))
                .collect();
            (local, parts)
        });
        let members_written = snapshots.and_then(|snapshots| {
            let mut written = (0, 0);
            for (node, answer) in parts {
                match answer {
                    Some(Answer::Written {
                        written: w,
                        state_bytes,
                    }) => written = (written.0 + w, written.1 + state_bytes),
                    other => {
                        let reason = match other {
                            Some(Answer::Failed(reason)) => reason,
                            None => "it did not answer in time".into(),
                            Some(a) => format!("it answered {a:?}"),
                        };
                        return Err(CheckpointError::Member {
                            checkpoint,
                            node,
                            reason,
                        });
                    }
                }
            }
            Ok((snapshots, written))
        });
        let (snapshots, (member_bytes, member_state)) = match members_written {
            Ok(s) => s,
            Err(e) => {
                self.call_off(checkpoint, &cores);
                // Some cores archived their changes for nothing: write every slot next time.
                self.checkpoints.as_mut().expect("checked").next_scope = Scope::Everything;
                return Err(e);
            }
        };
        let mut next = self.manifest(checkpoint, app, taken_ms, &snapshots);
        next.members = (members.into_iter())
            .map(|m| MemberPart {
                node: m.name,
                cores: m.cores,
            })
            .collect();
        let previous = self.previous_part();
        let c = self.checkpoints.as_mut().expect("checked");
        match c.dir.write(previous.as_ref(), next, snapshots, None) {
            Ok(manifest) => {
                let mut info = info(&manifest, started.elapsed());
                info.written += member_bytes;
                info.state_bytes += member_state;
                for id in &cores {
                    self.cores[id]
                        .addr
                        .send_control(PeerMsg::Commit { checkpoint });
                }
                tracing::debug!(
                    checkpoint,
                    written = info.written,
                    ms = info.duration.as_millis() as u64,
                    "checkpoint durable"
                );
                c.last = Some(manifest);
                Ok(info)
            }
            Err(e) => {
                for id in &cores {
                    self.cores[id]
                        .addr
                        .send_control(PeerMsg::CheckpointAbort { checkpoint });
                }
                c.next_scope = Scope::Everything;
                Err(CheckpointError::Write {
                    checkpoint,
                    reason: e.to_string(),
                })
            }
        }
    }

    /// The last manifest this node wrote, without the parts of slots its cores no longer own:
    /// those moved to another node, whose part stores them now.
    fn previous_part(&self) -> Option<Manifest> {
        let mut previous = self.checkpoints.as_ref()?.last.clone()?;
        let local = self.local_ids();
        (previous.parts).retain(|p| local.contains(&self.table.owner(p.slot)));
        Some(previous)
    }

    /// This node's manifest of `checkpoint` (no parts yet) from its cores' snapshots.
    fn manifest(
        &self,
        checkpoint: u64,
        app: String,
        taken_ms: u64,
        snapshots: &[Snapshot],
    ) -> Manifest {
        Manifest {
            checkpoint,
            app,
            cluster: self.checkpoints.as_ref().map_or(0, |c| c.cluster),
            node: self.node.name.clone(),
            members: Vec::new(),
            n_slots: self.table.n_slots(),
            epoch: self.table.epoch(),
            owners: (0..self.table.n_slots())
                .map(|s| self.table.owner(s))
                .collect(),
            sources: merge_marks(
                last_sources(&self.checkpoints),
                snapshots.iter().flat_map(|s| s.sources.clone()).collect(),
            ),
            parts: Vec::new(),
            written: 0,
            taken_ms,
        }
    }

    /// On a member: gathers this node's cores' snapshots of `checkpoint` and writes them as
    /// its part, keeping only it and its parts of `keep` (the coordinator may restore those).
    pub(super) fn write_part(
        &mut self,
        checkpoint: u64,
        keep: &[u64],
        table: &RoutingTable,
    ) -> Answer {
        let Some(app) = self.checkpoints.as_ref().map(|c| c.app.clone()) else {
            return Answer::Failed(format!("node {} has no state dir", self.node.name));
        };
        // A member learns the table from the coordinator, whose changes it does not follow.
        self.table = std::sync::Arc::new(table.clone());
        let snapshots = match self.gather(checkpoint, &self.local_ids(), Last::NotYet) {
            Ok(s) => s,
            Err(e) => return Answer::Failed(e.to_string()),
        };
        let taken_ms = now_ms();
        let next = self.manifest(checkpoint, app, taken_ms, &snapshots);
        let previous = self.previous_part();
        let c = self.checkpoints.as_mut().expect("checked");
        let only: std::collections::BTreeSet<u64> =
            keep.iter().copied().chain([checkpoint]).collect();
        match c.dir.write(previous.as_ref(), next, snapshots, Some(&only)) {
            Ok(manifest) => {
                let answer = Answer::Written {
                    written: manifest.written,
                    state_bytes: manifest.state_bytes(),
                };
                c.last = Some(manifest);
                answer
            }
            Err(e) => Answer::Failed(e.to_string()),
        }
    }

    /// Tells every core that `checkpoint` failed: nothing waits for it any more.
    fn call_off(&self, checkpoint: u64, cores: &[CoreId]) {
        for id in cores {
            (self.cores[id].addr).send_control(PeerMsg::CheckpointAbort { checkpoint });
        }
    }

    /// Every core's snapshot of `checkpoint`, within the change timeout.
    fn gather(
        &self,
        checkpoint: u64,
        cores: &[CoreId],
        last: Last,
    ) -> Result<Vec<Snapshot>, CheckpointError> {
        // At a stop, no longer than a stop waits for a sink.
        let waited = match last {
            Last::NotYet => self.config.change_timeout,
            Last::Final => self.config.drain_timeout.min(self.config.change_timeout),
        };
        let deadline = crate::runtime::deadline_after(waited);
        let mut got: BTreeMap<CoreId, Snapshot> = BTreeMap::new();
        let mut early = self.early_snapshots.take().into_iter();
        while got.len() < cores.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let tick = left.min(Duration::from_millis(100));
            let next = match early.next() {
                Some(s) => Ok(s),
                None => self.snapshots.1.recv_timeout(tick),
            };
            match next {
                // A member still gathering an attempt the coordinator gave up on may see the
                // next checkpoint's: kept for it.
                Ok(s) if s.checkpoint > checkpoint => self.early_snapshots.borrow_mut().push(s),
                Ok(s) if s.checkpoint < checkpoint => {} // of an attempt called off
                Ok(Snapshot {
                    core,
                    error: Some(reason),
                    ..
                }) => {
                    return Err(CheckpointError::Core {
                        checkpoint,
                        core,
                        reason,
                    })
                }
                Ok(s) => {
                    got.insert(s.core, s);
                }
                Err(_) if last == Last::NotYet && self.is_stopping() => {
                    return Err(CheckpointError::Stopped)
                }
                Err(_) if left.is_zero() => {
                    return Err(CheckpointError::Timeout {
                        checkpoint,
                        missing: cores
                            .iter()
                            .copied()
                            .filter(|c| !got.contains_key(c))
                            .collect(),
                        waited,
                    })
                }
                Err(_) => {}
            }
        }
        self.early_snapshots.borrow_mut().extend(early);
        Ok(got.into_values().collect())
    }
}

/// A new id (a run's, a cluster's): random, or from the clock if the system has no random
/// source.
pub(super) fn random_id() -> u64 {
    let mut bytes = [0; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bytes = (t.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    u64::from_le_bytes(bytes)
}

/// The wall clock in ms since the Unix epoch (0 before it), as manifests record it.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
