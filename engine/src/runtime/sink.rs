//! A core's sink: outputs are encoded into a bounded buffer, and a writer task sends the buffer to
//! the core's sink connection, recording each output's source-to-sink latency once it is written.

use std::time::Instant;

use quokka_io::tcp::TcpSink;

use super::core::Core;
use crate::metrics::now_ns;

/// Encoded outputs waiting for the sink connection.
#[derive(Default)]
pub struct SinkBuffer {
    bytes: Vec<u8>,
    /// End offset of each output in `bytes`.
    ends: Vec<usize>,
    /// Ingress time of each output's input message.
    ingress: Vec<u64>,
    /// Outputs ever pushed into this buffer.
    pushed: u64,
}

impl SinkBuffer {
    /// Appends one output that `encode` writes.
    pub fn push(&mut self, ingress: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        encode(&mut self.bytes);
        self.ends.push(self.bytes.len());
        self.ingress.push(ingress);
        self.pushed += 1;
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Outputs ever pushed.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Exchanges the waiting outputs with `other`'s (the counter stays).
    fn swap_contents(&mut self, other: &mut SinkBuffer) {
        std::mem::swap(&mut self.bytes, &mut other.bytes);
        std::mem::swap(&mut self.ends, &mut other.ends);
        std::mem::swap(&mut self.ingress, &mut other.ingress);
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.ingress.clear();
    }
}

/// Drains the core's sink buffer into the sink connection until the core finishes.
pub(crate) async fn write_outputs(core: &Core) {
    let mut sink = TcpSink::new(core.config.output);
    let mut writing = SinkBuffer::default();
    // Counts every failed attempt to reach the sink; gives up only once a stop's drain
    // deadline has passed.
    let failed_attempt = || {
        core.report.borrow_mut().sink_failures += 1;
        core.sink_down.set(true);
        core.drain_deadline
            .get()
            .is_some_and(|t| Instant::now() >= t)
    };
    loop {
        while core.sink.borrow().is_empty() {
            if core.finished.get() {
                sink.close().await;
                return;
            }
            core.sink_ready.wait().await;
        }
        core.sink.borrow_mut().swap_contents(&mut writing);
        core.sink_progress.notify_all();
        let taken = now_ns();
        {
            let mut report = core.report.borrow_mut();
            for &t in &writing.ingress {
                report
                    .handoff_latency
                    .saturating_record(taken.saturating_sub(t).max(1));
            }
        }
        let result = sink
            .write_records(&writing.bytes, &writing.ends, &failed_attempt)
            .await;
        core.sink_down.set(result.is_err());
        let n = writing.ends.len() as u64;
        {
            let mut report = core.report.borrow_mut();
            match result {
                Ok(()) => {
                    let now = now_ns();
                    let mut window = core.window.borrow_mut();
                    for &t in &writing.ingress {
                        window.record(now.saturating_sub(t));
                    }
                    report.outputs += n;
                }
                Err(e) => {
                    tracing::error!(core = core.id, "{e}");
                    report.undelivered += n;
                }
            }
        }
        core.written.set(core.written.get() + n);
        core.sink_progress.notify_all();
        writing.clear();
    }
}

/// Waits until every output pushed so far has been written (or given up on).
pub(crate) async fn flushed(core: &Core) {
    let target = core.sink.borrow().pushed();
    while core.written.get() < target {
        core.sink_progress.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_records_boundaries_and_times() {
        let mut b = SinkBuffer::default();
        b.push(5, |v| v.extend_from_slice(b"a => 1\n"));
        b.push(7, |v| v.extend_from_slice(b"bb => 1\n"));
        assert_eq!(b.ends, vec![7, 15]);
        assert_eq!(b.ingress, vec![5, 7]);
        assert_eq!(b.len_bytes(), 15);
        let mut other = SinkBuffer::default();
        b.swap_contents(&mut other);
        assert!(b.is_empty());
        assert_eq!(
            b.pushed(),
            2,
            "the count stays with the buffer producers push into"
        );
        assert_eq!(other.ends, vec![7, 15]);
    }
}
