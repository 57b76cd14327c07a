//! Black-box tests of Quokka, one module per feature, all over real loopback TCP, with the
//! engine in process (many cases, fast). The real binaries, run as processes, are tested in
//! `tests/processes`, which shares this crate's harness.
//!
//! [`harness`] starts an engine with a collecting sink and waits on its state; [`reference`]
//! computes what the output must be, independently of the app code under test, and
//! [`nexmark_reference`] does so for the NEXMark queries; [`fixtures`] holds the bundled data.
//! The benchmarks (`bench/`) use the fixtures and harness too.

#[cfg(test)]
mod apps;
#[cfg(test)]
mod bad_input;
#[cfg(test)]
mod change_deadlines;
#[cfg(test)]
mod cluster;
pub mod fixtures;
pub mod harness;
#[cfg(test)]
mod limits;
#[cfg(test)]
mod nexmark;
pub mod nexmark_reference;
pub mod reference;
#[cfg(test)]
mod scaling;
#[cfg(test)]
mod windows;
#[cfg(test)]
mod word_count;
