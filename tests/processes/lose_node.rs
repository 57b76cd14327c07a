//! Losing a node while the cluster runs (issue 19), each node in a network namespace of its
//! own (the two-at-once test on loopback). `kill -9` of a member under load: the coordinator
//! restores its slots from the last durable checkpoint onto the surviving cores, every
//! replayable source rewinds to that checkpoint and replays to the restored slots only, and an
//! exactly-once receiver ends up with every output once. A member killed mid-change; the
//! coordinator killed and started again, its members joining it by themselves.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use quokka_io::client::Records;
use quokka_tests::harness::{load_text, Sink};
use quokka_tests::reference::{reference_buckets, reference_counts};

use crate::cluster_crash::{
    bare_member, coordinator, coordinator_on, durable_sender, member_on, Inputs, Setup,
};
use crate::crash::{
    append_slowly, check_exact_totals, exactly_once_sink, exactly_once_sink_at, temp_dir,
    wait_committed, wait_status,
};
use crate::net::{Namespaces, Net};
use crate::{ctl, signal};

/// Waits until every input is in: the durable sender done, and the followed file appended
/// whole and read to its end (`len` bytes) by the coordinator at `lead`.
fn all_inputs_in(
    sender: crate::Proc,
    writer: std::thread::JoinHandle<()>,
    lead: std::net::SocketAddr,
    len: usize,
) {
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
}

/// Stops the cluster from its coordinator `w1` (a last checkpoint releases every output),
/// waits for it and every member to exit 0, and checks that the receiver got each output once.
fn stop_and_check_exact(
    w1: &mut crate::Service,
    members: &mut [&mut crate::Service],
    (receiver, got): (
        &quokka_io::exactly_once::Receiver,
        &std::sync::Mutex<Vec<String>>,
    ),
    expected: &HashMap<String, u64>,
) {
    signal(&w1.child, "-INT");
    w1.wait_exit_ok();
    for m in members {
        m.wait_exit_ok();
    }
    wait_committed(receiver, &w1.rest_of_stdout());
    check_exact_totals(&got.lock().unwrap(), expected);
}

/// Three network namespaces, one per node (the test drives them over a bridge).
fn three_hosts() -> Namespaces {
    Namespaces::create(3).unwrap_or_else(|e| {
        panic!("cannot create network namespaces for this test (it needs root and iproute2): {e}")
    })
}

/// The three nodes of a test under load, each on its host of `setup.net`: w1 (coordinator)
/// follows `file`, w2 takes a durable stream of `sent` (its sender is returned), w3 only
/// holds slots; outputs go to `out`.
fn three_nodes(
    setup: &Setup,
    dir: &std::path::Path,
    file: &std::path::Path,
    sent: &std::path::Path,
    out: std::net::SocketAddr,
) -> (crate::Service, crate::Service, crate::Service, crate::Proc) {
    let net = setup.net;
    let w1 = coordinator_on(setup, file, &dir.join("w1"), &any_port(net, 0), out);
    let lead = w1.addrs.control();
    let w2_in = ["--in", &any_port(net, 1)];
    let w2 = member_on(setup, 1, "w2", &dir.join("w2"), &w2_in, lead);
    let sender = durable_sender(w2.addrs.input(), sent);
    let w3 = member_on(setup, 2, "w3", &dir.join("w3"), &[], lead);
    (w1, w2, w3, sender)
}

/// Any port on node `i`'s host.
fn any_port(net: &dyn Net, i: usize) -> String {
    format!("{}:0", net.host(i))
}

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
    let Inputs {
        file_lines,
        expected,
        file,
        len,
        sent,
    } = Inputs::new(&dir);
    let net = three_hosts();
    let (receiver, got) = exactly_once_sink_at(&net.sink_host());
    let out = receiver.addr();

    // w1 follows a growing file, w2 takes a durable stream, w3 only holds slots.
    let writer = append_slowly(file.clone(), file_lines);
    let setup = Setup {
        net: &net,
        app: "word_count",
        guarantee: "exactly-once",
        args: &[],
    };
    let (mut w1, mut w2, mut w3, sender) = three_nodes(&setup, &dir, &file, &sent, out);
    let lead = w1.addrs.control();
    // Under load, with checkpoints taken every 30 ms (so a kill often lands in one): w3 goes,
    // its slots come back on w1 and w2; a replacement joins under the same name, takes slots
    // back, and goes too; three times.
    for round in 0..3 {
        // A checkpoint that holds w3's part (one completed after it joined).
        let joined = crate::crash::last_complete(&ctl(lead, &["status"]).1).unwrap_or(0);
        wait_status(lead, "no checkpoint with w3", |s| {
            s.contains("\nnode w3:") && crate::crash::last_complete(s) > Some(joined + 1)
        });
        std::thread::sleep(Duration::from_millis(200 + 150 * round));
        let before = p99s(lead);
        signal(&w3.child, "-KILL");
        let killed = Instant::now();
        let _ = w3.child.wait();
        let mut during = Vec::new();
        loop {
            let (_, json, _) = ctl(lead, &["status", "--json"]);
            during.push(p99s(lead));
            let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let r = &v["recovery"];
            // This round's recovery: begun after the kill.
            let ours = (r["since_ms"].as_u64())
                .is_some_and(|ms| ms <= killed.elapsed().as_millis() as u64);
            assert!(!ours || r["failed"].is_null(), "{json}");
            if ours && r["took_ms"].is_u64() {
                assert_eq!(v["lost"], serde_json::json!([]), "{json}");
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "no recovery:\n{json}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "round {round}: recovered {:?} after the kill; survivors' p99 (ns) before: {before:?}; during: {during:?}",
            killed.elapsed()
        );
        let status = ctl(lead, &["status"]).1;
        assert!(
            !status.contains("\nnode w3:"),
            "w3 is still a member:\n{status}"
        );
        // A replacement joins under the same name, on a fresh state dir, and takes slots.
        let _ = std::fs::remove_dir_all(dir.join("w3"));
        w3 = member_on(&setup, 2, "w3", &dir.join("w3"), &[], lead);
    }
    all_inputs_in(sender, writer, lead, len);
    stop_and_check_exact(
        &mut w1,
        &mut [&mut w2, &mut w3],
        (&receiver, &got),
        &expected,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_members_killed_at_once_are_recovered_together_each_output_once() {
    let dir = temp_dir("lose-two");
    let lines: Vec<String> = load_text().into_iter().cycle().take(30_000).collect();
    let expected = reference_counts(lines.iter().map(String::as_str));
    let file = dir.join("input.txt");
    let len: usize = lines.iter().map(|l| l.len() + 1).sum();
    let (receiver, got) = exactly_once_sink();
    let writer = append_slowly(file.clone(), lines);
    let mut w1 = coordinator(&file, &dir.join("w1"), "127.0.0.1:0", receiver.addr());
    let lead = w1.addrs.control();
    let mut w3 = bare_member("w3", &dir.join("w3"), lead);
    let mut w4 = bare_member("w4", &dir.join("w4"), lead);
    wait_status(lead, "no checkpoint with w3 and w4", |s| {
        s.contains("\nnode w4:") && crate::crash::last_complete(s) > Some(3)
    });
    // Neither is planned onto the other's cores.
    signal(&w3.child, "-KILL");
    signal(&w4.child, "-KILL");
    let _ = (w3.child.wait(), w4.child.wait());
    let status = wait_status(lead, "w3 and w4 were not recovered", |s| {
        !s.contains("LOST") && !s.contains("\nnode w3:") && !s.contains("\nnode w4:")
    });
    assert!(!status.contains("recovery FAILED"), "{status}");
    writer.join().unwrap();
    wait_status(lead, "w1 did not read its file", |s| {
        s.contains(&format!("read to byte {len}\n"))
    });
    stop_and_check_exact(&mut w1, &mut [], (&receiver, &got), &expected);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Losing the coordinator: `kill -9` of it under load, then the same command again. Its
/// members, still running, stop their cores and join it again by themselves; the cluster
/// restores its last checkpoint as a whole and every output comes once.
#[test]
fn a_coordinator_killed_and_started_again_gets_its_members_back_each_output_once() {
    let dir = temp_dir("lose-coordinator");
    let Inputs {
        file_lines,
        expected,
        file,
        len,
        sent,
    } = Inputs::new(&dir);
    let net = three_hosts();
    let (receiver, got) = exactly_once_sink_at(&net.sink_host());
    let out = receiver.addr();
    let writer = append_slowly(file.clone(), file_lines);
    let setup = Setup {
        net: &net,
        app: "word_count",
        guarantee: "exactly-once",
        args: &[],
    };
    let (mut w1, mut w2, mut w3, sender) = three_nodes(&setup, &dir, &file, &sent, out);
    let (lead, s1) = (w1.addrs.control(), dir.join("w1"));
    for round in 0..2 {
        let before = crate::crash::last_complete(&ctl(lead, &["status"]).1).unwrap_or(0);
        wait_status(lead, "no checkpoint with w2 and w3", |s| {
            s.contains("\nnode w3:") && crate::crash::last_complete(s) > Some(before + 1)
        });
        std::thread::sleep(Duration::from_millis(150 + 200 * round));
        signal(&w1.child, "-KILL");
        let _ = w1.child.wait();
        w1 = coordinator_on(&setup, &file, &s1, &lead.to_string(), out);
        let status = wait_status(lead, "w2 and w3 did not come back", |s| {
            s.contains("\nnode w2:") && s.contains("\nnode w3:") && !s.contains("WAITING")
        });
        assert!(status.contains("restored from checkpoint"), "{status}");
        for member in [&mut w2, &mut w3] {
            assert!(
                member.child.try_wait().unwrap().is_none(),
                "a member exited:\n{}",
                member.log_text()
            );
        }
    }
    for member in [&w2, &w3] {
        let log = member.log_text();
        assert_eq!(
            log.matches("joined the coordinator again").count(),
            2,
            "{log}"
        );
    }
    all_inputs_in(sender, writer, lead, len);
    stop_and_check_exact(
        &mut w1,
        &mut [&mut w2, &mut w3],
        (&receiver, &got),
        &expected,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A member killed while a change moves slots (the coordinator shrinking or growing, so the
/// killed node gives, takes and produces in the change): the change ends early, the survivors
/// finish its switched steps without the lost node, and the recovery restores what it held or
/// was handing off. Rounds go on until one kill lands after some steps were switched.
/// At-least-once: nothing is lost (outputs of slots moved between the lost node and a survivor
/// since the checkpoint may repeat).
#[test]
fn a_member_killed_during_a_migration_comes_back_losing_nothing() {
    killed_mid_change(false);
}

/// [`a_member_killed_during_a_migration_comes_back_losing_nothing`] with exactly-once outputs:
/// when slots moved between the lost node and the survivors since the checkpoint, the whole
/// cluster goes back to it instead; every output comes once.
#[test]
fn a_member_killed_during_a_migration_comes_back_each_output_once() {
    killed_mid_change(true);
}

fn killed_mid_change(exactly_once: bool) {
    let dir = temp_dir(if exactly_once {
        "mid-change-eo"
    } else {
        "mid-change"
    });
    let Inputs {
        file_lines,
        expected,
        file,
        len,
        sent,
    } = Inputs::new(&dir);
    let net = three_hosts();
    let sink = Sink::on(
        std::net::TcpListener::bind((net.sink_host().as_str(), 0)).unwrap(),
        Records::Lines,
    );
    let (receiver, got) = exactly_once_sink_at(&net.sink_host());
    let (out, guarantee) = if exactly_once {
        (receiver.addr(), "exactly-once")
    } else {
        (sink.addr(), "at-least-once")
    };
    let writer = append_slowly(file.clone(), file_lines);
    // Four times the slots: a change takes four times the steps, long enough to kill into.
    let setup = Setup {
        net: &net,
        app: "word_count",
        guarantee,
        args: &["--slots", "16384"],
    };
    let (mut w1, mut w2, mut w3, sender) = three_nodes(&setup, &dir, &file, &sent, out);
    let lead = w1.addrs.control();
    let cut_with_switched_steps = |log: &str| {
        (log.lines())
            .filter_map(|l| {
                l.split_once("change ended early after ")?
                    .1
                    .split(' ')
                    .next()
            })
            .filter(|n| n.parse::<u32>().is_ok_and(|n| n > 0))
            .count()
    };
    let mut rounds = 0;
    while cut_with_switched_steps(&w1.log_text()) == 0 {
        assert!(rounds < 12, "no kill landed mid-change:\n{}", w1.log_text());
        let before = crate::crash::last_complete(&ctl(lead, &["status"]).1).unwrap_or(0);
        wait_status(lead, "no checkpoint with w3", |s| {
            s.contains("\nnode w3:") && crate::crash::last_complete(s) > Some(before + 1)
        });
        let change = if rounds % 2 == 0 {
            "shrink-cores"
        } else {
            "grow-cores"
        };
        let changing = std::thread::spawn(move || ctl(lead, &[change, "1"]));
        // Killed once the change has switched a step or more (or is over).
        let asked = Instant::now();
        while asked.elapsed() < Duration::from_secs(2) && !changing.is_finished() {
            let (_, json, _) = ctl(lead, &["status", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            if v["migration"]["steps_done"].as_u64() > Some(rounds % 3) {
                break;
            }
        }
        signal(&w3.child, "-KILL");
        let _ = w3.child.wait();
        let (_, said, err) = changing.join().unwrap();
        println!("round {rounds}: {change}: {said}{err}");
        // Recovered, or (exactly-once, slots moved across) the whole cluster went back.
        let status = wait_status(lead, "w3 was not recovered", |s| {
            !s.contains("LOST")
                && !s.contains("\nnode w3:")
                && !s.contains("WAITING")
                && (s.contains("recovered node") || s.contains("restored from checkpoint"))
        });
        assert!(!status.contains("recovery FAILED"), "{status}");
        let _ = std::fs::remove_dir_all(dir.join("w3"));
        w3 = member_on(&setup, 2, "w3", &dir.join("w3"), &[], lead);
        rounds += 1;
    }
    all_inputs_in(sender, writer, lead, len);
    let log = w1.log_text();
    for line in log
        .lines()
        .filter(|l| l.contains("ended early") || l.contains("recovered"))
    {
        println!("w1: {line}");
    }
    // A slot in a cut step is dropped where it was or was going, not misrouted.
    assert!(!log.contains("does not own"), "{log}");
    if exactly_once {
        stop_and_check_exact(
            &mut w1,
            &mut [&mut w2, &mut w3],
            (&receiver, &got),
            &expected,
        );
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    signal(&w1.child, "-INT");
    w1.wait_exit_ok();
    w2.wait_exit_ok();
    w3.wait_exit_ok();
    // Every running total 1..=n of every word reached the sink, none beyond n.
    let seen = || {
        let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
        for line in sink.lines().into_iter().flatten() {
            let (word, n) = line.rsplit_once(" => ").expect("word => count");
            seen.entry(word.into())
                .or_default()
                .push(n.parse().expect("a count"));
        }
        for counts in seen.values_mut() {
            counts.sort_unstable();
            counts.dedup();
        }
        seen
    };
    let want: HashMap<String, Vec<u64>> = (expected.iter())
        .map(|(w, &n)| (w.clone(), (1..=n).collect()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen() != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = seen();
    for (word, counts) in &want {
        assert_eq!(seen.get(word), Some(counts), "word {word:?}");
    }
    assert_eq!(seen.len(), want.len(), "words the input does not have");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An app of two keyed stages (word_buckets): a member killed under load cannot come back
/// alone (a survivor's first stage would not send its restored second-stage slots again what
/// it sent the lost node), so the whole cluster goes back to its last checkpoint by itself:
/// the coordinator starts again running the lost member's cores, the other member joins it
/// again, and every output comes once.
#[test]
fn a_member_of_a_two_stage_app_killed_rolls_the_cluster_back_each_output_once() {
    let dir = temp_dir("lose-two-stages");
    let Inputs {
        file_lines,
        expected,
        file,
        len,
        sent,
    } = Inputs::new(&dir);
    let expected = reference_buckets(&expected);
    let net = three_hosts();
    let setup = Setup {
        net: &net,
        app: "word_buckets",
        guarantee: "exactly-once",
        args: &[],
    };
    let (receiver, got) = exactly_once_sink_at(&net.sink_host());
    let writer = append_slowly(file.clone(), file_lines);
    let (mut w1, mut w2, mut w3, sender) = three_nodes(&setup, &dir, &file, &sent, receiver.addr());
    let lead = w1.addrs.control();
    let before = crate::crash::last_complete(&ctl(lead, &["status"]).1).unwrap_or(0);
    wait_status(lead, "no checkpoint with w3", |s| {
        s.contains("\nnode w3:") && crate::crash::last_complete(s) > Some(before + 1)
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(&w3.child, "-KILL");
    let _ = w3.child.wait();
    let status = wait_status(lead, "the cluster did not come back", |s| {
        s.contains("restored from checkpoint")
            && s.contains("\nnode w2:")
            && !s.contains("WAITING")
            && !s.contains("LOST")
    });
    assert!(!status.contains("\nnode w3:"), "{status}");
    for node in [&mut w1, &mut w2] {
        assert!(
            node.child.try_wait().unwrap().is_none(),
            "a node exited:\n{}",
            node.log_text()
        );
    }
    let log = w1.log_text();
    assert!(log.contains("running the cores [3] of node w3"), "{log}");
    assert!(w2.log_text().contains("joined the coordinator again"));
    all_inputs_in(sender, writer, lead, len);
    stop_and_check_exact(&mut w1, &mut [&mut w2], (&receiver, &got), &expected);
    let _ = std::fs::remove_dir_all(&dir);
}
