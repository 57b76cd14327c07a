//! Autoscaling on the coordinator: the [`Autoscaler`] policy fed one sample of the cluster's
//! status a second, its decisions carried out through the same `grow`/`shrink` as `quokka
//! ctl`, each logged with its reason, and what it last did kept for `status` and `/metrics`.
//! Every change of cores, the policy's or a person's, done or failed, restarts its cooldown.
//! Beyond its range it runs the operator's commands: `--on-scale-out` to ask for a node,
//! `--on-scale-in` once a member it chose (the one whose slots are cheapest to move) has left.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::scale_commands::{ScaleCommands, COMMAND_TIMEOUT};
use super::status::Status;
use super::Engine;
use crate::autoscale::{Autoscaler, Decision, NodeCommands, Policy, Sample};
use crate::runtime::Config;

/// What the autoscaler did, for `status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AutoscaleStatus {
    /// The range it keeps the cores in while on; `None`: off.
    pub range: Option<(usize, usize)>,
    /// Its last decision worth saying, and when it came.
    pub last: Option<(Instant, String)>,
    pub grows: u64,
    pub shrinks: u64,
    /// Nodes it asked for (`--on-scale-out`) and members it let go (`--on-scale-in`).
    pub nodes_asked: u64,
    pub nodes_let_go: u64,
    /// Its changes that failed (refused or ended early), and node requests refused.
    pub failed: u64,
}

/// The engine's autoscaler: the policy, on while `status.range` is set, and what it did.
pub(crate) struct Autoscaling {
    commands: NodeCommands,
    running: ScaleCommands,
    /// The range it last had, for `autoscale on`.
    last_range: Mutex<Option<(usize, usize)>>,
    /// Kept while off too, with its cooldown and the node it asked for. Shared with the
    /// threads that wait for the node commands.
    scaler: Arc<Mutex<Autoscaler>>,
    status: Arc<Mutex<AutoscaleStatus>>,
}

impl Autoscaling {
    /// On between `range` (or off), with `knobs`; asks for nodes and lets them go with
    /// `commands`, if set.
    pub fn new(range: Option<(usize, usize)>, knobs: Policy, commands: NodeCommands) -> Self {
        let knobs = Policy {
            ask_for_nodes: commands.scale_out.is_some(),
            let_nodes_go: commands.scale_in.is_some(),
            ..knobs
        };
        let (min, max) = range.unwrap_or((knobs.min, knobs.max));
        let scaler = Autoscaler::new(Policy { min, max, ..knobs });
        Self {
            commands,
            running: ScaleCommands::default(),
            last_range: Mutex::new(range),
            scaler: Arc::new(Mutex::new(scaler)),
            status: Arc::new(Mutex::new(AutoscaleStatus {
                range,
                ..AutoscaleStatus::default()
            })),
        }
    }

    pub fn status(&self) -> AutoscaleStatus {
        self.status.lock().unwrap().clone()
    }

    /// A change of cores ended at `at`: the cooldown starts again.
    pub fn changed(&self, at: Duration) {
        // Called inside every change: a panic of the policy must not stop them too.
        let mut scaler = self.scaler.lock().unwrap_or_else(|e| e.into_inner());
        scaler.changed(at);
    }

    fn note(&self, what: String) {
        note(&self.status, what);
    }

    /// Notes a failure: counted, and logged as a warning.
    fn failed(&self, what: String) {
        failed(&self.status, what);
    }
}

/// Says `what` the autoscaler did (in the log and in `status`), unless it just said it.
fn note(status: &Mutex<AutoscaleStatus>, what: String) {
    let mut status = status.lock().unwrap();
    if status.last.as_ref().is_some_and(|(_, said)| *said == what) {
        return;
    }
    tracing::info!("autoscale: {what}");
    status.last = Some((Instant::now(), what));
}

/// Says what failed, counts it, and warns.
fn failed(status: &Mutex<AutoscaleStatus>, what: String) {
    let mut status = status.lock().unwrap();
    status.failed += 1;
    tracing::warn!("autoscale: {what}");
    status.last = Some((Instant::now(), what));
}

/// One sample for the policy from the cluster's status, this node having `cores` cores and
/// being named `own`: each core's busy fraction, the messages waiting in and between the cores
/// and the bytes waiting unread in source sockets, the worst p99, and the member a scale-in
/// would let go.
fn sample(at: Duration, status: &Status, own: &str, cores: usize) -> Sample {
    Sample {
        at,
        cores,
        busy: status.cores.iter().map(|c| c.busy).collect(),
        backlog: (status.cores.iter())
            .map(|c| (c.inbox + c.outbox + c.buffered) as u64)
            .sum(),
        unread: status.cores.iter().map(|c| c.unread).sum(),
        p99: status.cores.iter().filter_map(|c| c.latency_p99).max(),
        nodes: status.nodes.len(),
        spare_node: spare_member(status, own).map(|(_, cores)| cores),
        sink_down: status.cores.iter().any(|c| c.sink_down),
        frames_per_sec: status.cores.iter().map(|c| c.frames_per_sec).sum(),
    }
}

/// The member whose slots are cheapest to move (the fewest state bytes, then slots), among
/// those that could leave (no source read there, every core answered), and its cores.
fn spare_member<'a>(status: &'a Status, own: &str) -> Option<(&'a str, usize)> {
    let members = status
        .nodes
        .iter()
        .filter(|n| n.name != own && !n.coordinator);
    let costs = members.filter_map(|n| {
        let cores: Vec<_> = status.cores.iter().filter(|c| c.node == n.name).collect();
        // One that reads sources (its --in has had traffic) keeps its address up.
        let reads = |c: &&crate::metrics::CoreStatus| c.connections > 0 || c.bytes_in > 0;
        let leavable = !cores.is_empty() && !cores.iter().any(reads);
        let bytes: u64 = cores.iter().map(|c| c.state_bytes).sum();
        let slots: usize = cores.iter().map(|c| c.slots).sum();
        leavable.then_some(((bytes, slots, n.name.as_str()), cores.len()))
    });
    // A silent core may be a member's: its node cannot be weighed, so none goes.
    if !status.silent.is_empty() {
        return None;
    }
    costs
        .min_by_key(|(cost, _)| *cost)
        .map(|((_, _, name), cores)| (name, cores))
}

impl Engine {
    /// Turns autoscaling on between `min` and `max` cores (on this node), on again with the
    /// range it last had (`Some(None)`), or off (`None`). Only the coordinator scales.
    pub fn set_autoscale(&self, range: Option<Option<(usize, usize)>>) -> Result<String, String> {
        if !self.node.is_coordinator() {
            return Err("this node is a member: send autoscale to the coordinator".into());
        }
        let a = &self.autoscaling;
        let range = match range {
            Some(None) => Some(
                a.last_range
                    .lock()
                    .unwrap()
                    .ok_or("autoscale on: it never had a range; give one, e.g. autoscale 1..4")?,
            ),
            Some(Some(r)) => Some(r),
            None => None,
        };
        let Some((min, max)) = range else {
            a.status.lock().unwrap().range = None;
            tracing::info!("autoscale: off");
            return Ok("autoscale off".into());
        };
        crate::autoscale::check_range(min, max, Config::MAX_CORES)?;
        a.scaler.lock().unwrap().set_range(min, max);
        *a.last_range.lock().unwrap() = Some((min, max));
        a.status.lock().unwrap().range = Some((min, max));
        tracing::info!("autoscale: on, {min}..{max} cores");
        Ok(format!("autoscale on: {min}..{max} cores"))
    }

    /// Takes one sample of the cluster and lets the policy decide; carries out a grow or a
    /// shrink as `quokka ctl` would. Call it about once a second (`quokka run` does, on a
    /// thread of its own); it does nothing while autoscaling is off.
    pub fn autoscale_step(&self) {
        if self.autoscaling.status.lock().unwrap().range.is_none() {
            return;
        }
        let status = self.status();
        let at = self.started.elapsed();
        let cores = self.view.lock().unwrap().cores.len();
        let sample = sample(at, &status, &self.node.name, cores);
        // Written out only when the debug line is on.
        let seen = tracing::enabled!(tracing::Level::DEBUG).then(|| format!("{sample:?}"));
        let decision = self.autoscaling.scaler.lock().unwrap().decide(sample);
        if let Some(seen) = seen {
            tracing::debug!("autoscale: {seen} -> {decision}");
        }
        let a = &self.autoscaling;
        let what = decision.to_string();
        let (result, grew) = match decision {
            Decision::Hold(None) => return,
            Decision::Hold(Some(why)) => return a.note(why),
            Decision::Grow { by, .. } => (self.grow(by), true),
            Decision::Shrink { by, .. } => (self.shrink(by), false),
            Decision::AddNode { nodes, .. } => return self.ask_for_node(nodes, what),
            Decision::RemoveNode { reason } => return self.let_node_go(&status, reason),
        };
        match result {
            Ok(report) => {
                let mut status = a.status.lock().unwrap();
                *(if grew {
                    &mut status.grows
                } else {
                    &mut status.shrinks
                }) += 1;
                drop(status);
                a.note(format!("{what}; done: {report}"));
            }
            Err(e) => a.failed(format!("{what}; FAILED: {e}")),
        }
    }

    /// Runs `--on-scale-out` for `nodes` nodes in all; a command that fails tells the policy
    /// the node will not come.
    fn ask_for_node(&self, nodes: usize, what: String) {
        let a = &self.autoscaling;
        let Some(command) = &a.commands.scale_out else {
            return;
        };
        let env = [
            ("QUOKKA_SCALE", "out".to_string()),
            ("QUOKKA_NODES", (nodes - 1).to_string()),
            ("QUOKKA_NODES_WANTED", nodes.to_string()),
            ("QUOKKA_JOIN", a.commands.join.clone()),
            ("QUOKKA_REASON", what.clone()),
        ];
        let (scaler, status, started) = (a.scaler.clone(), a.status.clone(), self.started);
        let ended = move |how: Result<(), String>| match how {
            Ok(()) => tracing::info!("autoscale: --on-scale-out ran"),
            Err(e) => {
                failed(&status, format!("--on-scale-out failed ({e})"));
                scaler.lock().unwrap().node_refused(started.elapsed());
            }
        };
        match a.running.run(command, &env, COMMAND_TIMEOUT, ended) {
            Ok(()) => {
                a.status.lock().unwrap().nodes_asked += 1;
                a.note(format!("{what}; running --on-scale-out"));
            }
            Err(e) => {
                a.failed(format!("{what}; --on-scale-out not run: {e}"));
                let mut scaler = a.scaler.lock().unwrap();
                scaler.node_not_asked(self.started.elapsed());
            }
        }
    }

    /// Removes the member whose slots are cheapest to move (it is told to leave and exits),
    /// then runs `--on-scale-in` with its name and address and the nodes left.
    fn let_node_go(&self, status: &Status, reason: String) {
        let a = &self.autoscaling;
        let Some(command) = &a.commands.scale_in else {
            return;
        };
        let Some((name, _)) = spare_member(status, &self.node.name) else {
            return;
        };
        if a.running.is_running() {
            // Its command could not run after the member left: the machine would stay taken.
            return a.note("a member could go, but the last command still runs".into());
        }
        let addr = (status.nodes.iter())
            .find(|n| n.name == name)
            .map_or_else(String::new, |n| n.data_addr.clone());
        let what = format!("let node {name} go: {reason}");
        match self.remove_node(name) {
            Ok(report) => {
                a.status.lock().unwrap().nodes_let_go += 1;
                a.note(format!("{what}; done: {report}"));
            }
            Err(e) => return a.failed(format!("{what}; FAILED: {e}")),
        }
        let env = [
            ("QUOKKA_SCALE", "in".to_string()),
            ("QUOKKA_NODES", (self.node.members().len() + 1).to_string()),
            ("QUOKKA_NODE", name.to_string()),
            ("QUOKKA_NODE_ADDR", addr),
            ("QUOKKA_REASON", reason),
        ];
        let status = a.status.clone();
        let ended = move |how: Result<(), String>| match how {
            Ok(()) => tracing::info!("autoscale: --on-scale-in ran"),
            Err(e) => failed(&status, format!("--on-scale-in failed ({e})")),
        };
        if let Err(e) = a.running.run(command, &env, COMMAND_TIMEOUT, ended) {
            a.failed(format!("--on-scale-in not run: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CoreStatus;
    use crate::node::status::NodeInfo;

    fn core(node: &str, busy: f64, queued: usize, unread: u64) -> CoreStatus {
        CoreStatus {
            node: node.into(),
            busy,
            inbox: queued,
            outbox: 1,
            buffered: 2,
            unread,
            ..CoreStatus::default()
        }
    }

    fn node(name: &str, coordinator: bool) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            data_addr: format!("{name}:1"),
            http: None,
            coordinator,
        }
    }

    fn status(nodes: Vec<NodeInfo>, cores: Vec<CoreStatus>, silent: Vec<u16>) -> Status {
        Status {
            epoch: 0,
            n_slots: 8,
            nodes,
            cores,
            lost: Vec::new(),
            silent,
            migration: None,
            retired: 0,
            checkpoints: None,
            recovery: None,
            changes: Default::default(),
            autoscale: AutoscaleStatus::default(),
        }
    }

    #[test]
    fn a_sample_counts_every_core_of_the_cluster_and_every_queue() {
        let mut cores = vec![core("c", 0.5, 1, 100), core("c", 1.0, 10, 0)];
        cores.push(core("w", 0.25, 0, 7));
        cores[0].latency_p99 = Some(5);
        cores[2].latency_p99 = Some(9);
        let nodes = vec![node("c", true), node("w", false)];
        let s = sample(SEC3, &status(nodes, cores, vec![]), "c", 2);
        // Queues (1 + 10 + 0, and 1 + 2 each) and unread bytes (100 + 7).
        assert_eq!((s.cores, s.nodes, s.backlog, s.unread), (2, 2, 11 + 9, 107));
        assert_eq!(s.busy, [0.5, 1.0, 0.25]);
        assert_eq!((s.p99, s.spare_node), (Some(9), Some(1)));
    }

    const SEC3: Duration = Duration::from_secs(3);

    #[test]
    fn the_spare_member_is_the_cheapest_to_move_of_those_that_can_leave() {
        let member = |name: &str, bytes: u64, connections: usize| CoreStatus {
            state_bytes: bytes,
            connections,
            ..core(name, 0.1, 0, 0)
        };
        let nodes = vec![node("c", true), node("a", false), node("b", false)];
        let nodes3 = nodes.clone();
        let with = |cores: Vec<CoreStatus>, silent: Vec<u16>| status(nodes.clone(), cores, silent);
        let cores = vec![member("c", 1, 0), member("a", 500, 0), member("a", 500, 0)];
        let mut all = cores.clone();
        all.push(member("b", 900, 0));
        // a holds 1000 bytes on two cores, b 900 on one: b.
        assert_eq!(
            spare_member(&with(all.clone(), vec![]), "c"),
            Some(("b", 1))
        );
        // b has a source connection open (it could not leave): a.
        all[3].connections = 1;
        assert_eq!(
            spare_member(&with(all.clone(), vec![]), "c"),
            Some(("a", 2))
        );
        // b's connections closed, but it has read from its source: it serves one, a again.
        all[3].connections = 0;
        all[3].bytes_in = 10;
        assert_eq!(
            spare_member(&with(all.clone(), vec![]), "c"),
            Some(("a", 2))
        );
        // A core did not answer: nobody can be weighed.
        assert_eq!(spare_member(&with(all, vec![4]), "c"), None);
        // The coordinator alone.
        let alone = status(vec![node("c", true)], cores.clone(), vec![]);
        assert_eq!(spare_member(&alone, "c"), None);
        // A member's status (the coordinator is another node): never the coordinator.
        let seen_from_a = status(nodes3, cores, vec![]);
        assert_eq!(spare_member(&seen_from_a, "a"), None);
    }
}
