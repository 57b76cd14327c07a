//! What travels between cores, and from a core to the coordinator: the messages, the address
//! of a core (on this node, or on another behind a [`RemotePeer`]), and core events.
//!
//! One vocabulary: what one core says to another ([`PeerMsg`], and batches) is the same value
//! whether it crosses a channel or a link; a link archives it with rkyv as it is. Only what has
//! no meaning outside a process (a socket, a reply channel, a peer's address) is node-local.

use std::future::Future;
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::archive::SlotArchive;
use crate::checkpoint::SourceMark;
use crate::dataflow::{Batch, MovedSlot, OutgoingSlot, Refused, SavedPart};
use crate::metrics::CoreStatus;
use crate::migration::ChangePlan;
use crate::routing::CoreId;
use crate::runtime::FileInput;

/// A source connection on its way to the core that will read it.
pub(crate) struct SourceConnection {
    pub source: usize,
    pub stream: TcpStream,
    /// Bytes a previous reader received but did not decode yet.
    pub pending: Vec<u8>,
    /// The largest event time a previous reader read (its watermark goes on from there).
    pub latest: Option<u64>,
    pub kind: ConnectionKind,
}

/// What a source connection carries, which its first frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnectionKind {
    /// Its first frame was not read yet.
    Unread,
    /// Frames; what a crash catches in flight is lost.
    Plain,
    /// A durable stream: its id, the frames of it routed so far, and the rewind it is in.
    Durable {
        id: crate::runtime::core::StreamId,
        position: u64,
        rewind: Box<crate::runtime::core::Rewind>,
    },
}

/// What one core says to another, on this node or across a link (where it travels as itself).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) enum PeerMsg {
    /// The sender routes nothing more at `epoch` (it switched to `epoch + 1`).
    Marker {
        from: CoreId,
        epoch: u64,
    },
    /// The sending core has no more batches for stage `stage` (for stage 0: its sources are
    /// closed and flushed; for a later one: every producer of the stage before is done, and
    /// its outputs are routed).
    ProducerDone {
        from: CoreId,
        stage: u32,
    },
    /// No message for stage `stage` older than `at` follows from the sender (`None`: it has no
    /// source connection to speak for, so it holds nobody back).
    Watermark {
        from: CoreId,
        stage: u32,
        at: Option<u64>,
        /// When the sender read the frames that moved it (monotonic ns): what a window it
        /// closes measures its latency from.
        ingress_ns: u64,
    },
    /// The sender gives slots up in change `change`: each stage's input `level` must not pass
    /// `at[level]` until every core of the change is done with it (`time::Watermarks`).
    Hold {
        change: u64,
        at: Vec<Option<u64>>,
    },
    /// The sender is done with change `change`: everything it emitted for it is ahead of this.
    ChangeDone {
        from: CoreId,
        change: u64,
    },
    /// Everything the sender routed to `stage` before checkpoint `checkpoint` is ahead of this;
    /// what follows belongs after it.
    Barrier {
        from: CoreId,
        checkpoint: u64,
        stage: u32,
    },
    /// Take checkpoint `checkpoint`: note where the replayable sources stand and send the
    /// stage-0 barriers.
    Checkpoint {
        checkpoint: u64,
        scope: Scope,
    },
    /// Checkpoint `checkpoint` is called off: apply what its alignment held back.
    CheckpointAbort {
        checkpoint: u64,
    },
    /// Checkpoint `checkpoint` is durable: exactly-once sinks may release its epochs.
    Commit {
        checkpoint: u64,
    },
    /// A slot's entities, handed over by their old owner on another node: one slot per
    /// message, so the frame it arrives in becomes the slot's storage. (A core never receives
    /// this: the receiving node checks the archive and hands the core a [`CoreMsg::Adopt`].)
    Handoff {
        from: CoreId,
        archive: SlotArchive,
    },
    /// The new owner adopted `slots`.
    HandoffAck {
        slots: Vec<u32>,
    },
    /// The new owner could not adopt `slot`; the old owner still has it.
    HandoffRejected {
        slot: u32,
        reason: String,
    },
    /// Every step of a change: start buffering for incoming slots. One message, so a core is
    /// woken (and answers) once per change, not once per step.
    Prepare(ChangePlan),
    /// Route with the next prepared step's table from now on.
    Switch,
    /// Switch to the prepared step of a recovery, which restores the slots of the `lost`
    /// nodes' cores from checkpoint `checkpoint` onto the survivors, and in the same action
    /// rewind every replayable source to where that checkpoint says it stood. `streams` are
    /// the durable streams lost nodes read, refused from now on.
    Recover {
        checkpoint: u64,
        lost: Vec<(String, Vec<CoreId>)>,
        streams: Vec<(u32, String)>,
    },
    /// The change ends early: forget the prepared steps not switched to yet.
    Abort,
    RemovePeer(CoreId),
    /// Stop reading sources; end after a `ProducerDone` for every stage from each of
    /// `producers` (this core included).
    Stop {
        producers: Vec<CoreId>,
    },
}

/// Which slots a checkpoint archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) enum Scope {
    /// Those changed since the last checkpoint.
    Changed,
    /// Every slot (the last attempt's archives were lost).
    Everything,
}

/// Why a peer's message cannot be delivered to a core of a cluster of `n_slots` slots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a message names slot {slot}, beyond the cluster's {n_slots} slots")]
pub(crate) struct SlotOutOfRange {
    pub slot: u32,
    pub n_slots: u32,
}

impl PeerMsg {
    /// Whether it travels on the data lane: in order with the batches around it.
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            PeerMsg::Marker { .. }
                | PeerMsg::ProducerDone { .. }
                | PeerMsg::Watermark { .. }
                | PeerMsg::Hold { .. }
                | PeerMsg::ChangeDone { .. }
                | PeerMsg::Barrier { .. }
        )
    }

    /// Checks the slot numbers a message from another node names, so a core never indexes past
    /// its tables. (A plan is checked whole when a core turns it into steps.)
    pub fn check_slots(&self, n_slots: u32) -> Result<(), SlotOutOfRange> {
        let slots: Vec<u32> = match self {
            PeerMsg::Handoff { archive, .. } => vec![archive.slot],
            PeerMsg::HandoffAck { slots } => slots.clone(),
            PeerMsg::HandoffRejected { slot, .. } => vec![*slot],
            _ => Vec::new(),
        };
        match slots.into_iter().find(|&s| s >= n_slots) {
            Some(slot) => Err(SlotOutOfRange { slot, n_slots }),
            None => Ok(()),
        }
    }
}

/// A file to read as a replayable source, from `offset`.
#[derive(Debug, Clone)]
pub(crate) struct FileSource {
    pub source: usize,
    pub input: FileInput,
    pub offset: u64,
}

/// A core's share of a checkpoint, for its node to write.
pub(crate) struct Snapshot {
    pub core: CoreId,
    pub checkpoint: u64,
    /// The slots (per stage) changed since the last checkpoint.
    pub parts: Vec<SavedPart>,
    /// Where the replayable sources this core reads stood at its barrier.
    pub sources: Vec<SourceMark>,
    /// Why this core could not take its share.
    pub error: Option<String>,
}

impl Snapshot {
    /// No share of `checkpoint` from `core`, and why.
    pub fn failed(core: CoreId, checkpoint: u64, error: String) -> Self {
        Snapshot {
            core,
            checkpoint,
            parts: Vec::new(),
            sources: Vec::new(),
            error: Some(error),
        }
    }
}

/// What travels on a core's channels.
pub(crate) enum CoreMsg {
    /// From another core.
    Peer(PeerMsg),
    /// Keyed messages from one source connection, in order.
    Batch(Batch),
    /// A source connection for this core to read.
    Connection(SourceConnection),
    /// A file for this core to read.
    ReadFile(FileSource),
    /// Slots handed over by core `from` (on this node, or checked by this node on their way
    /// from another), to adopt as they are.
    Adopt {
        from: CoreId,
        slots: Vec<MovedSlot>,
    },
    /// Core `by` of this node could not adopt a slot this core handed over: keep it.
    Refused {
        by: CoreId,
        refused: Refused,
    },
    /// A slot for a core of another node: the link archives it and sends it as a
    /// [`PeerMsg::Handoff`].
    SendSlot {
        from: CoreId,
        slot: Arc<dyn OutgoingSlot>,
    },
    AddPeers(Vec<(CoreId, CoreAddr)>),
    /// This core owns no slot any more: hand its source connections to `heirs` and report.
    Leave {
        heirs: Vec<CoreId>,
    },
    Status(flume::Sender<CoreStatus>),
    /// Reply with the latency recorded since the last such request, and start afresh.
    TakeLatency(flume::Sender<Histogram<u64>>),
    /// These cores' node was lost: expect nothing more from them.
    PeerLost(Vec<CoreId>),
    /// This node is leaving the cluster: shut the read side of every source connection (what
    /// they have received is still applied) and of any adopted later.
    CutSources,
    /// A core that left: flush the sink and end, but return from its executor only once
    /// `released` is disconnected (see [`CoreAddr::retire`]).
    Retire {
        released: std::sync::mpsc::Receiver<()>,
    },
}

impl From<PeerMsg> for CoreMsg {
    fn from(msg: PeerMsg) -> Self {
        CoreMsg::Peer(msg)
    }
}

/// What a core tells the coordinator, on its own node through a channel or from another node
/// over a link.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) enum CoreEvent {
    Prepared(CoreId),
    StepDone {
        core: CoreId,
        epoch: u64,
    },
    Adopted {
        entities: u32,
        bytes: u64,
    },
    Left(CoreId),
    Failed {
        core: CoreId,
        error: String,
    },
    /// Slots that were coming to `core` from cores lost mid-step, and never will.
    Forsaken {
        core: CoreId,
        slots: Vec<u32>,
    },
}

/// A boxed future, for the one async method of [`RemotePeer`] (a trait object cannot have an
/// `async fn`).
pub(crate) type Sending<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// Another node, as a core reaches the cores there: the cluster layer implements it with a
/// link, so a core never knows a link's type. Two lanes, as for a local core.
pub(crate) trait RemotePeer: Send + Sync {
    /// The node's name.
    fn node(&self) -> &str;
    /// Sends on the control lane (never waits). False if the link is closed.
    fn send_control(&self, core: CoreId, msg: CoreMsg) -> bool;
    /// Sends on the data lane, waiting while it is full.
    fn send_data(&self, core: CoreId, msg: CoreMsg) -> Sending<'_>;
    /// Sends on the data lane if it has room now; gives the message back if not.
    fn try_send_data(&self, core: CoreId, msg: CoreMsg) -> Result<(), CoreMsg>;
}

/// How to reach a core. Two lanes: `data` (bounded, FIFO per sender: batches, markers,
/// connections, `ProducerDone`, watermarks, `Hold`, `ChangeDone`, whose order matters) and `control` (unbounded, served first:
/// coordinator requests and handoffs, which must not wait behind a queue of batches). A core on
/// another node is reached through its node, which keeps both lanes.
#[derive(Clone)]
pub(crate) enum CoreAddr {
    Local {
        data: flume::Sender<CoreMsg>,
        control: flume::Sender<CoreMsg>,
    },
    Remote {
        core: CoreId,
        node: Arc<dyn RemotePeer>,
    },
}

impl CoreAddr {
    /// Sends on the control lane (unbounded: never waits). False if the core is gone.
    pub fn send_control(&self, msg: impl Into<CoreMsg>) -> bool {
        match self {
            CoreAddr::Local { control, .. } => control.send(msg.into()).is_ok(),
            CoreAddr::Remote { core, node } => node.send_control(*core, msg.into()),
        }
    }

    /// Sends on the data lane, waiting while it is full. False if the core is gone.
    pub async fn send_data(&self, msg: CoreMsg) -> bool {
        match self {
            CoreAddr::Local { data, .. } => data.send_async(msg).await.is_ok(),
            CoreAddr::Remote { core, node } => node.send_data(*core, msg).await,
        }
    }

    /// Sends on the data lane if it has room now; gives the message back if not (full, or the
    /// core is gone).
    pub fn try_send_data(&self, msg: CoreMsg) -> Result<(), CoreMsg> {
        match self {
            CoreAddr::Local { data, .. } => data.try_send(msg).map_err(|e| e.into_inner()),
            CoreAddr::Remote { core, node } => node.try_send_data(*core, msg),
        }
    }

    /// Tells a core on this node to retire. The core's executor ends only after this returns:
    /// the sending thread may still hold the waker of the core's inbox task for a moment after
    /// the message is in (flume drops a fired hook after waking it), and a waker of a glommio
    /// task dropped on another thread after its executor ended is queued to that executor
    /// forever, keeping the task and the executor's eventfd (issue 14 (10)).
    pub fn retire(&self) -> bool {
        let (release, released) = std::sync::mpsc::channel();
        let sent = self.send_control(CoreMsg::Retire { released });
        drop(release);
        sent
    }

    /// The data lane of a core on this node.
    pub fn local_data(&self) -> Option<&flume::Sender<CoreMsg>> {
        match self {
            CoreAddr::Local { data, .. } => Some(data),
            CoreAddr::Remote { .. } => None,
        }
    }

    /// The control lane of a core on this node.
    pub fn local_control(&self) -> Option<&flume::Sender<CoreMsg>> {
        match self {
            CoreAddr::Local { control, .. } => Some(control),
            CoreAddr::Remote { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_beyond_the_cluster_are_caught_before_a_core_sees_them() {
        let archive = |slot| SlotArchive {
            slot,
            entities: 0,
            checksum: 0,
            bytes: Default::default(),
            parts: Vec::new(),
        };
        let out = |slot| Err(SlotOutOfRange { slot, n_slots: 8 });
        let handoff = |slot| PeerMsg::Handoff {
            from: 0,
            archive: archive(slot),
        };
        assert_eq!(handoff(7).check_slots(8), Ok(()));
        assert_eq!(handoff(8).check_slots(8), out(8));
        let ack = PeerMsg::HandoffAck {
            slots: vec![3, u32::MAX],
        };
        assert_eq!(ack.check_slots(8), out(u32::MAX));
        let rejected = PeerMsg::HandoffRejected {
            slot: 9,
            reason: String::new(),
        };
        assert_eq!(rejected.check_slots(8), out(9));
        assert_eq!(PeerMsg::Switch.check_slots(8), Ok(()));
    }
}
