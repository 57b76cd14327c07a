//! The real `quokka` binary: its CLI, and a service run stopped by SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use quokka_engine::cluster::wire::{self, JoinRequest};
use quokka_engine::Config;
use quokka_io::client::Records;
use quokka_io::control::{
    self, Client, Greeting, Limits, Request, Response, Timeouts, MAX_CONTROL_FRAME, READY_DEADLINE,
};
use quokka_io::framing;
use quokka_tests::fixtures::{self, BILL_OF_RIGHTS};
use quokka_tests::harness::{send_frames, Sink, DEADLINE};
use quokka_tests::reference::{check_running_totals, reference_counts};

use crate::{ctl, quokka, quokka_output, signal, tool, wait_exit, Listening, Proc, Service};

#[test]
fn apps_lists_word_count() {
    let out = quokka_output(&["apps"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for app in ["word_count ", "alphabet ", "market_spread "] {
        assert!(text.lines().any(|l| l.starts_with(app)), "{text}");
    }
}

#[test]
fn help_describes_run() {
    let out = quokka_output(&["run", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in ["--in", "--out", "--cores", "--slots", "--max-frame"] {
        assert!(text.contains(flag), "run --help lacks {flag}");
    }
    assert!(
        text.contains("listening control="),
        "run --help shows the line with the bound addresses"
    );
}

#[test]
fn unknown_app_and_bad_addresses_are_clear_errors() {
    let out = quokka_output(&["run", "nope", "--in", "127.0.0.1:1", "--out", "127.0.0.1:2"]);
    let err = failure(&out);
    assert!(
        err.contains("no app named `nope`") && err.contains("word_count"),
        "{err}"
    );

    let out = quokka_output(&[
        "run",
        "word_count",
        "--in",
        "nowhere",
        "--out",
        "127.0.0.1:2",
    ]);
    assert!(failure(&out).contains("not a HOST:PORT"));

    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let args = ["run", "word_count", "--in", &taken, "--out", "127.0.0.1:2"];
    let out = quokka_output(&[&args[..], &["--control", "127.0.0.1:0"]].concat());
    let err = failure(&out);
    // The error line (a log line before it may say a default port was taken too).
    let error = err.lines().find(|l| l.starts_with("error:")).unwrap_or("");
    assert!(
        error.contains(&format!("cannot listen on {taken}")),
        "{err}"
    );
    assert_eq!(error.matches("in use").count(), 1, "the reason once: {err}");
}

/// Checks that a tool exited 0, showing its stderr if not.
pub(crate) fn succeeded(out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", out.status);
}

/// The stderr of a tool that must have exited 1.
pub(crate) fn failure(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

/// Sends `lines` (sent once before) again to the service's source, stops it with SIGTERM, and
/// checks that the sink holds exactly the running totals of both rounds.
pub(crate) fn send_again_stop_and_check(engine: &mut Service, sink: &Sink, lines: &[&str]) {
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    send_frames(engine.addrs.input(), &frames);
    let doubled: Vec<&str> = lines.iter().chain(lines).copied().collect();
    let expected = reference_counts(doubled.iter().copied());
    sink.wait_for(expected.values().sum());
    signal(&engine.child, "-TERM");
    engine.wait_exit_ok();
    check_running_totals(&sink.lines(), &expected);
}

/// window_counts as a user runs it from the README: two sinks by name; the watermark closes
/// windows while it runs, a line older than it goes to the late sink, and the stop closes the
/// rest.
#[test]
fn window_counts_writes_windows_and_late_lines_to_their_own_sinks() {
    let counts = Sink::start(Records::Lines);
    let late = Sink::start(Records::Lines);
    let (counts_at, late_at) = (
        format!("counts@{}", counts.addr()),
        format!("late@{}", late.addr()),
    );
    // A bare address is refused for an app with two sinks, naming them.
    let bare = counts.addr().to_string();
    let out = quokka_output(&[
        "run",
        "window_counts",
        "--in",
        "127.0.0.1:0",
        "--out",
        &bare,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("this app has several sinks (late, counts)"),
        "{stderr}"
    );
    let mut engine = Service::start(
        "window_counts",
        Command::new(quokka())
            .args([
                "run",
                "window_counts",
                "--in",
                "127.0.0.1:0",
                "--control",
                "127.0.0.1:0",
            ])
            .args(["--out", &counts_at, "--out", &late_at, "--cores", "2"]),
    );
    send_frames(
        engine.addrs.input(),
        &[b"1000 apple", b"1500 pear", b"1200 apple", b"2300 apple"],
    );
    // The watermark (2300 - 200) passed 2000: both windows of [1000, 2000) are out.
    counts.wait_for(2);
    send_frames(engine.addrs.input(), &[b"900 pear"]);
    late.wait_for(1);
    signal(&engine.child, "-INT");
    engine.wait_exit_ok();
    counts.wait_for(3);
    let mut windows = counts.lines().concat();
    windows.sort();
    assert_eq!(
        windows,
        [
            "apple [1000, 2000) => 2",
            "apple [2000, 3000) => 1",
            "pear [1000, 2000) => 1"
        ]
    );
    assert_eq!(late.lines().concat(), ["900 pear"]);
}

/// Starts `quokka run APP` with its source and control endpoint on ports it chooses, writing
/// to `out`, with `extra` flags; returns once it reported its addresses.
pub(crate) fn spawn_app(app: &str, out: SocketAddr, extra: &[&str]) -> Service {
    Service::start(
        app,
        Command::new(quokka())
            .args(["run", app, "--out", &out.to_string()])
            .args(["--in", "127.0.0.1:0", "--control", "127.0.0.1:0"])
            .args(extra),
    )
}

#[test]
fn run_serves_until_sigterm_then_drains_and_summarises() {
    let sink = Sink::start(Records::Lines);
    let mut engine = spawn_app("word_count", sink.addr(), &["--cores", "2"]);
    assert_eq!(engine.addrs.inputs[0].0, "text", "sources are named");

    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    send_frames(engine.addrs.input(), &frames);
    let expected = reference_counts(lines.iter().copied());
    let total: u64 = expected.values().sum();
    sink.wait_for(total);

    signal(&engine.child, "-TERM");
    engine.wait_exit_ok();
    let stdout = engine.rest_of_stdout();
    assert!(
        stdout.contains(&format!("{} frames in, {total} outputs out", lines.len())),
        "{stdout}"
    );
    assert!(stdout.contains("source-to-sink latency: p50"), "{stdout}");
    check_running_totals(&sink.lines(), &expected);
}

/// `quokka ctl` drives a running `quokka run`: grow, status, shrink, a refused change, and a
/// garbled control connection that changes nothing.
#[test]
fn ctl_grows_shrinks_and_reports_a_running_engine() {
    let sink = Sink::start(Records::Lines);
    let mut engine = spawn_app("word_count", sink.addr(), &["--cores", "1"]);
    let (input, control) = (engine.addrs.input(), engine.addrs.control());
    let ctl = |args: &[&str]| ctl(control, args);

    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    send_frames(input, &frames);

    let (code, out, err) = ctl(&["grow-cores", "1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("1 -> 2 cores"), "{out}");
    let (code, out, _) = ctl(&["status"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("routing epoch")
            && out.contains("2 cores")
            && out.contains("no migration in progress"),
        "{out}"
    );

    // Garbage on the control port: refused, and the engine carries on.
    let mut garbage = Client::connect(control, Timeouts::default()).unwrap();
    let reply = garbage.request_payload(b"hello").unwrap();
    assert!(
        matches!(&reply, Response::Error(e) if e.contains("bad magic")),
        "{reply:?}"
    );

    let (code, _, err) = ctl(&["shrink-cores", "2"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("at least one must remain"), "{err}");
    // Issue 14 (11): a shrink by nothing says so, not "cannot shrink 1 cores by 0".
    let (code, _, err) = ctl(&["shrink-cores", "0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("shrink-cores needs at least 1"), "{err}");
    let (code, out, err) = ctl(&["shrink-cores", "1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("2 -> 1 cores"), "{out}");

    send_again_stop_and_check(&mut engine, &sink, &lines);

    let (code, _, err) = ctl(&["status"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot reach"),
        "no engine is listening any more: {err}"
    );
}

/// The tools a user drives by hand: `quokka-send --lines` into `quokka run`, `quokka-recv
/// --expect --out` collecting the outputs into a file, each exiting 0 with a summary.
#[test]
fn send_and_recv_tools_carry_a_file_through_the_engine() {
    let dir = std::env::temp_dir().join(format!("quokka-tools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, BILL_OF_RIGHTS).unwrap();
    let out_file = dir.join("counts.txt");
    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let doubled: Vec<&str> = lines.iter().chain(&lines).copied().collect();
    let expected = reference_counts(doubled.iter().copied());
    let total: u64 = expected.values().sum();

    let mut recv = Proc::spawn(
        Command::new(tool("quokka-recv"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--out",
                out_file.to_str().unwrap(),
            ])
            .args(["--expect", &total.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let (output, _recv_err) = recv_listening(&mut recv);
    let mut engine = spawn_app("word_count", output, &["--cores", "2"]);
    let input = engine.addrs.input().to_string();
    let send = Command::new(tool("quokka-send"))
        .args([
            "--to",
            &input,
            "--file",
            corpus.to_str().unwrap(),
            "--lines",
            "--repeat",
            "2",
        ])
        .output()
        .unwrap();
    succeeded(&send);
    let sent = String::from_utf8(send.stdout).unwrap();
    assert!(
        sent.contains(&format!("sent {} frames", 2 * lines.len())),
        "{sent}"
    );

    let received = recv.into_child().wait_with_output().unwrap();
    assert!(
        received.status.success(),
        "quokka-recv exits 0 once --expect records arrived"
    );
    let summary = String::from_utf8(received.stdout).unwrap();
    assert!(
        summary.contains(&format!("received {total} records")),
        "{summary}"
    );
    let written = std::fs::read_to_string(&out_file).unwrap();
    let written: Vec<String> = written.lines().map(str::to_owned).collect();
    // One file holds both sink connections interleaved: check counts, not cross-connection order.
    let mut by_word: std::collections::HashMap<&str, Vec<u64>> = std::collections::HashMap::new();
    for line in &written {
        let (w, c) = line.rsplit_once(" => ").unwrap();
        by_word.entry(w).or_default().push(c.parse().unwrap());
    }
    for (word, n) in &expected {
        let mut counts = by_word.remove(word.as_str()).unwrap_or_default();
        counts.sort_unstable();
        assert_eq!(counts, (1..=*n).collect::<Vec<_>>(), "{word}");
    }
    assert!(by_word.is_empty());

    signal(&engine.child, "-INT");
    engine.wait_exit_ok();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tools_reject_bad_input_clearly() {
    let out = Command::new(tool("quokka-send"))
        .args(["--to", "127.0.0.1:1", "--file", "/nonexistent", "--lines"])
        .output()
        .unwrap();
    assert!(failure(&out).contains("reading /nonexistent"));

    let dir = std::env::temp_dir().join(format!("quokka-framed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.msg");
    std::fs::write(&bad, [0, 0, 0, 9, 1, 2]).unwrap();
    let out = Command::new(tool("quokka-send"))
        .args([
            "--to",
            "127.0.0.1:1",
            "--file",
            bad.to_str().unwrap(),
            "--framed",
        ])
        .output()
        .unwrap();
    let err = failure(&out);
    assert!(err.contains("not whole frames"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);

    let out = Command::new(tool("quokka-recv"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--expect",
            "1",
            "--idle-timeout",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        failure(&out).contains("expected 1 records, got 0"),
        "nothing arrived before the idle timeout"
    );
}

/// Alphabet through the real binaries, as the README shows: `quokka-send --framed` sends
/// Wallaroo's votes.msg as it is; every letter's totals arrive in order.
#[test]
fn alphabet_votes_sent_framed_by_the_tool() {
    let sink = Sink::start(Records::Lines);
    let mut engine = spawn_app("alphabet", sink.addr(), &[]);
    let input = engine.addrs.input().to_string();
    let votes = fixtures::path("votes.msg");
    let send = Command::new(tool("quokka-send"))
        .args([
            "--to",
            &input,
            "--file",
            votes.to_str().unwrap(),
            "--framed",
        ])
        .output()
        .unwrap();
    succeeded(&send);
    sink.wait_for(10_000);

    let bytes = fixtures::VOTES;
    let mut totals = std::collections::HashMap::new();
    let mut expected: std::collections::HashMap<char, Vec<u64>> = std::collections::HashMap::new();
    for frame in bytes.chunks(9) {
        let t = totals.entry(frame[4] as char).or_insert(0u64);
        *t += u64::from(u32::from_be_bytes(frame[5..9].try_into().unwrap()));
        expected.entry(frame[4] as char).or_default().push(*t);
    }
    let mut got: std::collections::HashMap<char, Vec<u64>> = std::collections::HashMap::new();
    for line in sink.lines().iter().flatten() {
        let (l, t) = line.split_once(" => ").unwrap();
        got.entry(l.chars().next().unwrap())
            .or_default()
            .push(t.parse().unwrap());
    }
    assert_eq!(got, expected);
    signal(&engine.child, "-TERM");
    engine.wait_exit_ok();
}

/// Issue 14 (8): `quokka ctl` pointed at a port that is not a control endpoint (here a listener
/// that accepts and never speaks, as a source or a sink port does) gives up once the greeting
/// is overdue, says so, and has sent nothing: neither its request nor the cluster token.
#[test]
fn ctl_sends_nothing_to_a_port_that_does_not_greet_and_gives_up() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        got
    });
    let started = Instant::now();
    let mut ctl = Proc::spawn(
        Command::new(quokka())
            .args(["ctl", "--control", &addr.to_string()])
            .args(["--cluster-token", "s3cret", "status"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let status = wait_exit(&mut ctl);
    let took = started.elapsed();
    let mut err = String::new();
    ctl.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{addr} is not a Quokka control endpoint (no greeting within 5s)"
        )),
        "{err}"
    );
    assert!(
        took >= Timeouts::GREETING && took < Timeouts::GREETING + Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(
        peer.join().unwrap(),
        b"",
        "ctl sent nothing, so not the token"
    );
}

/// Starts `quokka run word_count` with its source and control endpoint on port 0; reads the
/// control address back from the line it prints, then drains its stdout.
fn spawn_engine_on_port_0(sink: &Sink) -> (Proc, SocketAddr) {
    let mut engine = Proc::spawn(
        Command::new(quokka())
            .args(["run", "word_count", "--in", "127.0.0.1:0"])
            .args(["--out", &sink.addr().to_string(), "--cores", "1"])
            .args(["--control", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut out = BufReader::new(engine.stdout.take().unwrap());
    let mut line = String::new();
    let n = out.read_line(&mut line).unwrap();
    assert!(n > 0, "the engine exited before it reported its addresses");
    let control = Listening::parse(line.trim_end()).control();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (engine, control)
}

/// The `Threads:` of a process.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Runs `quokka ctl --control ADDR ARGS`.
fn ctl_at(control: SocketAddr, args: &[&str]) -> Output {
    quokka_output(&[&["ctl", "--control", &control.to_string()][..], args].concat())
}

/// Issue 14 (6): idle connections to the control port hold at most the connection limit's
/// threads; beyond it a connection gets a refusal at once. While idle connections fill the
/// limit, `quokka ctl status` is refused with that clear message; once they hang up (or reach
/// their 10 s request deadline) it answers again, and their threads are gone.
#[test]
fn idle_control_connections_beyond_the_limit_are_refused_and_threads_stay_bounded() {
    let sink = Sink::start(Records::Lines);
    let (mut engine, control) = spawn_engine_on_port_0(&sink);
    succeeded(&ctl_at(control, &["status"]));
    let baseline = threads(engine.id());

    let opened = Instant::now();
    let many = Limits::CONNECTIONS + 36;
    let (mut idle, mut greeted, mut refused) = (Vec::new(), 0, 0);
    for _ in 0..many {
        let mut stream = TcpStream::connect(control).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let first = framing::read_frame(&mut stream, MAX_CONTROL_FRAME)
            .unwrap()
            .expect("the endpoint speaks first");
        match Greeting::decode(&first).unwrap() {
            Greeting::Ready => greeted += 1,
            Greeting::Refused(reason) => {
                assert!(reason.contains("too many control connections"), "{reason}");
                refused += 1;
            }
        }
        idle.push(stream);
    }
    assert!(greeted <= Limits::CONNECTIONS, "{greeted} served at once");
    assert_eq!(greeted + refused, many);
    let during = threads(engine.id());
    assert!(
        during <= baseline + Limits::CONNECTIONS + 4,
        "{during} threads with {many} idle connections, {baseline} before"
    );

    let out = ctl_at(control, &["status"]);
    if greeted == Limits::CONNECTIONS && opened.elapsed() < Limits::REQUEST {
        let err = failure(&out);
        assert!(
            err.contains(&format!(
                "{control} refused the connection: too many control connections"
            )),
            "{err}"
        );
    }

    drop(idle);
    let deadline = Instant::now() + DEADLINE;
    while !ctl_at(control, &["status"]).status.success() {
        assert!(Instant::now() < deadline, "status never answered again");
        std::thread::sleep(Duration::from_millis(50));
    }
    while threads(engine.id()) > baseline + 2 {
        assert!(
            Instant::now() < deadline,
            "{} threads after the idle connections closed, {baseline} before",
            threads(engine.id())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&engine, "-TERM");
    assert!(wait_exit(&mut engine).success());
}

/// Issue 14 (6): a joining node that is welcomed, then sends one byte of its `Ready` and no
/// more, holds the coordinator's change lock for at most the Ready deadline; then its join is
/// refused, saying why, and changes are possible again.
#[test]
fn a_joiner_that_never_says_ready_holds_changes_back_only_until_the_deadline() {
    let sink = Sink::start(Records::Lines);
    let (mut engine, control) = spawn_engine_on_port_0(&sink);
    let mut joiner = TcpStream::connect(control).unwrap();
    joiner.set_read_timeout(Some(DEADLINE)).unwrap();
    let next = |s: &mut TcpStream| {
        framing::read_frame(s, MAX_CONTROL_FRAME)
            .unwrap()
            .expect("a frame")
    };
    assert_eq!(
        Greeting::decode(&next(&mut joiner)).unwrap(),
        Greeting::Ready
    );
    let join = JoinRequest {
        version: wire::VERSION,
        node: "slow".into(),
        app: "word_count".into(),
        n_slots: Config::DEFAULT_SLOTS,
        cores: 1,
        data_addr: "127.0.0.1:1".into(),
        state_dir: false,
        state_path: String::new(),
        http: String::new(),
    };
    let request = Request::Join(wire::encode_join(&join)).encode("").unwrap();
    framing::write_frame(&mut joiner, &request).unwrap();
    let welcome = Response::decode(&next(&mut joiner)).unwrap();
    let welcomed = Instant::now();
    assert!(matches!(welcome, Response::Welcome(_)), "{welcome:?}");
    joiner.write_all(&[0]).unwrap();

    // `shrink-cores 1` on one core changes nothing: refused as busy while the join holds the
    // lock, then refused for what it asks.
    let probe = || {
        let out = ctl_at(control, &["shrink-cores", "1"]);
        failure(&out)
    };
    let first = probe();
    if welcomed.elapsed() < READY_DEADLINE {
        assert!(first.contains("a change is already in progress"), "{first}");
    }
    let released = loop {
        let err = probe();
        if err.contains("at least one must remain") {
            break welcomed.elapsed();
        }
        assert!(err.contains("already in progress"), "{err}");
        assert!(
            welcomed.elapsed() < READY_DEADLINE + Duration::from_secs(10),
            "the join still holds the change lock after {:?}",
            welcomed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        released >= READY_DEADLINE - Duration::from_secs(1),
        "{released:?}"
    );
    let answer = Response::decode(&next(&mut joiner)).unwrap();
    assert!(
        matches!(&answer, Response::Error(e) if e.contains("no Ready within 15s")),
        "{answer:?}"
    );
    signal(&engine, "-TERM");
    assert!(wait_exit(&mut engine).success());
}

/// Issue 14 (11): `quokka ctl status | head -3`: a reader that goes away before the answer
/// arrives ends ctl quietly (exit 0), not with a broken-pipe panic.
#[test]
fn ctl_into_a_reader_that_closes_early_exits_quietly() {
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    let closed_rx = Mutex::new(closed_rx);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    control::serve(listener, Limits::default(), move |mut session| {
        if session.request().is_ok() {
            // Answers once the reader of ctl's stdout is gone.
            let _ = closed_rx.lock().unwrap().recv_timeout(DEADLINE);
            let long: String = (0..1000).map(|i| format!("line {i}\n")).collect();
            let _ = session.answer(&Response::Ok(long));
        }
    })
    .unwrap();
    let mut ctl = Proc::spawn(
        Command::new(quokka())
            .args(["ctl", "--control", &addr.to_string(), "status"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    drop(ctl.stdout.take());
    closed_tx.send(()).unwrap();
    let status = wait_exit(&mut ctl);
    let mut err = String::new();
    ctl.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Where a `quokka-recv` started with `--listen 127.0.0.1:0` listens, from its first line on
/// stderr; and the rest of its stderr, kept open (it may say more, and must be able to).
pub(crate) fn recv_listening(
    recv: &mut Proc,
) -> (SocketAddr, BufReader<std::process::ChildStderr>) {
    let mut err = BufReader::new(recv.stderr.take().unwrap());
    let mut said = String::new();
    err.read_line(&mut said).unwrap();
    let at = said
        .trim_end()
        .strip_prefix("quokka-recv: listening on ")
        .unwrap_or_else(|| panic!("{said:?}"))
        .parse()
        .unwrap();
    (at, err)
}

/// Bytes waiting unread in the receive queue of the loopback socket on port `local` connected
/// to port `remote` (Linux's /proc/net/tcp), if there is one.
fn unread_bytes(local: u16, remote: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if port(f[1])? != local || port(f[2])? != remote {
            return None;
        }
        u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok()
    })
}

/// A probe's leftover from issue 14: `quokka-recv --out` stopped by SIGTERM lost the records
/// still in its write buffer. Every record it counted must be in the file.
#[test]
fn recv_stopped_by_a_signal_writes_every_record_it_received() {
    let dir = std::env::temp_dir().join(format!("quokka-recv-signal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_file = dir.join("out.txt");
    let mut recv = Proc::spawn(
        Command::new(tool("quokka-recv"))
            .args(["--listen", "127.0.0.1:0", "--idle-timeout", "600"])
            .args(["--out", out_file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let (at, mut recv_err) = recv_listening(&mut recv);
    // As an engine's sink connection would: lines, fewer than a write buffer holds.
    let lines: Vec<String> = (0..500).map(|i| format!("word{i} => {i}")).collect();
    let text = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let mut conn = TcpStream::connect(at).unwrap();
    conn.write_all(text.as_bytes()).unwrap();
    // Wait (on the socket's state, with a deadline) until it has read them all: on loopback a
    // write is in the receiver's queue when it returns.
    let mine = conn.local_addr().unwrap().port();
    let deadline = Instant::now() + DEADLINE;
    while unread_bytes(at.port(), mine) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "quokka-recv did not read the lines"
        );
        std::thread::yield_now();
    }
    signal(&recv, "-TERM");
    let mut child = recv.into_child();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(wait_exit(&mut child).success());
    assert!(stdout.contains("received 500 records"), "{stdout}");
    let mut rest = String::new();
    recv_err.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("stopped by a signal"), "{rest}");
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(written.lines().collect::<Vec<_>>(), lines);
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
}
