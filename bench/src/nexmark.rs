//! NEXMark q0-q8 end to end: generated events (the standard generator, 10 000 per second
//! of event time) sent framed over loopback, one connection per engine core. Per query and
//! core count: events/s at max rate (all events read and every result written: the time until
//! the engine has stopped) and per core; at half of it, source-to-sink latency. The baseline,
//! timed in the same run, decodes every frame on one thread and does nothing else: the floor
//! of an event's cost.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use quokka_apps::nexmark::generate::{events, GenSpec};
use quokka_apps::nexmark::{decode, QUERIES};
use quokka_engine::{Config, Engine, Summary};

use crate::util::{self, client_collector, median, millions, pin_to_last_cpu, send_paced};

#[derive(clap::Args)]
pub struct Args {
    /// Runs of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Events per throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Queries to measure (0 to 8).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4,5,6,7,8")]
    queries: Vec<usize>,
    /// Engine core counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    cores: Vec<usize>,
    /// Seconds of load at half of the max rate, per latency run.
    #[arg(long, default_value_t = 3.0)]
    paced_secs: f64,
}

struct Run {
    events_per_sec: f64,
    summary: Summary,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(q) = args.queries.iter().find(|&&q| q >= QUERIES.len()) {
        bail!("there is no query q{q}: NEXMark here has q0 to q8");
    }
    let cpu = pin_to_last_cpu();
    let spec = GenSpec {
        events: args.events,
        ..GenSpec::default()
    };
    let owned: Vec<Vec<u8>> = events(spec)
        .map(|e| {
            let mut f = Vec::new();
            e.encode(&mut f);
            f
        })
        .collect();
    let frames: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    let bytes: usize = frames.iter().map(|f| f.len() + 4).sum();
    println!(
        "# NEXMark: {} events ({:.0} MB framed), 10 000 per s of event time, seed 0; {} runs; clients on CPU {cpu}",
        args.events,
        bytes as f64 / 1e6,
        args.runs
    );
    let rates: Vec<f64> = (0..args.runs).map(|_| decode_only(&frames)).collect();
    println!(
        "baseline (decode every frame, one thread): {:.2} M events/s (runs: {})",
        median(&rates) / 1e6,
        millions(&rates)
    );
    for &q in &args.queries {
        for &cores in &args.cores {
            let max: Vec<Run> = (0..args.runs)
                .map(|_| one_run(q, cores, &frames, None))
                .collect::<Result<_>>()?;
            let rates: Vec<f64> = max.iter().map(|r| r.events_per_sec).collect();
            let max_rate = median(&rates);
            let half = max_rate / 2.0;
            let n = ((half * args.paced_secs) as usize).min(frames.len());
            let paced: Vec<Run> = (0..args.runs)
                .map(|_| one_run(q, cores, &frames[..n], Some(half)))
                .collect::<Result<_>>()?;
            let hists: Vec<Histogram<u64>> = paced.iter().map(|r| r.summary.latency()).collect();
            println!(
                "q{q} cores={cores}: {:.2} M events/s, {:.2} M per core (runs: {}); at half rate: {}",
                max_rate / 1e6,
                max_rate / 1e6 / cores as f64,
                millions(&rates),
                util::median_percentiles(&hists)
            );
        }
    }
    Ok(())
}

fn decode_only(frames: &[&[u8]]) -> f64 {
    let started = Instant::now();
    let mut time = 0u64;
    for f in frames {
        time = time.wrapping_add(decode(f).expect("generated frames decode").date_time());
    }
    std::hint::black_box(time);
    frames.len() as f64 / started.elapsed().as_secs_f64()
}

/// One engine run of query `q`: sends `frames` (at `rate` events/s, or flat out), waits until
/// the cores have read them all, and stops (which applies every event, fires every timer and
/// writes every result).
fn one_run(q: usize, cores: usize, frames: &[&[u8]], rate: Option<f64>) -> Result<Run> {
    let sink = client_collector()?;
    let app = (QUERIES[q].build)();
    let mut config = Config::new(vec!["127.0.0.1:0".parse()?], sink.addr());
    config.cores = cores;
    let engine = Engine::start(&app, config)?;
    let started = Instant::now();
    // One connection per core (the acceptor deals them out in turn), each taking every
    // `cores`-th event: each stays in event-time order, and every core decodes.
    let input = engine.input_addrs()[0];
    let parts: Vec<Vec<&[u8]>> = (0..cores)
        .map(|c| frames.iter().skip(c).step_by(cores).copied().collect())
        .collect();
    std::thread::scope(|s| {
        let senders: Vec<_> = (parts.iter())
            .map(|part| s.spawn(move || send_paced(input, part, rate.map(|r| r / cores as f64))))
            .collect();
        senders
            .into_iter()
            .try_for_each(|h| h.join().expect("sender thread"))
    })?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let read: u64 = engine.status().cores.iter().map(|c| c.frames).sum();
        if read >= frames.len() as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("q{q}: only {read} of {} frames read", frames.len());
        }
        // Polling interval, not synchronisation: the stop below waits for the rest.
        std::thread::sleep(Duration::from_millis(2));
    }
    let summary = engine.stop();
    let elapsed = started.elapsed();
    if summary.misrouted() > 0 {
        bail!("q{q}: {} messages misrouted", summary.misrouted());
    }
    Ok(Run {
        events_per_sec: frames.len() as f64 / elapsed.as_secs_f64(),
        summary,
    })
}
