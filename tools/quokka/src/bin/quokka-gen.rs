//! `quokka-gen`: deterministic input files for the apps' tests and benchmarks.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use quokka_apps::market_spread::{generate, read_symbols, GenSpec};
use quokka_apps::nexmark::generate as nexmark;

/// Generate input files for Quokka's apps.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Gen,
}

#[derive(Subcommand)]
enum Gen {
    /// Framed orders and NBBO files for market_spread (send them with `quokka-send --framed`).
    MarketSpread {
        /// Symbols file: one 4-byte ticker per line (e.g. Wallaroo's r3k-legal-symbols.msg).
        #[arg(long)]
        symbols: PathBuf,
        /// Orders to generate.
        #[arg(long)]
        orders: usize,
        /// NBBO updates to generate (dealt over the symbols in turn).
        #[arg(long)]
        nbbo: usize,
        /// Seed: the same seed gives the same files.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Share of NBBO updates with a spread wide enough to reject trades (0 to 1).
        #[arg(long, default_value_t = 0.2)]
        wide: f64,
        /// Where to write orders.msg and nbbo.msg.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// NEXMark persons, auctions and bids (1:3:46, the standard generator's distributions):
    /// events.frames for the nexmark_q* apps' source `events` (send it with `quokka-send
    /// --framed`), and person.csv, auction.csv and bid.csv with the Flink schema's columns.
    Nexmark {
        /// Events to generate (every kind together).
        #[arg(long)]
        events: u64,
        /// Events per second of event time (`dateTime` advances by 1/R s per event).
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Seed: the same seed gives the same files (0 is the standard generator's own stream).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to write events.frames and the three CSV files.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("quokka-gen: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Gen::MarketSpread {
            symbols,
            orders,
            nbbo,
            seed,
            wide,
            out_dir,
        } => market_spread(
            symbols,
            GenSpec {
                orders,
                nbbo,
                seed,
                wide,
            },
            out_dir,
        ),
        Gen::Nexmark {
            events,
            rate,
            seed,
            out_dir,
        } => nexmark_files(nexmark::GenSpec { events, rate, seed }, out_dir),
    }
}

fn nexmark_files(spec: nexmark::GenSpec, out_dir: PathBuf) -> Result<()> {
    if spec.rate == 0 {
        bail!("--rate must be at least 1 event per second");
    }
    if spec.seed > nexmark::MAX_SEED {
        bail!("--seed must be at most {}", nexmark::MAX_SEED);
    }
    let n = nexmark::write_files(spec, &out_dir)
        .with_context(|| format!("writing to {}", out_dir.display()))?;
    quokka::outln!(
        "wrote {} events ({} persons, {} auctions, {} bids) to {}/events.frames, person.csv, auction.csv and bid.csv",
        spec.events,
        n.persons,
        n.auctions,
        n.bids,
        out_dir.display()
    )?;
    Ok(())
}

fn market_spread(symbols: PathBuf, spec: GenSpec, out_dir: PathBuf) -> Result<()> {
    let GenSpec {
        orders, nbbo, wide, ..
    } = spec;
    if !(0.0..=1.0).contains(&wide) {
        bail!("--wide must be between 0 and 1");
    }
    let text = std::fs::read(&symbols).with_context(|| format!("reading {}", symbols.display()))?;
    let symbols = read_symbols(&text).map_err(|e| anyhow::anyhow!("{}: {e}", symbols.display()))?;
    let (o, n) = generate(&symbols, spec);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for (name, bytes) in [("orders.msg", &o), ("nbbo.msg", &n)] {
        let path = out_dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    quokka::outln!(
        "wrote {orders} orders and {nbbo} NBBO updates for {} symbols to {}/orders.msg and nbbo.msg",
        symbols.len(),
        out_dir.display()
    )?;
    Ok(())
}
