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
use crate::checkpoint::{merge_marks, Manifest, SourceMark};
use crate::dataflow::{Dataflow, StagePart};
use crate::node::state_dir::{Restored, StateDir, Unusable};
use crate::routing::{CoreId, RoutingTable};
use crate::runtime::messages::{CoreMsg, FileSource, PeerMsg, Scope, Snapshot};
use crate::runtime::{Config, Input};

/// Why a checkpoint was not taken. The previous one stands; the next interval tries again.
#[derive(Debug, Clone, Error)]
pub enum CheckpointError {
    #[error("no --state-dir: checkpoints are off")]
    Off,
    #[error("a change is in progress ({doing}); the checkpoint waits for it to end")]
    Busy { doing: String },
    #[error("the engine is stopping")]
    Stopped,
    #[error("checkpoints of a cluster of several nodes are not built yet")]
    Cluster,
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
}

/// A node's checkpoints: its state dir and the last manifest written.
pub(crate) struct Checkpoints {
    app: String,
    /// This start's run number on the state dir.
    pub run: u64,
    dir: StateDir,
    last: Option<Manifest>,
    next: u64,
    /// The cores' archives of the last failed attempt were lost: write every slot next time.
    next_scope: Scope,
    pub status: CheckpointStatus,
}

/// What a node starts from: the slots each core gets back, and where its file sources stood.
pub(crate) struct Restore {
    pub table: RoutingTable,
    pub per_core: BTreeMap<CoreId, Vec<(u32, u32, StagePart)>>,
    /// Where each file source and durable stream stood.
    pub offsets: Vec<SourceMark>,
}

/// How a node's coordinator starts: from the newest checkpoint that restores, or afresh.
pub(super) struct Start {
    pub table: RoutingTable,
    pub ids: Vec<CoreId>,
    pub per_core: BTreeMap<CoreId, Vec<(u32, u32, StagePart)>>,
    pub offsets: Vec<SourceMark>,
}

impl Start {
    pub fn from(
        checkpoints: Option<&mut Checkpoints>,
        dataflow: &Dataflow,
        config: &Config,
    ) -> Self {
        let restored = match checkpoints {
            Some(c) => {
                let r = c.restore(dataflow, config.n_slots);
                // Never a number in use, even by a checkpoint that could not be restored.
                c.skip_past_existing();
                r
            }
            None => None,
        };
        let Some(r) = restored else {
            return Start {
                table: RoutingTable::uniform(config.n_slots, config.cores as CoreId),
                ids: (0..config.cores as CoreId).collect(),
                per_core: BTreeMap::new(),
                offsets: Vec::new(),
            };
        };
        let ids: std::collections::BTreeSet<CoreId> =
            (0..r.table.n_slots()).map(|s| r.table.owner(s)).collect();
        if ids.len() != config.cores {
            tracing::info!(
                "the checkpoint had {} cores: starting with those (not --cores {}); grow or shrink to change",
                ids.len(),
                config.cores
            );
        }
        Start {
            table: r.table,
            ids: ids.into_iter().collect(),
            per_core: r.per_core,
            offsets: r.offsets,
        }
    }
}

impl Checkpoints {
    pub fn open(dir: StateDir, app: &str) -> Result<Self, crate::node::StateDirError> {
        let run = dir.next_run()?;
        let status = CheckpointStatus {
            state_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        Ok(Checkpoints {
            app: app.into(),
            run,
            dir,
            last: None,
            next: 1,
            next_scope: Scope::Changed,
            status,
        })
    }

    /// Reads back the newest checkpoint that restores whole (skipping, loudly, any that does
    /// not), into what each core starts with.
    pub fn restore(&mut self, dataflow: &Dataflow, n_slots: u32) -> Option<Restore> {
        let started = Instant::now();
        let app = self.app.clone();
        let (manifest, restore, bytes) =
            self.dir.restore(|r| decode(dataflow, &app, n_slots, r))?;
        tracing::info!(
            checkpoint = manifest.checkpoint,
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "restored from checkpoint {}",
            manifest.checkpoint
        );
        self.next = manifest.checkpoint + 1;
        self.status.restored_from = Some(manifest.checkpoint);
        self.status.last = Some(info(&manifest, Duration::ZERO));
        self.last = Some(manifest);
        Some(restore)
    }

    /// Counts on after every checkpoint on disk (restored or not), so a number is never reused.
    pub fn skip_past_existing(&mut self) {
        if let Some(newest) = self.dir.newest() {
            self.next = self.next.max(newest.checkpoint + 1);
        }
    }
}

/// Whether a checkpoint is the last one, taken as the engine stops (which a stop does not
/// call off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    NotYet,
    Final,
}

/// A checkpoint read back, as each core's slots: a part the app cannot read (another build of
/// it, or a bug: the bytes were checksummed) makes the whole checkpoint unusable.
fn decode(
    dataflow: &Dataflow,
    app: &str,
    n_slots: u32,
    r: Restored,
) -> Result<(Manifest, Restore, u64), Unusable> {
    if r.manifest.app != app || r.manifest.n_slots != n_slots {
        return Err(Unusable::OtherApp {
            app: r.manifest.app.clone(),
            n_slots: r.manifest.n_slots,
        });
    }
    let table = (r.manifest.table()).ok_or(Unusable::Table)?;
    let mut per_core: BTreeMap<CoreId, Vec<(u32, u32, StagePart)>> = BTreeMap::new();
    for (part, archives) in r.parts {
        let (stage, slot) = (part.stage, part.slot);
        if slot >= n_slots {
            return Err(Unusable::Slot { slot, n_slots });
        }
        let p = dataflow
            .read_part(stage, slot, n_slots, archives)
            .map_err(|error| Unusable::Decode { stage, slot, error })?;
        (per_core.entry(table.owner(part.slot)).or_default()).push((part.stage, part.slot, p));
    }
    let offsets = r.manifest.sources.clone();
    let restore = Restore {
        table,
        per_core,
        offsets,
    };
    Ok((r.manifest, restore, r.bytes))
}

/// The source marks of the last checkpoint written, if any.
fn last_sources(c: &Option<Checkpoints>) -> &[SourceMark] {
    (c.as_ref().and_then(|c| c.last.as_ref())).map_or(&[], |m| &m.sources)
}

fn info(m: &Manifest, duration: Duration) -> CheckpointInfo {
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

    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The last durable checkpoint, if checkpoints are on and one was taken (or restored).
    pub fn last_checkpoint(&self) -> Option<u64> {
        Some(self.last_durable()).filter(|&n| n > 0)
    }

    /// The last durable checkpoint's number (0: none).
    pub fn last_durable(&self) -> u64 {
        (self.checkpoints.as_ref())
            .and_then(|c| c.last.as_ref())
            .map_or(0, |m| m.checkpoint)
    }

    /// How often to take a checkpoint on its own (with a state dir and an interval).
    pub fn checkpoint_interval(&self) -> Option<Duration> {
        self.checkpoints.as_ref()?;
        self.config.checkpoint_interval
    }

    /// Stopping with a state dir: the sources stop where they are, and once everything they
    /// read is applied (the barriers follow it) a last checkpoint is taken, so a restart goes
    /// on from here and, with exactly-once sinks, every output so far is released.
    pub fn final_checkpoint(&mut self) {
        if self.checkpoints.is_none() || self.stopped || !self.node.members().is_empty() {
            return;
        }
        for id in self.local_ids() {
            self.cores[&id].addr.send_control(CoreMsg::CutSources);
        }
        let deadline = Instant::now() + self.config.change_timeout;
        while (self.node.local_status().iter()).any(|s| s.connections > 0) {
            if Instant::now() > deadline {
                tracing::warn!("sources still open at stop: no final checkpoint");
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
                }
                // Stopping is not a failure: the last checkpoint stands as the final one.
                Err(CheckpointError::Stopped) => {}
                Err(e) => {
                    tracing::error!(
                        "checkpoint failed: {e}; the previous one stands, the next will try again"
                    );
                    c.status.failure = Some(e.to_string());
                }
            }
            self.view.lock().unwrap().checkpoints = Some(c.status.clone());
        }
        result
    }

    fn try_checkpoint(&mut self, last: Last) -> Result<CheckpointInfo, CheckpointError> {
        let Some(app) = self.checkpoints.as_ref().map(|c| c.app.clone()) else {
            return Err(CheckpointError::Off);
        };
        if self.stopped || (last == Last::NotYet && self.is_stopping()) {
            return Err(CheckpointError::Stopped);
        }
        if !self.node.members().is_empty() || !self.node.lost_nodes().is_empty() {
            return Err(CheckpointError::Cluster);
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
        let taken_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let cores: Vec<CoreId> = self.cores.keys().copied().collect();
        for id in &cores {
            self.cores[id]
                .addr
                .send_control(PeerMsg::Checkpoint { checkpoint, scope });
        }
        let snapshots = match self.gather(checkpoint, &cores, last) {
            Ok(s) => s,
            Err(e) => {
                for id in &cores {
                    self.cores[id]
                        .addr
                        .send_control(PeerMsg::CheckpointAbort { checkpoint });
                }
                // Some cores archived their changes for nothing: write every slot next time.
                self.checkpoints.as_mut().expect("checked").next_scope = Scope::Everything;
                return Err(e);
            }
        };
        let next = Manifest {
            checkpoint,
            app,
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
        };
        let c = self.checkpoints.as_mut().expect("checked");
        match c.dir.write(c.last.as_ref(), next, snapshots) {
            Ok(manifest) => {
                let info = info(&manifest, started.elapsed());
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
                c.next_scope = Scope::Everything;
                Err(CheckpointError::Write {
                    checkpoint,
                    reason: e.to_string(),
                })
            }
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
        while got.len() < cores.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let tick = left.min(Duration::from_millis(100));
            match self.snapshots.1.recv_timeout(tick) {
                Ok(s) if s.checkpoint != checkpoint => {} // of an attempt called off
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
        Ok(got.into_values().collect())
    }
}

/// A new run's id: random, or from the clock if the system has no random source.
pub(super) fn run_id() -> u64 {
    let mut bytes = [0; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bytes = (t.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    u64::from_le_bytes(bytes)
}
