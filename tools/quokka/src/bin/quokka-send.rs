//! `quokka-send`: sends a file to a Quokka source, one frame per line or as already-framed data.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use quokka::inputs::parse_addr;
use quokka_io::client::{FrameSender, Records};

/// Send a file to a Quokka source as Wallaroo frames (u32 big-endian length + payload).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The source address.
    #[arg(long, value_name = "HOST:PORT")]
    to: String,
    /// The file to send.
    #[arg(long)]
    file: std::path::PathBuf,
    /// Send each line (without its newline) as one frame.
    #[arg(long, conflicts_with = "framed", required_unless_present = "framed")]
    lines: bool,
    /// The file is already framed; send its frames as they are.
    #[arg(long)]
    framed: bool,
    /// Frames per second at most [default: as fast as the engine takes them].
    #[arg(long, value_name = "N")]
    rate: Option<f64>,
    /// Send the whole file this many times.
    #[arg(long, default_value_t = 1, value_name = "K")]
    repeat: u64,
    /// Seconds to keep retrying the first connection.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("quokka-send: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let data =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let frames = split(&data, args.framed)?;
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--rate must be a positive number of frames per second");
    }
    let addr = parse_addr(&args.to).context("--to")?;
    let mut sender = FrameSender::connect(addr, Duration::from_secs(args.connect_timeout))
        .with_context(|| format!("connecting to {addr}"))?;

    let total = frames.len() as u64 * args.repeat;
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_report = started;
    let (mut sent, mut bytes) = (0u64, 0u64);
    for _ in 0..args.repeat {
        for frame in &frames {
            if let Some(rate) = args.rate {
                // A rate so low the next frame is due past any clock is never due.
                let due = Duration::try_from_secs_f64(sent as f64 / rate)
                    .ok()
                    .and_then(|d| started.checked_add(d))
                    .context("--rate is too low: the next frame would never be due")?;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    sender.flush()?;
                    std::thread::sleep(wait);
                }
            }
            sender.send(frame).context("sending")?;
            sent += 1;
            bytes += frame.len() as u64 + 4;
            if progress && sent % 1024 == 0 && last_report.elapsed() >= Duration::from_millis(250) {
                last_report = Instant::now();
                let pct = 100.0 * sent as f64 / total.max(1) as f64;
                eprint!("\r{sent}/{total} frames ({pct:.0}%)   ");
                let _ = std::io::stderr().flush();
            }
        }
    }
    // Returns once the engine has read every frame, so stopping it next loses none.
    sender
        .finish_read()
        .context("waiting for the engine to read every frame")?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    if progress {
        eprint!("\r");
    }
    quokka::outln!(
        "sent {sent} frames ({bytes} bytes) to {addr} in {secs:.2}s, all read by the engine: {:.0} frames/s, {:.1} MB/s",
        sent as f64 / secs,
        bytes as f64 / secs / 1e6
    )?;
    Ok(())
}

/// The frames of the file: its lines, or its Wallaroo frames.
fn split(data: &[u8], framed: bool) -> Result<Vec<&[u8]>> {
    if !framed {
        let text = data.strip_suffix(b"\n").unwrap_or(data);
        return Ok(text
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .collect());
    }
    let mut frames = Vec::new();
    let used = Records::Frames.split(data, |f| frames.push(f));
    if used != data.len() {
        bail!(
            "the file is not whole frames: {} trailing bytes after {} frames",
            data.len() - used,
            frames.len()
        );
    }
    Ok(frames)
}
