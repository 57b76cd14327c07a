//! Event-time windows end to end: `window_counts` (a tumbling one-second count per key, late
//! lines to their own sink) fed `MILLIS KEY` lines whose time advances steadily. Events/s at max
//! rate and per core; at half of it, the latency of each window from the arrival of the event
//! whose watermark closed it to its output.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use quokka_apps::corpus::SplitMix64;
use quokka_apps::window_counts::{self, LATENESS, WINDOW_MS};
use quokka_engine::{Config, Engine, Summary};
use quokka_io::client::{Collector, Records};

use crate::util::{self, median, millions, pin_to_last_cpu, send_paced};

#[derive(clap::Args)]
pub struct Args {
    /// Runs of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Events per throughput run.
    #[arg(long, default_value_t = 4_000_000)]
    events: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Events per millisecond of event time.
    #[arg(long, default_value_t = 10)]
    per_ms: u64,
    /// Engine core counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    cores: Vec<usize>,
    /// Seconds of load at half of the max rate, per latency run.
    #[arg(long, default_value_t = 5.0)]
    paced_secs: f64,
}

struct Run {
    events_per_sec: f64,
    summary: Summary,
}

/// `n` lines `MILLIS KEY`: time advances by 1 ms every `per_ms` events, each displaced by up to
/// half the allowed lateness (so never late); keys uniform.
fn events(n: usize, keys: u64, per_ms: u64) -> Vec<(u64, u64)> {
    let mut rng = SplitMix64::new(11);
    (0..n as u64)
        .map(|i| {
            (
                i / per_ms + rng.next_u64() % (LATENESS / 2),
                rng.next_u64() % keys,
            )
        })
        .collect()
}

/// Windows the watermark closes before the stop: per key, each window with events that ends at
/// or before the largest time minus the lateness (the last connection's last word).
fn closed_windows(events: &[(u64, u64)]) -> u64 {
    let latest = events.iter().map(|e| e.0).max().unwrap_or(0);
    let watermark = latest.saturating_sub(LATENESS);
    let mut windows = std::collections::HashSet::new();
    for &(ts, key) in events {
        let start = ts / WINDOW_MS * WINDOW_MS;
        if start + WINDOW_MS <= watermark {
            windows.insert((key, start));
        }
    }
    windows.len() as u64
}

pub fn run(args: Args) -> Result<()> {
    let cpu = pin_to_last_cpu();
    let all = events(args.events, args.keys, args.per_ms);
    let lines: Vec<String> = all.iter().map(|(t, k)| format!("{t} k{k}")).collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    println!(
        "# window_counts: {} events over {} keys, {} per ms of event time, 1 s tumbling windows, {} ms lateness; {} runs; clients on CPU {cpu}",
        args.events, args.keys, args.per_ms, LATENESS, args.runs
    );
    for &cores in &args.cores {
        let max: Vec<Run> = (0..args.runs)
            .map(|_| one_run(cores, &frames, closed_windows(&all), None))
            .collect::<Result<_>>()?;
        let rates: Vec<f64> = max.iter().map(|r| r.events_per_sec).collect();
        let max_rate = median(&rates);
        println!(
            "cores={cores} max rate: {:.2} M events/s ({:.2} M per core; runs: {})",
            max_rate / 1e6,
            max_rate / 1e6 / cores as f64,
            millions(&rates)
        );
        let half = max_rate / 2.0;
        let n = ((half * args.paced_secs) as usize).min(frames.len());
        let paced: Vec<Run> = (0..args.runs)
            .map(|_| one_run(cores, &frames[..n], closed_windows(&all[..n]), Some(half)))
            .collect::<Result<_>>()?;
        let hists: Vec<Histogram<u64>> = paced.iter().map(|r| r.summary.latency()).collect();
        println!(
            "cores={cores} at half rate ({:.2} M events/s offered): window {}",
            half / 1e6,
            util::p99_of_runs(&hists)
        );
        println!(
            "  window latency (median of runs): {}",
            util::median_percentiles(&hists)
        );
    }
    Ok(())
}

/// One engine run: sends `frames` (at `rate` events/s, or flat out) and waits until the
/// watermark has closed `windows` windows; the late sink must stay empty.
fn one_run(cores: usize, frames: &[&[u8]], windows: u64, rate: Option<f64>) -> Result<Run> {
    let counts = Collector::start(TcpListener::bind("127.0.0.1:0")?, Records::Lines, |_, _| {})?;
    let late = Collector::start(TcpListener::bind("127.0.0.1:0")?, Records::Lines, |_, _| {})?;
    let app = window_counts::app();
    let mut config = Config::new(vec!["127.0.0.1:0".parse()?], late.addr());
    config.outputs = (app.sinks().iter())
        .map(|s| {
            if s == "late" {
                late.addr()
            } else {
                counts.addr()
            }
        })
        .collect();
    config.cores = cores;
    let engine = Engine::start(&app, config)?;
    let started = Instant::now();
    send_paced(engine.input_addrs()[0], frames, rate)?;
    if !counts.wait_for(windows, Duration::from_secs(300)) {
        bail!("only {} of {windows} windows arrived", counts.records());
    }
    let elapsed = counts.last_record_at().expect("windows arrived") - started;
    let summary = engine.stop();
    if late.records() > 0 {
        bail!("{} events came late", late.records());
    }
    Ok(Run {
        events_per_sec: frames.len() as f64 / elapsed.as_secs_f64(),
        summary,
    })
}
