//! Nodes joining and leaving a running cluster, in one process (each node an `Engine` with its
//! own cores, control endpoint and data port; links over loopback TCP), and joins that must be
//! refused. The same scenario with real processes is in `tests/processes/nodes.rs`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quokka_apps::{alphabet, word_buckets, word_count};
use quokka_engine::cluster::wire::{self, JoinRequest, Lane, LinkSecret};
use quokka_engine::{
    App, ChangeError, ChangeReport, Config, DecodeError, Emit, Ending, Engine, StartError,
};
use quokka_io::client::{FrameSender, Records};
use quokka_io::control::{Client, Request, Response, Timeouts};

use crate::fixtures::BILL_OF_RIGHTS;
use crate::harness::{
    init_logging, load_text, send_again_stop_and_check, send_frames, send_until, sent_lines,
    Coordinator, Sink, DEADLINE,
};
use crate::reference::{check_running_totals, reference_buckets, reference_counts};

pub(crate) const TOKEN: &str = "quokka-test-token";

pub(crate) fn config(app: &App, sink: SocketAddr, name: &str, with_inputs: bool) -> Config {
    let inputs = if with_inputs {
        app.sources()
            .iter()
            .map(|_| "127.0.0.1:0".parse().unwrap())
            .collect()
    } else {
        Vec::new()
    };
    let mut c = Config::new(inputs, sink);
    c.cores = 1;
    c.name = name.into();
    c.token = TOKEN.into();
    c
}

fn start_lead(app: &App, sink: &Sink) -> Coordinator {
    init_logging();
    let engine = Engine::start(app, config(app, sink.addr(), "w1", true)).expect("w1 starts");
    Coordinator::serve(engine).expect("serve control")
}

pub(crate) fn join(app: &App, lead: &Coordinator, name: &str) -> Arc<Engine> {
    let c = config(app, "127.0.0.1:1".parse().unwrap(), name, true);
    let (engine, report) = Engine::join(app, c, lead.control, Vec::new()).expect("join");
    assert_eq!(report.cores_after, report.cores_before + 1, "{report}");
    assert!(report.slots_moved > 0 && report.steps > 0, "{report}");
    Arc::new(engine)
}

/// Removes a member through the coordinator; retries while the member still counts a source
/// connection that its sender already closed (the node notices the close a moment later).
pub(crate) fn remove(lead: &Coordinator, member: &Engine) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match lead.engine.remove_node(member.node_name()) {
            Ok(_) => break,
            Err(ChangeError::OpenSources { .. }) if Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(e) => panic!("remove-node {}: {e}", member.node_name()),
        }
    }
    let ending = member.ended().recv_deadline(Instant::now() + DEADLINE);
    assert_eq!(ending, Ok(Ending::Departed));
    let summary = member.finish(Ending::Departed);
    assert_eq!(summary.misrouted(), 0);
}

/// start w1, join w2, join w3, remove w2, join a new w2, remove w3, under a load that runs the
/// whole time on w1 plus a burst into each joined node while it is a member.
#[test]
fn nodes_join_and_leave_under_continuous_load() {
    join_and_leave_under_load(word_count::app(), |counts| counts.clone());
}

/// The same with two keyed stages: both stages' slots cross nodes, and stage 1 on one node
/// feeds stage 2 on another.
#[test]
fn word_buckets_across_node_join_and_remove() {
    join_and_leave_under_load(word_buckets::app(), reference_buckets);
}

/// Joins and removes nodes while `app` runs; its whole output must be the running totals of
/// `expected(word counts of what was sent)`.
fn join_and_leave_under_load(
    app: App,
    expected: fn(&HashMap<String, u64>) -> HashMap<String, u64>,
) {
    let sink = Sink::start(Records::Lines);
    let lead = start_lead(&app, &sink);
    let text = load_text();
    let burst: Vec<&[u8]> = text[..300].iter().map(|l| l.as_bytes()).collect();
    let stop = AtomicBool::new(false);
    let input = lead.engine.input_addrs()[0];

    let (sent, bursts) = std::thread::scope(|s| {
        let load = s.spawn(|| send_until(input, &text, &stop, usize::MAX));
        let mut bursts = 0;
        let mut burst_into = |node: &Engine| {
            send_frames(node.input_addrs()[0], &burst);
            bursts += 1;
        };
        let w2 = join(&app, &lead, "w2");
        burst_into(&w2);
        let w3 = join(&app, &lead, "w3");
        burst_into(&w3);
        let status = lead.engine.status();
        assert_eq!(status.nodes.len(), 3, "{status}");
        assert_eq!(status.cores.iter().map(|c| c.slots).sum::<usize>(), 4096);
        assert!(status.cores.iter().all(|c| c.slots > 1000), "{status}");
        remove(&lead, &w2);
        let w2 = join(&app, &lead, "w2");
        burst_into(&w2);
        remove(&lead, &w3);
        let status = lead.engine.status();
        assert_eq!(
            status
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            ["w1", "w2"],
            "{status}"
        );
        stop.store(true, Ordering::Release);
        let sent = load.join().unwrap();
        // Stopping the coordinator stops the cluster: the member drains and ends too.
        let summary = lead.engine.stop();
        assert_eq!(summary.misrouted(), 0);
        assert_eq!(
            w2.ended().recv_deadline(Instant::now() + DEADLINE),
            Ok(Ending::ClusterStopped)
        );
        assert_eq!(w2.finish(Ending::ClusterStopped).misrouted(), 0);
        (sent, bursts)
    });

    let bursts = std::iter::repeat_n(&text[..300], bursts).flatten();
    let counts = reference_counts(sent_lines(&text, sent).chain(bursts.map(String::as_str)));
    let expected = expected(&counts);
    sink.wait_for(expected.values().sum());
    check_running_totals(&sink.lines(), &expected);
}

/// Word count with each count kept as text: a state whose archived form is not its native form,
/// so a slot that arrives from another node is converted entity by entity on first use.
fn word_count_as_text() -> App {
    let decode = |frame: &[u8]| {
        std::str::from_utf8(frame)
            .map(str::to_owned)
            .map_err(|_| DecodeError::new("not UTF-8"))
    };
    App::source("text", decode)
        .flat_map(|line: String, out: &mut Emit<String>| {
            word_count::words(&line, |w| out.emit(w.to_owned()))
        })
        .key_by(|word: &String| word.as_bytes())
        .stateful(|total: &mut String, word: String, out| {
            let n = total.parse::<u64>().unwrap_or(0) + 1;
            *total = n.to_string();
            out.emit((word, n));
        })
        .sink("counts", |(word, n): &(String, u64), out: &mut Vec<u8>| {
            word_count::encode(word, *n, out)
        })
        .named("word_count_as_text")
}

/// Issue 15: slots whose states are converted on use (not used in place) cross to a joining
/// node with state in them, are used there, and come back when it leaves: the running totals
/// are exact throughout.
#[test]
fn states_converted_on_use_cross_nodes_and_come_back_exactly() {
    let app = word_count_as_text();
    let sink = Sink::start(Records::Lines);
    let lead = start_lead(&app, &sink);
    let input = lead.engine.input_addrs()[0];
    let text = load_text();
    let thirds: Vec<Vec<&[u8]>> = (text.chunks(text.len().div_ceil(3)))
        .map(|part| part.iter().map(|l| l.as_bytes()).collect())
        .collect();
    let counted = |parts: usize| {
        let lines = thirds[..parts].iter().flatten();
        reference_counts(lines.map(|l| std::str::from_utf8(l).unwrap()))
    };
    send_frames(input, &thirds[0]);
    sink.wait_for(counted(1).values().sum());
    let w2 = join(&app, &lead, "w2");
    send_frames(input, &thirds[1]);
    sink.wait_for(counted(2).values().sum());
    remove(&lead, &w2);
    send_frames(input, &thirds[2]);
    let expected = counted(3);
    sink.wait_for(expected.values().sum());
    assert_eq!(lead.engine.stop().misrouted(), 0);
    check_running_totals(&sink.lines(), &expected);
}

/// What a refused join looks like to the joining node.
fn refused(result: Result<(Engine, ChangeReport), StartError>) -> String {
    match result {
        Ok(_) => panic!("the join was accepted"),
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    }
}

/// One control exchange with a payload as it is.
fn exchange(control: SocketAddr, payload: &[u8]) -> Response {
    let mut client = Client::connect(control, Timeouts::default()).unwrap();
    client.request_payload(payload).unwrap()
}

fn error_of(r: Response) -> String {
    match r {
        Response::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Another app, another slot count, a wrong token, an old protocol version, garbage on the
/// control and data ports: each refused with a clear error; the cluster loses nothing.
#[test]
fn bad_joins_and_garbage_are_refused_and_change_nothing() {
    let app = word_count::app();
    let sink = Sink::start(Records::Lines);
    let lead = start_lead(&app, &sink);
    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    send_frames(lead.engine.input_addrs()[0], &frames);

    let other = alphabet::app();
    let e = refused(Engine::join(
        &other,
        config(&other, sink.addr(), "w2", false),
        lead.control,
        Vec::new(),
    ));
    assert!(
        e.contains("runs app `word_count`") && e.contains("`alphabet`"),
        "{e}"
    );

    let mut c = config(&app, sink.addr(), "w2", false);
    c.n_slots = 1024;
    let e = refused(Engine::join(&app, c, lead.control, Vec::new()));
    assert!(e.contains("4096 slots") && e.contains("1024"), "{e}");

    let mut c = config(&app, sink.addr(), "w2", false);
    c.token = "guess".into();
    let e = refused(Engine::join(&app, c, lead.control, Vec::new()));
    assert!(e.contains("wrong cluster token"), "{e}");

    let e = refused(Engine::join(
        &app,
        config(&app, sink.addr(), "w1", false),
        lead.control,
        Vec::new(),
    ));
    assert!(e.contains("already a member"), "{e}");

    // An old node protocol inside a current control frame, and an old control protocol.
    let old = JoinRequest {
        version: 0,
        node: "w9".into(),
        app: "word_count".into(),
        n_slots: 4096,
        cores: 1,
        data_addr: "127.0.0.1:1".into(),
        state_dir: false,
        state_path: String::new(),
        http: String::new(),
    };
    let payload = Request::Join(wire::encode_join(&old))
        .encode(TOKEN)
        .unwrap();
    let e = error_of(exchange(lead.control, &payload));
    assert!(
        e.contains("node protocol version 0 is not supported"),
        "{e}"
    );
    let e = error_of(exchange(lead.control, b"QK\x01\x01"));
    assert!(e.contains("version 1 is not supported"), "{e}");
    // Garbage where a join request should be, and on the control port.
    let payload = Request::Join(b"garbage".to_vec()).encode(TOKEN).unwrap();
    let e = error_of(exchange(lead.control, &payload));
    assert!(e.contains("bad join request"), "{e}");
    let e = error_of(exchange(lead.control, b"GET / HTTP/1.1\r\n"));
    assert!(e.contains("bad control message"), "{e}");
    // A control request without the token.
    let e = error_of(exchange(lead.control, &Request::Status.encode("").unwrap()));
    assert!(e.contains("wrong cluster token"), "{e}");

    // Garbage and a wrong-token hello on the data port: the node closes those connections.
    let data = lead.engine.data_addr();
    let wrong_token = wire::hello_frame("w7", Lane::Control, "guess", LinkSecret([0; 16]));
    for bytes in [
        b"\x00\x00\x00\x07garbage".to_vec(),
        wrong_token,
        b"\xff\xff\xff\xff".to_vec(),
    ] {
        let mut stream = TcpStream::connect(data).unwrap();
        std::io::Write::write_all(&mut stream, &bytes).unwrap();
        let mut rest = Vec::new();
        let read = std::io::Read::read_to_end(&mut stream, &mut rest);
        assert!(
            matches!(read, Ok(0)) || read.is_err(),
            "the data port closed the connection"
        );
    }

    // Still one node, every slot where it was, and the output exact after more input.
    let status = lead.engine.status();
    assert_eq!(status.nodes.len(), 1, "{status}");
    assert_eq!(status.cores.len(), 1, "{status}");
    assert_eq!(status.cores[0].slots, 4096);
    assert!(status.lost.is_empty());
    send_again_stop_and_check(&lead.engine, &sink, &lines);
}

/// A member with an open source connection refuses to leave (its connection cannot move to
/// another process), says why, and keeps working; once the connection closes it may leave.
#[test]
fn a_node_with_open_sources_refuses_to_leave() {
    let app = word_count::app();
    let sink = Sink::start(Records::Lines);
    let lead = start_lead(&app, &sink);
    let w2 = join(&app, &lead, "w2");
    let mut open = FrameSender::connect(w2.input_addrs()[0], DEADLINE).unwrap();
    open.send(b"still here").unwrap();
    open.flush().unwrap();
    sink.wait_for(2);
    let e = lead.engine.remove_node("w2").unwrap_err();
    assert!(
        matches!(&e, ChangeError::OpenSources { node, open: 1 } if node == "w2"),
        "{e}"
    );
    open.send(b"here").unwrap();
    open.finish().unwrap();
    sink.wait_for(3);
    remove(&lead, &w2);
    send_frames(lead.engine.input_addrs()[0], &[b"here"]);
    sink.wait_for(4);
    lead.engine.stop();
    let expected = reference_counts(["still here", "here", "here"]);
    check_running_totals(&sink.lines(), &expected);
}

/// A hello on `data` naming `node` with `secret`: whether the node admitted it.
fn admitted(data: SocketAddr, node: &str, lane: Lane, secret: LinkSecret) -> bool {
    let mut link = TcpStream::connect(data).unwrap();
    link.write_all(&wire::hello_frame(node, lane, TOKEN, secret))
        .unwrap();
    let mut answer = [0u8; 1];
    matches!(link.read(&mut answer), Ok(1))
}

/// Issue 14 (2): a node that was welcomed (and so holds a link secret for each member) but
/// never joined is forgotten by every node: once its join failed, its secrets open no link.
/// Each secret is its pair's: the one for the coordinator opens no link to the member.
#[test]
fn a_failed_join_leaves_no_link_secret_behind() {
    let app = word_count::app();
    let sink = Sink::start(Records::Lines);
    let lead = start_lead(&app, &sink);
    let w2 = join(&app, &lead, "w2");
    let join = JoinRequest {
        version: wire::VERSION,
        node: "w5".into(),
        app: "word_count".into(),
        n_slots: 4096,
        cores: 1,
        data_addr: "127.0.0.1:1".into(),
        state_dir: false,
        state_path: String::new(),
        http: String::new(),
    };
    let mut joiner = Client::connect(lead.control, Timeouts::default()).unwrap();
    let welcome = match joiner.request(TOKEN, &Request::Join(wire::encode_join(&join))) {
        Ok(Response::Welcome(body)) => wire::decode_welcome(&body).unwrap(),
        other => panic!("expected a welcome, got {other:?}"),
    };
    let names: Vec<&str> = welcome.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["w1", "w2"]);
    let (to_w1, to_w2) = (welcome.members[0].secret, welcome.members[1].secret);
    let (w1_data, w2_data) = (lead.engine.data_addr(), w2.data_addr());
    assert!(!admitted(w2_data, "w5", Lane::Data, to_w1), "a pair's own");
    assert!(admitted(w1_data, "w5", Lane::Data, to_w1), "w5 is expected");
    assert!(admitted(w2_data, "w5", Lane::Data, to_w2), "w5 is expected");
    // The joiner goes away before it is ready: the join fails. The lock is free once the
    // coordinator has dealt with it, and once a grow has moved slots w2 has read the news
    // (it comes before the grow's steps on the same link).
    drop(joiner);
    let deadline = Instant::now() + DEADLINE;
    loop {
        match lead.engine.grow(1) {
            Ok(_) => break,
            Err(ChangeError::Busy { .. }) if Instant::now() < deadline => std::thread::yield_now(),
            Err(e) => panic!("grow-cores 1: {e}"),
        }
    }
    assert!(!admitted(w1_data, "w5", Lane::Control, to_w1));
    assert!(!admitted(w2_data, "w5", Lane::Control, to_w2));
    let status = lead.engine.status();
    assert!(status.lost.is_empty(), "{status}");
    assert_eq!(status.nodes.len(), 2, "{status}");
    assert_eq!(lead.engine.stop().misrouted(), 0);
    assert_eq!(
        w2.ended().recv_deadline(Instant::now() + DEADLINE),
        Ok(Ending::ClusterStopped)
    );
    assert_eq!(w2.finish(Ending::ClusterStopped).misrouted(), 0);
}

/// A join as a broken or hostile node makes it, over the control port: asks for `cores` cores
/// as node `node`, and hangs up as soon as it has the answer (a welcome, or an error). Retried
/// while an earlier such join still holds the change lock (its hang-up is seen a moment later).
fn join_and_hang_up(control: SocketAddr, node: &str, cores: u16) -> Response {
    let request = JoinRequest {
        version: wire::VERSION,
        node: node.into(),
        app: "word_count".into(),
        n_slots: Config::DEFAULT_SLOTS,
        cores,
        data_addr: "127.0.0.1:1".into(),
        state_dir: false,
        state_path: String::new(),
        http: String::new(),
    };
    let payload = Request::Join(wire::encode_join(&request));
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut client = Client::connect(control, Timeouts::default()).unwrap();
        match client.request(TOKEN, &payload).unwrap() {
            Response::Error(e)
                if e.contains("already in progress") && Instant::now() < deadline =>
            {
                std::thread::yield_now()
            }
            answer => return answer,
        }
    }
}

/// The core ids a welcome gives the joining node.
fn welcomed_ids(answer: Response) -> Vec<u16> {
    match answer {
        Response::Welcome(body) => wire::decode_welcome(&body).expect("a welcome").cores,
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// Grows by `n` once no other change holds the lock.
fn grow_when_free(engine: &Engine, n: usize) -> ChangeReport {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match engine.grow(n) {
            Err(ChangeError::Busy { .. }) if Instant::now() < deadline => std::thread::yield_now(),
            result => return result.unwrap_or_else(|e| panic!("grow-cores {n}: {e}")),
        }
    }
}

/// Sets its flag when dropped, a panic's unwinding included.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Issue 14 (1): joins that are welcomed and then hang up give their core ids back, a join
/// may not ask for more cores than a node runs, and a grow after them gets the lowest free ids
/// (no collision with a live core, no wrap) while the output stays exact under load.
#[test]
fn core_ids_of_a_join_that_hangs_up_are_given_back_and_a_grow_after_it_stays_exact() {
    let app = word_count::app();
    let sink = Sink::start(Records::Lines);
    let lead = start_lead(&app, &sink);
    let text = load_text();
    let stop = AtomicBool::new(false);
    let input = lead.engine.input_addrs()[0];
    let max = u16::try_from(Config::MAX_CORES).unwrap();
    // State to move: every word of the Bill of Rights counted once.
    let bill: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let frames: Vec<&[u8]> = bill.iter().map(|l| l.as_bytes()).collect();
    send_frames(input, &frames);
    sink.wait_for(reference_counts(bill.iter().copied()).values().sum());

    let sent = std::thread::scope(|s| {
        let load = s.spawn(|| send_until(input, &text, &stop, usize::MAX));
        // A failed assertion below must end the load, or the scope would wait for it forever.
        let _stop_on_panic = StopOnDrop(&stop);
        let ids = welcomed_ids(join_and_hang_up(lead.control, "greedy", max));
        assert_eq!(ids, (1..=max).collect::<Vec<_>>());
        let e = error_of(join_and_hang_up(lead.control, "greedier", 65531));
        assert!(
            e.contains("asks for 65531 cores") && e.contains(&format!("1 to {max}")),
            "{e}"
        );
        let ids = welcomed_ids(join_and_hang_up(lead.control, "again", 2));
        assert_eq!(
            ids,
            [1, 2],
            "the ids of the joins that hung up are free again"
        );

        let report = grow_when_free(&lead.engine, 3);
        assert_eq!(
            (report.cores_before, report.cores_after),
            (1, 4),
            "{report}"
        );
        assert!(report.entities_moved > 0, "{report}");
        let status = lead.engine.status();
        let cores: Vec<u16> = status.cores.iter().map(|c| c.core).collect();
        assert_eq!(cores, [0, 1, 2, 3], "{status}");
        assert_eq!(status.nodes.len(), 1, "{status}");
        assert_eq!(status.retired, 0, "{status}");
        assert!(
            status.lost.is_empty() && status.migration.is_none(),
            "{status}"
        );
        assert_eq!(status.cores.iter().map(|c| c.slots).sum::<usize>(), 4096);
        assert!(status.cores.iter().all(|c| c.slots == 1024), "{status}");
        stop.store(true, Ordering::Release);
        load.join().unwrap()
    });

    let expected = reference_counts(bill.iter().copied().chain(sent_lines(&text, sent)));
    sink.wait_for(expected.values().sum());
    let summary = lead.engine.stop();
    assert_eq!(summary.misrouted(), 0);
    check_running_totals(&sink.lines(), &expected);
}

/// Issue 14 (11): a change refused while a join waits for its node's Ready names that join
/// (it said `(starting)`); once the joining node hangs up, changes go through again.
#[test]
fn a_change_refused_while_a_join_runs_names_the_join() {
    let app = word_count::app();
    let sink = Sink::start(Records::Lines);
    let lead = start_lead(&app, &sink);
    let mut joiner = Client::connect(lead.control, Timeouts::default()).unwrap();
    let request = JoinRequest {
        version: wire::VERSION,
        node: "slowpoke".into(),
        app: "word_count".into(),
        n_slots: Config::DEFAULT_SLOTS,
        cores: 1,
        data_addr: "127.0.0.1:1".into(),
        state_dir: false,
        state_path: String::new(),
        http: String::new(),
    };
    let welcome = joiner
        .request(TOKEN, &Request::Join(wire::encode_join(&request)))
        .unwrap();
    assert_eq!(welcomed_ids(welcome), [1]);

    let e = lead.engine.grow(1).unwrap_err();
    assert!(
        matches!(&e, ChangeError::Busy { doing } if doing.contains("join of node slowpoke")),
        "{e}"
    );
    assert!(!e.to_string().contains("starting"), "{e}");
    drop(joiner);
    let report = grow_when_free(&lead.engine, 1);
    assert_eq!(report.cores_after, 2, "{report}");
    let status = lead.engine.status();
    let cores: Vec<u16> = status.cores.iter().map(|c| c.core).collect();
    assert_eq!(cores, [0, 1], "{status}");
    assert_eq!(lead.engine.stop().misrouted(), 0);
}
