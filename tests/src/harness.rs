//! Runs an app in-process on real loopback sockets, collects what its sink receives, and waits
//! on the engine's state; also used by the benchmarks.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use quokka_engine::{App, Config, Engine, Summary};
use quokka_io::client::{Collector, FrameSender, Records};

/// How long a test waits for a condition before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Each sink connection's records, in arrival order.
pub type Outputs = Arc<Mutex<Vec<Vec<Vec<u8>>>>>;

/// A collecting sink: listens on loopback and keeps every record per connection.
pub struct Sink {
    pub collector: Collector,
    outputs: Outputs,
}

impl Sink {
    pub fn start(records: Records) -> Sink {
        Self::on(
            TcpListener::bind("127.0.0.1:0").expect("bind sink"),
            records,
        )
    }

    pub fn on(listener: TcpListener, records: Records) -> Sink {
        let outputs: Outputs = Arc::default();
        let out = outputs.clone();
        let collector = Collector::start(listener, records, move |conn, record| {
            let mut all = out.lock().unwrap();
            if all.len() <= conn {
                all.resize(conn + 1, Vec::new());
            }
            all[conn].push(record.to_vec());
        })
        .expect("start collector");
        Sink { collector, outputs }
    }

    pub fn addr(&self) -> SocketAddr {
        self.collector.addr()
    }

    /// Waits for `n` records; panics with the count so far after [`DEADLINE`].
    pub fn wait_for(&self, n: u64) {
        assert!(
            self.collector.wait_for(n, DEADLINE),
            "only {} of {n} outputs arrived",
            self.collector.records()
        );
    }

    /// Each connection's records as they arrived.
    pub fn records(&self) -> Vec<Vec<Vec<u8>>> {
        self.outputs.lock().unwrap().clone()
    }

    /// Each connection's records as text lines.
    pub fn lines(&self) -> Vec<Vec<String>> {
        let all = self.outputs.lock().unwrap();
        all.iter()
            .map(|conn| {
                conn.iter()
                    .map(|r| String::from_utf8(r.clone()).expect("UTF-8 output"))
                    .collect()
            })
            .collect()
    }
}

/// An engine running `app` on `cores` cores with every source on an ephemeral loopback port.
pub struct Running {
    pub engine: Engine,
    pub sink: Sink,
}

impl Running {
    pub fn start(app: &App, cores: usize, records: Records) -> Running {
        Self::start_with(app, records, |c| c.cores = cores)
    }

    pub fn start_with(app: &App, records: Records, tune: impl FnOnce(&mut Config)) -> Running {
        init_logging();
        let sink = Sink::start(records);
        let inputs = app
            .sources()
            .iter()
            .map(|_| "127.0.0.1:0".parse().unwrap())
            .collect();
        let mut config = Config::new(inputs, sink.addr());
        tune(&mut config);
        let engine = Engine::start(app, config).expect("engine starts");
        Running { engine, sink }
    }

    pub fn input(&self, source: usize) -> SocketAddr {
        self.engine.input_addrs()[source]
    }

    /// Sends `frames` over one new connection and closes it.
    pub fn send(&self, source: usize, frames: &[&[u8]]) {
        send_frames(self.input(source), frames)
    }

    pub fn stop(self) -> (Summary, Sink) {
        (self.engine.stop(), self.sink)
    }
}

/// The coordinator of an in-process cluster: an engine serving its control endpoint (joins,
/// `quokka ctl`) on an ephemeral loopback port, as `quokka run --control` does.
pub struct Coordinator {
    pub engine: Arc<Engine>,
    pub control: SocketAddr,
}

impl Coordinator {
    pub fn serve(engine: Engine) -> std::io::Result<Coordinator> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let control = listener.local_addr()?;
        let engine = Arc::new(engine);
        quokka::control::serve(
            listener,
            Arc::new(std::sync::RwLock::new(Some(engine.clone()))),
        );
        Ok(Coordinator { engine, control })
    }
}

/// Waits until the engine's cores have applied `n` keyed messages in all (a barrier between
/// inputs sent over different connections), polling its status for at most `within`.
pub fn wait_applied(engine: &Engine, n: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let applied: u64 = engine.status().cores.iter().map(|c| c.applied).sum();
        if applied >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {applied} of {n} messages applied:\n{}",
                engine.status()
            );
        }
        // Polling interval (each status asks every core), not synchronisation.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Engine logs go to the test's captured output (shown when a test fails); `RUST_LOG` sets the
/// level (default `warn`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Sends `frames` over one new connection to `addr` and closes it.
pub fn send_frames(addr: SocketAddr, frames: &[&[u8]]) {
    let mut sender = FrameSender::connect(addr, DEADLINE).expect("connect to source");
    for f in frames {
        sender.send(f).expect("send frame");
    }
    sender.finish().expect("close source connection");
}

/// Lines per second each load connection offers: steady load, well below what a debug build
/// of the engine takes on this machine, so migrations are measured against traffic, not a
/// backlog.
pub const LINES_PER_SEC: f64 = 20_000.0;

/// Sends `lines` round and round over one connection at [`LINES_PER_SEC`] until `stop` is set
/// (or `limit` lines); returns how many lines it sent.
pub fn send_until(
    addr: std::net::SocketAddr,
    lines: &[String],
    stop: &AtomicBool,
    limit: usize,
) -> usize {
    let mut sender = FrameSender::connect(addr, DEADLINE).expect("connect");
    let started = std::time::Instant::now();
    let mut sent = 0;
    for line in lines.iter().cycle().take(limit) {
        if stop.load(Ordering::Acquire) && sent > 0 {
            break;
        }
        sender.send(line.as_bytes()).expect("send");
        sent += 1;
        if sent % 64 == 0 {
            sender.flush().expect("flush");
            // Pacing the load generator (not synchronisation): wait until the next batch is due.
            let due = started + std::time::Duration::from_secs_f64(sent as f64 / LINES_PER_SEC);
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        }
    }
    sender.finish().expect("finish");
    sent
}

pub fn sent_lines(lines: &[String], n: usize) -> impl Iterator<Item = &str> {
    lines.iter().cycle().take(n).map(String::as_str)
}

/// Text to keep a cluster busy while it changes: 40k Zipf words over 3k distinct, in lines.
pub fn load_text() -> Vec<String> {
    quokka_apps::corpus::lines(quokka_apps::corpus::CorpusSpec {
        words: 40_000,
        vocabulary: 3_000,
        ..quokka_apps::corpus::CorpusSpec::default()
    })
}

/// Sends `lines` once more to the engine's first source and checks, after it stops, that the
/// sink holds exactly the running totals of both rounds (`lines` was sent once before).
pub fn send_again_stop_and_check(engine: &Engine, sink: &Sink, lines: &[&str]) {
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    send_frames(engine.input_addrs()[0], &frames);
    let doubled: Vec<&str> = lines.iter().chain(lines).copied().collect();
    let expected = crate::reference::reference_counts(doubled.iter().copied());
    sink.wait_for(expected.values().sum());
    let summary = engine.stop();
    assert_eq!(summary.misrouted(), 0);
    crate::reference::check_running_totals(&sink.lines(), &expected);
}

/// Grows or shrinks `engine` by one core at a time, at random between 1 and 4 cores (starting
/// from `cores`), while `busy()` or until `min` changes; returns how many it made.
pub fn change_cores_while(
    engine: &Engine,
    seed: u64,
    mut cores: usize,
    min: usize,
    busy: impl Fn() -> bool,
) -> usize {
    let mut rng = quokka_apps::corpus::SplitMix64::new(seed);
    let mut changes = 0;
    while busy() || changes < min {
        let grow = cores == 1 || (cores < 4 && rng.next_u64().is_multiple_of(2));
        let report = if grow {
            engine.grow(1)
        } else {
            engine.shrink(1)
        }
        .expect("change of cores");
        cores = report.cores_after;
        changes += 1;
    }
    changes
}
