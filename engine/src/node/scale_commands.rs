//! The operator's commands for nodes (`--on-scale-out`, `--on-scale-in`): each run with `sh
//! -c`, one at a time, given [`COMMAND_TIMEOUT`] to return, and watched by a thread of its own
//! that says how it ended.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a command may run: it asks an orchestrator and returns (a node it starts runs on
/// in the background); one still running then is killed and counts as failed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Every variable the commands are given, in one run or the other.
const ENV: [&str; 7] = [
    "QUOKKA_SCALE",
    "QUOKKA_NODES",
    "QUOKKA_NODES_WANTED",
    "QUOKKA_JOIN",
    "QUOKKA_REASON",
    "QUOKKA_NODE",
    "QUOKKA_NODE_ADDR",
];

/// Runs the commands one at a time.
#[derive(Default)]
pub(crate) struct ScaleCommands {
    running: Arc<AtomicBool>,
}

impl ScaleCommands {
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Starts `command` with `env` added to its environment (stdin closed), unless one still
    /// runs; a thread waits up to `timeout` for it and hands `ended` how it went: `Ok`, or why
    /// not. `Err`: not started, and why.
    pub fn run(
        &self,
        command: &str,
        env: &[(&str, String)],
        timeout: Duration,
        ended: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Result<(), String> {
        if self.running.swap(true, Ordering::AcqRel) {
            return Err("the last command still runs".into());
        }
        // Its output goes to the log (stderr): stdout is the engine's, for machines to read.
        let to_log = std::io::stderr().as_fd().try_clone_to_owned();
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(command).stdin(Stdio::null());
        if let Ok(to_log) = to_log {
            sh.stdout(to_log);
        }
        // Only what this run sets: none inherited from the engine's own environment.
        for name in ENV {
            sh.env_remove(name);
        }
        // Its own process group: a Ctrl-C meant for the engine does not reach it.
        let child = sh
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                self.running.store(false, Ordering::Release);
                return Err(format!("could not start sh: {e}"));
            }
        };
        let running = self.running.clone();
        let deadline = Instant::now() + timeout;
        let waiter = std::thread::Builder::new()
            .name("quokka-scale-command".into())
            .spawn(move || {
                let how = loop {
                    match child.try_wait() {
                        Ok(Some(exit)) if exit.success() => break Ok(()),
                        Ok(Some(exit)) => break Err(exit.to_string()),
                        Err(e) => break Err(e.to_string()),
                        Ok(None) if Instant::now() >= deadline => {
                            // The whole group: what it started in the foreground too.
                            // SAFETY: killpg only sends a signal; the group is the child's own.
                            unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
                            let _ = child.wait();
                            break Err(format!("still running after {timeout:?}: killed"));
                        }
                        // Polling a child process: nothing to wait on but its exit.
                        Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    }
                };
                running.store(false, Ordering::Release);
                ended(how);
            });
        waiter.map(|_| ()).map_err(|e| {
            // The child runs on unwatched; a later command may start.
            self.running.store(false, Ordering::Release);
            format!("cannot watch the command: {e}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `command` and returns how it ended.
    fn ended(commands: &ScaleCommands, command: &str, timeout: Duration) -> Result<(), String> {
        let (tx, rx) = flume::bounded(1);
        commands.run(
            command,
            &[("QUOKKA_X", "a b".into())],
            timeout,
            move |how| tx.send(how).unwrap(),
        )?;
        rx.recv().unwrap()
    }

    #[test]
    fn a_command_ends_well_fails_or_is_killed_and_gets_its_environment() {
        let c = ScaleCommands::default();
        let long = Duration::from_secs(30);
        assert_eq!(ended(&c, "test \"$QUOKKA_X\" = 'a b'", long), Ok(()));
        assert_eq!(ended(&c, "exit 3", long), Err("exit status: 3".to_string()));
        let killed = ended(&c, "sleep 30", Duration::from_millis(100)).unwrap_err();
        assert!(killed.contains("killed"), "{killed}");
        // Reads nothing: stdin is closed, not the engine's.
        assert_eq!(ended(&c, "read line; test -z \"$line\"", long), Ok(()));
    }

    #[test]
    fn one_command_at_a_time() {
        let c = ScaleCommands::default();
        let (tx, rx) = flume::bounded(1);
        c.run("sleep 30", &[], Duration::from_millis(300), move |how| {
            tx.send(how).unwrap()
        })
        .unwrap();
        assert_eq!(
            c.run("true", &[], Duration::from_secs(1), |_| {}),
            Err("the last command still runs".to_string())
        );
        assert!(rx.recv().unwrap().is_err());
        assert_eq!(ended(&c, "true", Duration::from_secs(30)), Ok(()));
    }
}
