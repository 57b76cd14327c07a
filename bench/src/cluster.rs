//! Two nodes on this machine (two engines in this process, each with its own cores, control
//! endpoint and data port, linked over loopback TCP): word count on one node against two nodes
//! where half the keys cross to the other node; then a node joining while a million words are in
//! state, under load, and removed again: time, bytes and MB/s of each move, latency during it and
//! in the second after against before.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use quokka_apps::corpus::{self, vocab_word, CorpusSpec};
use quokka_apps::word_count;
use quokka_engine::{ChangeReport, Config, Ending, Engine};
use quokka_io::client::Collector;
use quokka_tests::harness::Coordinator;

use crate::migrate::send_until;
use crate::util::{
    client_collector, median, median_percentiles, pin_to_last_cpu, print_moves, send_paced,
    set_nice, unpin, words_in_cycle, CLIENT_NICE,
};

#[derive(clap::Args)]
pub struct Args {
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Words sent flat out for the throughput runs.
    #[arg(long, default_value_t = 4_000_000)]
    words: usize,
    /// Offered load in words/s for the latency runs and during the join (an eighth of one
    /// core's flat-out rate here: w2 shares its CPU with the clients).
    #[arg(long, default_value_t = 500_000.0)]
    rate: f64,
    /// Distinct words in state before the join.
    #[arg(long, default_value_t = 1_000_000)]
    distinct: usize,
    /// Seconds of steady load measured for latency (and before the join).
    #[arg(long, default_value_t = 2.0)]
    steady_secs: f64,
    /// The CPU of w2's core (w1's is CPU 0; the clients run on the last CPU).
    #[arg(long, default_value_t = 1)]
    member_cpu: usize,
    /// Instead: three nodes as processes (build `quokka` first), `kill -9` of one under load:
    /// its slots recovered on the survivors, against a whole-cluster restart.
    #[arg(long)]
    kill: bool,
}

/// A cluster of one or two nodes in this process: w1 on CPU 0, w2 (if any) on CPU 1.
struct Cluster {
    collector: Collector,
    lead: Coordinator,
    member: Option<Engine>,
    /// Misrouted messages of members that departed.
    misrouted: u64,
}

impl Cluster {
    fn start() -> Result<Cluster> {
        let collector = client_collector()?;
        let mut config = Config::new(vec!["127.0.0.1:0".parse()?], collector.addr());
        config.cores = 1;
        config.cpus = vec![0];
        // The engines' own threads (acceptors, links) run where the OS finds room; only the
        // clients stay pinned to the last CPU.
        unpin();
        let lead = Engine::start(&word_count::app(), config);
        pin_to_last_cpu();
        Ok(Cluster {
            collector,
            lead: Coordinator::serve(lead?)?,
            member: None,
            misrouted: 0,
        })
    }

    /// w2 joins on CPU 1; returns the coordinator's report of the join.
    fn join(&mut self, cpu: usize) -> Result<ChangeReport> {
        let mut config = Config::new(Vec::new(), self.collector.addr());
        config.cores = 1;
        config.cpus = vec![cpu];
        config.name = "w2".into();
        unpin();
        let joined = Engine::join(&word_count::app(), config, self.lead.control, Vec::new());
        pin_to_last_cpu();
        let (member, report) = joined?;
        self.member = Some(member);
        Ok(report)
    }

    /// w2 is removed; returns the coordinator's report once w2 has departed.
    fn remove(&mut self) -> Result<ChangeReport> {
        let report = self.lead.engine.remove_node("w2")?;
        if let Some(m) = self.member.take() {
            let ending = m.ended().recv_timeout(Duration::from_secs(60))?;
            self.misrouted += m.finish(ending).misrouted();
        }
        Ok(report)
    }

    fn input(&self) -> SocketAddr {
        self.lead.engine.input_addrs()[0]
    }

    /// Stops the cluster; checks that exactly `expected` outputs arrived and none was misrouted.
    fn stop(self, expected: u64) -> Result<()> {
        if !self.collector.wait_for(expected, Duration::from_secs(300)) {
            bail!(
                "only {} of {expected} outputs arrived",
                self.collector.records()
            );
        }
        let mut misrouted = self.misrouted + self.lead.engine.stop().misrouted();
        if let Some(m) = self.member {
            m.ended().recv_timeout(Duration::from_secs(60))?;
            misrouted += m.finish(Ending::ClusterStopped).misrouted();
        }
        if misrouted > 0 || self.collector.records() != expected {
            bail!(
                "output not exact: {} outputs for {expected}, {misrouted} misrouted",
                self.collector.records()
            );
        }
        Ok(())
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.kill {
        return crate::kill::run(args.runs, args.distinct, args.rate);
    }
    let cpu = pin_to_last_cpu();
    println!(
        "# two nodes on one machine: w1 on CPU 0, w2 on CPU 1, clients on CPU {cpu}; {} runs",
        args.runs
    );
    let lines = corpus::lines(CorpusSpec {
        words: args.words,
        ..CorpusSpec::default()
    });
    let words: u64 = lines.iter().map(|l| l.split(' ').count() as u64).sum();
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    for nodes in [1, 2] {
        let mut rates = Vec::new();
        let mut latencies = Vec::new();
        for _ in 0..args.runs {
            let mut c = Cluster::start()?;
            if nodes == 2 {
                c.join(args.member_cpu)?;
            }
            let started = Instant::now();
            send_paced(c.input(), &frames, None)?;
            if !c.collector.wait_for(words, Duration::from_secs(300)) {
                bail!("only {} of {words} outputs arrived", c.collector.records());
            }
            let elapsed = c.collector.last_record_at().expect("outputs") - started;
            rates.push(words as f64 / elapsed.as_secs_f64());
            // Latency at a steady offered rate.
            let per_line = words as f64 / lines.len() as f64;
            let stop = AtomicBool::new(false);
            let (sent, latency) = std::thread::scope(|s| -> Result<_> {
                let sender = s.spawn(|| {
                    set_nice(CLIENT_NICE);
                    send_until(c.input(), &lines, args.rate / per_line, &stop)
                });
                std::thread::sleep(Duration::from_millis(300));
                c.lead.engine.take_latency();
                std::thread::sleep(Duration::from_secs_f64(args.steady_secs));
                let latency = c.lead.engine.take_latency();
                stop.store(true, std::sync::atomic::Ordering::Release);
                Ok((sender.join().expect("sender")?, latency))
            })?;
            latencies.push(latency);
            c.stop(words + words_in_cycle(&lines, sent))?;
        }
        println!(
            "{nodes} node(s): {:.2} M words/s flat out (runs: {}); at {:.2} M words/s: {}",
            median(&rates) / 1e6,
            rates
                .iter()
                .map(|r| format!("{:.2}", r / 1e6))
                .collect::<Vec<_>>()
                .join(", "),
            args.rate / 1e6,
            median_percentiles(&latencies)
        );
    }
    join_with_state(&args)
}

/// Latency of one change: before it, during it, and in the second after.
struct Around {
    steady: Histogram<u64>,
    during: Histogram<u64>,
    after: Histogram<u64>,
}

/// w1 holds `distinct` words; w2 joins under load, then is removed. Reports each move and
/// latency around it.
fn join_with_state(args: &Args) -> Result<()> {
    let load = corpus::lines(CorpusSpec {
        words: 2_000_000,
        ..CorpusSpec::default()
    });
    let per_line =
        load.iter().map(|l| l.split(' ').count()).sum::<usize>() as f64 / load.len() as f64;
    let (mut joins, mut removals) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let mut c = Cluster::start()?;
        let words: Vec<String> = (0..args.distinct).map(vocab_word).collect();
        let fill: Vec<String> = words.chunks(12).map(|c| c.join(" ")).collect();
        let frames: Vec<&[u8]> = fill.iter().map(|l| l.as_bytes()).collect();
        send_paced(c.input(), &frames, None)?;
        if !c
            .collector
            .wait_for(args.distinct as u64, Duration::from_secs(120))
        {
            bail!("state did not fill");
        }
        let stop = AtomicBool::new(false);
        let (join, removal, sent) = std::thread::scope(|s| -> Result<_> {
            let input = c.input();
            let (load, stop) = (&load, &stop);
            let sender = s.spawn(move || {
                set_nice(CLIENT_NICE);
                send_until(input, load, args.rate / per_line, stop)
            });
            let join = around(&mut c, args.steady_secs, |c| c.join(args.member_cpu))?;
            let removal = around(&mut c, args.steady_secs, Cluster::remove)?;
            stop.store(true, std::sync::atomic::Ordering::Release);
            Ok((join, removal, sender.join().expect("sender")?))
        })?;
        println!("  run: join {} | removal {}", join.0, removal.0);
        joins.push(join);
        removals.push(removal);
        c.stop(args.distinct as u64 + words_in_cycle(&load, sent))?;
    }
    for (name, changes) in [("join", &joins), ("remove-node", &removals)] {
        let moves: Vec<(f64, f64)> = changes.iter().map(|(r, _)| report_numbers(r)).collect();
        print_moves(name, &moves);
        let whole: Vec<f64> = (changes.iter())
            .map(|(r, _)| r.elapsed.as_secs_f64() * 1e3)
            .collect();
        println!(
            "  (the whole change, with the handshake, preparing and departing: {:.1} ms)",
            median(&whole)
        );
        let pick = |f: fn(&Around) -> &Histogram<u64>| -> Vec<Histogram<u64>> {
            changes.iter().map(|(_, a)| f(a).clone()).collect()
        };
        println!(
            "  {name} with {} words in state at {:.2} M words/s (medians):",
            args.distinct,
            args.rate / 1e6
        );
        println!(
            "    steady before: {}",
            median_percentiles(&pick(|a| &a.steady))
        );
        println!(
            "    during:        {}",
            median_percentiles(&pick(|a| &a.during))
        );
        println!(
            "    second after:  {}",
            median_percentiles(&pick(|a| &a.after))
        );
    }
    Ok(())
}

/// Measures `steady_secs` of steady state, then `change` and the 100 ms after it, then the
/// second after that.
fn around(
    c: &mut Cluster,
    steady_secs: f64,
    change: impl FnOnce(&mut Cluster) -> Result<ChangeReport>,
) -> Result<(ChangeReport, Around)> {
    c.lead.engine.take_latency();
    std::thread::sleep(Duration::from_secs_f64(steady_secs));
    let steady = c.lead.engine.take_latency();
    let report = change(c)?;
    std::thread::sleep(Duration::from_millis(100));
    let during = c.lead.engine.take_latency();
    std::thread::sleep(Duration::from_secs(1));
    let after = c.lead.engine.take_latency();
    Ok((
        report,
        Around {
            steady,
            during,
            after,
        },
    ))
}

/// (milliseconds moving, MB of state) of a change.
fn report_numbers(report: &ChangeReport) -> (f64, f64) {
    (
        report.moving.as_secs_f64() * 1e3,
        report.bytes_moved as f64 / 1e6,
    )
}
