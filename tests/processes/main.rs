//! Black-box tests of the real binaries as processes: the `quokka` CLI and its signals
//! ([`cli`]), and clusters of `quokka` nodes on loopback and in network namespaces ([`nodes`]).
//!
//! They are integration tests of the `quokka` package (declared in `tools/quokka/Cargo.toml`),
//! so `cargo test` builds the binaries they run, with the same features as everything else it
//! builds, and hands their paths over in `CARGO_BIN_EXE_*`. The engine-level tests, in process,
//! are in `tests/src`, whose harness these share.

mod cli;
mod nodes;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::mpsc;

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

fn free_port() -> String {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
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
