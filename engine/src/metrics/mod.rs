//! Counters and source-to-sink latency: each core keeps its own, the summary merges them, and
//! the board holds what each core last published for readers on other threads.

mod board;

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

pub use self::board::{latency_bounds_ns, Board, LatencyBuckets, Published};

/// The system-wide monotonic clock (`CLOCK_MONOTONIC`) in nanoseconds: the ingress time of
/// messages. One clock for every process on a machine, so latency stays meaningful when a message
/// crosses to another node on the same host (across hosts it is not comparable).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A latency histogram in nanoseconds, 1 ns to 1 hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// What one core did while the engine ran.
#[derive(Debug, Clone)]
pub struct CoreReport {
    pub core: usize,
    /// Source connections this core read.
    pub connections: u64,
    /// Connections closed because of bad framing, a bad frame or a read error.
    pub connection_errors: u64,
    /// Connections this core cut itself (stopping, or its node leaving) while their peers still
    /// had them open; a frame cut in half there is not the peer's fault, so not an error.
    pub connections_cut: u64,
    /// Connections this core handed to another core when it left.
    pub handed_over: u64,
    /// Frames read from sources on this core.
    pub frames: u64,
    /// Bytes read from sources: TCP frames with their length prefixes, a file's bytes.
    pub bytes_in: u64,
    /// Time the core's executor spent running tasks (not parked).
    pub busy: Duration,
    /// Outputs written to the sink.
    pub outputs: u64,
    /// Outputs written to a sink connection that then failed: TCP cannot say whether the sink
    /// read them, and they are not sent again, so they may be lost.
    pub at_risk: u64,
    /// Outputs the sink could not deliver before shutdown gave up.
    pub undelivered: u64,
    /// Connection attempts to the sink that failed (refused, unreachable).
    pub sink_failures: u64,
    /// Keyed messages that reached a core owning neither the slot nor expecting it: a bug, so
    /// tests assert it stays 0.
    pub misrouted: u64,
    /// State entities held at the end.
    pub entities: u64,
    /// Keyed messages that came later than their stage's watermark (dropped, or written to the
    /// app's sink for them).
    pub late: u64,
    /// Source-to-sink latency of the outputs written, in nanoseconds: from the read of the input
    /// to the completed write of the output to the sink socket.
    pub latency: Histogram<u64>,
    /// The engine's own share: from the read of the input until the sink writer takes the
    /// output (excludes the socket write and so a slow receiver).
    pub engine_latency: Histogram<u64>,
}

impl CoreReport {
    pub fn new(core: usize) -> Self {
        Self {
            core,
            connections: 0,
            connection_errors: 0,
            connections_cut: 0,
            handed_over: 0,
            frames: 0,
            bytes_in: 0,
            busy: Duration::ZERO,
            outputs: 0,
            at_risk: 0,
            undelivered: 0,
            sink_failures: 0,
            misrouted: 0,
            entities: 0,
            late: 0,
            latency: latency_histogram(),
            engine_latency: latency_histogram(),
        }
    }

    /// Adds `other`'s counters and latency to this report's (`core` stays).
    pub fn absorb(&mut self, other: &CoreReport) {
        self.connections += other.connections;
        self.connection_errors += other.connection_errors;
        self.connections_cut += other.connections_cut;
        self.handed_over += other.handed_over;
        self.frames += other.frames;
        self.bytes_in += other.bytes_in;
        self.busy += other.busy;
        self.outputs += other.outputs;
        self.at_risk += other.at_risk;
        self.undelivered += other.undelivered;
        self.sink_failures += other.sink_failures;
        self.misrouted += other.misrouted;
        self.entities += other.entities;
        self.late += other.late;
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
        self.engine_latency
            .add(&other.engine_latency)
            .expect("same histogram bounds");
    }
}

/// The cores that left before the end (`shrink`), folded into one report: a service that
/// scales up and down retires thousands, and keeping a report (two histograms) for each would
/// grow without bound.
#[derive(Debug, Clone)]
pub struct Retired {
    /// How many cores retired.
    pub count: usize,
    /// Their counters and latency, added up (`totals.core` means nothing).
    pub totals: CoreReport,
}

impl Default for Retired {
    fn default() -> Self {
        Self {
            count: 0,
            totals: CoreReport::new(0),
        }
    }
}

impl Retired {
    pub fn add(&mut self, report: &CoreReport) {
        self.count += 1;
        self.totals.absorb(report);
    }
}

/// What the whole engine did: per-core reports and their totals.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The cores that ran to the end, one report each.
    pub cores: Vec<CoreReport>,
    /// The cores retired before the end, folded into one report.
    pub retired: Retired,
    pub elapsed: Duration,
    /// With a state dir: the last durable checkpoint at the end (the one a restart restores).
    pub checkpoint: Option<u64>,
}

impl Summary {
    /// Every report: the running cores', then the retired cores' totals.
    fn reports(&self) -> impl Iterator<Item = &CoreReport> {
        self.cores.iter().chain(Some(&self.retired.totals))
    }

    fn total(&self, f: impl Fn(&CoreReport) -> u64) -> u64 {
        self.reports().map(f).sum()
    }

    pub fn frames(&self) -> u64 {
        self.total(|c| c.frames)
    }

    pub fn outputs(&self) -> u64 {
        self.total(|c| c.outputs)
    }

    pub fn undelivered(&self) -> u64 {
        self.total(|c| c.undelivered)
    }

    pub fn entities(&self) -> u64 {
        self.total(|c| c.entities)
    }

    pub fn connection_errors(&self) -> u64 {
        self.total(|c| c.connection_errors)
    }

    pub fn connections_cut(&self) -> u64 {
        self.total(|c| c.connections_cut)
    }

    /// Outputs written to sink connections that then failed (the sink may not have them).
    pub fn at_risk(&self) -> u64 {
        self.total(|c| c.at_risk)
    }

    pub fn handed_over(&self) -> u64 {
        self.total(|c| c.handed_over)
    }

    pub fn misrouted(&self) -> u64 {
        self.total(|c| c.misrouted)
    }

    /// Messages later than their stage's watermark, retired cores' too.
    pub fn late(&self) -> u64 {
        self.total(|c| c.late)
    }

    /// Source-to-sink latency over all cores.
    pub fn latency(&self) -> Histogram<u64> {
        self.merged(|c| &c.latency)
    }

    /// The engine's share of the latency (until the sink writer takes the output), all cores.
    pub fn engine_latency(&self) -> Histogram<u64> {
        self.merged(|c| &c.engine_latency)
    }

    fn merged(&self, f: impl Fn(&CoreReport) -> &Histogram<u64>) -> Histogram<u64> {
        let mut all = latency_histogram();
        for c in self.reports() {
            all.add(f(c)).expect("same histogram bounds");
        }
        all
    }
}

/// A core's latency samples and the views kept of them: the whole run, the current and the last
/// whole second (for `status`), and since the last `Engine::take_latency`. The sink writer records
/// each output once, into `fresh`; the views are brought up to date by [`Window::fold`], about
/// once a second, so the hot path pays for one histogram, not one per view.
#[derive(Debug)]
pub struct Window {
    fresh: Histogram<u64>,
    second: Histogram<u64>,
    pub last_second: Histogram<u64>,
    interval: Histogram<u64>,
    pub last_frames_per_sec: f64,
    pub last_outputs_per_sec: f64,
    /// The fraction of the last second the executor ran tasks.
    pub last_busy: f64,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            fresh: latency_histogram(),
            second: latency_histogram(),
            last_second: latency_histogram(),
            interval: latency_histogram(),
            last_frames_per_sec: 0.0,
            last_outputs_per_sec: 0.0,
            last_busy: 0.0,
        }
    }
}

impl Window {
    /// One output's source-to-sink latency, in nanoseconds.
    pub fn record(&mut self, ns: u64) {
        self.fresh.saturating_record(ns.max(1));
    }

    /// Moves the fresh samples into `total` (the whole run) and the windows.
    pub fn fold(&mut self, total: &mut Histogram<u64>) {
        if self.fresh.is_empty() {
            return;
        }
        for view in [total, &mut self.second, &mut self.interval] {
            view.add(&self.fresh).expect("same histogram bounds");
        }
        self.fresh.reset();
    }

    /// Closes the current second: it becomes the last whole second.
    pub fn end_second(&mut self, total: &mut Histogram<u64>) {
        self.fold(total);
        std::mem::swap(&mut self.second, &mut self.last_second);
        self.second.reset();
    }

    /// The samples since the previous call.
    pub fn take_interval(&mut self, total: &mut Histogram<u64>) -> Histogram<u64> {
        self.fold(total);
        let taken = self.interval.clone();
        self.interval.reset();
        taken
    }
}

/// One core as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CoreStatus {
    /// The node that runs the core (filled in by the node that answers).
    pub node: String,
    pub core: u16,
    pub cpu: usize,
    pub epoch: u64,
    pub slots: usize,
    pub entities: usize,
    /// Bytes of the slots this core owns (their arrays, as a move carries them).
    pub state_bytes: u64,
    /// Messages waiting for slots on their way to this core.
    pub buffered: usize,
    pub connections: usize,
    pub frames: u64,
    /// Bytes read from sources: TCP frames with their length prefixes, a file's bytes.
    pub bytes_in: u64,
    /// Source connections closed on bad framing, a frame the decoder rejected, or a read
    /// error (and messages of file sources skipped for those).
    pub source_errors: u64,
    /// Messages waiting in this core's inbox (both lanes), when it last looked.
    pub inbox: usize,
    /// Messages queued for other cores and not yet in their inboxes.
    pub outbox: usize,
    /// Bytes waiting in this core's source sockets, not read yet, when it last looked.
    pub unread: u64,
    /// The fraction of the last second the core's executor ran tasks, 0 to 1 (the rest it was
    /// parked, waiting for work).
    pub busy: f64,
    /// Seconds it ran tasks since it started.
    pub busy_seconds: f64,
    /// Keyed messages applied by this core's stateful steps (every stage's).
    pub applied: u64,
    /// Messages that came later than their stage's watermark (dropped, or sent to the app's
    /// sink for them).
    pub late: u64,
    /// Timers pending on this core's entities.
    pub timers: usize,
    /// The first stage's watermark on this core, if its sources stamp event time.
    pub watermark: Option<u64>,
    pub outputs: u64,
    /// Failed connection attempts to the sink so far.
    pub sink_failures: u64,
    /// The last attempt to reach the sink failed and outputs wait for it.
    pub sink_down: bool,
    /// Outputs written to sink connections that then failed (the sink may not have them).
    pub at_risk: u64,
    pub frames_per_sec: f64,
    pub outputs_per_sec: f64,
    /// Source-to-sink latency over the last second (`None`: no output in it). Percentiles, not
    /// the histogram, so that asking for status costs the core next to nothing.
    pub latency_p50: Option<u64>,
    pub latency_p99: Option<u64>,
    pub latency_p999: Option<u64>,
    pub latency_max: Option<u64>,
    /// A source read here replays what a lost node's restored slots need (or is about to).
    pub replaying: bool,
    /// The file sources this core reads: each one's name, the offset of its first message not
    /// routed yet, and how it ended if it did.
    pub files: Vec<(String, u64, Option<String>)>,
}

/// Formats nanoseconds for people: `850ns`, `12.3us`, `4.56ms`, `1.20s`.
pub fn human_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

/// One line of latency percentiles: `p50 12.0us  p99 80.1us  p99.9 ...  max ...`.
pub fn percentiles(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    let q = |p: f64| human_ns(h.value_at_quantile(p));
    format!(
        "p50 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
        q(0.5),
        q(0.99),
        q(0.999),
        q(0.9999),
        human_ns(h.max())
    )
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let running = self.cores.len();
        let cores = match self.retired.count {
            0 => format!("{running} cores"),
            retired => format!("{running} cores ({retired} retired)"),
        };
        writeln!(
            f,
            "ran {:.1}s on {}: {} frames in, {} outputs out ({:.0} outputs/s), {} entities",
            secs,
            cores,
            self.frames(),
            self.outputs(),
            self.outputs() as f64 / secs,
            self.entities()
        )?;
        writeln!(
            f,
            "source-to-sink latency: {}",
            percentiles(&self.latency())
        )?;
        writeln!(
            f,
            "  engine share (to sink hand-off): {}",
            percentiles(&self.engine_latency())
        )?;
        for c in &self.cores {
            write!(f, "  core {}: ", c.core)?;
            core_line(f, c)?;
        }
        if self.retired.count > 0 {
            write!(f, "  {} retired cores, in all: ", self.retired.count)?;
            core_line(f, &self.retired.totals)?;
        }
        if let Some(n) = self.checkpoint {
            writeln!(
                f,
                "checkpoint {n} is durable: the same command restarts from it (file sources \
                 replay from their offsets; what plain TCP sources sent after it is not replayed)"
            )?;
        }
        if self.misrouted() > 0 {
            writeln!(
                f,
                "BUG: {} messages reached a core that did not own their slot",
                self.misrouted()
            )?;
        }
        if self.late() > 0 {
            writeln!(
                f,
                "{} messages came later than their stage's watermark: dropped, or written to \
                 the app's sink for late messages",
                self.late()
            )?;
        }
        if self.at_risk() > 0 {
            writeln!(
                f,
                "WARNING: {} outputs were written to sink connections that then failed; the sink \
                 may not have received them (TCP cannot say what it read) and they were not sent \
                 again",
                self.at_risk()
            )?;
        }
        if self.undelivered() > 0 {
            writeln!(
                f,
                "WARNING: {} outputs could not be delivered to the sink",
                self.undelivered()
            )?;
        }
        Ok(())
    }
}

/// One core's (or the retired cores') counters, ending the line.
fn core_line(f: &mut fmt::Formatter<'_>, c: &CoreReport) -> fmt::Result {
    write!(
        f,
        "{} connections ({} closed on errors, {} cut by this node, {} handed over), {} frames, {} outputs, {} entities",
        c.connections,
        c.connection_errors,
        c.connections_cut,
        c.handed_over,
        c.frames,
        c.outputs,
        c.entities
    )?;
    if c.sink_failures > 0 {
        write!(
            f,
            ", {} failed connection attempts to the sink",
            c.sink_failures
        )?;
    }
    if c.at_risk > 0 {
        write!(f, ", {} outputs at risk", c.at_risk)?;
    }
    writeln!(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_ns(850), "850ns");
        assert_eq!(human_ns(12_345), "12.3us");
        assert_eq!(human_ns(4_560_000), "4.56ms");
        assert_eq!(human_ns(1_200_000_000), "1.20s");
    }

    #[test]
    fn every_sample_reaches_each_view_once() {
        let mut w = Window::default();
        let mut total = latency_histogram();
        w.record(1_000);
        w.record(2_000);
        assert_eq!(w.take_interval(&mut total).len(), 2);
        w.record(3_000);
        w.end_second(&mut total);
        assert_eq!(
            w.last_second.len(),
            3,
            "the second holds samples taken mid-second too"
        );
        assert_eq!(w.take_interval(&mut total).len(), 1);
        w.record(4_000);
        w.fold(&mut total);
        w.fold(&mut total);
        assert_eq!(total.len(), 4, "folding twice counts nothing twice");
        w.end_second(&mut total);
        assert_eq!(w.last_second.len(), 1);
    }

    #[test]
    fn summary_merges_cores() {
        let mut a = CoreReport::new(0);
        let mut b = CoreReport::new(1);
        a.outputs = 3;
        b.outputs = 4;
        a.latency.record(1_000).unwrap();
        b.latency.record(9_000).unwrap();
        let s = Summary {
            cores: vec![a, b],
            retired: Retired::default(),
            elapsed: Duration::from_secs(1),
            checkpoint: None,
        };
        assert_eq!(s.outputs(), 7);
        assert_eq!(s.latency().len(), 2);
        assert!(s.latency().max() >= 9_000);
        assert!(s.to_string().contains("7 outputs out"));
    }

    /// Issue 14 (10): retired cores are one line of totals in the summary, however many retired.
    #[test]
    fn retired_cores_fold_into_one_line_of_totals() {
        let mut retired = Retired::default();
        for core in 2..502 {
            let mut r = CoreReport::new(core);
            r.frames = 2;
            r.outputs = 3;
            r.latency.record(5_000).unwrap();
            retired.add(&r);
        }
        let mut live = CoreReport::new(0);
        live.outputs = 1;
        let s = Summary {
            cores: vec![live],
            retired,
            elapsed: Duration::from_secs(1),
            checkpoint: None,
        };
        assert_eq!(s.outputs(), 1 + 500 * 3);
        assert_eq!(s.frames(), 1000);
        assert_eq!(s.latency().len(), 500);
        let text = s.to_string();
        assert!(text.contains("on 1 cores (500 retired)"), "{text}");
        assert_eq!(
            text.lines()
                .filter(|l| l.contains(" connections ("))
                .count(),
            2,
            "{text}"
        );
        assert!(
            text.contains("  500 retired cores, in all: 0 connections")
                && text.contains("1500 outputs"),
            "{text}"
        );
    }

    /// Issue 14 (3): outputs written to a sink connection that then failed are counted and
    /// named as possibly lost.
    #[test]
    fn outputs_at_risk_are_reported_as_possibly_lost() {
        let mut a = CoreReport::new(0);
        a.outputs = 10;
        a.at_risk = 4;
        let s = Summary {
            cores: vec![a],
            retired: Retired::default(),
            elapsed: Duration::from_secs(1),
            checkpoint: None,
        };
        assert_eq!(s.at_risk(), 4);
        let text = s.to_string();
        assert!(text.contains(", 4 outputs at risk"), "{text}");
        assert!(
            text.contains("WARNING: 4 outputs were written to sink connections that then failed"),
            "{text}"
        );
    }
}
