//! `quokka`: runs a linked app as a service, lists the apps, or runs the built-in demo.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use quokka::inputs::{parse_addr, resolve};
use quokka_engine::{Config, Engine};
use quokka_io::control::{Request, Response};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Quokka: a thread-per-core stream processing engine.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an app as a service until Ctrl-C or SIGTERM, then drain and print a summary.
    Run(RunArgs),
    /// List the apps linked into this binary.
    Apps,
    /// Run word count on bundled and generated text over loopback TCP, growing from 1 core
    /// mid-stream, and print the results.
    Demo(quokka::demo::DemoArgs),
    /// Drive a running engine through its control endpoint.
    Ctl(CtlArgs),
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The engine's control address (`quokka run --control`).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:6000")]
    control: String,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Cores, slots per core, routing epoch, per-core rates and latency, any migration.
    Status,
    /// Start N more cores and move slots onto them while the app runs.
    GrowCores { n: u16 },
    /// Move the slots and connections of the N newest cores to the others, then stop them.
    ShrinkCores { n: u16 },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The app to run (see `quokka apps`).
    app: String,
    /// A source to listen on: NAME@HOST:PORT, or HOST:PORT for a one-source app. Repeat for
    /// each source.
    #[arg(long = "in", value_name = "[NAME@]HOST:PORT", required = true)]
    inputs: Vec<String>,
    /// The sink: every core connects here and writes its outputs (retrying until it is up).
    #[arg(long = "out", value_name = "HOST:PORT")]
    output: String,
    /// Executors (one per CPU in production; more than the CPUs share them) [default: all CPUs]
    #[arg(long)]
    cores: Option<usize>,
    /// Slots in the routing table (the unit of placement).
    #[arg(long, default_value_t = 4096)]
    slots: u32,
    /// Largest accepted frame payload in bytes; a larger frame closes its connection.
    #[arg(long, default_value_t = 1 << 20)]
    max_frame: usize,
    /// Bytes of outputs each core buffers for the sink before it back-pressures the sources.
    #[arg(long, default_value_t = 4 << 20)]
    sink_buffer: usize,
    /// On shutdown, seconds to keep retrying an unreachable sink before giving up (and saying so).
    #[arg(long, default_value_t = 10)]
    drain_timeout: u64,
    /// Where `quokka ctl` reaches this engine.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:6000")]
    control: String,
}

fn main() {
    quokka::init_logging();
    let result = match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Apps => {
            for app in quokka_apps::all() {
                println!("{:<14} {}", app.name, app.about);
            }
            Ok(())
        }
        Command::Demo(args) => quokka::demo::run(args),
        Command::Ctl(args) => ctl(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn ctl(args: CtlArgs) -> Result<()> {
    let addr = parse_addr(&args.control).context("--control")?;
    let request = match args.command {
        CtlCommand::Status => Request::Status,
        CtlCommand::GrowCores { n } => Request::GrowCores(n),
        CtlCommand::ShrinkCores { n } => Request::ShrinkCores(n),
    };
    match quokka::control::request(addr, &request)? {
        Response::Ok(text) => {
            println!("{}", text.trim_end());
            Ok(())
        }
        Response::Error(text) => anyhow::bail!("{text}"),
    }
}

fn run(args: RunArgs) -> Result<()> {
    let info = quokka_apps::find(&args.app).with_context(|| {
        let names: Vec<_> = quokka_apps::all().iter().map(|a| a.name).collect();
        format!(
            "no app named `{}` (linked apps: {})",
            args.app,
            names.join(", ")
        )
    })?;
    let app = (info.build)();
    let inputs = resolve(app.sources(), &args.inputs)?;
    let output = parse_addr(&args.output).context("--out")?;
    let mut config = Config::new(inputs, output);
    if let Some(cores) = args.cores {
        config.cores = cores;
    }
    config.n_slots = args.slots;
    config.max_frame = args.max_frame;
    config.sink_buffer = args.sink_buffer;
    config.drain_timeout = Duration::from_secs(args.drain_timeout);

    let control_addr = parse_addr(&args.control).context("--control")?;
    let control = TcpListener::bind(control_addr).with_context(|| {
        format!(
            "cannot listen for control connections on {control_addr} (choose another --control)"
        )
    })?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let engine = Arc::new(Engine::start(&app, config)?);
    quokka::control::serve(control, engine.clone());
    let listening: Vec<String> = app
        .sources()
        .iter()
        .zip(engine.input_addrs())
        .map(|(name, addr)| format!("{name}@{addr}"))
        .collect();
    tracing::info!(
        "{} running: sources {}, sink {output}",
        app.name(),
        listening.join(" ")
    );
    let signal = signals.forever().next();
    tracing::info!("signal {signal:?}: stopping sources, draining in-flight messages");
    let summary = engine.stop();
    print!("{summary}");
    if summary.undelivered() > 0 {
        anyhow::bail!("{} outputs were not delivered", summary.undelivered());
    }
    Ok(())
}
