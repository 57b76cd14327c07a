//! TCP edges on a glommio executor: source connections read as frames, and the sink connection.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use thiserror::Error;

use crate::framing::{FrameDecoder, FrameError};

/// Why a source connection was closed with an error.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("bad framing: {0}")]
    Framing(#[from] FrameError),
    #[error("read failed: {0}")]
    Read(#[from] std::io::Error),
}

/// A source connection: reads bytes from the socket and yields whole frames.
pub struct FrameReader {
    stream: TcpStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// Adopts an accepted connection, with `pending` bytes already read from it by a previous
    /// reader; must run on the glommio executor that will read it.
    pub fn new(stream: std::net::TcpStream, max_frame: usize, pending: &[u8]) -> Self {
        // SAFETY: `into_raw_fd` hands over sole ownership of an open, connected socket, which
        // the glommio stream takes (glommio 0.9 only converts from socket2 0.4, hence the fd).
        let stream = unsafe { TcpStream::from_raw_fd(stream.into_raw_fd()) };
        Self {
            stream,
            decoder: FrameDecoder::with_pending(max_frame, pending),
        }
    }

    /// Reads what the socket has; `Ok(false)` on a clean end of stream (not inside a frame).
    pub async fn read_more(&mut self) -> Result<bool, SourceError> {
        let n = self.stream.read(self.decoder.spare()).await?;
        if n == 0 {
            self.decoder.finish()?;
            return Ok(false);
        }
        self.decoder.filled(n);
        Ok(true)
    }

    /// Bytes read but not yet returned as frames, for a reader that takes the connection over.
    /// Reading can stop at any `.await` of [`read_more`](Self::read_more) without losing bytes:
    /// glommio only waits for readiness there and reads with a non-blocking `recv`.
    pub fn pending(&self) -> Vec<u8> {
        self.decoder.pending().to_vec()
    }

    /// The next whole frame already read.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        self.decoder.next_frame()
    }

    /// The next whole frame already read, left in place.
    pub fn peek_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        self.decoder.peek_frame()
    }
}

/// Why a sink could not deliver.
#[derive(Debug, Error)]
pub enum SinkError {
    #[error("gave up delivering {records} records ({bytes} bytes) to {addr}: {reason}")]
    GaveUp {
        addr: SocketAddr,
        records: usize,
        bytes: usize,
        reason: String,
    },
}

/// The connection to the sink address; connects lazily and reconnects with backoff.
///
/// TCP cannot say what the peer read: a record wholly written to a connection that then fails
/// may have reached the sink or not (it sat in a socket buffer when the sink crashed). Such
/// records are not sent again (that would duplicate those the sink did read); they are counted
/// in [`TcpSink::at_risk`] instead.
pub struct TcpSink {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    failures: u32,
    /// Records wholly written to the current connection by earlier calls.
    on_connection: u64,
    /// Records wholly written to connections that then failed.
    at_risk: u64,
}

impl TcpSink {
    const FIRST_BACKOFF: Duration = Duration::from_millis(10);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);

    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            failures: 0,
            on_connection: 0,
            at_risk: 0,
        }
    }

    /// Records wholly written to a connection that then failed, so far: the sink may or may not
    /// have read them, and they were not sent again.
    pub fn at_risk(&self) -> u64 {
        self.at_risk
    }

    /// Writes `bytes`, holding records that end at `record_ends`. If the connection fails, it
    /// reconnects and resends from the first record not wholly written, so no record arrives cut
    /// or twice; the records wholly written to the failed connection (in this call or before)
    /// count as [at risk](Self::at_risk). Retries connecting
    /// until `failed_attempt()` says to stop: it is called once per failed connection attempt
    /// (so it can also count them) and returns whether to give up.
    pub async fn write_records(
        &mut self,
        bytes: &[u8],
        record_ends: &[usize],
        failed_attempt: &dyn Fn() -> bool,
    ) -> Result<(), SinkError> {
        let mut off = 0;
        // The first record of this call written on the current connection.
        let mut conn_first = 0;
        while off < bytes.len() {
            let stream = match self.stream.as_mut() {
                Some(s) => s,
                None => {
                    if let Err(reason) = self.connect(failed_attempt).await {
                        let first = record_ends.partition_point(|&e| e <= off);
                        return Err(SinkError::GaveUp {
                            addr: self.addr,
                            records: record_ends.len() - first,
                            bytes: bytes.len() - off,
                            reason,
                        });
                    }
                    self.stream.as_mut().expect("connected")
                }
            };
            match stream.write(&bytes[off..]).await {
                Ok(n) if n > 0 => off += n,
                result => {
                    let why = result.map_or_else(|e| e.to_string(), |_| "peer closed".into());
                    self.stream = None;
                    let first = record_ends.partition_point(|&e| e <= off);
                    let lost = self.on_connection + (first - conn_first) as u64;
                    self.at_risk += lost;
                    self.on_connection = 0;
                    conn_first = first;
                    tracing::warn!(
                        sink = %self.addr,
                        "sink connection lost: {why}; the {lost} records written to it may not \
                         have been read (they are not sent again); reconnecting"
                    );
                    off = if first == 0 {
                        0
                    } else {
                        record_ends[first - 1]
                    };
                }
            }
        }
        self.on_connection += (record_ends.len() - conn_first) as u64;
        Ok(())
    }

    /// Flushes and closes the connection.
    pub async fn close(&mut self) {
        if let Some(mut s) = self.stream.take() {
            let _ = s.flush().await;
            let _ = s.close().await;
        }
        self.on_connection = 0;
    }

    async fn connect(&mut self, failed_attempt: &dyn Fn() -> bool) -> Result<(), String> {
        loop {
            match TcpStream::connect(self.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    if self.failures > 0 {
                        tracing::info!(sink = %self.addr, "sink connected after {} attempts", self.failures + 1);
                    }
                    self.failures = 0;
                    self.stream = Some(s);
                    return Ok(());
                }
                Err(e) => {
                    if self.failures.is_multiple_of(50) {
                        tracing::warn!(sink = %self.addr, "cannot connect to sink: {e}; retrying");
                    }
                    self.failures += 1;
                    if failed_attempt() {
                        return Err(e.to_string());
                    }
                    let backoff = Self::FIRST_BACKOFF
                        .saturating_mul(1 << self.failures.min(7))
                        .min(Self::MAX_BACKOFF);
                    glommio::timer::sleep(backoff).await;
                }
            }
        }
    }
}
