//! Issue 21: `quokka run --autoscale MIN..MAX` on the real binary. A sender at full speed keeps
//! one core busy (over the thresholds this test sets: its sender cannot fill a core of a
//! 2-CPU machine to the default 80%), so the engine grows; once the load is gone it shrinks back; every word's
//! running totals arrive exactly; `ctl autoscale` turns it off and on; `status` says what the
//! autoscaler did. (Its policy's traces, the sustain window, noise, a spike, a steady load, are
//! unit tests of `autoscale.rs`.)

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use quokka_io::client::Records;
use quokka_tests::fixtures::BILL_OF_RIGHTS;
use quokka_tests::harness::{send_frames, Sink, DEADLINE};
use quokka_tests::reference::{check_running_totals, reference_counts};

use crate::{ctl, quokka, signal, Service};

/// `status --json` of the engine at `control`.
fn status(control: SocketAddr) -> serde_json::Value {
    let (code, out, err) = ctl(control, &["status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap()
}

/// Polls `status --json` until `done` holds; panics with the last status after [`DEADLINE`].
fn wait_status(control: SocketAddr, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = status(control);
        if done(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cores(s: &serde_json::Value) -> usize {
    s["cores"].as_array().unwrap().len()
}

#[test]
fn the_engine_grows_under_load_shrinks_when_idle_and_loses_nothing() {
    let sink = Sink::start(Records::Lines);
    let mut engine = Service::start(
        "word_count",
        Command::new(quokka())
            .args([
                "run",
                "word_count",
                "--cores",
                "1",
                "--out",
                &sink.addr().to_string(),
            ])
            .args([
                "--in",
                "127.0.0.1:0",
                "--control",
                "127.0.0.1:0",
                "--http",
                "none",
            ])
            .args(["--autoscale", "1..2", "--autoscale-sustain", "2s"])
            .args(["--autoscale-idle", "3s", "--autoscale-cooldown", "1s"])
            // This test's own sender keeps a core about 60% busy on a 2-CPU machine, not 80%.
            .args([
                "--autoscale-grow-busy",
                "40",
                "--autoscale-target-busy",
                "30",
            ])
            .args(["--autoscale-shrink-busy", "10"]),
    );
    let (control, input) = (engine.addrs.control(), engine.addrs.input());
    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    // Full speed until the engine has grown (each round is the whole text again).
    let mut rounds = 0;
    let deadline = Instant::now() + DEADLINE;
    while status(control)["autoscale"]["grows"] == 0 {
        assert!(Instant::now() < deadline, "never grew: {}", status(control));
        for _ in 0..20 {
            send_frames(input, &frames);
            rounds += 1;
        }
    }
    let s = status(control);
    assert_eq!(
        (cores(&s), s["autoscale"]["grows"].as_u64()),
        (2, Some(1)),
        "{s}"
    );
    assert!(
        s["autoscale"]["last"].as_str().unwrap().contains("busy"),
        "{s}"
    );
    // No load: back to 1 core after the idle window.
    wait_status(control, "shrank back to 1 core", |s| {
        cores(s) == 1 && s["autoscale"]["shrinks"] == 1
    });
    let (_, text, _) = ctl(control, &["status"]);
    assert!(
        text.contains("autoscale 1..2 cores: 1 grows, 1 shrinks, 0 failed"),
        "{text}"
    );
    // Off, then on again with the range it had.
    let (code, out, _) = ctl(control, &["autoscale", "off"]);
    assert_eq!((code, out.trim()), (Some(0), "autoscale off"));
    assert_eq!(status(control)["autoscale"]["on"], false);
    let (code, out, _) = ctl(control, &["autoscale", "on"]);
    assert_eq!((code, out.trim()), (Some(0), "autoscale on: 1..2 cores"));
    let (code, _, err) = ctl(control, &["autoscale", "3..2"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("1 <= MIN <= MAX"), "{err}");
    // Every word's running totals, exactly once each.
    let all: Vec<&str> = (0..rounds).flat_map(|_| lines.iter().copied()).collect();
    let expected = reference_counts(all.iter().copied());
    sink.wait_for(expected.values().sum());
    signal(&engine.child, "-TERM");
    engine.wait_exit_ok();
    check_running_totals(&sink.lines(), &expected);
}
