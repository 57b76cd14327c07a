//! Issue 14 (4) and (7): a change never waits forever. A node that joins and then does not
//! answer (stalled, or gone before any slot moved) is called off at the change timeout and
//! rolled back: status shows no change in progress and no lost node, later changes work, and
//! the output stays exact.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use quokka_apps::word_count;
use quokka_engine::cluster::wire::{self, JoinRequest};
use quokka_engine::{ChangeError, Config, Engine};
use quokka_io::client::Records;
use quokka_io::control::{Client, Request, Response, Timeouts};

use crate::fixtures::BILL_OF_RIGHTS;
use crate::harness::{init_logging, send_again_stop_and_check, send_frames, Coordinator, Sink};

/// A node that asks to join, says it is ready, and then never answers a core message: its data
/// port admits every link (answers the hello) and then reads nothing more.
struct SilentJoiner {
    control: Client,
}

/// Admits the links to `data` and keeps them open, silent, for as long as the test runs.
fn admit_and_stay_silent(data: TcpListener) {
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for mut link in data.incoming().flatten() {
            let mut header = [0u8; 4];
            if link.read_exact(&mut header).is_err() {
                continue;
            }
            let mut hello = vec![0; u32::from_be_bytes(header) as usize];
            if link.read_exact(&mut hello).is_ok() {
                let _ = link.write_all(&wire::admitted_frame());
                open.push(link);
            }
        }
    });
}

impl SilentJoiner {
    fn join(control: SocketAddr, cores: u16) -> SilentJoiner {
        let data = TcpListener::bind("127.0.0.1:0").unwrap();
        let request = JoinRequest {
            version: wire::VERSION,
            node: "silent".into(),
            app: "word_count".into(),
            n_slots: Config::DEFAULT_SLOTS,
            cores,
            data_addr: data.local_addr().unwrap().to_string(),
            state_dir: false,
            state_path: String::new(),
            http: String::new(),
        };
        let mut client = Client::connect(control, Timeouts::default()).unwrap();
        let join = Request::Join(wire::encode_join(&request));
        match client.request("", &join).unwrap() {
            Response::Welcome(body) => {
                wire::decode_welcome(&body).unwrap();
            }
            other => panic!("not welcomed: {other:?}"),
        }
        admit_and_stay_silent(data);
        SilentJoiner { control: client }
    }

    /// Says it is ready; returns the coordinator's final word on the join.
    fn ready(mut self) -> Response {
        self.control
            .request_within("", &Request::Ready, Duration::from_secs(60))
            .unwrap()
    }
}

#[test]
fn a_join_whose_node_never_answers_is_called_off_and_rolled_back() {
    init_logging();
    let sink = Sink::start(Records::Lines);
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], sink.addr());
    config.cores = 1;
    config.change_timeout = Duration::from_secs(1);
    let lead = Coordinator::serve(Engine::start(&word_count::app(), config).unwrap()).unwrap();
    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    send_frames(lead.engine.input_addrs()[0], &frames);

    let asked = Instant::now();
    let answer = SilentJoiner::join(lead.control, 2).ready();
    let waited = asked.elapsed();
    assert!(
        matches!(&answer, Response::Error(e) if e.contains("gave up waiting for cores to prepare")),
        "{answer:?}"
    );
    assert!(
        waited < Duration::from_secs(30),
        "the join held on {waited:?}"
    );

    // Rolled back: one node, its one core owns every slot, nothing in progress, nothing lost.
    let status = lead.engine.status();
    assert_eq!(status.nodes.len(), 1, "{status}");
    assert!(status.migration.is_none(), "{status}");
    assert!(status.lost.is_empty(), "{status}");
    assert_eq!(status.cores.len(), 1, "{status}");
    assert_eq!(status.cores[0].slots, 4096, "{status}");

    // Changes work again, and no word was counted twice or lost.
    let report = lead.engine.grow(1).expect("a grow after the rollback");
    assert_eq!(report.cores_after, 2);
    send_again_stop_and_check(&lead.engine, &sink, &lines);
}

/// While a change waits for a node that does not answer, a second change is refused as busy
/// (not queued); once the first one is called off, changes run again.
#[test]
fn a_stalled_change_ends_at_its_timeout_and_frees_the_change_lock() {
    init_logging();
    let sink = Sink::start(Records::Lines);
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], sink.addr());
    config.cores = 1;
    // Long enough for `status`, which waits up to 2 s for the silent node, to see the change.
    config.change_timeout = Duration::from_secs(8);
    let lead = Coordinator::serve(Engine::start(&word_count::app(), config).unwrap()).unwrap();
    let control = lead.control;
    let joiner = std::thread::spawn(move || SilentJoiner::join(control, 1).ready());
    // The join's change shows in status while it waits; meanwhile another change is refused.
    let deadline = Instant::now() + Duration::from_secs(60);
    while lead.engine.status().migration.is_none() {
        assert!(
            Instant::now() < deadline,
            "the join never started moving slots"
        );
        std::thread::yield_now();
    }
    let busy = lead.engine.grow(1);
    assert!(matches!(busy, Err(ChangeError::Busy { .. })), "{busy:?}");
    let answer = joiner.join().unwrap();
    assert!(matches!(answer, Response::Error(_)), "{answer:?}");
    let report = lead.engine.grow(1).expect("the lock is free again");
    assert_eq!(report.cores_after, 2);
    lead.engine.stop();
}
