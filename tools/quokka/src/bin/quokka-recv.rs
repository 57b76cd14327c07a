//! `quokka-recv`: a sink for Quokka's outputs: accepts the engine's sink connections, counts
//! records, optionally writes them to a file, and exits after N records, when idle, or on
//! SIGINT/SIGTERM (having written every record it received to the file).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use quokka::inputs::parse_addr;
use quokka_io::client::{Collector, Records};
use quokka_io::framing::encode_frame;
use signal_hook::consts::{SIGINT, SIGTERM};

/// Receive a Quokka sink's outputs.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (the engine's --out).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// Write every record here (lines as lines, frames as frames), in arrival order.
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
    /// Exit 0 once this many records arrived.
    #[arg(long, value_name = "N")]
    expect: Option<u64>,
    /// Exit after this many seconds without a record (exit 1 if --expect was not reached).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    idle_timeout: u64,
    /// How the output splits into records.
    #[arg(long, value_enum, default_value_t = Framing::Lines)]
    framing: Framing,
}

#[derive(Clone, Copy, ValueEnum)]
enum Framing {
    /// Newline-terminated lines (word count).
    Lines,
    /// Wallaroo frames: u32 big-endian length + payload (market spread).
    Frames,
}

fn main() {
    match run(Args::parse()) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("quokka-recv: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(args: Args) -> Result<bool> {
    let addr = parse_addr(&args.listen).context("--listen")?;
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    let records = match args.framing {
        Framing::Lines => Records::Lines,
        Framing::Frames => Records::Frames,
    };
    let file = match &args.out {
        Some(path) => {
            let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
            Some(Arc::new(Mutex::new(BufWriter::new(f))))
        }
        None => None,
    };
    let writer = file.clone();
    let collector = Collector::start(listener, records, move |_, record| {
        if let Some(w) = &writer {
            let mut w = w.lock().unwrap();
            let result = match records {
                Records::Lines => w.write_all(record).and_then(|()| w.write_all(b"\n")),
                Records::Frames => {
                    let mut framed = Vec::with_capacity(record.len() + 4);
                    encode_frame(record, &mut framed);
                    w.write_all(&framed)
                }
            };
            if let Err(e) = result {
                eprintln!("quokka-recv: writing the output file failed: {e}");
                std::process::exit(1);
            }
        }
    })?;
    // A signal ends the wait like idleness does: what arrived is still written and counted.
    let stopped = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, stopped.clone()).context("handling signals")?;
    }
    // The bound address: with port 0 the system chose it, and this line reports it.
    eprintln!("quokka-recv: listening on {}", collector.addr());
    let started = Instant::now();
    collector.wait_idle_or(
        args.expect,
        Duration::from_secs(args.idle_timeout),
        &stopped,
    );
    if let Some(w) = &file {
        w.lock()
            .unwrap()
            .flush()
            .context("flushing the output file")?;
    }
    if stopped.load(Ordering::Acquire) {
        eprintln!("quokka-recv: stopped by a signal");
    }
    let n = collector.records();
    let span = collector
        .last_record_at()
        .map_or(Duration::ZERO, |t| t - started);
    let secs = span.as_secs_f64().max(1e-9);
    quokka::outln!(
        "received {n} records ({} bytes) in {secs:.2}s: {:.0} records/s",
        collector.bytes(),
        n as f64 / secs
    )?;
    match args.expect {
        Some(expect) if n < expect => {
            eprintln!(
                "quokka-recv: expected {expect} records, got {n} before {}s idle",
                args.idle_timeout
            );
            Ok(false)
        }
        _ => Ok(true),
    }
}
