//! What a node refuses to grow to: a typed error, said clearly, and nothing changed (issue 14
//! (9)).

use quokka_apps::word_count;
use quokka_engine::{ChangeError, Config};
use quokka_io::client::Records;

use crate::fixtures::BILL_OF_RIGHTS;
use crate::harness::Running;
use crate::reference::{check_running_totals, reference_counts};

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
