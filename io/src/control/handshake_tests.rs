//! Tests of the control conversation over real loopback sockets: the greeting, what a client
//! does (and does not send) when the peer is not an endpoint, and the endpoint's bounds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::framing;

/// How long a test waits for something that must happen.
const PATIENCE: Duration = Duration::from_secs(30);

fn short(greeting: Duration, answer: Duration) -> Timeouts {
    Timeouts {
        connect: Timeouts::CONNECT,
        greeting,
        answer,
    }
}

/// A peer on port 0 that accepts one connection, writes `first`, optionally closes its
/// sending side, then returns every byte it received until the client went away.
fn fake_peer(first: Vec<u8>, close: bool) -> (SocketAddr, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_nodelay(true).unwrap();
        for byte in &first {
            // One byte per write: the client must assemble a greeting split across reads. It
            // may hang up before the last one (garbage): then stop writing.
            if stream.write_all(std::slice::from_ref(byte)).is_err() {
                break;
            }
        }
        if close {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        got
    });
    (addr, peer)
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    framing::encode_frame(payload, &mut out);
    out
}

fn connect_err(addr: SocketAddr, timeouts: Timeouts) -> ControlError {
    match Client::connect(addr, timeouts) {
        Ok(_) => panic!("{addr} was taken for a control endpoint"),
        Err(e) => e,
    }
}

#[test]
fn a_silent_peer_is_not_an_endpoint_and_hears_nothing() {
    let (addr, peer) = fake_peer(Vec::new(), false);
    let started = Instant::now();
    let e = connect_err(addr, short(Duration::from_millis(300), PATIENCE));
    let waited = started.elapsed();
    assert!(
        matches!(
            e,
            ControlError::NotAnEndpoint {
                why: NoGreeting::Silent(_),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!("{addr} is not a Quokka control endpoint (no greeting within 300ms)")
    );
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < PATIENCE, "{waited:?}");
    assert_eq!(peer.join().unwrap(), b"", "the client sent nothing");
}

#[test]
fn a_peer_that_sends_something_else_or_closes_hears_nothing() {
    let cases: [(Vec<u8>, bool, NoGreeting); 4] = [
        (
            b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
            false,
            NoGreeting::Garbage,
        ),
        (framed(b"hello"), false, NoGreeting::Garbage),
        (vec![0, 0], true, NoGreeting::Garbage),
        (Vec::new(), true, NoGreeting::Closed),
    ];
    for (first, close, why) in cases {
        let (addr, peer) = fake_peer(first.clone(), close);
        let e = connect_err(addr, short(PATIENCE, PATIENCE));
        assert!(
            matches!(&e, ControlError::NotAnEndpoint { why: w, .. } if *w == why),
            "{first:?}: {e:?}"
        );
        assert_eq!(
            peer.join().unwrap(),
            b"",
            "{first:?}: the client sent nothing"
        );
    }
}

#[test]
fn another_version_or_a_refusal_is_said_so_and_hears_nothing() {
    for (greeting, expect) in [
        (b"QK\x02\x80".to_vec(), "version 2 is not supported"),
        (b"QK\x04\x80".to_vec(), "version 4 is not supported"),
        (
            Greeting::Refused("too busy".into()).encode(),
            "refused the connection: too busy",
        ),
    ] {
        let (addr, peer) = fake_peer(framed(&greeting), false);
        let e = connect_err(addr, short(PATIENCE, PATIENCE)).to_string();
        assert!(e.contains(expect), "{e}");
        assert_eq!(peer.join().unwrap(), b"", "the client sent nothing");
    }
}

#[test]
fn a_greeting_split_across_reads_lets_the_request_through() {
    let (addr, peer) = fake_peer(framed(&Greeting::Ready.encode()), true);
    let mut client = Client::connect(addr, short(PATIENCE, PATIENCE)).unwrap();
    // The peer closed after its greeting: no answer, but the request went out whole.
    let e = client.request("s3cret", &Request::Status).unwrap_err();
    assert!(matches!(e, ControlError::Closed(Step::Answer)), "{e:?}");
    drop(client);
    let sent = peer.join().unwrap();
    assert_eq!(sent, framed(&Request::Status.encode("s3cret").unwrap()));
}

/// An endpoint on port 0 whose handler reports what its session saw.
fn endpoint(limits: Limits, handle: impl Fn(Session) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    serve(listener, limits, handle).unwrap();
    addr
}

#[test]
fn requests_and_a_conversation_are_answered() {
    let addr = endpoint(Limits::default(), |mut s| {
        let first = s.request().unwrap();
        let answer = match first.request {
            Request::Join(body) => Response::Welcome(body),
            other => Response::Ok(format!("{other:?} with {}", first.token)),
        };
        s.answer(&answer).unwrap();
        if let Ok(next) = s.next_request(Step::Ready, PATIENCE) {
            s.answer(&Response::Ok(format!("then {:?}", next.request)))
                .unwrap();
        }
    });
    let mut client = Client::connect(addr, Timeouts::default()).unwrap();
    assert_eq!(
        client.request("tok", &Request::GrowCores(2)).unwrap(),
        Response::Ok("GrowCores(2) with tok".into())
    );
    let mut joiner = Client::connect(addr, Timeouts::default()).unwrap();
    assert_eq!(
        joiner.request("tok", &Request::Join(vec![1, 2])).unwrap(),
        Response::Welcome(vec![1, 2])
    );
    assert_eq!(
        joiner.request("tok", &Request::Ready).unwrap(),
        Response::Ok("then Ready".into())
    );
}

#[test]
fn the_whole_request_has_one_deadline_however_slowly_it_trickles() {
    let (tx, rx) = mpsc::channel();
    let limits = Limits {
        request: Duration::from_millis(400),
        ..Limits::default()
    };
    let addr = endpoint(limits, move |mut s| {
        let _ = tx.send(s.request());
    });
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_nodelay(true).unwrap();
    let greeting = framing::read_frame(&mut slow, MAX_CONTROL_FRAME).unwrap();
    assert_eq!(greeting, Some(Greeting::Ready.encode()));
    // A header announcing 100 bytes, then one byte every 100 ms: each read is quick, the
    // request never completes before the trickle would have lasted 5 s.
    let trickle = std::thread::spawn(move || {
        let _ = slow.write_all(&[0, 0, 0, 100]);
        for _ in 0..50 {
            if slow.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let started = Instant::now();
    let result = rx
        .recv_timeout(Duration::from_secs(4))
        .expect("the endpoint gave up before the trickle ended");
    match result {
        Err(e @ ControlError::Timeout { .. }) => {
            assert_eq!(e.to_string(), "no request within 400ms")
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    trickle.join().unwrap();
}

#[test]
fn an_idle_connection_times_out_as_such() {
    let (tx, rx) = mpsc::channel();
    let limits = Limits {
        request: Duration::from_millis(200),
        ..Limits::default()
    };
    let addr = endpoint(limits, move |mut s| {
        let _ = tx.send(s.request().map_err(|e| e.to_string()));
    });
    let _idle = Client::connect(addr, Timeouts::default()).unwrap();
    assert_eq!(
        rx.recv_timeout(PATIENCE).unwrap(),
        Err("no request within 200ms".into())
    );
}

#[test]
fn an_answer_that_does_not_come_is_a_timeout() {
    let (hold_tx, hold_rx) = mpsc::channel::<()>();
    let hold = std::sync::Mutex::new(hold_rx);
    let addr = endpoint(Limits::default(), move |mut s| {
        let _ = s.request();
        // Never answers; returns when the test ends.
        let _ = hold.lock().unwrap().recv();
    });
    let mut client = Client::connect(addr, short(PATIENCE, Duration::from_millis(300))).unwrap();
    let e = client.request("", &Request::GrowCores(1)).unwrap_err();
    assert_eq!(e.to_string(), "no answer within 300ms");
    // One request of a conversation may have its own deadline.
    let mut client = Client::connect(addr, Timeouts::default()).unwrap();
    let e = client
        .request_within("", &Request::Ready, Duration::from_millis(200))
        .unwrap_err();
    assert_eq!(e.to_string(), "no answer within 200ms");
    drop(hold_tx);
}

#[test]
fn connections_beyond_the_limit_are_refused_without_a_thread_and_served_again_later() {
    let limits = Limits {
        connections: 2,
        ..Limits::default()
    };
    let addr = endpoint(limits, |mut s| {
        // Serves until the peer hangs up (or the default 10 s request deadline).
        if let Ok(envelope) = s.request() {
            let _ = s.answer(&Response::Ok(format!("{:?}", envelope.request)));
        }
    });
    let idle: Vec<Client> = (0..2)
        .map(|_| Client::connect(addr, Timeouts::default()).unwrap())
        .collect();
    let e = connect_err(addr, Timeouts::default());
    assert!(
        matches!(&e, ControlError::Refused { reason, .. } if reason.contains("too many control connections (2 being served)")),
        "{e:?}"
    );
    drop(idle);
    // The handlers see the hang-ups and free their places.
    let deadline = Instant::now() + PATIENCE;
    let answer = loop {
        match Client::connect(addr, Timeouts::default()) {
            Ok(mut c) => break c.request("", &Request::Status).unwrap(),
            Err(ControlError::Refused { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(answer, Response::Ok("Status".into()));
}

#[test]
fn an_old_client_that_speaks_first_is_refused_by_version() {
    let (tx, rx) = mpsc::channel();
    let addr = endpoint(Limits::default(), move |mut s| {
        let _ = tx.send(s.request().map_err(|e| e.to_string()));
    });
    // A version 2 client sends at once, then takes the first frame for its answer.
    let mut old = TcpStream::connect(addr).unwrap();
    old.write_all(&framed(b"QK\x02\x01\x00")).unwrap();
    assert_eq!(
        rx.recv_timeout(PATIENCE).unwrap(),
        Err("control protocol version 2 is not supported (this build speaks 3)".into())
    );
    let first = framing::read_frame(&mut old, MAX_CONTROL_FRAME)
        .unwrap()
        .unwrap();
    // The greeting: magic, then version 3 where a version 2 client checks its own, so it
    // says "control protocol version 3 is not supported (this build speaks 2)".
    assert_eq!(first, Greeting::Ready.encode());
    assert_eq!(&first[..3], b"QK\x03");
}
