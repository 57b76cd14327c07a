//! Black-box tests of Quokka, one module per feature, all over real loopback TCP: the engine
//! in-process (many cases, fast) and the real `quokka` binary (its CLI and signals).
//!
//! [`harness`] starts an engine with a collecting sink; [`reference`] computes what the output
//! must be, independently of the app code under test.

#[cfg(test)]
mod apps;
#[cfg(test)]
mod bad_input;
#[cfg(test)]
mod binary;
#[cfg(test)]
mod cluster;
pub mod harness;
#[cfg(test)]
mod nodes;
pub mod reference;
#[cfg(test)]
mod scaling;
#[cfg(test)]
mod word_count;
