//! The apps linked into the `quokka` binary, each written once with the engine's app API and
//! no notion of cores, nodes or slots; plus the data generators their demos, tests and
//! benchmarks use.

pub mod alphabet;
pub mod corpus;
pub mod market_spread;
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
    vec![AppInfo {
        name: "word_count",
        about:
            "running count per word of text lines; outputs `word => count` (Wallaroo's word count)",
        build: word_count::app,
    }]
}

/// The app called `name`.
pub fn find(name: &str) -> Option<AppInfo> {
    all().into_iter().find(|a| a.name == name)
}
