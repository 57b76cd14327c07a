//! The exactly-once sink protocol: what an engine core sends on a sink connection with
//! `--guarantee exactly-once`, and the receiver's side of it ([`Committer`], pure, and
//! [`Receiver`], which serves connections with it).
//!
//! Every message is a frame (`u32` big-endian length, then the payload); the payload's first
//! byte says what it is:
//! - `H` hello, first on every connection: the run (`u64` LE: it grows at every start of the
//!   engine on its state dir), the last durable checkpoint (`u64` LE, 0 if none), then the stream's name (UTF-8, one per core
//!   and sink: `NODE/CORE/SINK`). The receiver answers `A` with the last epoch it holds whole
//!   from this stream (0 if none); the engine resends what follows.
//! - `R` record: the output's bytes, as the app encoded them.
//! - `E` epoch end (`u64` LE): every record of epoch n on this stream is before it. The
//!   receiver answers `A n` once it holds them; a checkpoint completes only when every stream
//!   answered.
//! - `C` commit (`u64` LE): checkpoint n is durable: release every record of every epoch up to
//!   n, of every stream. A commit at or below one already applied changes nothing.
//!
//! - `D` dead stream (`u64` LE, then a stream name): that stream's node was lost and its slots
//!   restored from checkpoint d elsewhere: keep its records up to epoch d, drop the rest and
//!   whatever it still delivers (the restored slots produce them again), until a hello names
//!   that stream again (a new core under the lost one's name and id). Any stream may send it.
//!
//! A hello of a newer run that names checkpoint d releases what older runs left up to d and
//! drops the rest (the new run produces it again from checkpoint d); from then on, whatever an
//! older run's connection still delivers (its socket may hold a backlog after the crash) is
//! ignored. A hello of the same run and stream (a reconnect) drops that stream's records after
//! its last whole epoch (they are sent again).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use crate::framing::{read_frame, write_frame, FrameError};

/// One frame of the protocol, engine to receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkFrame<'a> {
    Hello {
        run: u64,
        durable: u64,
        stream: &'a str,
    },
    Record(&'a [u8]),
    EpochEnd(u64),
    Commit(u64),
    Dead {
        checkpoint: u64,
        stream: &'a str,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("an empty frame")]
    Empty,
    #[error("frame kind {0:#04x} is not H, R, E, C, D or A")]
    Kind(u8),
    #[error("a `{0}` frame of {1} bytes")]
    Length(char, usize),
    #[error("a stream name that is not UTF-8")]
    Name,
    #[error("the receiver has seen run {0} of an engine, newer than this one's: it ignores this run (was the state dir reset, or does a second engine write to this receiver? restart the receiver)")]
    Fenced(u64),
}

fn u64_at(payload: &[u8], kind: char) -> Result<u64, ProtocolError> {
    let bytes: [u8; 8] = (payload.get(1..9))
        .and_then(|b| b.try_into().ok())
        .ok_or(ProtocolError::Length(kind, payload.len()))?;
    Ok(u64::from_le_bytes(bytes))
}

impl<'a> SinkFrame<'a> {
    /// The frame's payload (without the length header).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SinkFrame::Hello {
                run,
                durable,
                stream,
            } => {
                out.push(b'H');
                out.extend_from_slice(&run.to_le_bytes());
                out.extend_from_slice(&durable.to_le_bytes());
                out.extend_from_slice(stream.as_bytes());
            }
            SinkFrame::Record(r) => {
                out.push(b'R');
                out.extend_from_slice(r);
            }
            SinkFrame::EpochEnd(n) => {
                out.push(b'E');
                out.extend_from_slice(&n.to_le_bytes());
            }
            SinkFrame::Commit(n) => {
                out.push(b'C');
                out.extend_from_slice(&n.to_le_bytes());
            }
            SinkFrame::Dead { checkpoint, stream } => {
                out.push(b'D');
                out.extend_from_slice(&checkpoint.to_le_bytes());
                out.extend_from_slice(stream.as_bytes());
            }
        }
    }

    pub fn decode(payload: &'a [u8]) -> Result<Self, ProtocolError> {
        let kind = *payload.first().ok_or(ProtocolError::Empty)?;
        let exact = |k: char| {
            if payload.len() == 9 {
                u64_at(payload, k)
            } else {
                Err(ProtocolError::Length(k, payload.len()))
            }
        };
        Ok(match kind {
            b'H' => {
                if payload.len() < 17 {
                    return Err(ProtocolError::Length('H', payload.len()));
                }
                SinkFrame::Hello {
                    run: u64_at(payload, 'H')?,
                    durable: u64_at(&payload[8..], 'H')?,
                    stream: std::str::from_utf8(&payload[17..]).map_err(|_| ProtocolError::Name)?,
                }
            }
            b'R' => SinkFrame::Record(&payload[1..]),
            b'E' => SinkFrame::EpochEnd(exact('E')?),
            b'C' => SinkFrame::Commit(exact('C')?),
            b'D' => SinkFrame::Dead {
                checkpoint: u64_at(payload, 'D')?,
                stream: std::str::from_utf8(&payload[9..]).map_err(|_| ProtocolError::Name)?,
            },
            other => return Err(ProtocolError::Kind(other)),
        })
    }
}

/// The receiver's refusal of a hello from a run older than one it has seen: `F` + that run.
pub fn encode_fenced(newest: u64) -> [u8; 9] {
    let mut f = [b'F'; 9];
    f[1..].copy_from_slice(&newest.to_le_bytes());
    f
}

/// The receiver's answer: `A` + the last epoch it holds whole from the stream.
pub fn encode_ack(epoch: u64) -> [u8; 9] {
    let mut a = [b'A'; 9];
    a[1..].copy_from_slice(&epoch.to_le_bytes());
    a
}

pub fn decode_ack(payload: &[u8]) -> Result<u64, ProtocolError> {
    match payload.first() {
        Some(b'F') if payload.len() == 9 => Err(ProtocolError::Fenced(u64_at(payload, 'F')?)),
        Some(b'A') if payload.len() == 9 => u64_at(payload, 'A'),
        Some(b'A') => Err(ProtocolError::Length('A', payload.len())),
        Some(&k) => Err(ProtocolError::Kind(k)),
        None => Err(ProtocolError::Empty),
    }
}

/// A stream: a run of the engine and a stream name in it.
pub type StreamKey = (u64, String);

#[derive(Debug, Default)]
struct Stream {
    /// The last epoch whose end arrived.
    ended: u64,
    /// Records of whole epochs not released yet: (epoch, arrival number, record).
    whole: Vec<(u64, u64, Vec<u8>)>,
    /// Records since the last epoch end, with their arrival number.
    open: Vec<(u64, Vec<u8>)>,
}

/// The receiver's bookkeeping, pure: records wait per stream until a commit releases them, in
/// the order they arrived; each commit applies once.
#[derive(Debug, Default)]
pub struct Committer {
    streams: HashMap<StreamKey, Stream>,
    committed: u64,
    arrivals: u64,
    /// The newest run that said hello: older runs are fenced off.
    newest: u64,
    /// Streams of lost nodes: what they still deliver is ignored.
    dead: std::collections::HashSet<StreamKey>,
}

impl Committer {
    /// The highest checkpoint committed so far.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Whether `run` is older than one that said hello since: what it sends is ignored.
    pub fn is_fenced(&self, run: u64) -> bool {
        run < self.newest
    }

    /// A stream says hello: returns the last epoch held whole from it (to answer `A`) and the
    /// records this releases (an older run's, up to the checkpoint the new run started from);
    /// `None` if its run is fenced off.
    pub fn hello(&mut self, key: &StreamKey, durable: u64) -> Option<(u64, Vec<Vec<u8>>)> {
        if self.is_fenced(key.0) {
            return None;
        }
        self.newest = key.0;
        // A new core under a lost one's name (ids are reused): its stream lives again.
        self.dead.remove(key);
        let released = self.commit(durable);
        // What older runs left beyond the checkpoint the new run starts from comes again.
        self.streams.retain(|(run, _), s| {
            *run == key.0 || {
                s.whole.retain(|(e, _, _)| *e <= durable);
                !s.whole.is_empty()
            }
        });
        let stream = self.streams.entry(key.clone()).or_default();
        // A reconnect: what followed the last whole epoch is sent again.
        stream.open.clear();
        Some((stream.ended.max(durable), released))
    }

    /// Stream `key`'s node was lost and its slots restored from checkpoint `checkpoint`: its
    /// records up to that epoch stay (a commit releases them), the rest are dropped, and so is
    /// whatever it still delivers.
    pub fn dead(&mut self, key: StreamKey, checkpoint: u64) {
        if let Some(s) = self.streams.get_mut(&key) {
            s.whole.retain(|(e, _, _)| *e <= checkpoint);
            s.open.clear();
            s.ended = s.ended.min(checkpoint);
        }
        self.dead.insert(key);
    }

    fn ignores(&self, key: &StreamKey) -> bool {
        self.is_fenced(key.0) || self.dead.contains(key)
    }

    pub fn record(&mut self, key: &StreamKey, record: &[u8]) {
        self.records(key, vec![record.to_vec()]);
    }

    /// Records that arrived in this order.
    pub fn records(&mut self, key: &StreamKey, records: Vec<Vec<u8>>) {
        if self.ignores(key) {
            return;
        }
        let open = &mut self.streams.entry(key.clone()).or_default().open;
        for r in records {
            self.arrivals += 1;
            open.push((self.arrivals, r));
        }
    }

    /// Epoch `epoch` of `key` ended: returns the epoch to acknowledge.
    pub fn epoch_end(&mut self, key: &StreamKey, epoch: u64) -> u64 {
        if self.ignores(key) {
            return 0;
        }
        let s = self.streams.entry(key.clone()).or_default();
        if epoch > s.ended {
            s.ended = epoch;
            let open = std::mem::take(&mut s.open);
            s.whole.extend(open.into_iter().map(|(n, r)| (epoch, n, r)));
        } else {
            // An epoch end it already has (sent again after a reconnect): what came with it
            // again is dropped.
            s.open.clear();
        }
        s.ended
    }

    /// Checkpoint `epoch` is durable: the records of every epoch up to it, of every stream, in
    /// the order they arrived. Empty if it was committed already.
    pub fn commit(&mut self, epoch: u64) -> Vec<Vec<u8>> {
        if epoch <= self.committed {
            return Vec::new();
        }
        self.committed = epoch;
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        for s in self.streams.values_mut() {
            let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut s.whole)
                .into_iter()
                .partition(|(e, _, _)| *e <= epoch);
            s.whole = later;
            out.extend(now.into_iter().map(|(_, n, r)| (n, r)));
        }
        out.sort_unstable_by_key(|(n, _)| *n);
        out.into_iter().map(|(_, r)| r).collect()
    }
}

/// Serves exactly-once sink connections: a thread per connection; `on_commit` gets the records
/// each commit releases, in arrival order, once.
pub struct Receiver {
    addr: SocketAddr,
    committer: Arc<Mutex<Committer>>,
}

impl Receiver {
    pub fn start(
        listener: TcpListener,
        on_commit: impl Fn(Vec<Vec<u8>>) + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let committer: Arc<Mutex<Committer>> = Arc::default();
        let on_commit = Arc::new(on_commit);
        let shared = committer.clone();
        std::thread::Builder::new()
            .name("quokka-eo-accept".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (committer, on_commit) = (shared.clone(), on_commit.clone());
                    std::thread::spawn(move || {
                        if let Err(e) = serve(stream, &committer, &*on_commit) {
                            tracing::debug!("exactly-once sink connection ended: {e}");
                        }
                    });
                }
            })?;
        Ok(Receiver { addr, committer })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The highest checkpoint committed so far.
    pub fn committed(&self) -> u64 {
        self.committer.lock().unwrap().committed()
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the first frame is not a hello")]
    NoHello,
    #[error("run {0} is older than one that said hello since")]
    Fenced(u64),
}

/// One connection: hello first, then records, epoch ends (answered) and commits.
fn serve(
    mut stream: TcpStream,
    committer: &Mutex<Committer>,
    on_commit: &(dyn Fn(Vec<Vec<u8>>) + Send + Sync),
) -> Result<(), ServeError> {
    let max = 64 << 20;
    let Some(first) = read_frame(&mut stream, max)? else {
        return Ok(());
    };
    let (key, durable) = match SinkFrame::decode(&first)? {
        SinkFrame::Hello {
            run,
            durable,
            stream: name,
        } => ((run, name.to_string()), durable),
        _ => return Err(ServeError::NoHello),
    };
    let hello = committer.lock().unwrap().hello(&key, durable);
    let Some((held, released)) = hello else {
        // Say why, so the engine can: a state dir reset, or a second engine on this receiver.
        let newest = committer.lock().unwrap().newest;
        let _ = write_frame(&mut stream, &encode_fenced(newest));
        return Err(ServeError::Fenced(key.0));
    };
    if !released.is_empty() {
        on_commit(released);
    }
    write_frame(&mut stream, &encode_ack(held))?;
    // Buffered reads, and records handed over a batch at a time (under one lock): a frame
    // per read and a lock per record held the receiver below the engine's output rate.
    let mut input =
        std::io::BufReader::with_capacity(1 << 20, stream.try_clone().map_err(FrameError::Io)?);
    let mut records: Vec<Vec<u8>> = Vec::new();
    let hand_over = |records: &mut Vec<Vec<u8>>| {
        if !records.is_empty() {
            committer
                .lock()
                .unwrap()
                .records(&key, std::mem::take(records));
        }
    };
    loop {
        if input.buffer().is_empty() || records.len() >= 4096 {
            // About to wait for the socket (or a batch is full): what came is handed over.
            hand_over(&mut records);
        }
        let Some(frame) = read_frame(&mut input, max)? else {
            break;
        };
        match SinkFrame::decode(&frame)? {
            SinkFrame::Record(r) => records.push(r.to_vec()),
            SinkFrame::EpochEnd(n) => {
                hand_over(&mut records);
                let held = committer.lock().unwrap().epoch_end(&key, n);
                write_frame(&mut stream, &encode_ack(held))?;
                stream.flush().map_err(FrameError::Io)?;
            }
            SinkFrame::Commit(n) => {
                hand_over(&mut records);
                // Under the lock, so two commits release in order.
                let mut c = committer.lock().unwrap();
                if c.is_fenced(key.0) {
                    return Err(ServeError::Fenced(key.0));
                }
                let released = c.commit(n);
                if !released.is_empty() {
                    on_commit(released);
                }
            }
            SinkFrame::Dead { checkpoint, stream } => {
                hand_over(&mut records);
                (committer.lock().unwrap()).dead((key.0, stream.to_string()), checkpoint);
            }
            SinkFrame::Hello { .. } => return Err(ServeError::NoHello),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(run: u64, name: &str) -> StreamKey {
        (run, name.into())
    }

    fn texts(records: Vec<Vec<u8>>) -> Vec<String> {
        records
            .into_iter()
            .map(|r| String::from_utf8(r).unwrap())
            .collect()
    }

    #[test]
    fn frames_read_back_as_written_and_garbage_is_refused() {
        for f in [
            SinkFrame::Hello {
                run: 7,
                durable: 3,
                stream: "w1/0/counts",
            },
            SinkFrame::Record(b"a => 1\n"),
            SinkFrame::Record(b""),
            SinkFrame::EpochEnd(9),
            SinkFrame::Commit(u64::MAX),
            SinkFrame::Dead {
                checkpoint: 4,
                stream: "w3/2/counts",
            },
        ] {
            let mut bytes = Vec::new();
            f.encode(&mut bytes);
            assert_eq!(SinkFrame::decode(&bytes), Ok(f));
        }
        assert_eq!(SinkFrame::decode(b""), Err(ProtocolError::Empty));
        assert_eq!(SinkFrame::decode(b"X"), Err(ProtocolError::Kind(b'X')));
        assert_eq!(
            SinkFrame::decode(b"E123"),
            Err(ProtocolError::Length('E', 4))
        );
        assert_eq!(
            SinkFrame::decode(b"Hshort"),
            Err(ProtocolError::Length('H', 6))
        );
        assert_eq!(decode_ack(&encode_ack(5)), Ok(5));
        assert_eq!(decode_ack(&encode_fenced(9)), Err(ProtocolError::Fenced(9)));
        assert!(decode_ack(b"A1").is_err());
    }

    #[test]
    fn records_wait_for_the_commit_of_their_epoch_and_a_commit_applies_once() {
        let mut c = Committer::default();
        let (a, b) = (key(1, "w1/0/s"), key(1, "w1/1/s"));
        assert_eq!(c.hello(&a, 0), Some((0, vec![])));
        c.hello(&b, 0);
        c.record(&a, b"a1");
        c.record(&b, b"b1");
        assert_eq!(c.epoch_end(&a, 1), 1);
        c.record(&a, b"a2");
        assert_eq!(c.epoch_end(&b, 1), 1);
        c.record(&b, b"b2");
        // Epoch 2 has begun on both; checkpoint 1 is durable.
        assert_eq!(texts(c.commit(1)), vec!["a1", "b1"]);
        assert!(c.commit(1).is_empty(), "a commit applies once");
        assert_eq!(c.committed(), 1);
        c.epoch_end(&a, 2);
        c.epoch_end(&b, 2);
        assert_eq!(texts(c.commit(2)), vec!["a2", "b2"]);
    }

    #[test]
    fn a_new_run_releases_what_its_checkpoint_covers_and_drops_the_rest() {
        let mut c = Committer::default();
        let old = key(1, "w1/0/s");
        c.hello(&old, 0);
        c.record(&old, b"x");
        c.epoch_end(&old, 1);
        c.record(&old, b"y");
        c.epoch_end(&old, 2);
        c.record(&old, b"z");
        // The engine crashed after checkpoint 1 was durable, before its commit was sent.
        let new = key(2, "w1/0/s");
        let (held, released) = c.hello(&new, 1).unwrap();
        assert_eq!(texts(released), vec!["x"]);
        assert_eq!(held, 1);
        // The old run's connection still delivers its backlog: fenced off.
        c.record(&old, b"z");
        assert_eq!(c.epoch_end(&old, 3), 0);
        assert!(c.hello(&key(1, "w1/1/s"), 0).is_none());
        c.record(&new, b"y");
        c.epoch_end(&new, 2);
        c.epoch_end(&new, 3);
        assert_eq!(
            texts(c.commit(3)),
            vec!["y"],
            "the old run's y and z are not released"
        );
    }

    #[test]
    fn a_reconnect_drops_the_open_epoch_and_a_repeated_epoch_end() {
        let mut c = Committer::default();
        let s = key(1, "w1/0/s");
        c.hello(&s, 0);
        c.record(&s, b"a");
        c.epoch_end(&s, 1);
        c.record(&s, b"b (cut)");
        // The connection broke; the engine resends after epoch 1.
        assert_eq!(c.hello(&s, 0).unwrap().0, 1);
        c.record(&s, b"b");
        c.epoch_end(&s, 2);
        // An epoch end sent again (its ack was lost) brings nothing twice.
        c.record(&s, b"b");
        assert_eq!(c.epoch_end(&s, 2), 2);
        assert_eq!(texts(c.commit(2)), vec!["a", "b"]);
    }

    #[test]
    fn a_dead_stream_keeps_its_epochs_up_to_the_checkpoint_and_nothing_it_sends_later() {
        let mut c = Committer::default();
        let (lost, alive) = (key(1, "w3/2/s"), key(1, "w1/0/s"));
        c.hello(&lost, 0);
        c.hello(&alive, 0);
        c.record(&lost, b"x1");
        c.epoch_end(&lost, 1);
        c.record(&lost, b"x2");
        // The lost node ended epoch 2 but checkpoint 2 never became durable.
        c.epoch_end(&lost, 2);
        c.record(&lost, b"x3 (open)");
        c.dead(lost.clone(), 1);
        // Its socket's backlog still arrives: ignored.
        c.record(&lost, b"late");
        assert_eq!(c.epoch_end(&lost, 3), 0);
        c.record(&alive, b"a2");
        c.epoch_end(&alive, 3);
        assert_eq!(texts(c.commit(3)), vec!["x1", "a2"]);
        // A node joins under the lost one's name, its core under the lost core's id.
        assert_eq!(c.hello(&lost, 3), Some((3, vec![])));
        c.record(&lost, b"y4");
        assert_eq!(c.epoch_end(&lost, 4), 4);
        assert_eq!(texts(c.commit(4)), vec!["y4"]);
    }
}
