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
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    /// Feeds one sample a second from `from` for `secs` seconds, each core `busy` (of the whole
    /// load `load`, in cores' worth, spread over the cores); carries out every grow and
    /// shrink, as the runtime would, at once; returns the decisions that changed something.
    fn run(
        a: &mut Autoscaler,
        cores: &mut usize,
        from: u64,
        secs: u64,
        load: impl Fn(u64) -> f64,
    ) -> Vec<(u64, Decision)> {
        let mut changes = Vec::new();
        for t in from..from + secs {
            let busy = (load(t) / *cores as f64).min(1.0);
            let d = a.decide(Sample::one_node(SEC * t as u32, *cores, busy, 0));
            match &d {
                Decision::Grow { by, .. } => *cores += by,
                Decision::Shrink { by, .. } => *cores -= by,
                Decision::Hold(_) => continue,
                Decision::AddNode { .. } | Decision::RemoveNode { .. } => {
                    panic!("one node without commands: {d}")
                }
            }
            a.changed(SEC * t as u32);
            changes.push((t, d));
        }
        changes
    }

    fn times(changes: &[(u64, Decision)]) -> Vec<u64> {
        changes.iter().map(|(t, _)| *t).collect()
    }

    #[test]
    fn a_load_step_grows_after_the_sustain_window_and_shrinks_after_the_idle_one() {
        let mut a = Autoscaler::new(Policy::new(1, 4));
        let mut cores = 1;
        // 0.3 cores of work, then 1.5 (one core saturated), then 0.3 again.
        let load = |t: u64| if (60..180).contains(&t) { 1.5 } else { 0.3 };
        let changes = run(&mut a, &mut cores, 0, 400, load);
        let (t, grow) = &changes[0];
        assert_eq!(*t, 70, "10 s of being busy: {changes:?}");
        // A saturated core shows 100%, not the 150% of work there is: 1 core's worth at 70%
        // each is 2 cores, which then run at 75%, below the grow threshold.
        assert!(matches!(grow, Decision::Grow { by: 1, .. }), "{grow}");
        assert!(grow.to_string().contains("100-100% busy"), "{grow}");
        // Back to 0.3: 15% busy on 2 cores, 30% on 1 after the shrink.
        assert_eq!(times(&changes[1..]), [210], "{changes:?}");
        assert!(
            changes[1].1.to_string().contains("2 -> 1 cores"),
            "{changes:?}"
        );
        assert_eq!(cores, 1);
    }

    #[test]
    fn a_spike_shorter_than_the_sustain_window_changes_nothing() {
        let mut a = Autoscaler::new(Policy::new(1, 4));
        let mut cores = 1;
        let load = |t: u64| if (30..38).contains(&t) { 3.0 } else { 0.5 };
        assert_eq!(run(&mut a, &mut cores, 0, 120, load), []);
    }

    #[test]
    fn a_slow_ramp_grows_once_the_threshold_holds_and_not_before() {
        let mut a = Autoscaler::new(Policy::new(1, 4));
        let mut cores = 1;
        // From 0.2 to 2.0 cores of work over 180 s.
        let changes = run(&mut a, &mut cores, 0, 180, |t| 0.2 + 1.8 * t as f64 / 180.0);
        // 80% is reached at t = 60; at 65 the median of the 10 s window is there, and none
        // of it more than 15 points below: it grows to what the work then needs.
        assert_eq!(times(&changes)[0], 65, "{changes:?}");
        assert!(cores >= 2, "{changes:?}");
        for (_, d) in &changes {
            assert!(
                matches!(d, Decision::Grow { .. }),
                "a ramp up never shrinks: {d}"
            );
        }
    }

    #[test]
    fn noise_around_the_grow_threshold_does_not_flap() {
        let mut a = Autoscaler::new(Policy::new(1, 4));
        let mut cores = 2;
        // 1.5 cores of work with ±0.2 of noise: 65-85% on 2 cores, never 80% for 10 s.
        let noisy = |t: u64| 1.5 + if t.is_multiple_of(3) { 0.2 } else { -0.1 };
        assert_eq!(run(&mut a, &mut cores, 0, 600, noisy), []);
        // Around the shrink threshold: 35% and 45% busy in turns, never 30 s at or below 40%.
        let mut a = Autoscaler::new(Policy::new(1, 4));
        assert_eq!(
            run(&mut a, &mut cores, 0, 600, |t| if t % 2 == 0 {
                0.7
            } else {
                0.9
            }),
            []
        );
    }

    #[test]
    fn a_steady_load_after_a_grow_makes_no_further_change() {
        let mut a = Autoscaler::new(Policy::new(1, 8));
        let mut cores = 1;
        let changes = run(&mut a, &mut cores, 0, 900, |_| 2.7);
        // A saturated core hides how much more work there is: 1 -> 2, then (2 cores at 100%)
        // 2 -> 3 (at 90%), then 3 -> 4, where 2.7 cores of work is 68% each; then nothing for
        // the 14 minutes left.
        assert_eq!(times(&changes), [10, 30, 50], "{changes:?}");
        assert_eq!(cores, 4);
    }

    #[test]
    fn a_load_beyond_max_stays_at_max_and_says_so_once() {
        let mut a = Autoscaler::new(Policy::new(1, 2));
        let mut cores = 1;
        let mut said = Vec::new();
        for t in 0..200u64 {
            let busy = (5.0 / cores as f64).min(1.0);
            let d = a.decide(Sample::one_node(SEC * t as u32, cores, busy, 0));
            match d {
                Decision::Grow { by, .. } => {
                    cores += by;
                    a.changed(SEC * t as u32);
                }
                Decision::Hold(Some(why)) if why.contains("most allowed") => said.push((t, why)),
                _ => {}
            }
        }
        assert_eq!(cores, 2);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0]
                .1
                .contains("2 cores is the most allowed (--autoscale ..2)"),
            "{said:?}"
        );
    }

    #[test]
    fn a_failed_change_or_a_persons_change_restarts_the_cooldown() {
        let mut a = Autoscaler::new(Policy::new(1, 4));
        let busy = |t: u64, cores: usize| Sample::one_node(SEC * t as u32, cores, 1.0, 0);
        for t in 0..10 {
            assert_eq!(a.decide(busy(t, 1)), Decision::Hold(None));
        }
        assert!(matches!(a.decide(busy(10, 1)), Decision::Grow { .. }));
        // The grow failed: no second try until the cooldown is over (the samples meanwhile
        // count: the cores are the same).
        a.changed(SEC * 10);
        for t in 11..30 {
            // Quiet: what was said of the change stays.
            assert_eq!(a.decide(busy(t, 1)), Decision::Hold(None), "{t}");
        }
        assert!(matches!(
            a.decide(busy(30, 1)),
            Decision::Grow { by: 1, .. }
        ));
        // A person grows to 3 at t = 31 instead: the cooldown runs from there, and the window
        // holds only what 3 cores did.
        a.changed(SEC * 31);
        for t in 32..51 {
            assert_eq!(a.decide(busy(t, 3)), Decision::Hold(None), "{t}");
        }
        assert!(
            matches!(a.decide(busy(51, 3)), Decision::Grow { by: 1, .. }),
            "3 -> 4, the max"
        );
    }

    #[test]
    fn a_rising_backlog_grows_even_before_the_cores_look_busy() {
        let mut a = Autoscaler::new(Policy::new(1, 2));
        let mut d = Decision::Hold(None);
        for t in 0..=10u64 {
            d = a.decide(Sample::one_node(SEC * t as u32, 1, 0.7, 5_000 * (t + 1)));
        }
        assert!(matches!(d, Decision::Grow { by: 1, .. }), "{d}");
        assert!(
            d.to_string()
                .contains("messages queued rose from 5000 to 55000"),
            "{d}"
        );
    }

    /// Samples come a little more than a second apart: a spell must still be found (a window
    /// pruned by age alone never reached back far enough, and the engine never shrank).
    #[test]
    fn samples_a_little_more_than_a_second_apart_still_make_a_spell() {
        let mut a = Autoscaler::new(Policy::new(1, 2));
        let mut shrank = None;
        for i in 0..60u32 {
            let d = a.decide(Sample::one_node(
                Duration::from_micros(1_000_700) * i,
                2,
                0.01,
                0,
            ));
            if matches!(d, Decision::Shrink { .. }) {
                shrank = Some(i);
                break;
            }
        }
        assert_eq!(shrank, Some(30), "after the 30 s idle window");
    }

    #[test]
    fn never_below_min() {
        let mut a = Autoscaler::new(Policy::new(2, 4));
        let mut cores = 2;
        assert_eq!(run(&mut a, &mut cores, 0, 300, |_| 0.0), []);
    }

    /// A sample of a cluster: this node's `cores`, `all` cores in `nodes` nodes, each `busy`;
    /// a member of `spare` cores could go.
    fn cluster(
        t: u64,
        cores: usize,
        all: usize,
        nodes: usize,
        busy: f64,
        spare: Option<usize>,
    ) -> Sample {
        Sample {
            nodes,
            spare_node: spare,
            busy: vec![busy; all],
            ..Sample::one_node(SEC * t as u32, cores, busy, 0)
        }
    }

    fn with_nodes(min: usize, max: usize) -> Autoscaler {
        Autoscaler::new(Policy {
            ask_for_nodes: true,
            let_nodes_go: true,
            ..Policy::new(min, max)
        })
    }

    #[test]
    fn busy_at_max_asks_for_a_node_once_and_waits_for_it() {
        let mut a = with_nodes(1, 2);
        let mut d = Vec::new();
        for t in 0..=10 {
            d.push(a.decide(cluster(t, 2, 2, 1, 0.95, None)));
        }
        let asked = d.last().unwrap();
        assert!(matches!(asked, Decision::AddNode { .. }), "{d:?}");
        assert!(
            asked
                .to_string()
                .contains("2 cores is the most allowed here (--autoscale ..2): 1 -> 2 nodes"),
            "{asked}"
        );
        // Not again while it is on its way, however busy the cores stay.
        for t in 11..200 {
            let d = a.decide(cluster(t, 2, 2, 1, 1.0, None));
            assert!(
                d.to_string()
                    .contains("waiting for the node asked for to join (1 -> 2 nodes)"),
                "{t}: {d}"
            );
        }
        // It joins (a change: the cooldown starts), and 4 cores hold the load.
        a.changed(SEC * 200);
        for t in 200..400 {
            let d = a.decide(cluster(t, 2, 4, 2, 0.5, Some(2)));
            assert!(
                !matches!(
                    d,
                    Decision::AddNode { .. } | Decision::RemoveNode { .. } | Decision::Grow { .. }
                ),
                "{t}: {d}"
            );
        }
    }

    #[test]
    fn a_node_that_never_joins_is_asked_for_again_after_the_patience() {
        let mut a = with_nodes(1, 1);
        let asks: Vec<u64> = (0..700u64)
            .filter(|&t| {
                matches!(
                    a.decide(cluster(t, 1, 1, 1, 1.0, None)),
                    Decision::AddNode { .. }
                )
            })
            .collect();
        assert_eq!(asks, [10, 310, 610]);
    }

    #[test]
    fn a_refused_node_is_not_asked_for_again_until_the_load_eases() {
        let mut a = with_nodes(1, 1);
        let mut asks = Vec::new();
        for t in 0..400u64 {
            // Busy, with a one-second dip every 15 s (not an easing); from 150 s a lull of
            // 50 s below the target; busy again from 200 s.
            let busy = match t {
                150..200 => 0.5,
                _ if t % 15 == 0 => 0.7,
                _ => 1.0,
            };
            if let Decision::AddNode { .. } = a.decide(cluster(t, 1, 1, 1, busy, None)) {
                asks.push(t);
                a.node_refused(SEC * t as u32);
            }
        }
        // (The dips to 70% are within a busy spell's tolerance.)
        assert_eq!(asks[..2], [10, 210], "{asks:?}");
        // A person's change does not make it ask again either.
        let mut a = with_nodes(1, 1);
        assert!(matches!(
            (0..=10)
                .map(|t| a.decide(cluster(t, 1, 1, 1, 1.0, None)))
                .last()
                .unwrap(),
            Decision::AddNode { .. }
        ));
        a.node_refused(SEC * 10);
        a.changed(SEC * 20);
        for t in 11..200 {
            let d = a.decide(cluster(t, 1, 1, 1, 1.0, None));
            assert!(!matches!(d, Decision::AddNode { .. }), "{t}: {d}");
        }
    }

    #[test]
    fn a_rising_backlog_at_max_asks_for_a_node_and_says_why() {
        let mut a = with_nodes(1, 1);
        let mut d = Decision::Hold(None);
        for t in 0..=10u64 {
            let mut s = cluster(t, 1, 1, 1, 0.7, None);
            s.unread = (5 << 20) * (t + 1);
            s.p99 = Some(2_500_000);
            d = a.decide(s);
        }
        assert!(matches!(d, Decision::AddNode { nodes: 2, .. }), "{d}");
        assert!(
            d.to_string().contains("bytes unread in source sockets rose from 5242880 to 57671680 over 10s, p99 latency 2.50ms"),
            "{d}"
        );
    }

    #[test]
    fn a_member_that_holds_every_core_never_goes() {
        // A sample claiming a spare member with all the cores: none would be left.
        let mut a = with_nodes(1, 2);
        let d = (0..=30)
            .map(|t| a.decide(cluster(t, 1, 2, 2, 0.0, Some(2))))
            .last()
            .unwrap();
        assert!(d.to_string().contains("0 cores would be"), "{d}");
    }

    #[test]
    fn idle_at_min_lets_the_spare_member_go_if_the_rest_hold_the_load() {
        let run = |busy: f64, spare: Option<usize>| {
            let mut a = with_nodes(1, 2);
            (0..=30)
                .map(|t| a.decide(cluster(t, 1, 3, 2, busy, spare)))
                .last()
                .unwrap()
        };
        // 3 cores at 10%: the 1 left after a 2-core member goes is 30% busy.
        let d = run(0.1, Some(2));
        assert!(matches!(d, Decision::RemoveNode { .. }), "{d}");
        assert!(d.to_string().contains(": 2 -> 1 nodes"), "{d}");
        // At 25% the one left would be 75% busy: the member stays, and it says why.
        let d = run(0.25, Some(2));
        assert!(d.to_string().contains("1 core would be 75% busy"), "{d}");
        // No member can go (the coordinator alone, or open source connections).
        assert_eq!(run(0.1, None), Decision::Hold(None));
        // Without --on-scale-in the member stays.
        let mut a = Autoscaler::new(Policy::new(1, 2));
        let d = (0..=30)
            .map(|t| a.decide(cluster(t, 1, 3, 2, 0.1, Some(2))))
            .last()
            .unwrap();
        assert_eq!(d, Decision::Hold(None));
    }

    #[test]
    fn this_nodes_cores_shrink_to_min_before_a_node_goes() {
        let mut a = with_nodes(1, 4);
        let mut d = Decision::Hold(None);
        for t in 0..=30 {
            d = a.decide(cluster(t, 2, 4, 2, 0.1, Some(2)));
        }
        assert!(matches!(d, Decision::Shrink { by: 1, .. }), "{d}");
    }

    #[test]
    fn a_grow_counts_the_work_of_the_whole_cluster() {
        // 4 cores (2 here, 2 on a member) at 90%: 3.6 cores of work want 6 cores at 70%.
        let mut a = with_nodes(1, 8);
        let d = (0..=10)
            .map(|t| a.decide(cluster(t, 2, 4, 2, 0.9, Some(2))))
            .last()
            .unwrap();
        assert!(matches!(d, Decision::Grow { by: 2, .. }), "{d}");
        assert!(d.to_string().contains("2 -> 4 cores"), "{d}");
    }

    #[test]
    fn cores_outside_the_range_are_brought_into_it() {
        let mut a = Autoscaler::new(Policy::new(2, 3));
        let d = a.decide(Sample::one_node(SEC, 1, 0.0, 0));
        assert!(matches!(d, Decision::Grow { by: 1, .. }), "{d}");
        assert!(
            d.to_string().contains("1 core is below the range 2..3"),
            "{d}"
        );
        a.set_range(1, 2);
        let d = a.decide(Sample::one_node(SEC * 2, 5, 1.0, 0));
        assert!(matches!(d, Decision::Shrink { by: 3, .. }), "{d}");
        assert!(
            d.to_string().contains("above the range 1..2: 5 -> 2 cores"),
            "{d}"
        );
    }

    #[test]
    fn queues_behind_a_down_sink_are_not_a_reason_to_grow() {
        let mut a = Autoscaler::new(Policy::new(1, 2));
        for t in 0..=30u64 {
            let mut s = Sample::one_node(SEC * t as u32, 1, 0.01, 50_000 * (t + 1));
            s.unread = (5 << 20) * (t + 1);
            s.sink_down = t % 7 == 3;
            let d = a.decide(s);
            assert!(!matches!(d, Decision::Grow { .. }), "{t}: {d}");
        }
    }

    #[test]
    fn waiting_for_a_node_still_shrinks_when_the_load_is_gone() {
        let mut a = with_nodes(1, 2);
        for t in 0..=10 {
            a.decide(cluster(t, 2, 2, 1, 1.0, None));
        }
        let d = (11..=45)
            .map(|t| a.decide(cluster(t, 2, 2, 1, 0.05, None)))
            .find(|d| !matches!(d, Decision::Hold(_)));
        assert!(matches!(d, Some(Decision::Shrink { by: 1, .. })), "{d:?}");
    }

    #[test]
    fn a_new_range_keeps_the_node_asked_for_and_the_cooldown() {
        let mut a = with_nodes(1, 1);
        for t in 0..=10 {
            a.decide(cluster(t, 1, 1, 1, 1.0, None));
        }
        a.changed(SEC * 11);
        a.set_range(1, 1);
        for t in 12..100 {
            let d = a.decide(cluster(t, 1, 1, 1, 1.0, None));
            assert!(!matches!(d, Decision::AddNode { .. }), "{t}: {d}");
        }
    }

    #[test]
    fn the_longest_windows_do_not_overflow() {
        let mut a = Autoscaler::new(Policy {
            cooldown: Duration::MAX,
            sustain: Duration::MAX,
            idle: Duration::MAX,
            ..Policy::new(1, 2)
        });
        a.changed(SEC);
        for t in 0..5 {
            assert_eq!(
                a.decide(Sample::one_node(SEC * t, 1, 1.0, 0)),
                Decision::Hold(None)
            );
        }
    }

    /// Recorded: one core's busy fraction each second under `quokka-bench autoscale`'s peak on
    /// the 2-CPU VM (word count at 3.4 M words/s): it wobbles around 80%, and must grow.
    #[test]
    fn a_recorded_peak_that_wobbles_around_the_threshold_grows() {
        const PEAK: [f64; 20] = [
            0.97, 0.90, 0.97, 0.98, 0.96, 0.89, 0.88, 0.90, 0.80, 0.82, 0.97, 0.87, 0.87, 0.83,
            0.89, 0.82, 0.81, 0.79, 0.80, 0.83,
        ];
        let mut a = Autoscaler::new(Policy::new(1, 2));
        let grew = (PEAK.iter().enumerate()).position(|(t, &b)| {
            matches!(
                a.decide(Sample::one_node(SEC * t as u32, 1, b, 0)),
                Decision::Grow { .. }
            )
        });
        assert_eq!(grew, Some(10), "10 s into the peak");
    }

    /// Recorded shape of `quokka-bench autoscale` on the 2-CPU VM: one core ran the low rate at
    /// 57% busy, but two cores ran it at 37% each (cross-core hops): judged by what two cores
    /// measure, one would be 74% busy, above the target, and it never shrank. Judged by what
    /// one core cost per frame when it ran, it shrinks after the idle window, once.
    #[test]
    fn a_shrink_is_judged_by_what_fewer_cores_cost_when_they_ran() {
        let mut a = Autoscaler::new(Policy::new(1, 2));
        let mut cores = 1;
        let mut changes = Vec::new();
        for t in 0..400u64 {
            let (rate, busy) = match (t, cores) {
                (100..140, 1) => (390_000.0, 0.95),
                (100..140, _) => (390_000.0, 0.6),
                (_, 1) => (130_000.0, 0.57),
                _ => (130_000.0, 0.37),
            };
            let mut s = Sample::one_node(SEC * t as u32, cores, busy, 0);
            s.frames_per_sec = rate;
            match a.decide(s) {
                Decision::Grow { by, .. } => cores += by,
                Decision::Shrink { by, .. } => cores -= by,
                _ => continue,
            }
            a.changed(SEC * t as u32);
            changes.push((t, cores));
        }
        assert_eq!(changes, [(110, 2), (170, 1)]);
    }

    #[test]
    fn a_node_that_joins_after_a_refusal_ends_it_and_one_not_asked_is_asked_again() {
        let busy = |a: &mut Autoscaler, from: u64, to: u64, nodes: usize| {
            (from..to)
                .filter(|&t| {
                    let d = a.decide(cluster(t, 1, nodes, nodes, 1.0, None));
                    matches!(d, Decision::AddNode { .. })
                })
                .collect::<Vec<u64>>()
        };
        let mut a = with_nodes(1, 1);
        assert_eq!(busy(&mut a, 0, 11, 1), [10]);
        a.node_refused(SEC * 10);
        assert_eq!(busy(&mut a, 11, 100, 1), Vec::<u64>::new());
        // A node joins anyway (a person started it): the next busy spell asks again.
        a.changed(SEC * 100);
        assert_eq!(busy(&mut a, 100, 200, 2), [120]);
        // A command that could not start: asked again after the cooldown.
        let mut a = with_nodes(1, 1);
        assert_eq!(busy(&mut a, 0, 11, 1), [10]);
        a.node_not_asked(SEC * 10);
        assert_eq!(busy(&mut a, 11, 41, 1), [30]);
    }

    #[test]
    fn what_fewer_cores_cost_is_forgotten_after_a_while() {
        let mut a = Autoscaler::new(Policy::new(1, 2));
        let sample = |t: u64, cores: usize, busy: f64| {
            let mut s = Sample::one_node(SEC * t as u32, cores, busy, 0);
            s.frames_per_sec = 100_000.0;
            s
        };
        // One core at 50%: cheap. Then, long after, two cores at 38% each.
        a.decide(sample(0, 1, 0.5));
        a.changed(SEC);
        let d = (1000..1100)
            .map(|t| a.decide(sample(t, 2, 0.38)))
            .find(|d| !matches!(d, Decision::Hold(None)));
        // Judged by what two cores measure: 76% on one, more than the target.
        assert!(
            d.as_ref()
                .is_some_and(|d| d.to_string().contains("1 core would be 76% busy")),
            "{d:?}"
        );
    }
}
