//! `quokka-send`: sends a file to a Quokka source, one frame per line or as already-framed data.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use quokka::inputs::parse_addr;
use quokka::progress::{Progress, ProgressArgs};
use quokka_io::client::FrameSender;

/// Send a file to a Quokka source as Wallaroo frames (u32 big-endian length + payload).
///
/// Progress (frames sent of the file's frames times --repeat) goes to stderr, the summary to
/// stdout.
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
    /// Seconds to keep retrying the first connection (with --durable: to wait for progress
    /// while the engine is down before giving up).
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Send as durable stream NAME (the engine needs --state-dir): frames are kept until the
    /// engine says a durable checkpoint holds them, and after a broken connection or an engine
    /// restart, resent from where the engine says (reconnecting with backoff). Exits 0 once
    /// every frame is durable. One sender per name. Progress counts frames sent, not frames
    /// made durable: it goes back when a reconnection resends, and waits at the total until
    /// the engine says all are durable.
    #[arg(long, value_name = "NAME")]
    durable: Option<String>,
    #[command(flatten)]
    progress: ProgressArgs,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("quokka-send: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let file = args.file.display();
    // The file is read as it is sent (it may be larger than memory); a first pass counts its
    // frames and checks a framed file is whole frames before anything is sent.
    let frames = count(&args.file, args.framed).with_context(|| format!("reading {file}"))?;
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--rate must be a positive number of frames per second");
    }
    let addr = parse_addr(&args.to).context("--to")?;
    if let Some(name) = &args.durable {
        return send_durable(&args, addr, name, frames);
    }
    let mut sender = FrameSender::connect(addr, Duration::from_secs(args.connect_timeout))
        .with_context(|| format!("connecting to {addr}"))?;

    let total = frames.saturating_mul(args.repeat);
    let mut progress = Progress::start(&args.progress, "quokka-send", "frames", Some(total));
    let started = Instant::now();
    let (mut sent, mut bytes) = (0u64, 0u64);
    for _ in 0..args.repeat {
        let mut frames =
            FileFrames::open(&args.file, args.framed).with_context(|| format!("reading {file}"))?;
        while let Some(frame) = frames.next().with_context(|| format!("reading {file}"))? {
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
            progress.update(sent);
        }
    }
    // Returns once the engine has read every frame, so stopping it next loses none.
    sender
        .finish_read()
        .context("waiting for the engine to read every frame")?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    progress.finish(sent);
    quokka::outln!(
        "sent {sent} frames ({bytes} bytes) to {addr} in {secs:.2}s, all read by the engine: {:.0} frames/s, {:.1} MB/s",
        sent as f64 / secs,
        bytes as f64 / secs / 1e6
    )?;
    Ok(())
}

/// `--durable NAME`: the file (`--repeat` times) as a durable stream; each (re)connection
/// resends from the frame the engine names, at `--rate` counted from the start.
fn send_durable(args: &Args, addr: std::net::SocketAddr, name: &str, frames: u64) -> Result<()> {
    let total = frames.saturating_mul(args.repeat);
    let started = Instant::now();
    let (path, framed, rate) = (args.file.clone(), args.framed, args.rate);
    // The frames are drawn on this thread, one connection at a time.
    let progress = Rc::new(RefCell::new(Progress::start(
        &args.progress,
        "quokka-send",
        "frames",
        Some(total),
    )));
    let shown = progress.clone();
    let from = move |first: u64| -> std::io::Result<quokka_io::durable::Frames> {
        let mut index = 0u64;
        let mut round = FileFrames::open(&path, framed)?;
        let (path, total, progress) = (path.clone(), total, shown.clone());
        Ok(Box::new(std::iter::from_fn(move || loop {
            if index >= total {
                return None;
            }
            let frame = match round.next() {
                Ok(Some(f)) => f.to_vec(),
                Ok(None) => match FileFrames::open(&path, framed) {
                    Ok(f) => {
                        round = f;
                        continue;
                    }
                    Err(e) => return Some(Err(e)),
                },
                Err(e) => return Some(Err(std::io::Error::other(format!("{e:#}")))),
            };
            index += 1;
            if index <= first {
                continue;
            }
            if let Some(rate) = rate {
                let due = Duration::try_from_secs_f64((index - 1) as f64 / rate)
                    .ok()
                    .and_then(|d| started.checked_add(d));
                if let Some(wait) = due.and_then(|d| d.checked_duration_since(Instant::now())) {
                    std::thread::sleep(wait);
                }
            }
            progress.borrow_mut().update(index);
            return Some(Ok(frame));
        })))
    };
    let patience = Duration::from_secs(args.connect_timeout);
    let sent = quokka_io::durable::send_durably(addr, name, total, &from, patience)
        .with_context(|| format!("durable stream `{name}` to {addr}"))?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    progress.borrow_mut().finish(total);
    quokka::outln!(
        "sent {total} frames to {addr} as durable stream `{name}` in {secs:.2}s over {} connection(s) ({} frames written, resends included), all durable: {:.0} frames/s",
        sent.connections,
        sent.frames_written,
        total as f64 / secs
    )?;
    Ok(())
}

/// A file's frames, read one at a time: its lines (without `\n` or `\r\n`), or its Wallaroo
/// frames.
struct FileFrames {
    input: BufReader<File>,
    framed: bool,
    frame: Vec<u8>,
}

impl FileFrames {
    fn open(path: &Path, framed: bool) -> std::io::Result<Self> {
        Ok(FileFrames {
            input: BufReader::with_capacity(1 << 20, File::open(path)?),
            framed,
            frame: Vec::new(),
        })
    }

    /// The next frame; `None` at the end of the file.
    fn next(&mut self) -> Result<Option<&[u8]>> {
        self.frame.clear();
        if self.framed {
            let Some(len) = read_header(&mut self.input)? else {
                return Ok(None);
            };
            self.frame.resize(len, 0);
            self.input
                .read_exact(&mut self.frame)
                .context("the file changed while it was sent")?;
            return Ok(Some(&self.frame));
        }
        if self.input.read_until(b'\n', &mut self.frame)? == 0 {
            return Ok(None);
        }
        let line = self.frame.strip_suffix(b"\n").unwrap_or(&self.frame);
        Ok(Some(line.strip_suffix(b"\r").unwrap_or(line)))
    }
}

/// A frame's length, or `None` at the end of the file (which must not cut a header).
fn read_header(input: &mut impl BufRead) -> Result<Option<usize>> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match input.read(&mut header[got..])? {
            0 if got == 0 => return Ok(None),
            0 => bail!("the file is not whole frames: it ends inside a frame's header"),
            n => got += n,
        }
    }
    Ok(Some(u32::from_be_bytes(header) as usize))
}

/// How many frames the file holds; a framed file must be whole frames.
fn count(path: &Path, framed: bool) -> Result<u64> {
    let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut frames = 0u64;
    if !framed {
        let mut line = Vec::new();
        while input.read_until(b'\n', &mut line)? > 0 {
            frames += 1;
            line.clear();
        }
        return Ok(frames);
    }
    let size = std::fs::metadata(path)?.len();
    let mut at = 0u64;
    while let Some(len) = read_header(&mut input)? {
        at += 4 + len as u64;
        if at > size {
            bail!(
                "the file is not whole frames: frame {} claims {len} bytes past the file's end",
                frames + 1
            );
        }
        input.seek_relative(len as i64)?;
        frames += 1;
    }
    Ok(frames)
}
