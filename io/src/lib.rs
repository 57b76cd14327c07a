//! Quokka's I/O edges: everything that touches a socket (or a source file) lives here.
//!
//! - [`framing`]: Wallaroo's wire framing (`u32` big-endian length, then payload): the one
//!   framing codec, pure (frames split across reads) and blocking (any `Read`/`Write`).
//! - [`tcp`]: the engine-side TCP edges running on glommio executors: a frame reader for source
//!   connections and a sink connection that reconnects with backoff.
//! - [`control`]: the control protocol (`quokka ctl`, joining and leaving nodes): a pure codec,
//!   a blocking client that waits for the endpoint's greeting before it sends anything, and an
//!   endpoint that bounds its connections and deadlines.
//! - [`http`]: a small HTTP/1.1 endpoint for reading (GET and HEAD): bounded connections, a
//!   deadline and a size limit for the request head, an optional bearer token.
//! - [`durable`]: the durable TCP source protocol (a sender resends from where the engine
//!   says) and its blocking client.
//! - [`exactly_once`]: the exactly-once sink protocol (epochs, acknowledgements, commits) and
//!   its receiver.
//! - [`file`]: a replayable source, a file of frames or lines read from an offset.
//! - [`client`]: blocking clients used by the tools, tests and benchmarks (send frames, collect
//!   outputs).
//!
//! This crate knows nothing of apps or of the engine; the engine calls into it.

mod bounded;
pub mod client;
pub mod control;
pub mod durable;
pub mod exactly_once;
pub mod file;
pub mod framing;
pub mod http;
pub mod tcp;

/// Compares secrets (cluster tokens) in the same time wherever the first difference is, so a
/// peer cannot find one byte by byte from response times (the length still shows).
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_exact_secret_matches() {
        assert!(super::same_secret("s3cret", "s3cret"));
        assert!(super::same_secret("", ""));
        for wrong in ["", "s3cre", "s3cret!", "S3cret", "s3creT", "x3cret"] {
            assert!(!super::same_secret(wrong, "s3cret"), "{wrong:?}");
        }
    }
}
