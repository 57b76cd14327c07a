//! Issue 20: `quokka-send` and `quokka-recv` show their progress on stderr (plain lines when it
//! is not a terminal), never on stdout, and nothing with `--quiet`.

use std::io::Read;
use std::process::{Command, Stdio};

use crate::cli::{recv_listening, succeeded};
use crate::{tool, wait_exit, Proc};

/// Issue 20: on a stderr that is not a terminal, `quokka-send` and `quokka-recv --expect` print
/// plain progress lines there (count of the total, rate) and a last one with the final total,
/// while stdout keeps only the summary; `--quiet` prints none; `--help` says both.
#[test]
fn send_and_recv_print_plain_progress_on_stderr_unless_quiet() {
    let dir = std::env::temp_dir().join(format!("quokka-progress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lines.txt");
    let text: String = (0..3000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&file, text).unwrap();
    for quiet in [false, true] {
        let mut flags = vec!["--progress-every", "20ms"];
        if quiet {
            flags.push("--quiet");
        }
        let mut recv = Proc::spawn(
            Command::new(tool("quokka-recv"))
                .args(["--listen", "127.0.0.1:0", "--framing", "frames"])
                .args(["--expect", "3000"])
                .args(&flags)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let (at, mut recv_err) = recv_listening(&mut recv);
        // At most 10000 frames/s: both tools run at least 0.3 s, many progress periods (and
        // several of the 100 ms between quokka-recv's looks at its count).
        let send = Command::new(tool("quokka-send"))
            .args(["--to", &at.to_string(), "--lines", "--rate", "10000"])
            .arg("--file")
            .arg(&file)
            .args(&flags)
            .output()
            .unwrap();
        succeeded(&send);
        let mut recv = recv.into_child();
        let mut recv_out = String::new();
        recv.stdout
            .take()
            .unwrap()
            .read_to_string(&mut recv_out)
            .unwrap();
        assert!(wait_exit(&mut recv).success(), "--expect reached");
        let mut recv_progress = String::new();
        recv_err.read_to_string(&mut recv_progress).unwrap();
        let (send_out, send_err) = (
            String::from_utf8(send.stdout).unwrap(),
            String::from_utf8(send.stderr).unwrap(),
        );
        assert!(
            send_out.starts_with("sent 3000 frames") && send_out.lines().count() == 1,
            "{send_out}"
        );
        assert!(
            recv_out.starts_with("received 3000 records") && recv_out.lines().count() == 1,
            "{recv_out}"
        );
        if quiet {
            assert_eq!(send_err, "", "--quiet");
            assert_eq!(
                recv_progress, "",
                "--quiet: nothing after the listening line"
            );
        } else {
            check_plain_progress(&send_err, "quokka-send", "frames");
            check_plain_progress(&recv_progress, "quokka-recv", "records");
        }
    }
    for name in ["quokka-send", "quokka-recv"] {
        let help = Command::new(tool(name)).arg("--help").output().unwrap();
        let help = String::from_utf8(help.stdout).unwrap();
        assert!(
            help.contains("--quiet") && help.contains("goes to stderr, never stdout"),
            "{help}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tool's progress on a stderr that is not a terminal, towards a total of 3000: plain lines
/// `TOOL: N/3000 UNIT (P%), R UNIT/s[, ETA T]` with N growing, then `TOOL: 3000/3000 UNIT
/// (100%), done in S`.
fn check_plain_progress(err: &str, tool: &str, unit: &str) {
    assert!(
        !err.contains(['\r', '\x1b']),
        "plain lines, no bar: {err:?}"
    );
    let lines: Vec<&str> = err.lines().collect();
    let Some((last, periodic)) = lines.split_last() else {
        panic!("{tool} printed no progress");
    };
    let done = format!("{tool}: 3000/3000 {unit} (100%), done in ");
    assert!(last.starts_with(&done), "{err}");
    assert!(!periodic.is_empty(), "periodic lines come first: {err}");
    let mut before = 0;
    for line in periodic {
        let count = line
            .strip_prefix(&format!("{tool}: "))
            .and_then(|rest| rest.split_once(&format!("/3000 {unit} (")))
            .filter(|(_, rest)| rest.contains(&format!(" {unit}/s")))
            .and_then(|(count, _)| count.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("not a progress line: {line:?} in {err}"));
        assert!((before..=3000).contains(&count), "{err}");
        before = count;
    }
}
