//! A node's state dir: its checkpoints on disk. Layout:
//! - `IDENTITY`: the app and slot count the checkpoints are of (another app is refused by name);
//! - `LOCK`: held by the engine that uses the dir (a second one is refused);
//! - `RUN`: how many times an engine started on this dir: each start's run number, which
//!   exactly-once sink connections carry so a receiver can fence off an older run;
//! - `CLUSTER` (a coordinator's): its cluster's random id, which every node's manifests carry,
//!   so a member's parts are never taken for (or removed by) another cluster's;
//! - `NNNNNNNNNNNN.parts`: what checkpoint N wrote: the archives of the slots its cores had
//!   changed, back to back (each at a multiple of 16 bytes), then fsynced;
//! - `NNNNNNNNNNNN.manifest`: checkpoint N itself (`checkpoint::Manifest`), written after its
//!   parts are durable, to a temporary name, fsynced, renamed into place, the dir fsynced. A
//!   checkpoint without its manifest never happened.
//!
//! Recovery takes the newest manifest whose archives all read back with their checksums; one
//! that does not is skipped with a log line saying why. The newest two complete checkpoints
//! are kept, with every parts file they still read (an unchanged slot stays where an older
//! checkpoint wrote it); the rest is removed after each checkpoint.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;
use thiserror::Error;

use crate::checkpoint::{self, Manifest, SlotPart, Span};
use crate::hash::stable_hash;
use crate::runtime::messages::Snapshot;

/// Why a state dir cannot be used.
#[derive(Debug, Error)]
pub enum StateDirError {
    #[error("state dir {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path} is not a state dir (no IDENTITY) and is not empty ({found}, ...): give an empty or new directory")]
    NotEmpty { path: PathBuf, found: String },
    #[error("state dir {path} is in use by another running engine (its LOCK is held)")]
    Locked { path: PathBuf },
    #[error("state dir {path}: it says `{found}`, not a number")]
    Run { path: PathBuf, found: String },
    #[error("state dir {path} holds checkpoints of {found}, not of app `{app}` with {n_slots} slots; give this app a state dir of its own")]
    OtherApp {
        path: PathBuf,
        found: String,
        app: String,
        n_slots: u32,
    },
}

/// Why a checkpoint on disk cannot be restored (it is skipped for the one before).
#[derive(Debug, Error)]
pub enum Unusable {
    #[error("{path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("{path}: {error}")]
    Manifest {
        path: PathBuf,
        #[source]
        error: crate::checkpoint::ManifestError,
    },
    #[error("{path} names checkpoint {names}")]
    Renamed { path: PathBuf, names: u64 },
    #[error("{path}: {} bytes at {}: {error} (cut short?)", .span.len, .span.offset)]
    Cut {
        path: PathBuf,
        span: Span,
        error: io::Error,
    },
    #[error("{path}: stage {stage} slot {slot}: checksum mismatch ({} bytes at {}): corrupt", .span.len, .span.offset)]
    Checksum {
        path: PathBuf,
        stage: u32,
        slot: u32,
        span: Span,
    },
    #[error("its routing table is invalid")]
    Table,
    #[error("it is a checkpoint of app `{app}` with {n_slots} slots, not of this one")]
    OtherApp { app: String, n_slots: u32 },
    #[error("it was written by node `{0}`: give each node its own state dir")]
    OtherNode(String),
    #[error("it is of cluster {found:016x}, not of this one ({cluster:016x})")]
    OtherCluster { found: u64, cluster: u64 },
    #[error("no checkpoint {0} here (this node's part of it was never written, or was removed)")]
    Missing(u64),
    #[error("it stores slot {slot}, beyond the cluster's {n_slots}")]
    Slot { slot: u32, n_slots: u32 },
    #[error("stage {stage} slot {slot}: {error}")]
    Decode {
        stage: u32,
        slot: u32,
        #[source]
        error: crate::archive::ArchiveError,
    },
}

/// Why a checkpoint could not be written (nothing durable is touched: the previous one stands).
#[derive(Debug, Error)]
#[error("writing {path}: {error}")]
pub struct WriteError {
    pub path: PathBuf,
    pub error: io::Error,
}

/// A checkpoint read back: its manifest and, per stored part, its archives (the entities', and
/// the timers' if the stage has any).
pub(crate) struct Restored {
    pub manifest: Manifest,
    pub parts: Vec<(SlotPart, Vec<AlignedVec>)>,
    pub bytes: u64,
}

pub(crate) struct StateDir {
    path: PathBuf,
    /// Held (`flock`) while this engine runs: a second engine on the dir is refused. `None`
    /// for another node's dir, only read.
    _lock: Option<File>,
}

/// Takes `LOCK` in `dir` for this process, or says who has it.
fn lock(dir: &Path) -> Result<File, StateDirError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let file = File::create(&path).map_err(io_err(&path))?;
    // SAFETY: `flock` on the descriptor of a file this function owns and keeps open; it only
    // takes an advisory lock, released when the file is closed (or the process ends).
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if taken != 0 {
        return Err(StateDirError::Locked { path: dir.into() });
    }
    Ok(file)
}

/// Whether a process holds `dir`'s lock (an engine runs on it).
fn is_locked(dir: &Path) -> Result<bool, StateDirError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let file = File::open(&path).map_err(io_err(&path))?;
    // SAFETY: as in `lock`; the shared lock, if taken, goes with the file at once.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    Ok(taken != 0)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateDirError + '_ {
    move |error| StateDirError::Io {
        path: path.into(),
        error,
    }
}

/// What `IDENTITY` says for `app` with `n_slots` slots.
fn identity(app: &str, n_slots: u32) -> String {
    format!("app {app}, {n_slots} slots\n")
}

impl StateDir {
    /// Opens (or creates) the state dir of `app`; refused if it holds another app's checkpoints.
    pub fn open(path: &Path, app: &str, n_slots: u32) -> Result<Self, StateDirError> {
        fs::create_dir_all(path).map_err(io_err(path))?;
        // Absolute: a member tells the coordinator where it is (see `JoinRequest`).
        let path = &fs::canonicalize(path).map_err(io_err(path))?;
        let lock = lock(path)?;
        let id_path = path.join("IDENTITY");
        let want = identity(app, n_slots);
        match fs::read_to_string(&id_path) {
            Ok(found) if found == want => {}
            Ok(found) => {
                return Err(StateDirError::OtherApp {
                    path: path.into(),
                    found: found.trim().to_string(),
                    app: app.into(),
                    n_slots,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A directory that is not a state dir yet must hold nothing else (its files
                // would be taken for checkpoints, or removed as leftovers).
                let others: Vec<String> = (fs::read_dir(path).map_err(io_err(path))?)
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "LOCK")
                    .take(3)
                    .collect();
                if !others.is_empty() {
                    return Err(StateDirError::NotEmpty {
                        path: path.into(),
                        found: others.join(", "),
                    });
                }
                write_durably(path, "IDENTITY", want.as_bytes()).map_err(|e| {
                    StateDirError::Io {
                        path: id_path.clone(),
                        error: e.error,
                    }
                })?;
            }
            Err(e) => return Err(io_err(&id_path)(e)),
        }
        Ok(StateDir {
            path: path.into(),
            _lock: Some(lock),
        })
    }

    /// Another node's state dir, to read its part of a checkpoint (the coordinator restoring
    /// a lost member's slots, or slots a member held then). With `dead`, refused while an
    /// engine runs on it: a node lost to this one may still be running.
    pub fn other(path: &Path, dead: bool) -> Result<Self, StateDirError> {
        // A process killed is seen gone by its peers a moment before the kernel has released
        // all it held.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while dead && is_locked(path)? {
            if std::time::Instant::now() > deadline {
                return Err(StateDirError::Locked { path: path.into() });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(StateDir {
            path: path.into(),
            _lock: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id of the cluster this dir's coordinator leads: made (random) at its first start.
    pub fn cluster_id(&self, fresh: impl FnOnce() -> u64) -> Result<u64, StateDirError> {
        let path = self.path.join("CLUSTER");
        match fs::read_to_string(&path) {
            Ok(text) => u64::from_str_radix(text.trim(), 16).map_err(|_| StateDirError::Run {
                path: path.clone(),
                found: text.trim().chars().take(40).collect(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = fresh();
                write_durably(&self.path, "CLUSTER", format!("{id:016x}\n").as_bytes()).map_err(
                    |e| StateDirError::Io {
                        path: path.clone(),
                        error: e.error,
                    },
                )?;
                Ok(id)
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Counts this start: the run number, one more than the last start's, written durably.
    pub fn next_run(&self) -> Result<u64, StateDirError> {
        let path = self.path.join("RUN");
        let last: u64 = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|_| StateDirError::Run {
                path: path.clone(),
                found: text.trim().chars().take(40).collect(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&path)(e)),
        };
        let run: u64 = last + 1;
        write_durably(&self.path, "RUN", format!("{run}\n").as_bytes()).map_err(|e| {
            StateDirError::Io {
                path: path.clone(),
                error: e.error,
            }
        })?;
        Ok(run)
    }

    fn parts_path(&self, checkpoint: u64) -> PathBuf {
        self.path.join(format!("{checkpoint:012}.parts"))
    }

    /// The checkpoints with a manifest file, newest first.
    fn manifests(&self) -> Vec<u64> {
        let mut found: Vec<u64> = fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n = name.strip_suffix(".manifest").filter(|n| ours(n))?;
                n.parse().ok()
            })
            .collect();
        found.sort_unstable_by(|a, b| b.cmp(a));
        found
    }

    fn read_manifest(&self, checkpoint: u64) -> Result<Manifest, Unusable> {
        let path = self.path.join(format!("{checkpoint:012}.manifest"));
        let bytes = fs::read(&path).map_err(|error| Unusable::Read {
            path: path.clone(),
            error,
        })?;
        let m = Manifest::decode(&bytes).map_err(|error| Unusable::Manifest {
            path: path.clone(),
            error,
        })?;
        if m.checkpoint != checkpoint {
            return Err(Unusable::Renamed {
                path,
                names: m.checkpoint,
            });
        }
        Ok(m)
    }

    /// The newest checkpoint that reads back whole and that `accept` takes, skipping (loudly)
    /// any that does not.
    pub fn restore<T>(&self, mut accept: impl FnMut(Restored) -> Result<T, Unusable>) -> Option<T> {
        for checkpoint in self.manifests() {
            let read = self
                .read_manifest(checkpoint)
                .and_then(|m| self.read_parts(m));
            match read.and_then(&mut accept) {
                Ok(restored) => return Some(restored),
                Err(reason) => tracing::error!(
                    checkpoint,
                    "skipping checkpoint {checkpoint}: {reason}; trying the one before"
                ),
            }
        }
        None
    }

    /// Checkpoint `checkpoint`, read back whole and taken by `accept` (a member restores the
    /// one the coordinator names, or none).
    pub fn restore_exact<T>(
        &self,
        checkpoint: u64,
        accept: impl FnOnce(Restored) -> Result<T, Unusable>,
    ) -> Result<T, Unusable> {
        if !self.manifests().contains(&checkpoint) {
            return Err(Unusable::Missing(checkpoint));
        }
        let read = self.read_manifest(checkpoint)?;
        accept(self.read_parts(read)?)
    }

    /// The newest two checkpoints with a manifest: those the coordinator keeps as long as the
    /// next one is not written (a member keeps its parts of them).
    pub fn kept(&self) -> Vec<u64> {
        self.manifests().into_iter().take(2).collect()
    }

    /// The newest complete checkpoint's number, if any (without reading its parts).
    pub fn newest(&self) -> Option<Manifest> {
        self.manifests()
            .into_iter()
            .find_map(|n| self.read_manifest(n).ok())
    }

    fn read_parts(&self, manifest: Manifest) -> Result<Restored, Unusable> {
        let mut files: std::collections::BTreeMap<u64, File> = Default::default();
        let mut parts = Vec::with_capacity(manifest.parts.len());
        let mut bytes = 0;
        for part in &manifest.parts {
            let mut archives = Vec::with_capacity(2);
            for span in [Some(part.memory), part.timers].into_iter().flatten() {
                let file = match files.entry(span.file) {
                    std::collections::btree_map::Entry::Occupied(f) => f.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        let path = self.parts_path(span.file);
                        let file =
                            File::open(&path).map_err(|error| Unusable::Read { path, error })?;
                        v.insert(file)
                    }
                };
                let mut buf = AlignedVec::with_capacity(span.len as usize);
                buf.resize(span.len as usize, 0);
                file.read_exact_at(&mut buf, span.offset)
                    .map_err(|error| Unusable::Cut {
                        path: self.parts_path(span.file),
                        span,
                        error,
                    })?;
                if stable_hash(&buf) != span.checksum {
                    return Err(Unusable::Checksum {
                        path: self.parts_path(span.file),
                        stage: part.stage,
                        slot: part.slot,
                        span,
                    });
                }
                bytes += span.len;
                archives.push(buf);
            }
            parts.push((*part, archives));
        }
        Ok(Restored {
            manifest,
            parts,
            bytes,
        })
    }

    /// Writes checkpoint `next` (its manifest, with no parts yet) from the cores' snapshots,
    /// on top of `previous`: the parts file, durably, then the manifest, durably. Returns the
    /// manifest as written. On an error nothing the previous checkpoints read is touched.
    /// Keeps what `checkpoint::keep` says (`only` those on a member).
    pub fn write(
        &self,
        previous: Option<&Manifest>,
        next: Manifest,
        snapshots: Vec<Snapshot>,
        only: Option<&BTreeSet<u64>>,
    ) -> Result<Manifest, WriteError> {
        let checkpoint = next.checkpoint;
        let written = self.try_write(previous, next, snapshots, only);
        if written.is_err() {
            // A full disk must not stay full of what failed.
            let _ = fs::remove_file(self.parts_path(checkpoint));
            let _ = fs::remove_file(self.path.join(format!("{checkpoint:012}.manifest.tmp")));
        }
        written
    }

    fn try_write(
        &self,
        previous: Option<&Manifest>,
        next: Manifest,
        snapshots: Vec<Snapshot>,
        only: Option<&BTreeSet<u64>>,
    ) -> Result<Manifest, WriteError> {
        let checkpoint = next.checkpoint;
        let path = self.parts_path(checkpoint);
        let failed = |error| WriteError {
            path: path.clone(),
            error,
        };
        let mut out = io::BufWriter::with_capacity(1 << 20, File::create(&path).map_err(failed)?);
        let mut written = Vec::new();
        let mut offset = 0u64;
        let mut put = |bytes: &AlignedVec, out: &mut io::BufWriter<File>| -> io::Result<Span> {
            let pad = offset.next_multiple_of(16) - offset;
            out.write_all(&[0; 16][..pad as usize])?;
            offset += pad;
            out.write_all(bytes)?;
            let span = Span {
                file: checkpoint,
                offset,
                len: bytes.len() as u64,
                checksum: stable_hash(bytes),
            };
            offset += bytes.len() as u64;
            Ok(span)
        };
        for part in snapshots.iter().flat_map(|s| &s.parts) {
            let memory = put(&part.memory, &mut out).map_err(failed)?;
            let timers = match &part.timers {
                Some(t) => Some(put(t, &mut out).map_err(failed)?),
                None => None,
            };
            written.push(SlotPart {
                stage: part.stage,
                slot: part.slot,
                entities: part.entities,
                memory,
                timers,
            });
        }
        let file = out.into_inner().map_err(|e| failed(e.into_error()))?;
        file.sync_all().map_err(failed)?;
        let mut next = Manifest::next(previous, next, written);
        next.written = offset;
        let name = format!("{checkpoint:012}.manifest");
        write_durably(&self.path, &name, &next.encode())?;
        self.collect_garbage(only);
        Ok(next)
    }

    /// Removes what no kept checkpoint reads: older manifests, their parts files, leftovers of
    /// checkpoints that never completed.
    fn collect_garbage(&self, only: Option<&BTreeSet<u64>>) {
        let complete: Vec<(u64, BTreeSet<u64>)> = self
            .manifests()
            .into_iter()
            .filter_map(|n| self.read_manifest(n).ok().map(|m| (n, m.files())))
            .collect();
        let (manifests, files) = checkpoint::keep(&complete, only);
        let newest = complete.first().map_or(0, |c| c.0);
        for entry in fs::read_dir(&self.path).into_iter().flatten().flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let remove = if let Some(n) = name.strip_suffix(".manifest").filter(|n| ours(n)) {
                n.parse().is_ok_and(|n: u64| !manifests.contains(&n))
            } else if let Some(n) = name.strip_suffix(".parts").filter(|n| ours(n)) {
                // A parts file newer than every manifest may be a checkpoint being written.
                n.parse()
                    .is_ok_and(|n: u64| !files.contains(&n) && n <= newest)
            } else {
                // Only this module's own temporary names.
                (name.strip_suffix(".tmp")).is_some_and(|n| {
                    n == "IDENTITY"
                        || n == "RUN"
                        || n == "CLUSTER"
                        || ours(n.trim_end_matches(".manifest"))
                })
            };
            if remove {
                if let Err(e) = fs::remove_file(entry.path()) {
                    tracing::warn!("cannot remove {}: {e}", entry.path().display());
                }
            }
        }
    }
}

/// Whether `n` is a checkpoint number as this module names files: 12 digits.
fn ours(n: &str) -> bool {
    n.len() == 12 && n.bytes().all(|b| b.is_ascii_digit())
}

/// Writes `name` in `dir` so that after a crash it is either whole or absent: a temporary
/// file, fsynced, renamed into place, the dir fsynced.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), WriteError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |error| WriteError { path, error }
    };
    let mut f = File::create(&tmp).map_err(failed(&tmp))?;
    f.write_all(bytes).map_err(failed(&tmp))?;
    f.sync_all().map_err(failed(&tmp))?;
    let target = dir.join(name);
    fs::rename(&tmp, &target).map_err(failed(&target))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed(dir))
}
