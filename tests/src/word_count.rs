//! Word count end to end: whole outputs against the reference, on 1 and 2 cores.

use std::net::TcpListener;
use std::time::Instant;

use quokka_apps::corpus::{self, CorpusSpec};
use quokka_apps::word_count;
use quokka_io::client::Records;

use crate::fixtures::BILL_OF_RIGHTS;
use crate::harness::{send_frames, Running, Sink, DEADLINE};
use crate::reference::{check_running_totals, reference_counts};

fn bill_of_rights_on(cores: usize) {
    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let expected = reference_counts(lines.iter().copied());
    let total: u64 = expected.values().sum();
    let run = Running::start(&word_count::app(), cores, Records::Lines);
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    run.send(0, &frames);
    run.sink.wait_for(total);
    let (summary, sink) = run.stop();
    check_running_totals(&sink.lines(), &expected);
    assert_eq!(summary.frames(), lines.len() as u64);
    assert_eq!(summary.outputs(), total);
    assert_eq!(summary.entities(), expected.len() as u64);
    assert_eq!(summary.undelivered(), 0);
}

#[test]
fn bill_of_rights_one_core() {
    bill_of_rights_on(1);
}

#[test]
fn bill_of_rights_two_cores() {
    bill_of_rights_on(2);
}

/// A million Zipf words with over 50,000 distinct ones, over four concurrent connections.
fn generated_corpus_on(cores: usize) {
    let lines = corpus::lines(CorpusSpec::default());
    let expected = reference_counts(lines.iter().map(String::as_str));
    let total: u64 = expected.values().sum();
    assert!(
        total >= 1_000_000 && expected.len() >= 50_000,
        "{total} words, {} distinct",
        expected.len()
    );

    let run = Running::start(&word_count::app(), cores, Records::Lines);
    let input = run.input(0);
    std::thread::scope(|s| {
        for part in lines.chunks(lines.len().div_ceil(4)) {
            s.spawn(move || {
                let frames: Vec<&[u8]> = part.iter().map(|l| l.as_bytes()).collect();
                send_frames(input, &frames);
            });
        }
    });
    run.sink.wait_for(total);
    let (summary, sink) = run.stop();
    check_running_totals(&sink.lines(), &expected);
    assert_eq!(summary.outputs(), total);
    assert_eq!(summary.frames(), lines.len() as u64);
    if cores > 1 {
        let busy = summary.cores.iter().filter(|c| c.entities > 0).count();
        assert_eq!(busy, cores, "every core owns some words");
    }
}

#[test]
fn generated_corpus_one_core() {
    generated_corpus_on(1);
}

#[test]
fn generated_corpus_two_cores() {
    generated_corpus_on(2);
}

/// The sink is not listening when outputs start: the engine retries and delivers everything.
#[test]
fn sink_that_comes_up_late_gets_every_output() {
    // Bound but not listening: connections are refused until it listens, and no other test
    // can take the port meanwhile (a dropped listener's port could be handed out again).
    let reserved =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    reserved
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let sink_addr = reserved.local_addr().unwrap().as_socket().unwrap();
    let app = word_count::app();
    let mut config = quokka_engine::Config::new(vec!["127.0.0.1:0".parse().unwrap()], sink_addr);
    config.cores = 2;
    let engine = quokka_engine::Engine::start(&app, config).unwrap();
    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    send_frames(engine.input_addrs()[0], &frames);
    // Every core has outputs and has been refused by the sink before it listens.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = engine.status();
        let refused = |c: &quokka_engine::metrics::CoreStatus| c.sink_down && c.sink_failures > 0;
        if status.cores.len() == 2 && status.cores.iter().all(refused) {
            assert!(status.to_string().contains("down ("), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refused sink attempt seen:\n{status}"
        );
    }

    reserved.listen(128).unwrap();
    let sink = Sink::on(TcpListener::from(reserved), Records::Lines);
    let expected = reference_counts(lines.iter().copied());
    sink.wait_for(expected.values().sum());
    let status = engine.status();
    assert!(status.cores.iter().all(|c| !c.sink_down), "{status}");
    let summary = engine.stop();
    check_running_totals(&sink.lines(), &expected);
    assert_eq!(summary.undelivered(), 0);
    assert!(
        summary
            .to_string()
            .contains("failed connection attempts to the sink"),
        "{summary}"
    );
}
