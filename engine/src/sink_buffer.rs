//! A core's outputs waiting for its sink connection: encoded bytes with each output's boundary
//! and ingress time. Plain data, no I/O: the keyed steps push into it, the runtime's sink writer
//! drains it.

use crate::routing::CoreId;

/// A point between two outputs that an exactly-once sink connection marks (see
/// `quokka_io::exactly_once`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Every output of epoch n is before this.
    EpochEnd(u64),
    /// Checkpoint n is durable: the receiver may release epochs up to n.
    Commit(u64),
    /// Core `core` was lost, and its slots restored from checkpoint `checkpoint`: the receiver
    /// keeps its stream's epochs up to that one and drops the rest.
    Dead { checkpoint: u64, core: CoreId },
}

/// Encoded outputs waiting for the sink connection.
#[derive(Default)]
pub struct SinkBuffer {
    /// Marks, each after the first `.0` outputs (exactly-once only).
    marks: Vec<(usize, Mark)>,
    bytes: Vec<u8>,
    /// End offset of each output in `bytes`.
    ends: Vec<usize>,
    /// Ingress time (monotonic ns) of each output's input message.
    ingress_ns: Vec<u64>,
    /// Outputs ever pushed into this buffer.
    pushed: u64,
}

impl SinkBuffer {
    /// Appends one output that `encode` writes.
    pub fn push(&mut self, ingress_ns: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        encode(&mut self.bytes);
        self.ends.push(self.bytes.len());
        self.ingress_ns.push(ingress_ns);
        self.pushed += 1;
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty() && self.marks.is_empty()
    }

    /// Marks the point after every output pushed so far.
    pub fn push_mark(&mut self, mark: Mark) {
        self.marks.push((self.ends.len(), mark));
    }

    /// The marks, each with how many of the waiting outputs are before it.
    pub fn marks(&self) -> &[(usize, Mark)] {
        &self.marks
    }

    /// The waiting outputs' bytes, the end offset of each output in them, and each output's
    /// ingress time.
    pub fn records(&self) -> (&[u8], &[usize], &[u64]) {
        (&self.bytes, &self.ends, &self.ingress_ns)
    }

    /// Outputs ever pushed.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Exchanges the waiting outputs with `other`'s (the counter stays).
    pub(crate) fn swap_contents(&mut self, other: &mut SinkBuffer) {
        std::mem::swap(&mut self.bytes, &mut other.bytes);
        std::mem::swap(&mut self.ends, &mut other.ends);
        std::mem::swap(&mut self.ingress_ns, &mut other.ingress_ns);
        std::mem::swap(&mut self.marks, &mut other.marks);
    }

    pub(crate) fn clear(&mut self) {
        self.marks.clear();
        self.bytes.clear();
        self.ends.clear();
        self.ingress_ns.clear();
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
        assert_eq!(b.ingress_ns, vec![5, 7]);
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
