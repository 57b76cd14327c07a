//! `quokka run`'s autoscaling flags: the policy's knobs with their units, and the commands
//! that ask an orchestrator for nodes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use quokka_engine::autoscale::{NodeCommands, Policy};

use crate::duration::parse_duration;

/// Autoscaling: the coordinator grows and shrinks its cores to fit the load.
#[derive(clap::Args)]
pub struct AutoscaleArgs {
    /// Let a policy add and remove this node's cores between MIN and MAX (on the coordinator;
    /// `quokka ctl autoscale on|off|MIN..MAX` changes it while it runs). It grows when the
    /// cores stay busy (or the queues keep growing) for --autoscale-sustain, shrinks when they
    /// stay idle for --autoscale-idle, and waits --autoscale-cooldown after every change,
    /// a person's too. Every decision is logged with its reason and shown by `ctl status`.
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_cores_range)]
    pub autoscale: Option<(usize, usize)>,
    /// Grow when the cores' mean busy fraction (time running tasks, not waiting for work)
    /// stays at least this, in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 80.0, value_parser = parse_percent)]
    autoscale_grow_busy: f64,
    /// Shrink when it stays at most this, in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 40.0, value_parser = parse_percent)]
    autoscale_shrink_busy: f64,
    /// What a change aims at, in percent: a grow adds cores until the load would be at most
    /// this on each; a shrink happens only if the cores left would stay at most this.
    #[arg(long, value_name = "PERCENT", default_value_t = 70.0, value_parser = parse_percent)]
    autoscale_target_busy: f64,
    /// How long the cores must stay busy before a grow, e.g. `10s`.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    autoscale_sustain: Duration,
    /// How long they must stay idle before a shrink.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    autoscale_idle: Duration,
    /// How long to wait after any change of cores before the next one.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    autoscale_cooldown: Duration,
    /// A shell command (`sh -c`) the autoscaler runs to ask for one more node, when the cores
    /// stay busy at MAX: wire it to your orchestrator, and the node it starts joins as any
    /// does. Its environment: QUOKKA_SCALE=out, QUOKKA_NODES (now), QUOKKA_NODES_WANTED,
    /// QUOKKA_JOIN (the coordinator's --control address, for the new node's --join) and
    /// QUOKKA_REASON. It must return once the node is asked for (start the node in the
    /// background): after 60 s it is killed and counts as failed. The node is waited for (up to
    /// 5 minutes) before asking again; after a command that failed, no node is asked for until
    /// the load has eased. One command runs at a time.
    #[arg(long, value_name = "CMD", value_parser = parse_command)]
    on_scale_out: Option<String>,
    /// With this set, the autoscaler lets members go: when the cores stay idle at MIN and the
    /// cores left would stay at --autoscale-target-busy, it moves away the slots of the member
    /// cheapest to move (the fewest state bytes; one that has read from its --in stays, and
    /// it may be a node started by hand), tells it to leave (it exits), then runs CMD with
    /// QUOKKA_SCALE=in, QUOKKA_NODES (left), QUOKKA_NODE (its name), QUOKKA_NODE_ADDR (its
    /// --data address) and QUOKKA_REASON, for the orchestrator to release its machine.
    #[arg(long, value_name = "CMD", value_parser = parse_command)]
    on_scale_in: Option<String>,
}

fn parse_command(s: &str) -> std::result::Result<String, String> {
    if s.trim().is_empty() {
        return Err("give a shell command".into());
    }
    Ok(s.to_string())
}

impl AutoscaleArgs {
    /// The policy's knobs, checked.
    pub fn policy(&self) -> Result<Policy> {
        let (min, max) = self.autoscale.unwrap_or((1, 1));
        let p = Policy {
            min,
            max,
            grow_busy: self.autoscale_grow_busy / 100.0,
            shrink_busy: self.autoscale_shrink_busy / 100.0,
            target_busy: self.autoscale_target_busy / 100.0,
            sustain: self.autoscale_sustain,
            idle: self.autoscale_idle,
            cooldown: self.autoscale_cooldown,
            ..Policy::new(min, max)
        };
        if !(p.shrink_busy < p.target_busy && p.target_busy < p.grow_busy) {
            anyhow::bail!(
                "--autoscale-shrink-busy ({}%) < --autoscale-target-busy ({}%) < --autoscale-grow-busy ({}%) must hold, or it would flap",
                self.autoscale_shrink_busy,
                self.autoscale_target_busy,
                self.autoscale_grow_busy
            );
        }
        quokka_engine::autoscale::check_range(min, max, quokka_engine::Config::MAX_CORES)
            .map_err(|e| anyhow::anyhow!("--{e}"))?;
        Ok(p)
    }

    /// The node commands, a new node joining at `control` (the coordinator's control address);
    /// refused on a `joining` node.
    pub fn commands(&self, control: Option<SocketAddr>, joining: bool) -> Result<NodeCommands> {
        let given =
            self.autoscale.is_some() || self.on_scale_out.is_some() || self.on_scale_in.is_some();
        if given && joining {
            anyhow::bail!(
                "--autoscale, --on-scale-out and --on-scale-in are the coordinator's: give them to it (this node joins; `quokka ctl autoscale` turns autoscaling on later)"
            );
        }
        Ok(NodeCommands {
            scale_out: self.on_scale_out.clone(),
            scale_in: self.on_scale_in.clone(),
            join: control.map(|a| a.to_string()).unwrap_or_default(),
        })
    }
}

fn parse_cores_range(s: &str) -> std::result::Result<(usize, usize), String> {
    crate::control::parse_range(s)
}

fn parse_percent(s: &str) -> std::result::Result<f64, String> {
    let v: f64 =
        (s.trim_end_matches('%').parse()).map_err(|_| format!("`{s}` is not a percentage"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v}% is not between 0 and 100"))
    }
}
