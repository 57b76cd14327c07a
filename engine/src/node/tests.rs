//! Peer input is checked once, where it is decoded: messages from an authenticated peer that
//! name slots beyond the cluster, or a plan for another slot count, are refused over a real link
//! and the engine keeps its state and its output exact.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quokka_io::client::{Collector, FrameSender, Records};

use crate::app::{App, DecodeError};
use crate::archive::SlotArchive;
use crate::cluster::wire::{self, Wire};
use crate::migration::ChangePlan;
use crate::node::Engine;
use crate::routing::{Move, RoutingTable};
use crate::runtime::messages::PeerMsg;
use crate::runtime::Config;
use crate::store::SlotEntities;

fn count_words() -> App {
    App::source("text", |frame: &[u8]| {
        std::str::from_utf8(frame)
            .map(str::to_owned)
            .map_err(|_| DecodeError::new("not UTF-8"))
    })
    .key_by(|word: &String| word.as_bytes())
    .stateful(|count: &mut u64, word: String, out| {
        *count += 1;
        out.emit(format!("{word} {count}"));
    })
    .sink(|line: &String, bytes: &mut Vec<u8>| {
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    })
    .named("count_words")
}

fn send(to: SocketAddr, words: &[&str]) {
    let mut sender = FrameSender::connect(to, Duration::from_secs(10)).unwrap();
    for w in words {
        sender.send(w.as_bytes()).unwrap();
    }
    sender.finish().unwrap();
}

#[test]
fn peer_messages_naming_foreign_slots_are_refused_not_panicked_on() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let collected = lines.clone();
    let sink = Collector::start(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        Records::Lines,
        move |_, record| {
            let line = String::from_utf8_lossy(record).into_owned();
            collected.lock().unwrap().push(line);
        },
    )
    .unwrap();
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], sink.addr());
    config.cores = 2;
    config.n_slots = 64;
    let engine = Engine::start(&count_words(), config).unwrap();
    send(engine.input_addrs()[0], &["a", "b"]);
    assert!(sink.wait_for(2, Duration::from_secs(30)));

    // An authenticated peer (no token is set) sends what would index past a core's tables.
    let archive = |slot| SlotArchive::write::<u64>(slot, &SlotEntities::default()).unwrap();
    let other_cluster = RoutingTable::uniform(8, 2);
    let hostile = [
        PeerMsg::Handoff {
            from: 1,
            archives: vec![archive(64)],
        },
        PeerMsg::HandoffAck { slots: vec![64] },
        PeerMsg::HandoffRejected {
            slot: 1000,
            reason: String::new(),
        },
        PeerMsg::Prepare(ChangePlan::new(
            &other_cluster,
            vec![vec![Move {
                slot: 7,
                from: 1,
                to: 0,
            }]],
            vec![0, 1],
        )),
    ];
    let mut link = TcpStream::connect(engine.data_addr()).unwrap();
    link.write_all(&wire::hello_frame("w9", "")).unwrap();
    for msg in hostile {
        for to in [0, 1] {
            let mut frame = Vec::new();
            let msg = Wire::Core {
                to,
                msg: msg.clone(),
            };
            wire::write(&mut frame, &msg).unwrap();
            link.write_all(&frame).unwrap();
        }
    }
    let mut bye = Vec::new();
    wire::write(&mut bye, &Wire::Bye).unwrap();
    link.write_all(&bye).unwrap();
    drop(link);

    // Every core is alive, owns what it owned, and counts on exactly.
    send(engine.input_addrs()[0], &["a", "b", "a"]);
    assert!(sink.wait_for(5, Duration::from_secs(30)));
    let status = engine.status();
    assert_eq!(status.cores.len(), 2, "{status}");
    assert_eq!(status.cores.iter().map(|c| c.slots).sum::<usize>(), 64);
    let report = engine.grow(1).expect("a change still works");
    assert_eq!(report.cores_after, 3);
    let summary = engine.stop();
    assert_eq!(summary.misrouted(), 0);
    let mut got = lines.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, ["a 1", "a 2", "a 3", "b 1", "b 2"]);
}
