//! Autoscaling against fixed cores: word count under a load profile (a low rate, three times
//! it, the low rate again) on fixed 1 core, fixed 2 cores and `autoscale 1..2` with the
//! policy's defaults. Per configuration: p99 latency per phase and per second, the time the
//! autoscaler took to react to each edge of the peak, and the core-seconds held. Every run's
//! output is checked exact.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use quokka_apps::corpus::{self, CorpusSpec};
use quokka_apps::word_count;
use quokka_engine::metrics::human_ns;
use quokka_engine::{Config, Engine};

use crate::migrate::send_due;
use crate::plot::{self, Interval, Mark, Profile};
use crate::sampler::Sampler;
use crate::util::{
    client_collector, median, pin_to_last_cpu, send_paced, set_nice, stop_exact, unpin,
    words_in_cycle, CLIENT_NICE,
};

#[derive(clap::Args)]
pub struct Args {
    /// Runs of the whole profile per configuration; medians are reported.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Seconds at the low rate, at the peak (3x the low rate), and at the low rate again.
    #[arg(long, value_name = "BEFORE,PEAK,AFTER", default_value = "100,40,160", value_parser = parse_phases)]
    phases: (f64, f64, f64),
    /// The peak's rate, as a fraction of one core's max rate measured in the same run.
    #[arg(long, default_value_t = 0.9)]
    peak: f64,
}

fn parse_phases(s: &str) -> Result<(f64, f64, f64), String> {
    let secs: Vec<f64> = (s.split(','))
        .map(|x| x.trim().parse::<f64>().map_err(|e| format!("{x}: {e}")))
        .collect::<Result<_, _>>()?;
    match secs[..] {
        [b, p, a] if secs.iter().all(|x| x.is_finite() && *x > 0.0) => Ok((b, p, a)),
        _ => Err("give three positive numbers of seconds, e.g. 100,40,160".into()),
    }
}

/// The three phases' lengths (s) and the low rate (lines/s); the peak is 3x it.
#[derive(Clone, Copy)]
struct LoadProfile {
    low: f64,
    before: f64,
    peak: f64,
    after: f64,
}

impl LoadProfile {
    fn end(&self) -> f64 {
        self.before + self.peak + self.after
    }

    /// Lines due by `t` seconds since the start.
    fn due(&self, t: f64) -> usize {
        let peak = (t - self.before).clamp(0.0, self.peak);
        let at_low = t.min(self.end()) - peak;
        (self.low * (at_low + 3.0 * peak)) as usize
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Fixed(usize),
    Autoscale,
}

impl Setup {
    fn name(self) -> String {
        match self {
            Setup::Fixed(1) => "fixed 1 core".into(),
            Setup::Fixed(n) => format!("fixed {n} cores"),
            Setup::Autoscale => "autoscale 1..2".into(),
        }
    }
}

/// One configuration's run of the profile.
struct Run {
    setup: Setup,
    /// p99 (ns) before, during and after the peak, and during the peak once the cores it ends
    /// with were running.
    p99: [u64; 4],
    /// The worst p99 of one second in the peak.
    worst_second: u64,
    /// Cores over time: (seconds since the start, cores from then on).
    cores: Vec<(f64, usize)>,
    /// The autoscaler's changes: when, and what.
    changes: Vec<(f64, String)>,
    intervals: Vec<Interval>,
}

impl Run {
    fn core_seconds(&self, end: f64) -> f64 {
        let mut total = 0.0;
        for (i, &(t, n)) in self.cores.iter().enumerate() {
            let until = self.cores.get(i + 1).map_or(end, |c| c.0).min(end);
            total += (until - t).max(0.0) * n as f64;
        }
        total
    }
}

pub fn run(args: Args, plots: &Path) -> Result<()> {
    let cpu = pin_to_last_cpu();
    let lines = corpus::lines(CorpusSpec {
        words: 2_000_000,
        ..CorpusSpec::default()
    });
    let per_line = words_in_cycle(&lines, lines.len()) as f64 / lines.len() as f64;
    let max: Vec<f64> = (0..args.runs.max(1))
        .map(|_| max_rate(&lines))
        .collect::<Result<_>>()?;
    let max = median(&max);
    let (before, peak, after) = args.phases;
    let profile = LoadProfile {
        low: max * args.peak / 3.0,
        before,
        peak,
        after,
    };
    println!(
        "# autoscale benchmark: word count, {before:.0} s at {:.2} M words/s, {peak:.0} s at 3x ({:.2} M words/s, {:.2}x one core's max rate of {:.2} M words/s measured in this run), {after:.0} s low again; {} run(s) each; clients on CPU {cpu}",
        profile.low * per_line / 1e6,
        3.0 * profile.low * per_line / 1e6,
        args.peak,
        max * per_line / 1e6,
        args.runs
    );
    let setups = [Setup::Fixed(1), Setup::Fixed(2), Setup::Autoscale];
    let mut runs: Vec<Vec<Run>> = setups.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.runs {
        for (i, &setup) in setups.iter().enumerate() {
            runs[i].push(one_run(setup, &lines, profile)?);
        }
    }
    let end = profile.end();
    let mut core_seconds = Vec::new();
    for runs in &runs {
        let m = |pick: &dyn Fn(&Run) -> f64| median(&runs.iter().map(pick).collect::<Vec<_>>());
        let ns = |pick: &dyn Fn(&Run) -> f64| human_ns(m(pick) as u64);
        let cs = m(&|r| r.core_seconds(end));
        core_seconds.push(cs);
        println!(
            "{:<15} p99 before {} | peak {} (worst second {}; once the cores it ends with ran {}) | after {} | {cs:.0} core-seconds",
            runs[0].setup.name(),
            ns(&|r| r.p99[0] as f64),
            ns(&|r| r.p99[1] as f64),
            ns(&|r| r.worst_second as f64),
            ns(&|r| r.p99[3] as f64),
            ns(&|r| r.p99[2] as f64),
        );
        for r in runs.iter().filter(|r| !r.changes.is_empty()) {
            for (t, what) in &r.changes {
                let edge = if *t < before + peak {
                    format!("{:+.1} s after the peak began", t - before)
                } else {
                    format!("{:+.1} s after it ended", t - before - peak)
                };
                println!("  at {t:.1} s ({edge}): {what}");
            }
        }
    }
    let p99 = |i: usize| median(&runs[i].iter().map(|r| r.p99[1] as f64).collect::<Vec<_>>());
    println!(
        "goal: autoscale's p99 in the peak within 2x fixed 2 cores': {:.2}x; core-seconds at most 60% of fixed 2 cores': {:.0}%",
        p99(2) / p99(1),
        100.0 * core_seconds[2] / core_seconds[1]
    );
    let path = plots.join("autoscale-timeline.svg");
    let series: Vec<Profile> = runs
        .iter()
        .map(|r| Profile {
            name: r[0].setup.name(),
            intervals: &r[0].intervals,
            cores: &r[0].cores,
        })
        .collect();
    let title = format!(
        "autoscale: word count, low -> 3x ({:.2} M words/s) -> low, per second (run 1 of {})",
        3.0 * profile.low * per_line / 1e6,
        args.runs
    );
    let peak_mark = Mark {
        start: before,
        end: before + peak,
        label: "3x".into(),
    };
    plot::profiles(&path, &title, &series, &[peak_mark])?;
    println!("picture: {}", path.display());
    Ok(())
}

/// One core's max rate in lines/s: `lines` sent flat out.
fn max_rate(lines: &[String]) -> Result<f64> {
    let collector = client_collector()?;
    let mut config = Config::new(vec!["127.0.0.1:0".parse()?], collector.addr());
    config.cores = 1;
    let engine = Engine::start(&word_count::app(), config)?;
    let frames: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let words = words_in_cycle(lines, lines.len());
    let started = Instant::now();
    send_paced(engine.input_addrs()[0], &frames, None)?;
    if !collector.wait_for(words, Duration::from_secs(120)) {
        bail!("the flat-out run did not finish");
    }
    let rate = lines.len() as f64 / started.elapsed().as_secs_f64();
    engine.stop();
    Ok(rate)
}

/// The profile on one configuration; the autoscaler (if on) steps once a second as in `quokka
/// run`, and the sampler cuts a sample after each of its changes.
fn one_run(setup: Setup, lines: &[String], profile: LoadProfile) -> Result<Run> {
    let collector = client_collector()?;
    let mut config = Config::new(vec!["127.0.0.1:0".parse()?], collector.addr());
    config.cores = match setup {
        Setup::Fixed(n) => n,
        Setup::Autoscale => 1,
    };
    if setup == Setup::Autoscale {
        config.autoscale = Some((1, 2));
    }
    let engine = Engine::start(&word_count::app(), config)?;
    let input = engine.input_addrs()[0];
    let stop = AtomicBool::new(false);
    let sampler = Sampler::new(&engine, &collector);
    let cores = Mutex::new(vec![(0.0, engine.own_status().cores.len())]);
    let changes = Mutex::new(Vec::new());
    let grown = Mutex::new(None);
    let (sent, marks) = std::thread::scope(|s| -> Result<_> {
        let sender = s.spawn(|| {
            set_nice(CLIENT_NICE);
            send_profile(input, lines, profile)
        });
        unpin();
        s.spawn(|| sampler.tick(Duration::from_secs(1), &stop));
        s.spawn(|| {
            let mut next = Instant::now();
            while !stop.load(Ordering::Acquire) {
                next += Duration::from_secs(1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                if setup != Setup::Autoscale {
                    continue;
                }
                engine.autoscale_step();
                let n = engine.own_status().cores.len();
                let mut cores = cores.lock().unwrap();
                if cores.last().is_some_and(|c| c.1 != n) {
                    let t = sampler.elapsed().as_secs_f64();
                    let mark = sampler.sample();
                    cores.push((t, n));
                    let what = engine.status().autoscale.last.map(|l| l.1);
                    changes.lock().unwrap().push((t, what.unwrap_or_default()));
                    if n == 2 {
                        grown.lock().unwrap().get_or_insert(mark);
                    }
                }
            }
        });
        let at = |secs: f64| {
            let due = Duration::from_secs_f64(secs);
            std::thread::sleep(due.saturating_sub(sampler.elapsed()));
            sampler.sample()
        };
        let marks = [
            0,
            at(profile.before),
            at(profile.before + profile.peak),
            at(profile.end()),
        ];
        let sent = sender.join().expect("sender");
        stop.store(true, Ordering::Release);
        Ok((sent?, marks))
    })?;
    let expected = words_in_cycle(lines, sent);
    stop_exact(&engine, &collector, expected).map_err(|e| e.context(setup.name()))?;
    let p99 = |h: Histogram<u64>| h.value_at_quantile(0.99);
    let intervals = sampler.intervals(Duration::from_millis(500));
    let (start, end) = (profile.before, profile.before + profile.peak);
    let worst_second = (intervals.iter())
        .filter(|i| i.start >= start && i.end <= end + 0.5)
        .filter_map(|i| i.p99)
        .max()
        .unwrap_or(0);
    // Once the cores it ends the peak with ran: from a grow inside the peak, else all of it.
    let grown = grown
        .into_inner()
        .unwrap()
        .filter(|&g| g > marks[1] && g < marks[2]);
    let settled = grown.unwrap_or(marks[1]);
    Ok(Run {
        setup,
        p99: [
            p99(sampler.latency_between(marks[0], marks[1])),
            p99(sampler.latency_between(marks[1], marks[2])),
            p99(sampler.latency_between(marks[2], marks[3])),
            p99(sampler.latency_between(settled, marks[2])),
        ],
        worst_second,
        cores: cores.into_inner().unwrap(),
        changes: changes.into_inner().unwrap(),
        intervals,
    })
}

/// Sends `lines` round and round at the profile's rate; returns the lines sent.
fn send_profile(addr: SocketAddr, lines: &[String], profile: LoadProfile) -> Result<usize> {
    let total = profile.due(profile.end());
    send_due(
        addr,
        lines,
        |secs| profile.due(secs).min(total),
        |sent| sent >= total,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_is_low_then_three_times_then_low() {
        let p = LoadProfile {
            low: 100.0,
            before: 10.0,
            peak: 5.0,
            after: 20.0,
        };
        assert_eq!(p.due(0.0), 0);
        assert_eq!(p.due(10.0), 1000);
        assert_eq!(p.due(12.0), 1600);
        assert_eq!(p.due(15.0), 2500);
        assert_eq!(p.due(35.0), 4500);
        assert_eq!(p.due(99.0), 4500, "nothing after the end");
    }

    #[test]
    fn core_seconds_add_up_the_cores_over_time() {
        let run = Run {
            setup: Setup::Autoscale,
            p99: [0; 4],
            worst_second: 0,
            cores: vec![(0.0, 1), (10.0, 2), (30.0, 1)],
            changes: Vec::new(),
            intervals: Vec::new(),
        };
        assert_eq!(run.core_seconds(40.0), 10.0 + 40.0 + 10.0);
    }
}
