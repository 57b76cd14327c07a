//! `quokka-bench`: end-to-end benchmarks of the engine over loopback TCP. Each prints the cost
//! per message and latency percentiles, and times a baseline in the same run so results can be
//! quoted as ratios. Results worth keeping go to `bench/RESULTS.md`.

mod autoscale;
mod channels;
mod checkpoint;
mod cluster;
mod kill;
mod market_spread;
mod migrate;
mod nexmark;
mod plot;
mod sampler;
mod scrape;
mod util;
mod windows;
mod wordcount;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Quokka's benchmarks.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
    /// Where `wordcount` and `migrate` write their pictures (SVG): latency percentile
    /// distributions, and for `migrate` throughput and p99 over time with the moves marked.
    /// The default is this source tree's bench/results, which holds the committed ones (linked
    /// from bench/RESULTS.md): pass another directory to keep them.
    #[arg(long, global = true, value_name = "DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    plots: PathBuf,
}

#[derive(Subcommand)]
enum Bench {
    /// Word count (or word buckets, `--app word_buckets`): throughput at max rate, latency at
    /// half of it, memory per entity, against a single-threaded in-process baseline.
    Wordcount(wordcount::Args),
    /// Event-time windows (window_counts): events/s at max rate and per core, window latency
    /// at half of it.
    Windows(windows::Args),
    /// NEXMark q0-q8: events/s per core at max rate and latency at half of it, 1 and 2 cores,
    /// against decoding alone.
    Nexmark(nexmark::Args),
    /// Cross-core channels (flume against glommio's shared channel), single and batched.
    Channels(channels::Args),
    /// Grow 1 -> 2 cores and shrink back under load with a million words in state.
    Migrate(migrate::Args),
    /// Market Spread (Wallaroo's benchmark app): messages/s and latency, 1 and 2 cores.
    MarketSpread(market_spread::Args),
    /// Two nodes on this machine: cross-node routing against one node, and a node joining
    /// while a million words are in state (`--kill`: three nodes, one killed and recovered).
    Cluster(cluster::Args),
    /// Checkpoints with a million words in state: throughput and latency cost, bytes written
    /// when 1% of the keys change, restore time, exactly-once latency.
    Checkpoint(checkpoint::Args),
    /// What watching costs: word count at max rate with the HTTP endpoint (`quokka run
    /// --http`) scraped every second, against no endpoint.
    Scrape(scrape::Args),
    /// Autoscaling: word count under a low -> 3x -> low load profile on fixed 1 core, fixed 2
    /// cores and `autoscale 1..2` (the policy's defaults): p99 over time, time to react,
    /// core-seconds.
    Autoscale(autoscale::Args),
}

fn main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if matches!(
        cli.bench,
        Bench::Wordcount(_) | Bench::Migrate(_) | Bench::Autoscale(_)
    ) {
        std::fs::create_dir_all(&cli.plots)
            .with_context(|| format!("creating {}", cli.plots.display()))?;
    }
    match cli.bench {
        Bench::Wordcount(args) => wordcount::run(args, &cli.plots),
        Bench::Windows(args) => windows::run(args),
        Bench::Nexmark(args) => nexmark::run(args),
        Bench::Channels(args) => channels::run(args),
        Bench::Migrate(args) => migrate::run(args, &cli.plots),
        Bench::MarketSpread(args) => market_spread::run(args),
        Bench::Cluster(args) => cluster::run(args),
        Bench::Checkpoint(args) => checkpoint::run(args),
        Bench::Scrape(args) => scrape::run(args),
        Bench::Autoscale(args) => autoscale::run(args, &cli.plots),
    }
}
