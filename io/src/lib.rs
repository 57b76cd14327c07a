//! Quokka's I/O edges: everything that touches a socket lives here.
//!
//! - [`framing`]: Wallaroo's wire framing (`u32` big-endian length, then payload), a pure codec
//!   that copes with frames split across reads.
//! - [`tcp`]: the engine-side TCP edges running on glommio executors: a frame reader for source
//!   connections and a sink connection that reconnects with backoff.
//! - [`control`]: the control protocol (`quokka ctl`), a pure codec with blocking helpers.
//! - [`client`]: blocking clients used by the tools, tests and benchmarks (send frames, collect
//!   outputs).
//!
//! This crate knows nothing of apps or of the engine; the engine calls into it.

pub mod client;
pub mod control;
pub mod framing;
pub mod tcp;
