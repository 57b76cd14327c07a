//! A cluster stopped as a whole (issue 18): both nodes killed with `kill -9` at random moments
//! and each started again with its command and state dir; the coordinator restores its part
//! of the newest complete checkpoint and waits for the member, which restores its own part;
//! the file source on one node and the durable stream on the other go on from the
//! checkpoint, and an exactly-once receiver ends up with every output once.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use quokka_tests::harness::load_text;
use quokka_tests::reference::reference_counts;

use crate::crash::{
    append_slowly, check_exact_totals, exactly_once_sink, temp_dir, wait_committed, wait_status,
    Rng,
};
use crate::net::{Loopback, Net};
use crate::{ctl, quokka, signal, Service};

/// Where and how a test's cluster runs: its network, its app, its outputs' guarantee.
pub(crate) struct Setup<'a> {
    pub net: &'a dyn Net,
    pub app: &'a str,
    pub guarantee: &'a str,
    /// More arguments for every node.
    pub args: &'a [&'a str],
}

/// Word count on loopback with exactly-once outputs.
const WORD_COUNT: Setup = Setup {
    net: &Loopback,
    app: "word_count",
    guarantee: "exactly-once",
    args: &[],
};

/// Word count's coordinator `w1`: a file of lines it follows, 2 cores, exactly-once outputs.
pub(crate) fn coordinator(file: &Path, state: &Path, control: &str, out: SocketAddr) -> Service {
    coordinator_on(&WORD_COUNT, file, state, control, out)
}

/// [`coordinator`] as `setup` says (node 0 of its network).
pub(crate) fn coordinator_on(
    setup: &Setup,
    file: &Path,
    state: &Path,
    control: &str,
    out: SocketAddr,
) -> Service {
    let net = setup.net;
    Service::start(
        "w1",
        net.command(0)
            .args(["run", setup.app, "--name", "w1", "--cores", "2"])
            .args(["--in", &format!("lines:{}", file.display()), "--follow"])
            .args([
                "--control",
                control,
                "--data",
                &format!("{}:0", net.host(0)),
            ])
            .args(["--out", &out.to_string()])
            .args(["--state-dir", &state.display().to_string()])
            .args([
                "--checkpoint-interval",
                "30ms",
                "--guarantee",
                setup.guarantee,
            ])
            .args(setup.args)
            .env("RUST_LOG", "info"),
    )
}

/// Member `w2`, listening for source connections at `input`, 1 core.
fn member(state: &Path, input: &str, lead: SocketAddr) -> Service {
    member_named("w2", state, &["--in", input], lead)
}

/// Member `name` with 1 core and `extra` arguments.
pub(crate) fn member_named(name: &str, state: &Path, extra: &[&str], lead: SocketAddr) -> Service {
    member_on(&WORD_COUNT, 0, name, state, extra, lead)
}

/// [`member_named`] as `setup` says, node `i` of its network.
pub(crate) fn member_on(
    setup: &Setup,
    i: usize,
    name: &str,
    state: &Path,
    extra: &[&str],
    lead: SocketAddr,
) -> Service {
    Service::start(
        name,
        setup
            .net
            .command(i)
            .args(["run", setup.app, "--name", name, "--cores", "1"])
            .args(extra)
            .args(["--data", &format!("{}:0", setup.net.host(i))])
            .args(["--join", &lead.to_string()])
            .args(["--state-dir", &state.display().to_string()])
            .args(setup.args)
            .env("RUST_LOG", "info"),
    )
}

/// Inputs of a cluster under load: lines a file source follows (appended as the test goes),
/// and a file of lines a durable sender sends, with the word counts of both together.
pub(crate) struct Inputs {
    pub file_lines: Vec<String>,
    pub expected: std::collections::HashMap<String, u64>,
    /// The followed file, and its length once every line is appended.
    pub file: std::path::PathBuf,
    pub len: usize,
    /// What the durable sender sends.
    pub sent: std::path::PathBuf,
}

impl Inputs {
    pub(crate) fn new(dir: &Path) -> Inputs {
        let text = load_text();
        let (a, b) = text.split_at(text.len() / 2);
        let file_lines: Vec<String> = a.iter().cycle().take(40_000).cloned().collect();
        let sent_lines: Vec<String> = b.iter().cycle().take(15_000).cloned().collect();
        let all = (file_lines.iter()).chain(&sent_lines).map(String::as_str);
        let sent = dir.join("sent.txt");
        std::fs::write(&sent, sent_lines.join("\n") + "\n").unwrap();
        Inputs {
            expected: reference_counts(all),
            file: dir.join("input.txt"),
            len: file_lines.iter().map(|l| l.len() + 1).sum(),
            file_lines,
            sent,
        }
    }
}

/// `quokka-send --durable b` of the lines in `sent` to `input`, at 3000 lines/s.
pub(crate) fn durable_sender(input: SocketAddr, sent: &Path) -> crate::Proc {
    crate::Proc::spawn(
        Command::new(crate::tool("quokka-send"))
            .args(["--to", &input.to_string(), "--lines", "--durable", "b"])
            .args(["--rate", "3000", "--connect-timeout", "60"])
            .arg("--file")
            .arg(sent)
            .stdout(std::process::Stdio::piped()),
    )
}

#[test]
fn a_cluster_killed_as_a_whole_comes_back_from_its_checkpoint_each_output_once() {
    let dir = temp_dir("cluster");
    let Inputs {
        file_lines,
        expected,
        file,
        len,
        sent,
    } = Inputs::new(&dir);
    let (s1, s2) = (dir.join("w1"), dir.join("w2"));
    let (receiver, got) = exactly_once_sink();
    let out = receiver.addr();

    // The first runs pick the ports; every restart binds them again.
    let writer = append_slowly(file.clone(), file_lines);
    let mut w1 = coordinator(&file, &s1, "127.0.0.1:0", out);
    let lead = w1.addrs.control();
    let mut w2 = member(&s2, "127.0.0.1:0", lead);
    let input = w2.addrs.input();
    let sender = durable_sender(input, &sent);
    let mut rng = Rng::seeded();
    let mut restored_whole = 0;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(150 + rng.below(500)));
        // Both go, in either order: a cluster stopped as a whole, mid-checkpoint or not.
        let (first, second) = if rng.below(2) == 0 {
            (&w1, &w2)
        } else {
            (&w2, &w1)
        };
        signal(&first.child, "-KILL");
        signal(&second.child, "-KILL");
        let _ = w1.child.wait();
        let _ = w2.child.wait();
        w1 = coordinator(&file, &s1, &lead.to_string(), out);
        // Until the member is back, a coordinator restored with it reads nothing.
        let (_, status, _) = ctl(lead, &["status"]);
        // A coordinator waiting for w2 gives it the checkpoint to restore: w2 joins only once
        // it restored its part.
        if status.contains("WAITING for nodes w2") {
            assert!(!status.contains("read to byte"), "{status}");
            restored_whole += 1;
            let (code, json, err) = ctl(lead, &["status", "--json"]);
            assert_eq!(code, Some(0), "{err}");
            let json: serde_json::Value = serde_json::from_str(&json).expect("status --json");
            let checkpoints = &json["checkpoints"];
            assert_eq!(
                checkpoints["awaiting_nodes"],
                serde_json::json!(["w2"]),
                "{json}"
            );
            assert!(checkpoints["restored_from"].as_u64() > Some(0), "{json}");
        }
        w2 = member(&s2, &input.to_string(), lead);
    }
    assert!(restored_whole > 0, "w2 never restored a checkpoint");
    let out_of_sender = sender.into_child().wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out_of_sender.stdout);
    assert!(
        out_of_sender.status.success(),
        "the durable sender failed: {said}"
    );
    assert!(said.contains("all durable"), "{said}");
    writer.join().unwrap();
    let status = wait_status(lead, "w1 did not read its file", |s| {
        s.contains(&format!("read to byte {len}\n"))
    });
    assert!(status.contains("restored from checkpoint"), "{status}");
    assert!(!status.contains("WAITING"), "{status}");
    // Asked for, a checkpoint of the whole cluster is taken now.
    let (code, answer, err) = ctl(lead, &["checkpoint"]);
    assert_eq!(code, Some(0), "{answer}{err}");
    let asked: u64 = (answer.split(' ').nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no checkpoint number in {answer:?}"));
    // A stop ends every node's sources and takes a last one, which releases every output.
    signal(&w1.child, "-INT");
    w1.wait_exit_ok();
    w2.wait_exit_ok();
    let summary = w1.rest_of_stdout();
    wait_committed(&receiver, &summary);
    assert!(receiver.committed() > asked, "{summary}");
    check_exact_totals(&got.lock().unwrap(), &expected);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_member_refuses_the_coordinator_of_another_cluster_and_keeps_its_parts() {
    let dir = temp_dir("other-cluster");
    let file = dir.join("input.txt");
    std::fs::write(&file, "a b c\n").unwrap();
    let (receiver, _) = exactly_once_sink();
    let (s1, s2) = (dir.join("w1"), dir.join("w2"));
    let mut w1 = coordinator(&file, &s1, "127.0.0.1:0", receiver.addr());
    let mut w2 = member(&s2, "127.0.0.1:0", w1.addrs.control());
    let (code, answer, err) = ctl(w1.addrs.control(), &["checkpoint"]);
    assert_eq!(code, Some(0), "{answer}{err}");
    signal(&w1.child, "-INT");
    w1.wait_exit_ok();
    w2.wait_exit_ok();
    let parts = |dir: &Path| {
        (std::fs::read_dir(dir).unwrap().flatten())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest"))
            .count()
    };
    let kept = parts(&s2);
    assert!(kept > 0, "w2 wrote no part");

    // The coordinator comes back on a new state dir: a new cluster, which w2's parts are not of.
    let mut lead = coordinator(&file, &dir.join("w1-new"), "127.0.0.1:0", receiver.addr());
    let refused = Command::new(quokka())
        .args(["run", "word_count", "--name", "w2", "--in", "127.0.0.1:0"])
        .args(["--join", &lead.addrs.control().to_string()])
        .args(["--state-dir", &s2.display().to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(said.contains("another cluster's checkpoints"), "{said}");
    assert_eq!(parts(&s2), kept, "w2's parts were touched");
    signal(&lead.child, "-INT");
    lead.wait_exit_ok();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Member `name` with no source of its own.
pub(crate) fn bare_member(name: &str, state: &Path, lead: SocketAddr) -> Service {
    member_named(name, state, &[], lead)
}

#[test]
fn a_node_lost_again_before_the_restored_cluster_is_whole_is_waited_for_again() {
    let dir = temp_dir("lost-again");
    let text = load_text();
    let lines: Vec<String> = text.iter().cycle().take(5_000).cloned().collect();
    let expected = reference_counts(lines.iter().map(String::as_str));
    let file = dir.join("input.txt");
    let len: usize = lines.iter().map(|l| l.len() + 1).sum();
    let (receiver, got) = exactly_once_sink();
    let out = receiver.addr();
    let (s1, s2, s3) = (dir.join("w1"), dir.join("w2"), dir.join("w3"));
    // A cluster of three checkpoints once with all three, before any input.
    std::fs::write(&file, "").unwrap();
    let mut w1 = coordinator(&file, &s1, "127.0.0.1:0", out);
    let lead = w1.addrs.control();
    let mut w2 = bare_member("w2", &s2, lead);
    let mut w3 = bare_member("w3", &s3, lead);
    let (code, answer, err) = ctl(lead, &["checkpoint"]);
    assert_eq!(code, Some(0), "{answer}{err}");
    for node in [&w1, &w2, &w3] {
        signal(&node.child, "-KILL");
    }
    for node in [&mut w1, &mut w2, &mut w3] {
        let _ = node.child.wait();
    }
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    // w2 comes back, is lost again, then w3 comes back: the cluster is not whole.
    w1 = coordinator(&file, &s1, &lead.to_string(), out);
    w2 = bare_member("w2", &s2, lead);
    signal(&w2.child, "-KILL");
    let _ = w2.child.wait();
    wait_status(lead, "w1 did not see w2 go", |s| s.contains("LOST node w2"));
    w3 = bare_member("w3", &s3, lead);
    let status = wait_status(lead, "w1 stopped waiting for w2", |s| {
        s.contains("WAITING for nodes w2\n") || s.contains("WAITING for nodes w2 ")
    });
    assert!(
        !status.contains("read to byte"),
        "sources opened:\n{status}"
    );
    // w2 comes back: now every source opens, and nothing was lost.
    w2 = bare_member("w2", &s2, lead);
    wait_status(lead, "w1 did not read its file", |s| {
        s.contains(&format!("read to byte {len}\n"))
    });
    signal(&w1.child, "-INT");
    w1.wait_exit_ok();
    w2.wait_exit_ok();
    w3.wait_exit_ok();
    let summary = w1.rest_of_stdout();
    wait_committed(&receiver, &summary);
    check_exact_totals(&got.lock().unwrap(), &expected);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by a probe: members started again at the same moment (as a service manager does)
/// after the whole cluster was killed each wait their turn behind the other's join, instead
/// of one being refused and the cluster waiting for it for good.
#[test]
fn members_started_again_together_both_come_back() {
    let dir = temp_dir("together");
    let file = dir.join("input.txt");
    std::fs::write(&file, "a b c\n").unwrap();
    let (receiver, _) = exactly_once_sink();
    let out = receiver.addr();
    let (s1, s2, s3) = (dir.join("w1"), dir.join("w2"), dir.join("w3"));
    let mut w1 = coordinator(&file, &s1, "127.0.0.1:0", out);
    let lead = w1.addrs.control();
    let mut w2 = bare_member("w2", &s2, lead);
    let mut w3 = bare_member("w3", &s3, lead);
    let (code, answer, err) = ctl(lead, &["checkpoint"]);
    assert_eq!(code, Some(0), "{answer}{err}");
    for node in [&mut w1, &mut w2, &mut w3] {
        signal(&node.child, "-KILL");
        let _ = node.child.wait();
    }
    w1 = coordinator(&file, &s1, &lead.to_string(), out);
    let (s2b, s3b) = (s2.clone(), s3.clone());
    let starting = std::thread::spawn(move || bare_member("w2", &s2b, lead));
    w3 = bare_member("w3", &s3b, lead);
    w2 = starting.join().unwrap();
    let status = wait_status(lead, "the cluster is not whole", |s| !s.contains("WAITING"));
    assert!(
        status.contains("\nnode w2:") && status.contains("\nnode w3:"),
        "{status}"
    );
    signal(&w1.child, "-INT");
    w1.wait_exit_ok();
    w2.wait_exit_ok();
    w3.wait_exit_ok();
    let _ = std::fs::remove_dir_all(&dir);
}
