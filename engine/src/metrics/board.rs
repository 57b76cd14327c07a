//! What each core publishes about itself once a second, for readers on other threads (`/metrics`
//! over HTTP): they read the last copy and never ask the core, so however many clients scrape,
//! a core pays for one copy of its counters a second.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

use super::CoreStatus;
use crate::routing::CoreId;

/// Upper bounds of the latency buckets `/metrics` exposes, in nanoseconds: ten per decade
/// (each about 1.26x the one before) from 1 us to 10 s, fine enough that `histogram_quantile`
/// reads p50 to p99.99 within a bucket's 26%.
pub fn latency_bounds_ns() -> &'static [u64] {
    static BOUNDS: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    BOUNDS.get_or_init(|| {
        (0..=70)
            .map(|i| (1_000.0 * 10f64.powf(f64::from(i) / 10.0)).round() as u64)
            .collect()
    })
}

/// A latency histogram as Prometheus exposes it: how many samples fell in each bucket of
/// [`latency_bounds_ns`] (above the bound before, at most its own), how many in all (those
/// beyond the last bound too), and their sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyBuckets {
    pub per_bucket: Vec<u64>,
    pub count: u64,
    pub sum_ns: f64,
}

impl LatencyBuckets {
    /// The buckets of `h` (in nanoseconds). Each recorded value counts in the buckets its
    /// histogram bucket's highest equivalent value fits (3 significant digits, as recorded); the
    /// sum is the histogram's mean times its count.
    pub fn of(h: &Histogram<u64>) -> Self {
        let bounds = latency_bounds_ns();
        let mut per_bucket = vec![0u64; bounds.len()];
        for v in h.iter_recorded() {
            let value = h.highest_equivalent(v.value_iterated_to());
            let at = bounds.partition_point(|&b| b < value);
            if let Some(n) = per_bucket.get_mut(at) {
                *n += v.count_at_value();
            }
        }
        LatencyBuckets {
            per_bucket,
            count: h.len(),
            sum_ns: h.mean() * h.len() as f64,
        }
    }
}

/// One core's last published copy.
#[derive(Debug, Clone)]
pub struct Published {
    pub status: CoreStatus,
    /// Source-to-sink latency over the core's whole run.
    pub latency: LatencyBuckets,
}

/// The node's cores' last published copies, by core id; a core takes its entry out when it
/// ends.
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<CoreId, Published>>>);

impl Board {
    pub fn publish(&self, core: CoreId, copy: Published) {
        self.0.lock().unwrap().insert(core, copy);
    }

    pub fn remove(&self, core: CoreId) {
        self.0.lock().unwrap().remove(&core);
    }

    /// Every running core's last copy, by core id.
    pub fn read(&self) -> Vec<Published> {
        self.0.lock().unwrap().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::latency_histogram;

    #[test]
    fn bounds_run_from_a_microsecond_to_ten_seconds_ten_per_decade() {
        let b = latency_bounds_ns();
        assert_eq!((b[0], b[10], b[70]), (1_000, 10_000, 10_000_000_000));
        assert_eq!(b[5], 3_162);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn each_sample_counts_in_the_first_bucket_it_fits() {
        let mut h = latency_histogram();
        h.record(500).unwrap(); // below the first bound
        h.record(1_000).unwrap(); // exactly the first bound
        h.record(9_000).unwrap();
        h.record(20_000_000_000).unwrap(); // beyond the last bound: only in +Inf
        let b = LatencyBuckets::of(&h);
        assert_eq!(b.count, 4);
        assert_eq!(b.per_bucket[0], 2, "{:?}", &b.per_bucket[..12]);
        assert_eq!(b.per_bucket[9], 0, "9 us is above 7.94 us");
        assert_eq!(b.per_bucket[10], 1, "9 us is at most 10 us");
        assert_eq!(
            b.per_bucket.iter().sum::<u64>(),
            3,
            "20 s is beyond the last bound"
        );
        let exact = 500.0 + 1_000.0 + 9_000.0 + 20e9;
        assert!((b.sum_ns - exact).abs() / exact < 0.01, "{}", b.sum_ns);
    }

    #[test]
    fn an_empty_histogram_has_empty_buckets() {
        let b = LatencyBuckets::of(&latency_histogram());
        assert_eq!((b.count, b.sum_ns), (0, 0.0));
        assert!(b.per_bucket.iter().all(|&n| n == 0));
    }

    #[test]
    fn a_core_that_ends_leaves_the_board() {
        let board = Board::default();
        let copy = |core| Published {
            status: CoreStatus {
                core,
                ..CoreStatus::default()
            },
            latency: LatencyBuckets::default(),
        };
        board.publish(1, copy(1));
        board.publish(0, copy(0));
        board.publish(1, copy(1));
        let cores: Vec<u16> = board.read().iter().map(|p| p.status.core).collect();
        assert_eq!(cores, [0, 1]);
        board.remove(0);
        assert_eq!(board.read().len(), 1);
    }
}
