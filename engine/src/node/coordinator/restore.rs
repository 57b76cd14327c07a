//! Starting from a checkpoint. The coordinator reads back the newest complete one: its own
//! part, whose manifest names the members that hold the rest. It starts its cores with their
//! slots and keeps every source shut until those members are back. A member restores the
//! part the coordinator's welcome names, and opens its sources when told that the whole
//! cluster is back (a source read earlier could route to a core that is not there yet).

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::checkpoint::{info, Checkpoints};
use super::Coordinator;
use crate::checkpoint::{Manifest, MemberPart, SourceMark};
use crate::cluster::wire::{Answer, Question};
use crate::dataflow::{Dataflow, StagePart};
use crate::node::state_dir::{Restored, StateDir, Unusable};
use crate::routing::{CoreId, RoutingTable};
use crate::runtime::Config;

/// What a node starts from: the slots each of its cores gets back, and where its sources stood.
pub(crate) struct Restore {
    pub checkpoint: u64,
    pub table: RoutingTable,
    pub per_core: BTreeMap<CoreId, Vec<(u32, u32, StagePart)>>,
    /// Where each file source and durable stream of this node stood.
    pub offsets: Vec<SourceMark>,
    /// The members holding the rest of the checkpoint (on the coordinator).
    pub members: Vec<MemberPart>,
}

/// How a node's coordinator starts: from the newest checkpoint that restores, or afresh.
pub(super) struct Start {
    pub table: RoutingTable,
    /// This node's cores.
    pub ids: Vec<CoreId>,
    pub per_core: BTreeMap<CoreId, Vec<(u32, u32, StagePart)>>,
    pub offsets: Vec<SourceMark>,
    /// The checkpoint it restores (0: none).
    pub checkpoint: u64,
    /// The members to wait for, with the cores each ran.
    pub awaiting: BTreeMap<String, Vec<CoreId>>,
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
                r.map(|r| c.adopt(dataflow, r, &config.adopt))
            }
            None => None,
        };
        let Some(r) = restored else {
            return Start {
                table: RoutingTable::uniform(config.n_slots, config.cores as CoreId),
                ids: (0..config.cores as CoreId).collect(),
                per_core: BTreeMap::new(),
                offsets: Vec::new(),
                checkpoint: 0,
                awaiting: BTreeMap::new(),
            };
        };
        let elsewhere: Vec<CoreId> = r.members.iter().flat_map(|m| m.cores.clone()).collect();
        let ids: std::collections::BTreeSet<CoreId> = (0..r.table.n_slots())
            .map(|s| r.table.owner(s))
            .filter(|id| !elsewhere.contains(id))
            .collect();
        if ids.len() != config.cores {
            tracing::info!(
                "the checkpoint had {} cores on this node: starting with those (not --cores {}); grow or shrink to change",
                ids.len(),
                config.cores
            );
        }
        let awaiting: BTreeMap<String, Vec<CoreId>> =
            (r.members.into_iter()).map(|m| (m.node, m.cores)).collect();
        if !awaiting.is_empty() {
            let names: Vec<&str> = awaiting.keys().map(String::as_str).collect();
            tracing::warn!(
                "the checkpoint is of a cluster: no source is read until nodes {} are back (start each with its command and --state-dir)",
                names.join(", ")
            );
        }
        let mut per_core = r.per_core;
        warn_foreign(&mut per_core, |id| ids.contains(&id));
        Start {
            table: r.table,
            ids: ids.into_iter().collect(),
            per_core,
            offsets: r.offsets,
            checkpoint: r.checkpoint,
            awaiting,
        }
    }
}

impl Checkpoints {
    /// Reads back the newest checkpoint that restores whole (skipping, loudly, any that does
    /// not), into what each core starts with.
    pub fn restore(&mut self, dataflow: &Dataflow, n_slots: u32) -> Option<Restore> {
        let started = Instant::now();
        let (app, node, cluster) = (self.app.clone(), self.node.clone(), self.cluster);
        let (manifest, restore, bytes) =
            (self.dir).restore(|r| decode(dataflow, (&app, &node, cluster), n_slots, r, None))?;
        self.restored(manifest, bytes, started);
        Some(restore)
    }

    /// On a member: reads back this node's part of checkpoint `checkpoint` (0: none, the
    /// node starts empty), whose routing table the coordinator sent. Its other parts stay
    /// until its first checkpoint in this cluster removes them.
    pub fn restore_part(
        &mut self,
        dataflow: &Dataflow,
        checkpoint: u64,
        table: &RoutingTable,
    ) -> Result<Option<Restore>, Unusable> {
        if checkpoint == 0 {
            if let Some(newest) = self.dir.newest() {
                tracing::warn!(
                    "this state dir holds this node's parts of checkpoints up to {}, which the cluster does not restore: the first checkpoint taken now removes them",
                    newest.checkpoint
                );
            }
            return Ok(None);
        }
        let started = Instant::now();
        let (app, node, cluster) = (self.app.clone(), self.node.clone(), self.cluster);
        let (manifest, restore, bytes) = self.dir.restore_exact(checkpoint, |r| {
            decode(
                dataflow,
                (&app, &node, cluster),
                table.n_slots(),
                r,
                Some(table),
            )
        })?;
        self.restored(manifest, bytes, started);
        Ok(Some(restore))
    }

    fn restored(&mut self, manifest: Manifest, bytes: u64, started: Instant) {
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
    }

    /// After a rollback: restores the parts of the members lost for good (`adopt`) onto this
    /// node, read from their state dirs, so the cluster need not wait for them; one whose part
    /// does not read is waited for as any member.
    fn adopt(
        &self,
        dataflow: &Dataflow,
        mut r: Restore,
        adopt: &[(String, std::path::PathBuf)],
    ) -> Restore {
        for (name, dir) in adopt {
            let Some(at) = r.members.iter().position(|m| &m.node == name) else {
                continue;
            };
            let identity = (self.app.as_str(), name.as_str(), self.cluster);
            let part = StateDir::other(dir, true)
                .map_err(|e| e.to_string())
                .and_then(|d| {
                    (d.restore_exact(r.checkpoint, |p| {
                        decode(dataflow, identity, r.table.n_slots(), p, Some(&r.table))
                    }))
                    .map_err(|e| e.to_string())
                });
            match part {
                Ok((_, part, _)) => {
                    let lost = r.members.remove(at);
                    tracing::warn!(
                        "running the cores {:?} of node {name}, lost for good, with its part of checkpoint {} (from {})",
                        lost.cores,
                        r.checkpoint,
                        dir.display()
                    );
                    for (core, slots) in part.per_core {
                        r.per_core.entry(core).or_default().extend(slots);
                    }
                    // Its durable streams (a file is read on this node only).
                    let durable = part.offsets.into_iter().filter(|m| !m.stream.is_empty());
                    r.offsets.extend(durable);
                }
                Err(e) => tracing::error!(
                    "cannot read the part of node {name}, lost for good, from {}: {e}; waiting for it instead",
                    dir.display()
                ),
            }
        }
        r
    }

    /// Counts on after every checkpoint on disk (restored or not), so a number is never reused.
    pub fn skip_past_existing(&mut self) {
        if let Some(newest) = self.dir.newest() {
            self.next = self.next.max(newest.checkpoint + 1);
        }
    }
}

/// Drops (loudly) restored parts of cores this node does not run: a node's part stores only
/// its own cores' slots, so there should be none.
pub(super) fn warn_foreign(
    per_core: &mut BTreeMap<CoreId, Vec<(u32, u32, StagePart)>>,
    here: impl Fn(CoreId) -> bool,
) {
    per_core.retain(|&id, parts| {
        if !here(id) {
            tracing::warn!(
                core = id,
                "the checkpoint holds {} part(s) of core {id}, which does not run here: left out",
                parts.len()
            );
        }
        here(id)
    });
}

/// A checkpoint read back, as each core's slots: a part the app cannot read (another build of
/// it, or a bug: the bytes were checksummed) makes the whole checkpoint unusable. It must be
/// this app's, node's and cluster's, and a member's part must have the `table` the
/// coordinator's part has.
pub(super) fn decode(
    dataflow: &Dataflow,
    (app, node, cluster): (&str, &str, u64),
    n_slots: u32,
    r: Restored,
    table: Option<&RoutingTable>,
) -> Result<(Manifest, Restore, u64), Unusable> {
    if r.manifest.app != app || r.manifest.n_slots != n_slots {
        return Err(Unusable::OtherApp {
            app: r.manifest.app.clone(),
            n_slots: r.manifest.n_slots,
        });
    }
    if r.manifest.node != node {
        return Err(Unusable::OtherNode(r.manifest.node.clone()));
    }
    if r.manifest.cluster != cluster {
        return Err(Unusable::OtherCluster {
            found: r.manifest.cluster,
            cluster,
        });
    }
    let own = (r.manifest.table()).ok_or(Unusable::Table)?;
    if table.is_some_and(|t| *t != own) {
        return Err(Unusable::Table);
    }
    let mut per_core: BTreeMap<CoreId, Vec<(u32, u32, StagePart)>> = BTreeMap::new();
    for (part, archives) in r.parts {
        let (stage, slot) = (part.stage, part.slot);
        if slot >= n_slots {
            return Err(Unusable::Slot { slot, n_slots });
        }
        let p = dataflow
            .read_part(stage, slot, n_slots, archives)
            .map_err(|error| Unusable::Decode { stage, slot, error })?;
        (per_core.entry(own.owner(part.slot)).or_default()).push((part.stage, part.slot, p));
    }
    let restore = Restore {
        checkpoint: r.manifest.checkpoint,
        table: own,
        per_core,
        offsets: r.manifest.sources.clone(),
        members: r.manifest.members.clone(),
    };
    Ok((r.manifest, restore, r.bytes))
}

/// Whether this node reads its sources yet: shut while a restored cluster waits for its
/// members, open otherwise. Acceptors wait here before their first accept.
pub(crate) struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    pub fn new(open: bool) -> Self {
        Gate {
            open: Mutex::new(open),
            opened: Condvar::new(),
        }
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    /// Returns once the gate is open.
    pub fn wait(&self) {
        let open = self.open.lock().unwrap();
        drop(self.opened.wait_while(open, |open| !*open).unwrap());
    }
}

impl Coordinator {
    /// The members of a restored cluster that are not back yet.
    pub fn awaiting(&self) -> Vec<String> {
        self.awaiting.keys().cloned().collect()
    }

    /// This node's sources open: its file sources from where the checkpoint says, and its
    /// acceptors.
    pub(super) fn open_own_sources(&mut self) {
        let offsets = std::mem::take(&mut self.offsets);
        self.read_files(&offsets);
        self.sources.open();
    }

    /// A node of the restored checkpoint that came back and was lost again before the cluster
    /// was whole is waited for again, as if it had never come back: no source was read
    /// meanwhile, so nothing it held changed.
    pub(super) fn await_lost_again(&mut self) {
        if self.restored_members.is_empty() {
            return;
        }
        for lost in self.node.lost_nodes() {
            let Some(cores) = self.restored_members.get(&lost.name).cloned() else {
                continue;
            };
            tracing::warn!(
                "node {} was lost before the restored cluster was whole: waiting for it again",
                lost.name
            );
            self.let_go(&lost.name, &cores);
            self.awaiting.insert(lost.name, cores);
        }
        self.publish(None);
        self.publish_checkpoints();
    }

    /// Every node of a restored cluster is back: this node's sources open, then every
    /// member's.
    pub(super) fn open_sources(&mut self) {
        self.restored_members.clear();
        self.open_own_sources();
        for m in self.node.members() {
            match self.node.ask(&m.name, Question::OpenSources, OPEN_WAIT) {
                Some(Answer::Done) => {}
                other => tracing::error!(
                    "node {} did not open its sources ({other:?}): its sources stay shut",
                    m.name
                ),
            }
        }
        tracing::info!("the restored cluster is whole: sources open");
    }

    /// On a member: what the coordinator asks of the node layer (its part of a checkpoint,
    /// opening its sources).
    pub fn answer_upward(&mut self, question: Question) -> Answer {
        match question {
            Question::WritePart {
                checkpoint,
                keep,
                table,
            } => match table.to_table(self.table.n_slots()) {
                Ok(table) => self.write_part(checkpoint, &keep, &table),
                Err(e) => Answer::Failed(format!("a garbled routing table: {e}")),
            },
            Question::OpenSources => {
                self.open_own_sources();
                Answer::Done
            }
            other => Answer::Failed(format!("not a question for the node layer: {other:?}")),
        }
    }
}

/// How long the coordinator waits for a member to open its sources.
const OPEN_WAIT: Duration = Duration::from_secs(10);
