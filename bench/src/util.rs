//! Helpers shared by the benchmarks: pinning, pacing, resident memory, medians.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use quokka_io::client::{Collector, FrameSender, Records};

/// Pins the calling thread (and the threads it spawns later) to the last CPU, leaving the first
/// ones to the engine's executors.
pub fn pin_to_last_cpu() -> usize {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    match ids.last() {
        Some(&id) => {
            core_affinity::set_for_current(id);
            id.id
        }
        None => 0,
    }
}

/// Lets the calling thread run on any CPU again (threads it already spawned keep their pinning).
pub fn unpin() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in 0..std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(64)
    {
        // SAFETY: cpu < CPU_SETSIZE (1024); the set is a valid cpu_set_t.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; the set outlives the call.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

/// The nice value of the benchmarks' client threads (senders, the sink collector) wherever they
/// share a CPU with an engine core: on this 2-CPU machine they must, and at equal priority the
/// scheduler gave them the new core's CPU for several milliseconds at a time (grow p99.9 during
/// the change 19-20 ms against 6-8 ms with nice clients, bench/RESULTS.md). In production the
/// clients are other machines.
pub const CLIENT_NICE: i32 = 10;

/// Sets the calling thread's nice value (threads it spawns later inherit it). Root may lower it
/// again; a failure leaves it unchanged.
pub fn set_nice(nice: i32) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
    // SAFETY: setpriority on the calling thread's own id only changes its nice value.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
}

/// A sink collector of output lines on a free loopback port whose threads run at
/// [`CLIENT_NICE`]. It is started from a helper thread, so the caller keeps its own priority
/// (giving a raised nice value back needs root).
pub fn client_collector() -> Result<Collector> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let collector = std::thread::scope(|s| {
        s.spawn(|| {
            set_nice(CLIENT_NICE);
            Collector::start(listener, Records::Lines, |_, _| {})
        })
        .join()
        .expect("collector start")
    })?;
    Ok(collector)
}

/// Resident memory of this process, in bytes.
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Sends `frames` over one connection, at most `rate` frames/s if given. Returns when the last
/// frame is written and the connection closed.
pub fn send_paced(addr: SocketAddr, frames: &[&[u8]], rate: Option<f64>) -> Result<()> {
    let mut sender = FrameSender::connect(addr, Duration::from_secs(10)).context("connect")?;
    let started = Instant::now();
    let mut sent = 0usize;
    while sent < frames.len() {
        let due = match rate {
            // Frames due by now, sent in one burst.
            Some(r) => ((started.elapsed().as_secs_f64() * r) as usize + 1).min(frames.len()),
            None => frames.len(),
        };
        if due <= sent {
            let next = started + Duration::from_secs_f64((sent + 1) as f64 / rate.unwrap_or(1.0));
            let wait = next.saturating_duration_since(Instant::now());
            // Sleep rather than spin: the sender shares its CPU with the receiver (and, on a
            // 2-core machine, with an engine core).
            std::thread::sleep(wait.max(Duration::from_micros(20)));
            continue;
        }
        for f in &frames[sent..due] {
            sender.send(f)?;
        }
        sender.flush()?;
        sent = due;
    }
    sender.finish()?;
    Ok(())
}

/// The median of `xs` (the lower middle for an even count).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[(v.len() - 1) / 2]
}

/// Each run's rate in millions: `2.45, 2.35, 2.81`.
pub fn millions(xs: &[f64]) -> String {
    xs.iter()
        .map(|x| format!("{:.2}", x / 1e6))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The p99 of each run's latency, as `p99 median X (runs: a, b, c)`.
pub fn p99_of_runs(latencies: &[hdrhistogram::Histogram<u64>]) -> String {
    let p99s: Vec<f64> = (latencies.iter())
        .map(|h| h.value_at_quantile(0.99) as f64)
        .collect();
    format!(
        "p99 median {} (runs: {})",
        quokka_engine::metrics::human_ns(median(&p99s) as u64),
        durations(&p99s)
    )
}

/// Each run's duration (ns) for people: `228.4us, 3.49ms`.
fn durations(ns: &[f64]) -> String {
    ns.iter()
        .map(|&x| quokka_engine::metrics::human_ns(x as u64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Latency percentiles, each the median over runs' histograms.
pub fn median_percentiles(hists: &[hdrhistogram::Histogram<u64>]) -> String {
    let at = |q: f64| {
        let xs: Vec<f64> = hists
            .iter()
            .map(|h| h.value_at_quantile(q) as f64)
            .collect();
        quokka_engine::metrics::human_ns(median(&xs) as u64)
    };
    let qs = [
        (0.5, "p50"),
        (0.99, "p99"),
        (0.999, "p99.9"),
        (0.9999, "p99.99"),
        (1.0, "max"),
    ];
    qs.iter()
        .map(|&(q, name)| format!("{name} {}", at(q)))
        .collect::<Vec<_>>()
        .join("  ")
}

/// Words in the first `n` lines of `lines` sent round and round (`send_until`'s count).
pub fn words_in_cycle(lines: &[String], n: usize) -> u64 {
    lines
        .iter()
        .cycle()
        .take(n)
        .map(|l| l.split(' ').count() as u64)
        .sum()
}

/// One line for moves of state: median time, MB and MB/s over runs of (ms, MB).
pub fn print_moves(label: &str, runs: &[(f64, f64)]) {
    let ms: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let mb: Vec<f64> = runs.iter().map(|r| r.1).collect();
    let rate: Vec<f64> = runs.iter().map(|r| r.1 / r.0 * 1e3).collect();
    println!(
        "{label}: {:.1} ms, {:.1} MB of state moved, {:.0} MB/s (medians; runs: {})",
        median(&ms),
        median(&mb),
        median(&rate),
        rate.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Waits for `expected` outputs, stops the engine, puts this thread back on the clients' CPU,
/// and checks the run was exact: as many outputs as expected, none misrouted.
pub fn stop_exact(
    engine: &quokka_engine::Engine,
    collector: &Collector,
    expected: u64,
) -> Result<quokka_engine::Summary> {
    if !collector.wait_for(expected, Duration::from_secs(120)) {
        anyhow::bail!("only {} of {expected} outputs arrived", collector.records());
    }
    let summary = engine.stop();
    pin_to_last_cpu();
    if summary.outputs() != expected || summary.misrouted() != 0 {
        anyhow::bail!(
            "output not exact: {} outputs, {expected} expected, {} misrouted",
            summary.outputs(),
            summary.misrouted()
        );
    }
    Ok(summary)
}
