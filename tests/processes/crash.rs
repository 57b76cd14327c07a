//! Surviving a crash (issue 18): `quokka run --state-dir` killed with `kill -9` at random
//! moments and started again with the same command restores its newest complete checkpoint,
//! and its file source goes on from where that checkpoint stood; a corrupt checkpoint is
//! skipped for the one before; another app's state dir is refused by name.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quokka_io::client::Records;
use quokka_tests::harness::{load_text, Sink, DEADLINE};
use quokka_tests::reference::{reference_buckets, reference_counts};

use crate::{ctl, quokka, quokka_output, signal, Service};

/// A fresh directory for one test.
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quokka-crash-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `quokka run APP` on 2 cores reading `file` (lines, followed as it grows), checkpointing
/// into `state` every 20 ms, writing to `outs` (`--out` values), with `extra` arguments.
fn run_app(app: &str, file: &Path, state: &Path, outs: &[String]) -> Service {
    run_app_with(app, file, state, outs, &[])
}

pub(crate) fn run_app_with(
    app: &str,
    file: &Path,
    state: &Path,
    outs: &[String],
    extra: &[&str],
) -> Service {
    let mut cmd = Command::new(quokka());
    cmd.args(["run", app, "--follow", "--cores", "2"])
        .args(extra)
        .args(["--in", &format!("lines:{}", file.display())])
        .args(["--state-dir", &state.display().to_string()])
        .args(["--checkpoint-interval", "20ms", "--control", "127.0.0.1:0"]);
    for out in outs {
        cmd.args(["--out", out]);
    }
    Service::start(app, &mut cmd)
}

pub(crate) fn run_word_count(file: &Path, state: &Path, out: SocketAddr) -> Service {
    run_app("word_count", file, state, &[out.to_string()])
}

/// A small xorshift, seeded from the clock and printed, so a failure can be replayed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn seeded() -> Rng {
        let seed = std::env::var("QUOKKA_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("QUOKKA_TEST_SEED={seed}");
        Rng(seed)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Per word, the counts that reached the sink (over every connection of every run).
fn counts_seen(sink: &Sink) -> HashMap<String, Vec<u64>> {
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    // The last process exited: its sink connections end, and what they carried is all read.
    assert!(
        sink.collector.wait_closed(DEADLINE),
        "the sink's connections never ended"
    );
    for conn in sink.lines() {
        let mut last: HashMap<&str, u64> = HashMap::new();
        for line in &conn {
            let (word, count) = line.rsplit_once(" => ").expect("word => count");
            let count: u64 = count.parse().expect("a count");
            let before = last.insert(word, count).unwrap_or(0);
            assert!(
                count > before,
                "word {word:?}: {count} after {before} on one connection"
            );
            seen.entry(word.to_string()).or_default().push(count);
        }
    }
    seen
}

/// At-least-once across crashes: per word, every running total 1..=n reached the sink (none
/// skipped: no update was lost), none beyond n (none applied twice); a total may repeat (what
/// followed the last checkpoint before a crash is applied again after it).
pub(crate) fn check_replayed_totals(sink: &Sink, expected: &HashMap<String, u64>) -> usize {
    let seen = counts_seen(sink);
    let mut repeated = 0;
    for (word, &n) in expected {
        let mut counts = seen.get(word).cloned().unwrap_or_default();
        counts.sort_unstable();
        let total = counts.len();
        counts.dedup();
        repeated += total - counts.len();
        let want: Vec<u64> = (1..=n).collect();
        assert_eq!(counts, want, "word {word:?}: its running totals");
    }
    assert_eq!(seen.len(), expected.len(), "words the input does not have");
    repeated
}

/// Crashes before the last run.
const KILLS: usize = 6;

/// Appends `lines` to `file` in chunks, one every 20 ms: a log that grows while the engine
/// follows it (and crashes).
pub(crate) fn append_slowly(file: PathBuf, lines: Vec<String>) -> std::thread::JoinHandle<()> {
    std::fs::write(&file, "").unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        for chunk in lines.chunks(400) {
            f.write_all((chunk.join("\n") + "\n").as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Runs `app` over `lines` appended slowly to a file, killing it with `kill -9` [`KILLS`] times
/// at random moments and starting it again with the same command; the last run reads the
/// file to its end and stops cleanly.
/// With `changes`, each run also grows or shrinks by a core (in turn) while it runs, so kills
/// land during migrations too, and a restart restores whatever cores the checkpoint had.
fn crash_while_appending(
    app: &str,
    name: &str,
    lines: Vec<String>,
    outs: &[String],
    changes: bool,
) {
    crash_while_appending_with(app, name, lines, outs, changes, &[]);
}

/// Returns the last run's summary (what it printed at its exit).
fn crash_while_appending_with(
    app: &str,
    name: &str,
    lines: Vec<String>,
    outs: &[String],
    changes: bool,
    extra: &[&str],
) -> String {
    let dir = temp_dir(name);
    let file = dir.join("input.txt");
    let len: usize = lines.iter().map(|l| l.len() + 1).sum();
    let writer = append_slowly(file.clone(), lines);
    let state = dir.join("state");
    let mut rng = Rng::seeded();
    let mut changed = 0;
    for kill in 0..KILLS {
        let mut run = run_app_with(app, &file, &state, outs, extra);
        let change = changes.then(|| {
            let control = run.addrs.control();
            let change = if kill % 2 == 0 {
                "grow-cores"
            } else {
                "shrink-cores"
            };
            // Its answer does not matter: the kill may cut it.
            std::thread::spawn(move || ctl(control, &[change, "1"]))
        });
        // A random moment: starting, restoring, migrating, between checkpoints or during one.
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        // On a slow machine the file may be whole before the last kills: they still count
        // (a kill at any moment), but most must come while it grows.
        assert!(
            !writer.is_finished() || kill >= KILLS / 2,
            "only {kill} kills came while the file grew"
        );
        signal(&run.child, "-KILL");
        let _ = run.child.wait();
        if let Some(change) = change {
            let (code, _, _) = change.join().unwrap();
            changed += usize::from(code == Some(0));
        }
    }
    assert!(
        !changes || changed > 0,
        "no grow or shrink went through before its kill"
    );
    writer.join().unwrap();
    let mut run = run_app_with(app, &file, &state, outs, extra);
    let read_all = format!("read to byte {len}\n");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, status, _) = ctl(run.addrs.control(), &["status"]);
        assert!(
            status.contains("restored from checkpoint"),
            "the last run restored nothing:\n{status}"
        );
        if status.contains(&read_all) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the last run did not read the file:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&run.child, "-INT");
    run.wait_exit_ok();
    let _ = std::fs::remove_dir_all(&dir);
    run.rest_of_stdout()
}

#[test]
fn kill_9_at_random_moments_even_mid_migration_loses_no_state_and_applies_nothing_twice() {
    let lines: Vec<String> = load_text().into_iter().cycle().take(60_000).collect();
    let expected = reference_counts(lines.iter().map(String::as_str));
    let sink = Sink::start(Records::Lines);
    let outs = [sink.addr().to_string()];
    crash_while_appending("word_count", "kill", lines, &outs, true);
    let repeated = check_replayed_totals(&sink, &expected);
    eprintln!("{KILLS} kills; {repeated} outputs repeated after restarts");
}

#[test]
fn two_stages_come_back_whole_after_kill_9() {
    let lines: Vec<String> = load_text().into_iter().cycle().take(60_000).collect();
    let expected = reference_buckets(&reference_counts(lines.iter().map(String::as_str)));
    let sink = Sink::start(Records::Lines);
    let outs = [sink.addr().to_string()];
    crash_while_appending("word_buckets", "buckets", lines, &outs, true);
    check_replayed_totals(&sink, &expected);
}

#[test]
fn windows_and_their_timers_come_back_whole_after_kill_9() {
    // Event times rise 1 ms per line over 60 keys: 30 s of event time, 30 windows per key.
    let lines: Vec<String> = (0..30_000u64)
        .map(|i| format!("{} key{}", 1_000_000 + i, (i * 7919) % 60))
        .collect();
    let mut expected: HashMap<String, u64> = HashMap::new();
    for i in 0..30_000u64 {
        let (at, key) = (1_000_000 + i, (i * 7919) % 60);
        let start = at - at % 1000;
        *expected
            .entry(format!("key{key} [{start}, {}) => ", start + 1000))
            .or_default() += 1;
    }
    let expected: BTreeSet<String> = expected
        .into_iter()
        .map(|(w, n)| format!("{w}{n}"))
        .collect();
    let (counts, late) = (Sink::start(Records::Lines), Sink::start(Records::Lines));
    let outs = [
        format!("counts@{}", counts.addr()),
        format!("late@{}", late.addr()),
    ];
    crash_while_appending("window_counts", "windows", lines, &outs, true);
    // At least once: a window closed after the last checkpoint before a crash comes again,
    // with the same count; none is missing, none is wrong, none is late.
    let got: BTreeSet<String> = counts.lines().into_iter().flatten().collect();
    assert_eq!(got, expected);
    assert!(late.lines().iter().all(Vec::is_empty), "late lines");
}

#[test]
fn a_corrupt_newest_checkpoint_is_skipped_for_the_one_before() {
    let dir = temp_dir("corrupt");
    let file = dir.join("words.txt");
    std::fs::write(&file, "a b c\na b\na\n").unwrap();
    let state = dir.join("state");
    let sink = Sink::start(Records::Lines);
    let mut run = run_word_count(&file, &state, sink.addr());
    sink.wait_for(6);
    let control = run.addrs.control();
    for _ in 0..2 {
        let (code, out, err) = ctl(control, &["checkpoint"]);
        assert_eq!(code, Some(0), "{out}{err}");
    }
    signal(&run.child, "-KILL");
    let _ = run.child.wait();
    // Flip a byte of the newest manifest.
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "manifest"))
        .collect();
    manifests.sort();
    assert_eq!(manifests.len(), 2, "the newest two are kept: {manifests:?}");
    let newest = manifests.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(newest, bytes).unwrap();
    let older: u64 = manifests[0]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();

    let run = run_word_count(&file, &state, sink.addr());
    let (_, status, _) = ctl(run.addrs.control(), &["status"]);
    assert!(
        status.contains(&format!("restored from checkpoint {older} at start")),
        "{status}"
    );
    let log = run.log_text();
    assert!(log.contains("skipping checkpoint"), "{log}");
    // Restored, it has nothing more to read: no word goes past its total.
    let mut run = run;
    signal(&run.child, "-INT");
    run.wait_exit_ok();
    let expected: HashMap<String, u64> =
        [("a".to_string(), 3), ("b".into(), 2), ("c".into(), 1)].into();
    check_replayed_totals(&sink, &expected);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checkpoint numbers with a file of `kind` (`manifest`, `parts`) in `state`, in order.
fn numbered(state: &Path, kind: &str) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == kind))
        .map(|p| (p.file_stem().unwrap().to_str().unwrap().parse().unwrap(), p))
        .collect();
    found.sort();
    found
}

#[test]
fn a_checkpoint_whose_parts_are_cut_short_is_skipped_and_its_input_replayed() {
    let dir = temp_dir("cut");
    let file = dir.join("words.txt");
    append(&file, &["a b c".to_string()]);
    let state = dir.join("state");
    let sink = Sink::start(Records::Lines);
    let start = || {
        Service::start(
            "word_count",
            Command::new(quokka())
                .args(["run", "word_count", "--follow", "--control", "127.0.0.1:0"])
                .args(["--in", &format!("lines:{}", file.display())])
                .args(["--out", &sink.addr().to_string()])
                .args(["--state-dir", &state.display().to_string()])
                .args(["--checkpoint-interval", "0s"]),
        )
    };
    let mut run = start();
    let control = run.addrs.control();
    sink.wait_for(3);
    let (code, first, err) = ctl(control, &["checkpoint"]);
    assert_eq!(code, Some(0), "{first}{err}");
    // One more `a`: the next checkpoint writes a's slot again, into a parts file of its own.
    append(&file, &["a".to_string()]);
    sink.wait_for(4);
    let (code, out, err) = ctl(control, &["checkpoint"]);
    assert_eq!(code, Some(0), "{out}{err}");
    signal(&run.child, "-KILL");
    let _ = run.child.wait();
    let manifests = numbered(&state, "manifest");
    let (newest, parts) = numbered(&state, "parts").pop().unwrap();
    assert_eq!(
        newest,
        manifests.last().unwrap().0,
        "the newest wrote a parts file"
    );
    let len = std::fs::metadata(&parts).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&parts)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let mut run = start();
    let status = wait_status(run.addrs.control(), "not restored", |s| {
        s.contains("restored from checkpoint")
    });
    let older = manifests[0].0;
    assert!(
        status.contains(&format!("restored from checkpoint {older} at start")),
        "{status}"
    );
    // The `a` after the older checkpoint is read again: `a => 2` once more.
    sink.wait_for(5);
    signal(&run.child, "-INT");
    run.wait_exit_ok();
    let expected: HashMap<String, u64> =
        [("a".to_string(), 2), ("b".into(), 1), ("c".into(), 1)].into();
    assert_eq!(
        check_replayed_totals(&sink, &expected),
        1,
        "one output repeated"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts word count on `state`, which must be refused: its error output.
fn refused_state_dir(state: &Path) -> String {
    let out = quokka_output(&[
        "run",
        "word_count",
        "--in",
        "127.0.0.1:0",
        "--out",
        "127.0.0.1:1",
        "--control",
        "127.0.0.1:0",
        "--state-dir",
        &state.display().to_string(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

#[test]
fn a_state_dir_of_another_app_is_refused_by_name() {
    let dir = temp_dir("other");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("IDENTITY"), "app word_buckets, 4096 slots\n").unwrap();
    let err = refused_state_dir(&state);
    assert!(
        err.contains("word_buckets") && err.contains("not of app `word_count`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The status line of the last complete checkpoint's number, if any.
pub(crate) fn last_complete(status: &str) -> Option<u64> {
    let rest = status.split("last complete ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

/// Waits until `quokka ctl status` satisfies `ok`; returns that status.
pub(crate) fn wait_status(control: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, status, _) = ctl(control, &["status"]);
        if ok(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}:\n{status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Appends `lines` to `file` at once.
fn append(file: &Path, lines: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    f.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
}

/// A tmpfs of `size` mounted at `dir` for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mount a tmpfs (the tests run as root)");
        Tmpfs(dir.into())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_checkpoints_not_the_app_and_the_next_one_after_space_returns_succeeds() {
    let dir = temp_dir("full");
    let state = dir.join("state");
    let _tmpfs = Tmpfs::mount(&state, "8m");
    let file = dir.join("words.txt");
    let text = load_text();
    let (first, second) = text.split_at(text.len() / 2);
    append(&file, first);
    let sink = Sink::start(Records::Lines);
    let run = run_word_count(&file, &state, sink.addr());
    let control = run.addrs.control();
    let before = wait_status(control, "no checkpoint", |s| last_complete(s).is_some());
    let before = last_complete(&before).unwrap();

    // Fill the disk to the last byte.
    let filler = state.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..1]).is_ok() {}
    }
    append(&file, second);
    let failed = wait_status(control, "no checkpoint failed", |s| {
        s.contains("LAST CHECKPOINT FAILED") && s.contains("No space left on device")
    });
    // The app runs on: every word of the second half is counted.
    let expected = reference_counts(text.iter().map(String::as_str));
    let total: u64 = expected.values().sum();
    sink.wait_for(total);
    let stuck = last_complete(&failed).unwrap();
    assert!(stuck >= before, "{failed}");

    std::fs::remove_file(&filler).unwrap();
    let recovered = wait_status(control, "no checkpoint after space returned", |s| {
        !s.contains("FAILED") && last_complete(s).is_some_and(|n| n > stuck)
    });
    drop(recovered);
    // What the state dir holds now restores everything.
    let mut run = run;
    signal(&run.child, "-KILL");
    let _ = run.child.wait();
    let sink_after = Sink::start(Records::Lines);
    let mut again = run_word_count(&file, &state, sink_after.addr());
    let status = wait_status(again.addrs.control(), "not restored", |s| {
        s.contains("restored from checkpoint")
    });
    let (word, n) = expected.iter().max_by_key(|(_, n)| **n).unwrap();
    append(&file, std::slice::from_ref(word));
    sink_after.wait_for(1);
    let want = format!("{word} => {}", n + 1);
    assert_eq!(sink_after.lines().concat(), vec![want], "{status}");
    signal(&again.child, "-INT");
    again.wait_exit_ok();
    check_replayed_totals(&sink, &expected);
}

/// An exactly-once receiver in the test: every record each commit releases, in order.
pub(crate) fn exactly_once_sink() -> (quokka_io::exactly_once::Receiver, Arc<Mutex<Vec<String>>>) {
    exactly_once_sink_at("127.0.0.1")
}

/// [`exactly_once_sink`] listening on `host`.
pub(crate) fn exactly_once_sink_at(
    host: &str,
) -> (quokka_io::exactly_once::Receiver, Arc<Mutex<Vec<String>>>) {
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let into = got.clone();
    let listener = std::net::TcpListener::bind((host, 0)).unwrap();
    let receiver = quokka_io::exactly_once::Receiver::start(listener, move |records| {
        let mut got = into.lock().unwrap();
        for r in records {
            let line = String::from_utf8(r).expect("UTF-8 output");
            got.push(line.trim_end_matches('\n').to_string());
        }
    })
    .unwrap();
    (receiver, got)
}

/// Waits until the receiver applied the commit of the checkpoint the summary names last.
pub(crate) fn wait_committed(receiver: &quokka_io::exactly_once::Receiver, summary: &str) {
    let last: u64 = summary
        .split("checkpoint ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no final checkpoint in the summary:\n{summary}"));
    let deadline = Instant::now() + DEADLINE;
    while receiver.committed() < last {
        assert!(Instant::now() < deadline, "commit {last} never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Exactly once: per key, the running totals 1..=n, each once (a key's outputs may come
/// through several cores' connections when its slot moved, so their order across them is
/// not checked here).
pub(crate) fn check_exact_totals(lines: &[String], expected: &HashMap<String, u64>) {
    let mut seen: HashMap<&str, Vec<u64>> = HashMap::new();
    for line in lines {
        let (key, n) = line.rsplit_once(" => ").expect("key => count");
        seen.entry(key)
            .or_default()
            .push(n.parse().expect("a count"));
    }
    for (key, &n) in expected {
        let mut counts = seen.remove(key.as_str()).unwrap_or_default();
        counts.sort_unstable();
        assert_eq!(counts, (1..=n).collect::<Vec<_>>(), "key {key:?}");
    }
    assert!(
        seen.is_empty(),
        "keys the input does not have: {:?}",
        seen.keys().take(5).collect::<Vec<_>>()
    );
}

#[test]
fn exactly_once_outputs_survive_kill_9_even_mid_migration_each_once() {
    let lines: Vec<String> = load_text().into_iter().cycle().take(40_000).collect();
    let expected = reference_counts(lines.iter().map(String::as_str));
    let (receiver, got) = exactly_once_sink();
    let outs = [receiver.addr().to_string()];
    let extra = ["--guarantee", "exactly-once"];
    let summary = crash_while_appending_with("word_count", "eo", lines, &outs, true, &extra);
    wait_committed(&receiver, &summary);
    check_exact_totals(&got.lock().unwrap(), &expected);
}

#[test]
fn exactly_once_two_stages_survive_kill_9_each_output_once() {
    let lines: Vec<String> = load_text().into_iter().cycle().take(60_000).collect();
    let expected = reference_buckets(&reference_counts(lines.iter().map(String::as_str)));
    let (receiver, got) = exactly_once_sink();
    let outs = [receiver.addr().to_string()];
    let extra = ["--guarantee", "exactly-once"];
    let summary =
        crash_while_appending_with("word_buckets", "eo-buckets", lines, &outs, false, &extra);
    wait_committed(&receiver, &summary);
    check_exact_totals(&got.lock().unwrap(), &expected);
}

#[test]
fn durable_senders_and_exactly_once_outputs_survive_kill_9_each_output_once() {
    let dir = temp_dir("durable");
    let state = dir.join("state");
    let text = load_text();
    let (a, b) = text.split_at(text.len() / 2);
    let mut inputs = Vec::new();
    for (name, lines) in [("a", a), ("b", b)] {
        let lines: Vec<String> = lines.iter().cycle().take(15_000).cloned().collect();
        let path = dir.join(format!("{name}.txt"));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        inputs.push((name, path, lines));
    }
    let expected = reference_counts(
        inputs
            .iter()
            .flat_map(|(_, _, l)| l.iter().map(String::as_str)),
    );
    let (receiver, got) = exactly_once_sink();
    let run = |port: &str| {
        Service::start(
            "word_count",
            Command::new(quokka())
                .args([
                    "run",
                    "word_count",
                    "--cores",
                    "2",
                    "--control",
                    "127.0.0.1:0",
                ])
                .args(["--in", port, "--out", &receiver.addr().to_string()])
                .args(["--state-dir", &state.display().to_string()])
                .args([
                    "--checkpoint-interval",
                    "20ms",
                    "--guarantee",
                    "exactly-once",
                ]),
        )
    };
    // The first run picks the source port; every restart listens on it again (the senders
    // reconnect there).
    let mut engine = run("127.0.0.1:0");
    let port = engine.addrs.input();
    let senders: Vec<_> = inputs
        .iter()
        .map(|(name, path, _)| {
            crate::Proc::spawn(
                Command::new(crate::tool("quokka-send"))
                    .args(["--to", &port.to_string(), "--lines", "--durable", name])
                    .args(["--rate", "2500", "--connect-timeout", "60"])
                    .arg("--file")
                    .arg(path)
                    .stdout(std::process::Stdio::piped()),
            )
        })
        .collect();
    let mut rng = Rng::seeded();
    // 20 crashes under load: while checkpointing, restoring, replaying, acknowledging.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50 + rng.below(300)));
        signal(&engine.child, "-KILL");
        let _ = engine.child.wait();
        engine = run(&port.to_string());
    }
    for sender in senders {
        let out = sender.into_child().wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "a durable sender failed: {text}");
        assert!(text.contains("all durable"), "{text}");
    }
    signal(&engine.child, "-INT");
    engine.wait_exit_ok();
    let summary = engine.rest_of_stdout();
    wait_committed(&receiver, &summary);
    check_exact_totals(&got.lock().unwrap(), &expected);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_directory_that_is_not_a_state_dir_and_not_empty_is_refused_and_left_alone() {
    let dir = temp_dir("foreign");
    let state = dir.join("notes");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("draft.tmp"), "precious").unwrap();
    let err = refused_state_dir(&state);
    assert!(
        err.contains("is not a state dir") && err.contains("draft.tmp"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("draft.tmp")).unwrap(),
        "precious"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_exactly_once_engine_stops_within_its_drain_timeout_when_the_sink_never_answers() {
    let dir = temp_dir("mute");
    // A sink that accepts and reads, and never answers a hello (not an exactly-once receiver).
    let mute = Sink::start(Records::Lines);
    let file = dir.join("words.txt");
    append(&file, &["a b c".to_string()]);
    let mut run = Service::start(
        "word_count",
        Command::new(quokka())
            .args(["run", "word_count", "--control", "127.0.0.1:0"])
            .args(["--in", &format!("lines:{}", file.display())])
            .args(["--out", &mute.addr().to_string(), "--drain-timeout", "2"])
            .args(["--state-dir", &dir.join("state").display().to_string()])
            .args(["--guarantee", "exactly-once", "--checkpoint-interval", "0s"]),
    );
    let status = wait_status(run.addrs.control(), "the sink is not shown down", |s| {
        s.contains("down (")
    });
    assert!(status.contains("none complete yet"), "{status}");
    let asked = Instant::now();
    signal(&run.child, "-INT");
    run.wait_exit_uncrashed();
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "the stop took {:?}",
        asked.elapsed()
    );
    let log = run.log_text();
    assert!(log.contains("is it an exactly-once receiver"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
