//! The bundled data files (`apps/data`) that tests and benchmarks run on, in one place.

use std::path::PathBuf;

/// The Bill of Rights: a small English text for word count.
pub const BILL_OF_RIGHTS: &str = include_str!("../../apps/data/bill_of_rights.txt");

/// Wallaroo's alphabet votes, framed: 10,000 frames of a letter and a `u32` vote count.
pub const VOTES: &[u8] = include_bytes!("../../apps/data/votes.msg");

/// Wallaroo's ticker symbols for Market Spread, one per line.
pub const SYMBOLS: &[u8] = include_bytes!("../../apps/data/r3k-legal-symbols.msg");

/// The initial quotes of 350 symbols: framed NBBO records, sent before any order.
pub const INITIAL_NBBO: &[u8] =
    include_bytes!("../../apps/data/350-symbols_initial-nbbo-fixish.msg");

/// Where a bundled data file is on disk, for a tool that reads it (`quokka-send --file`).
pub fn path(file: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../apps/data")).join(file)
}
