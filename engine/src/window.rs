//! Event-time windows (tumbling, sliding, session): plain data a keyed stateful step keeps in its
//! per-key state, so they move and are checkpointed with the key. They are built on the engine's
//! event-time timers, not a second mechanism: the step calls [`Open::add`] per message (which
//! names the timers to set) and [`Open::close`] when a timer fires, and emits what it returns.
//!
//! Time ends at `u64::MAX`: window ends saturate there, and an event at `u64::MAX` counts as one
//! at `u64::MAX - 1`, so that every window an event is in ends after it (ends are exclusive).
//! A watermark of `u64::MAX` therefore closes every window.
//!
//! Late events are the caller's business: [`Open`] does not know the watermark, so an event behind
//! one already passed to [`Open::close`] opens a window again, which the next close emits again,
//! partial. The engine judges lateness before the step runs, so such events never reach `add`.

/// How events are grouped into windows (event time, in the app's own units, a `u64`).
///
/// Build it with [`Windows::tumbling`], [`Windows::sliding`] or [`Windows::session`], which reject
/// degenerate parameters when the app is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windows {
    /// Fixed, non-overlapping windows `[k*size, (k+1)*size)`.
    #[non_exhaustive]
    Tumbling { size: u64 },
    /// Windows of `size` starting every `slide` (overlapping when `slide < size`): an event at
    /// `ts` belongs to every window `[s, s+size)` with `s` a multiple of `slide` and
    /// `s <= ts < s+size`. Time starts at 0: no window starts before it, so an event at
    /// `ts < size - slide` is in fewer windows than later ones (an event at 3 with size 10 and
    /// slide 5 is in `[0, 10)` only, as `[-5, 5)` does not exist).
    #[non_exhaustive]
    Sliding { size: u64, slide: u64 },
    /// Per key, events closer than `gap` form one window `[first, last + gap)`. A new event at
    /// `ts` makes the window `[ts, ts+gap)` and merges with every open window it overlaps
    /// (`other.start < ts+gap && ts < other.end`), so an event exactly at a window's end, or
    /// exactly `gap` before its start, starts a window of its own.
    #[non_exhaustive]
    Session { gap: u64 },
}

impl Windows {
    /// Tumbling windows of `size`. Panics if `size == 0` (a bug in the app's definition).
    pub fn tumbling(size: u64) -> Self {
        Self::Tumbling { size }.checked()
    }

    /// Windows of `size` starting every `slide`. Panics if `size == 0`, `slide == 0` or
    /// `slide > size` (which would leave events in no window).
    pub fn sliding(size: u64, slide: u64) -> Self {
        Self::Sliding { size, slide }.checked()
    }

    /// Session windows closed by a silence of `gap`. Panics if `gap == 0`.
    pub fn session(gap: u64) -> Self {
        Self::Session { gap }.checked()
    }

    /// `self`, or a panic naming the bad parameter. The variants are only built here (outside
    /// this crate they are `non_exhaustive`); [`Open::add`] checks again rather than divide by
    /// zero.
    fn checked(self) -> Self {
        match self {
            Self::Tumbling { size } => assert!(size > 0, "tumbling windows need a size > 0"),
            Self::Sliding { size, slide } => {
                assert!(size > 0, "sliding windows need a size > 0");
                assert!(slide > 0, "sliding windows need a slide > 0");
                assert!(
                    slide <= size,
                    "sliding windows need slide <= size (got size {size}, slide {slide}): a \
                     larger slide leaves some events in no window"
                );
            }
            Self::Session { gap } => assert!(gap > 0, "session windows need a gap > 0"),
        }
        self
    }
}

/// One open window of a key and its accumulator: events at `start <= ts < end`.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Window<A> {
    pub start: u64,
    pub end: u64,
    pub acc: A,
}

/// A key's open windows, kept in its state entity (so they move and are checkpointed with it).
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Open<A> {
    /// Sorted by `(end, start)`, no two alike; session windows are also disjoint.
    windows: Vec<Window<A>>,
}

impl<A: Default> Open<A> {
    /// Adds an event at `ts`: folds it (`fold`) into the accumulator of every window it belongs
    /// to, opening windows as needed. For sessions, the windows the event bridges merge into one:
    /// the earliest absorbs the others in order of start (`merge(into, from)`), then the event is
    /// folded in. Calls `timer(end)` for the end of every window the event opened, and for a
    /// session's new end (the caller sets an event-time timer there): a window already open
    /// has its timer, so most events ask for none.
    pub fn add(
        &mut self,
        spec: &Windows,
        ts: u64,
        mut fold: impl FnMut(&mut A),
        merge: impl FnMut(&mut A, A),
        mut timer: impl FnMut(u64),
    ) {
        let ts = ts.min(u64::MAX - 1);
        match spec.checked() {
            Windows::Tumbling { size } => {
                let start = ts - ts % size;
                let end = start.saturating_add(size);
                let (window, opened) = self.window(start, end);
                fold(&mut window.acc);
                if opened {
                    timer(end);
                }
            }
            Windows::Sliding { size, slide } => {
                // The starts in (ts - size, ts], and not before 0. That interval holds `size`
                // integers and `slide <= size`, so it holds a multiple of `slide`: first <= last.
                let first = ts.saturating_sub(size - 1).div_ceil(slide) * slide;
                let last = ts - ts % slide;
                let mut start = first;
                loop {
                    let end = start.saturating_add(size);
                    let (window, opened) = self.window(start, end);
                    fold(&mut window.acc);
                    if opened {
                        timer(end);
                    }
                    if start == last {
                        break;
                    }
                    start += slide;
                }
            }
            Windows::Session { gap } => self.add_to_session(ts, gap, fold, merge, timer),
        }
    }

    /// The window `[start, end)`, opened empty if it is not open; and whether it was opened.
    fn window(&mut self, start: u64, end: u64) -> (&mut Window<A>, bool) {
        let (at, opened) = match self
            .windows
            .binary_search_by(|w| (w.end, w.start).cmp(&(end, start)))
        {
            Ok(at) => (at, false),
            Err(at) => {
                let acc = A::default();
                self.windows.insert(at, Window { start, end, acc });
                (at, true)
            }
        };
        (&mut self.windows[at], opened)
    }

    fn add_to_session(
        &mut self,
        ts: u64,
        gap: u64,
        mut fold: impl FnMut(&mut A),
        mut merge: impl FnMut(&mut A, A),
        mut timer: impl FnMut(u64),
    ) {
        let end = ts.saturating_add(gap);
        // Sessions are disjoint and sorted, so the ones [ts, end) overlaps are a run, and the
        // merged window goes where the run was: the windows before it end at or before `ts`, those
        // after it start at or after `end`. (`ts < u64::MAX`, so saturated ends compare exactly.)
        let from = self.windows.partition_point(|w| w.end <= ts);
        let to = from + self.windows[from..].partition_point(|w| w.start < end);
        // Each window of the run has a timer at its end; a new end needs one.
        let mut timed = [None, None];
        let mut run = self.windows.drain(from..to);
        let mut window = run.next().unwrap_or_else(|| Window {
            start: ts,
            end,
            acc: A::default(),
        });
        if from < to {
            timed[0] = Some(window.end);
        }
        for w in run {
            window.end = w.end;
            timed[1] = Some(w.end);
            merge(&mut window.acc, w.acc);
        }
        window.start = window.start.min(ts);
        window.end = window.end.max(end);
        fold(&mut window.acc);
        if !timed.contains(&Some(window.end)) {
            timer(window.end);
        }
        self.windows.insert(from, window);
    }
}

impl<A> Open<A> {
    /// Removes and returns, in order of end (then start), every window with `end <= watermark`
    /// (the watermark says no event before it follows, so these are complete).
    pub fn close(&mut self, watermark: u64) -> Vec<Window<A>> {
        let n = self.windows.partition_point(|w| w.end <= watermark);
        self.windows.drain(..n).collect()
    }

    /// The open windows, in order of end (then start).
    pub fn windows(&self) -> &[Window<A>] {
        &self.windows
    }

    /// Whether no window is open.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// How many windows are open.
    pub fn len(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = u64::MAX;

    /// A window as `(start, end, its events sorted)`, for comparisons.
    type Span = (u64, u64, Vec<u64>);

    /// Adds `ts` to `open`, the accumulator being the list of events; returns the timers asked.
    fn add(open: &mut Open<Vec<u64>>, spec: Windows, ts: u64) -> Vec<u64> {
        let mut timers = Vec::new();
        let fold = |acc: &mut Vec<u64>| acc.push(ts);
        let merge = |into: &mut Vec<u64>, mut from: Vec<u64>| into.append(&mut from);
        open.add(&spec, ts, fold, merge, |t| timers.push(t));
        timers
    }

    fn fed(spec: Windows, events: &[u64]) -> Open<Vec<u64>> {
        let mut open = Open::default();
        for &ts in events {
            add(&mut open, spec, ts);
        }
        open
    }

    fn spans(windows: &[Window<Vec<u64>>]) -> Vec<Span> {
        let span = |w: &Window<Vec<u64>>| {
            let mut events = w.acc.clone();
            events.sort_unstable();
            (w.start, w.end, events)
        };
        windows.iter().map(span).collect()
    }

    fn s(start: u64, end: u64, events: &[u64]) -> Span {
        (start, end, events.to_vec())
    }

    #[test]
    #[should_panic(expected = "tumbling windows need a size > 0")]
    fn tumbling_rejects_size_0() {
        Windows::tumbling(0);
    }

    #[test]
    #[should_panic(expected = "sliding windows need a size > 0")]
    fn sliding_rejects_size_0() {
        Windows::sliding(0, 0);
    }

    #[test]
    #[should_panic(expected = "sliding windows need a slide > 0")]
    fn sliding_rejects_slide_0() {
        Windows::sliding(10, 0);
    }

    #[test]
    #[should_panic(expected = "sliding windows need slide <= size (got size 5, slide 6)")]
    fn sliding_rejects_slide_past_size() {
        Windows::sliding(5, 6);
    }

    #[test]
    #[should_panic(expected = "session windows need a gap > 0")]
    fn session_rejects_gap_0() {
        Windows::session(0);
    }

    #[test]
    #[should_panic(expected = "tumbling windows need a size > 0")]
    fn add_rejects_a_spec_built_by_hand() {
        add(&mut Open::default(), Windows::Tumbling { size: 0 }, 1);
    }

    #[test]
    fn tumbling_assigns_one_window_per_event_and_closes_in_order() {
        let spec = Windows::tumbling(10);
        let mut open = Open::default();
        let timers: Vec<_> = [25, 3, 17, 0, 9, 10]
            .map(|ts| add(&mut open, spec, ts))
            .into();
        let none: Vec<u64> = Vec::new();
        assert_eq!(
            timers,
            [
                vec![30],
                vec![10],
                vec![20],
                none.clone(),
                none.clone(),
                none
            ],
            "a timer per window opened"
        );
        assert_eq!(open.len(), 3);
        assert!(open.close(9).is_empty());
        // The end is exclusive, so a watermark at the end closes the window.
        assert_eq!(spans(&open.close(10)), [s(0, 10, &[0, 3, 9])]);
        let rest = [s(10, 20, &[10, 17]), s(20, 30, &[25])];
        assert_eq!(spans(&open.close(100)), rest);
        assert!(open.is_empty());
    }

    #[test]
    fn sliding_puts_each_event_in_size_over_slide_windows_after_the_start() {
        let spec = Windows::sliding(9, 3);
        let mut open = Open::default();
        assert_eq!(add(&mut open, spec, 20), [21, 24, 27]);
        assert!(
            add(&mut open, spec, 18).is_empty(),
            "its windows are open, with their timers"
        );
        // No window starts before 0: an event at 4 is in [0, 9) and [3, 12) only.
        assert_eq!(add(&mut open, spec, 4), [9, 12]);
        assert!(add(&mut open, spec, 0).is_empty());
        let expected = [
            s(0, 9, &[0, 4]),
            s(3, 12, &[4]),
            s(12, 21, &[18, 20]),
            s(15, 24, &[18, 20]),
            s(18, 27, &[18, 20]),
        ];
        assert_eq!(spans(open.windows()), expected);
        // A slide that does not divide the size: 3 or 2 windows (10 / 4 rounded up or down).
        let spec = Windows::sliding(10, 4);
        assert_eq!(add(&mut Open::default(), spec, 21), [22, 26, 30]);
        assert_eq!(add(&mut Open::default(), spec, 23), [26, 30]);
        // slide == size is tumbling.
        assert_eq!(add(&mut Open::default(), Windows::sliding(5, 5), 7), [10]);
    }

    #[test]
    fn sliding_close_returns_complete_windows_only() {
        let spec = Windows::sliding(10, 5);
        let mut open = fed(spec, &[1, 6, 11]);
        assert_eq!(spans(&open.close(10)), [s(0, 10, &[1, 6])]);
        assert_eq!(
            spans(open.windows()),
            [s(5, 15, &[6, 11]), s(10, 20, &[11])]
        );
        add(&mut open, spec, 12);
        assert_eq!(spans(&open.close(14)), []);
        assert_eq!(spans(&open.close(15)), [s(5, 15, &[6, 11, 12])]);
        assert_eq!(spans(&open.close(15)), []);
        assert_eq!(spans(&open.close(20)), [s(10, 20, &[11, 12])]);
        assert!(open.is_empty());
    }

    #[test]
    fn session_event_bridging_two_windows_merges_them_earliest_first() {
        let spec = Windows::session(5);
        let mut open = fed(spec, &[0, 8]);
        assert_eq!(spans(open.windows()), [s(0, 5, &[0]), s(8, 13, &[8])]);
        assert!(
            add(&mut open, spec, 4).is_empty(),
            "the merged end 13 has its timer"
        );
        // [0, 5) absorbed [8, 13), then took the event: the accumulator keeps that order.
        assert_eq!(
            open.windows(),
            [Window {
                start: 0,
                end: 13,
                acc: vec![0, 8, 4]
            }]
        );
        // An event inside a session extends it from there.
        assert_eq!(add(&mut open, spec, 10), [15]);
        assert_eq!(spans(&open.close(15)), [s(0, 15, &[0, 4, 8, 10])]);
    }

    #[test]
    fn session_event_bridging_three_windows_merges_them_all() {
        // With one gap an event reaches at most two sessions (each is at least `gap` long), so
        // three come from state built otherwise, say restored after the app shortened its gap.
        let w = |start, end, ts| Window {
            start,
            end,
            acc: vec![ts],
        };
        let mut open = Open {
            windows: vec![w(0, 2, 0), w(3, 5, 3), w(6, 8, 6), w(20, 22, 20)],
        };
        assert_eq!(add(&mut open, Windows::session(10), 1), [11]);
        let expected = [
            Window {
                start: 0,
                end: 11,
                acc: vec![0, 3, 6, 1],
            },
            w(20, 22, 20),
        ];
        assert_eq!(open.windows(), expected);
    }

    #[test]
    fn session_gap_is_exclusive_at_both_sides() {
        let spec = Windows::session(5);
        // 5 apart is not closer than the gap: an event at a session's end starts its own.
        let open = fed(spec, &[0, 5]);
        assert_eq!(spans(open.windows()), [s(0, 5, &[0]), s(5, 10, &[5])]);
        let open = fed(spec, &[5, 0]);
        assert_eq!(spans(open.windows()), [s(0, 5, &[0]), s(5, 10, &[5])]);
        assert_eq!(spans(fed(spec, &[0, 4]).windows()), [s(0, 9, &[0, 4])]);
        assert_eq!(spans(fed(spec, &[4, 0]).windows()), [s(0, 9, &[0, 4])]);
        // An event before a session reaches it only if closer than the gap.
        let open = fed(spec, &[15, 10]);
        assert_eq!(spans(open.windows()), [s(10, 15, &[10]), s(15, 20, &[15])]);
        assert_eq!(
            spans(fed(spec, &[15, 11]).windows()),
            [s(11, 20, &[11, 15])]
        );
    }

    #[test]
    fn out_of_order_events_in_open_windows_give_the_sorted_result() {
        let events = [7, 31, 2, 19, 20, 45, 0, 13, 44, 26, 8];
        let mut sorted = events;
        sorted.sort_unstable();
        for spec in [
            Windows::tumbling(10),
            Windows::sliding(10, 3),
            Windows::session(6),
        ] {
            let (a, b) = (fed(spec, &events), fed(spec, &sorted));
            assert_eq!(spans(a.windows()), spans(b.windows()), "{spec:?}");
        }
    }

    #[test]
    fn saturates_near_the_end_of_time() {
        // MAX - 1 and MAX (which counts as MAX - 1) share the last window, whose end saturates.
        let spec = Windows::tumbling(10);
        let mut open = fed(spec, &[0, MAX, MAX - 1]);
        assert!(add(&mut open, spec, MAX).is_empty(), "its window is open");
        let last = s(MAX - 5, MAX, &[MAX - 1, MAX, MAX]);
        assert_eq!(spans(open.windows()), [s(0, 10, &[0]), last.clone()]);
        assert_eq!(spans(&open.close(MAX - 1)), [s(0, 10, &[0])]);
        assert_eq!(spans(&open.close(MAX)), [last]);
        // A window starting at MAX would be empty; its event goes to the one before.
        let open = fed(Windows::tumbling(MAX), &[MAX, 0]);
        assert_eq!(spans(open.windows()), [s(0, MAX, &[0, MAX])]);

        let spec = Windows::sliding(10, 5);
        let mut open = Open::default();
        assert_eq!(add(&mut open, spec, MAX), [MAX, MAX]);
        let last_two = [s(MAX - 10, MAX, &[MAX]), s(MAX - 5, MAX, &[MAX])];
        assert_eq!(spans(open.windows()), last_two);
        assert_eq!(
            add(&mut open, spec, MAX - 6),
            [MAX - 5],
            "[MAX - 10, MAX) is open"
        );
        assert_eq!(
            spans(&open.close(MAX - 5)),
            [s(MAX - 15, MAX - 5, &[MAX - 6])]
        );
        let last_two = [s(MAX - 10, MAX, &[MAX - 6, MAX]), s(MAX - 5, MAX, &[MAX])];
        assert_eq!(spans(&open.close(MAX)), last_two);
        // Windows [0, MAX), [1, MAX + 1) and [2, MAX + 2) all end at MAX.
        assert_eq!(
            add(&mut Open::default(), Windows::sliding(MAX, 1), 2),
            [MAX; 3]
        );

        let spec = Windows::session(10);
        let mut open = fed(spec, &[MAX, MAX - 30]);
        assert!(
            add(&mut open, spec, MAX - 3).is_empty(),
            "the session ending at MAX"
        );
        assert!(
            add(&mut open, spec, MAX - 12).is_empty(),
            "still ends at MAX"
        );
        let session = s(MAX - 12, MAX, &[MAX - 12, MAX - 3, MAX]);
        assert_eq!(
            spans(open.windows()),
            [s(MAX - 30, MAX - 20, &[MAX - 30]), session]
        );
        assert_eq!(open.close(MAX).len(), 2);

        let open = fed(Windows::session(MAX), &[MAX, 0, 7]);
        assert_eq!(spans(open.windows()), [s(0, MAX, &[0, 7, MAX])]);
    }

    #[test]
    fn open_windows_survive_an_archive() {
        let mut open = Open::<u64>::default();
        for ts in [1, 12, 13, MAX] {
            open.add(
                &Windows::sliding(10, 5),
                ts,
                |n| *n += 1,
                |n, m| *n += m,
                |_| {},
            );
        }
        let bytes = rkyv::to_bytes::<rkyv::rancor::BoxedError>(&open).unwrap();
        let back = rkyv::from_bytes::<Open<u64>, rkyv::rancor::BoxedError>(&bytes).unwrap();
        assert_eq!(back, open);
        assert_eq!(back.len(), 5);
    }

    /// What the windows of `events` must be, by brute force: for tumbling and sliding every
    /// candidate window holding the events with `start <= ts < end`; for sessions, the sorted
    /// events cut where two are `gap` or more apart. An event at `u64::MAX` is placed as one at
    /// `u64::MAX - 1`. Sorted by `(end, start)`.
    fn reference(spec: Windows, events: &[u64]) -> Vec<Span> {
        let at = |ts: u64| ts.min(MAX - 1);
        let mut events = events.to_vec();
        events.sort_unstable();
        let (Some(&lo), Some(&hi)) = (events.first(), events.last()) else {
            return Vec::new();
        };
        let (lo, hi) = (at(lo), at(hi));
        let mut windows = Vec::new();
        let mut grid = |size: u64, slide: u64| {
            let starts = (lo.saturating_sub(size) / slide..=hi / slide).map(|k| k * slide);
            for start in starts {
                let end = start.saturating_add(size);
                let inside = events.iter().filter(|&&ts| start <= at(ts) && at(ts) < end);
                windows.push((start, end, inside.copied().collect::<Vec<_>>()));
            }
            windows.retain(|w| !w.2.is_empty());
        };
        match spec {
            Windows::Tumbling { size } => grid(size, size),
            Windows::Sliding { size, slide } => grid(size, slide),
            Windows::Session { gap } => {
                for ts in events {
                    match windows.last_mut() {
                        Some((_, end, inside)) if at(ts) < *end => {
                            *end = at(ts).saturating_add(gap);
                            inside.push(ts);
                        }
                        _ => windows.push((at(ts), at(ts).saturating_add(gap), vec![ts])),
                    }
                }
            }
        }
        windows.sort_by_key(|w| (w.1, w.0));
        windows
    }

    /// Feeds `events`, in their (arbitrary) order, between watermarks at `cuts`: each event after
    /// the last watermark below it, so none is late, then closes at `u64::MAX`. Checks on the
    /// way that every window an event is in has had a timer asked at its end, none at another
    /// instant, that
    /// the windows stay sorted (and, for sessions, disjoint), and that a close leaves only
    /// windows past the watermark. Returns everything closed, in order.
    fn run(spec: Windows, events: &[u64], cuts: &[u64]) -> Vec<Span> {
        let mut cuts = cuts.to_vec();
        cuts.push(MAX);
        cuts.sort_unstable();
        cuts.dedup();
        let mut open = Open::default();
        let mut closed = Vec::new();
        let mut from = 0;
        // Every timer asked so far (a window's stays set until the close it causes).
        let mut asked = std::collections::HashSet::new();
        for &watermark in &cuts {
            for &ts in events
                .iter()
                .filter(|&&ts| from <= ts && (ts < watermark || watermark == MAX))
            {
                let timers = add(&mut open, spec, ts);
                let ends: Vec<u64> = open.windows().iter().map(|w| w.end).collect();
                for t in &timers {
                    assert!(
                        ends.contains(t),
                        "{spec:?} at {ts}: timer {t} ends no window"
                    );
                }
                asked.extend(timers);
                for w in open.windows().iter().filter(|w| w.acc.contains(&ts)) {
                    assert!(
                        asked.contains(&w.end),
                        "{spec:?} at {ts}: no timer at {}",
                        w.end
                    );
                }
                for pair in open.windows().windows(2) {
                    assert!((pair[0].end, pair[0].start) < (pair[1].end, pair[1].start));
                    if let Windows::Session { .. } = spec {
                        assert!(pair[0].end <= pair[1].start, "sessions overlap");
                    }
                }
            }
            closed.extend(spans(&open.close(watermark)));
            assert!(open.windows().iter().all(|w| w.end > watermark));
            from = watermark;
        }
        assert!(open.is_empty());
        closed
    }

    #[test]
    fn matches_the_reference_on_hand_picked_cases() {
        let events = [4, 9, 10, 11, 25, 26, 40, 0, 3];
        for spec in [
            Windows::tumbling(5),
            Windows::sliding(7, 2),
            Windows::session(3),
        ] {
            assert_eq!(
                run(spec, &events, &[5, 12, 30]),
                reference(spec, &events),
                "{spec:?}"
            );
        }
    }

    proptest::proptest! {
        /// Every kind of window against the brute-force reference, with events out of order
        /// between watermarks, near 0 and near the end of time.
        #[test]
        fn matches_the_reference(
            kind in 0u8..3,
            size in 1u64..40,
            slide in 1u64..40,
            near_max in proptest::bool::ANY,
            offsets in proptest::collection::vec(0u64..300, 0..60),
            cut_offsets in proptest::collection::vec(0u64..310, 0..6),
        ) {
            let base = if near_max { MAX - 299 } else { 0 };
            let events: Vec<u64> = offsets.iter().map(|&o| base + o).collect();
            let cuts: Vec<u64> = cut_offsets.iter().map(|&o| base.saturating_add(o)).collect();
            let spec = match kind {
                0 => Windows::tumbling(size),
                1 => Windows::sliding(size.max(slide), slide.min(size)),
                _ => Windows::session(size),
            };
            proptest::prop_assert_eq!(run(spec, &events, &cuts), reference(spec, &events));
        }
    }
}
