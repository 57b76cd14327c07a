//! Blocking clients for the tools, tests and benchmarks: send frames to a source, collect what a
//! sink writes.

use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::framing::{split_frame, write_frame};

/// Connects to `addr`, retrying until `timeout` (the engine may still be starting).
pub fn connect_retry(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A source connection that sends Wallaroo frames.
pub struct FrameSender {
    out: BufWriter<TcpStream>,
}

impl FrameSender {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Self> {
        let stream = connect_retry(addr, timeout)?;
        Ok(Self {
            out: BufWriter::with_capacity(64 * 1024, stream),
        })
    }

    /// Frames and queues one payload.
    pub fn send(&mut self, payload: &[u8]) -> std::io::Result<()> {
        write_frame(&mut self.out, payload).map_err(std::io::Error::from)
    }

    /// Queues bytes as they are (already framed, or deliberately broken).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Flushes and closes the connection (the engine sees a clean end of stream).
    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().shutdown(std::net::Shutdown::Write)
    }

    /// As [`Self::finish`], then waits until the engine closes its side, which it does once it
    /// has read every byte: until then the last frames may sit in socket buffers, and an engine
    /// stopped meanwhile would not read them. An error if it closed without reading all.
    pub fn finish_read(self) -> std::io::Result<()> {
        let stream = self.out.get_ref().try_clone()?;
        self.finish()?;
        let mut buf = [0u8; 64];
        loop {
            match (&stream).read(&mut buf) {
                Ok(0) => return Ok(()),
                // The engine writes nothing on a source connection; ignore it if it did.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("the engine closed the connection before reading all of it ({e})"),
                    ))
                }
            }
        }
    }
}

/// How a sink's byte stream splits into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// Newline-terminated lines (word count's `word => count\n`); the newline is dropped.
    Lines,
    /// Wallaroo frames; the length header is dropped.
    Frames,
}

impl Records {
    /// Splits whole records off the front of `buf`, returning how many bytes were consumed.
    pub fn split<'a>(self, buf: &'a [u8], mut each: impl FnMut(&'a [u8])) -> usize {
        let mut at = 0;
        match self {
            Records::Lines => {
                while let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') {
                    each(&buf[at..at + nl]);
                    at += nl + 1;
                }
            }
            Records::Frames => {
                while let Some((payload, used)) = split_frame(&buf[at..]) {
                    each(payload);
                    at += used;
                }
            }
        }
        at
    }
}

/// Accepts sink connections and hands every record to a callback with the connection's index
/// (records of one connection arrive in order).
pub struct Collector {
    addr: SocketAddr,
    shared: Arc<CollectorShared>,
    _acceptor: JoinHandle<()>,
}

struct CollectorShared {
    /// Connections accepted and not yet at their end.
    open: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    last_record: Mutex<Option<Instant>>,
    changed: Condvar,
}

impl Collector {
    /// Starts accepting on `listener`.
    pub fn start(
        listener: TcpListener,
        records: Records,
        on_record: impl Fn(usize, &[u8]) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(CollectorShared {
            open: AtomicU64::new(0),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last_record: Mutex::new(None),
            changed: Condvar::new(),
        });
        let on_record = Arc::new(on_record);
        let sh = shared.clone();
        let acceptor = std::thread::spawn(move || {
            for (conn, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let (sh, on_record) = (sh.clone(), on_record.clone());
                sh.open.fetch_add(1, Ordering::AcqRel);
                std::thread::spawn(move || {
                    read_records(conn, stream, records, &sh, &*on_record);
                    // Under the lock a waiter checks in, so it cannot miss this.
                    let _guard = sh.last_record.lock().unwrap();
                    sh.open.fetch_sub(1, Ordering::AcqRel);
                    sh.changed.notify_all();
                });
            }
        });
        Ok(Self {
            addr,
            shared,
            _acceptor: acceptor,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Records received so far.
    pub fn records(&self) -> u64 {
        self.shared.records.load(Ordering::Acquire)
    }

    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Acquire)
    }

    /// When the latest record arrived.
    pub fn last_record_at(&self) -> Option<Instant> {
        *self.shared.last_record.lock().unwrap()
    }

    /// Waits until `n` records arrived; false if `timeout` passed first.
    pub fn wait_for(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.shared.last_record.lock().unwrap();
        while self.records() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = self.shared.changed.wait_timeout(guard, left).unwrap().0;
        }
        true
    }

    /// Waits until every connection accepted so far has ended (its peer closed it, or a
    /// process that had it exited) and everything it sent is counted; false after `timeout`.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.shared.last_record.lock().unwrap();
        while self.shared.open.load(Ordering::Acquire) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = self.shared.changed.wait_timeout(guard, left).unwrap().0;
        }
        true
    }

    /// Waits until no record has arrived for `idle`, `n` records arrived, or `stop` is set (a
    /// signal handler's flag: looked at every 100 ms), whichever is first.
    pub fn wait_idle_or(&self, n: Option<u64>, idle: Duration, stop: &AtomicBool) {
        const LOOK: Duration = Duration::from_millis(100);
        let mut guard = self.shared.last_record.lock().unwrap();
        let (mut seen, mut since) = (self.records(), Instant::now());
        while !stop.load(Ordering::Acquire) {
            if n.is_some_and(|n| self.records() >= n) {
                return;
            }
            let left = idle.saturating_sub(since.elapsed());
            if left.is_zero() {
                return;
            }
            guard = self
                .shared
                .changed
                .wait_timeout(guard, left.min(LOOK))
                .unwrap()
                .0;
            let now = self.records();
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
        }
    }
}

fn read_records(
    conn: usize,
    mut stream: TcpStream,
    records: Records,
    shared: &CollectorShared,
    on_record: &(dyn Fn(usize, &[u8]) + Send + Sync),
) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut end = 0;
    loop {
        if end == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = match stream.read(&mut buf[end..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        end += n;
        let mut count = 0;
        let used = records.split(&buf[..end], |r| {
            on_record(conn, r);
            count += 1;
        });
        buf.copy_within(used..end, 0);
        end -= used;
        shared.bytes.fetch_add(n as u64, Ordering::AcqRel);
        if count > 0 {
            let mut last = shared.last_record.lock().unwrap();
            shared.records.fetch_add(count, Ordering::AcqRel);
            *last = Some(Instant::now());
            shared.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::encode_frame;

    /// A source that reads `limit` bytes at most, then closes.
    fn source(limit: usize) -> (SocketAddr, JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = vec![0; 64 * 1024];
            let mut read = 0;
            while read < limit {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
            read
        });
        (addr, reader)
    }

    #[test]
    fn finish_read_returns_once_the_peer_has_read_everything() {
        let (addr, reader) = source(usize::MAX);
        let mut sender = FrameSender::connect(addr, Duration::from_secs(10)).unwrap();
        let payload = vec![7u8; 1000];
        for _ in 0..10_000 {
            sender.send(&payload).unwrap();
        }
        sender.finish_read().unwrap();
        assert_eq!(reader.join().unwrap(), 10_000 * 1004);
    }

    #[test]
    fn finish_read_fails_if_the_peer_closes_before_reading_everything() {
        let (addr, reader) = source(1000);
        let mut sender = FrameSender::connect(addr, Duration::from_secs(10)).unwrap();
        let payload = vec![7u8; 1000];
        // Enough to stay in the socket buffers: the peer stops reading after the first frame.
        let sent = (0..10_000).try_for_each(|_| sender.send(&payload));
        let finished = sent.and_then(|()| sender.finish_read());
        assert!(reader.join().unwrap() < 10_000 * 1004);
        assert!(finished.is_err(), "the unread frames are reported");
    }

    #[test]
    fn records_split_keeps_partial_tail() {
        let mut got = Vec::new();
        let used = Records::Lines.split(b"a => 1\nb => 2\npart", |r| got.push(r.to_vec()));
        assert_eq!(got, vec![b"a => 1".to_vec(), b"b => 2".to_vec()]);
        assert_eq!(used, 14);

        let mut framed = Vec::new();
        encode_frame(b"xy", &mut framed);
        encode_frame(b"", &mut framed);
        framed.extend_from_slice(&[0, 0, 0, 9, 1]);
        let mut got = Vec::new();
        let used = Records::Frames.split(&framed, |r| got.push(r.to_vec()));
        assert_eq!(got, vec![b"xy".to_vec(), vec![]]);
        assert_eq!(used, 10);
    }

    #[test]
    fn sender_and_collector_round_trip() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let collector = Collector::start(listener, Records::Frames, move |_, r| {
            g.lock().unwrap().push(r.to_vec())
        })
        .unwrap();
        let mut sender = FrameSender::connect(collector.addr(), Duration::from_secs(5)).unwrap();
        for i in 0..1000u32 {
            sender.send(&i.to_be_bytes()).unwrap();
        }
        sender.finish().unwrap();
        assert!(collector.wait_for(1000, Duration::from_secs(10)));
        let got = got.lock().unwrap();
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, r)| r[..] == (i as u32).to_be_bytes()));
    }
}
