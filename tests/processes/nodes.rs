//! A cluster of real `quokka` processes: nodes join and leave under continuous load, on loopback
//! and with each node in its own network namespace (veth pairs on a bridge); a refused join; a
//! node killed with SIGKILL, which the survivors report and survive; links spoofed by an
//! outsider, which change nothing; a member stopped by SIGTERM while its sources are still open.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quokka_engine::cluster::wire::{self, Lane, LinkSecret};
use quokka_io::client::{FrameSender, Records};

use quokka_tests::fixtures::BILL_OF_RIGHTS;
use quokka_tests::harness::{load_text, send_frames, send_until, sent_lines, Sink, DEADLINE};
use quokka_tests::reference::{check_running_totals, reference_counts};

use crate::net::{Loopback, Namespaces, Net};
use crate::{quokka, signal, wait_exit, Service};

const TOKEN: &str = "nodes-test-token";

/// Starts node `name` as process slot `i` of `net`, binding the slot's host with port 0 for its
/// source, data port and (unless it joins) control endpoint; `join` is the coordinator's
/// control address. Returns once the node serves (a joining node has joined).
fn spawn_node(
    net: &dyn Net,
    i: usize,
    name: &str,
    join: Option<SocketAddr>,
    extra: &[&str],
) -> Service {
    let any_port = format!("{}:0", net.host(i));
    let mut cmd = net.command(i);
    cmd.args(["run", "word_count", "--name", name, "--cores", "1"])
        .args([
            "--in",
            &any_port,
            "--data",
            &any_port,
            "--cluster-token",
            TOKEN,
        ])
        .args(extra)
        .env("RUST_LOG", "info");
    match join {
        Some(lead) => cmd.args(["--join", &lead.to_string()]),
        None => cmd.args(["--control", &any_port]),
    };
    Service::start(name, &mut cmd)
}

/// `quokka ctl` with the cluster's token; returns (exit code, stdout, stderr).
fn ctl(control: SocketAddr, args: &[&str]) -> (Option<i32>, String, String) {
    crate::ctl(control, &[&["--cluster-token", TOKEN][..], args].concat())
}

/// Polls `quokka ctl status` at `control` until it shows `needle`; returns that status.
fn wait_status(control: SocketAddr, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (code, status, err) = ctl(control, &["status"]);
        assert_eq!(code, Some(0), "{err}");
        if status.contains(needle) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {needle:?}:\n{status}"
        );
        // Polling interval, not synchronisation.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `remove-node`, retried while the node still counts a source connection its sender already
/// closed (it notices the close a moment later); then the node exits 0.
fn remove_node(control: SocketAddr, node: &mut Service) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (code, out, err) = ctl(control, &["remove-node", &node.name]);
        if code == Some(0) {
            assert!(out.contains(&format!("remove-node {}", node.name)), "{out}");
            break;
        }
        assert!(
            err.contains("open source") && Instant::now() < deadline,
            "remove-node {}: {err}",
            node.name
        );
    }
    node.wait_exit_ok();
}

/// start w1, join w2, join w3, remove w2, join a new w2, remove w3 — each a process — under a
/// load on w1 the whole time and a burst into each joined node; the output equals the reference.
fn join_and_leave_scenario(net: &dyn Net) {
    let sink = Sink::on(
        TcpListener::bind(format!("{}:0", net.sink_host())).unwrap(),
        Records::Lines,
    );
    let out = sink.addr().to_string();
    let mut w1 = spawn_node(net, 0, "w1", None, &["--out", &out]);
    let control = w1.addrs.control();
    assert_eq!(control.ip().to_string(), net.host(0), "{}", w1.name);
    let text = load_text();
    let burst: Vec<&[u8]> = text[..300].iter().map(|l| l.as_bytes()).collect();
    let stop = AtomicBool::new(false);
    let w1_input = w1.addrs.input();

    let expected = std::thread::scope(|s| {
        let load = s.spawn(|| send_until(w1_input, &text, &stop, usize::MAX));
        let mut bursts = 0;
        let mut burst_into = |node: &Service| {
            send_frames(node.addrs.input(), &burst);
            bursts += 1;
        };
        let mut w2 = spawn_node(net, 1, "w2", Some(control), &[]);
        assert_eq!(
            w2.addrs.control, None,
            "a joined node has no control endpoint"
        );
        assert_eq!(w2.addrs.data.ip().to_string(), net.host(1));
        burst_into(&w2);
        let mut w3 = spawn_node(net, 2, "w3", Some(control), &[]);
        burst_into(&w3);
        let (code, status, err) = ctl(control, &["status"]);
        assert_eq!(code, Some(0), "{err}");
        for line in ["node w1 (coordinator)", "node w2", "node w3", "3 cores"] {
            assert!(status.contains(line), "status lacks {line:?}:\n{status}");
        }
        remove_node(control, &mut w2);
        let mut w2 = spawn_node(net, 1, "w2", Some(control), &[]);
        burst_into(&w2);
        remove_node(control, &mut w3);
        let (_, status, _) = ctl(control, &["status"]);
        assert!(
            status.contains("node w2") && !status.contains("node w3"),
            "{status}"
        );
        assert!(!status.contains("LOST"), "{status}");
        stop.store(true, Ordering::Release);
        let sent = load.join().unwrap();
        let bursts = std::iter::repeat_n(&text[..300], bursts).flatten();
        let expected = reference_counts(sent_lines(&text, sent).chain(bursts.map(String::as_str)));
        sink.wait_for(expected.values().sum());
        // SIGTERM on the coordinator stops the whole cluster; every node drains and exits 0.
        // w2 got no signal and was not removed: exiting 0 with its summary, it was stopped by
        // the cluster.
        signal(&w1.child, "-TERM");
        w1.wait_exit_ok();
        w2.wait_exit_ok();
        let summary = w2.rest_of_stdout();
        assert!(summary.contains(" frames in, "), "{summary}");
        expected
    });
    check_running_totals(&sink.lines(), &expected);
    // Asserted, not waited on: no member was ever taken for lost, shutdown included (after it,
    // only the log can tell).
    assert!(!w1.log_text().contains("lost node"), "{}", w1.log_text());
}

#[test]
fn processes_join_and_leave_on_loopback() {
    join_and_leave_scenario(&Loopback);
}

#[test]
fn processes_join_and_leave_across_network_namespaces() {
    let net = Namespaces::create(3).unwrap_or_else(|e| {
        panic!("cannot create network namespaces for this test (it needs root and iproute2): {e}")
    });
    join_and_leave_scenario(&net);
}

/// A join with the wrong token is refused in both logs; then a member killed with SIGKILL: the
/// coordinator reports the lost node and its slots, refuses changes, and still stops cleanly.
#[test]
fn a_killed_node_is_reported_and_the_survivor_stops_cleanly() {
    let sink = Sink::start(Records::Lines);
    let out = sink.addr().to_string();
    let mut w1 = spawn_node(&Loopback, 0, "w1", None, &["--out", &out]);
    let control = w1.addrs.control();

    let refused = Command::new(quokka())
        .args(["run", "word_count", "--name", "w9"])
        .args(["--join", &control.to_string(), "--cluster-token", "guess"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("wrong cluster token"), "{err}");
    // The refusal was logged before it was sent, so it is in w1's log now that w9 has it.
    let log = w1.log_text();
    assert!(
        log.contains("refused a control connection: wrong cluster token"),
        "{log}"
    );

    let mut w2 = spawn_node(&Loopback, 1, "w2", Some(control), &[]);
    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    send_frames(w1.addrs.input(), &frames);
    let expected = reference_counts(lines.iter().copied());
    sink.wait_for(expected.values().sum());

    signal(&w2.child, "-KILL");
    let _ = wait_exit(&mut w2.child);
    let status = wait_status(control, "LOST node w2");
    assert!(
        status.contains("LOST node w2") && status.contains("2048 slots without an owner"),
        "{status}"
    );
    let (code, _, err) = ctl(control, &["grow-cores", "1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("node w2 was lost"), "{err}");

    // Input for the survivor's own slots still flows: each of its words must now reach twice
    // its count, every other word stays. Each sink connection carries one core's words; which
    // one is w1's depends on whose first output came first, so it is the one that grows now.
    let first = sink.lines();
    assert_eq!(first.len(), 2, "one sink connection per core");
    let words_on = |conn: &[String]| -> std::collections::HashSet<String> {
        conn.iter()
            .map(|l| l.rsplit_once(" => ").unwrap().0.to_string())
            .collect()
    };
    let (on_0, on_1) = (words_on(&first[0]), words_on(&first[1]));
    assert!(on_0.is_disjoint(&on_1) && !on_0.is_empty() && !on_1.is_empty());
    let more = |words: &std::collections::HashSet<String>| -> u64 {
        words.iter().map(|w| expected[w.as_str()]).sum()
    };
    let total = expected.values().sum::<u64>();
    send_frames(w1.addrs.input(), &frames);
    sink.wait_for(total + more(&on_0).min(more(&on_1)));
    let ours = if sink.lines()[0].len() > first[0].len() {
        on_0
    } else {
        on_1
    };
    sink.wait_for(total + more(&ours));
    signal(&w1.child, "-TERM");
    w1.wait_exit_uncrashed();
    let mut totals: std::collections::HashMap<&str, Vec<u64>> = Default::default();
    let lines = sink.lines();
    for line in lines.iter().flatten() {
        let (word, n) = line.rsplit_once(" => ").unwrap();
        totals.entry(word).or_default().push(n.parse().unwrap());
    }
    for (word, n) in &expected {
        let mut got = totals.remove(word.as_str()).unwrap_or_default();
        got.sort_unstable();
        let want = if ours.contains(word.as_str()) {
            2 * n
        } else {
            *n
        };
        assert!(
            got.iter().copied().eq(1..=want),
            "word {word:?}: want 1..={want}, got {got:?}"
        );
    }
}

/// The coordinator killed with SIGKILL: the member reports it and, on SIGTERM, stops on its own
/// (it cannot ask a dead coordinator to remove it) instead of hanging. Issue 14 (11): what it
/// routed to the lost coordinator's slots meanwhile was dropped, and its log says how much.
#[test]
fn a_member_whose_coordinator_was_killed_stops_on_its_own_and_logs_what_it_dropped() {
    let sink = Sink::start(Records::Lines);
    let out = sink.addr().to_string();
    let mut w1 = spawn_node(&Loopback, 0, "w1", None, &["--out", &out]);
    // w2 serves a control endpoint too, so the test can ask it what it knows.
    let extra = ["--control", "127.0.0.1:0"];
    let mut w2 = spawn_node(&Loopback, 1, "w2", Some(w1.addrs.control()), &extra);
    send_frames(w2.addrs.input(), &[b"one two", b"two"]);
    sink.wait_for(3);

    signal(&w1.child, "-KILL");
    let _ = wait_exit(&mut w1.child);
    wait_status(w2.addrs.control(), "LOST node w1");
    // Half the words belong to w1's slots: routed there, so dropped.
    let frames: Vec<&[u8]> = BILL_OF_RIGHTS.lines().map(str::as_bytes).collect();
    send_frames(w2.addrs.input(), &frames);
    signal(&w2.child, "-TERM");
    w2.wait_exit_uncrashed();
    let log = w2.log_text();
    assert!(
        log.contains("the coordinator is lost; stopping this node on its own"),
        "{log}"
    );
    let dropped = log.lines().find_map(|l| {
        let (before, _) = l.split_once(" messages for lost node w1 were dropped")?;
        before.rsplit(' ').next()?.parse::<u64>().ok()
    });
    assert!(
        dropped.is_some_and(|n| n > 0),
        "no count of the dropped messages ({dropped:?}):\n{log}"
    );
}

/// Issue 14 (4): a member stopped with SIGSTOP holds a change only until the change timeout:
/// the change is called off, says which cores did not answer, and leaves the cluster as it was.
/// SIGTERM on the coordinator while another change waits on the stopped member ends that
/// change at once (it answers that the engine is stopping) and the coordinator exits on its
/// own, letting go of the member that does not answer.
#[test]
fn a_stopped_member_holds_a_change_only_until_its_timeout_and_sigterm_still_ends_the_coordinator() {
    let sink = Sink::start(Records::Lines);
    let out = sink.addr().to_string();
    let mut w1 = spawn_node(
        &Loopback,
        0,
        "w1",
        None,
        &["--out", &out, "--change-timeout", "10"],
    );
    let control = w1.addrs.control();
    let w2 = spawn_node(&Loopback, 1, "w2", Some(control), &[]);
    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    send_frames(w1.addrs.input(), &frames);
    let expected = reference_counts(lines.iter().copied());
    sink.wait_for(expected.values().sum());

    signal(&w2.child, "-STOP");
    let (code, _, err) = ctl(control, &["grow-cores", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("gave up waiting for cores to prepare the change after 10s")
            && err.contains("no word from cores [1]"),
        "{err}"
    );
    let status = wait_status(control, "no migration in progress");
    assert!(
        status.contains("2 cores") && !status.contains("LOST"),
        "{status}"
    );

    let grow = std::thread::spawn(move || ctl(control, &["grow-cores", "1"]));
    wait_status(control, "migration in progress: grow-cores 1");
    signal(&w1.child, "-TERM");
    let (code, _, err) = grow.join().unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the engine is stopping"), "{err}");
    w1.wait_exit_uncrashed();
    let log = w1.log_text();
    assert!(
        log.contains("lost node w2") && log.contains("did not answer within 2s"),
        "{log}"
    );
}

/// An outsider's hello on `data`: names `node` with the cluster's token and a guessed secret,
/// then closes; returns once the node has closed its end (it decided), having admitted nothing.
fn spoof_link(data: SocketAddr, node: &str, lane: Lane) {
    let mut link = TcpStream::connect(data).unwrap();
    let guess = LinkSecret(*b"guessed secret!!");
    link.write_all(&wire::hello_frame(node, lane, TOKEN, guess))
        .unwrap();
    link.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    let _ = link.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{node}'s hello was answered: {answer:?}");
}

/// Issue 14 (2): an outsider who knows the cluster token (not a link secret) says hello on the
/// coordinator's data port as each member, on a member's as the coordinator and the other
/// member, and as a node that does not exist, and closes each: no node is taken for lost,
/// `grow-cores` and `remove-node` work, SIGTERM on the coordinator stops every member (exit 0)
/// and the output is exact.
#[test]
fn spoofed_links_make_no_node_lost() {
    let sink = Sink::start(Records::Lines);
    let out = sink.addr().to_string();
    let mut w1 = spawn_node(&Loopback, 0, "w1", None, &["--out", &out]);
    let control = w1.addrs.control();
    // w2 serves a control endpoint too, so the test can ask what it knows.
    let extra = ["--control", "127.0.0.1:0"];
    let mut w2 = spawn_node(&Loopback, 1, "w2", Some(control), &extra);
    let mut w3 = spawn_node(&Loopback, 2, "w3", Some(control), &[]);
    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    send_frames(w1.addrs.input(), &frames);
    sink.wait_for(reference_counts(lines.iter().copied()).values().sum());

    for (data, node) in [
        (w1.addrs.data, "w2"),
        (w1.addrs.data, "w3"),
        (w1.addrs.data, "w9"),
        (w2.addrs.data, "w1"),
        (w2.addrs.data, "w3"),
        (w3.addrs.data, "w1"),
    ] {
        for lane in [Lane::Data, Lane::Control] {
            spoof_link(data, node, lane);
        }
    }
    for at in [control, w2.addrs.control()] {
        let (code, status, err) = ctl(at, &["status"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(!status.contains("LOST"), "{status}");
        assert!(status.contains("node w3"), "{status}");
    }
    let (code, out, err) = ctl(control, &["grow-cores", "1"]);
    assert_eq!(code, Some(0), "grow-cores 1: {err}");
    assert!(out.contains("grow-cores 1"), "{out}");
    remove_node(control, &mut w3);

    send_frames(w1.addrs.input(), &frames);
    let doubled: Vec<&str> = lines.iter().chain(&lines).copied().collect();
    let expected = reference_counts(doubled.iter().copied());
    sink.wait_for(expected.values().sum());
    signal(&w1.child, "-TERM");
    w1.wait_exit_ok();
    w2.wait_exit_ok();
    check_running_totals(&sink.lines(), &expected);
    for node in [&w1, &w2] {
        let log = node.log_text();
        assert!(!log.contains("lost node"), "{log}");
        assert!(log.contains("wrong link secret for node"), "{log}");
    }
}

/// Whether `addr` takes a connection and closes it at once (a node leaving the cluster).
fn refuses_sources(addr: SocketAddr) -> bool {
    let mut probe = TcpStream::connect(addr).unwrap();
    // Polling interval, not synchronisation: a node that still reads keeps the probe open.
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    matches!(probe.read(&mut [0; 1]), Ok(0))
}

/// Issue 14 (12): SIGTERM on a member that holds a source connection whose sender never closes
/// it, as a service manager stops a node: the member stops accepting, waits `--leave-grace`,
/// closes the connection itself and leaves the cluster, exiting 0 within the grace plus a
/// margin; a second SIGTERM cuts a long grace short. Every frame sent before the cut is in the
/// output exactly once, and the cluster goes on without them.
#[test]
fn sigterm_on_a_member_with_open_sources_closes_them_after_the_grace_and_leaves() {
    let sink = Sink::start(Records::Lines);
    let out = sink.addr().to_string();
    let mut w1 = spawn_node(&Loopback, 0, "w1", None, &["--out", &out]);
    let control = w1.addrs.control();
    let grace = Duration::from_secs(2);
    let mut w2 = spawn_node(&Loopback, 1, "w2", Some(control), &["--leave-grace", "2s"]);
    let mut w3 = spawn_node(&Loopback, 2, "w3", Some(control), &["--leave-grace", "10m"]);
    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let mut held = Vec::new();
    for node in [&w2, &w3] {
        let mut sender = FrameSender::connect(node.addrs.input(), DEADLINE).unwrap();
        for f in &frames {
            sender.send(f).unwrap();
        }
        sender.flush().unwrap();
        held.push(sender);
    }
    let mut sent: Vec<&str> = lines.iter().chain(&lines).copied().collect();
    sink.wait_for(reference_counts(sent.iter().copied()).values().sum());

    let asked = Instant::now();
    signal(&w2.child, "-TERM");
    w2.wait_exit_ok();
    let took = asked.elapsed();
    assert!(
        took >= grace && took < grace + Duration::from_secs(30),
        "w2 left after {took:?} (grace {grace:?}):\n{}",
        w2.log_text()
    );
    let summary = w2.rest_of_stdout();
    assert!(summary.contains("1 cut by this node"), "{summary}");

    let asked = Instant::now();
    signal(&w3.child, "-TERM");
    let deadline = Instant::now() + DEADLINE;
    while !refuses_sources(w3.addrs.input()) {
        assert!(Instant::now() < deadline, "w3 still accepts sources");
    }
    signal(&w3.child, "-TERM");
    w3.wait_exit_ok();
    assert!(
        asked.elapsed() < Duration::from_secs(60),
        "w3 left after {:?} despite the second SIGTERM",
        asked.elapsed()
    );
    let status = wait_status(control, "1 cores");
    assert!(
        !status.contains("node w2") && !status.contains("node w3"),
        "{status}"
    );
    drop(held);

    send_frames(w1.addrs.input(), &frames);
    sent.extend(&lines);
    let expected = reference_counts(sent.iter().copied());
    sink.wait_for(expected.values().sum());
    signal(&w1.child, "-TERM");
    w1.wait_exit_ok();
    check_running_totals(&sink.lines(), &expected);
}

/// Issue 14 (4), (12): SIGTERM on a member whose coordinator does not answer (stopped with
/// SIGSTOP) still ends the member: it cannot ask to leave, so it stops on its own, as when its
/// coordinator is lost (found by the probe: it ran on).
#[test]
fn sigterm_on_a_member_whose_coordinator_does_not_answer_stops_it_on_its_own() {
    let sink = Sink::start(Records::Lines);
    let out = sink.addr().to_string();
    let w1 = spawn_node(&Loopback, 0, "w1", None, &["--out", &out]);
    let mut w2 = spawn_node(&Loopback, 1, "w2", Some(w1.addrs.control()), &[]);
    signal(&w1.child, "-STOP");
    signal(&w2.child, "-TERM");
    w2.wait_exit_uncrashed();
    let log = w2.log_text();
    assert!(log.contains("stopping this node on its own"), "{log}");
    signal(&w1.child, "-KILL");
}
