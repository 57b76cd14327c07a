//! Event time, timers and windows, end to end: a tumbling and a sliding count per key, written
//! with timers (`process`) and the window library, to two sinks, with late events to a third.
//! Results must equal a reference computed here from the events sent, on 1 and 2 cores, with
//! events out of order within the allowed lateness, and across grow/shrink mid-stream.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quokka_apps::corpus::SplitMix64;
use quokka_apps::window_counts::{self, Event, LATENESS};
use quokka_engine::{App, Config, Context, Engine, Open, Time, Windowed, Windows};
use quokka_io::client::{FrameSender, Records};

use crate::cluster;
use crate::harness::{
    change_cores_while, init_logging, send_frames, wait_applied, Coordinator, Sink, DEADLINE,
};

fn tumbling() -> Windows {
    Windows::tumbling(1000)
}

fn sliding() -> Windows {
    Windows::sliding(2000, 500)
}

/// A key's windows of both kinds.
#[derive(Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Both {
    tumbling: Open<u64>,
    sliding: Open<u64>,
}

type Out = (u8, Windowed<u64>);

fn count(both: &mut Both, _: Event, ctx: &mut Context<Out>) {
    let ts = ctx.event_time().expect("the source stamps event time");
    for (open, spec) in [
        (&mut both.tumbling, tumbling()),
        (&mut both.sliding, sliding()),
    ] {
        let timer = |end| ctx.timer_at(Time::Event(end));
        open.add(&spec, ts, |n| *n += 1, |n, m| *n += m, timer);
    }
}

fn close(both: &mut Both, at: Time, ctx: &mut Context<Out>) {
    let Time::Event(watermark) = at else { return };
    for (kind, open) in [(0, &mut both.tumbling), (1, &mut both.sliding)] {
        for w in open.close(watermark) {
            let key = ctx.key().to_vec();
            let (start, end, value) = (w.start, w.end, w.acc);
            ctx.emit((
                kind,
                Windowed {
                    key,
                    start,
                    end,
                    value,
                },
            ));
        }
    }
}

/// Sinks in order: late, tumbling, sliding.
fn windows_app() -> App {
    let pick = |kind: u8| move |o: &Out| (o.0 == kind).then(|| o.1.clone());
    App::source("events", window_counts::decode)
        .event_time(|e: &Event| e.at, LATENESS)
        .key_by(|e: &Event| e.key.as_bytes())
        .late_to("late", |e: &Event, out: &mut Vec<u8>| {
            out.extend_from_slice(format!("{} {}\n", e.at, e.key).as_bytes())
        })
        .process(count, close)
        .also_sink("tumbling", pick(0), window_counts::encode)
        .also_sink("sliding", pick(1), window_counts::encode)
        .end()
        .named("windows")
}

/// `n` events over `keys` keys, 3 ms of event time apart, each displaced by up to half the
/// allowed lateness (so never late), in send order.
fn events(n: usize, keys: u64, seed: u64) -> Vec<(u64, String)> {
    let mut rng = SplitMix64::new(seed);
    (0..n as u64)
        .map(|i| {
            let jitter = rng.next_u64() % (LATENESS / 2);
            (i * 3 + jitter, format!("k{}", rng.next_u64() % keys))
        })
        .collect()
}

/// What each window sink must hold: `key [start, end) => count` once per window with events.
fn reference(events: &[(u64, String)]) -> [BTreeMap<String, u64>; 2] {
    let mut tumbling: HashMap<(String, u64), u64> = HashMap::new();
    let mut sliding: HashMap<(String, u64), u64> = HashMap::new();
    for (ts, key) in events {
        *tumbling.entry((key.clone(), ts / 1000 * 1000)).or_default() += 1;
        // Every window [s, s + 2000) with s a multiple of 500 (none before 0) that holds ts.
        let first = ts.saturating_sub(1999).div_ceil(500) * 500;
        for start in (first..=*ts).step_by(500) {
            *sliding.entry((key.clone(), start)).or_default() += 1;
        }
    }
    let lines = |m: HashMap<(String, u64), u64>, size: u64| {
        m.into_iter()
            .map(|((k, s), n)| (format!("{k} [{s}, {}) => {n}", s + size), n))
            .collect()
    };
    [lines(tumbling, 1000), lines(sliding, 2000)]
}

/// An engine with one collecting sink per sink of the app.
struct Windowed3 {
    engine: Engine,
    sinks: Vec<Sink>,
}

impl Windowed3 {
    fn start(cores: usize) -> Self {
        init_logging();
        let app = windows_app();
        assert_eq!(app.sinks(), ["late", "tumbling", "sliding"]);
        let sinks = three_sinks();
        let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], sinks[0].addr());
        config.outputs = sinks.iter().map(Sink::addr).collect();
        config.cores = cores;
        let engine = Engine::start(&app, config).expect("engine starts");
        Windowed3 { engine, sinks }
    }

    fn input(&self) -> SocketAddr {
        self.engine.input_addrs()[0]
    }

    /// Waits until every event sent is applied (a stop cuts a connection not yet accepted).
    /// Only before the first shrink: status counts the running cores' messages.
    fn wait_applied(&self, n: usize) {
        wait_applied(&self.engine, n as u64, DEADLINE).expect("every event applied");
    }

    /// Stops (every window closes: the watermark passes the end of time), then checks both
    /// window sinks against the reference and returns the late sink's lines.
    fn stop_and_check(self, sent: &[(u64, String)]) -> Vec<String> {
        let summary = self.engine.stop();
        assert_eq!(summary.misrouted(), 0);
        // The late sink's last lines may still be on their way to its collector.
        self.sinks[0].wait_for(summary.late());
        let late = check_sinks(&self.sinks, sent);
        assert_eq!(
            summary.late(),
            late.len() as u64,
            "the summary counts every late message, retired cores' too"
        );
        late
    }
}

/// Checks both window sinks against the reference (once the engine stopped) and returns the
/// late sink's lines.
fn check_sinks(sinks: &[Sink], sent: &[(u64, String)]) -> Vec<String> {
    for (sink, want) in sinks[1..].iter().zip(reference(sent)) {
        sink.wait_for(want.len() as u64);
        check_windows(&sink.lines(), &want);
    }
    sinks[0].lines().concat()
}

/// One collecting sink per sink of the windows app.
fn three_sinks() -> Vec<Sink> {
    (0..3).map(|_| Sink::start(Records::Lines)).collect()
}

/// Sends `events` over one connection at 20k events/s (pacing the load, not synchronising),
/// so that changes made meanwhile land mid-stream.
fn send_paced(input: SocketAddr, events: &[(u64, String)]) {
    let mut sender = FrameSender::connect(input, DEADLINE).expect("connect");
    let started = Instant::now();
    for (i, chunk) in frames(events).chunks(500).enumerate() {
        for f in chunk {
            sender.send(f).expect("send");
        }
        sender.flush().expect("flush");
        let due = started + Duration::from_millis(25 * (i as u64 + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    sender.finish().expect("finish");
}

/// Every window once, with its count; per key, window ends rise on each connection.
fn check_windows(got: &[Vec<String>], want: &BTreeMap<String, u64>) {
    let mut all: Vec<&str> = Vec::new();
    for conn in got {
        let mut last_end: HashMap<&str, u64> = HashMap::new();
        for line in conn {
            let line = line.trim_end();
            let (key, rest) = line.split_once(" [").expect("a window line");
            let end: u64 = rest
                .split_once(", ")
                .and_then(|(_, e)| e.split_once(')'))
                .and_then(|(e, _)| e.parse().ok())
                .unwrap_or_else(|| panic!("bad window line {line:?}"));
            let last = last_end.insert(key, end);
            assert!(
                last.is_none_or(|l| l < end),
                "key {key}: window ending {end} after one ending {last:?}"
            );
            all.push(line);
        }
    }
    all.sort_unstable();
    let want: Vec<&str> = want.keys().map(String::as_str).collect();
    if all != want {
        let missing: Vec<_> = want.iter().filter(|w| !all.contains(w)).take(5).collect();
        let extra: Vec<_> = all.iter().filter(|g| !want.contains(g)).take(5).collect();
        panic!(
            "{} windows, want {}; missing e.g. {missing:?}, unexpected e.g. {extra:?}",
            all.len(),
            want.len()
        );
    }
}

fn frames(events: &[(u64, String)]) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|(ts, key)| format!("{ts} {key}").into_bytes())
        .collect()
}

fn send_events(addr: SocketAddr, events: &[(u64, String)]) {
    let frames = frames(events);
    send_frames(addr, &frames.iter().map(Vec::as_slice).collect::<Vec<_>>());
}

fn windows_on(cores: usize, events: &[(u64, String)]) {
    let run = Windowed3::start(cores);
    send_events(run.input(), events);
    run.wait_applied(events.len());
    let late = run.stop_and_check(events);
    assert!(late.is_empty(), "nothing was late: {late:?}");
}

#[test]
fn windows_on_one_core_equal_the_reference() {
    windows_on(1, &events(20_000, 50, 1));
}

#[test]
fn windows_on_two_cores_equal_the_reference() {
    windows_on(2, &events(20_000, 50, 2));
}

#[test]
fn events_out_of_order_within_lateness_give_the_sorted_result() {
    let shuffled = events(20_000, 50, 3);
    let mut sorted = shuffled.clone();
    sorted.sort();
    assert_ne!(shuffled, sorted, "the events really are out of order");
    windows_on(2, &sorted);
    windows_on(2, &shuffled);
}

/// The watermark of stage 0 on every core, once they agree it passed `at`.
fn wait_watermark(engine: &Engine, at: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = engine.status();
        if status
            .cores
            .iter()
            .all(|c| c.watermark.is_some_and(|w| w >= at))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "watermark never passed {at}:\n{status}"
        );
        // Polling interval (each status asks every core), not synchronisation.
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn late_events_are_counted_sent_to_their_sink_and_change_no_closed_window() {
    let run = Windowed3::start(2);
    let on_time = events(5_000, 10, 4);
    send_events(run.input(), &on_time);
    let latest = on_time.iter().map(|e| e.0).max().unwrap();
    wait_watermark(&run.engine, latest - LATENESS);
    // Window [0, 1000) of both kinds closed long ago: these are late and change nothing.
    let late = [(100, "k1".to_string()), (999, "k2".to_string())];
    send_events(run.input(), &late);
    let deadline = Instant::now() + DEADLINE;
    while run
        .engine
        .status()
        .cores
        .iter()
        .map(|c| c.late)
        .sum::<u64>()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", run.engine.status());
        // Polling interval (each status asks every core), not synchronisation.
        std::thread::sleep(Duration::from_millis(1));
    }
    let late_lines = run.stop_and_check(&on_time);
    assert_eq!(late_lines, ["100 k1", "999 k2"]);
}

/// Events sent over one connection, paced, while the engine grows and shrinks: every key's
/// windows and pending timers move with its slot, and the connection moves between cores.
#[test]
fn windows_stay_exact_across_grow_and_shrink_mid_stream() {
    let run = Windowed3::start(2);
    let events = events(60_000, 200, 5);
    let input = run.input();
    std::thread::scope(|s| {
        let sender = s.spawn(|| send_paced(input, &events));
        let changes = change_cores_while(&run.engine, 7, 2, 4, || !sender.is_finished());
        sender.join().unwrap();
        assert!(changes >= 4);
    });
    // The connection was read from the start: at the stop, what it sent is read to the end.
    let timers: usize = run.engine.status().cores.iter().map(|c| c.timers).sum();
    assert!(timers > 0, "windows are still open before the stop");
    let late = run.stop_and_check(&events);
    assert!(late.is_empty(), "nothing was late: {late:?}");
}

/// Nodes join and leave while windows are open: every key's windows and pending timers cross
/// nodes in the slot archive (its timers part) and come back, and the results stay exact.
#[test]
fn windows_stay_exact_across_node_join_and_remove() {
    init_logging();
    let app = windows_app();
    let sinks = three_sinks();
    let mut c = cluster::config(&app, sinks[0].addr(), "w1", true);
    c.outputs = sinks.iter().map(Sink::addr).collect();
    let lead = Coordinator::serve(Engine::start(&app, c).expect("w1 starts")).expect("serve");
    let events = events(40_000, 200, 6);
    let input = lead.engine.input_addrs()[0];
    std::thread::scope(|s| {
        let sender = s.spawn(|| send_paced(input, &events));
        let w2 = cluster::join(&app, &lead, "w2");
        let w3 = cluster::join(&app, &lead, "w3");
        let timers: usize = lead.engine.status().cores.iter().map(|c| c.timers).sum();
        assert!(timers > 0, "windows are open while the nodes change");
        cluster::remove(&lead, &w2);
        cluster::remove(&lead, &w3);
        sender.join().unwrap();
    });
    assert_eq!(lead.engine.stop().misrouted(), 0);
    let late = check_sinks(&sinks, &events);
    assert!(late.is_empty(), "nothing was late: {late:?}");
}
