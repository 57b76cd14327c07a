//! Losing a member while the cluster runs (issue 19): `kill -9` of a member under load; the
//! coordinator restores its slots from the last durable checkpoint onto the surviving cores,
//! every replayable source rewinds to that checkpoint and replays to the restored slots only,
//! and an exactly-once receiver ends up with every output once, as if nothing had happened.

use std::process::Command;
use std::time::{Duration, Instant};

use quokka_tests::harness::load_text;
use quokka_tests::reference::reference_counts;

use crate::cluster_crash::{bare_member, coordinator, member_named};
use crate::crash::{
    append_slowly, check_exact_totals, exactly_once_sink, temp_dir, wait_committed, wait_status,
};
use crate::{ctl, signal};

/// The survivors' p99 source-to-sink latency (ns) per core, as `status --json` shows it.
fn p99s(lead: std::net::SocketAddr) -> Vec<(String, u64)> {
    let (_, json, _) = ctl(lead, &["status", "--json"]);
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) else {
        return Vec::new();
    };
    (v["cores"].as_array().into_iter().flatten())
        .filter_map(|c| {
            let p99 = c["latency_p99_ns"].as_u64()?;
            Some((format!("{}/{}", c["node"].as_str()?, c["core"]), p99))
        })
        .collect()
}

#[test]
fn a_member_killed_under_load_comes_back_on_the_survivors_each_output_once() {
    let dir = temp_dir("lose-node");
    let text = load_text();
    let (a, b) = text.split_at(text.len() / 2);
    let file_lines: Vec<String> = a.iter().cycle().take(40_000).cloned().collect();
    let sent_lines: Vec<String> = b.iter().cycle().take(15_000).cloned().collect();
    let expected = reference_counts((file_lines.iter()).chain(&sent_lines).map(String::as_str));
    let file = dir.join("input.txt");
    let len: usize = file_lines.iter().map(|l| l.len() + 1).sum();
    let sent = dir.join("sent.txt");
    std::fs::write(&sent, sent_lines.join("\n") + "\n").unwrap();
    let (receiver, got) = exactly_once_sink();
    let out = receiver.addr();

    // w1 follows a growing file, w2 takes a durable stream, w3 only holds slots.
    let writer = append_slowly(file.clone(), file_lines);
    let mut w1 = coordinator(&file, &dir.join("w1"), "127.0.0.1:0", out);
    let lead = w1.addrs.control();
    let mut w2 = member_named("w2", &dir.join("w2"), &["--in", "127.0.0.1:0"], lead);
    let input = w2.addrs.input();
    let mut w3 = bare_member("w3", &dir.join("w3"), lead);
    let sender = crate::Proc::spawn(
        Command::new(crate::tool("quokka-send"))
            .args(["--to", &input.to_string(), "--lines", "--durable", "b"])
            .args(["--rate", "3000", "--connect-timeout", "60"])
            .arg("--file")
            .arg(&sent)
            .stdout(std::process::Stdio::piped()),
    );
    // Under load, with checkpoints taken: w3 goes.
    wait_status(lead, "no checkpoint with w3", |s| {
        s.contains("w3") && crate::crash::last_complete(s).is_some_and(|n| n > 3)
    });
    std::thread::sleep(Duration::from_millis(300));
    let before = p99s(lead);
    signal(&w3.child, "-KILL");
    let killed = Instant::now();
    let _ = w3.child.wait();
    let mut during = Vec::new();
    let status = loop {
        let (_, status, _) = ctl(lead, &["status"]);
        during.push(p99s(lead));
        if status.contains("recovered node w3") {
            break status;
        }
        assert!(!status.contains("recovery FAILED"), "{status}");
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no recovery:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "recovered {:?} after the kill; survivors' p99 before: {before:?}; during: {during:?}",
        killed.elapsed()
    );
    assert!(!status.contains("LOST"), "{status}");
    assert!(
        !status.contains("\nnode w3:"),
        "w3 is still a member:\n{status}"
    );

    let said = sender.into_child().wait_with_output().unwrap();
    let said_out = String::from_utf8_lossy(&said.stdout);
    assert!(
        said.status.success(),
        "the durable sender failed: {said_out}"
    );
    writer.join().unwrap();
    wait_status(lead, "w1 did not read its file", |s| {
        s.contains(&format!("read to byte {len}\n"))
    });
    signal(&w1.child, "-INT");
    w1.wait_exit_ok();
    w2.wait_exit_ok();
    let summary = w1.rest_of_stdout();
    wait_committed(&receiver, &summary);
    check_exact_totals(&got.lock().unwrap(), &expected);
    let _ = std::fs::remove_dir_all(&dir);
}
