//! What watching costs: word count at max rate with the HTTP endpoint of `quokka run --http`
//! serving and scraped every second (`/metrics` as Prometheus would, `/status.json` and
//! `/series.json` as an open dashboard would), against the same runs with no endpoint at all.
//! Runs alternate between the two, so drift on a shared machine hits both alike.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use quokka_apps::corpus::{self, CorpusSpec};
use quokka_engine::{Config, Engine};
use quokka_io::client::{Collector, Records};
use quokka_io::http::get;

use crate::util::{median, millions, pin_to_last_cpu, send_paced};

#[derive(clap::Args)]
pub struct Args {
    /// Runs of each kind (watched and not); medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Words per run.
    #[arg(long, default_value_t = 5_000_000)]
    words: usize,
    /// Engine cores.
    #[arg(long, default_value_t = 2)]
    cores: usize,
}

pub fn run(args: Args) -> Result<()> {
    let cpu = pin_to_last_cpu();
    let app = quokka_apps::word_count::app();
    println!(
        "# scrape benchmark: word count on {} cores at max rate, {} runs each, alternating (sender pinned to CPU {cpu})",
        args.cores, args.runs
    );
    let lines = corpus::lines(CorpusSpec {
        words: args.words,
        ..CorpusSpec::default()
    });
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let words: u64 = (lines.iter())
        .map(|l| {
            let mut n = 0;
            quokka_apps::word_count::words(l, |_| n += 1);
            n
        })
        .sum();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        off.push(one_run(&app, args.cores, &frames, words, false)?);
        on.push(one_run(&app, args.cores, &frames, words, true)?);
    }
    let (off_m, on_m) = (median(&off), median(&on));
    println!(
        "not served: {:.2} M words/s (runs: {})",
        off_m / 1e6,
        millions(&off)
    );
    println!(
        "served, scraped every second: {:.2} M words/s (runs: {})",
        on_m / 1e6,
        millions(&on)
    );
    // Each pair ran back to back: its ratio cancels drift that the medians of each kind keep.
    let pairs: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
    let paired = median(&pairs);
    println!(
        "cost of watching: {:+.1}% by the medians (watched / not = {:.3}); {:+.1}% by the median of the {} back-to-back pairs' ratios ({})",
        (1.0 - on_m / off_m) * 100.0,
        on_m / off_m,
        (1.0 - paired) * 100.0,
        pairs.len(),
        pairs.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// One run at max rate; `watched`: with the HTTP endpoint up and scraped every second.
fn one_run(
    app: &quokka_engine::App,
    cores: usize,
    frames: &[&[u8]],
    words: u64,
    watched: bool,
) -> Result<f64> {
    let collector = Collector::start(TcpListener::bind("127.0.0.1:0")?, Records::Lines, |_, _| {})?;
    let mut config = Config::new(vec!["127.0.0.1:0".parse()?], collector.addr());
    config.cores = cores;
    let engine = Arc::new(Engine::start(app, config)?);
    let current = Arc::new(RwLock::new(Some(engine.clone())));
    let scraping = Arc::new(AtomicBool::new(watched));
    let scraper = watched.then(|| -> Result<_> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let http = listener.local_addr()?;
        quokka::web::serve(listener, String::new(), current.clone())?;
        let scraping = scraping.clone();
        Ok(std::thread::spawn(move || {
            scrape_every_second(http, &scraping)
        }))
    });
    let scraper = scraper.transpose()?;
    let started = Instant::now();
    send_paced(engine.input_addrs()[0], frames, None)?;
    if !collector.wait_for(words, Duration::from_secs(300)) {
        bail!("only {} of {words} outputs arrived", collector.records());
    }
    let elapsed = collector.last_record_at().expect("outputs arrived") - started;
    scraping.store(false, Ordering::Relaxed);
    if let Some(s) = scraper {
        let scrapes = s.join().expect("scraper");
        anyhow::ensure!(
            scrapes > 0 || elapsed < Duration::from_secs(1),
            "no scrape answered"
        );
    }
    // The endpoint's threads outlive the run; they find no engine from here on.
    *current.write().unwrap() = None;
    engine.stop();
    Ok(words as f64 / elapsed.as_secs_f64())
}

/// What Prometheus and an open dashboard ask, once a second until told to stop; how many
/// rounds were answered.
fn scrape_every_second(http: SocketAddr, scraping: &AtomicBool) -> usize {
    let mut answered = 0;
    while scraping.load(Ordering::Relaxed) {
        let round = ["/metrics", "/status.json", "/series.json"]
            .iter()
            .all(|p| matches!(get(http, p, Duration::from_secs(5)), Ok((200, _))));
        answered += usize::from(round);
        let next = Instant::now() + Duration::from_secs(1);
        while scraping.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    answered
}
