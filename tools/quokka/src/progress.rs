//! Progress of `quokka-send` and `quokka-recv` on stderr, never stdout: a bar when stderr is a
//! terminal, plain periodic lines when it is not, nothing with `--quiet`. The tools update a
//! [`Progress`] with their count as often as they like; it looks at the clock only every so
//! many updates, so updating it per frame costs a decrement and a branch.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressState, ProgressStyle};

use crate::duration::parse_duration;

/// The progress flags both tools take.
#[derive(clap::Args)]
pub struct ProgressArgs {
    /// Show no progress. Without it, progress (count, rate, and the ETA when the total is
    /// known) goes to stderr, never stdout: a bar when stderr is a terminal, else a plain line
    /// every --progress-every and a last one with the final count.
    #[arg(long)]
    pub quiet: bool,
    /// How often to print a progress line when stderr is not a terminal.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub progress_every: Duration,
}

/// A count shown as it grows (see the module docs).
pub struct Progress {
    done: u64,
    /// Updates left before the next look at the clock.
    countdown: u64,
    /// Updates between looks, adapted so looks come every 10 to 100 ms.
    stride: u64,
    looked_at: Instant,
    show: Show,
}

enum Show {
    Nothing,
    Bar(ProgressBar),
    Lines(Lines),
}

/// Plain lines: what they say and when the last one was printed.
struct Lines {
    tool: &'static str,
    unit: &'static str,
    total: Option<u64>,
    every: Duration,
    started: Instant,
    last_at: Instant,
    last_done: u64,
}

/// Looks at the clock less often when they come quicker than this...
const LOOK_MIN: Duration = Duration::from_millis(10);
/// ...and more often when they come slower than this.
const LOOK_MAX: Duration = Duration::from_millis(100);
const MAX_STRIDE: u64 = 1 << 16;

impl Progress {
    /// Progress of `tool` counting `unit`s (plural) towards `total`, if known.
    pub fn start(
        args: &ProgressArgs,
        tool: &'static str,
        unit: &'static str,
        total: Option<u64>,
    ) -> Progress {
        let now = Instant::now();
        let show = if args.quiet {
            Show::Nothing
        } else if std::io::stderr().is_terminal() {
            Show::Bar(bar(tool, unit, total))
        } else {
            Show::Lines(Lines {
                tool,
                unit,
                total,
                every: args.progress_every,
                started: now,
                last_at: now,
                last_done: 0,
            })
        };
        let countdown = match show {
            Show::Nothing => u64::MAX,
            _ => 1,
        };
        Progress {
            done: 0,
            countdown,
            stride: 1,
            looked_at: now,
            show,
        }
    }

    /// The count is now `done` (it may go back: a durable sender resends).
    #[inline]
    pub fn update(&mut self, done: u64) {
        self.done = done;
        self.countdown -= 1;
        if self.countdown == 0 {
            self.look();
        }
    }

    #[cold]
    fn look(&mut self) {
        let now = Instant::now();
        self.stride = next_stride(self.stride, now - self.looked_at);
        self.countdown = self.stride;
        self.looked_at = now;
        match &mut self.show {
            Show::Nothing => {}
            Show::Bar(bar) => bar.set_position(self.done),
            Show::Lines(lines) => lines.look(now, self.done),
        }
    }

    /// Ends with the final count: clears the bar, or prints the last line. Shows nothing more
    /// afterwards.
    pub fn finish(&mut self, done: u64) {
        match std::mem::replace(&mut self.show, Show::Nothing) {
            Show::Nothing => {}
            Show::Bar(bar) => bar.finish_and_clear(),
            Show::Lines(l) => say(&last_line(
                l.tool,
                l.unit,
                done,
                l.total,
                l.started.elapsed(),
            )),
        }
        self.countdown = u64::MAX;
    }
}

impl Lines {
    fn look(&mut self, now: Instant, done: u64) {
        let since = now - self.last_at;
        if since < self.every {
            return;
        }
        let rate = done.saturating_sub(self.last_done) as f64 / since.as_secs_f64().max(1e-9);
        say(&line(self.tool, self.unit, done, self.total, rate));
        (self.last_at, self.last_done) = (now, done);
    }
}

/// Prints a line to stderr; a closed stderr is no reason to stop.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The terminal's bar (a spinner without a total); cleared if dropped unfinished (an error
/// follows).
fn bar(tool: &'static str, unit: &'static str, total: Option<u64>) -> ProgressBar {
    let style = ProgressStyle::with_template(&template(unit, total))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} {unit}/s", s.per_sec());
            },
        )
        .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr())
        .with_style(style)
        .with_prefix(format!("{tool}:"))
        .with_finish(ProgressFinish::AndClear);
    // Redraws (rate, spinner) while the count stands still.
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The bar's layout, with a custom key `rate`.
fn template(unit: &str, total: Option<u64>) -> String {
    let template = match total {
        Some(_) => {
            "{prefix} [{wide_bar}] {human_pos}/{human_len} UNIT ({percent}%), {rate}, ETA {eta}"
        }
        None => "{prefix} {spinner} {human_pos} UNIT, {rate}",
    };
    template.replace("UNIT", unit)
}

/// Updates between looks at the clock, given how long the last `stride` took.
fn next_stride(stride: u64, took: Duration) -> u64 {
    if took < LOOK_MIN {
        (stride * 2).min(MAX_STRIDE)
    } else if took > LOOK_MAX {
        (stride / 2).max(1)
    } else {
        stride
    }
}

/// A periodic line: `TOOL: DONE/TOTAL UNIT (P%), RATE UNIT/s, ETA T` (no ETA while nothing
/// moves), or without a total `TOOL: DONE UNIT, RATE UNIT/s`.
fn line(tool: &str, unit: &str, done: u64, total: Option<u64>, rate: f64) -> String {
    let Some(total) = total else {
        return format!("{tool}: {done} {unit}, {rate:.0} {unit}/s");
    };
    let mut line = format!(
        "{tool}: {done}/{total} {unit} ({}%), {rate:.0} {unit}/s",
        percent(done, total)
    );
    if let Some(left) = eta(total, done, rate) {
        line += &format!(", ETA {}", format_eta(left));
    }
    line
}

/// The last line: `TOOL: DONE/TOTAL UNIT (P%), done in 1.25s`.
fn last_line(tool: &str, unit: &str, done: u64, total: Option<u64>, took: Duration) -> String {
    let count = match total {
        Some(total) => format!("{done}/{total} {unit} ({}%)", percent(done, total)),
        None => format!("{done} {unit}"),
    };
    format!("{tool}: {count}, done in {:.2}s", took.as_secs_f64())
}

/// `done` of `total` in whole percent, rounded down (100 only when done); an empty total is
/// done.
fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    (u128::from(done) * 100 / u128::from(total)) as u64
}

/// The time left to reach `total` from `done` at `rate` per second; `None` at no rate.
fn eta(total: u64, done: u64, rate: f64) -> Option<Duration> {
    let left = total.saturating_sub(done);
    if left == 0 {
        return Some(Duration::ZERO);
    }
    if rate.is_nan() || rate <= 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(left as f64 / rate).ok()
}

/// `4s`, `2m05s`, `1h02m` (rounded up to the second, then down to the unit shown).
fn format_eta(left: Duration) -> String {
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_with_a_total_says_count_percent_rate_and_eta() {
        assert_eq!(
            line(
                "quokka-send",
                "frames",
                1_200_000,
                Some(3_000_000),
                412_000.4
            ),
            "quokka-send: 1200000/3000000 frames (40%), 412000 frames/s, ETA 5s"
        );
        assert_eq!(
            line("quokka-recv", "records", 5, Some(10), 0.0),
            "quokka-recv: 5/10 records (50%), 0 records/s",
            "no ETA while nothing moves"
        );
        assert_eq!(
            line("quokka-recv", "records", 12, Some(10), 3.0),
            "quokka-recv: 12/10 records (120%), 3 records/s, ETA 0s"
        );
    }

    #[test]
    fn a_line_without_a_total_says_count_and_rate() {
        assert_eq!(
            line("quokka-recv", "records", 7, None, 2.6),
            "quokka-recv: 7 records, 3 records/s"
        );
    }

    #[test]
    fn the_last_line_says_the_final_count() {
        assert_eq!(
            last_line(
                "quokka-send",
                "frames",
                2000,
                Some(2000),
                Duration::from_millis(1250)
            ),
            "quokka-send: 2000/2000 frames (100%), done in 1.25s"
        );
        assert_eq!(
            last_line("quokka-recv", "records", 9, None, Duration::ZERO),
            "quokka-recv: 9 records, done in 0.00s"
        );
    }

    #[test]
    fn percent_rounds_down_and_an_empty_total_is_done() {
        assert_eq!(percent(0, 3), 0);
        assert_eq!(percent(2, 3), 66);
        assert_eq!(percent(2999, 3000), 99);
        assert_eq!(percent(3, 3), 100);
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
    }

    #[test]
    fn eta_is_what_is_left_over_the_rate() {
        assert_eq!(eta(100, 40, 20.0), Some(Duration::from_secs(3)));
        assert_eq!(eta(100, 100, 0.0), Some(Duration::ZERO));
        assert_eq!(eta(100, 140, 5.0), Some(Duration::ZERO));
        assert_eq!(eta(100, 40, 0.0), None);
        assert_eq!(eta(100, 40, f64::NAN), None);
        assert_eq!(eta(u64::MAX, 0, 1e-300), None, "past any duration");
    }

    #[test]
    fn eta_reads_in_the_largest_units() {
        assert_eq!(format_eta(Duration::ZERO), "0s");
        assert_eq!(format_eta(Duration::from_millis(3100)), "4s");
        assert_eq!(format_eta(Duration::from_secs(59)), "59s");
        assert_eq!(format_eta(Duration::from_secs(125)), "2m05s");
        assert_eq!(format_eta(Duration::from_secs(3720)), "1h02m");
        assert_eq!(format_eta(Duration::from_secs(100 * 3600)), "100h00m");
    }

    #[test]
    fn looks_at_the_clock_every_10_to_100_ms_whatever_the_rate() {
        let ms = Duration::from_millis;
        assert_eq!(next_stride(1, ms(0)), 2);
        assert_eq!(next_stride(MAX_STRIDE, ms(0)), MAX_STRIDE);
        assert_eq!(next_stride(64, ms(50)), 64);
        assert_eq!(next_stride(64, ms(500)), 32);
        assert_eq!(next_stride(1, ms(500)), 1);
        // Updates at a steady 1 per microsecond settle where a look takes 10 to 100 ms.
        let mut stride = 1;
        for _ in 0..40 {
            stride = next_stride(stride, Duration::from_micros(stride));
        }
        assert!((10_000..=100_000).contains(&stride), "{stride}");
    }

    #[test]
    fn quiet_shows_nothing_and_never_looks() {
        let args = ProgressArgs {
            quiet: true,
            progress_every: Duration::ZERO,
        };
        let mut p = Progress::start(&args, "quokka-send", "frames", Some(10));
        for done in 1..=1000 {
            p.update(done);
        }
        assert!(matches!(p.show, Show::Nothing));
        assert_eq!(p.stride, 1, "never looked at the clock");
        p.finish(1000);
    }

    #[test]
    fn the_bar_templates_parse() {
        for total in [Some(10), None] {
            let t = template("frames", total);
            assert!(ProgressStyle::with_template(&t).is_ok(), "{t}");
        }
    }
}
