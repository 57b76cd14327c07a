//! Checkpoints on word count with a million words in state: throughput at max rate and
//! latency at half of it, with checkpoints every second against none (measured alternately in
//! the same run); bytes written and time taken by a checkpoint after 1% of the keys changed;
//! restore time for ~100 MB of state; exactly-once end-to-end latency with 100 ms checkpoints.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use quokka_apps::corpus::{self, vocab_word, CorpusSpec};
use quokka_apps::word_count;
use quokka_engine::{Config, Engine, Guarantee, Summary};
use quokka_io::client::{Collector, FrameSender, Records};

use crate::util::{self, median, pin_to_last_cpu, send_paced};

#[derive(clap::Args)]
pub struct Args {
    /// Runs of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Words per throughput run (after the state is loaded).
    #[arg(long, default_value_t = 5_000_000)]
    words: usize,
    /// Distinct words loaded into state first.
    #[arg(long, default_value_t = 1_000_000)]
    distinct: usize,
    /// Distinct words for the restore measurement (~35 bytes of state each).
    #[arg(long, default_value_t = 3_000_000)]
    restore_distinct: usize,
    /// Engine cores.
    #[arg(long, default_value_t = 2)]
    cores: usize,
    /// Seconds of load at half of the max rate, per latency run.
    #[arg(long, default_value_t = 5.0)]
    paced_secs: f64,
}

/// A state dir for one run, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("quokka-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn lines_of(words: &[String]) -> Vec<String> {
    words.chunks(12).map(|c| c.join(" ")).collect()
}

fn count_words(lines: &[String]) -> u64 {
    let mut n = 0;
    for l in lines {
        word_count::words(l, |_| n += 1);
    }
    n
}

/// An engine with `distinct` words in state, checkpointing into `state` every `every` (none
/// without a state dir).
struct Loaded {
    engine: Engine,
    collector: Collector,
    outputs: u64,
}

fn load(
    cores: usize,
    state: Option<&Path>,
    every: Option<Duration>,
    preload: &[String],
) -> Result<Loaded> {
    let collector = util::client_collector()?;
    let mut config = Config::new(vec!["127.0.0.1:0".parse()?], collector.addr());
    config.cores = cores;
    config.state_dir = state.map(Path::to_path_buf);
    config.checkpoint_interval = every;
    let engine = Engine::start(&word_count::app(), config)?;
    let frames: Vec<&[u8]> = preload.iter().map(|l| l.as_bytes()).collect();
    send_paced(engine.input_addrs()[0], &frames, None)?;
    let outputs = count_words(preload);
    if !collector.wait_for(outputs, Duration::from_secs(600)) {
        bail!(
            "preload: only {} of {outputs} outputs arrived",
            collector.records()
        );
    }
    Ok(Loaded {
        engine,
        collector,
        outputs,
    })
}

/// Sends `lines` (at `rate` lines/s, or flat out) to a loaded engine; returns words/s and the
/// summary at its stop.
fn measure(loaded: Loaded, lines: &[String], rate: Option<f64>) -> Result<(f64, Summary)> {
    let Loaded {
        engine,
        collector,
        outputs,
    } = loaded;
    let words = count_words(lines);
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let _ = engine.take_latency();
    let started = Instant::now();
    send_paced(engine.input_addrs()[0], &frames, rate)?;
    if !collector.wait_for(outputs + words, Duration::from_secs(600)) {
        bail!("only {} outputs arrived", collector.records());
    }
    let elapsed = collector.last_record_at().expect("outputs") - started;
    let latency = engine.take_latency();
    let mut summary = engine.stop();
    // Only the measured part's latency: the preload's is left out.
    if let Some(c) = summary.cores.first_mut() {
        c.latency = latency;
    }
    for c in summary.cores.iter_mut().skip(1) {
        c.latency.reset();
    }
    Ok((words as f64 / elapsed.as_secs_f64(), summary))
}

pub fn run(args: Args) -> Result<()> {
    let cpu = pin_to_last_cpu();
    println!(
        "# checkpoint benchmark: word count on {} cores, {} distinct words in state ({} runs each; clients on CPU {cpu})",
        args.cores, args.distinct, args.runs
    );
    let distinct: Vec<String> = (0..args.distinct).map(vocab_word).collect();
    let preload = lines_of(&distinct);
    let load_lines = corpus::lines(CorpusSpec {
        words: args.words,
        ..CorpusSpec::default()
    });

    // Max rate, alternating without and with checkpoints every second.
    let (mut plain, mut with) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        plain.push(measure(load(args.cores, None, None, &preload)?, &load_lines, None)?.0);
        let dir = TempDir::new("max");
        let every = Some(Duration::from_secs(1));
        with.push(
            measure(
                load(args.cores, Some(&dir.0), every, &preload)?,
                &load_lines,
                None,
            )?
            .0,
        );
    }
    let (p, w) = (median(&plain), median(&with));
    println!(
        "max rate: {:.2} M words/s without checkpoints (runs {}), {:.2} M with one every 1 s (runs {}): cost {:.1}%",
        p / 1e6,
        util::millions(&plain),
        w / 1e6,
        util::millions(&with),
        100.0 * (1.0 - w / p)
    );

    // Latency at half of the max rate without checkpoints.
    let half = p / 2.0;
    let words_per_line = count_words(&load_lines) as f64 / load_lines.len() as f64;
    let n = ((half * args.paced_secs / words_per_line) as usize).min(load_lines.len());
    let paced = &load_lines[..n];
    let (mut plain_lat, mut with_lat) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let rate = Some(half / words_per_line);
        plain_lat.push(
            measure(load(args.cores, None, None, &preload)?, paced, rate)?
                .1
                .latency(),
        );
        let dir = TempDir::new("half");
        let every = Some(Duration::from_secs(1));
        let loaded = load(args.cores, Some(&dir.0), every, &preload)?;
        with_lat.push(measure(loaded, paced, rate)?.1.latency());
    }
    println!(
        "at half rate ({:.2} M words/s offered), at-least-once:",
        half / 1e6
    );
    println!(
        "  without checkpoints: {}",
        util::median_percentiles(&plain_lat)
    );
    println!(
        "  checkpoints every 1 s: {}",
        util::median_percentiles(&with_lat)
    );

    incremental(&args, &distinct, &preload)?;
    restore(&args)?;
    exactly_once_latency(&args, &preload, &load_lines, half / words_per_line)?;
    Ok(())
}

/// A full checkpoint, then one after 1% of the keys changed.
fn incremental(args: &Args, distinct: &[String], preload: &[String]) -> Result<()> {
    let mut full = Vec::new();
    let mut one_pct = Vec::new();
    for run in 0..args.runs {
        let dir = TempDir::new("incr");
        let loaded = load(args.cores, Some(&dir.0), None, preload)?;
        let first = loaded.engine.checkpoint()?;
        // 1% of the keys, spread evenly over them.
        let step = 100;
        let changed: Vec<String> = (distinct.iter().skip(run).step_by(step).cloned()).collect();
        let lines = lines_of(&changed);
        let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        send_paced(loaded.engine.input_addrs()[0], &frames, None)?;
        let want = loaded.outputs + changed.len() as u64;
        if !loaded.collector.wait_for(want, Duration::from_secs(60)) {
            bail!("the 1% did not arrive");
        }
        let second = loaded.engine.checkpoint()?;
        full.push((
            first.written as f64,
            first.duration.as_secs_f64(),
            first.state_bytes as f64,
        ));
        one_pct.push((second.written as f64, second.duration.as_secs_f64()));
        loaded.engine.stop();
    }
    let m = |xs: Vec<f64>| median(&xs);
    let state = m(full.iter().map(|f| f.2).collect());
    let (fw, fd) = (
        m(full.iter().map(|f| f.0).collect()),
        m(full.iter().map(|f| f.1).collect()),
    );
    let (iw, id) = (
        m(one_pct.iter().map(|f| f.0).collect()),
        m(one_pct.iter().map(|f| f.1).collect()),
    );
    println!(
        "first checkpoint: {:.1} MB written of {:.1} MB of state in {:.0} ms; after 1% of the keys changed: {:.1} MB written ({:.0}% of the state) in {:.0} ms",
        fw / 1e6,
        state / 1e6,
        fd * 1e3,
        iw / 1e6,
        100.0 * iw / state,
        id * 1e3
    );
    Ok(())
}

/// Restore time for ~100 MB of state: from start to running, and to the first output.
fn restore(args: &Args) -> Result<()> {
    let words: Vec<String> = (0..args.restore_distinct).map(vocab_word).collect();
    let lines = lines_of(&words);
    let dir = TempDir::new("restore");
    let loaded = load(args.cores, Some(&dir.0), None, &lines)?;
    let taken = loaded.engine.checkpoint()?;
    loaded.engine.stop();
    // Its state dir stays locked while the engine exists.
    drop(loaded);
    let mut times = Vec::new();
    for _ in 0..args.runs {
        // Read the files once first: the target is a restore from the page cache.
        let collector =
            Collector::start(TcpListener::bind("127.0.0.1:0")?, Records::Lines, |_, _| {})?;
        let mut config = Config::new(vec!["127.0.0.1:0".parse()?], collector.addr());
        config.cores = args.cores;
        config.state_dir = Some(dir.0.clone());
        let started = Instant::now();
        let engine = Engine::start(&word_count::app(), config)?;
        let running = started.elapsed();
        let mut sender = FrameSender::connect(engine.input_addrs()[0], Duration::from_secs(10))?;
        sender.send(words[0].as_bytes())?;
        sender.finish()?;
        if !collector.wait_for(1, Duration::from_secs(60)) {
            bail!("no output after the restore");
        }
        let first = collector.last_record_at().context("an output")? - started;
        times.push((running.as_secs_f64(), first.as_secs_f64()));
        engine.stop();
    }
    let running = median(&times.iter().map(|t| t.0).collect::<Vec<_>>());
    let first = median(&times.iter().map(|t| t.1).collect::<Vec<_>>());
    println!(
        "restore of {:.0} MB of state ({} words): running after {:.0} ms ({:.2} GB/s), first output after {:.0} ms",
        taken.state_bytes as f64 / 1e6,
        args.restore_distinct,
        running * 1e3,
        taken.state_bytes as f64 / running / 1e9,
        first * 1e3
    );
    Ok(())
}

/// Exactly-once with checkpoints every 100 ms at half rate: from sending a probe line to its
/// output's release by the receiver.
fn exactly_once_latency(
    args: &Args,
    preload: &[String],
    load_lines: &[String],
    lines_per_sec: f64,
) -> Result<()> {
    let mut hists = Vec::new();
    for _ in 0..args.runs {
        let dir = TempDir::new("eo");
        let released: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let into = released.clone();
        let receiver = quokka_io::exactly_once::Receiver::start(
            TcpListener::bind("127.0.0.1:0")?,
            move |records| {
                let now = Instant::now();
                let mut r = into.lock().unwrap();
                for rec in records {
                    if rec.starts_with(b"probe") {
                        r.push((String::from_utf8_lossy(&rec).into_owned(), now));
                    }
                }
            },
        )?;
        let mut config = Config::new(vec!["127.0.0.1:0".parse()?], receiver.addr());
        config.cores = args.cores;
        config.state_dir = Some(dir.0.clone());
        config.checkpoint_interval = Some(Duration::from_millis(100));
        config.guarantee = Guarantee::ExactlyOnce;
        let engine = Engine::start(&word_count::app(), config)?;
        let input = engine.input_addrs()[0];
        let frames: Vec<&[u8]> = preload.iter().map(|l| l.as_bytes()).collect();
        send_paced(input, &frames, None)?;
        // Load at half rate, and a probe every 10 ms on a connection of its own.
        let n = ((lines_per_sec * args.paced_secs) as usize).min(load_lines.len());
        let load: Vec<&[u8]> = load_lines[..n].iter().map(|l| l.as_bytes()).collect();
        let sent: Vec<(String, Instant)> = std::thread::scope(|s| -> Result<_> {
            let loader = s.spawn(|| send_paced(input, &load, Some(lines_per_sec)));
            let mut probe = FrameSender::connect(input, Duration::from_secs(10))?;
            let mut sent = Vec::new();
            let started = Instant::now();
            let mut i = 0;
            while started.elapsed().as_secs_f64() < args.paced_secs {
                let word = format!("probe{i}");
                probe.send(word.as_bytes())?;
                probe.flush()?;
                sent.push((word, Instant::now()));
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            probe.finish()?;
            loader.join().expect("loader")?;
            Ok(sent)
        })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while released.lock().unwrap().len() < sent.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        engine.stop();
        let released = released.lock().unwrap();
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        for (word, at) in &sent {
            let out = format!("{word} => 1\n");
            if let Some((_, r)) = released.iter().find(|(w, _)| *w == out) {
                h.saturating_record(r.saturating_duration_since(*at).as_nanos() as u64);
            }
        }
        hists.push(h);
    }
    println!(
        "exactly-once, checkpoints every 100 ms, at half rate: probe to release {}",
        util::median_percentiles(&hists)
    );
    Ok(())
}
