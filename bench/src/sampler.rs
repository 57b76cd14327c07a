//! Throughput and latency of a running engine per interval, sampled from the benchmark's own
//! driver threads (never from inside the engine): the engine's latency since the previous
//! sample (`Engine::take_latency`) and the outputs the sink collector has counted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quokka_engine::metrics::latency_histogram;
use quokka_engine::Engine;
use quokka_io::client::Collector;

use crate::plot::Interval;

/// One sample: when (since the sampler started), the outputs counted so far, and the latency
/// of the outputs written since the previous sample.
struct Sample {
    at: Duration,
    outputs: u64,
    latency: Histogram<u64>,
}

/// The only caller of `take_latency` while it lives: a ticker thread samples at a fixed period
/// and a driver cuts extra samples at the edges of the windows it measures, so each window's
/// latency is exactly the merge of its samples.
pub struct Sampler<'a> {
    engine: &'a Engine,
    collector: &'a Collector,
    started: Instant,
    samples: Mutex<Vec<Sample>>,
}

impl<'a> Sampler<'a> {
    /// Starts sampling now: latency recorded before this call is dropped.
    pub fn new(engine: &'a Engine, collector: &'a Collector) -> Sampler<'a> {
        engine.take_latency();
        let first = Sample {
            at: Duration::ZERO,
            outputs: collector.records(),
            latency: latency_histogram(),
        };
        Sampler {
            engine,
            collector,
            started: Instant::now(),
            samples: Mutex::new(vec![first]),
        }
    }

    /// Time since the sampler started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Takes a sample now; returns its index, a mark for [`Sampler::latency_between`].
    pub fn sample(&self) -> usize {
        // Held while taking, so samples are in the order their latency was taken.
        let mut samples = self.samples.lock().unwrap();
        let latency = self.engine.take_latency();
        samples.push(Sample {
            at: self.started.elapsed(),
            outputs: self.collector.records(),
            latency,
        });
        samples.len() - 1
    }

    /// Samples every `period` until `stop` is set.
    pub fn tick(&self, period: Duration, stop: &AtomicBool) {
        let mut next = Instant::now() + period;
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(20)));
                continue;
            }
            self.sample();
            next += period;
        }
    }

    /// The latency of the outputs written between the samples `from` and `to`.
    pub fn latency_between(&self, from: usize, to: usize) -> Histogram<u64> {
        let samples = self.samples.lock().unwrap();
        let mut all = latency_histogram();
        for s in &samples[from + 1..=to] {
            all.add(&s.latency).expect("same histogram bounds");
        }
        all
    }

    /// The samples as intervals for a picture, each at least `shortest` long: a shorter one (a
    /// window's edge cut just after a tick) is merged into the next.
    pub fn intervals(&self, shortest: Duration) -> Vec<Interval> {
        intervals(&self.samples.lock().unwrap(), shortest)
    }
}

/// See [`Sampler::intervals`].
fn intervals(samples: &[Sample], shortest: Duration) -> Vec<Interval> {
    let mut intervals = Vec::new();
    let mut from = 0;
    let mut latency = latency_histogram();
    for (i, s) in samples.iter().enumerate().skip(1) {
        latency.add(&s.latency).expect("same histogram bounds");
        let last = i + 1 == samples.len();
        if s.at - samples[from].at < shortest && !last {
            continue;
        }
        intervals.push(Interval {
            start: samples[from].at.as_secs_f64(),
            end: s.at.as_secs_f64(),
            outputs: s.outputs - samples[from].outputs,
            p99: (!latency.is_empty()).then(|| latency.value_at_quantile(0.99)),
        });
        latency.reset();
        from = i;
    }
    intervals
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, outputs: u64, latencies: &[u64]) -> Sample {
        let mut latency = latency_histogram();
        for &l in latencies {
            latency.record(l).unwrap();
        }
        Sample {
            at: Duration::from_millis(ms),
            outputs,
            latency,
        }
    }

    #[test]
    fn short_intervals_merge_into_the_next() {
        let samples = [
            sample(0, 10, &[]),
            sample(100, 110, &[1000]),
            sample(120, 130, &[9_000_000]), // a cut just after a tick
            sample(200, 210, &[2000]),
            sample(300, 210, &[]),
            sample(310, 220, &[3000]), // the last, short: kept
        ];
        let got = intervals(&samples, Duration::from_millis(50));
        let spans: Vec<(f64, f64, u64)> = got.iter().map(|i| (i.start, i.end, i.outputs)).collect();
        assert_eq!(
            spans,
            [
                (0.0, 0.1, 100),
                (0.1, 0.2, 100),
                (0.2, 0.3, 0),
                (0.3, 0.31, 10)
            ]
        );
        let p99s: Vec<Option<u64>> = got.iter().map(|i| i.p99).collect();
        assert_eq!(p99s[0], Some(1000));
        // The merged interval holds both samples' latency: its p99 is the slow one.
        assert!(p99s[1].unwrap() >= 9_000_000, "{p99s:?}");
        assert_eq!(p99s[2], None);
        assert!(p99s[3].unwrap() >= 3000, "{p99s:?}");
    }

    #[test]
    fn no_samples_after_the_first_is_no_interval() {
        assert!(intervals(&[sample(0, 0, &[])], Duration::from_millis(50)).is_empty());
    }
}
