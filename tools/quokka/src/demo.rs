//! `quokka demo`: word count over real loopback TCP on the bundled Bill of Rights plus a
//! generated Zipf corpus. It starts on one core and grows mid-stream; at the end it checks every
//! word's outputs against a reference and prints the top words, throughput and latency.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quokka_apps::corpus::{self, CorpusSpec};
use quokka_apps::word_count;
use quokka_engine::metrics::percentiles;
use quokka_engine::{Config, Engine};
use quokka_io::client::{Collector, FrameSender, Records};

const BILL_OF_RIGHTS: &str = include_str!("../../../apps/data/bill_of_rights.txt");

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Cores to grow to mid-stream (the demo starts on 1).
    #[arg(long, default_value_t = 2)]
    cores: usize,
    /// Words of generated text sent after the Bill of Rights.
    #[arg(long, default_value_t = 1_000_000)]
    words: usize,
    /// Distinct words in the generated text's vocabulary (Zipf-distributed).
    #[arg(long, default_value_t = 100_000)]
    vocabulary: usize,
}

pub fn run(args: DemoArgs) -> Result<()> {
    if args.cores == 0 {
        bail!("--cores must be at least 1");
    }
    let mut lines: Vec<String> = BILL_OF_RIGHTS.lines().map(str::to_owned).collect();
    let spec = CorpusSpec {
        words: args.words,
        vocabulary: args.vocabulary.max(1),
        ..CorpusSpec::default()
    };
    lines.extend(corpus::lines(spec));
    let mut expected: HashMap<String, u64> = HashMap::new();
    for line in &lines {
        word_count::words(line, |w| *expected.entry(w.to_owned()).or_default() += 1);
    }
    let total_words: u64 = expected.values().sum();
    crate::outln!(
        "word count demo: {} lines, {} words ({} distinct) over loopback TCP; 1 core, growing to {} mid-stream",
        lines.len(),
        total_words,
        expected.len(),
        args.cores
    )?;

    let seen: Arc<Mutex<HashMap<String, Outputs>>> = Arc::default();
    let sink = TcpListener::bind("127.0.0.1:0")?;
    let collector = Collector::start(sink, Records::Lines, {
        let seen = seen.clone();
        move |_, line| {
            let text = String::from_utf8_lossy(line);
            if let Some((word, count)) = text.rsplit_once(" => ") {
                let count = count.parse().unwrap_or(0);
                seen.lock()
                    .unwrap()
                    .entry(word.to_owned())
                    .or_default()
                    .add(count);
            }
        }
    })?;

    let app = word_count::app();
    let mut config = Config::new(vec!["127.0.0.1:0".parse()?], collector.addr());
    config.cores = 1;
    let engine = Engine::start(&app, config)?;
    let input = engine.input_addrs()[0];

    let started = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let sender = s.spawn(|| send_in_parallel(input, &lines, 2));
        if args.cores > 1 {
            collector.wait_for(total_words / 2, Duration::from_secs(120));
            let at = collector.records();
            let report = engine.grow(args.cores - 1)?;
            crate::outln!("grew mid-stream (after {at} outputs): {report}")?;
        }
        sender.join().expect("sender thread")
    })?;
    if !collector.wait_for(total_words, Duration::from_secs(120)) {
        bail!(
            "only {} of {} outputs arrived within 120 s",
            collector.records(),
            total_words
        );
    }
    let elapsed = collector.last_record_at().unwrap_or_else(Instant::now) - started;
    let summary = engine.stop();

    let seen = seen.lock().unwrap();
    for (word, &n) in &expected {
        if !seen.get(word).is_some_and(|o| o.is_one_to(n)) {
            bail!(
                "the outputs of {word:?} are not exactly 1..={n}: {:?}",
                seen.get(word)
            );
        }
    }
    if seen.len() != expected.len() {
        bail!(
            "{} distinct words were output, {} expected",
            seen.len(),
            expected.len()
        );
    }
    let mut top: Vec<(&String, &u64)> = expected.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    crate::outln!("top words:")?;
    for (word, count) in top.iter().take(10) {
        crate::outln!("  {word:<12} {count}")?;
    }
    crate::outln!(
        "every word's outputs are exactly its running totals 1..n ({} words checked)",
        seen.len()
    )?;
    crate::outln!(
        "{} words in {:.2}s: {:.0} words/s end to end",
        total_words,
        elapsed.as_secs_f64(),
        total_words as f64 / elapsed.as_secs_f64()
    )?;
    crate::outln!(
        "source-to-sink latency (senders push flat out, so it includes queueing; quokka-bench measures it at a fixed rate): {}",
        percentiles(&summary.latency())
    )?;
    Ok(())
}

/// What arrived for one word: enough to tell whether the counts were exactly 1..=n.
#[derive(Debug, Default)]
struct Outputs {
    count: u64,
    max: u64,
    sum: u128,
    sum_of_squares: u128,
}

impl Outputs {
    fn add(&mut self, c: u64) {
        self.count += 1;
        self.max = self.max.max(c);
        self.sum += u128::from(c);
        self.sum_of_squares += u128::from(c) * u128::from(c);
    }

    fn is_one_to(&self, n: u64) -> bool {
        let n = u128::from(n);
        self.count as u128 == n
            && u128::from(self.max) == n
            && self.sum == n * (n + 1) / 2
            && self.sum_of_squares == n * (n + 1) * (2 * n + 1) / 6
    }
}

/// Sends the lines over `connections` connections, each a contiguous share, and closes them.
fn send_in_parallel(addr: SocketAddr, lines: &[String], connections: usize) -> Result<()> {
    let chunk = lines.len().div_ceil(connections).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = lines
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> Result<()> {
                    let mut sender = FrameSender::connect(addr, Duration::from_secs(5))?;
                    for line in part {
                        sender.send(line.as_bytes())?;
                    }
                    sender.finish()?;
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .expect("sender thread")
                .context("sending the corpus")?;
        }
        Ok(())
    })
}
