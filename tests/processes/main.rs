//! Black-box tests of the real binaries as processes: the `quokka` CLI and its signals
//! ([`cli`]), `quokka run` as a long-running service ([`service`]), and clusters of `quokka`
//! nodes on loopback and in network namespaces ([`nodes`]), and what a node serves over HTTP
//! ([`web`]).
//!
//! They are integration tests of the `quokka` package (declared in `tools/quokka/Cargo.toml`),
//! so `cargo test` builds the binaries they run, with the same features as everything else it
//! builds, and hands their paths over in `CARGO_BIN_EXE_*`. The engine-level tests, in process,
//! are in `tests/src`, whose harness these share.
//!
//! Every `quokka run` here binds port 0 and the test reads the ports it got from the line it
//! prints once it serves ([`Service`]); tests wait on that line, on `quokka ctl status`, on exit
//! statuses and printed summaries, never on log text.

mod autoscale;
mod cli;
mod cluster_crash;
mod crash;
mod limits;
mod lose_node;
mod net;
mod nodes;
mod progress;
mod service;
mod sink_down;
mod web;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use quokka_tests::harness::DEADLINE;

/// The `quokka` binary under test.
fn quokka() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_quokka"))
}

/// A tool built alongside `quokka`.
fn tool(name: &str) -> &'static Path {
    Path::new(match name {
        "quokka-send" => env!("CARGO_BIN_EXE_quokka-send"),
        "quokka-recv" => env!("CARGO_BIN_EXE_quokka-recv"),
        "quokka-gen" => env!("CARGO_BIN_EXE_quokka-gen"),
        other => panic!("no tool {other}"),
    })
}

fn quokka_output(args: &[&str]) -> Output {
    Command::new(quokka())
        .args(args)
        .output()
        .expect("run quokka")
}

/// `quokka ctl --control CONTROL ARGS...`: (exit code, stdout, stderr).
fn ctl(control: SocketAddr, args: &[&str]) -> (Option<i32>, String, String) {
    let control = control.to_string();
    let out = quokka_output(&[&["ctl", "--control", &control][..], args].concat());
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The addresses a `quokka run` bound, from the line it prints once it serves:
/// `listening control=ADDR|none data=ADDR http=ADDR|none [in=NAME@ADDR]...`.
struct Listening {
    control: Option<SocketAddr>,
    data: SocketAddr,
    /// Where it serves HTTP (`/metrics`, the dashboard), unless `--http none`.
    http: Option<SocketAddr>,
    /// Each source's name and address, in the app's order.
    inputs: Vec<(String, SocketAddr)>,
}

impl Listening {
    fn parse(line: &str) -> Listening {
        let fields = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("not a listening line: {line:?}"));
        let addr = |a: &str| -> SocketAddr {
            a.parse()
                .unwrap_or_else(|e| panic!("bad address {a:?} in {line:?}: {e}"))
        };
        let (mut control, mut data, mut http, mut inputs) = (None, None, None, Vec::new());
        for field in fields.split(' ') {
            match field.split_once('=') {
                Some(("control", "none")) => control = Some(None),
                Some(("control", a)) => control = Some(Some(addr(a))),
                Some(("data", a)) => data = Some(addr(a)),
                Some(("http", "none")) => http = Some(None),
                Some(("http", a)) => http = Some(Some(addr(a))),
                Some(("in", source)) => {
                    let (name, a) = source.split_once('@').expect("in=NAME@ADDR");
                    inputs.push((name.to_string(), addr(a)));
                }
                _ => panic!("unknown field {field:?} in {line:?}"),
            }
        }
        Listening {
            control: control.unwrap_or_else(|| panic!("no control= in {line:?}")),
            data: data.unwrap_or_else(|| panic!("no data= in {line:?}")),
            http: http.unwrap_or_else(|| panic!("no http= in {line:?}")),
            inputs,
        }
    }

    /// The control address (a node started with `--control`).
    fn control(&self) -> SocketAddr {
        self.control.expect("a control endpoint")
    }

    /// The address of the app's only source.
    fn input(&self) -> SocketAddr {
        match &self.inputs[..] {
            [(_, addr)] => *addr,
            other => panic!("expected one source, got {other:?}"),
        }
    }
}

/// A `quokka run` process: the addresses it reported, the rest of its stdout (the summary),
/// and its log (stderr) in a file, kept when the test fails. Killed on drop if still up.
struct Service {
    name: String,
    child: Proc,
    addrs: Listening,
    stdout: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Service {
    /// Starts `cmd` (a `quokka run` that binds what it is given, port 0 included) and waits
    /// for the line with the addresses it bound; fails with its log if it exits first.
    fn start(name: &str, cmd: &mut Command) -> Service {
        static LOGS: AtomicUsize = AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "quokka-test-{}-{}-{name}.log",
            std::process::id(),
            LOGS.fetch_add(1, Ordering::Relaxed)
        ));
        cmd.stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create a log file"));
        let mut child = Proc::spawn(cmd);
        let out = child.stdout.take().expect("piped stdout");
        let (tx, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                if line.ok().is_none_or(|l| tx.send(l).is_err()) {
                    return;
                }
            }
        });
        let first = stdout.recv_timeout(DEADLINE);
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        let line = match first {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = wait_exit(&mut child);
                panic!(
                    "{name} exited ({status}) before reporting its addresses:\n{}",
                    log_text()
                )
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "{name} did not report its addresses within {DEADLINE:?}:\n{}",
                log_text()
            ),
        };
        Service {
            name: name.into(),
            child,
            addrs: Listening::parse(&line),
            stdout,
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What it printed after the listening line, up to its exit (call once it has exited).
    fn rest_of_stdout(&self) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut text = String::new();
        loop {
            match self
                .stdout
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => text += &(line + "\n"),
                Err(mpsc::RecvTimeoutError::Disconnected) => return text,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{}'s stdout stayed open:\n{text}", self.name)
                }
            }
        }
    }

    /// Waits for it to exit with status 0.
    fn wait_exit_ok(&mut self) {
        let status = wait_exit(&mut self.child);
        assert!(
            status.success(),
            "{} exited with {status}:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// Waits for it to exit by itself (an exit code, not a signal) without a panic.
    fn wait_exit_uncrashed(&mut self) {
        let status = wait_exit(&mut self.child);
        let log = self.log_text();
        assert!(
            status.code().is_some(),
            "{} ended by a signal:\n{log}",
            self.name
        );
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// A passing test leaves no log behind.
impl Drop for Service {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A child process that a failing test does not leave running: killed on drop if still up.
struct Proc(Option<Child>);

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        Proc(Some(cmd.spawn().expect("spawn a process under test")))
    }

    /// The child, no longer killed on drop (to `wait_with_output` it).
    fn into_child(mut self) -> Child {
        self.0.take().expect("a child")
    }
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("a child")
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("a child")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Sends `sig` (`-TERM`, `-INT`) to a child process.
fn signal(child: &Child, sig: &str) {
    let sent = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {sig} failed");
}

/// Waits for `child` to exit, at most [`DEADLINE`]; past it, kills the child and fails.
fn wait_exit(child: &mut Child) -> ExitStatus {
    let pid = child.id().to_string();
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        s.spawn(move || tx.send(child.wait().expect("wait for the child")));
        match rx.recv_timeout(DEADLINE) {
            Ok(status) => status,
            Err(_) => {
                // Ends the waiting thread too.
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("process {pid} did not exit within {DEADLINE:?}");
            }
        }
    })
}
