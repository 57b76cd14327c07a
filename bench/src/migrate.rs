//! Migration under load: word count with a million distinct words in state, at a steady offered
//! rate, grows from 1 to 2 cores and shrinks back. Measures each change's duration, state moved
//! and MB/s, and source-to-sink latency in the migration window against steady state before it.
//! Throughput and latency are sampled (every 100 ms by default) for a picture of the run over
//! time.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use quokka_apps::corpus::{self, vocab_word, CorpusSpec};
use quokka_apps::word_count;
use quokka_engine::archive::SlotArchive;
use quokka_engine::hash::stable_hash;
use quokka_engine::metrics::human_ns;
use quokka_engine::store::SlotStore;
use quokka_engine::{ChangeReport, Config, Engine};
use quokka_io::client::FrameSender;

use crate::plot::{self, Interval, Mark};
use crate::sampler::Sampler;
use crate::util::{
    client_collector, median, pin_to_last_cpu, print_moves, send_paced, set_nice, stop_exact,
    unpin, words_in_cycle, CLIENT_NICE,
};

#[derive(clap::Args)]
pub struct Args {
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Offered load in words/s while migrating. Default: half of the max rate measured in the
    /// same run, flat out, with the state filled (the "about half of max rate").
    #[arg(long)]
    rate: Option<f64>,
    /// Distinct words in state before the changes.
    #[arg(long, default_value_t = 1_000_000)]
    distinct: usize,
    /// Seconds of steady state measured before each change.
    #[arg(long, default_value_t = 2.0)]
    steady_secs: f64,
    /// Milliseconds between samples of throughput and p99 for migrate-timeline.svg; 0: no
    /// sampling and no timeline. Each sample folds and copies every core's latency histogram
    /// (about a quarter of a millisecond of each core's time on the 2-CPU VM).
    #[arg(long, default_value_t = 100)]
    sample_ms: u64,
}

struct Phase {
    report: ChangeReport,
    steady: Histogram<u64>,
    during: Histogram<u64>,
    /// The second after the change: what first touching moved state costs its new owner.
    after: Histogram<u64>,
    /// The change on the run's timeline.
    mark: Mark,
}

/// One run: the two changes, the offered rate (words/s), throughput and p99 per interval.
struct Run {
    grow: Phase,
    shrink: Phase,
    rate: f64,
    intervals: Vec<Interval>,
}

pub fn run(args: Args, plots: &Path) -> Result<()> {
    let cpu = pin_to_last_cpu();
    let offered = args.rate.map_or_else(
        || "half of the max rate measured in each run".to_string(),
        |r| format!("{:.2} M words/s", r / 1e6),
    );
    println!(
        "# migration under load: {} distinct words in state, {offered} offered, {} runs (clients on CPU {cpu})",
        args.distinct, args.runs
    );
    let mut grows = Vec::new();
    let mut shrinks = Vec::new();
    let mut first = None;
    for _ in 0..args.runs {
        let run = one_run(&args)?;
        println!(
            "  run at {:.2} M words/s: grow {} | shrink {}",
            run.rate / 1e6,
            run.grow.report,
            run.shrink.report
        );
        let marks = vec![run.grow.mark.clone(), run.shrink.mark.clone()];
        first.get_or_insert((run.intervals, marks, run.rate));
        grows.push(run.grow);
        shrinks.push(run.shrink);
    }
    summarize("grow 1 -> 2", &grows);
    summarize("shrink 2 -> 1", &shrinks);
    pictures(
        &args,
        plots,
        &grows,
        &shrinks,
        first.expect("at least one run"),
    )?;
    let (adopt, archive): (Vec<f64>, Vec<f64>) =
        (0..args.runs).map(|_| baselines(args.distinct)).unzip();
    println!(
        "baselines, one thread, no engine, the same half of the state: taken and put by ownership {:.0} ns per slot; archived, checked and adopted in place (a move between nodes without the network) {:.0} MB/s (medians of {})",
        median(&adopt),
        median(&archive),
        archive.len()
    );
    Ok(())
}

const N_SLOTS: u32 = Config::DEFAULT_SLOTS;

/// A store holding `distinct` words, each counted once.
fn filled_store(distinct: usize) -> SlotStore<u64> {
    let mut store = SlotStore::<u64>::new(N_SLOTS);
    for i in 0..distinct {
        let w = vocab_word(i);
        *store.entry(stable_hash(w.as_bytes()), w.as_bytes()) = 1;
    }
    store
}

/// Moves half the slots of a store holding `distinct` words to another store in one thread,
/// by ownership, then back through archives (write, checksum, validate, adopt in place).
/// Returns ns per slot of the first, MB/s of slot bytes of the second.
fn baselines(distinct: usize) -> (f64, f64) {
    let mut from = filled_store(distinct);
    let mut to = SlotStore::<u64>::new(N_SLOTS);
    let half: Vec<u32> = (0..N_SLOTS).step_by(2).collect();
    let started = Instant::now();
    for &slot in &half {
        to.put(slot, from.take(slot)).expect("an empty slot");
    }
    let by_ownership = started.elapsed().as_nanos() as f64 / half.len() as f64;
    let (started, mut bytes) = (Instant::now(), 0);
    for &slot in &half {
        let archive = SlotArchive::write(slot, &mut to.take(slot)).expect("archive");
        bytes += archive.bytes.len();
        let slot = archive.slot;
        from.put(slot, archive.read::<u64>().expect("a valid archive"))
            .expect("an empty slot");
    }
    let archived = bytes as f64 / 1e6 / started.elapsed().as_secs_f64();
    (by_ownership, archived)
}

fn summarize(name: &str, phases: &[Phase]) {
    let runs: Vec<(f64, f64)> = phases
        .iter()
        .map(|p| {
            let ms = p.report.moving.as_secs_f64() * 1e3;
            (ms, p.report.bytes_moved as f64 / 1e6)
        })
        .collect();
    print_moves(name, &runs);
    let whole: Vec<f64> = (phases.iter())
        .map(|p| p.report.elapsed.as_secs_f64() * 1e3)
        .collect();
    println!(
        "  (the whole change, with starting or retiring a core: {:.1} ms)",
        median(&whole)
    );
    let pct = |hs: Vec<&Histogram<u64>>, q: f64| {
        let xs: Vec<f64> = hs.iter().map(|h| if q >= 1.0 { h.max() } else { h.value_at_quantile(q) } as f64).collect();
        human_ns(median(&xs) as u64)
    };
    for (label, pick) in [
        ("steady before", 0),
        ("during change", 1),
        ("second after", 2),
    ] {
        let hs: Vec<&Histogram<u64>> = phases
            .iter()
            .map(|p| [&p.steady, &p.during, &p.after][pick])
            .collect();
        println!(
            "  {label:<14} latency p50 {}  p99 {}  p99.9 {}  max {}",
            pct(hs.clone(), 0.5),
            pct(hs.clone(), 0.99),
            pct(hs.clone(), 0.999),
            pct(hs, 1.0)
        );
    }
}

/// migrate-latency.svg: the latency distribution before, during and after each change, the runs
/// merged; migrate-timeline.svg: throughput and p99 per interval over the first run.
fn pictures(
    args: &Args,
    plots: &Path,
    grows: &[Phase],
    shrinks: &[Phase],
    (intervals, marks, rate): (Vec<Interval>, Vec<Mark>, f64),
) -> Result<()> {
    let merged = |phases: &[Phase], pick: fn(&Phase) -> &Histogram<u64>| {
        let mut all = quokka_engine::metrics::latency_histogram();
        for p in phases {
            all.add(pick(p)).expect("same histogram bounds");
        }
        all
    };
    let mut lines = Vec::new();
    for (change, phases) in [("grow 1 → 2", grows), ("shrink 2 → 1", shrinks)] {
        lines.push((
            format!("steady before {change}"),
            merged(phases, |p| &p.steady),
        ));
        lines.push((format!("during {change}"), merged(phases, |p| &p.during)));
        lines.push((
            format!("second after {change}"),
            merged(phases, |p| &p.after),
        ));
    }
    let series: Vec<(&str, &Histogram<u64>)> = lines.iter().map(|(n, h)| (n.as_str(), h)).collect();
    let words = match args.distinct {
        n if n >= 1_000_000 => format!("{}M", n / 1_000_000),
        n => format!("{}k", n / 1000),
    };
    let path = plots.join("migrate-latency.svg");
    let title = format!(
        "migrate: word count latency around the changes, {words} words in state, {}",
        plot::runs_merged(args.runs)
    );
    plot::latency_distribution(&path, &title, &series)?;
    println!("picture: {}", path.display());
    if args.sample_ms == 0 {
        return Ok(());
    }
    let path = plots.join("migrate-timeline.svg");
    let title = format!(
        "migrate: {words} words in state, {:.2} M words/s offered, per {} ms (run 1 of {})",
        rate / 1e6,
        args.sample_ms,
        args.runs
    );
    plot::timeline(&path, &title, &intervals, &marks)?;
    println!("picture: {}", path.display());
    Ok(())
}

/// One engine: fill the state, measure the max rate (unless given), grow and shrink under half
/// of it, sampling throughput and latency per interval from the load's start.
fn one_run(args: &Args) -> Result<Run> {
    let collector = client_collector()?;
    let mut config = Config::new(vec!["127.0.0.1:0".parse()?], collector.addr());
    config.cores = 1;
    let engine = Engine::start(&word_count::app(), config)?;
    let input = engine.input_addrs()[0];

    // Fill the state.
    let words: Vec<String> = (0..args.distinct).map(vocab_word).collect();
    let lines: Vec<String> = words.chunks(12).map(|c| c.join(" ")).collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    send_paced(input, &frames, None)?;
    if !collector.wait_for(args.distinct as u64, Duration::from_secs(120)) {
        bail!("state did not fill");
    }

    // Steady load for the whole run.
    let load = corpus::lines(CorpusSpec {
        words: 2_000_000,
        ..CorpusSpec::default()
    });
    let per_line = 12.0;
    // Flat out once with the state filled: the max rate, and the load's words warm in state.
    let burst: Vec<&[u8]> = load.iter().map(|l| l.as_bytes()).collect();
    let burst_words = words_in_cycle(&load, load.len());
    let before = collector.records();
    let started = Instant::now();
    send_paced(input, &burst, None)?;
    if !collector.wait_for(before + burst_words, Duration::from_secs(120)) {
        bail!("the flat-out burst did not finish");
    }
    let max_rate = burst_words as f64 / started.elapsed().as_secs_f64();
    let rate = args.rate.unwrap_or(max_rate / 2.0);
    let stop = AtomicBool::new(false);
    let sampler = Sampler::new(&engine, &collector);
    let (grow, shrink, sent) = std::thread::scope(|s| -> Result<_> {
        let sender = s.spawn(|| {
            set_nice(CLIENT_NICE);
            let started = Instant::now();
            let sent = send_until(input, &load, rate / per_line, &stop);
            sent.map(|n| (n, started.elapsed()))
        });
        // The clients stay on their CPU; the coordinator (this thread) goes where the OS finds
        // room, as a control thread would in production.
        unpin();
        let ticker = s.spawn(|| {
            if args.sample_ms > 0 {
                sampler.tick(Duration::from_millis(args.sample_ms), &stop);
            }
        });
        let steady = Duration::from_secs_f64(args.steady_secs);
        let phases = (|| -> Result<_> {
            let grow = phase(&engine, &sampler, steady, "grow", |e| e.grow(1))?;
            let shrink = phase(&engine, &sampler, steady, "shrink", |e| e.shrink(1))?;
            Ok((grow, shrink))
        })();
        // Stopped on a failed change too, or the scope would wait for the load forever.
        stop.store(true, Ordering::Release);
        ticker.join().expect("sampler");
        let (grow, shrink) = phases?;
        let (sent, sending) = sender.join().expect("sender")?;
        let achieved = words_in_cycle(&load, sent) as f64 / sending.as_secs_f64();
        println!("  (sender achieved {:.2} M words/s)", achieved / 1e6);
        Ok((grow, shrink, sent))
    })?;
    let expected = args.distinct as u64 + burst_words + words_in_cycle(&load, sent);
    stop_exact(&engine, &collector, expected)?;
    let intervals = sampler.intervals(Duration::from_millis(args.sample_ms) / 2);
    Ok(Run {
        grow,
        shrink,
        rate,
        intervals,
    })
}

/// Measures `steady` of steady state, then the change and the window until it has finished
/// (plus 100 ms for outputs of messages that waited for their slot), then the second after.
/// The windows' edges are samples cut by this thread, between the sampler's ticks.
fn phase(
    engine: &Engine,
    sampler: &Sampler,
    steady: Duration,
    verb: &str,
    change: impl Fn(&Engine) -> Result<ChangeReport, quokka_engine::ChangeError>,
) -> Result<Phase> {
    let begin = sampler.sample();
    std::thread::sleep(steady);
    let changing = sampler.sample();
    let start = sampler.elapsed();
    let report = change(engine)?;
    let end = sampler.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let changed = sampler.sample();
    std::thread::sleep(Duration::from_secs(1));
    let done = sampler.sample();
    let mark = Mark {
        start: start.as_secs_f64(),
        end: end.as_secs_f64(),
        label: format!(
            "{verb} {} → {} ({:.0} ms)",
            report.cores_before,
            report.cores_after,
            report.elapsed.as_secs_f64() * 1e3
        ),
    };
    Ok(Phase {
        report,
        steady: sampler.latency_between(begin, changing),
        during: sampler.latency_between(changing, changed),
        after: sampler.latency_between(changed, done),
        mark,
    })
}

/// Sends `lines` round and round at `rate` lines/s until `stop`; returns the lines sent.
pub(crate) fn send_until(
    addr: SocketAddr,
    lines: &[String],
    rate: f64,
    stop: &AtomicBool,
) -> Result<usize> {
    send_due(
        addr,
        lines,
        |secs| (secs * rate) as usize + 1,
        |_| stop.load(Ordering::Acquire),
    )
}

/// Sends `lines` round and round, `due(s)` of them by `s` seconds since the start, until
/// `done(sent)`; returns the lines sent.
pub(crate) fn send_due(
    addr: SocketAddr,
    lines: &[String],
    due: impl Fn(f64) -> usize,
    done: impl Fn(usize) -> bool,
) -> Result<usize> {
    let mut sender = FrameSender::connect(addr, Duration::from_secs(10))?;
    let started = Instant::now();
    let mut sent = 0usize;
    while !done(sent) {
        let due = due(started.elapsed().as_secs_f64());
        if due <= sent {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        for i in sent..due {
            sender.send(lines[i % lines.len()].as_bytes())?;
        }
        sender.flush()?;
        sent = due;
    }
    sender.finish()?;
    Ok(sent)
}
