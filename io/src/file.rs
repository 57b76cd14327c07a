//! A replayable source: a file of frames (the TCP framing, `u32` big-endian length + payload)
//! or of lines (each line, without its `\n`, is one message), read from a byte offset. The
//! offset of the first byte not yet handed out is what a checkpoint records; reading again
//! from it gives the same messages. Reads are plain `pread`s of at most 256 KiB (from the page
//! cache, microseconds), so the reading core never waits long.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::framing::{frame_len, FrameError, HEADER};

/// How a file's bytes are cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Frames as on a TCP source connection.
    Frames,
    /// One message per `\n`-ended line (a last line without one counts once the file ends).
    Lines,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot open {path}: {error}")]
    Open { path: PathBuf, error: io::Error },
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("{path} is {len} bytes, shorter than the offset {offset} read to: it is not the file that was read (cut back, or replaced)")]
    Shorter {
        path: PathBuf,
        len: u64,
        offset: u64,
    },
    #[error("{path} at byte {offset}: {error}")]
    Framing {
        path: PathBuf,
        offset: u64,
        error: FrameError,
    },
}

/// Reads one file of messages from an offset.
#[derive(Debug)]
pub struct FileReader {
    file: File,
    path: PathBuf,
    format: FileFormat,
    max_frame: usize,
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    base: u64,
    /// First byte of `buf` not yet handed out.
    start: usize,
    end: usize,
    /// The file ended at the last read (a later read may find more, when it grows).
    at_end: bool,
    /// The file may grow: a last line without its `\n` is not whole yet.
    follow: bool,
}

impl FileReader {
    const READ: usize = 256 * 1024;

    /// Opens `path` to read from `offset` (0, or a checkpoint's).
    pub fn open(
        path: &Path,
        offset: u64,
        format: FileFormat,
        max_frame: usize,
    ) -> Result<Self, FileError> {
        let file = File::open(path).map_err(|error| FileError::Open {
            path: path.into(),
            error,
        })?;
        let len = (file.metadata())
            .map_err(|error| FileError::Read {
                path: path.into(),
                error,
            })?
            .len();
        if len < offset {
            return Err(FileError::Shorter {
                path: path.into(),
                len,
                offset,
            });
        }
        Ok(FileReader {
            file,
            path: path.into(),
            format,
            max_frame,
            buf: Vec::new(),
            base: offset,
            start: 0,
            end: 0,
            at_end: false,
            follow: false,
        })
    }

    /// The file may grow while it is read (`tail -f`): a last line is whole only with its `\n`.
    pub fn follow(mut self) -> Self {
        self.follow = true;
        self
    }

    /// The offset of the first byte not handed out as a message yet: where to resume.
    pub fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the next chunk; `Ok(0)` at the end of the file (for now: it may grow).
    pub fn read_more(&mut self) -> Result<usize, FileError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        self.buf.resize(self.end + Self::READ, 0);
        let at = self.base + self.end as u64;
        let n = loop {
            match self.file.read_at(&mut self.buf[self.end..], at) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        }
        .map_err(|error| FileError::Read {
            path: self.path.clone(),
            error,
        })?;
        self.end += n;
        self.buf.truncate(self.end);
        self.at_end = n == 0;
        if self.at_end {
            // A file cut back (truncated, or replaced by a shorter one) is not the file that
            // was read: going on at the old offset would skip or garble what it holds now.
            let len = (self.file.metadata())
                .map_err(|error| FileError::Read {
                    path: self.path.clone(),
                    error,
                })?
                .len();
            if len < at {
                return Err(FileError::Shorter {
                    path: self.path.clone(),
                    len,
                    offset: at,
                });
            }
        }
        Ok(n)
    }

    /// The next message, `None` if more bytes must be read first.
    pub fn next_message(&mut self) -> Result<Option<&[u8]>, FileError> {
        let avail = &self.buf[self.start..self.end];
        match self.format {
            FileFormat::Frames => {
                if avail.len() < HEADER {
                    return Ok(None);
                }
                let len = frame_len(avail[..HEADER].try_into().expect("HEADER bytes"));
                if len > self.max_frame {
                    return Err(FileError::Framing {
                        path: self.path.clone(),
                        offset: self.offset(),
                        error: FrameError::Oversized {
                            len,
                            max: self.max_frame,
                        },
                    });
                }
                if avail.len() < HEADER + len {
                    return Ok(None);
                }
                let payload = self.start + HEADER..self.start + HEADER + len;
                self.start = payload.end;
                Ok(Some(&self.buf[payload]))
            }
            FileFormat::Lines => {
                let newline = avail.iter().position(|&b| b == b'\n');
                if newline.unwrap_or(avail.len()) > self.max_frame {
                    return Err(FileError::Framing {
                        path: self.path.clone(),
                        offset: self.offset(),
                        error: FrameError::Oversized {
                            len: newline.unwrap_or(avail.len()),
                            max: self.max_frame,
                        },
                    });
                }
                let line = match newline {
                    Some(n) => self.start..self.start + n,
                    // A last line without its `\n`: whole once the file ends.
                    None if self.at_end && !self.follow && !avail.is_empty() => {
                        self.start..self.end
                    }
                    None => return Ok(None),
                };
                self.start = (line.end + 1).min(self.end);
                Ok(Some(&self.buf[line]))
            }
        }
    }

    /// Checks the file may end here: not inside a frame. (Lines always end.)
    pub fn finish(&self) -> Result<(), FileError> {
        let have = self.end - self.start;
        if self.format == FileFormat::Lines || have == 0 {
            return Ok(());
        }
        Err(FileError::Framing {
            path: self.path.clone(),
            offset: self.offset(),
            error: FrameError::Truncated {
                have,
                need: HEADER.max(have + 1),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::encode_frame;

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("quokka-io-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn all(r: &mut FileReader) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        loop {
            while let Some(m) = r.next_message().unwrap() {
                let m = m.to_vec();
                out.push((m, r.offset()));
            }
            if r.read_more().unwrap() == 0 {
                while let Some(m) = r.next_message().unwrap() {
                    let m = m.to_vec();
                    out.push((m, r.offset()));
                }
                return out;
            }
        }
    }

    #[test]
    fn frames_read_from_an_offset_resume_where_a_first_reader_stood() {
        let mut bytes = Vec::new();
        for i in 0..1000u32 {
            encode_frame(format!("message {i}").as_bytes(), &mut bytes);
        }
        let path = temp("frames", &bytes);
        let mut r = FileReader::open(&path, 0, FileFormat::Frames, 1 << 20).unwrap();
        let first = all(&mut r);
        assert_eq!(first.len(), 1000);
        assert_eq!(first[999].1, bytes.len() as u64);
        r.finish().unwrap();
        // From the 500th message's end: the rest, the same.
        let at = first[499].1;
        let mut again = FileReader::open(&path, at, FileFormat::Frames, 1 << 20).unwrap();
        assert_eq!(all(&mut again), first[500..].to_vec());
    }

    #[test]
    fn lines_count_a_last_line_without_newline_once_the_file_ends() {
        let path = temp("lines", b"a b\n\nlast");
        let mut r = FileReader::open(&path, 0, FileFormat::Lines, 1 << 20).unwrap();
        let got: Vec<Vec<u8>> = all(&mut r).into_iter().map(|(m, _)| m).collect();
        assert_eq!(got, vec![b"a b".to_vec(), b"".to_vec(), b"last".to_vec()]);
        assert_eq!(r.offset(), 9);
    }

    #[test]
    fn a_file_that_grows_is_read_on() {
        let path = temp("grows", b"one\ntw");
        let mut r = FileReader::open(&path, 0, FileFormat::Lines, 1 << 20)
            .unwrap()
            .follow();
        r.read_more().unwrap();
        r.read_more().unwrap();
        assert_eq!(r.next_message().unwrap(), Some(&b"one"[..]));
        assert_eq!(
            r.next_message().unwrap(),
            None,
            "`tw` is not a whole line yet"
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all_at_end(b"o\n");
        r.read_more().unwrap();
        assert_eq!(r.next_message().unwrap(), Some(&b"two"[..]));
        assert_eq!(r.offset(), 8);
    }

    #[test]
    fn a_bad_file_is_an_error_not_a_panic() {
        let path = temp("bad", &[0xff, 0xff, 0xff, 0xff, 1]);
        let mut r = FileReader::open(&path, 0, FileFormat::Frames, 1024).unwrap();
        r.read_more().unwrap();
        assert!(matches!(
            r.next_message(),
            Err(FileError::Framing { offset: 0, .. })
        ));
        let cut = temp("cut", &[0, 0, 0, 9, 1, 2]);
        let mut r = FileReader::open(&cut, 0, FileFormat::Frames, 1024).unwrap();
        r.read_more().unwrap();
        assert_eq!(r.next_message().unwrap(), None);
        assert!(r.finish().is_err());
        assert!(matches!(
            FileReader::open(&cut, 7, FileFormat::Frames, 1024),
            Err(FileError::Shorter { len: 6, .. })
        ));
        assert!(matches!(
            FileReader::open(Path::new("/nonexistent/q"), 0, FileFormat::Lines, 1),
            Err(FileError::Open { .. })
        ));
    }

    trait AppendAll {
        fn write_all_at_end(self, bytes: &[u8]);
    }

    impl AppendAll for File {
        fn write_all_at_end(mut self, bytes: &[u8]) {
            use std::io::Write;
            self.write_all(bytes).unwrap();
        }
    }
}
