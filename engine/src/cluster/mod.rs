//! A node in a cluster: its local cores, its links to the other nodes, and what it does with a
//! message from another node. The coordinator (in `node/coordinator/`) stays the one place
//! that decides changes; to it a core on another node is a core like any other, reached through
//! a link (`CoreAddr::Remote`), whose events come back over a link.

pub(crate) mod link;
mod peers;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use hdrhistogram::serialization::Serializer;
use thiserror::Error;

use self::link::Link;
use self::peers::{Admitted, Closed, LinkEnd, Peers, Refusal, RefusalLog};
use self::wire::{Answer, JoinRequest, Lane, LinkSecret, Member, Question, Wire};
use crate::archive::SlotArchive;
use crate::dataflow::Dataflow;
use crate::metrics::latency_histogram;
use crate::routing::CoreId;
use crate::runtime::ask_cores;
use crate::runtime::messages::{CoreAddr, CoreEvent, CoreMsg, PeerMsg};

/// Why a member node's engine ends without a local stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The coordinator removed this node: its slots moved away.
    Departed,
    /// The coordinator stopped the cluster.
    ClusterStopped,
    /// The coordinator went away without a goodbye: this node stops on its own (with a state
    /// dir, it can join the coordinator again once it is back: the cluster restores together).
    CoordinatorLost,
    /// On the coordinator: a node was lost whose slots cannot come back alone (see
    /// `RecoveryError::rolls_back`): the whole cluster goes back to its last checkpoint. The
    /// coordinator stops its cores and cuts its members off (they join it again); started
    /// again with [`crate::Config::adopt`] naming the lost nodes, it runs their cores itself.
    Rollback,
}

/// Whether a node decides changes (the coordinator) or carries them out (a member, which
/// knows its coordinator's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    Coordinator,
    Member { coordinator: String },
}

/// Why a link to another node could not be opened.
#[derive(Debug, Error)]
pub enum LinkError {
    #[error("node {node} has a bad data address `{addr}`")]
    BadAddress {
        node: String,
        addr: String,
        #[source]
        error: std::net::AddrParseError,
    },
    #[error("cannot link to node {node} at {addr}")]
    Connect {
        node: String,
        addr: SocketAddr,
        #[source]
        error: std::io::Error,
    },
    #[error("node {node} joined, but this node was never told to expect it")]
    NotExpected { node: String },
    #[error("cannot make a link secret")]
    Secret(#[source] getrandom::Error),
    #[error("node {node} did not confirm within {waited:?} that it expects node {joiner}")]
    Unannounced {
        node: String,
        joiner: String,
        waited: Duration,
    },
}

/// How long the coordinator waits for each member to expect a joining node.
const EXPECT_WAIT: Duration = Duration::from_secs(10);

/// A question for the node layer, with where its answer goes.
pub(crate) type Upward = (Question, Reply);

/// Where the answer to a question goes: back on the link to the node that asked. The node
/// layer answers its questions (a checkpoint's part may take a while) on a thread of its own,
/// so the answering thread goes on with the others meanwhile.
pub(crate) struct Reply {
    node: Weak<Node>,
    to: String,
    id: u64,
}

impl Reply {
    pub fn send(self, answer: Answer) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        match node.link(&self.to) {
            Some(link) => {
                link.send_node(Wire::Answer {
                    id: self.id,
                    answer,
                });
            }
            None => {
                tracing::warn!(node = %node.name, "no link back to node {} to answer it", self.to)
            }
        }
    }
}

/// A node that went away without saying goodbye.
#[derive(Debug, Clone)]
pub struct LostNode {
    pub name: String,
    pub cores: Vec<CoreId>,
    pub reason: String,
}

pub(crate) struct Node {
    pub name: String,
    pub token: String,
    /// Where this node serves HTTP, or empty (the others link their dashboards to it).
    pub http: String,
    pub dataflow: Arc<Dataflow>,
    /// The cluster's slot count: a peer's message naming a slot beyond it is refused.
    pub n_slots: u32,
    /// Where the other nodes reach this one.
    pub data_addr: SocketAddr,
    /// The cores this node runs.
    pub local: RwLock<BTreeMap<CoreId, CoreAddr>>,
    /// The other members, by name.
    members: Mutex<BTreeMap<String, Member>>,
    /// Nodes announced but not linked to yet (a joining node), by name.
    expected: Mutex<BTreeMap<String, Member>>,
    /// Whom links are accepted from, with which secret; which lanes are live.
    peers: Mutex<Peers>,
    /// How many refused connections are logged.
    refusals: Mutex<RefusalLog>,
    links: Mutex<BTreeMap<String, Arc<Link>>>,
    /// Where core events go: the coordinator's channel, or (on a member) a forwarder's.
    pub events: flume::Sender<CoreEvent>,
    /// Whether this node is the coordinator (lost cores are reported to its migrations).
    pub role: Role,
    /// Questions asked and not answered yet: whom, and where the answer goes (dropped when
    /// that node is lost, so the asker stops waiting).
    pending: Mutex<HashMap<u64, (String, flume::Sender<Answer>)>>,
    /// Questions from other nodes, answered one at a time by a thread of their own (asking the
    /// cores may take a moment, and the link must keep delivering meanwhile).
    questions: flume::Sender<(String, u64, Question)>,
    next_ask: AtomicU64,
    lost: Mutex<Vec<LostNode>>,
    /// The links to lost nodes: what is routed there is dropped and counted.
    lost_links: Mutex<Vec<Arc<Link>>>,
    /// Where questions only the node layer can answer go (a part of a checkpoint to write,
    /// sources to open), with where to answer.
    pub upward: Mutex<Option<flume::Sender<Upward>>>,
    /// Told of every node lost (the coordinator recovers its slots).
    pub on_lost: Mutex<Option<flume::Sender<LostNode>>>,
    /// Acceptors take new source connections only while this is set.
    pub accepting: AtomicBool,
    pub open_sources: Arc<AtomicUsize>,
    /// Local cores told to stop by the coordinator.
    stopped_cores: Mutex<usize>,
    ending: flume::Sender<Ending>,
    pub ended: flume::Receiver<Ending>,
    closing: AtomicBool,
    /// The data port, to close when the node ends.
    listener: Mutex<Option<TcpListener>>,
    /// What this node's cores last published about themselves.
    pub board: crate::metrics::Board,
}

impl Node {
    /// Logs a refused connection, unless a flood of them has used up the log's budget (then it
    /// is counted, and the next one logged says how many were not).
    pub(crate) fn log_refusal(&self, what: std::fmt::Arguments<'_>) {
        let left_out = self.refusals.lock().unwrap().admit(Instant::now());
        match left_out {
            Some(0) => tracing::warn!(node = %self.name, "{what}"),
            Some(n) => {
                tracing::warn!(node = %self.name, "{what} ({n} more refusals were not logged)")
            }
            None => {}
        }
    }

    /// Whether `token` is this cluster's.
    pub fn token_matches(&self, token: &str) -> bool {
        quokka_io::same_secret(token, &self.token)
    }

    /// The node `config` describes (its name, token, slot count and HTTP address).
    pub fn new(
        config: &crate::runtime::Config,
        dataflow: Arc<Dataflow>,
        data_addr: SocketAddr,
        events: flume::Sender<CoreEvent>,
        role: Role,
    ) -> Arc<Self> {
        let (ending, ended) = flume::unbounded();
        let (questions, asked) = flume::unbounded();
        let node = Arc::new(Node {
            name: config.name.clone(),
            token: config.token.clone(),
            http: config.http.map(|a| a.to_string()).unwrap_or_default(),
            dataflow,
            n_slots: config.n_slots,
            data_addr,
            local: RwLock::default(),
            members: Mutex::default(),
            expected: Mutex::default(),
            peers: Mutex::default(),
            refusals: Mutex::new(RefusalLog::new(Instant::now())),
            links: Mutex::default(),
            events,
            role,
            pending: Mutex::default(),
            on_lost: Mutex::default(),
            questions,
            next_ask: AtomicU64::new(0),
            lost: Mutex::default(),
            lost_links: Mutex::default(),
            upward: Mutex::default(),
            accepting: AtomicBool::new(true),
            open_sources: Arc::default(),
            stopped_cores: Mutex::new(0),
            ending,
            ended,
            closing: AtomicBool::new(false),
            listener: Mutex::default(),
            board: crate::metrics::Board::default(),
        });
        let weak = Arc::downgrade(&node);
        std::thread::Builder::new()
            .name("quokka-answers".into())
            .spawn(move || answer_questions(&weak, &asked))
            .expect("spawn the answering thread");
        node
    }

    /// Ends this node's part in the cluster as `ending` says (its engine acts on it).
    pub fn end(&self, ending: Ending) {
        let _ = self.ending.send(ending);
    }

    pub fn is_coordinator(&self) -> bool {
        self.role == Role::Coordinator
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub fn keep_listener(&self, listener: &TcpListener) {
        *self.listener.lock().unwrap() = listener.try_clone().ok();
    }

    /// Accepts links from `member` (proved by its secret) from now on; [`Self::link_expected`]
    /// makes it a member.
    pub fn expect(&self, member: Member) {
        self.peers
            .lock()
            .unwrap()
            .expect(&member.name, member.secret);
        self.expected
            .lock()
            .unwrap()
            .insert(member.name.clone(), member);
    }

    /// Opens a link to the expected node `name` (one per lane, each saying the secret they
    /// share) and makes it a member; returns it. Its cores are reached through the link.
    pub fn link_expected(self: &Arc<Self>, name: &str) -> Result<Member, LinkError> {
        let member = self.expected.lock().unwrap().get(name).cloned();
        let member = member.ok_or_else(|| LinkError::NotExpected {
            node: name.to_string(),
        })?;
        let addr: SocketAddr = member
            .data_addr
            .parse()
            .map_err(|error| LinkError::BadAddress {
                node: member.name.clone(),
                addr: member.data_addr.clone(),
                error,
            })?;
        let link = Link::open(self, &member, addr).map_err(|error| LinkError::Connect {
            node: member.name.clone(),
            addr,
            error,
        })?;
        self.expected.lock().unwrap().remove(name);
        self.links.lock().unwrap().insert(member.name.clone(), link);
        self.members
            .lock()
            .unwrap()
            .insert(member.name.clone(), member.clone());
        Ok(member)
    }

    /// On the coordinator, before it welcomes node `joiner`: makes a fresh secret for each
    /// pair of the joiner and a member (this node included), has every member expect the
    /// joiner with its pair's secret (each confirms before this returns), and returns the
    /// members as the joiner is to know them, this node (with `own_cores`) first. If a member
    /// does not confirm, the ones that did forget the joiner again.
    pub fn expect_joiner(
        &self,
        join: &JoinRequest,
        cores: &[CoreId],
        own_cores: Vec<CoreId>,
    ) -> Result<Vec<Member>, LinkError> {
        let joiner = join.node.as_str();
        let joining = |secret| Member {
            name: joiner.to_string(),
            data_addr: join.data_addr.clone(),
            // Others' dashboards link to it with the token: only an address, nothing else.
            http: (join.http.parse::<SocketAddr>()).map_or(String::new(), |a| a.to_string()),
            cores: cores.to_vec(),
            secret,
        };
        let fresh = || {
            LinkSecret::random().map_err(|e| {
                self.forget_joiner(joiner);
                LinkError::Secret(e)
            })
        };
        let own = Member {
            name: self.name.clone(),
            data_addr: self.data_addr.to_string(),
            http: self.http.clone(),
            cores: own_cores,
            secret: fresh()?,
        };
        self.expect(joining(own.secret));
        let mut members = vec![own];
        for mut member in self.members() {
            member.secret = fresh()?;
            let question = Question::Expect(joining(member.secret));
            if self.ask(&member.name, question, EXPECT_WAIT) != Some(Answer::Done) {
                self.forget_joiner(joiner);
                return Err(LinkError::Unannounced {
                    node: member.name,
                    joiner: joiner.to_string(),
                    waited: EXPECT_WAIT,
                });
            }
            members.push(member);
        }
        Ok(members)
    }

    /// On the coordinator, when node `name` was expected but did not join after all: every
    /// node forgets it (a member too, unless it linked already).
    pub fn forget_joiner(&self, name: &str) {
        if self.link(name).is_some() {
            return;
        }
        self.remove_member(name);
        for member in self.members() {
            if let Some(link) = self.link(&member.name) {
                link.send_node(Wire::Gone {
                    node: name.to_string(),
                });
            }
        }
    }

    /// Checks an incoming link's hello (its token was checked already).
    fn admit(&self, node: &str, lane: Lane, secret: LinkSecret) -> Result<Admitted, Refusal> {
        self.peers.lock().unwrap().admit(node, lane, secret)
    }

    /// An admitted incoming link ended; a live link that broke means its node is lost.
    fn link_closed(&self, conn: &Admitted, end: LinkEnd, reason: &str) {
        let closed = self.peers.lock().unwrap().closed(conn, end);
        if closed == Closed::Lost {
            self.lost(&conn.node, reason);
        }
    }

    /// Forgets a member that left on purpose (or a node expected that did not join), accepts
    /// no more links from it, and closes the link to it.
    pub fn remove_member(&self, name: &str) {
        self.peers.lock().unwrap().forget(name);
        self.expected.lock().unwrap().remove(name);
        self.members.lock().unwrap().remove(name);
        let link = self.links.lock().unwrap().remove(name);
        if let Some(link) = link {
            link.close();
        }
    }

    pub fn members(&self) -> Vec<Member> {
        self.members.lock().unwrap().values().cloned().collect()
    }

    pub fn link(&self, name: &str) -> Option<Arc<Link>> {
        self.links.lock().unwrap().get(name).cloned()
    }

    /// The address of core `id` on node `at`.
    pub fn addr_of(&self, id: CoreId, at: &str) -> Option<CoreAddr> {
        if at == self.name {
            return self.local.read().unwrap().get(&id).cloned();
        }
        self.link(at).map(|link| CoreAddr::Remote {
            core: id,
            node: link,
        })
    }

    pub fn lost_nodes(&self) -> Vec<LostNode> {
        self.lost.lock().unwrap().clone()
    }

    /// Forgets that node `name` was lost (it never owned a slot: a join rolled back).
    pub fn forget_lost(&self, name: &str) {
        self.lost.lock().unwrap().retain(|l| l.name != name);
    }

    /// Asks node `name` a question; `None` if it does not answer within `wait`.
    pub fn ask(&self, name: &str, question: Question, wait: Duration) -> Option<Answer> {
        let link = self.link(name)?;
        let id = self.next_ask.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = flume::bounded(1);
        self.pending
            .lock()
            .unwrap()
            .insert(id, (name.to_string(), tx));
        link.send_node(Wire::Ask { id, question });
        let answer = rx.recv_deadline(Instant::now() + wait).ok();
        self.pending.lock().unwrap().remove(&id);
        answer
    }

    /// Says goodbye on every link and closes them (the last thing a node does).
    pub fn close_links(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(listener) = self.listener.lock().unwrap().take() {
            // Wakes the acceptor blocked in accept() (Linux returns EINVAL after shutdown).
            let _ = socket2::SockRef::from(&listener).shutdown(std::net::Shutdown::Both);
        }
        let links: Vec<_> = std::mem::take(&mut *self.links.lock().unwrap())
            .into_values()
            .collect();
        for link in links {
            link.close();
        }
        for link in std::mem::take(&mut *self.lost_links.lock().unwrap()) {
            tracing::warn!(
                node = %self.name,
                "{} messages for lost node {} were dropped",
                link.dropped(),
                link.node
            );
        }
    }

    /// Hands `msg` to local core `to` on the lane it belongs to.
    fn to_core(&self, to: CoreId, msg: CoreMsg) {
        let data_lane = match &msg {
            CoreMsg::Batch(_) => true,
            CoreMsg::Peer(m) => m.is_data(),
            _ => false,
        };
        let addr = self.local.read().unwrap().get(&to).cloned();
        let sent = match &addr {
            Some(CoreAddr::Local { data, .. }) if data_lane => data.send(msg).is_ok(),
            Some(CoreAddr::Local { control, .. }) => control.send(msg).is_ok(),
            _ => false,
        };
        if !sent {
            tracing::error!(node = %self.name, "a message for core {to}, which is not on this node, was dropped");
        }
    }

    /// A slot archive from core `old` of node `from` for core `to` here: checked on this
    /// (the link's) thread, so the new owner only adopts it; a bad one goes back rejected, and
    /// the old owner sends it again.
    fn adopt(&self, from: &str, old: CoreId, to: CoreId, archive: SlotArchive) {
        let slot = archive.slot;
        let local = self.local.read().unwrap();
        if !local.contains_key(&to) || local.contains_key(&old) {
            tracing::error!(node = %self.name, "dropped slot {slot} from node {from}: for core {to}, from core {old}, and this node runs {:?}", local.keys().collect::<Vec<_>>());
            return;
        }
        drop(local);
        match self.dataflow.receive_slot(archive, self.n_slots) {
            Ok(moved) => self.to_core(
                to,
                CoreMsg::Adopt {
                    from: old,
                    slots: vec![moved],
                },
            ),
            Err(e) => {
                tracing::error!(node = %self.name, "rejected slot {slot} from core {old} of node {from}: {e}");
                let reason = e.to_string();
                match self.addr_of(old, from) {
                    Some(addr) => {
                        addr.send_control(PeerMsg::HandoffRejected { slot, reason });
                    }
                    None => {
                        tracing::error!(node = %self.name, "node {from} is gone: cannot reject slot {slot}")
                    }
                }
            }
        }
    }

    /// Handles one message from node `from`. Peer input is checked here, where it is decoded:
    /// a core never sees a slot beyond the cluster's.
    pub fn deliver(self: &Arc<Self>, from: &str, msg: Wire) {
        match msg {
            Wire::Core { to, msg } => {
                if let Err(e) = msg.check_slots(self.n_slots) {
                    tracing::error!(node = %self.name, "dropped a message from node {from}: {e}");
                    return;
                }
                if let PeerMsg::Handoff { from: old, archive } = msg {
                    return self.adopt(from, old, to, archive);
                }
                let stop = matches!(msg, PeerMsg::Stop { .. });
                self.to_core(to, CoreMsg::Peer(msg));
                if stop {
                    let mut stopped = self.stopped_cores.lock().unwrap();
                    *stopped += 1;
                    if *stopped == self.local.read().unwrap().len() {
                        let _ = self.ending.send(Ending::ClusterStopped);
                    }
                }
            }
            Wire::Batch {
                to,
                from: producer,
                stage,
                bytes,
            } => match self.dataflow.decode_batch(stage, producer, &bytes.0) {
                Ok(batch) => self.to_core(to, CoreMsg::Batch(batch)),
                Err(e) => {
                    tracing::error!(node = %self.name, "dropped a garbled batch from node {from}: {e}")
                }
            },
            Wire::AddPeers { to, peers } => {
                let mut resolved = Vec::with_capacity(peers.len());
                for (id, at) in peers {
                    match self.addr_of(id, &at) {
                        Some(addr) => resolved.push((id, addr)),
                        None => {
                            tracing::error!(node = %self.name, "peer core {id} on unknown node {at}")
                        }
                    }
                }
                self.to_core(to, CoreMsg::AddPeers(resolved));
            }
            Wire::Event(e) => {
                let _ = self.events.send(e);
            }
            Wire::Joined { node } => {
                if let Err(e) = self.link_expected(&node) {
                    tracing::error!(node = %self.name, "node {node} joined but: {e}");
                }
            }
            Wire::Gone { node } => {
                self.remove_member(&node);
                self.forget_lost(&node);
            }
            Wire::Ask { id, question } => {
                let _ = self.questions.send((from.to_string(), id, question));
            }
            Wire::Answer { id, answer } => {
                if let Some((_, reply)) = self.pending.lock().unwrap().remove(&id) {
                    let _ = reply.send(answer);
                }
            }
            Wire::Depart => {
                let _ = self.ending.send(Ending::Departed);
            }
            Wire::Slot(_) => {
                tracing::error!(node = %self.name, "bug: a slot header from node {from} was not read as a handoff");
            }
            Wire::Hello { .. } | Wire::Admitted | Wire::Bye => {
                tracing::warn!(node = %self.name, "unexpected hello, admission or goodbye inside the link from node {from}");
            }
        }
    }

    fn local_controls(&self) -> Vec<flume::Sender<CoreMsg>> {
        self.local
            .read()
            .unwrap()
            .values()
            .filter_map(|a| a.local_control().cloned())
            .collect()
    }

    /// Statuses of this node's cores, with the node's name.
    pub fn local_status(&self) -> Vec<crate::metrics::CoreStatus> {
        let mut statuses = ask_cores(
            &self.local_controls(),
            CoreMsg::Status,
            Duration::from_secs(2),
        );
        for s in &mut statuses {
            s.node = self.name.clone();
        }
        statuses.sort_by_key(|s| s.core);
        statuses
    }

    fn answer(&self, question: Question) -> Answer {
        match question {
            Question::Status => Answer::Status(self.local_status()),
            Question::Latency => {
                let mut all = latency_histogram();
                for h in ask_cores(
                    &self.local_controls(),
                    CoreMsg::TakeLatency,
                    Duration::from_secs(10),
                ) {
                    let _ = all.add(&h);
                }
                let mut bytes = Vec::new();
                let _ =
                    hdrhistogram::serialization::V2Serializer::new().serialize(&all, &mut bytes);
                Answer::Latency(bytes)
            }
            Question::Quiesce => {
                self.accepting.store(false, Ordering::Release);
                Answer::Quiesced {
                    open_sources: self.open_sources.load(Ordering::Acquire) as u32,
                }
            }
            Question::Resume => {
                self.accepting.store(true, Ordering::Release);
                Answer::Done
            }
            Question::Ping => Answer::Done,
            Question::Expect(member) => {
                self.expect(member);
                Answer::Done
            }
            Question::CutSources => {
                self.accepting.store(false, Ordering::Release);
                for addr in self.local.read().unwrap().values() {
                    addr.send_control(CoreMsg::CutSources);
                }
                Answer::Done
            }
            // Handed up by `answer_questions`, never asked here.
            Question::WritePart { .. } | Question::OpenSources => {
                Answer::Failed(format!("node {} cannot answer that here", self.name))
            }
        }
    }

    /// Lets go of a member that does not answer: cuts the links to it (a writer blocked on its
    /// full socket gives up), then treats it as lost.
    pub fn sever(&self, name: &str, reason: &str) {
        if let Some(link) = self.link(name) {
            link.sever();
        }
        self.lost(name, reason);
    }

    /// A member went away without a goodbye: report it with its cores, stop expecting anything
    /// from them, and end any migration waiting on them. The survivors keep running; with a
    /// state dir the coordinator recovers its slots (`on_lost`).
    pub fn lost(&self, name: &str, reason: &str) {
        let Some(member) = self.members.lock().unwrap().remove(name) else {
            return;
        };
        if let Some(link) = self.links.lock().unwrap().remove(name) {
            link.lost();
            self.lost_links.lock().unwrap().push(link);
        }
        // No answer will come: whoever waits for one stops waiting.
        (self.pending.lock().unwrap()).retain(|_, (asked, _)| asked != name);
        tracing::error!(
            node = %self.name,
            "lost node {name} ({reason}): its cores {:?} and their slots are gone; messages for them are dropped (how many is logged when this node stops)",
            member.cores
        );
        for control in self.local_controls() {
            let _ = control.send(CoreMsg::PeerLost(member.cores.clone()));
        }
        if self.is_coordinator() {
            for &core in &member.cores {
                let _ = self.events.send(CoreEvent::Failed {
                    core,
                    error: format!("node {name} was lost ({reason})"),
                });
            }
        }
        let lost = LostNode {
            name: name.to_string(),
            cores: member.cores,
            reason: reason.to_string(),
        };
        self.lost.lock().unwrap().push(lost.clone());
        if let Some(tell) = &*self.on_lost.lock().unwrap() {
            let _ = tell.send(lost);
        }
        if matches!(&self.role, Role::Member { coordinator } if coordinator == name) {
            let _ = self.ending.send(Ending::CoordinatorLost);
        }
    }
}

/// Answers other nodes' questions, one at a time, until the node is gone.
fn answer_questions(weak: &Weak<Node>, asked: &flume::Receiver<(String, u64, Question)>) {
    for (from, id, question) in asked {
        let Some(node) = weak.upgrade() else { return };
        let reply = Reply {
            node: weak.clone(),
            to: from,
            id,
        };
        if matches!(question, Question::WritePart { .. } | Question::OpenSources) {
            let upward = node.upward.lock().unwrap().clone();
            // Not a member yet: the asker's deadline answers for it.
            if let Some(up) = upward {
                if let Err(flume::SendError((_, reply))) = up.send((question, reply)) {
                    reply.send(Answer::Failed(format!("node {} is ending", node.name)));
                }
            }
            continue;
        }
        reply.send(node.answer(question));
    }
}
