//! `quokka-gen`: deterministic input files for the apps' tests and benchmarks.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use quokka_apps::market_spread::{generate, read_symbols, GenSpec};

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
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("quokka-gen: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let Gen::MarketSpread {
        symbols,
        orders,
        nbbo,
        seed,
        wide,
        out_dir,
    } = cli.command;
    if !(0.0..=1.0).contains(&wide) {
        bail!("--wide must be between 0 and 1");
    }
    let text = std::fs::read(&symbols).with_context(|| format!("reading {}", symbols.display()))?;
    let symbols = read_symbols(&text).map_err(|e| anyhow::anyhow!("{}: {e}", symbols.display()))?;
    let (o, n) = generate(
        &symbols,
        GenSpec {
            orders,
            nbbo,
            seed,
            wide,
        },
    );
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
