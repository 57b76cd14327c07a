//! NEXMark q0-q8 end to end: generated events (`quokka_apps::nexmark::generate`, as `quokka-gen
//! nexmark` writes them) sent framed to the query's app; the whole output must equal what
//! [`crate::nexmark_reference`] computes from the generated CSV files, on 1 and 2 cores, and for
//! q3 (a join), q4 (auctions closed by timers, averaged in a second stage), q5 and q7 (chained
//! windows) across grow and shrink mid-stream, and q3, q5 and q7 across nodes joining and
//! leaving.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quokka_apps::nexmark::generate::{write_files, GenSpec};
use quokka_apps::nexmark::QUERIES;
use quokka_engine::{App, Engine};
use quokka_io::client::{FrameSender, Records};

use crate::cluster;
use crate::harness::{change_cores_while, Coordinator, Running, Sink, DEADLINE};
use crate::nexmark_reference::{expected, read};

/// Events per test: 200k, 2 000 per second of event time (100 s: 10 tumbling windows of 10 s,
/// 50 sliding ones).
const EVENTS: u64 = 200_000;
const RATE: u64 = 2_000;

/// Generated events in a directory of their own: the frames to send and the reference output.
struct Data {
    frames: Vec<Vec<u8>>,
    dir: PathBuf,
}

impl Data {
    fn generate(seed: u64) -> Data {
        static RUN: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "quokka-nexmark-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        let spec = GenSpec {
            events: EVENTS,
            rate: RATE,
            seed,
        };
        write_files(spec, &dir).expect("generate NEXMark files");
        let bytes = std::fs::read(dir.join("events.frames")).expect("read events.frames");
        let mut frames = Vec::with_capacity(EVENTS as usize);
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            frames.push(bytes[at + 4..at + 4 + len].to_vec());
            at += 4 + len;
        }
        assert_eq!(frames.len() as u64, EVENTS);
        Data { frames, dir }
    }

    fn expected(&self, query: usize) -> Vec<String> {
        expected(query, &read(&self.dir))
    }
}

impl Drop for Data {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn app(query: usize) -> App {
    (QUERIES[query].build)()
}

/// Sends `frames` over one connection, `per_ms` frames per millisecond at most (pacing the
/// load so that changes land mid-stream, not synchronisation; 0: as fast as it goes), and
/// returns once the engine has read them all.
fn send(input: SocketAddr, frames: &[Vec<u8>], per_ms: usize) {
    let mut sender = FrameSender::connect(input, DEADLINE).expect("connect");
    let started = Instant::now();
    let chunk = if per_ms == 0 { 1000 } else { per_ms * 25 };
    for (i, part) in frames.chunks(chunk).enumerate() {
        for f in part {
            sender.send(f).expect("send");
        }
        if per_ms > 0 {
            sender.flush().expect("flush");
            let due = started + Duration::from_millis(25 * (i as u64 + 1));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    sender.finish_read().expect("the engine reads every frame");
}

/// Waits until the cores have read `n` frames in all (the stop then applies all of them).
fn wait_read(engine: &Engine, n: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = engine.status();
        let read: u64 = status.cores.iter().map(|c| c.frames).sum();
        if read >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{read} of {n} frames read:\n{status}"
        );
        // Polling interval (each status asks every core), not synchronisation.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The sink's whole output against the reference: the same lines, as many times each.
fn check(query: usize, sink: &Sink, want: &[String]) {
    // On a shortfall, the comparison below says which lines are missing.
    sink.collector.wait_for(want.len() as u64, DEADLINE);
    let mut got: Vec<String> = (sink.lines().concat().into_iter())
        .map(|l| l.trim_end_matches('\n').to_owned())
        .collect();
    got.sort_unstable();
    if got != want {
        let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).take(3).collect();
        let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).take(3).collect();
        panic!(
            "q{query}: {} lines, want {}; missing e.g. {missing:?}, unexpected e.g. {extra:?}",
            got.len(),
            want.len()
        );
    }
}

fn query_on(query: usize, cores: usize, data: &Data) {
    let want = data.expected(query);
    assert!(!want.is_empty(), "q{query} has results on this data");
    let run = Running::start(&app(query), cores, Records::Lines);
    send(run.input(0), &data.frames, 0);
    wait_read(&run.engine, EVENTS);
    let (summary, sink) = run.stop();
    assert_eq!(summary.misrouted(), 0);
    check(query, &sink, &want);
}

/// Every query on 1 and 2 cores (one generated data set for all, as the queries share it).
#[test]
fn every_query_equals_the_reference_on_one_and_two_cores() {
    let data = Data::generate(0);
    for query in 0..QUERIES.len() {
        for cores in [1, 2] {
            query_on(query, cores, &data);
        }
    }
}

/// Sends the events paced while the engine grows and shrinks at random (at least 4 times).
fn across_grow_and_shrink(query: usize, seed: u64) {
    let data = Data::generate(seed);
    let want = data.expected(query);
    let run = Running::start(&app(query), 2, Records::Lines);
    let input = run.input(0);
    std::thread::scope(|s| {
        let sender = s.spawn(|| send(input, &data.frames, 40));
        change_cores_while(&run.engine, seed, 2, 4, || !sender.is_finished());
        sender.join().unwrap();
    });
    // Results flow while it runs: no change left a later stage's watermark held (a stop would
    // release it and hide that).
    run.sink.wait_for(want.len() as u64 / 2);
    let late: u64 = run.engine.status().cores.iter().map(|c| c.late).sum();
    assert_eq!(late, 0, "no event is late, even across changes");
    let (summary, sink) = run.stop();
    assert_eq!(summary.misrouted(), 0);
    check(query, &sink, &want);
}

/// Nodes join and leave while the events are paced in.
fn across_nodes(query: usize, seed: u64) {
    let data = Data::generate(seed);
    let want = data.expected(query);
    let app = app(query);
    let sink = Sink::start(Records::Lines);
    let c = cluster::config(&app, sink.addr(), "w1", true);
    let lead = Coordinator::serve(Engine::start(&app, c).expect("w1 starts")).expect("serve");
    let input = lead.engine.input_addrs()[0];
    std::thread::scope(|s| {
        let sender = s.spawn(|| send(input, &data.frames, 40));
        let w2 = cluster::join(&app, &lead, "w2");
        let w3 = cluster::join(&app, &lead, "w3");
        cluster::remove(&lead, &w2);
        cluster::remove(&lead, &w3);
        sender.join().unwrap();
    });
    sink.wait_for(want.len() as u64 / 2);
    let late: u64 = lead.engine.status().cores.iter().map(|c| c.late).sum();
    assert_eq!(
        late, 0,
        "no event is late, even across nodes joining and leaving"
    );
    assert_eq!(lead.engine.stop().misrouted(), 0);
    check(query, &sink, &want);
}

#[test]
fn q3_join_is_exact_across_grow_and_shrink() {
    across_grow_and_shrink(3, 11);
}

#[test]
fn q4_averages_are_exact_across_grow_and_shrink() {
    across_grow_and_shrink(4, 14);
}

#[test]
fn q5_hot_items_are_exact_across_grow_and_shrink() {
    across_grow_and_shrink(5, 12);
}

#[test]
fn q7_highest_bids_are_exact_across_grow_and_shrink() {
    across_grow_and_shrink(7, 13);
}

#[test]
fn q3_join_is_exact_across_nodes_joining_and_leaving() {
    across_nodes(3, 21);
}

#[test]
fn q5_hot_items_are_exact_across_nodes_joining_and_leaving() {
    across_nodes(5, 22);
}

#[test]
fn q7_highest_bids_are_exact_across_nodes_joining_and_leaving() {
    across_nodes(7, 23);
}
