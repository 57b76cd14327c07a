//! The real `quokka` binary: its CLI, and a service run stopped by SIGTERM.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};

use quokka_io::client::Records;
use quokka_tests::fixtures::{self, BILL_OF_RIGHTS};
use quokka_tests::harness::{send_frames, Sink};
use quokka_tests::reference::{check_running_totals, reference_counts};

use crate::{ctl, quokka, quokka_output, signal, tool, Proc, Service};

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

    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let args = ["run", "word_count", "--in", &taken, "--out", "127.0.0.1:2"];
    let out = quokka_output(&[&args[..], &["--control", "127.0.0.1:0"]].concat());
    let err = failure(&out);
    assert!(err.contains(&format!("cannot listen on {taken}")), "{err}");
    assert_eq!(err.matches("in use").count(), 1, "the reason once: {err}");
}

/// Checks that a tool exited 0, showing its stderr if not.
fn succeeded(out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", out.status);
}

/// The stderr of a tool that must have exited 1.
fn failure(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

/// Starts `quokka run APP` with its source and control endpoint on ports it chooses, writing
/// to `out`, with `extra` flags; returns once it reported its addresses.
fn spawn_app(app: &str, out: SocketAddr, extra: &[&str]) -> Service {
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
    let mut garbage = std::net::TcpStream::connect(control).unwrap();
    std::io::Write::write_all(&mut garbage, b"\x00\x00\x00\x05hello").unwrap();
    let reply = quokka_io::control::read_frame(&mut garbage).unwrap();
    let reply = quokka_io::control::Response::decode(&reply).unwrap();
    assert!(
        matches!(&reply, quokka_io::control::Response::Error(e) if e.contains("bad magic")),
        "{reply:?}"
    );

    let (code, _, err) = ctl(&["shrink-cores", "2"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("at least one must remain"), "{err}");
    let (code, out, err) = ctl(&["shrink-cores", "1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("2 -> 1 cores"), "{out}");

    send_frames(input, &frames);
    let doubled: Vec<&str> = lines.iter().chain(&lines).copied().collect();
    let expected = reference_counts(doubled.iter().copied());
    sink.wait_for(expected.values().sum());
    signal(&engine.child, "-TERM");
    engine.wait_exit_ok();
    check_running_totals(&sink.lines(), &expected);

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
    // Its first line says where it listens (the reader stays open: it may say more).
    let mut recv_err = std::io::BufReader::new(recv.stderr.take().unwrap());
    let mut said = String::new();
    recv_err.read_line(&mut said).unwrap();
    let output: SocketAddr = said
        .trim_end()
        .strip_prefix("quokka-recv: listening on ")
        .unwrap_or_else(|| panic!("{said:?}"))
        .parse()
        .unwrap();
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
