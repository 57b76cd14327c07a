//! Market Spread end to end: orders and NBBO over two loopback connections into the engine,
//! after the initial NBBO fixture. Messages/s at max rate, latency at max and at half of it.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use quokka_apps::market_spread::{self, generate, read_symbols, GenSpec};
use quokka_engine::{Config, Engine, Summary};
use quokka_io::client::{Collector, Records};
use quokka_tests::fixtures::{INITIAL_NBBO, SYMBOLS};
use quokka_tests::harness::wait_applied;

use crate::util::{self, median, pin_to_last_cpu, send_paced};

/// How long a run may take to apply its messages.
const APPLY_DEADLINE: Duration = Duration::from_secs(300);

#[derive(clap::Args)]
pub struct Args {
    /// Runs of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Orders per run (NBBO updates are half as many).
    #[arg(long, default_value_t = 4_000_000)]
    orders: usize,
    /// Engine core counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    cores: Vec<usize>,
}

fn payloads(framed: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    Records::Frames.split(framed, |p| out.push(p));
    out
}

pub fn run(args: Args) -> Result<()> {
    let cpu = pin_to_last_cpu();
    let symbols = read_symbols(SYMBOLS).map_err(anyhow::Error::msg)?;
    let spec = GenSpec {
        orders: args.orders,
        nbbo: args.orders / 2,
        seed: 1,
        wide: 0.2,
    };
    let (orders, nbbo) = generate(&symbols, spec);
    let (orders, nbbo) = (payloads(&orders), payloads(&nbbo));
    let total = (orders.len() + nbbo.len()) as u64;
    println!(
        "# market spread: {} orders + {} NBBO over 2 connections after the 350-symbol NBBO fixture; {} runs; clients on CPU {cpu}",
        orders.len(),
        nbbo.len(),
        args.runs
    );
    for &cores in &args.cores {
        let max: Vec<(f64, Summary)> = (0..args.runs)
            .map(|_| one_run(cores, &orders, &nbbo, total, None))
            .collect::<Result<_>>()?;
        let rates: Vec<f64> = max.iter().map(|r| r.0).collect();
        let max_rate = median(&rates);
        println!(
            "cores={cores} max rate: {:.2} M msgs/s ({:.2} M per core; runs: {})",
            max_rate / 1e6,
            max_rate / 1e6 / cores as f64,
            util::millions(&rates)
        );
        println!("  latency at max rate: {}", median_percentiles(&max));
        let half: Vec<(f64, Summary)> = (0..args.runs)
            .map(|_| one_run(cores, &orders, &nbbo, total, Some(max_rate / 2.0)))
            .collect::<Result<_>>()?;
        println!(
            "cores={cores} at half rate ({:.2} M msgs/s offered): {}",
            max_rate / 2e6,
            median_percentiles(&half)
        );
    }
    Ok(())
}

fn median_percentiles(runs: &[(f64, Summary)]) -> String {
    let hists: Vec<Histogram<u64>> = runs.iter().map(|r| r.1.latency()).collect();
    format!("{} (medians of runs)", util::median_percentiles(&hists))
}

/// One run: fixture first, then orders and NBBO on two connections (paced to `rate` msgs/s in
/// all, or flat out); done when every message has been applied.
fn one_run(
    cores: usize,
    orders: &[&[u8]],
    nbbo: &[&[u8]],
    total: u64,
    rate: Option<f64>,
) -> Result<(f64, Summary)> {
    let collector = Collector::start(
        TcpListener::bind("127.0.0.1:0")?,
        Records::Frames,
        |_, _| {},
    )?;
    let inputs = vec!["127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?];
    let mut config = Config::new(inputs, collector.addr());
    config.cores = cores;
    let engine = Engine::start(&market_spread::app(), config)?;
    let (orders_addr, nbbo_addr) = (engine.input_addrs()[0], engine.input_addrs()[1]);
    send_paced(nbbo_addr, &payloads(INITIAL_NBBO), None)?;
    wait_applied(&engine, 350, APPLY_DEADLINE)?;
    engine.take_latency();

    let started = Instant::now();
    let share = |n: usize| rate.map(|r| r * n as f64 / (orders.len() + nbbo.len()) as f64);
    std::thread::scope(|s| -> Result<()> {
        let o = s.spawn(|| send_paced(orders_addr, orders, share(orders.len())));
        let n = s.spawn(|| send_paced(nbbo_addr, nbbo, share(nbbo.len())));
        o.join().expect("orders sender")?;
        n.join().expect("nbbo sender")
    })?;
    wait_applied(&engine, 350 + total, APPLY_DEADLINE)?;
    let elapsed = started.elapsed();
    let summary = engine.stop();
    if summary.misrouted() > 0 || summary.connection_errors() > 0 {
        bail!("run was not clean: {summary}");
    }
    Ok((total as f64 / elapsed.as_secs_f64(), summary))
}
