//! What a node refuses to start with or grow to: settings that cannot work are typed errors,
//! said clearly, and a refused grow changes nothing (issue 14 (5), (9), (11)).

use quokka_apps::word_count;
use quokka_engine::{ChangeError, Config, Engine, StartError};
use quokka_io::client::Records;

use crate::fixtures::BILL_OF_RIGHTS;
use crate::harness::{init_logging, Running};
use crate::reference::{check_running_totals, reference_counts};

/// Starts word count on one core with `tune` applied to its configuration.
fn start(tune: impl FnOnce(&mut Config)) -> Result<Engine, StartError> {
    init_logging();
    let sink = "127.0.0.1:1".parse().unwrap();
    let mut config = Config::new(vec!["127.0.0.1:0".parse().unwrap()], sink);
    config.cores = 1;
    tune(&mut config);
    Engine::start(&word_count::app(), config)
}

fn refused(result: Result<Engine, StartError>) -> StartError {
    match result {
        Ok(engine) => {
            engine.stop();
            panic!("the engine started")
        }
        Err(e) => e,
    }
}

/// Issue 14 (5): with a sink buffer of 0 bytes a core never applies a batch (its buffer is
/// always full), so a node started so could not even stop; it is refused.
#[test]
fn a_sink_buffer_of_zero_bytes_is_refused() {
    let e = refused(start(|c| c.sink_buffer = 0));
    assert!(matches!(e, StartError::SinkBufferZero), "{e}");
    assert!(e.to_string().contains("--sink-buffer"), "{e}");
    let engine = start(|c| c.sink_buffer = 1).expect("one byte is enough");
    assert_eq!(engine.stop().undelivered(), 0);
}

/// Issue 14 (9): more cores than a node may run, or more slots than a cluster may have, are
/// refused before anything starts, naming the limit.
#[test]
fn cores_or_slots_past_the_limits_are_refused() {
    let (max_cores, max_slots) = (Config::MAX_CORES, Config::MAX_SLOTS);
    for asked in [0, max_cores + 1, 65536, usize::MAX] {
        let e = refused(start(|c| c.cores = asked));
        assert!(
            matches!(e, StartError::Cores { asked: a, limit } if a == asked && limit == max_cores),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("1 to {max_cores}")), "{e}");
    }
    for asked in [0, max_slots + 1, u32::MAX] {
        let e = refused(start(|c| c.n_slots = asked));
        assert!(
            matches!(e, StartError::Slots { asked: a, limit } if a == asked && limit == max_slots),
            "{e}"
        );
    }
    let engine = start(|c| c.n_slots = max_slots).expect("the limit itself starts");
    assert_eq!(engine.status().n_slots, max_slots);
    engine.stop();
}

/// Issue 14 (11): a CPU that is not online is refused before any executor starts, naming the
/// CPUs there are (it failed in glommio, blamed on locked memory).
#[test]
fn cpus_that_are_not_online_are_refused_naming_the_online_ones() {
    let e = refused(start(|c| c.cpus = vec![0, 1 << 20]));
    assert!(
        matches!(&e, StartError::Cpu { cpu, online } if *cpu == 1 << 20 && online.starts_with('0')),
        "{e}"
    );
    let text = e.to_string();
    assert!(text.contains("CPU 1048576 is not online"), "{text}");
    assert!(!text.contains("locked memory"), "{text}");
}

/// Issue 14 (9): a grow past the cores a node may run is refused (`grow-cores 65533` got the
/// engine OOM-killed) and changes nothing; a grow within the limit then works, and the output
/// stays exact.
#[test]
fn a_grow_past_the_cores_a_node_runs_is_refused_and_changes_nothing() {
    let run = Running::start(&word_count::app(), 1, Records::Lines);
    let lines: Vec<&str> = BILL_OF_RIGHTS.lines().collect();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    run.send(0, &frames);
    let max = Config::MAX_CORES;
    for by in [max, 65533, usize::MAX] {
        let e = run.engine.grow(by).unwrap_err();
        assert!(
            matches!(e, ChangeError::CoresPerNode { cores: 1, by: b, limit, .. } if b == by && limit == max),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains(&format!("limit of {max} cores per node")),
            "{e}"
        );
    }
    let status = run.engine.status();
    assert_eq!(status.cores.len(), 1, "{status}");
    assert_eq!((status.epoch, status.retired), (0, 0), "{status}");

    let report = run.engine.grow(1).expect("a grow within the limit");
    assert_eq!((report.cores_before, report.cores_after), (1, 2));
    let status = run.engine.status();
    let cores: Vec<u16> = status.cores.iter().map(|c| c.core).collect();
    assert_eq!(cores, [0, 1], "{status}");
    run.send(0, &frames);
    let doubled: Vec<&str> = lines.iter().chain(&lines).copied().collect();
    let expected = reference_counts(doubled.iter().copied());
    run.sink.wait_for(expected.values().sum());
    let (summary, sink) = run.stop();
    assert_eq!(summary.misrouted(), 0);
    check_running_totals(&sink.lines(), &expected);
}
