//! The apps linked into the `quokka` binary, each written once with the engine's app API and
//! no notion of cores, nodes or slots; plus the data generators their demos, tests and
//! benchmarks use.

pub mod alphabet;
pub mod corpus;
pub mod market_spread;
pub mod nexmark;
pub mod window_counts;
pub mod word_buckets;
pub mod word_count;

use quokka_engine::App;

/// An app the `quokka` binary can run by name.
pub struct AppInfo {
    pub name: &'static str,
    pub about: &'static str,
    pub build: fn() -> App,
}

/// Every linked app.
pub fn all() -> Vec<AppInfo> {
    [
        AppInfo {
            name: "word_count",
            about: "running count per word of text lines; outputs `word => count` (Wallaroo's word count)",
            build: word_count::app,
        },
        AppInfo {
            name: "word_buckets",
            about: "two keyed stages: word count, then per running count n how many words reached it; outputs `n => k`",
            build: word_buckets::app,
        },
        AppInfo {
            name: "alphabet",
            about: "running total of votes per letter (frames: u8 letter, u32 votes); outputs `letter => total`",
            build: alphabet::app,
        },
        AppInfo {
            name: "market_spread",
            about: "orders checked against NBBO spreads per symbol (sources orders, nbbo); outputs order results",
            build: market_spread::app,
        },
        AppInfo {
            name: "window_counts",
            about: "event-time tumbling 1 s counts per key of `MILLIS KEY` lines; outputs `key [start, end) => count`, late lines to sink `late`",
            build: window_counts::app,
        },
    ]
    .into_iter()
    .chain(nexmark::QUERIES)
    .collect()
}

/// The app called `name`.
pub fn find(name: &str) -> Option<AppInfo> {
    all().into_iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_app_is_linked_under_its_own_name() {
        let names: Vec<&str> = all().iter().map(|a| a.name).collect();
        assert_eq!(
            names,
            [
                "word_count",
                "word_buckets",
                "alphabet",
                "market_spread",
                "window_counts",
                "nexmark_q0",
                "nexmark_q1",
                "nexmark_q2",
                "nexmark_q3",
                "nexmark_q4",
                "nexmark_q5",
                "nexmark_q6",
                "nexmark_q7",
                "nexmark_q8",
            ]
        );
        for info in all() {
            assert_eq!((info.build)().name(), info.name);
        }
        assert!(find("nope").is_none());
    }
}
