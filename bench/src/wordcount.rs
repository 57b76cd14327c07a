//! Word count end to end: engine + sender + receiver over loopback, against a single-threaded
//! in-process baseline (split + hash-map update + format) timed in the same run. `--app
//! word_buckets` runs the same load through two keyed stages (one output per word too).

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use quokka_apps::corpus::{self, vocab_word, CorpusSpec};
use quokka_apps::word_count;
use quokka_engine::{Config, Engine, Summary};
use quokka_io::client::{Collector, Records};

use crate::plot;
use crate::util::{self, median, pin_to_last_cpu, resident_bytes, send_paced};

#[derive(clap::Args)]
pub struct Args {
    /// The app: word_count, or word_buckets (word count, then a second keyed stage).
    #[arg(long, default_value = "word_count", value_parser = ["word_count", "word_buckets"])]
    app: String,
    /// Skip the memory measurement.
    #[arg(long)]
    no_memory: bool,
    /// Runs of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Words per throughput run.
    #[arg(long, default_value_t = 5_000_000)]
    words: usize,
    /// Engine core counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    cores: Vec<usize>,
    /// Seconds of load at half of the max rate, per latency run.
    #[arg(long, default_value_t = 5.0)]
    paced_secs: f64,
    /// Distinct words held in state for the memory measurement.
    #[arg(long, default_value_t = 1_000_000)]
    distinct: usize,
}

struct Run {
    words_per_sec: f64,
    summary: Summary,
}

pub fn run(args: Args, plots: &Path) -> Result<()> {
    let cpu = pin_to_last_cpu();
    let app = quokka_apps::find(&args.app).expect("a linked app").build;
    let app = app();
    println!(
        "# {} benchmark ({} runs each; sender and receiver pinned to CPU {cpu})",
        args.app, args.runs
    );
    let spec = CorpusSpec {
        words: args.words,
        ..CorpusSpec::default()
    };
    let lines = corpus::lines(spec);
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let total_words = count_words(&lines);

    let base: Vec<f64> = (0..args.runs)
        .map(|_| baseline(&lines, total_words))
        .collect();
    let base_median = median(&base);
    println!(
        "baseline (1 thread, no engine, no sockets): {:.2} M words/s",
        base_median / 1e6
    );

    // For the picture: each measurement's histograms, the runs merged.
    let mut pictured: Vec<(String, Histogram<u64>)> = Vec::new();
    for &cores in &args.cores {
        let max: Vec<Run> = (0..args.runs)
            .map(|_| one_run(&app, cores, &frames, total_words, None))
            .collect::<Result<_>>()?;
        let rates: Vec<f64> = max.iter().map(|r| r.words_per_sec).collect();
        let max_rate = median(&rates);
        println!(
            "cores={cores} max rate: {:.2} M words/s (runs: {}), {:.2}x the baseline, {} ns/word",
            max_rate / 1e6,
            util::millions(&rates),
            max_rate / base_median,
            (1e9 / max_rate) as u64
        );
        let at_max = median_percentiles(&max, |s| s.latency());
        println!("  latency at max rate (median of runs): {at_max}");

        let half = max_rate / 2.0;
        let words_per_line = total_words as f64 / lines.len() as f64;
        let n_lines = ((half * args.paced_secs / words_per_line) as usize).min(lines.len());
        let paced: Vec<Run> = (0..args.runs)
            .map(|_| {
                let part = &frames[..n_lines];
                one_run(
                    &app,
                    cores,
                    part,
                    count_words(&lines[..n_lines]),
                    Some(half / words_per_line),
                )
            })
            .collect::<Result<_>>()?;
        let latencies: Vec<Histogram<u64>> = paced.iter().map(|r| r.summary.latency()).collect();
        println!(
            "cores={cores} at half rate ({:.2} M words/s offered): {}",
            half / 1e6,
            util::p99_of_runs(&latencies)
        );
        let latency = median_percentiles(&paced, |s| s.latency());
        let share = median_percentiles(&paced, |s| s.engine_latency());
        println!("  latency (median of runs): {latency}");
        println!("  engine share (median of runs): {share}");
        let cores_name = match cores {
            1 => "1 core".to_string(),
            n => format!("{n} cores"),
        };
        pictured.push((
            format!("{cores_name}, half rate ({:.2} M words/s)", half / 1e6),
            merged(paced.iter().map(|r| r.summary.latency())),
        ));
        pictured.push((
            format!("{cores_name}, max rate ({:.2} M words/s)", max_rate / 1e6),
            merged(max.iter().map(|r| r.summary.latency())),
        ));
    }
    let path = plots.join(format!("{}-latency.svg", args.app.replace('_', "")));
    let title = format!(
        "{}: source-to-sink latency, {} per line",
        args.app,
        plot::runs_merged(args.runs)
    );
    let series: Vec<(&str, &Histogram<u64>)> =
        pictured.iter().map(|(n, h)| (n.as_str(), h)).collect();
    plot::latency_distribution(&path, &title, &series)?;
    println!("picture: {}", path.display());
    if !args.no_memory {
        memory(args.distinct)?;
    }
    Ok(())
}

fn count_words(lines: &[String]) -> u64 {
    let mut n = 0;
    for l in lines {
        word_count::words(l, |_| n += 1);
    }
    n
}

/// The runs' histograms in one.
fn merged(hists: impl Iterator<Item = Histogram<u64>>) -> Histogram<u64> {
    let mut all = quokka_engine::metrics::latency_histogram();
    for h in hists {
        all.add(&h).expect("same histogram bounds");
    }
    all
}

/// Each latency percentile as the median over the runs.
fn median_percentiles(runs: &[Run], hist: impl Fn(&Summary) -> Histogram<u64>) -> String {
    let hists: Vec<Histogram<u64>> = runs.iter().map(|r| hist(&r.summary)).collect();
    util::median_percentiles(&hists)
}

/// The same work with no engine: split, count in one hash map, format the output line.
fn baseline(lines: &[String], total_words: u64) -> f64 {
    let started = Instant::now();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut out = Vec::with_capacity(1 << 20);
    for line in lines {
        word_count::words(line, |w| {
            let c = counts.entry(w.to_owned()).or_insert(0);
            *c += 1;
            word_count::encode(w, *c, &mut out);
        });
        if out.len() > (1 << 20) - 4096 {
            std::hint::black_box(&out);
            out.clear();
        }
    }
    std::hint::black_box(&out);
    total_words as f64 / started.elapsed().as_secs_f64()
}

/// One engine run: sends `frames` (at `rate` lines/s, or flat out) and waits for every output.
fn one_run(
    app: &quokka_engine::App,
    cores: usize,
    frames: &[&[u8]],
    words: u64,
    rate: Option<f64>,
) -> Result<Run> {
    let collector = Collector::start(TcpListener::bind("127.0.0.1:0")?, Records::Lines, |_, _| {})?;
    let mut config = Config::new(vec!["127.0.0.1:0".parse()?], collector.addr());
    config.cores = cores;
    let engine = Engine::start(app, config)?;
    let started = Instant::now();
    send_paced(engine.input_addrs()[0], frames, rate)?;
    if !collector.wait_for(words, Duration::from_secs(300)) {
        bail!("only {} of {words} outputs arrived", collector.records());
    }
    let elapsed = collector.last_record_at().expect("outputs arrived") - started;
    let summary = engine.stop();
    Ok(Run {
        words_per_sec: words as f64 / elapsed.as_secs_f64(),
        summary,
    })
}

/// Resident memory with `distinct` words in state: bytes per entity beyond key and value.
/// A control run first sends as many words that are all one word: its growth is the engine's
/// transient memory (buffers), which the allocator then reuses in the measured run.
fn memory(distinct: usize) -> Result<()> {
    let words: Vec<String> = (0..distinct).map(vocab_word).collect();
    let key_bytes: usize = words.iter().map(String::len).sum();
    let same: Vec<String> = vec!["same".to_string(); distinct];
    let (control, _) = resident_growth(&same)?;
    let (growth, entities) = resident_growth(&words)?;
    let per_entity = growth as f64 / entities as f64;
    let payload = (key_bytes + 8 * distinct) as f64 / distinct as f64;
    println!(
        "memory: {entities} entities (1 core) grew resident memory by {:.1} MB = {:.1} bytes/entity; \
         key+value {:.1} bytes, overhead {:.1} bytes/entity (control run with 1 entity grew {:.1} MB)",
        growth as f64 / 1e6,
        per_entity,
        payload,
        per_entity - payload,
        control as f64 / 1e6
    );
    Ok(())
}

/// Runs word count on one core over `words` and returns (resident growth, entities).
fn resident_growth(words: &[String]) -> Result<(u64, u64)> {
    let lines: Vec<String> = words.chunks(12).map(|c| c.join(" ")).collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let collector = Collector::start(TcpListener::bind("127.0.0.1:0")?, Records::Lines, |_, _| {})?;
    let mut config = Config::new(vec!["127.0.0.1:0".parse()?], collector.addr());
    config.cores = 1;
    let engine = Engine::start(&word_count::app(), config)?;
    let before = resident_bytes();
    send_paced(engine.input_addrs()[0], &frames, None)?;
    if !collector.wait_for(words.len() as u64, Duration::from_secs(300)) {
        bail!(
            "only {} of {} outputs arrived",
            collector.records(),
            words.len()
        );
    }
    let after = resident_bytes();
    let summary = engine.stop();
    Ok((after.saturating_sub(before), summary.entities()))
}
