//! Autoscaling on the coordinator: the [`Autoscaler`] policy fed one sample of the cluster's
//! status a second, its decisions carried out through the same `grow`/`shrink` as `quokka
//! ctl`, each logged with its reason, and what it last did kept for `status` and `/metrics`.
//! Every change of cores, the policy's or a person's, done or failed, restarts its cooldown.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::status::Status;
use super::Engine;
use crate::autoscale::{Autoscaler, Decision, Policy, Sample};

/// What the autoscaler did, for `status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AutoscaleStatus {
    /// The range it keeps the cores in while on; `None`: off.
    pub range: Option<(usize, usize)>,
    /// Its last decision worth saying, and when it came.
    pub last: Option<(Instant, String)>,
    pub grows: u64,
    pub shrinks: u64,
    /// Its changes that failed (refused or ended early).
    pub failed: u64,
}

/// The engine's autoscaler: the policy (none while off) and what it did.
pub(crate) struct Autoscaling {
    /// The knobs a range is turned on with (thresholds, windows, cooldown).
    knobs: Policy,
    /// The range it last had, for `autoscale on`.
    last_range: Mutex<Option<(usize, usize)>>,
    scaler: Mutex<Option<Autoscaler>>,
    status: Mutex<AutoscaleStatus>,
}

impl Autoscaling {
    /// On between `range` (or off), with `knobs`.
    pub fn new(range: Option<(usize, usize)>, knobs: Policy) -> Self {
        let scaler = range.map(|(min, max)| {
            Autoscaler::new(Policy {
                min,
                max,
                ..knobs.clone()
            })
        });
        Self {
            knobs,
            last_range: Mutex::new(range),
            scaler: Mutex::new(scaler),
            status: Mutex::new(AutoscaleStatus {
                range,
                ..AutoscaleStatus::default()
            }),
        }
    }

    pub fn status(&self) -> AutoscaleStatus {
        self.status.lock().unwrap().clone()
    }

    /// A change of cores ended at `at`: the cooldown starts again.
    pub fn changed(&self, at: Duration) {
        if let Some(s) = self.scaler.lock().unwrap().as_mut() {
            s.changed(at);
        }
    }

    fn note(&self, what: String) {
        let mut status = self.status.lock().unwrap();
        if status.last.as_ref().is_some_and(|(_, said)| *said == what) {
            return;
        }
        tracing::info!("autoscale: {what}");
        status.last = Some((Instant::now(), what));
    }
}

/// One sample for the policy from a status: each core's busy fraction, and the messages
/// waiting in and between the cores.
fn sample(at: Duration, status: &Status) -> Sample {
    Sample {
        at,
        cores: status.cores.len() + status.silent.len(),
        busy: status.cores.iter().map(|c| c.busy).collect(),
        backlog: (status.cores.iter())
            .map(|c| (c.inbox + c.outbox + c.buffered) as u64)
            .sum(),
    }
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
            *a.scaler.lock().unwrap() = None;
            a.status.lock().unwrap().range = None;
            tracing::info!("autoscale: off");
            return Ok("autoscale off".into());
        };
        if min == 0 || min > max {
            return Err(format!(
                "autoscale {min}..{max}: give MIN..MAX with 1 <= MIN <= MAX"
            ));
        }
        let policy = Policy {
            min,
            max,
            ..a.knobs.clone()
        };
        *a.scaler.lock().unwrap() = Some(Autoscaler::new(policy));
        *a.last_range.lock().unwrap() = Some((min, max));
        a.status.lock().unwrap().range = Some((min, max));
        tracing::info!("autoscale: on, {min}..{max} cores");
        Ok(format!("autoscale on: {min}..{max} cores"))
    }

    /// Takes one sample of the cluster and lets the policy decide; carries out a grow or a
    /// shrink as `quokka ctl` would. Call it about once a second (`quokka run` does, on a
    /// thread of its own); it does nothing while autoscaling is off.
    pub fn autoscale_step(&self) {
        if self.autoscaling.scaler.lock().unwrap().is_none() {
            return;
        }
        let status = self.status();
        let at = self.started.elapsed();
        let sample = sample(at, &status);
        // Written out only when the debug line is on.
        let seen = tracing::enabled!(tracing::Level::DEBUG).then(|| format!("{sample:?}"));
        let decision = match self.autoscaling.scaler.lock().unwrap().as_mut() {
            Some(s) => s.decide(sample),
            None => return,
        };
        if let Some(seen) = seen {
            tracing::debug!("autoscale: {seen} -> {decision}");
        }
        let a = &self.autoscaling;
        let (result, what) = match decision {
            Decision::Hold(None) => return,
            Decision::Hold(Some(why)) => return a.note(why),
            Decision::Grow { by, reason } => (self.grow(by), format!("grow by {by}: {reason}")),
            Decision::Shrink { by, reason } => {
                (self.shrink(by), format!("shrink by {by}: {reason}"))
            }
        };
        let mut status = a.status.lock().unwrap();
        let said = match result {
            Ok(report) => {
                if what.starts_with("grow") {
                    status.grows += 1;
                } else {
                    status.shrinks += 1;
                }
                format!("{what}; done: {report}")
            }
            Err(e) => {
                status.failed += 1;
                format!("{what}; FAILED: {e}")
            }
        };
        drop(status);
        a.note(said);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CoreStatus;

    #[test]
    fn a_sample_counts_silent_cores_and_every_queue() {
        let core = |busy, inbox, outbox, buffered| CoreStatus {
            busy,
            inbox,
            outbox,
            buffered,
            ..CoreStatus::default()
        };
        let status = Status {
            epoch: 0,
            n_slots: 8,
            nodes: Vec::new(),
            cores: vec![core(0.5, 1, 2, 3), core(1.0, 10, 0, 0)],
            lost: Vec::new(),
            silent: vec![7],
            migration: None,
            retired: 0,
            checkpoints: None,
            recovery: None,
            changes: Default::default(),
            autoscale: AutoscaleStatus::default(),
        };
        let s = sample(Duration::from_secs(3), &status);
        assert_eq!((s.cores, s.backlog), (3, 16));
        assert_eq!(s.busy, [0.5, 1.0]);
    }
}
