//! `quokka run` and `quokka ctl` refusing what cannot work, with a clear error and nothing
//! changed (issue 14 (1), (5), (9), (11)).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Instant;

use quokka_engine::Config;
use quokka_io::client::Records;
use quokka_tests::fixtures::BILL_OF_RIGHTS;
use quokka_tests::harness::{send_frames, Sink, DEADLINE};

use crate::cli::{failure, send_again_stop_and_check, spawn_app, succeeded};
use crate::{ctl, quokka_output};

/// `quokka run word_count` on ports it chooses with `extra` flags; it must refuse to start.
fn refused_run(extra: &[&str]) -> String {
    let args = [
        "run",
        "word_count",
        "--in",
        "127.0.0.1:0",
        "--out",
        "127.0.0.1:1",
    ];
    let out = quokka_output(&[&args[..], &["--control", "127.0.0.1:0"], extra].concat());
    failure(&out)
}

/// Issue 14 (5), (9), (11): `--sink-buffer 0` (the engine then never exited on SIGTERM),
/// `--cores` and `--slots` past their limits (`--slots 4294967295` took the machine's memory),
/// a `--cpus` CPU that is not online (blamed on locked memory), and `--max-frame 0` (every frame
/// then closed its connection) are refused, each saying what is allowed; `run --help` states
/// the limits.
#[test]
fn run_refuses_settings_that_cannot_work_and_says_what_is_allowed() {
    let err = refused_run(&["--sink-buffer", "0"]);
    assert!(
        err.contains("sink buffer must hold at least 1 byte"),
        "{err}"
    );
    let (cores, slots) = (Config::MAX_CORES, Config::MAX_SLOTS);
    let err = refused_run(&["--cores", &(cores + 1).to_string()]);
    assert!(
        err.contains(&format!("a node runs 1 to {cores} cores")),
        "{err}"
    );
    let err = refused_run(&["--slots", "4294967295"]);
    assert!(
        err.contains(&format!("a cluster has 1 to {slots} slots")),
        "{err}"
    );
    let err = refused_run(&["--cpus", "0,4095"]);
    assert!(
        err.contains("CPU 4095 is not online on this host") && err.contains("online CPUs are 0"),
        "{err}"
    );
    assert!(!err.contains("locked memory"), "{err}");
    let err = refused_run(&["--max-frame", "0"]);
    assert!(
        err.contains("--max-frame) must be at least 1 byte"),
        "{err}"
    );

    let out = quokka_output(&["run", "--help"]);
    succeeded(&out);
    let help = String::from_utf8(out.stdout).unwrap();
    for limit in [
        format!("1 to {cores}"),
        format!("1 to {slots}"),
        "at least 1".into(),
    ] {
        assert!(
            help.contains(&limit),
            "run --help does not say {limit}:\n{help}"
        );
    }
}

/// The core ids `quokka ctl status` lists.
fn core_ids(control: SocketAddr) -> Vec<u16> {
    let (code, out, err) = ctl(control, &["status"]);
    assert_eq!(code, Some(0), "{err}");
    fn columns(l: &str) -> Vec<&str> {
        l.split_whitespace().take(2).collect()
    }
    let header = out.lines().position(|l| columns(l) == ["node", "core"]);
    let header = header.unwrap_or_else(|| panic!("no table of cores:\n{out}"));
    out.lines()
        .skip(header + 1)
        .map(|l| columns(l)[1].parse().unwrap_or_else(|_| panic!("{l:?}")))
        .collect()
}

/// Open file descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Sets a process's soft limit of open files.
fn limit_files(pid: u32, soft: &str) {
    let set = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(set.success(), "prlimit failed");
}

/// The soft limit of open files of a process.
fn files_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().to_string()
}

/// Issue 14 (9), (1): `grow-cores` past the cores a node may run is refused with the limit
/// (`grow-cores 65533` got the engine OOM-killed), and a grow whose cores cannot all start
/// (here: the process runs out of file descriptors midway) changes nothing: the cores that
/// did start are retired again, status is as before, and the next grow gets the lowest ids
/// and keeps the output exact.
#[test]
fn a_grow_past_the_limit_or_whose_cores_fail_to_start_changes_nothing() {
    let sink = Sink::start(Records::Lines);
    let mut engine = spawn_app("word_count", sink.addr(), &["--cores", "1"]);
    let (input, control) = (engine.addrs.input(), engine.addrs.control());
    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    send_frames(input, &frames);

    let (code, _, err) = ctl(control, &["grow-cores", "65533"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("limit of {} cores per node", Config::MAX_CORES)),
        "{err}"
    );
    assert_eq!(core_ids(control), [0]);

    // A core takes a few descriptors (io_uring rings, an eventfd): room for one or two more,
    // not eight.
    let pid = engine.child.id();
    let (before, limit) = (fds(pid), files_limit(pid));
    limit_files(pid, &(before + 8).to_string());
    let (code, _, err) = ctl(control, &["grow-cores", "8"]);
    limit_files(pid, &limit);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("failed to start"), "{err}");
    let (code, status, err) = ctl(control, &["status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        status.contains("routing epoch 0, 4096 slots, 1 cores (0 retired)"),
        "{status}"
    );
    let deadline = Instant::now() + DEADLINE;
    while fds(pid) > before + 1 {
        assert!(
            Instant::now() < deadline,
            "{} fds, {before} before",
            fds(pid)
        );
        // Polling interval (reading /proc), not synchronisation.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    let (code, out, err) = ctl(control, &["grow-cores", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("1 -> 3 cores"), "{out}");
    assert_eq!(core_ids(control), [0, 1, 2]);
    send_again_stop_and_check(&mut engine, &sink, &lines);
}

/// A blank cluster token would silently turn every check off (the probe of issue 14 found it):
/// an empty `--cluster-token`, or a token file whose first line is blank, is refused.
#[test]
fn an_empty_cluster_token_is_refused_not_taken_as_none() {
    let file = std::env::temp_dir().join(format!("quokka-blank-{}.tok", std::process::id()));
    std::fs::write(&file, "\nsecret\n").unwrap();
    let path = file.to_string_lossy().to_string();
    let err = refused_run(&["--cluster-token", ""]);
    assert!(err.contains("--cluster-token is empty"), "{err}");
    let err = refused_run(&["--cluster-token-file", &path]);
    assert!(err.contains("its first line is empty"), "{err}");
    let out = quokka_output(&["ctl", "--cluster-token", "", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_file(file);
}
