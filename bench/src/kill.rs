//! `quokka-bench cluster --kill`: three nodes as processes on this machine (w1 on CPU 0, w2 and
//! w3 sharing CPU 1), a million words in state, a followed file at a steady rate; then
//! `kill -9` of w3. Measured: from the kill to its slots serving again (the coordinator's
//! recovery done) and to caught up (the file source past where it was, no source replaying);
//! the survivors' latency (per core, over each second, from `status --json`) before and
//! during; outputs per second over 100 ms windows after it.
//! Against the same with a whole-cluster restart from the same checkpoint (every node killed
//! and started again with its command).

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quokka_apps::corpus::{self, vocab_word, CorpusSpec};
use quokka_io::client::Collector;

use crate::util::{client_collector, median};

/// A `quokka run` process and its control address.
struct Node {
    child: Child,
    control: Option<SocketAddr>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn quokka() -> Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name("quokka");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p quokka)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Starts `quokka run word_count` with `args`; waits for its `listening` line.
fn start(args: &[String], log: &Path) -> Result<Node> {
    let mut child = Command::new(quokka()?)
        .args(["run", "word_count"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let out = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line)?;
    let control = (line.split_whitespace())
        .find_map(|w| w.strip_prefix("control="))
        .and_then(|a| a.parse().ok());
    if !line.starts_with("listening") {
        bail!("a node did not start: {line}; see {}", log.display());
    }
    Ok(Node { child, control })
}

fn status(control: SocketAddr) -> serde_json::Value {
    let out = Command::new(quokka().expect("checked"))
        .args(["ctl", "--control", &control.to_string(), "status", "--json"])
        .output();
    out.ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default()
}

/// The survivors' (w1's and w2's) highest p99.9 (ns) over the last second, if any output.
fn survivors_p999(s: &serde_json::Value) -> Option<u64> {
    (s["cores"].as_array()?.iter())
        .filter(|c| c["node"] != "w3")
        .filter_map(|c| c["latency_p999_ns"].as_u64())
        .max()
}

fn replaying(s: &serde_json::Value) -> bool {
    (s["cores"].as_array().into_iter().flatten()).any(|c| c["replaying"] == true)
}

/// Where w1's file source stands (byte offset).
fn file_offset(s: &serde_json::Value) -> Option<u64> {
    (s["cores"].as_array()?.iter())
        .flat_map(|c| c["files"].as_array().into_iter().flatten())
        .find_map(|f| f["offset"].as_u64())
}

/// Appends `lines` to `file` at `rate` lines/s until `stop`.
fn append(file: PathBuf, lines: Vec<String>, rate: f64, stop: Arc<AtomicBool>) -> Result<u64> {
    let mut f = std::fs::OpenOptions::new().append(true).open(&file)?;
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Acquire) {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        let mut chunk = String::new();
        while sent < due {
            chunk += &lines[sent as usize % lines.len()];
            chunk.push('\n');
            sent += 1;
        }
        f.write_all(chunk.as_bytes())?;
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(sent)
}

/// One run's numbers.
struct Run {
    serving_ms: f64,
    caught_up_ms: f64,
    steady_p999: u64,
    during_p999: u64,
    /// Outputs per second: steady, and in the lowest 100 ms after the kill.
    steady_rate: f64,
    dip_rate: f64,
}

pub fn run(runs: usize, distinct: usize, rate: f64) -> Result<()> {
    println!("# three nodes as processes: w1 on CPU 0, w2 and w3 on CPU 1; {distinct} words in state; {rate:.0} words/s; {runs} runs");
    let load = corpus::lines(CorpusSpec {
        words: 2_000_000,
        ..CorpusSpec::default()
    });
    let per_line =
        load.iter().map(|l| l.split(' ').count()).sum::<usize>() as f64 / load.len() as f64;
    for whole in [false, true] {
        let mut results = Vec::new();
        for _ in 0..runs {
            results.push(one(distinct, rate / per_line, &load, whole)?);
        }
        let pick = |f: fn(&Run) -> f64| median(&results.iter().map(f).collect::<Vec<_>>());
        let what = if whole {
            "whole-cluster restart from the checkpoint"
        } else {
            "one node lost, its slots recovered on the survivors"
        };
        println!(
            "{what}: serving again after {:.0} ms, caught up after {:.0} ms (medians; runs: {}); \
             survivors' worst p99.9 per second: steady {:.1} ms, in the 3 s after the kill {:.1} ms; \
             outputs/s steady {:.0}, in the lowest 100 ms after {:.0}",
            pick(|r| r.serving_ms),
            pick(|r| r.caught_up_ms),
            (results.iter())
                .map(|r| format!("{:.0}/{:.0}", r.serving_ms, r.caught_up_ms))
                .collect::<Vec<_>>()
                .join(", "),
            pick(|r| r.steady_p999 as f64) / 1e6,
            pick(|r| r.during_p999 as f64) / 1e6,
            pick(|r| r.steady_rate),
            pick(|r| r.dip_rate),
        );
    }
    Ok(())
}

fn one(distinct: usize, lines_per_sec: f64, load: &[String], whole: bool) -> Result<Run> {
    let dir = std::env::temp_dir().join(format!("quokka-bench-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("input.txt");
    let words: Vec<String> = (0..distinct).map(vocab_word).collect();
    let fill: Vec<String> = words.chunks(12).map(|c| c.join(" ")).collect();
    std::fs::write(&file, fill.join("\n") + "\n")?;
    let collector: Collector = client_collector()?;
    let out = collector.addr().to_string();
    let s = |x: &str| x.to_string();
    let lead_args = |control: &str| {
        let input = format!("lines:{}", file.display());
        vec![
            s("--name"),
            s("w1"),
            s("--cores"),
            s("1"),
            s("--cpus"),
            s("0"),
            s("--in"),
            input,
            s("--follow"),
            s("--control"),
            s(control),
            s("--data"),
            s("127.0.0.1:0"),
            s("--out"),
            out.clone(),
            s("--state-dir"),
            dir.join("w1").display().to_string(),
            s("--checkpoint-interval"),
            s("1s"),
        ]
    };
    let member_args = |name: &str, lead: SocketAddr| {
        vec![
            s("--name"),
            s(name),
            s("--cores"),
            s("1"),
            s("--cpus"),
            s("1"),
            s("--data"),
            s("127.0.0.1:0"),
            s("--join"),
            lead.to_string(),
            s("--state-dir"),
            dir.join(name).display().to_string(),
        ]
    };
    let mut w1 = start(&lead_args("127.0.0.1:0"), &dir.join("w1.log"))?;
    let lead = w1.control.context("w1's control address")?;
    let mut w2 = start(&member_args("w2", lead), &dir.join("w2.log"))?;
    let mut w3 = start(&member_args("w3", lead), &dir.join("w3.log"))?;
    if !collector.wait_for(distinct as u64, Duration::from_secs(300)) {
        bail!("state did not fill: {} outputs", collector.records());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (file, lines, stop) = (file.clone(), load.to_vec(), stop.clone());
        std::thread::spawn(move || append(file, lines, lines_per_sec, stop))
    };
    // Steady: three seconds, each second's worst p99.9 and the output rate.
    let mut steady_p999 = Vec::new();
    let before = collector.records();
    let steady_started = Instant::now();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        steady_p999.extend(survivors_p999(&status(lead)));
    }
    let steady_rate =
        (collector.records() - before) as f64 / steady_started.elapsed().as_secs_f64();
    let was_at = file_offset(&status(lead)).unwrap_or(0);
    let at_kill = collector.records();
    let killed = Instant::now();
    let (mut serving, mut caught_up) = (None, None);
    if whole {
        for n in [&mut w1, &mut w2, &mut w3] {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
        w1 = start(&lead_args(&lead.to_string()), &dir.join("w1b.log"))?;
        w2 = start(&member_args("w2", lead), &dir.join("w2b.log"))?;
        w3 = start(&member_args("w3", lead), &dir.join("w3b.log"))?;
    } else {
        let _ = w3.child.kill();
        let _ = w3.child.wait();
    }
    let mut during = 0;
    let mut per_second = Vec::new();
    // From the kill on: a whole restart's dead time is in the first window.
    let mut last = (killed, at_kill);
    while killed.elapsed() < Duration::from_secs(30) {
        let st = status(lead);
        let back = if whole {
            st["checkpoints"]["awaiting_nodes"] == serde_json::json!([])
                && st["cores"].as_array().is_some_and(|c| c.len() == 3)
        } else {
            st["recovery"]["took_ms"].is_u64()
        };
        if serving.is_none() && back {
            serving = Some(killed.elapsed());
        }
        // Caught up: the file source is back past where it was at the kill (both ways
        // rewind it to the checkpoint), and nothing replays any more.
        let past = file_offset(&st).is_some_and(|o| o >= was_at);
        if serving.is_some() && caught_up.is_none() && past && !replaying(&st) {
            caught_up = Some(killed.elapsed());
        }
        if killed.elapsed() < Duration::from_secs(3) {
            during = during.max(survivors_p999(&st).unwrap_or(0));
        }
        if last.0.elapsed() >= Duration::from_millis(100) {
            let now = collector.records();
            per_second.push((now - last.1) as f64 / last.0.elapsed().as_secs_f64());
            last = (Instant::now(), now);
        }
        if caught_up.is_some() && killed.elapsed() > Duration::from_secs(4) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    appender.join().expect("appender")?;
    drop((w1, w2, w3));
    let _ = std::fs::remove_dir_all(&dir);
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    Ok(Run {
        serving_ms: ms(serving),
        caught_up_ms: ms(caught_up),
        steady_p999: steady_p999.into_iter().max().unwrap_or(0),
        during_p999: during,
        steady_rate,
        dip_rate: per_second.iter().copied().fold(f64::INFINITY, f64::min),
    })
}
