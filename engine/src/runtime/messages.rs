//! What travels between cores, and between a core and the coordinator: the messages, the
//! address of a core (on this node or through a link to another), and core events.

use std::net::TcpStream;
use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::archive::SlotArchive;
use crate::cluster::link::Link;
pub(crate) use crate::cluster::wire::CoreEvent;
use crate::dataflow::Batch;
use crate::metrics::CoreStatus;
use crate::migration::Transition;
use crate::routing::CoreId;

/// A source connection on its way to the core that will read it.
pub(crate) struct Handover {
    pub source: usize,
    pub stream: TcpStream,
    /// Bytes a previous reader received but did not decode yet.
    pub pending: Vec<u8>,
}

/// How to reach a core. Two lanes: `data` (bounded, FIFO per sender: batches, markers,
/// connections, `ProducerDone`, whose order matters) and `control` (unbounded, served first:
/// coordinator requests and handoffs, which must not wait behind a queue of batches). A core on
/// another node is reached through the link to that node, which keeps both lanes.
#[derive(Clone)]
pub(crate) enum CoreAddr {
    Local {
        data: flume::Sender<CoreMsg>,
        control: flume::Sender<CoreMsg>,
    },
    Remote {
        core: CoreId,
        link: Arc<Link>,
    },
}

impl CoreAddr {
    /// Sends on the control lane (unbounded: never waits). False if the core is gone.
    pub fn send_control(&self, msg: CoreMsg) -> bool {
        match self {
            CoreAddr::Local { control, .. } => control.send(msg).is_ok(),
            CoreAddr::Remote { core, link } => link.send_control(*core, msg),
        }
    }

    /// Sends on the data lane, waiting while it is full. False if the core is gone.
    pub async fn send_data(&self, msg: CoreMsg) -> bool {
        match self {
            CoreAddr::Local { data, .. } => data.send_async(msg).await.is_ok(),
            CoreAddr::Remote { core, link } => link.send_data(*core, msg).await,
        }
    }

    /// Sends on the data lane if it has room now; gives the message back if not (full, or the
    /// core is gone).
    pub fn try_send_data(&self, msg: CoreMsg) -> Result<(), CoreMsg> {
        match self {
            CoreAddr::Local { data, .. } => data.try_send(msg).map_err(|e| e.into_inner()),
            CoreAddr::Remote { core, link } => link.try_send_data(*core, msg),
        }
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

/// What travels on a core's channels.
pub(crate) enum CoreMsg {
    /// A source connection for this core to read.
    Connection(Handover),
    /// Keyed messages from one source connection, in order.
    Batch {
        batch: Batch,
    },
    /// The sender routes nothing more at `epoch` (it switched to `epoch + 1`).
    Marker {
        from: CoreId,
        epoch: u64,
    },
    /// Slots' entities, handed over by their old owner (several per message: one message per
    /// chunk of a step, not per slot, keeps the round trips few).
    Handoff {
        from: CoreId,
        archives: Vec<SlotArchive>,
    },
    /// The new owner installed `slots`.
    HandoffAck {
        slots: Vec<u32>,
    },
    /// The new owner could not install `slot`; the old owner still has it.
    HandoffRejected {
        slot: u32,
        reason: String,
    },
    /// Every step of a change, in epoch order: start buffering for incoming slots. One
    /// message, so a core is woken (and answers) once per change, not once per step.
    Prepare(Vec<Arc<Transition>>),
    /// Route with the prepared step's table from now on.
    Switch,
    AddPeers(Vec<(CoreId, CoreAddr)>),
    RemovePeer(CoreId),
    /// This core owns no slot any more: hand its source connections to `heirs` and report.
    Leave {
        heirs: Vec<CoreId>,
    },
    Status(flume::Sender<CoreStatus>),
    /// Reply with the latency recorded since the last such request, and start afresh.
    TakeLatency(flume::Sender<Histogram<u64>>),
    /// Stop reading sources; end after a `ProducerDone` from each of `producers` (this core
    /// included).
    Stop {
        producers: Vec<CoreId>,
    },
    /// The sending core has no more batches for anyone (its sources are closed and flushed).
    ProducerDone {
        from: CoreId,
    },
    /// These cores' node was lost: expect nothing more from them.
    PeerLost(Vec<CoreId>),
    /// A core that left: flush the sink and end.
    Retire,
}
