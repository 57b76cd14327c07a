//! Losing a member and going on: its slots come back from the last durable checkpoint onto
//! the surviving cores, which never stop (the cores' side is `runtime/core/recover.rs`).
//!
//! A recovery is a change of one step that moves every slot of the lost cores to a survivor
//! (planned as their removal). The survivors prepare it; the coordinator reads each moving
//! slot's part of the checkpoint (from the lost node's state dir, or from whichever node held
//! the slot then) and hands it to the new owner as if the lost core had handed it off; then
//! every survivor switches and, in the same action, rewinds its replayable sources to where
//! the checkpoint says they stood. What they read again goes to the restored slots only, up
//! to where each source was, so no surviving slot applies anything twice.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::restore::decode;
use super::{Coordinator, Unfinished};
use crate::cluster::LostNode;
use crate::dataflow::StagePart;
use crate::migration::{ChangePlan, StepWindow};
use crate::node::state_dir::StateDir;
use crate::node::status::ChangeError;
use crate::planner::{moved_across, plan_recovery};
use crate::routing::{CoreId, Move};
use crate::runtime::messages::{CoreEvent, CoreMsg, PeerMsg};

/// Why a lost node's slots were not recovered (they stay without an owner, as before this
/// existed, and changes stay refused).
#[derive(Debug, Error)]
pub enum RecoveryError {
    #[error("no checkpoints (--state-dir): a lost node's state cannot come back")]
    NoCheckpoints,
    #[error("no checkpoint of the cluster was taken before node {0} was lost")]
    NotInCheckpoint(String),
    #[error("the app has {stages} keyed stage(s), or timers: one node's slots cannot come back alone (a survivor's stage would not send a restored slot again what it sent the lost one), so the whole cluster goes back to its last checkpoint")]
    App { stages: usize },
    #[error("node {0} never said where its state dir is")]
    NoStateDir(String),
    #[error("reading node {node}'s part of checkpoint {checkpoint} from {dir}: {reason}")]
    Read {
        node: String,
        checkpoint: u64,
        dir: PathBuf,
        reason: String,
    },
    #[error("{slots} slot(s) moved between nodes {nodes} and the others after checkpoint {checkpoint} (a change ran since, or was cut short by the loss): restoring the lost nodes alone would repeat or drop exactly-once outputs of those slots, so the whole cluster goes back to the checkpoint")]
    MovedAcross {
        nodes: String,
        checkpoint: u64,
        slots: usize,
    },
    #[error("planning: {0}")]
    Plan(String),
    #[error(transparent)]
    Change(#[from] ChangeError),
}

/// Per restored slot, its parts of the checkpoint: (stage, part).
type RestoredParts = BTreeMap<u32, Vec<(u32, StagePart)>>;

impl RecoveryError {
    /// Whether trying again later may succeed (a dir still locked or unreadable for now, a
    /// core slow to answer).
    pub fn may_pass(&self) -> bool {
        matches!(self, RecoveryError::Read { .. } | RecoveryError::Change(_))
    }

    /// Whether the whole cluster goes back to the checkpoint instead ([`crate::Ending::Rollback`]):
    /// the lost slots cannot come back alone, or have nowhere to go.
    pub fn rolls_back(&self) -> bool {
        matches!(
            self,
            RecoveryError::App { .. } | RecoveryError::MovedAcross { .. } | RecoveryError::Plan(_)
        )
    }
}

/// A recovery, as `status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryStatus {
    /// The lost node (or nodes, comma-separated).
    pub node: String,
    pub checkpoint: u64,
    pub slots: usize,
    pub started: Instant,
    /// How long it took, once done.
    pub took: Option<Duration>,
    /// Why it failed, if it did.
    pub failed: Option<String>,
    /// The lost node's own durable streams: what they sent it after the checkpoint is not
    /// replayed.
    pub lost_streams: Vec<String>,
}

impl Coordinator {
    /// Restores the slots of every lost node onto the surviving cores from the last durable
    /// checkpoint (several at once: one lost a moment after another is planned with it, not
    /// onto its cores). Holds the coordinator's lock throughout (no change or checkpoint
    /// overlaps). `None` if there is nothing to recover: every lost node was let go already (a
    /// join rolled back), or a restored cluster waits for it again.
    pub fn recover(&mut self) -> Result<Option<RecoveryStatus>, RecoveryError> {
        let lost: Vec<LostNode> = (self.node.lost_nodes().into_iter())
            .filter(|l| !self.restored_members.contains_key(&l.name))
            .collect();
        if lost.is_empty() {
            return Ok(None);
        }
        let lost_cores: BTreeSet<CoreId> = lost.iter().flat_map(|l| l.cores.clone()).collect();
        let mut status = RecoveryStatus {
            node: (lost.iter().map(|l| l.name.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
            checkpoint: self.last_durable(),
            slots: (0..self.table.n_slots())
                .filter(|&s| lost_cores.contains(&self.table.owner(s)))
                .count(),
            started: Instant::now(),
            took: None,
            failed: None,
            lost_streams: Vec::new(),
        };
        self.recovery = Some(status.clone());
        self.publish(None);
        let result = self.try_recover(&lost, &mut status);
        match &result {
            Ok(()) => status.took = Some(status.started.elapsed()),
            Err(e) => status.failed = Some(e.to_string()),
        }
        self.recovery = Some(status.clone());
        self.publish(None);
        self.publish_checkpoints();
        result.map(|()| Some(status))
    }

    fn try_recover(
        &mut self,
        lost: &[LostNode],
        status: &mut RecoveryStatus,
    ) -> Result<(), RecoveryError> {
        self.check_running()?;
        let checkpoint = status.checkpoint;
        let manifest = (self.checkpoints.as_ref())
            .ok_or(RecoveryError::NoCheckpoints)?
            .last
            .clone()
            .ok_or_else(|| RecoveryError::NotInCheckpoint(status.node.clone()))?;
        let stages = self.dataflow.stages.len();
        if stages != 1 || self.dataflow.stages.iter().any(|s| s.has_timers()) {
            return Err(RecoveryError::App { stages });
        }
        let lost_cores: BTreeSet<CoreId> = lost.iter().flat_map(|l| l.cores.clone()).collect();
        self.finish_cut_short(&lost_cores)?;
        let all: Vec<CoreId> = self.cores.keys().copied().collect();
        let survivors: Vec<CoreId> = (all.iter().copied())
            .filter(|c| !lost_cores.contains(c))
            .collect();
        if self.config.guarantee == crate::runtime::Guarantee::ExactlyOnce {
            let at = manifest.table().unwrap_or_else(|| (*self.table).clone());
            let crossed = moved_across(&at, &self.table, &lost_cores, &self.cut_short);
            if !crossed.is_empty() {
                return Err(RecoveryError::MovedAcross {
                    nodes: status.node.clone(),
                    checkpoint,
                    slots: crossed.len(),
                });
            }
        }
        let p = plan_recovery(
            &self.table,
            &all,
            &lost_cores,
            &self.cut_short,
            &self.forsaken.borrow(),
        )
        .map_err(|e| RecoveryError::Plan(e.to_string()))?;
        // A slot a lost core was handing off never arrived: the lost core's, to restore.
        self.table = Arc::new(p.from);
        status.slots = p.moves.len();
        let names: BTreeSet<&str> = lost.iter().map(|l| l.name.as_str()).collect();
        if !p.moves.is_empty() {
            tracing::warn!(
                "recovering nodes {}: {} slots from checkpoint {checkpoint} onto cores {survivors:?}",
                status.node,
                p.moves.len()
            );
            let (parts, lost_streams) = self.read_parts(&manifest, &p.moves, &names)?;
            if !lost_streams.is_empty() {
                tracing::error!(
                    "nodes {} read durable streams {:?}: where they stand is not known (the survivors applied part of what followed checkpoint {checkpoint}), so they are refused from now on: their senders must start them again under new names",
                    status.node,
                    lost_streams.iter().map(|s| &s.1).collect::<Vec<_>>()
                );
            }
            status.lost_streams = lost_streams.iter().map(|s| s.1.clone()).collect();
            self.lost_streams.extend(lost_streams);
            let lost = lost
                .iter()
                .map(|l| (l.name.clone(), l.cores.clone()))
                .collect();
            self.restore_step(p.moves, parts, &survivors, checkpoint, lost)?;
        }
        self.cut_short.clear();
        self.forsaken.borrow_mut().clear();
        for l in lost {
            self.let_go(&l.name, &l.cores);
        }
        tracing::warn!(
            "recovered nodes {}: {} slots restored from checkpoint {checkpoint} in {:?}; the sources replay what followed it",
            status.node,
            status.slots,
            status.started.elapsed()
        );
        Ok(())
    }

    /// The recovery's one step: the survivors prepare it, get the restored slots, and switch
    /// (rewinding their sources). A failure before the switch calls the step off on every
    /// core; after it, the step is left to finish, as a change's switched steps are.
    fn restore_step(
        &mut self,
        moves: Vec<Move>,
        mut parts: RestoredParts,
        survivors: &[CoreId],
        checkpoint: u64,
        lost: Vec<(String, Vec<CoreId>)>,
    ) -> Result<(), RecoveryError> {
        // One step: every restored slot is on its way at once, so the rewind at its switch
        // replays to all of them.
        self.changes += 1;
        let change = ChangePlan::new(
            self.changes,
            &self.table,
            vec![moves.clone()],
            survivors.to_vec(),
        );
        let step = change
            .transitions(self.table.n_slots())
            .map_err(|e| RecoveryError::Plan(e.to_string()))?
            .remove(0);
        for id in survivors {
            self.cores[id]
                .addr
                .send_control(PeerMsg::Prepare(change.clone()));
        }
        let prepared = RefCell::new(BTreeSet::new());
        let waited = self.wait_events(
            "cores to prepare the recovery",
            |e| {
                if let CoreEvent::Prepared(core) = e {
                    prepared.borrow_mut().insert(*core);
                }
                prepared.borrow().len() == survivors.len()
            },
            || missing(survivors, &prepared.borrow()),
        );
        if let Err(e) = waited {
            for id in survivors {
                self.cores[id].addr.send_control(PeerMsg::Abort);
            }
            return Err(e.into());
        }
        self.hand_restored(&moves, &mut parts);
        let streams: Vec<(u32, String)> = self.lost_streams.iter().cloned().collect();
        for id in survivors {
            self.cores[id].addr.send_control(PeerMsg::Recover {
                checkpoint,
                lost: lost.clone(),
                streams: streams.clone(),
            });
        }
        let epoch = step.table.epoch();
        self.table = step.table.clone();
        let done = RefCell::new(BTreeSet::new());
        let waited = self.wait_events(
            "cores to adopt the restored slots",
            |e| {
                if let CoreEvent::StepDone { core, epoch: e } = e {
                    if *e == epoch {
                        done.borrow_mut().insert(*core);
                    }
                }
                done.borrow().len() == survivors.len()
            },
            || missing(survivors, &done.borrow()),
        );
        if let Err(e) = waited {
            let mut window = StepWindow::new(epoch, 1, 1, survivors.len());
            window.release();
            for &core in done.borrow().iter() {
                window.finished(core, epoch);
            }
            self.unfinished = Some(Unfinished {
                window,
                cores: survivors.to_vec(),
                // Handed from the checkpoint, not by the lost cores: nothing to take back.
                moves: Vec::new(),
            });
            return Err(e.into());
        }
        Ok(())
    }

    /// The lost members and their state dirs, for a rollback whose restart runs their cores.
    pub fn lost_dirs(&self) -> Vec<(String, PathBuf)> {
        (self.node.lost_nodes().into_iter())
            .filter_map(|l| Some((l.name.clone(), self.member_dirs.get(&l.name)?.clone())))
            .collect()
    }

    /// Waits until the survivors have finished the switched steps of a change the loss cut
    /// short (the lost cores owe them nothing more: each survivor forgets them when its node
    /// sees the loss), and keeps their moves for the plan.
    fn finish_cut_short(&mut self, lost: &BTreeSet<CoreId>) -> Result<(), RecoveryError> {
        self.drain_unfinished();
        let Some(mut u) = self.unfinished.take() else {
            return Ok(());
        };
        for &core in lost {
            u.window.forget(core);
        }
        self.cut_short.extend(u.moves.iter().copied());
        let window = RefCell::new(&mut u.window);
        let waited = if window.borrow().is_done() {
            Ok(())
        } else {
            self.wait_events(
                "survivors to finish the steps the loss cut short",
                |e| {
                    if let CoreEvent::StepDone { core, epoch } = e {
                        window.borrow_mut().finished(*core, *epoch);
                    }
                    window.borrow().is_done()
                },
                || {
                    let w = window.borrow();
                    w.missing(w.awaiting(), &u.cores)
                },
            )
        };
        if waited.is_err() {
            self.unfinished = Some(u);
        }
        Ok(waited?)
    }

    /// Each moving slot's part of the checkpoint `manifest`, read from the state dir of the
    /// node that held the slot then (mostly the lost one).
    fn read_parts(
        &self,
        manifest: &crate::checkpoint::Manifest,
        moves: &[Move],
        lost: &BTreeSet<&str>,
    ) -> Result<(RestoredParts, Vec<(u32, String)>), RecoveryError> {
        let table = manifest.table().ok_or_else(|| RecoveryError::Read {
            node: self.node.name.clone(),
            checkpoint: manifest.checkpoint,
            dir: PathBuf::new(),
            reason: "its routing table does not read back".into(),
        })?;
        let node_of = |core: CoreId| {
            (manifest.members.iter())
                .find(|m| m.cores.contains(&core))
                .map_or(self.node.name.clone(), |m| m.node.clone())
        };
        let mut wanted: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        for m in moves {
            wanted
                .entry(node_of(table.owner(m.slot)))
                .or_default()
                .insert(m.slot);
        }
        let c = self.checkpoints.as_ref().expect("checked by the caller");
        let mut parts: BTreeMap<u32, Vec<(u32, StagePart)>> = BTreeMap::new();
        let mut streams = Vec::new();
        for (node, slots) in wanted {
            let dir = if node == self.node.name {
                c.dir.path().to_path_buf()
            } else {
                (self.member_dirs.get(&node).cloned())
                    .ok_or_else(|| RecoveryError::NoStateDir(node.clone()))?
            };
            let read = |reason: String| RecoveryError::Read {
                node: node.clone(),
                checkpoint: manifest.checkpoint,
                dir: dir.clone(),
                reason,
            };
            let dead = lost.contains(node.as_str());
            let other = StateDir::other(&dir, dead).map_err(|e| read(e.to_string()))?;
            let identity = (c.app.as_str(), node.as_str(), c.cluster);
            let n_slots = self.table.n_slots();
            let (_, restore, _) = other
                .restore_exact(manifest.checkpoint, |r| {
                    decode(&self.dataflow, identity, n_slots, r, Some(&table))
                })
                .map_err(|e| read(e.to_string()))?;
            if dead {
                let durable = restore.offsets.into_iter().filter(|m| !m.stream.is_empty());
                streams.extend(durable.map(|m| (m.source, m.stream)));
            }
            for (stage, slot, part) in restore.per_core.into_values().flatten() {
                if slots.contains(&slot) {
                    parts.entry(slot).or_default().push((stage, part));
                }
            }
        }
        Ok((parts, streams))
    }

    /// Hands each restored slot to its new owner as its lost owner would have: to a core of
    /// this node as the slot itself, to one of another node as an archive over the link.
    fn hand_restored(&self, moves: &[Move], parts: &mut RestoredParts) {
        let mut scratch = self
            .dataflow
            .keyed(moves[0].from, &self.table, std::iter::empty());
        for m in moves {
            let slot_parts = parts.remove(&m.slot).unwrap_or_default();
            scratch.restore(
                slot_parts
                    .into_iter()
                    .map(|(stage, p)| (stage, m.slot, p))
                    .collect(),
            );
            let to = &self.cores[&m.to];
            if to.executor.is_some() {
                to.addr.send_control(CoreMsg::Adopt {
                    from: m.from,
                    slots: vec![scratch.hand_over(m.slot)],
                });
            } else {
                to.addr.send_control(CoreMsg::SendSlot {
                    from: m.from,
                    slot: scratch.send_off(m.slot),
                });
            }
        }
    }
}

fn missing(all: &[CoreId], heard: &BTreeSet<CoreId>) -> Vec<CoreId> {
    all.iter().filter(|c| !heard.contains(c)).copied().collect()
}
