//! Links between nodes: TCP connections per ordered pair of nodes (FIFO is what the migration
//! protocol needs), `TCP_NODELAY`, written by threads of the sending node and read by threads
//! of the receiving one. A link keeps a core's two lanes apart, one connection each: the data
//! lane is bounded (a slow peer back-pressures the cores that route to it), and the control lane
//! (migration steps, handoffs, node messages) never waits behind data, as inside a node.

use std::io::{BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;

use super::peers::LinkEnd;
use super::wire::{self, Lane, LinkSecret, Member, Wire, MAX_LINK_FRAME};
use super::Node;
use crate::dataflow::OutgoingSlot;
use crate::routing::CoreId;
use crate::runtime::messages::{CoreAddr, CoreMsg, PeerMsg, RemotePeer, Sending};

/// Batches (and markers) queued for one remote node before the cores routing there wait.
const LINK_DATA_CAPACITY: usize = 16;

/// How long a node keeps trying to open a link, and waits for a peer's hello.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections on the data port whose hello is still awaited: beyond this, a new one is closed
/// at once, so connections that never speak cannot make a thread each.
const MAX_UNIDENTIFIED: usize = 16;

enum Outgoing {
    Core(CoreId, CoreMsg),
    Node(Wire),
    /// Write what is queued, say goodbye, close.
    Close,
}

/// The sending end of a link to one node.
pub(crate) struct Link {
    pub node: String,
    data: flume::Sender<Outgoing>,
    control: flume::Sender<Outgoing>,
    writers: Mutex<Vec<JoinHandle<()>>>,
    /// The lanes' sockets, to cut them when the peer stops answering.
    sockets: Vec<TcpStream>,
    /// Set once the node is lost: messages for it are dropped (and counted), not queued.
    lost: AtomicBool,
    /// Messages for the node dropped: after it was lost, or after the link broke.
    dropped: Arc<AtomicU64>,
}

impl Link {
    /// Connects to `peer` at `addr` (one connection per lane), says hello with the cluster
    /// token and the secret this node shares with `peer`, starts the writers.
    pub fn open(node: &Arc<Node>, peer: &Member, addr: SocketAddr) -> std::io::Result<Arc<Link>> {
        let (data, data_rx) = flume::bounded(LINK_DATA_CAPACITY);
        let (control, control_rx) = flume::unbounded();
        let (mut writers, mut sockets) = (Vec::new(), Vec::new());
        let dropped = Arc::new(AtomicU64::new(0));
        let lanes = [
            ("data", Lane::Data, data_rx),
            ("control", Lane::Control, control_rx),
        ];
        for (lane_name, lane, rx) in lanes {
            let out = connect(node, addr, lane, peer.secret)?;
            sockets.push(out.get_ref().try_clone()?);
            let (node, name, dropped) = (node.clone(), peer.name.clone(), dropped.clone());
            writers.push(
                std::thread::Builder::new()
                    .name(format!("quokka-{lane_name}-{name}"))
                    .spawn(move || write_link(&node, &name, out, &rx, &dropped))?,
            );
        }
        Ok(Arc::new(Link {
            node: peer.name.clone(),
            data,
            control,
            writers: Mutex::new(writers),
            sockets,
            lost: AtomicBool::new(false),
            dropped,
        }))
    }

    /// The node is lost: from now on messages for it are dropped and counted, not queued.
    pub fn lost(&self) {
        self.lost.store(true, Ordering::Release);
    }

    /// Messages for the node dropped so far (after it was lost, or after the link broke).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Acquire)
    }

    /// Counts a message for a lost node instead of queueing it.
    fn drop_if_lost(&self) -> bool {
        let lost = self.lost.load(Ordering::Acquire);
        if lost {
            self.dropped.fetch_add(1, Ordering::AcqRel);
        }
        lost
    }

    /// A message for the node itself (not one of its cores).
    pub fn send_node(&self, msg: Wire) -> bool {
        self.control.send(Outgoing::Node(msg)).is_ok()
    }

    /// Cuts the link's sockets: a writer blocked on a peer that does not read gives up, and
    /// what is queued for the peer is dropped (and counted).
    pub fn sever(&self) {
        for socket in &self.sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Writes everything queued, says goodbye and closes; returns when the writers are done.
    pub fn close(&self) {
        let _ = self.data.send(Outgoing::Close);
        let _ = self.control.send(Outgoing::Close);
        for writer in std::mem::take(&mut *self.writers.lock().unwrap()) {
            let _ = writer.join();
        }
    }
}

impl RemotePeer for Link {
    fn node(&self) -> &str {
        &self.node
    }

    fn send_control(&self, core: CoreId, msg: CoreMsg) -> bool {
        self.drop_if_lost() || self.control.send(Outgoing::Core(core, msg)).is_ok()
    }

    fn send_data(&self, core: CoreId, msg: CoreMsg) -> Sending<'_> {
        Box::pin(async move {
            self.drop_if_lost()
                || self
                    .data
                    .send_async(Outgoing::Core(core, msg))
                    .await
                    .is_ok()
        })
    }

    fn try_send_data(&self, core: CoreId, msg: CoreMsg) -> Result<(), CoreMsg> {
        if self.drop_if_lost() {
            return Ok(());
        }
        self.data
            .try_send(Outgoing::Core(core, msg))
            .map_err(|e| match e.into_inner() {
                Outgoing::Core(_, msg) => msg,
                _ => unreachable!("only a core message was sent"),
            })
    }
}

fn connect(
    node: &Node,
    addr: SocketAddr,
    lane: Lane,
    secret: LinkSecret,
) -> std::io::Result<BufWriter<TcpStream>> {
    let deadline = Instant::now() + LINK_TIMEOUT;
    let stream = loop {
        match TcpStream::connect_timeout(&addr, LINK_TIMEOUT) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    stream.set_nodelay(true)?;
    let mut out = BufWriter::with_capacity(1 << 16, stream);
    let hello = Wire::Hello {
        node: node.name.clone(),
        lane,
        token: node.token.clone(),
        secret,
    };
    wire::write(&mut out, &hello)?;
    out.flush()?;
    // The link is open once the peer says it admitted the hello; a refusal is an error here,
    // not a connection that silently drops what is written to it.
    let stream = out.get_ref();
    stream.set_read_timeout(Some(LINK_TIMEOUT))?;
    match wire::read(&mut &*stream, &mut AlignedVec::new(), 4096) {
        Ok(Wire::Admitted) => Ok(out),
        Ok(_) => Err(std::io::Error::other(
            "it answered the hello with something else",
        )),
        Err(e) => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("it did not admit this node's hello ({e}); its log says why"),
        )),
    }
}

/// A writer thread: writes one lane's messages, flushing whenever the lane is empty. After a
/// write error it keeps taking messages (and drops them) so no core ever waits on a dead link;
/// this node's reader of that peer's link reports the loss.
fn write_link(
    node: &Node,
    peer: &str,
    out: BufWriter<TcpStream>,
    lane: &flume::Receiver<Outgoing>,
    dropped: &AtomicU64,
) {
    let mut w = LinkWriter {
        node,
        peer,
        out,
        broken: false,
        dropped,
        archive_buf: AlignedVec::new(),
    };
    loop {
        let next = match lane.try_recv() {
            Ok(n) => n,
            Err(_) => {
                w.flush();
                match lane.recv() {
                    Ok(n) => n,
                    Err(_) => break,
                }
            }
        };
        match next {
            Outgoing::Core(core, CoreMsg::SendSlot { from, slot }) => {
                w.send_slot(core, from, &*slot)
            }
            Outgoing::Core(core, msg) => w.write(to_wire(node, core, msg)),
            Outgoing::Node(msg) => w.write(Some(msg)),
            Outgoing::Close => {
                if !w.broken {
                    w.write(Some(Wire::Bye));
                }
                break;
            }
        }
    }
    if w.broken {
        let n = w.dropped.load(Ordering::Acquire);
        tracing::warn!(node = %node.name, "{n} messages for node {peer} were dropped after its link broke");
    }
    w.flush();
    let _ = w.out.get_ref().shutdown(Shutdown::Write);
}

struct LinkWriter<'a> {
    node: &'a Node,
    peer: &'a str,
    out: BufWriter<TcpStream>,
    broken: bool,
    dropped: &'a AtomicU64,
    /// Where slots are archived, one after the other (warm memory, no allocation per slot).
    archive_buf: AlignedVec,
}

impl LinkWriter<'_> {
    /// Archives a slot handed off by core `from` here, on the link's thread, and writes it.
    fn send_slot(&mut self, to: CoreId, from: CoreId, slot: &dyn OutgoingSlot) {
        if self.broken {
            self.dropped.fetch_add(1, Ordering::AcqRel);
            return;
        }
        match slot.archive_in(std::mem::take(&mut self.archive_buf)) {
            Ok(archive) => {
                if let Err(e) = wire::write_slot(&mut self.out, to, from, &archive) {
                    self.fail(&e);
                }
                self.archive_buf = archive.bytes;
            }
            Err(e) => {
                // The old owner still has the slot: a rejection makes it try again, and fail
                // the change if it cannot.
                tracing::error!(node = %self.node.name, "cannot archive slot {} for node {}: {e}", slot.slot(), self.peer);
                let (slot, reason) = (slot.slot(), e.to_string());
                let rejected = PeerMsg::HandoffRejected { slot, reason };
                self.node.to_core(from, CoreMsg::Peer(rejected));
            }
        }
    }

    fn write(&mut self, msg: Option<Wire>) {
        let Some(msg) = msg else { return };
        if self.broken {
            self.dropped.fetch_add(1, Ordering::AcqRel);
        } else if let Err(e) = wire::write(&mut self.out, &msg) {
            self.fail(&e);
        }
    }

    fn flush(&mut self) {
        if !self.broken {
            if let Err(e) = self.out.flush() {
                self.fail(&e);
            }
        }
    }

    fn fail(&mut self, e: &dyn std::fmt::Display) {
        tracing::error!(node = %self.node.name, "link to node {} broke: {e}", self.peer);
        self.broken = true;
    }
}

/// A core message as it crosses to another node: a core's own message as itself, a batch as
/// the app's archive of it, peers by the name of the node that runs them. Messages that only
/// make sense inside a node (connections, replies through channels) never reach a link; if one
/// does, it is a bug, logged.
fn to_wire(node: &Node, to: CoreId, msg: CoreMsg) -> Option<Wire> {
    Some(match msg {
        CoreMsg::Peer(msg) => Wire::Core { to, msg },
        CoreMsg::Batch(batch) => match node.dataflow.encode_batch(&batch) {
            Ok(bytes) => Wire::Batch {
                to,
                from: batch.from,
                stage: batch.stage,
                bytes: wire::Payload(bytes),
            },
            Err(e) => {
                tracing::error!(node = %node.name, "cannot encode a batch for core {to}: {e}");
                return None;
            }
        },
        CoreMsg::AddPeers(peers) => Wire::AddPeers {
            to,
            peers: peers
                .iter()
                .map(|(id, addr)| {
                    let at = match addr {
                        CoreAddr::Local { .. } => node.name.clone(),
                        CoreAddr::Remote { node, .. } => node.node().to_string(),
                    };
                    (*id, at)
                })
                .collect(),
        },
        CoreMsg::Connection(_)
        | CoreMsg::ReadFile(_)
        | CoreMsg::SendSlot { .. }
        | CoreMsg::Adopt { .. }
        | CoreMsg::Refused { .. }
        | CoreMsg::Leave { .. }
        | CoreMsg::Status(_)
        | CoreMsg::TakeLatency(_)
        | CoreMsg::Retire { .. }
        | CoreMsg::CutSources
        | CoreMsg::PeerLost(_) => {
            tracing::error!(node = %node.name, "bug: a node-local message was addressed to remote core {to}");
            return None;
        }
    })
}

/// Accepts links from other nodes for as long as the listener is open.
pub(crate) fn serve(node: Arc<Node>, listener: TcpListener) {
    node.keep_listener(&listener);
    std::thread::Builder::new()
        .name("quokka-links".into())
        .spawn(move || {
            let unidentified = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if unidentified.fetch_add(1, Ordering::AcqRel) >= MAX_UNIDENTIFIED {
                            unidentified.fetch_sub(1, Ordering::AcqRel);
                            node.log_refusal(format_args!("refused a connection on the data port: {MAX_UNIDENTIFIED} others have not said hello yet"));
                            continue;
                        }
                        let (node, count) = (node.clone(), unidentified.clone());
                        let spawned = std::thread::Builder::new()
                            .name("quokka-link-in".into())
                            .spawn(move || read_link(&node, stream, &count));
                        if let Err(e) = spawned {
                            unidentified.fetch_sub(1, Ordering::AcqRel);
                            tracing::error!("cannot start a link reader: {e}");
                        }
                    }
                    Err(_) if node.is_closing() => return,
                    Err(e) => {
                        tracing::warn!(node = %node.name, "accepting a link failed: {e}");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        })
        .expect("spawn link acceptor");
}

/// The reader thread of one incoming link: checks the hello (protocol version, cluster token,
/// then the secret this node shares with the node it names, and that the lane has no live
/// connection), then hands every message to the node. A live link that ends without a goodbye
/// is a lost node; a refused connection changes nothing.
/// A link's socket as its reader reads it. Until the hello is in, a read waits only for what is
/// left of the hello's deadline: a timeout per read would let a peer that sends a byte now and
/// then hold one of the few places for connections without a hello for hours.
struct Incoming {
    stream: TcpStream,
    hello_by: Option<Instant>,
}

impl std::io::Read for Incoming {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(by) = self.hello_by {
            let left = by.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        self.stream.read(buf)
    }
}

fn read_link(node: &Arc<Node>, stream: TcpStream, unidentified: &AtomicUsize) {
    let from_addr = stream
        .peer_addr()
        .map_or_else(|_| "unknown address".into(), |a| a.to_string());
    let incoming = Incoming {
        stream,
        hello_by: Some(Instant::now() + LINK_TIMEOUT),
    };
    let mut reader = BufReader::with_capacity(1 << 16, incoming);
    let mut buf = AlignedVec::new();
    let hello = wire::read(&mut reader, &mut buf, 4096);
    unidentified.fetch_sub(1, Ordering::AcqRel);
    let conn = match hello {
        Ok(Wire::Hello {
            node: peer, token, ..
        }) if !node.token_matches(&token) => {
            node.log_refusal(format_args!(
                "refused a link from {from_addr} (node `{peer}`): wrong cluster token"
            ));
            return;
        }
        Ok(Wire::Hello {
            node: peer,
            lane,
            secret,
            ..
        }) => match node.admit(&peer, lane, secret) {
            Ok(conn) => conn,
            Err(refusal) => {
                node.log_refusal(format_args!("refused a link from {from_addr}: {refusal}"));
                return;
            }
        },
        Ok(_) => {
            node.log_refusal(format_args!(
                "refused a link from {from_addr}: it did not start with a hello"
            ));
            return;
        }
        Err(e) => {
            node.log_refusal(format_args!(
                "refused a connection on the data port from {from_addr}: {e}"
            ));
            return;
        }
    };
    reader.get_mut().hello_by = None;
    let _ = reader.get_ref().stream.set_read_timeout(None);
    // One write, so the answer leaves in one segment.
    if let Err(e) = (&reader.get_ref().stream).write_all(&wire::admitted_frame()) {
        node.link_closed(&conn, LinkEnd::Broken, &e.to_string());
        return;
    }
    let peer = &conn.node;
    tracing::debug!(node = %node.name, "{:?} link from node {peer} ({from_addr}) open", conn.lane);
    let reason = loop {
        match wire::read(&mut reader, &mut buf, MAX_LINK_FRAME) {
            Ok(Wire::Bye) => {
                tracing::debug!(node = %node.name, "{:?} link from node {peer} closed", conn.lane);
                node.link_closed(&conn, LinkEnd::Goodbye, "");
                return;
            }
            Ok(msg) => node.deliver(peer, msg),
            Err(e) => break e.to_string(),
        }
    };
    node.link_closed(&conn, LinkEnd::Broken, &reason);
}
