//! Bad source connections: each is closed with a log line, every complete frame before the
//! fault is processed, and every other connection's output stays exact.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use quokka_apps::corpus::SplitMix64;
use quokka_apps::word_count;
use quokka_io::client::{connect_retry, Records};
use quokka_io::framing::encode_frame;

use crate::harness::{Running, DEADLINE};
use crate::reference::{check_running_totals, reference_counts};

const GOOD: &[&str] = &["the quick brown fox", "jumps over the lazy dog", "The End."];

fn framed(lines: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        encode_frame(l.as_bytes(), &mut out);
    }
    out
}

fn good_frames() -> Vec<&'static [u8]> {
    GOOD.iter().map(|l| l.as_bytes()).collect()
}

/// Runs a bad connection that sends `bad` bytes (its first `complete` lines are whole frames)
/// alongside a good one, and checks the whole output.
fn bad_connection_case(bad: Vec<u8>, complete: &[&str]) {
    let run = Running::start_with(&word_count::app(), Records::Lines, |c| {
        c.cores = 2;
        c.max_frame = 1000;
    });
    let mut stream = connect_retry(run.input(0), DEADLINE).unwrap();
    stream.write_all(&bad).unwrap();
    drop(stream);
    run.send(0, &good_frames());
    let expected = reference_counts(GOOD.iter().chain(complete).copied());
    run.sink.wait_for(expected.values().sum());
    let (summary, sink) = run.stop();
    check_running_totals(&sink.lines(), &expected);
    assert_eq!(
        summary.connection_errors(),
        1,
        "the bad connection is reported"
    );
}

#[test]
fn oversized_frame_closes_only_its_connection() {
    let mut bad = framed(&["before the big one"]);
    encode_frame(&[b'x'; 5000], &mut bad);
    bad.extend(framed(&["never read"]));
    bad_connection_case(bad, &["before the big one"]);
}

#[test]
fn truncated_frame_at_end_of_stream() {
    let mut bad = framed(&["whole frame", "another whole frame"]);
    bad.extend_from_slice(&100u32.to_be_bytes());
    bad.extend_from_slice(b"only ten b");
    bad_connection_case(bad, &["whole frame", "another whole frame"]);
}

#[test]
fn random_bytes() {
    let mut rng = SplitMix64::new(7);
    let mut bad: Vec<u8> = (0..10_000).map(|_| rng.next_u64() as u8).collect();
    bad[0] = 0xff; // the first length is then far beyond max_frame
    bad_connection_case(bad, &[]);
}

#[test]
fn invalid_utf8_is_rejected_by_the_decoder() {
    let mut bad = framed(&["valid line"]);
    encode_frame(&[0xc3, 0x28, b' ', b'x'], &mut bad);
    bad_connection_case(bad, &["valid line"]);
}

/// A client that sends half a frame and stalls holds up nobody, and does not block shutdown.
/// Issue 14 (11): at shutdown the engine itself cuts the connection, so the half frame is not
/// the client's fault: the connection counts as cut by this node, not as closed on an error.
#[test]
fn a_half_frame_cut_at_stop_is_counted_as_cut_not_as_an_error() {
    let run = Running::start(&word_count::app(), 2, Records::Lines);
    let mut stalled = connect_retry(run.input(0), DEADLINE).unwrap();
    let mut bytes = framed(&["stalled client line"]);
    bytes.extend_from_slice(&framed(&["never finished"])[..9]);
    stalled.write_all(&bytes).unwrap();

    run.send(0, &good_frames());
    let expected = reference_counts(GOOD.iter().chain(&["stalled client line"]).copied());
    run.sink.wait_for(expected.values().sum());
    let (summary, sink) = run.stop(); // returns although `stalled` is still open
    check_running_totals(&sink.lines(), &expected);
    assert_eq!(summary.connection_errors(), 0, "{summary}");
    assert_eq!(summary.connections_cut(), 1, "{summary}");
    assert!(
        summary.to_string().contains("1 cut by this node"),
        "{summary}"
    );
    drop(stalled);
}

/// A client that resets its connection mid-frame: what it sent whole is counted, others go on.
#[test]
fn abrupt_disconnect_mid_stream() {
    let run = Running::start(&word_count::app(), 2, Records::Lines);
    let first: Vec<String> = (0..2000)
        .map(|i| format!("reset client line {i}"))
        .collect();
    let first_refs: Vec<&str> = first.iter().map(String::as_str).collect();
    let mut client = connect_retry(run.input(0), DEADLINE).unwrap();
    client.write_all(&framed(&first_refs)).unwrap();
    let sent = reference_counts(first_refs.iter().copied());
    run.sink.wait_for(sent.values().sum());
    client.write_all(&framed(&["cut off here"])[..7]).unwrap();
    reset(client);

    run.send(0, &good_frames());
    let expected = reference_counts(first_refs.iter().chain(GOOD).copied());
    run.sink.wait_for(expected.values().sum());
    let (summary, sink) = run.stop();
    check_running_totals(&sink.lines(), &expected);
    assert_eq!(summary.connection_errors(), 1);
}

/// Closes with a TCP reset instead of a clean end of stream.
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}
