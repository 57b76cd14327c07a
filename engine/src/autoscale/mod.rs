//! Pure: the autoscaling policy. It is fed one [`Sample`] of what the engine measures about
//! once a second and answers with a [`Decision`] and the reason for it, numbers included. It
//! grows when the cores stay busy (or the backlog keeps rising) for a sustain window, shrinks
//! when they stay idle for a longer window, waits out a cooldown after every change (its own,
//! a person's, or one that failed), and never flaps under a steady load: it grows to a target
//! busy fraction below the grow threshold, and shrinks only when the cores left would stay
//! below that target too.
//!
//! It changes this node's cores between `min` and `max`. Beyond them, if the operator wired
//! commands for it, it asks for a node (busy at `max`) or lets a member go (idle at `min`): a
//! node is asked for once, then waited for until it joins (or [`NODE_PATIENCE`] passes), and a
//! request the orchestrator refused is not repeated while the load stays as it was.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

/// Checks a range of cores: `1 <= min <= max <= most`.
pub fn check_range(min: usize, max: usize, most: usize) -> Result<(), String> {
    if min == 0 || min > max || max > most {
        return Err(format!(
            "autoscale {min}..{max}: give MIN..MAX with 1 <= MIN <= MAX <= {most}"
        ));
    }
    Ok(())
}

/// "1 core", "2 cores".
fn n_cores(n: usize) -> String {
    match n {
        1 => "1 core".into(),
        n => format!("{n} cores"),
    }
}

/// How long what a count of cores cost per frame is trusted after they last ran.
pub const COST_MEMORY: Duration = Duration::from_secs(600);

/// How far below the grow threshold a second of a busy spell may dip.
pub const DIP: f64 = 0.15;

/// How long a node asked for is waited for before the policy may ask again.
pub const NODE_PATIENCE: Duration = Duration::from_secs(300);

/// What the engine measured over the last interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When, since any fixed start.
    pub at: Duration,
    /// This node's cores: the ones the policy grows and shrinks.
    pub cores: usize,
    /// Each core's busy fraction over the interval (time in tasks against time parked), 0..=1:
    /// every core of the cluster that answered.
    pub busy: Vec<f64>,
    /// Messages waiting: inbox and outbox depths, and messages buffered for moving slots.
    pub backlog: u64,
    /// Bytes waiting unread in source sockets.
    pub unread: u64,
    /// The highest source-to-sink p99 latency of any core over the interval (ns), said in the
    /// reasons.
    pub p99: Option<u64>,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// The cores of the member a scale-in would let go (the one whose slots are cheapest to
    /// move); `None`: no member can go.
    pub spare_node: Option<usize>,
    /// A sink is down: queues grow waiting for it, not for want of cores.
    pub sink_down: bool,
    /// Frames read from sources per second, by every core.
    pub frames_per_sec: f64,
}

impl Sample {
    /// One node's sample: `cores` cores, each `busy`.
    pub fn one_node(at: Duration, cores: usize, busy: f64, backlog: u64) -> Sample {
        Sample {
            at,
            cores,
            busy: vec![busy; cores],
            backlog,
            unread: 0,
            p99: None,
            nodes: 1,
            spare_node: None,
            sink_down: false,
            frames_per_sec: 0.0,
        }
    }

    fn mean_busy(&self) -> f64 {
        match self.busy.len() {
            0 => 0.0,
            n => self.busy.iter().sum::<f64>() / n as f64,
        }
    }

    /// Every core of the cluster.
    fn all_cores(&self) -> usize {
        self.busy.len().max(self.cores)
    }

    /// The work there is, in cores' worth (a saturated core hides how much more there is).
    fn work(&self) -> f64 {
        self.mean_busy() * self.all_cores() as f64
    }
}

/// The policy's knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub min: usize,
    pub max: usize,
    /// Grow when the cores' mean busy fraction stays at least this for `sustain`.
    pub grow_busy: f64,
    /// Shrink when it stays at most this for `idle`.
    pub shrink_busy: f64,
    /// The busy fraction a change aims at: a grow adds cores until the load would be at most
    /// this; a shrink happens only if the cores left would stay at most this.
    pub target_busy: f64,
    pub sustain: Duration,
    pub idle: Duration,
    pub cooldown: Duration,
    /// Busy at `max`: ask for a node (`--on-scale-out` is wired).
    pub ask_for_nodes: bool,
    /// Idle at `min`: let a member go (`--on-scale-in` is wired).
    pub let_nodes_go: bool,
}

impl Policy {
    /// The defaults: grow at 80% busy for 10 s, shrink at 40% for 30 s, aim at 70%, wait 20 s
    /// after a change.
    pub fn new(min: usize, max: usize) -> Self {
        Self {
            min,
            max,
            grow_busy: 0.8,
            shrink_busy: 0.4,
            target_busy: 0.7,
            sustain: Duration::from_secs(10),
            idle: Duration::from_secs(30),
            cooldown: Duration::from_secs(20),
            ask_for_nodes: false,
            let_nodes_go: false,
        }
    }
}

/// Shell commands that ask the orchestrator for a node and tell it one was let go: the policy
/// asks for nodes only if the first is set, and lets them go only if the second is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeCommands {
    pub scale_out: Option<String>,
    pub scale_in: Option<String>,
    /// Where a new node joins (`--join`): the coordinator's control address, for the commands'
    /// environment.
    pub join: String,
}

/// What to do now, and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to do; `None` when there is nothing worth saying either.
    Hold(Option<String>),
    Grow {
        by: usize,
        reason: String,
    },
    Shrink {
        by: usize,
        reason: String,
    },
    /// Ask the orchestrator for one more node: `nodes` in all.
    AddNode {
        nodes: usize,
        reason: String,
    },
    /// Let the member a scale-in would pick go.
    RemoveNode {
        reason: String,
    },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Hold(None) => write!(f, "hold"),
            Decision::Hold(Some(why)) => write!(f, "hold: {why}"),
            Decision::Grow { by, reason } => write!(f, "grow by {by}: {reason}"),
            Decision::Shrink { by, reason } => write!(f, "shrink by {by}: {reason}"),
            Decision::AddNode { reason, .. } => write!(f, "ask for a node: {reason}"),
            Decision::RemoveNode { reason } => write!(f, "let a node go: {reason}"),
        }
    }
}

/// The policy with the window of samples it decides over.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    pub policy: Policy,
    window: VecDeque<Sample>,
    /// When the last change (or failed attempt) ended: the cooldown runs from there.
    last_change: Option<Duration>,
    /// Said once per spell that the load wants more than `max`: quiet until the load drops
    /// below the grow threshold.
    said_at_max: bool,
    /// A node asked for: the nodes wanted, and when.
    node_asked: Option<(usize, Duration)>,
    /// The orchestrator refused a node: none is asked for until the load has eased (a whole
    /// sustain window below the target).
    refused: bool,
    /// Per count of cores in the cluster, the work a frame a second took there (busy cores
    /// per frame/s) and when last seen: what fewer cores would cost is judged by what they
    /// cost when they ran, within [`COST_MEMORY`] (spread over more cores, the same load
    /// measures busier: cross-core hops).
    cost: BTreeMap<usize, (f64, Duration)>,
    /// Nodes in the newest sample.
    nodes: usize,
    /// Said once per idle spell that a shrink would overload the cores left.
    said_too_busy: bool,
}

impl Autoscaler {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            window: VecDeque::new(),
            last_change: None,
            said_at_max: false,
            node_asked: None,
            refused: false,
            cost: BTreeMap::new(),
            nodes: 1,
            said_too_busy: false,
        }
    }

    /// Keeps the cores between `min` and `max` from now on, measuring afresh; the cooldown,
    /// and a node asked for or refused, stay as they were.
    pub fn set_range(&mut self, min: usize, max: usize) {
        self.policy.min = min;
        self.policy.max = max;
        self.window.clear();
        self.said_at_max = false;
    }

    /// A change of cores ended at `at`, the policy's or a person's, done or failed: the window
    /// starts afresh (what it held was measured on other cores) and so does the cooldown.
    pub fn changed(&mut self, at: Duration) {
        self.window.clear();
        self.last_change = Some(at);
        self.said_at_max = false;
    }

    /// The node asked for will not come (its command failed) at `at`: the cooldown starts
    /// again, and no node is asked for while the load stays as it is.
    /// The node asked for was not asked for after all (its command could not start): the
    /// cooldown starts again, then it may ask again.
    pub fn node_not_asked(&mut self, at: Duration) {
        self.node_asked = None;
        self.said_at_max = false;
        self.last_change = Some(at);
    }

    pub fn node_refused(&mut self, at: Duration) {
        self.node_asked = None;
        self.refused = true;
        self.last_change = Some(at);
    }

    /// Takes `sample` into the window and decides.
    pub fn decide(&mut self, sample: Sample) -> Decision {
        if self.window.back().is_some_and(|s| s.cores != sample.cores) {
            // The cores changed outside the policy's sight: measure them afresh.
            self.window.clear();
        }
        let longest = self.policy.sustain.max(self.policy.idle);
        if sample.nodes > std::mem::replace(&mut self.nodes, sample.nodes) {
            // A node joined after all: the orchestrator's refusal is over.
            self.refused = false;
        }
        self.window.push_back(sample);
        let now = self.window.back().expect("just pushed").at;
        // Keep the newest sample at least `longest` old: it starts the longest spell.
        while self.window.len() >= 2 && now.saturating_sub(self.window[1].at) >= longest {
            self.window.pop_front();
        }
        let (nodes, cores) = (self.window.back()).map_or((1, 1), |s| (s.nodes, s.cores));
        if let Some((wanted, asked)) = self.node_asked {
            if nodes >= wanted || now.saturating_sub(asked) >= NODE_PATIENCE {
                // It joined, or it never came: ask again if the load still wants it.
                self.node_asked = None;
                self.said_at_max = false;
            }
        }
        // Quiet while cooling down: the last thing said (the change, or why it failed) stays.
        let cooling =
            (self.last_change).is_some_and(|t| now.saturating_sub(t) < self.policy.cooldown);
        if cooling {
            return Decision::Hold(None);
        }
        self.learn_cost();
        let (min, max) = (self.policy.min, self.policy.max);
        if cores < min {
            return Decision::Grow {
                by: min - cores,
                reason: format!(
                    "{} is below the range {min}..{max}: {cores} -> {min} cores",
                    n_cores(cores)
                ),
            };
        }
        if cores > max {
            return Decision::Shrink {
                by: cores - max,
                reason: format!(
                    "{} is above the range {min}..{max}: {cores} -> {max} cores",
                    n_cores(cores)
                ),
            };
        }
        if let Some(why) = self.busy_most_of(self.policy.sustain) {
            return self.grow(why);
        }
        if let Some(why) = self.backlog_rising() {
            return self.grow(why);
        }
        self.said_at_max = false;
        if self.refused
            && (self.busy_for(self.policy.sustain, |b| b < self.policy.target_busy)).is_some()
        {
            self.refused = false;
        }
        if let Some(why) = self.busy_for(self.policy.idle, |b| b <= self.policy.shrink_busy) {
            return self.shrink(why);
        }
        self.said_too_busy = false;
        Decision::Hold(None)
    }

    /// Notes what the newest sample's work cost per frame, for its count of cores (not while
    /// cooling down: a change's first seconds are moves and cold cores; nor with too few
    /// frames to weigh them: an idle engine's cost per frame is all overhead).
    fn learn_cost(&mut self) {
        let Some(s) = self.window.back() else {
            return;
        };
        if s.frames_per_sec < 1000.0 {
            return;
        }
        let cost = s.work() / s.frames_per_sec;
        let (seen, at) = self.cost.entry(s.all_cores()).or_insert((cost, s.at));
        *seen += 0.2 * (cost - *seen);
        *at = s.at;
    }

    /// Whether the cores were busy over the sustain window: the median sample at least the
    /// grow threshold and none more than [`DIP`] below it (a busy core's measure wobbles
    /// around the threshold; a spike shorter than the window has idle seconds in it).
    fn busy_most_of(&self, span: Duration) -> Option<String> {
        let mut busy: Vec<f64> = self.spell(span)?.iter().map(|s| s.mean_busy()).collect();
        busy.sort_by(f64::total_cmp);
        let (lo, median) = (busy[0], busy[busy.len() / 2]);
        let grow = self.policy.grow_busy;
        (median >= grow && lo >= grow - DIP).then(|| {
            format!(
                "the cores were {:.0}-{:.0}% busy on average for {span:.0?} (median {:.0}%){}",
                lo * 100.0,
                busy[busy.len() - 1] * 100.0,
                median * 100.0,
                self.p99_said()
            )
        })
    }

    /// Whether every sample over the last `span` (the window covering it) has a mean busy
    /// fraction that `holds`; then the reason, with the numbers.
    fn busy_for(&self, span: Duration, holds: impl Fn(f64) -> bool) -> Option<String> {
        let spell = self.spell(span)?;
        if !spell.iter().all(|s| holds(s.mean_busy())) {
            return None;
        }
        let (lo, hi) = spell
            .iter()
            .map(|s| s.mean_busy())
            .fold((1.0f64, 0.0f64), |(lo, hi), b| (lo.min(b), hi.max(b)));
        Some(format!(
            "the cores were {:.0}-{:.0}% busy on average for {:.0?}{}",
            lo * 100.0,
            hi * 100.0,
            span,
            self.p99_said()
        ))
    }

    /// The newest sample's p99, for a reason.
    fn p99_said(&self) -> String {
        match self.window.back().and_then(|s| s.p99) {
            Some(ns) => format!(", p99 latency {}", crate::metrics::human_ns(ns)),
            None => String::new(),
        }
    }

    /// The samples of the last `span`, from the newest one at least `span` old (samples come
    /// about a second apart, never exactly), if the window reaches that far back.
    fn spell(&self, span: Duration) -> Option<Vec<&Sample>> {
        let now = self.window.back()?.at;
        let start = (self.window.iter()).rposition(|s| now.saturating_sub(s.at) >= span)?;
        Some(self.window.iter().skip(start).collect())
    }

    /// The messages queued, or the bytes unread in source sockets, rose at every sample over
    /// the sustain window, to more than double where they started (and beyond a floor, so
    /// that what is in flight anyway is not a trend).
    fn backlog_rising(&self) -> Option<String> {
        let spell = self.spell(self.policy.sustain)?;
        if spell.iter().any(|s| s.sink_down) {
            return None;
        }
        let rising = |what: &str, floor: u64, of: fn(&Sample) -> u64| {
            let (first, last) = (of(spell.first()?), of(spell.last()?));
            let rising = spell.windows(2).all(|w| of(w[1]) >= of(w[0]));
            (rising && last > floor && last > first.saturating_mul(2)).then(|| {
                format!(
                    "{what} rose from {first} to {last} over {:.0?}{}",
                    self.policy.sustain,
                    self.p99_said()
                )
            })
        };
        rising("the messages queued", 10_000, |s| s.backlog)
            .or_else(|| rising("the bytes unread in source sockets", 4 << 20, |s| s.unread))
    }

    fn grow(&mut self, why: String) -> Decision {
        let last = self.window.back().expect("a sample");
        let (cores, max) = (last.cores, self.policy.max);
        if cores >= max {
            if let Some((wanted, _)) = self.node_asked {
                // The same words each time: said once.
                return Decision::Hold(Some(format!(
                    "busy; waiting for the node asked for to join ({} -> {wanted} nodes)",
                    wanted - 1
                )));
            }
            if std::mem::replace(&mut self.said_at_max, true) {
                return Decision::Hold(None);
            }
            if self.policy.ask_for_nodes && !self.refused {
                let wanted = last.nodes + 1;
                self.node_asked = Some((wanted, last.at));
                return Decision::AddNode {
                    nodes: wanted,
                    reason: format!(
                        "{why}, and {} is the most allowed here (--autoscale ..{max}): {} -> {wanted} nodes",
                        n_cores(cores),
                        last.nodes
                    ),
                };
            }
            return Decision::Hold(Some(format!(
                "{why}, but {} is the most allowed (--autoscale ..{max}): staying at {cores}",
                n_cores(cores)
            )));
        }
        // Enough cores that the same work would keep them at the target.
        let all = last.all_cores();
        let wanted = (last.work() / self.policy.target_busy).ceil() as usize;
        let to = (cores + wanted.saturating_sub(all)).clamp(cores + 1, max);
        Decision::Grow {
            by: to - cores,
            reason: format!("{why}: {cores} -> {to} cores"),
        }
    }

    fn shrink(&mut self, why: String) -> Decision {
        let last = self.window.back().expect("a sample");
        let (cores, all) = (last.cores, last.all_cores());
        // The cores that would go: one of this node's, or else a whole member's.
        let (going, what) = if cores > self.policy.min {
            (1, format!("{cores} -> {} cores", cores - 1))
        } else if let Some(spare) = last.spare_node.filter(|_| self.policy.let_nodes_go) {
            let left = last.nodes.saturating_sub(1);
            (spare, format!("{} -> {left} nodes", last.nodes))
        } else {
            return Decision::Hold(None);
        };
        let left = all.saturating_sub(going);
        // What they cost per frame when they last ran, else the work measured now.
        let fresh = |&&(_, at): &&(f64, Duration)| last.at.saturating_sub(at) <= COST_MEMORY;
        let work = match self.cost.get(&left).filter(fresh) {
            Some((cost, _)) if last.frames_per_sec >= 1000.0 => cost * last.frames_per_sec,
            _ => last.work(),
        };
        let after = match left {
            0 => f64::INFINITY,
            n => work / n as f64,
        };
        if after > self.policy.target_busy {
            if std::mem::replace(&mut self.said_too_busy, true) {
                return Decision::Hold(None);
            }
            return Decision::Hold(Some(format!(
                "{why}, but {} would be {:.0}% busy (more than the {:.0}% aimed at)",
                n_cores(left),
                after * 100.0,
                self.policy.target_busy * 100.0
            )));
        }
        let reason = format!("{why}: {what}");
        if cores > self.policy.min {
            Decision::Shrink { by: 1, reason }
        } else {
            Decision::RemoveNode { reason }
        }
    }
}

#[cfg(test)]
mod tests;
