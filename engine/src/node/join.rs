//! Joining and leaving a cluster over the control protocol: a node's join (request, welcome,
//! links, cores, ready), the coordinator's side of it (`admit`), and a member's request to leave.

use std::net::SocketAddr;
use std::sync::Arc;

use quokka_io::control::{
    Client, ControlError, Request, Response, Session, Step, Timeouts, JOIN_ANSWER, READY_DEADLINE,
};
use thiserror::Error;

use super::coordinator::Coordinator;
use super::{ChangeError, ChangeReport, Engine, StartError, Starting};
use crate::app::App;
use crate::cluster::wire::{self, JoinRequest, Welcome, WireError};
use crate::cluster::{link, Ending, LinkError, Node, Role};
use crate::runtime::Config;

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
}

impl Engine {
    /// Joins the cluster whose coordinator listens for control at `coordinator`: the
    /// coordinator checks the app, slot count and token, this node links to every member and
    /// starts its cores, then slots move to them. Returns once the join is complete, with the
    /// coordinator's report of the change. `output`, if given, replaces the cluster's sink
    /// address here.
    pub fn join(
        app: &App,
        config: Config,
        coordinator: SocketAddr,
        output: Option<SocketAddr>,
    ) -> Result<(Engine, ChangeReport), StartError> {
        let mut config = Self::check(app, config, Starting::Joining)?;
        let refused = |error: JoinError| StartError::Join {
            addr: coordinator,
            error,
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
            output: cluster_output,
            ..
        } = &welcome;
        let Some(lead) = members.first().map(|m| m.name.clone()) else {
            return Err(refused(JoinError::NoCoordinator));
        };
        config.output = match output {
            Some(o) => o,
            None => cluster_output.parse().map_err(|error| {
                refused(JoinError::SinkAddress {
                    addr: cluster_output.clone(),
                    error,
                })
            })?,
        };
        let table = welcome
            .table
            .to_table(config.n_slots)
            .map_err(|e| refused(JoinError::Garbled(e)))?;
        let (forward, forwarded) = flume::unbounded();
        let node = Node::new(
            config.name.clone(),
            config.token.clone(),
            app.dataflow.clone(),
            config.n_slots,
            data_addr,
            forward.clone(),
            Role::Member,
        );
        link::serve(node.clone(), data);
        for m in members {
            node.add_member(m.clone())
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
        let result = self.change(format!("join of node {}", join.node), |c| {
            let welcome = c.welcome(&join, &self.app_name)?;
            let lost = |reason: String| ChangeError::JoinerLost {
                node: join.node.clone(),
                reason,
            };
            session
                .answer(&Response::Welcome(wire::encode_welcome(&welcome)))
                .map_err(|e| lost(e.to_string()))?;
            let ready = session
                .next_request(Step::Ready, READY_DEADLINE)
                .map_err(|e| lost(e.to_string()))?;
            if ready.request != Request::Ready || !self.token_matches(&ready.token) {
                return Err(lost("it did not say it was ready".into()));
            }
            c.add_node(&join, &welcome.cores)
        });
        match result {
            Ok(report) => Response::Joined(report.encode()),
            Err(e) => {
                tracing::warn!("refused the join of node `{}`: {e}", join.node);
                Response::Error(e.to_string())
            }
        }
    }
}
