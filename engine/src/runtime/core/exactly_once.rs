//! A core's sink connection with `--guarantee exactly-once` (protocol in
//! `quokka_io::exactly_once`): each output goes as an `R` frame, each checkpoint this core
//! completes as an `E` (epoch end) frame, each durable checkpoint as a `C` (commit) frame.
//! Everything after the last epoch end the receiver acknowledged is kept, so a broken
//! connection is followed by a hello and a resend from what the receiver says it holds. The
//! receiver's acknowledgements are read by a task of their own.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::net::TcpStream;
use quokka_io::exactly_once::{decode_ack, ProtocolError, SinkFrame};
use quokka_io::framing::{frame_len, HEADER};

use super::Core;
use crate::routing::CoreId;
use crate::runtime::notify::Notify;
use crate::sink_buffer::{Mark, SinkBuffer};

/// What one exactly-once sink connection shares with its acknowledgement reader.
#[derive(Default)]
struct Acks {
    /// The last epoch the receiver holds whole.
    held: Cell<u64>,
    /// The connection failed (the reader saw it end).
    broken: Cell<bool>,
    changed: Notify,
}

/// Frames not acknowledged yet: each epoch's bytes, up to and including its end.
#[derive(Default)]
struct Unacked {
    /// (epoch whose end closes the segment, or `None` for the open one; its bytes).
    segments: VecDeque<(Option<u64>, Vec<u8>)>,
}

impl Unacked {
    fn open(&mut self) -> &mut Vec<u8> {
        if !matches!(self.segments.back(), Some((None, _))) {
            self.segments.push_back((None, Vec::new()));
        }
        &mut self.segments.back_mut().expect("an open segment").1
    }

    fn end_epoch(&mut self, epoch: u64) {
        self.open();
        self.segments.back_mut().expect("open").0 = Some(epoch);
    }

    /// The receiver holds epochs up to `epoch` whole: their bytes are no longer needed.
    /// Returns how many bytes that drops.
    fn acknowledged(&mut self, epoch: u64) -> usize {
        let mut dropped = 0;
        while matches!(self.segments.front(), Some((Some(e), _)) if *e <= epoch) {
            dropped += self.segments.pop_front().map_or(0, |s| s.1.len());
        }
        dropped
    }

    /// Bytes kept.
    fn len(&self) -> usize {
        self.segments.iter().map(|s| s.1.len()).sum()
    }
}

/// Appends `payload` as one frame.
fn frame(out: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; HEADER]);
    payload(out);
    let len = (out.len() - at - HEADER) as u32;
    out[at..at + HEADER].copy_from_slice(&len.to_be_bytes());
}

/// Frames a taken buffer: its outputs as `R`, its marks between them. `stream_of` names a
/// lost core's stream of this sink.
fn frame_buffer(buffer: &SinkBuffer, unacked: &mut Unacked, stream_of: &dyn Fn(CoreId) -> String) {
    let (bytes, ends, _) = buffer.records();
    let mut marks = buffer.marks().iter().peekable();
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        while let Some(&&(before, mark)) = marks.peek() {
            if before > i {
                break;
            }
            put_mark(mark, unacked, stream_of);
            marks.next();
        }
        let record = &bytes[start..end];
        frame(unacked.open(), |o| SinkFrame::Record(record).encode(o));
        start = end;
    }
    for &(_, mark) in marks {
        put_mark(mark, unacked, stream_of);
    }
}

fn put_mark(mark: Mark, unacked: &mut Unacked, stream_of: &dyn Fn(CoreId) -> String) {
    match mark {
        Mark::EpochEnd(n) => {
            frame(unacked.open(), |o| SinkFrame::EpochEnd(n).encode(o));
            unacked.end_epoch(n);
        }
        Mark::Commit(n) => frame(unacked.open(), |o| SinkFrame::Commit(n).encode(o)),
        Mark::Dead { checkpoint, core } => {
            let stream = &stream_of(core);
            frame(unacked.open(), |o| {
                SinkFrame::Dead { checkpoint, stream }.encode(o)
            })
        }
    }
}

/// Drains the core's buffer for sink `i` into its exactly-once connection until the core
/// finishes.
pub(super) async fn write_outputs(core: &Rc<Core>, i: usize) {
    let state = &core.sink;
    let addr = core.config.outputs[i];
    let sink = core.dataflow.sinks.get(i).map_or("", String::as_str);
    let name = format!("{}/{}/{sink}", core.config.name, core.id);
    let stream_of = |lost: CoreId| {
        let node = core.lost_nodes.borrow().get(&lost).cloned();
        format!("{}/{lost}/{sink}", node.unwrap_or_default())
    };
    let unacked = RefCell::new(Unacked::default());
    let mut writing = SinkBuffer::default();
    let mut conn: Option<(WriteHalf<TcpStream>, Rc<Acks>)> = None;
    // Bytes of `unacked` already written to the current connection.
    let mut sent = 0usize;
    let mut failures = 0u32;
    // Once the core is done: when to stop waiting for the receiver.
    let mut give_up_at: Option<std::time::Instant> = None;
    // Outputs taken from the buffer so far (they count as written once they are sent).
    let mut framed = 0u64;
    loop {
        // Take what waits, only while connected: with the receiver away the buffer fills and
        // holds the core back, as for any sink.
        if conn.is_some() && !state.buffers.borrow()[i].is_empty() {
            state.buffers.borrow_mut()[i].swap_contents(&mut writing);
            state.progress.notify_all();
            frame_buffer(&writing, &mut unacked.borrow_mut(), &stream_of);
            // Latency up to the receiver's connection (it releases the outputs at the commit
            // of their checkpoint, a checkpoint interval later).
            core.record_latencies(writing.records().2);
            let n = writing.records().1.len() as u64;
            core.report.borrow_mut().outputs += n;
            framed += n;
            writing.clear();
        }
        if conn.as_ref().is_some_and(|(_, acks)| acks.broken.get()) {
            conn = None;
        }
        if conn.is_none() {
            let gave_up = (give_up_at.or(state.drain_deadline.get()))
                .is_some_and(|t| std::time::Instant::now() >= t);
            if state.finished.get() && gave_up {
                let left = unacked.borrow().len();
                tracing::error!(sink = %addr, "exactly-once sink unreachable at stop: {left} bytes of outputs not delivered (a restart sends what is not committed again)");
                return;
            }
            match connect(addr, &name, core.run, core.durable.get()).await {
                Ok((write, acks)) => {
                    unacked.borrow_mut().acknowledged(acks.held.get());
                    state.acked[i].set(acks.held.get());
                    state.progress.notify_all();
                    state.down[i].set(false);
                    failures = 0;
                    sent = 0;
                    conn = Some((write, acks));
                    continue;
                }
                Err(e) => {
                    if failures.is_multiple_of(50) {
                        tracing::warn!(sink = %addr, "exactly-once sink: {e}; retrying");
                    }
                    failures += 1;
                    core.report.borrow_mut().sink_failures += 1;
                    state.down[i].set(true);
                    let backoff = Duration::from_millis(10 << failures.min(6));
                    glommio::timer::sleep(backoff).await;
                    continue;
                }
            }
        }
        let (write, acks) = conn.as_mut().expect("connected");
        // Acknowledged epochs are dropped (and `sent` with them).
        let held = acks.held.get();
        if held > state.acked[i].get() {
            sent -= unacked.borrow_mut().acknowledged(held);
            state.acked[i].set(held);
            state.progress.notify_all();
        }
        // Write what was not written to this connection yet.
        let pending: Vec<u8> = {
            let u = unacked.borrow();
            let mut skip = sent;
            let mut out = Vec::new();
            for (_, seg) in &u.segments {
                if skip >= seg.len() {
                    skip -= seg.len();
                    continue;
                }
                out.extend_from_slice(&seg[skip..]);
                skip = 0;
            }
            out
        };
        if !pending.is_empty() {
            let wrote = async {
                write.write_all(&pending).await?;
                write.flush().await
            };
            // A receiver that stops reading must not hold a stop past its drain timeout (the
            // core's sink state checks the drain deadline while it waits).
            let stalled = async {
                loop {
                    if let Some(t) = state
                        .finished
                        .get()
                        .then(|| state.drain_deadline.get())
                        .flatten()
                    {
                        glommio::timer::sleep(
                            t.saturating_duration_since(std::time::Instant::now()),
                        )
                        .await;
                        return Err(std::io::Error::other(
                            "the receiver stopped reading (drain timeout)",
                        ));
                    }
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
            };
            match future::or(wrote, stalled).await {
                Ok(()) => {
                    sent += pending.len();
                    // Written: a slot handed over after this finds its outputs gone ahead.
                    state.written[i].set(framed);
                    state.progress.notify_all();
                }
                Err(e) => {
                    tracing::warn!(sink = %addr, "exactly-once sink connection lost: {e}; reconnecting to resend from what it holds");
                    conn = None;
                    if state.finished.get()
                        && state
                            .drain_deadline
                            .get()
                            .is_some_and(|t| std::time::Instant::now() >= t)
                    {
                        tracing::error!(sink = %addr, "exactly-once sink: gave up at the drain timeout; a restart sends what is not committed again");
                        return;
                    }
                    continue;
                }
            }
        }
        let ended_epochs = (unacked.borrow().segments.iter()).any(|(e, _)| e.is_some());
        if state.finished.get() && state.buffers.borrow()[i].is_empty() && !ended_epochs {
            // Every ended epoch is with the receiver; records after the last end (a stop's
            // end of input) are never committed: a restart makes them again.
            return;
        }
        let give_up = state.finished.get().then(|| {
            *give_up_at.get_or_insert_with(|| {
                (state.drain_deadline.get())
                    .unwrap_or_else(|| crate::runtime::deadline_after(core.config.drain_timeout))
            })
        });
        if give_up.is_some_and(|t| std::time::Instant::now() >= t) {
            tracing::error!(sink = %addr, "exactly-once sink did not acknowledge every epoch before the drain timeout: a restart sends what is not committed again");
            return;
        }
        let acks = conn.as_ref().expect("connected").1.clone();
        let ack_wait = acks.changed.wait();
        let ready = state.ready.wait();
        if state.buffers.borrow()[i].is_empty() && acks.held.get() <= state.acked[i].get() {
            // Done, the writer still waits for acknowledgements: look at the clock now and then.
            let tick = async {
                if state.finished.get() {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                } else {
                    future::pending::<()>().await;
                }
            };
            future::or(future::or(ready, ack_wait), tick).await;
        }
    }
}

/// Connects, says hello, and reads the receiver's answer; starts the task that reads its
/// acknowledgements.
async fn connect(
    addr: std::net::SocketAddr,
    name: &str,
    run: u64,
    durable: u64,
) -> Result<(WriteHalf<TcpStream>, Rc<Acks>), String> {
    // A receiver that does not answer its hello (not an exactly-once receiver) is given up on.
    let answered = async { Ok(hello(addr, name, run, durable).await) };
    let silent = async {
        glommio::timer::sleep(HELLO_TIMEOUT).await;
        Err(format!(
            "no answer to the hello within {HELLO_TIMEOUT:?}: is it an exactly-once receiver (quokka-recv --exactly-once)?"
        ))
    };
    future::or(answered, silent).await?
}

/// How long a receiver has to answer a hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

async fn hello(
    addr: std::net::SocketAddr,
    name: &str,
    run: u64,
    durable: u64,
) -> Result<(WriteHalf<TcpStream>, Rc<Acks>), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = futures_lite::io::split(stream);
    let mut hello = Vec::new();
    frame(&mut hello, |o| {
        SinkFrame::Hello {
            run,
            durable,
            stream: name,
        }
        .encode(o)
    });
    write.write_all(&hello).await.map_err(|e| e.to_string())?;
    write.flush().await.map_err(|e| e.to_string())?;
    let held = read_ack(&mut read).await?;
    let acks = Rc::new(Acks::default());
    acks.held.set(held);
    let reader = acks.clone();
    glommio::spawn_local(async move {
        loop {
            match read_ack(&mut read).await {
                Ok(held) => reader.held.set(reader.held.get().max(held)),
                Err(_) => {
                    reader.broken.set(true);
                    reader.changed.notify_all();
                    return;
                }
            }
            reader.changed.notify_all();
        }
    })
    .detach();
    Ok((write, acks))
}

async fn read_ack(read: &mut ReadHalf<TcpStream>) -> Result<u64, String> {
    let mut header = [0; HEADER];
    read.read_exact(&mut header)
        .await
        .map_err(|e| format!("the receiver closed the connection ({e})"))?;
    let len = frame_len(header);
    if len > 64 {
        return Err(format!("a {len}-byte answer: not an exactly-once receiver"));
    }
    let mut payload = vec![0; len];
    read.read_exact(&mut payload)
        .await
        .map_err(|e| e.to_string())?;
    decode_ack(&payload).map_err(|e| match e {
        ProtocolError::Fenced(_) => e.to_string(),
        e => format!("not an exactly-once receiver: {e}"),
    })
}
