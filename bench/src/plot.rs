//! SVG pictures of benchmark results, drawn with plotters' SVG backend (text is written as SVG
//! `<text>` elements, so no font is needed): latency percentile distributions from
//! hdrhistograms, and throughput and p99 latency over time around migrations.

use std::path::Path;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];
/// The colour of moves' shaded spans and their labels.
const MOVE: RGBColor = RGBColor(230, 140, 0);

/// The latency percentile distribution of each named histogram (values in ns), one line each,
/// as HdrHistogram's plots draw it: the percentile on a log "nines" scale (x = 1/(1-q): 90%,
/// 99%, 99.9%, ... equally spaced), the latency on a log scale. Empty histograms are left out.
pub fn latency_distribution(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> Result<()> {
    let series: Vec<_> = series.iter().filter(|(_, h)| !h.is_empty()).collect();
    let most = series.iter().map(|(_, h)| h.len()).max().unwrap_or(1);
    // Up to the nines the largest histogram resolves (one in `most`), at least 99.9%.
    let x_max = 10f64.powi((most as f64).log10().ceil().max(3.0) as i32);
    let x_points: Vec<f64> = std::iter::once(1.0)
        .chain(std::iter::once(2.0))
        .chain((1..).map(|k| 10f64.powi(k)).take_while(|&x| x <= x_max))
        .collect();
    let lowest = series.iter().map(|(_, h)| h.min()).min().unwrap_or(1);
    let highest = series.iter().map(|(_, h)| h.max()).max().unwrap_or(1000);
    let (y_range, y_points) = log_axis(lowest as f64, highest as f64);

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(15)
        .margin_right(45)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(
            (1.0..x_max).log_scale().with_key_points(x_points),
            y_range.log_scale().with_key_points(y_points),
        )?;
    chart
        .configure_mesh()
        .x_desc("percentile (log scale of nines: x = 1/(1-q))")
        .y_desc("latency (log scale)")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| duration_label(*y))
        .light_line_style(TRANSPARENT)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()?;
    for (i, (name, h)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let n = h.len() as f64;
        let points = h.iter_quantiles(5).map(|v| {
            let q = v.quantile_iterated_to();
            (
                (1.0 / (1.0 - q)).min(n).max(1.0),
                v.value_iterated_to() as f64,
            )
        });
        let label = format!(
            "{name}: p50 {}, p99 {}, max {}",
            duration_label(h.value_at_quantile(0.5) as f64),
            duration_label(h.value_at_quantile(0.99) as f64),
            duration_label(h.max() as f64)
        );
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One interval of a time series: seconds since the series started, outputs in it and the
/// p99 latency of those outputs (ns; `None` if there were none).
#[derive(Debug, Clone)]
pub struct Interval {
    pub start: f64,
    pub end: f64,
    pub outputs: u64,
    pub p99: Option<u64>,
}

/// A move to mark on a time series: seconds since the series started, and what it was.
#[derive(Debug, Clone)]
pub struct Mark {
    pub start: f64,
    pub end: f64,
    pub label: String,
}

/// Throughput (outputs/s) above and p99 latency (log scale) below, each interval drawn as a
/// step over its duration, with the moves shaded and labelled in both panels.
pub fn timeline(path: &Path, title: &str, intervals: &[Interval], marks: &[Mark]) -> Result<()> {
    let t_end = (intervals.iter().map(|i| i.end))
        .chain(marks.iter().map(|m| m.end))
        .fold(1e-3, f64::max);
    let rate = |i: &Interval| i.outputs as f64 / (i.end - i.start).max(1e-9);
    let top = intervals.iter().map(rate).fold(1.0, f64::max) * 1.35;
    let p99s = || intervals.iter().filter_map(|i| i.p99).map(|p| p as f64);
    let (lat_range, lat_points) = log_axis(
        p99s().fold(f64::INFINITY, f64::min),
        p99s().fold(0.0, f64::max),
    );

    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 22))?;
    let (upper, lower) = root.split_vertically(340);
    let time_desc = "time since the load started (s)";

    let mut chart = ChartBuilder::on(&upper)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(75)
        .build_cartesian_2d(0.0..t_end, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc(time_desc)
        .y_desc("throughput (outputs/s)")
        .y_label_formatter(&|y| rate_label(*y))
        .light_line_style(TRANSPARENT)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()?;
    draw_marks(&mut chart, marks, (0.0, top), true)?;
    let color = COLORS[0];
    chart
        .draw_series(LineSeries::new(
            steps(intervals, |i| Some(rate(i))),
            color.stroke_width(2),
        ))?
        .label("throughput per interval")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    let mut chart = ChartBuilder::on(&lower)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(
            0.0..t_end,
            lat_range.clone().log_scale().with_key_points(lat_points),
        )?;
    chart
        .configure_mesh()
        .x_desc(time_desc)
        .y_desc("p99 latency (log scale)")
        .y_label_formatter(&|y| duration_label(*y))
        .light_line_style(TRANSPARENT)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()?;
    draw_marks(&mut chart, marks, (lat_range.start, lat_range.end), false)?;
    let color = COLORS[1];
    chart
        .draw_series(LineSeries::new(
            steps(intervals, |i| i.p99.map(|p| p as f64)),
            color.stroke_width(2),
        ))?
        .label("p99 latency per interval")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One configuration's run of a load profile, for [`profiles`].
pub struct Profile<'a> {
    pub name: String,
    pub intervals: &'a [Interval],
    /// (seconds since the start, cores from then on).
    pub cores: &'a [(f64, usize)],
}

/// Several configurations under the same load profile, one colour each: throughput above,
/// p99 latency (log scale) in the middle, cores below, with the profile's phases shaded.
pub fn profiles(path: &Path, title: &str, series: &[Profile], marks: &[Mark]) -> Result<()> {
    let all = || series.iter().flat_map(|s| s.intervals.iter());
    let t_end = all().map(|i| i.end).fold(1e-3, f64::max);
    let rate = |i: &Interval| i.outputs as f64 / (i.end - i.start).max(1e-9);
    let top = all().map(rate).fold(1.0, f64::max) * 1.35;
    let p99s = || all().filter_map(|i| i.p99).map(|p| p as f64);
    let (lat_range, lat_points) = log_axis(
        p99s().fold(f64::INFINITY, f64::min),
        p99s().fold(0.0, f64::max),
    );
    let most_cores = (series.iter())
        .flat_map(|s| s.cores.iter().map(|c| c.1))
        .max()
        .unwrap_or(1) as f64
        + 0.5;

    let root = SVGBackend::new(path, (960, 960)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 22))?;
    let (upper, rest) = root.split_vertically(320);
    let (middle, lower) = rest.split_vertically(360);
    let time_desc = "time since the load started (s)";

    let mut chart = ChartBuilder::on(&upper)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(75)
        .build_cartesian_2d(0.0..t_end, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc(time_desc)
        .y_desc("throughput (outputs/s)")
        .y_label_formatter(&|y| rate_label(*y))
        .light_line_style(TRANSPARENT)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()?;
    draw_marks(&mut chart, marks, (0.0, top), true)?;
    for (k, s) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                steps(s.intervals, |i| Some(rate(i))),
                color.stroke_width(2),
            ))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    let mut chart = ChartBuilder::on(&middle)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(75)
        .build_cartesian_2d(
            0.0..t_end,
            lat_range.clone().log_scale().with_key_points(lat_points),
        )?;
    chart
        .configure_mesh()
        .x_desc(time_desc)
        .y_desc("p99 latency per second (log)")
        .y_label_formatter(&|y| duration_label(*y))
        .light_line_style(TRANSPARENT)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()?;
    draw_marks(&mut chart, marks, (lat_range.start, lat_range.end), false)?;
    for (k, s) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        chart.draw_series(LineSeries::new(
            steps(s.intervals, |i| i.p99.map(|p| p as f64)),
            color.stroke_width(2),
        ))?;
    }

    let mut chart = ChartBuilder::on(&lower)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(0.0..t_end, 0.0..most_cores)?;
    chart
        .configure_mesh()
        .x_desc(time_desc)
        .y_desc("cores")
        .y_labels(most_cores as usize + 1)
        .light_line_style(TRANSPARENT)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()?;
    draw_marks(&mut chart, marks, (0.0, most_cores), false)?;
    for (k, s) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        // Drawn a hair apart, so lines at the same count stay visible.
        let lift = 0.03 * k as f64;
        let mut points = Vec::new();
        for (j, &(t, n)) in s.cores.iter().enumerate() {
            let until = s.cores.get(j + 1).map_or(t_end, |c| c.0);
            points.extend([(t, n as f64 + lift), (until, n as f64 + lift)]);
        }
        chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Each interval's value as a horizontal step from its start to its end (intervals without a
/// value are left out).
fn steps(intervals: &[Interval], value: impl Fn(&Interval) -> Option<f64>) -> Vec<(f64, f64)> {
    (intervals.iter())
        .filter_map(|i| value(i).map(|v| [(i.start, v), (i.end, v)]))
        .flatten()
        .collect()
}

/// Shades each move's span (at least a visible sliver), edges as lines, and labels it at the
/// top if `labelled`.
fn draw_marks<Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    marks: &[Mark],
    (y_lo, y_hi): (f64, f64),
    labelled: bool,
) -> Result<()>
where
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    let t_end = chart.x_range().end;
    for m in marks {
        let end = m.end.max(m.start + t_end * 0.003);
        chart.draw_series([Rectangle::new(
            [(m.start, y_lo), (end, y_hi)],
            MOVE.mix(0.25).filled(),
        )])?;
        for x in [m.start, end] {
            chart.draw_series([PathElement::new(
                [(x, y_lo), (x, y_hi)],
                MOVE.stroke_width(1),
            )])?;
        }
        if labelled {
            let style = TextStyle::from((FONT, 15).into_font()).color(&BLACK);
            chart.draw_series([Text::new(
                m.label.clone(),
                (end + t_end * 0.005, y_hi),
                style,
            )])?;
        }
    }
    Ok(())
}

/// A log axis from `lo` to `hi` (ns) widened to the 1-2-5 steps around them, and those steps.
fn log_axis(lo: f64, hi: f64) -> (std::ops::Range<f64>, Vec<f64>) {
    let (lo, hi) = if lo.is_finite() && lo > 0.0 && hi >= lo {
        (lo, hi)
    } else {
        (1e3, 1e6)
    };
    let steps =
        |from: i32, to: i32| (from..=to).flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(k)));
    let (k_lo, k_hi) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    // A step of room below and above, so no line runs along an edge.
    let start = steps(k_lo - 1, k_hi).rfind(|&s| s < lo / 1.5).unwrap_or(lo);
    let end = steps(k_lo, k_hi + 1)
        .find(|&s| s > hi * 1.2)
        .unwrap_or(hi * 2.0);
    let points: Vec<f64> = steps(k_lo - 1, k_hi + 1)
        .filter(|&s| s >= start && s <= end)
        .collect();
    (start..end, points)
}

/// "1 run" or "3 runs merged", for titles.
pub fn runs_merged(runs: usize) -> String {
    match runs {
        1 => "1 run".to_string(),
        n => format!("{n} runs merged"),
    }
}

/// 1 -> "0%", 2 -> "50%", 10 -> "90%", 1000 -> "99.9%".
fn percentile_label(x: f64) -> String {
    let decimals = (x.log10().round() as i32 - 2).max(0) as usize;
    format!("{:.*}%", decimals, 100.0 * (1.0 - 1.0 / x))
}

/// A duration in ns with its unit, short: "20 µs", "1.5 ms".
fn duration_label(ns: f64) -> String {
    let (v, unit) = match ns {
        n if n < 1e3 => (n, "ns"),
        n if n < 1e6 => (n / 1e3, "µs"),
        n if n < 1e9 => (n / 1e6, "ms"),
        n => (n / 1e9, "s"),
    };
    if v >= 100.0 || v == v.round() {
        format!("{v:.0} {unit}")
    } else if v >= 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.2} {unit}")
    }
}

/// A rate per second, short: "500k", "2.5M".
fn rate_label(r: f64) -> String {
    match r {
        r if r >= 1e6 => format!("{:.1}M", r / 1e6),
        r if r >= 1e3 => format!("{:.0}k", r / 1e3),
        r => format!("{r:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_svg(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("quokka-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn histogram(scale: u64) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for i in 1..=100_000u64 {
            // A long tail: most near `scale`, one in a thousand a hundred times slower.
            let v = if i % 1000 == 0 {
                scale * 100
            } else {
                scale + i % 977 * scale / 100
            };
            h.record(v).unwrap();
        }
        h
    }

    fn well_formed(path: &Path) -> String {
        let svg = std::fs::read_to_string(path).unwrap();
        assert!(svg.len() > 1000, "{} bytes", svg.len());
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        svg
    }

    #[test]
    fn latency_distribution_draws_a_labelled_line_per_histogram() {
        let path = temp_svg("latency.svg");
        let (engine, baseline) = (histogram(50_000), histogram(2_000_000));
        latency_distribution(
            &path,
            "test latency",
            &[("engine run", &engine), ("baseline run", &baseline)],
        )
        .unwrap();
        let svg = well_formed(&path);
        for text in [
            "test latency",
            "engine run",
            "baseline run",
            "percentile",
            "99.9%",
            "ms",
        ] {
            assert!(svg.contains(text), "no {text:?} in {svg}");
        }
        assert!(svg.matches("<polyline").count() >= 2);
    }

    #[test]
    fn latency_distribution_leaves_out_empty_histograms() {
        let path = temp_svg("empty.svg");
        let empty = Histogram::<u64>::new(3).unwrap();
        let one = histogram(10_000);
        latency_distribution(&path, "t", &[("nothing", &empty), ("something", &one)]).unwrap();
        let svg = well_formed(&path);
        assert!(!svg.contains("nothing") && svg.contains("something"));
    }

    #[test]
    fn timeline_marks_the_moves() {
        let path = temp_svg("timeline.svg");
        let intervals: Vec<Interval> = (0..60)
            .map(|i| Interval {
                start: i as f64 * 0.1,
                end: (i + 1) as f64 * 0.1,
                outputs: 100_000 + (i % 7) * 3000,
                p99: (i != 5).then_some(200_000 + (i == 21) as u64 * 9_000_000),
            })
            .collect();
        let marks = [
            Mark {
                start: 2.05,
                end: 2.2,
                label: "grow 1 -> 2".into(),
            },
            Mark {
                start: 4.0,
                end: 4.01,
                label: "shrink 2 -> 1".into(),
            },
        ];
        timeline(&path, "test timeline", &intervals, &marks).unwrap();
        let svg = well_formed(&path);
        for text in [
            "test timeline",
            "grow 1 -&gt; 2",
            "shrink 2 -&gt; 1",
            "throughput per interval",
            "p99 latency per interval",
            "outputs/s",
            "time since the load started (s)",
        ] {
            assert!(svg.contains(text), "no {text:?} in {svg}");
        }
    }

    #[test]
    fn labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(10_000.0), "99.99%");
        assert_eq!(duration_label(20_000.0), "20 µs");
        assert_eq!(duration_label(1_500_000.0), "1.50 ms");
        assert_eq!(rate_label(2_500_000.0), "2.5M");
        let (range, points) = log_axis(30_000.0, 1_700_000.0);
        assert_eq!(range, 10_000.0..5_000_000.0);
        assert_eq!(points.first(), Some(&10_000.0));
        assert_eq!(points.last(), Some(&5_000_000.0));
    }
}
