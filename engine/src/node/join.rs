//! Joining and leaving a cluster over the control protocol: a node's join (request, welcome,
//! links, cores, ready), the coordinator's side of it (`admit`), and a member's request to leave.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quokka_io::control::{
    Client, ControlError, Request, Response, Session, Step, Timeouts, JOIN_ANSWER, READY_DEADLINE,
};
use thiserror::Error;

use super::coordinator::{Checkpoints, Coordinator};
use super::state_dir::StateDir;
use super::{ChangeError, ChangeReport, Engine, StartError, Starting};
use crate::app::App;
use crate::cluster::wire::{self, JoinRequest, Welcome, WireError};
use crate::cluster::{link, Ending, LinkError, Node, Role};
use crate::runtime::messages::CoreMsg;
use crate::runtime::Config;

/// How long a node coming back to a restored cluster may take to restore its part and say it
/// is ready (the cluster reads nothing until it is back anyway).
const RESTORE_READY: Duration = Duration::from_secs(600);

/// How long a joining node with a state dir waits behind a change in progress (another
/// node's join) before it is refused.
const JOIN_TURN: Duration = Duration::from_secs(10);

/// How often a leaving member looks whether its source connections have closed.
const SOURCES_POLL: Duration = Duration::from_millis(10);

/// How a member's source connections ended before it leaves the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcesClosed {
    /// Their senders closed them all within the grace period.
    BySenders,
    /// This node shut the read side of `cut` connections still open (after the grace period,
    /// or when told to cut it short); what they had received was applied.
    Cut { cut: usize },
    /// Cut, but `open` connections had still not finished reading what they received when
    /// told to stop waiting.
    StillOpen { open: usize },
}

/// Why a join, or a member's request to leave, did not go through.
#[derive(Debug, Error)]
pub enum JoinError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{0}")]
    Refused(String),
    #[error("garbled welcome")]
    Garbled(#[source] WireError),
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    #[error("the welcome lists no coordinator")]
    NoCoordinator,
    #[error("bad sink address `{addr}`")]
    SinkAddress {
        addr: String,
        #[source]
        error: std::net::AddrParseError,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("this node is the coordinator")]
    IsCoordinator,
    // The reason is the source only, so `{:#}` shows it once.
    #[error("its --state-dir holds this node's parts of another cluster's checkpoints (was the coordinator started with another --state-dir?); they are kept: to start this node afresh, give it an empty state dir")]
    OtherCluster(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot restore this node's part of checkpoint {checkpoint}")]
    Restore {
        checkpoint: u64,
        #[source]
        error: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Engine {
    /// Joins the cluster whose coordinator listens for control at `coordinator`: the
    /// coordinator checks the app, slot count and token, this node links to every member and
    /// starts its cores, then slots move to them. Returns once the join is complete, with the
    /// coordinator's report of the change. `outputs`, if not empty, replace the cluster's sink
    /// addresses here (one per sink of the app).
    pub fn join(
        app: &App,
        config: Config,
        coordinator: SocketAddr,
        outputs: Vec<SocketAddr>,
    ) -> Result<(Engine, ChangeReport), StartError> {
        let mut config = Self::check(app, config, Starting::Joining)?;
        let refused = |error: JoinError| StartError::Join {
            addr: coordinator,
            error,
        };
        // Opened first: a state dir in use or of another app ends the join before it starts.
        let mut checkpoints = match &config.state_dir {
            Some(dir) => Some(Checkpoints::open(
                StateDir::open(dir, app.name(), config.n_slots)?,
                app.name(),
                &config.name,
            )?),
            None => None,
        };
        let conversation = |e: ControlError| refused(JoinError::Control(e));
        let mut control =
            Client::connect(coordinator, Timeouts::default()).map_err(conversation)?;
        let local_ip = control.local_addr().map_err(conversation)?.ip();
        let data = Self::bind_data(config.data.unwrap_or((local_ip, 0).into()))?;
        let data_addr = data.local_addr().expect("bound");
        let request = JoinRequest {
            version: wire::VERSION,
            node: config.name.clone(),
            app: app.name().to_string(),
            n_slots: config.n_slots,
            cores: config.cores as u16,
            data_addr: data_addr.to_string(),
            state_dir: checkpoints.is_some(),
            state_path: (checkpoints.as_ref())
                .map(|c| c.status.state_dir.display().to_string())
                .unwrap_or_default(),
            http: config.http.map(|a| a.to_string()).unwrap_or_default(),
        };
        let welcome = match control
            .request(&config.token, &Request::Join(wire::encode_join(&request)))
            .map_err(conversation)?
        {
            Response::Welcome(body) => {
                wire::decode_welcome(&body).map_err(|e| refused(JoinError::Garbled(e)))?
            }
            Response::Error(e) => return Err(refused(JoinError::Refused(e))),
            Response::Ok(text) => return Err(refused(JoinError::Unexpected(text))),
            Response::Joined(_) => {
                return Err(refused(JoinError::Unexpected(
                    "a report before Ready".into(),
                )))
            }
        };
        let Welcome {
            members,
            outputs: cluster_outputs,
            ..
        } = &welcome;
        let Some(lead) = members.first().map(|m| m.name.clone()) else {
            return Err(refused(JoinError::NoCoordinator));
        };
        config.outputs = if outputs.is_empty() {
            (cluster_outputs.iter())
                .map(|addr| {
                    addr.parse().map_err(|error| {
                        refused(JoinError::SinkAddress {
                            addr: addr.clone(),
                            error,
                        })
                    })
                })
                .collect::<Result<_, _>>()?
        } else {
            outputs
        };
        if config.outputs.len() != app.sinks().len() {
            return Err(StartError::Sinks {
                app: app.name().into(),
                sinks: app.sinks().to_vec(),
                given: config.outputs.len(),
            });
        }
        let guarantee = if welcome.exactly_once {
            crate::runtime::Guarantee::ExactlyOnce
        } else {
            crate::runtime::Guarantee::AtLeastOnce
        };
        if guarantee != config.guarantee {
            tracing::info!(
                "the cluster's outputs are {guarantee:?}: this node's are too (not --guarantee {:?})",
                config.guarantee
            );
            config.guarantee = guarantee;
        }
        let table = welcome
            .table
            .to_table(config.n_slots)
            .map_err(|e| refused(JoinError::Garbled(e)))?;
        let restore = match &mut checkpoints {
            Some(c) => {
                c.join_cluster(welcome.cluster)
                    .map_err(|error| refused(JoinError::OtherCluster(error.into())))?;
                c.restore_part(&app.dataflow, welcome.restore, &table)
                    .map_err(|error| {
                        refused(JoinError::Restore {
                            checkpoint: welcome.restore,
                            error: error.into(),
                        })
                    })?
            }
            None => None,
        };
        if welcome.restore > 0 && welcome.cores.len() != config.cores {
            tracing::info!(
                "restoring this node's {} core(s) of checkpoint {} (not --cores {}); grow or shrink to change",
                welcome.cores.len(),
                welcome.restore,
                config.cores
            );
        }
        let (forward, forwarded) = flume::unbounded();
        let node = Node::new(
            &config,
            app.dataflow.clone(),
            data_addr,
            forward.clone(),
            Role::Member {
                coordinator: lead.clone(),
            },
        );
        // Each member proves itself with the secret the welcome gives for it.
        for m in members {
            node.expect(m.clone());
        }
        link::serve(node.clone(), data);
        for m in members {
            node.link_expected(&m.name)
                .map_err(|e| refused(JoinError::Link(e)))?;
        }
        // This node's core events go to the coordinator.
        std::thread::Builder::new()
            .name("quokka-events".into())
            .spawn({
                let node = node.clone();
                move || {
                    for e in forwarded {
                        if let Some(link) = node.link(&lead) {
                            link.send_node(wire::Wire::Event(e));
                        }
                    }
                }
            })
            .expect("spawn event forwarder");
        let coordinator_state = Coordinator::start_member(
            Arc::new(config),
            app.dataflow.clone(),
            node.clone(),
            (forward, flume::unbounded().1),
            &welcome,
            table,
            (checkpoints, restore),
        )?;
        let lead_name = welcome.members[0].name.clone();
        let engine =
            Self::serve_inputs(app, coordinator_state, node, Some((coordinator, lead_name)))?;
        // The cores run and the links are open: now the coordinator moves slots here.
        let error = match control.request_within(&engine.node.token, &Request::Ready, JOIN_ANSWER) {
            Ok(Response::Joined(body)) => {
                // The join went through and slots moved here: a report that does not read
                // (which a coordinator of this protocol version never sends) must not make this
                // node retire cores that own slots.
                let report = ChangeReport::decode(&body).unwrap_or_else(|e| {
                    tracing::warn!("joined, but the coordinator's report is garbled: {e}");
                    ChangeReport::default()
                });
                return Ok((engine, report));
            }
            Ok(Response::Error(e)) => JoinError::Refused(e),
            Err(e) => JoinError::Control(e),
            Ok(Response::Welcome(_)) => JoinError::Unexpected("a second welcome".into()),
            Ok(Response::Ok(text)) => JoinError::Unexpected(text),
        };
        engine.finish(Ending::Departed);
        Err(refused(error))
    }

    /// On a member about to leave by itself (a service manager's SIGTERM): stops accepting
    /// source connections, waits up to `grace` for the open ones to close, then shuts the read
    /// side of those still open (everything they received is still applied) and waits until
    /// they have finished. A message on `hurry` ends the grace period at once; a second one
    /// stops waiting for the cut connections. Then [`Self::request_leave`] can go through (a
    /// TCP connection cannot move to another process, so the coordinator refuses to remove a
    /// node with open ones).
    pub fn close_sources<T>(&self, grace: Duration, hurry: &flume::Receiver<T>) -> SourcesClosed {
        let node = &self.node;
        node.accepting.store(false, Ordering::Release);
        let open = || node.open_sources.load(Ordering::Acquire);
        let deadline = Instant::now() + grace;
        // Polled: the count is shared with the acceptors and every core, and this waits for
        // at most `grace` anyway.
        let wait = |until: Option<Instant>| loop {
            if open() == 0 {
                return true;
            }
            let step = match until {
                Some(t) if Instant::now() >= t => return false,
                Some(t) => t
                    .saturating_duration_since(Instant::now())
                    .min(SOURCES_POLL),
                None => SOURCES_POLL,
            };
            match hurry.recv_timeout(step) {
                Ok(_) => return false,
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => std::thread::sleep(step),
            }
        };
        if wait(Some(deadline)) {
            return SourcesClosed::BySenders;
        }
        let cut = open();
        tracing::info!(
            node = %node.name,
            "closing {cut} source connection(s) still open: no more is read from them, what they received is applied"
        );
        for addr in node.local.read().unwrap().values() {
            addr.send_control(CoreMsg::CutSources);
        }
        if wait(None) {
            SourcesClosed::Cut { cut }
        } else {
            SourcesClosed::StillOpen { open: open() }
        }
    }

    /// On a member: asks the coordinator to remove this node. On success the coordinator has
    /// moved every slot away and [`Self::ended`] reports [`Ending::Departed`].
    pub fn request_leave(&self) -> Result<String, JoinError> {
        let Some((addr, _)) = self.joined else {
            return Err(JoinError::IsCoordinator);
        };
        let asked = Client::connect(addr, Timeouts::default()).and_then(|mut control| {
            control.request(
                &self.node.token,
                &Request::RemoveNode(self.node.name.clone()),
            )
        });
        match asked? {
            Response::Ok(text) => Ok(text),
            Response::Error(e) => Err(JoinError::Refused(e)),
            Response::Welcome(_) => Err(JoinError::Unexpected("a welcome".into())),
            Response::Joined(_) => Err(JoinError::Unexpected("a join report".into())),
        }
    }

    /// On the coordinator: the conversation with a joining node, after its `Join` request
    /// arrived on `session`. Answers with a welcome, waits for the node's `Ready` (at most
    /// [`READY_DEADLINE`], the change lock held meanwhile), moves slots to it; returns the final
    /// answer for the joining node.
    pub fn admit(&self, session: &mut Session, body: &[u8]) -> Response {
        let join = match wire::decode_join(body) {
            Ok(j) => j,
            Err(e) => return Response::Error(format!("bad join request: {e}")),
        };
        // Nodes coming back to a restored cluster start at once (a service manager starts them
        // together): each waits its turn behind the others' joins, a while.
        let turn = Instant::now() + JOIN_TURN;
        let result = loop {
            let result = self.change(format!("join of node {}", join.node), |c| {
                let welcome = c.welcome(&join, &self.app_name)?;
                let admitted = self.welcomed(c, session, &join, &welcome);
                if admitted.is_err() {
                    // Unless it became a member, no node accepts its links any more.
                    c.node.forget_joiner(&join.node);
                }
                admitted
            });
            match result {
                Err(ChangeError::Busy { .. }) if join.state_dir && Instant::now() < turn => {
                    std::thread::sleep(SOURCES_POLL * 5);
                }
                result => break result,
            }
        };
        match result {
            Ok(report) => Response::Joined(report.encode()),
            Err(e) => {
                tracing::warn!("refused the join of node `{}`: {e}", join.node);
                Response::Error(e.to_string())
            }
        }
    }

    /// The rest of a join once its welcome is made: send it, wait for `Ready`, add the node.
    fn welcomed(
        &self,
        c: &mut Coordinator,
        session: &mut Session,
        join: &JoinRequest,
        welcome: &Welcome,
    ) -> Result<ChangeReport, ChangeError> {
        let lost = |reason: String| ChangeError::JoinerLost {
            node: join.node.clone(),
            reason,
        };
        session
            .answer(&Response::Welcome(wire::encode_welcome(welcome)))
            .map_err(|e| lost(e.to_string()))?;
        // A node restoring its part of a checkpoint reads all of it first.
        let deadline = if welcome.restore > 0 {
            RESTORE_READY
        } else {
            READY_DEADLINE
        };
        let ready = session
            .next_request(Step::Ready, deadline)
            .map_err(|e| lost(e.to_string()))?;
        if ready.request != Request::Ready || !self.token_matches(&ready.token) {
            return Err(lost("it did not say it was ready".into()));
        }
        c.add_node(join, &welcome.cores)
    }
}
