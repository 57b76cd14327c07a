//! Membership changes on the coordinator: a node joining (its welcome, then slots moving to
//! it), a node of a restored checkpoint coming back (its cores restored in place, no slot
//! moves), a node leaving.

use std::time::{Duration, Instant};

use super::migrate::Aborted;
use super::Coordinator;
use crate::cluster::wire::{Answer, JoinRequest, Question, Welcome, Wire};
use crate::node::status::{ChangeError, ChangeReport, JoinRefusal};
use crate::planner::{plan, Change};
use crate::routing::CoreId;
use crate::runtime::Config;

impl Coordinator {
    /// Checks a join request and gives the new node its core ids and the cluster's picture.
    pub fn welcome(&mut self, join: &JoinRequest, app: &str) -> Result<Welcome, ChangeError> {
        // A node of a restored checkpoint comes back to the cores it had.
        self.await_lost_again();
        let rejoining = self.awaiting.get(&join.node).cloned();
        if rejoining.is_some() {
            self.check_running()?;
        } else {
            self.check_can_change()?;
        }
        let refuse = |why: JoinRefusal| Err(ChangeError::JoinRefused(why));
        if join.version != crate::cluster::wire::VERSION {
            return refuse(JoinRefusal::Version {
                got: join.version,
                speaks: crate::cluster::wire::VERSION,
            });
        }
        if join.app != app {
            return refuse(JoinRefusal::App {
                cluster: app.to_string(),
                joining: join.app.clone(),
            });
        }
        if join.n_slots != self.table.n_slots() {
            return refuse(JoinRefusal::SlotCount {
                cluster: self.table.n_slots(),
                joining: join.n_slots,
            });
        }
        if join.node.is_empty()
            || join.node == self.node.name
            || self.node.link(&join.node).is_some()
        {
            return refuse(JoinRefusal::NameTaken(join.node.clone()));
        }
        if join.cores == 0 || usize::from(join.cores) > Config::MAX_CORES {
            return refuse(JoinRefusal::Cores {
                asked: join.cores,
                limit: Config::MAX_CORES,
            });
        }
        if join.state_dir != self.checkpoints.is_some() {
            return refuse(JoinRefusal::StateDir {
                cluster: self.checkpoints.is_some(),
            });
        }
        let (cores, restore) = match rejoining {
            Some(cores) => (cores, self.last_durable()),
            // Nothing is recorded: the ids stay free until `add_node` makes the cores members,
            // and the change lock keeps any other change from taking them meanwhile.
            None => (self.free_ids(usize::from(join.cores))?, 0),
        };
        let members = self.node.expect_joiner(join, &cores, self.local_ids())?;
        Ok(Welcome {
            cores,
            members,
            table: (&*self.table).into(),
            outputs: self.config.outputs.iter().map(|a| a.to_string()).collect(),
            run: self.run,
            cluster: self.checkpoints.as_ref().map_or(0, |c| c.cluster),
            exactly_once: self.config.guarantee == crate::runtime::Guarantee::ExactlyOnce,
            restore,
            lost_streams: self.lost_streams.iter().cloned().collect(),
        })
    }

    /// A node of the restored checkpoint is back with its cores restored: link to it, tell
    /// the others, introduce its cores; no slot moves. Once the last one is back, every node's
    /// sources open.
    fn rejoin(&mut self, join: &JoinRequest, ids: &[CoreId]) -> Result<ChangeReport, ChangeError> {
        let member = self.node.link_expected(&join.node)?;
        self.tell_others(
            &join.node,
            Wire::Joined {
                node: join.node.clone(),
            },
        );
        let old: Vec<CoreId> = self.cores.keys().copied().collect();
        self.add_remote(&member);
        self.introduce(&old, ids);
        self.awaiting.remove(&join.node);
        self.note_dir(join);
        self.await_lost_again();
        tracing::info!(
            "node {} is back with its part of checkpoint {}",
            join.node,
            self.last_durable()
        );
        if self.awaiting.is_empty() {
            self.open_sources();
        }
        self.publish(None);
        self.publish_checkpoints();
        Ok(ChangeReport {
            cores_before: old.len(),
            cores_after: self.cores.len(),
            ..ChangeReport::default()
        })
    }

    /// The welcomed node is up: link to it, tell the others, move slots to its cores. What can
    /// be refused (the plan, the link to the node) is checked before anything changes; once
    /// the link is up only the migration itself can fail.
    pub fn add_node(
        &mut self,
        join: &JoinRequest,
        ids: &[CoreId],
    ) -> Result<ChangeReport, ChangeError> {
        if self.awaiting.contains_key(&join.node) {
            return self.rejoin(join, ids);
        }
        let started = Instant::now();
        let before = self.cores.len();
        let old: Vec<CoreId> = self.cores.keys().copied().collect();
        let p = plan(&self.table, &old, &Change::Add(ids.to_vec()))?;
        let member = self.node.link_expected(&join.node)?;
        self.tell_others(
            &join.node,
            Wire::Joined {
                node: join.node.clone(),
            },
        );
        self.add_remote(&member);
        match self.move_onto(
            &old,
            ids,
            p,
            &format!("join {}", join.node),
            started,
            before,
        ) {
            Ok(report) => {
                self.note_dir(join);
                Ok(report)
            }
            Err(Aborted { error, switched: 0 }) => {
                // No slot moved: the node was never really part of the cluster, so whether it
                // went away or stalled, it goes, and the cluster is as it was.
                self.let_go(&member.name, ids);
                self.publish(None);
                tracing::warn!("the join of node {} was rolled back: {error}", member.name);
                Err(error)
            }
            Err(aborted) => Err(aborted.error),
        }
    }

    /// Moves every slot of node `name` to the other cores, then lets it go. A node with open
    /// source connections refuses (they cannot move to another process).
    pub fn remove_node(&mut self, name: &str) -> Result<ChangeReport, ChangeError> {
        self.check_can_change()?;
        if name == self.node.name {
            return Err(ChangeError::CoordinatorStays {
                node: name.to_string(),
            });
        }
        let Some(link) = self.node.link(name) else {
            let mut names = vec![self.node.name.clone()];
            names.extend(self.node.members().into_iter().map(|m| m.name));
            return Err(ChangeError::NoSuchMember {
                node: name.to_string(),
                members: names.join(", "),
            });
        };
        let wait = Duration::from_secs(10);
        match self.node.ask(name, Question::Quiesce, wait) {
            Some(Answer::Quiesced { open_sources: 0 }) => {}
            Some(Answer::Quiesced { open_sources }) => {
                self.node.ask(name, Question::Resume, wait);
                return Err(ChangeError::OpenSources {
                    node: name.to_string(),
                    open: open_sources,
                });
            }
            _ => {
                return Err(ChangeError::NoAnswer {
                    node: name.to_string(),
                    waited: wait,
                })
            }
        }
        let started = Instant::now();
        let before = self.cores.len();
        let members: Vec<CoreId> = self.cores.keys().copied().collect();
        let victims: Vec<CoreId> = self
            .node
            .members()
            .into_iter()
            .find(|m| m.name == name)
            .map_or_else(Vec::new, |m| m.cores);
        let p = plan(&self.table, &members, &Change::Remove(victims.clone()))?;
        let label = format!("remove-node {name}");
        let report = match self.migrate(p, &label) {
            Ok(report) => report,
            Err(Aborted { error, switched }) => {
                if switched == 0 {
                    self.node.ask(name, Question::Resume, wait);
                }
                return Err(error);
            }
        };
        self.forget(&victims);
        for v in &victims {
            self.cores.remove(v);
        }
        self.tell_others(
            name,
            Wire::Gone {
                node: name.to_string(),
            },
        );
        link.send_node(Wire::Depart);
        self.node.remove_member(name);
        self.publish(None);
        Ok(self.finished(report, &label, started, before))
    }

    /// Where a member's state dir is, should it be lost.
    fn note_dir(&mut self, join: &JoinRequest) {
        if !join.state_path.is_empty() {
            (self.member_dirs).insert(join.node.clone(), join.state_path.clone().into());
        }
    }

    /// Tells every member but `except` `msg`.
    fn tell_others(&self, except: &str, msg: Wire) {
        for other in self.node.members() {
            if other.name != except {
                if let Some(link) = self.node.link(&other.name) {
                    link.send_node(msg.clone());
                }
            }
        }
    }

    /// Lets node `name` and its `cores` go as if it had never joined: every core forgets the
    /// cores, every other member the node, and this node no longer counts it as lost.
    pub(super) fn let_go(&mut self, name: &str, cores: &[CoreId]) {
        self.forget(cores);
        for id in cores {
            self.cores.remove(id);
        }
        self.tell_others(
            name,
            Wire::Gone {
                node: name.to_string(),
            },
        );
        self.node.remove_member(name);
        self.node.forget_lost(name);
    }
}
