//! `quokka-recv`: a sink for Quokka's outputs: accepts the engine's sink connections, counts
//! records, optionally writes them to a file, and exits after N records, when idle, or on
//! SIGINT/SIGTERM (having written every record it received to the file).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use quokka::inputs::parse_addr;
use quokka::progress::{Progress, ProgressArgs};
use quokka_io::client::{Collector, Records};
use quokka_io::framing::encode_frame;
use signal_hook::consts::{SIGINT, SIGTERM};

/// Receive a Quokka sink's outputs.
///
/// The first line on stderr names the address it listens on; progress (records received, of
/// --expect if given) follows on stderr, the summary goes to stdout.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (the engine's --out).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// Write every record here (lines as lines, frames as frames), in arrival order.
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
    /// Exit 0 once this many records arrived (progress then shows an ETA).
    #[arg(long, value_name = "N")]
    expect: Option<u64>,
    /// Exit after this many seconds without a record (exit 1 if --expect was not reached).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    idle_timeout: u64,
    /// How the output splits into records.
    #[arg(long, value_enum, default_value_t = Framing::Lines)]
    framing: Framing,
    /// Speak the exactly-once sink protocol (for `quokka run --guarantee exactly-once`): hold
    /// each epoch's records until the engine commits it, and write each commit once. Records
    /// are counted (and --expect reached) as commits release them.
    #[arg(long)]
    exactly_once: bool,
    #[command(flatten)]
    progress: ProgressArgs,
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
    if args.exactly_once {
        return receive_exactly_once(listener, file, &args);
    }
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
    let mut progress = start_progress(&args);
    watch(&mut progress, &|| collector.records(), || {
        collector.wait_idle_or(
            args.expect,
            Duration::from_secs(args.idle_timeout),
            &stopped,
        )
    });
    if let Some(w) = &file {
        w.lock()
            .unwrap()
            .flush()
            .context("flushing the output file")?;
    }
    let n = collector.records();
    progress.finish(n);
    if stopped.load(Ordering::Acquire) {
        eprintln!("quokka-recv: stopped by a signal");
    }
    let span = collector
        .last_record_at()
        .map_or(Duration::ZERO, |t| t - started);
    let secs = span.as_secs_f64().max(1e-9);
    quokka::outln!(
        "received {n} records ({} bytes) in {secs:.2}s: {:.0} records/s",
        collector.bytes(),
        n as f64 / secs
    )?;
    Ok(reached(&args, n))
}

/// `--exactly-once`: serves the exactly-once sink protocol, writing each commit's records
/// once, as the engine encoded them, in the order they arrived.
fn receive_exactly_once(
    listener: TcpListener,
    file: Option<Arc<Mutex<BufWriter<File>>>>,
    args: &Args,
) -> Result<bool> {
    let counted = Arc::new((
        Mutex::new((0u64, 0u64, None::<Instant>)),
        std::sync::Condvar::new(),
    ));
    let (writer, count) = (file.clone(), counted.clone());
    let receiver = quokka_io::exactly_once::Receiver::start(listener, move |records| {
        if let Some(w) = &writer {
            let mut w = w.lock().unwrap();
            for r in &records {
                if let Err(e) = w.write_all(r) {
                    eprintln!("quokka-recv: writing the output file failed: {e}");
                    std::process::exit(1);
                }
            }
            // A commit is written whole before it counts.
            if let Err(e) = w.flush() {
                eprintln!("quokka-recv: writing the output file failed: {e}");
                std::process::exit(1);
            }
        }
        let (lock, changed) = &*count;
        let mut c = lock.lock().unwrap();
        c.0 += records.len() as u64;
        c.1 += records.iter().map(|r| r.len() as u64).sum::<u64>();
        c.2 = Some(Instant::now());
        changed.notify_all();
    })?;
    let stopped = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, stopped.clone()).context("handling signals")?;
    }
    eprintln!(
        "quokka-recv: listening on {} (exactly-once)",
        receiver.addr()
    );
    let started = Instant::now();
    let idle = Duration::from_secs(args.idle_timeout);
    let (lock, changed) = &*counted;
    let mut progress = start_progress(args);
    let (n, bytes, last) = watch(&mut progress, &|| lock.lock().unwrap().0, || {
        let mut c = lock.lock().unwrap();
        loop {
            if args.expect.is_some_and(|e| c.0 >= e) || stopped.load(Ordering::Acquire) {
                break;
            }
            let last = c.2.unwrap_or(started);
            if last.elapsed() >= idle {
                break;
            }
            let wait = (idle - last.elapsed()).min(Duration::from_millis(100));
            c = changed.wait_timeout(c, wait).unwrap().0;
        }
        *c
    });
    progress.finish(n);
    let secs = last.map_or(0.0, |t| (t - started).as_secs_f64()).max(1e-9);
    quokka::outln!(
        "received {n} committed records ({bytes} bytes; checkpoint {} committed last) in {secs:.2}s: {:.0} records/s",
        receiver.committed(),
        n as f64 / secs
    )?;
    Ok(reached(args, n))
}

/// Progress of the records received, towards `--expect` if given.
fn start_progress(args: &Args) -> Progress {
    Progress::start(&args.progress, "quokka-recv", "records", args.expect)
}

/// Runs `wait` while a thread shows `count()` as `progress` every 100 ms.
fn watch<T>(
    progress: &mut Progress,
    count: &(dyn Fn() -> u64 + Sync),
    wait: impl FnOnce() -> T,
) -> T {
    let (done, finished) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            while finished.recv_timeout(Duration::from_millis(100))
                == Err(mpsc::RecvTimeoutError::Timeout)
            {
                progress.update(count());
            }
        });
        let result = wait();
        drop(done);
        result
    })
}

/// Whether `n` records meet `--expect` (saying so if not).
fn reached(args: &Args, n: u64) -> bool {
    match args.expect {
        Some(expect) if n < expect => {
            eprintln!(
                "quokka-recv: expected {expect} records, got {n} before {}s idle",
                args.idle_timeout
            );
            false
        }
        _ => true,
    }
}
