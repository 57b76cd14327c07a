//! Pure: the autoscaling policy. It is fed one [`Sample`] of what the engine measures about
//! once a second and answers with a [`Decision`] and the reason for it, numbers included. It
//! grows when the cores stay busy (or the backlog keeps rising) for a sustain window, shrinks
//! when they stay idle for a longer window, waits out a cooldown after every change (its own,
//! a person's, or one that failed), and never flaps under a steady load: it grows to a target
//! busy fraction below the grow threshold, and shrinks only when the cores left would stay
//! below that target too.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// What the engine measured over the last interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When, since any fixed start.
    pub at: Duration,
    /// Cores running.
    pub cores: usize,
    /// Each core's busy fraction over the interval (time in tasks against time parked), 0..=1.
    pub busy: Vec<f64>,
    /// Messages and bytes waiting: inbox and outbox depths plus unread source bytes, in one
    /// number whose trend is what counts.
    pub backlog: u64,
}

impl Sample {
    fn mean_busy(&self) -> f64 {
        match self.busy.len() {
            0 => 0.0,
            n => self.busy.iter().sum::<f64>() / n as f64,
        }
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
}

impl Policy {
    /// The defaults: grow at 80% busy for 10 s, shrink at 30% for 30 s, aim at 60%, wait 20 s
    /// after a change.
    pub fn new(min: usize, max: usize) -> Self {
        Self {
            min,
            max,
            grow_busy: 0.8,
            shrink_busy: 0.3,
            target_busy: 0.6,
            sustain: Duration::from_secs(10),
            idle: Duration::from_secs(30),
            cooldown: Duration::from_secs(20),
        }
    }
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
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Hold(None) => write!(f, "hold"),
            Decision::Hold(Some(why)) => write!(f, "hold: {why}"),
            Decision::Grow { by, reason } => write!(f, "grow by {by}: {reason}"),
            Decision::Shrink { by, reason } => write!(f, "shrink by {by}: {reason}"),
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
    /// Said once per spell that the load wants more than `max`.
    said_at_max: bool,
}

impl Autoscaler {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            window: VecDeque::new(),
            last_change: None,
            said_at_max: false,
        }
    }

    /// A change of cores ended at `at`, the policy's or a person's, done or failed: the window
    /// starts afresh (what it held was measured on other cores) and so does the cooldown.
    pub fn changed(&mut self, at: Duration) {
        self.window.clear();
        self.last_change = Some(at);
    }

    /// Takes `sample` into the window and decides.
    pub fn decide(&mut self, sample: Sample) -> Decision {
        if self.window.back().is_some_and(|s| s.cores != sample.cores) {
            // The cores changed outside the policy's sight: measure them afresh.
            self.window.clear();
        }
        let longest = self.policy.sustain.max(self.policy.idle);
        self.window.push_back(sample);
        let now = self.window.back().expect("just pushed").at;
        // Keep the newest sample at least `longest` old: it starts the longest spell.
        while self.window.len() >= 2 && now - self.window[1].at >= longest {
            self.window.pop_front();
        }
        if let Some(since) = self.last_change.filter(|&t| now < t + self.policy.cooldown) {
            let left = since + self.policy.cooldown - now;
            return Decision::Hold(Some(format!(
                "cooling down after a change ({:.0?} left)",
                left
            )));
        }
        if let Some(why) = self.busy_for(self.policy.sustain, |b| b >= self.policy.grow_busy) {
            return self.grow(why);
        }
        if let Some(why) = self.backlog_rising() {
            return self.grow(why);
        }
        self.said_at_max = false;
        if let Some(why) = self.busy_for(self.policy.idle, |b| b <= self.policy.shrink_busy) {
            return self.shrink(why);
        }
        Decision::Hold(None)
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
            "the cores were {:.0}-{:.0}% busy on average for {:.0?}",
            lo * 100.0,
            hi * 100.0,
            span
        ))
    }

    /// The samples of the last `span`, from the newest one at least `span` old (samples come
    /// about a second apart, never exactly), if the window reaches that far back.
    fn spell(&self, span: Duration) -> Option<Vec<&Sample>> {
        let now = self.window.back()?.at;
        let start = self.window.iter().rposition(|s| now - s.at >= span)?;
        Some(self.window.iter().skip(start).collect())
    }

    /// The backlog rose at every sample over the sustain window, to more than double where it
    /// started (and beyond a floor, so that a few messages in flight are not a trend).
    fn backlog_rising(&self) -> Option<String> {
        const FLOOR: u64 = 10_000;
        let spell = self.spell(self.policy.sustain)?;
        let (first, last) = (spell.first()?.backlog, spell.last()?.backlog);
        let rising = spell.windows(2).all(|w| w[1].backlog >= w[0].backlog);
        (rising && last > FLOOR && last > 2 * first).then(|| {
            format!(
                "the backlog rose from {first} to {last} over {:.0?}",
                self.policy.sustain
            )
        })
    }

    fn grow(&mut self, why: String) -> Decision {
        let last = self.window.back().expect("a sample");
        let cores = last.cores;
        if cores >= self.policy.max {
            if std::mem::replace(&mut self.said_at_max, true) {
                return Decision::Hold(None);
            }
            return Decision::Hold(Some(format!(
                "{why}, but {cores} cores is the most allowed (--autoscale ..{}): staying at {cores}",
                self.policy.max
            )));
        }
        // Enough cores that the same work would keep them at the target.
        let work = last.mean_busy() * cores as f64;
        let wanted = (work / self.policy.target_busy).ceil() as usize;
        let to = wanted.clamp(cores + 1, self.policy.max);
        Decision::Grow {
            by: to - cores,
            reason: format!("{why}: {cores} -> {to} cores"),
        }
    }

    fn shrink(&mut self, why: String) -> Decision {
        let last = self.window.back().expect("a sample");
        let cores = last.cores;
        if cores <= self.policy.min {
            return Decision::Hold(None);
        }
        let work = last.mean_busy() * cores as f64;
        let after = work / (cores - 1) as f64;
        if after > self.policy.target_busy {
            return Decision::Hold(Some(format!(
                "{why}, but {} cores would be {:.0}% busy (more than the {:.0}% aimed at)",
                cores - 1,
                after * 100.0,
                self.policy.target_busy * 100.0
            )));
        }
        Decision::Shrink {
            by: 1,
            reason: format!("{why}: {cores} -> {} cores", cores - 1),
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
            let d = a.decide(Sample {
                at: SEC * t as u32,
                cores: *cores,
                busy: vec![busy; *cores],
                backlog: 0,
            });
            match &d {
                Decision::Grow { by, .. } => *cores += by,
                Decision::Shrink { by, .. } => *cores -= by,
                Decision::Hold(_) => continue,
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
        // A saturated core shows 100%, not the 150% of work there is: 1 core's worth at 60%
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
        // 80% is reached at t = 60; 10 s later it grows to what the work then needs.
        assert_eq!(times(&changes)[0], 70, "{changes:?}");
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
        // Around the shrink threshold: 25% and 35% busy in turns, never 30 s at or below 30%.
        let mut a = Autoscaler::new(Policy::new(1, 4));
        assert_eq!(
            run(&mut a, &mut cores, 0, 600, |t| if t % 2 == 0 {
                0.5
            } else {
                0.7
            }),
            []
        );
    }

    #[test]
    fn a_steady_load_after_a_grow_makes_no_further_change() {
        let mut a = Autoscaler::new(Policy::new(1, 8));
        let mut cores = 1;
        let changes = run(&mut a, &mut cores, 0, 900, |_| 2.4);
        // A saturated core hides how much more work there is: 1 -> 2, then (2 cores at 100%)
        // 2 -> 4, where 2.4 cores of work is 60% each; then nothing for the 14 minutes left.
        assert_eq!(times(&changes), [10, 30], "{changes:?}");
        assert_eq!(cores, 4);
    }

    #[test]
    fn a_load_beyond_max_stays_at_max_and_says_so_once() {
        let mut a = Autoscaler::new(Policy::new(1, 2));
        let mut cores = 1;
        let mut said = Vec::new();
        for t in 0..200u64 {
            let busy = (5.0 / cores as f64).min(1.0);
            let d = a.decide(Sample {
                at: SEC * t as u32,
                cores,
                busy: vec![busy; cores],
                backlog: 0,
            });
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
        let busy = |t: u64, cores: usize| Sample {
            at: SEC * t as u32,
            cores,
            busy: vec![1.0; cores],
            backlog: 0,
        };
        for t in 0..10 {
            assert_eq!(a.decide(busy(t, 1)), Decision::Hold(None));
        }
        assert!(matches!(a.decide(busy(10, 1)), Decision::Grow { .. }));
        // The grow failed: no second try until the cooldown is over (the samples meanwhile
        // count: the cores are the same).
        a.changed(SEC * 10);
        for t in 11..30 {
            let d = a.decide(busy(t, 1));
            assert!(d.to_string().contains("cooling down"), "{t}: {d}");
        }
        assert!(matches!(
            a.decide(busy(30, 1)),
            Decision::Grow { by: 1, .. }
        ));
        // A person grows to 3 at t = 31 instead: the cooldown runs from there, and the window
        // holds only what 3 cores did.
        a.changed(SEC * 31);
        for t in 32..51 {
            let d = a.decide(busy(t, 3));
            assert!(d.to_string().contains("cooling down"), "{t}: {d}");
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
            d = a.decide(Sample {
                at: SEC * t as u32,
                cores: 1,
                busy: vec![0.7],
                backlog: 5_000 * (t + 1),
            });
        }
        assert!(matches!(d, Decision::Grow { by: 1, .. }), "{d}");
        assert!(
            d.to_string().contains("backlog rose from 5000 to 55000"),
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
            let d = a.decide(Sample {
                at: Duration::from_micros(1_000_700) * i,
                cores: 2,
                busy: vec![0.01; 2],
                backlog: 0,
            });
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
}
