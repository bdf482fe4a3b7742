//! The size bookkeeping of [`super::SessionFiles`]: the bytes of the directory's regular
//! files (a walk that follows no symlink and skips writes under way), and a [`Ledger`] of the
//! writes under way and finished since a walk, so that concurrent writes to one session are
//! counted together: `used = walk + finished since the walk + under way`.
//!
//! A walk and a write's final rename never run at once (one lock), so every finished write is
//! either in a walk or counted as finished after it, never neither; a file replaced by a
//! concurrent write may be counted twice (the limit errs on the side of refusing).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt as _};

use super::path::UPLOAD_PREFIX;
use crate::sync::lock_unpoisoned as lock;

/// The writes under way and finished in one session's directory.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Held by a walk and by a write's rename.
    settle: Mutex<()>,
    /// Bytes written so far by writes under way (their temporary files).
    in_flight: AtomicU64,
    /// Bytes of every write that finished (only grows).
    finished: AtomicU64,
}

/// A walk's result: the directory's bytes, and `finished` when it was taken.
#[derive(Debug, Clone, Copy)]
pub(super) struct Measure {
    bytes: u64,
    finished_then: u64,
}

impl Ledger {
    /// Walks the directory under `root` (blocking; each directory is opened beneath `root`).
    pub(super) fn measure(&self, root: &Dir) -> io::Result<Measure> {
        let _settled = lock(&self.settle);
        let bytes = walk(root)?;
        Ok(Measure {
            bytes,
            finished_then: self.finished.load(Ordering::SeqCst),
        })
    }

    /// The directory's bytes now, as far as writes through this ledger tell: the walk, the
    /// writes finished since, and those under way; less `credit` (the bytes of a file being
    /// replaced, which stop counting).
    pub(super) fn used_since(&self, measure: Measure, credit: u64) -> u64 {
        self.total(measure, self.in_flight.load(Ordering::SeqCst))
            .saturating_sub(credit)
    }

    /// Counts `n` more bytes under way if the directory stays within `limit` with them (as
    /// in [`Ledger::used_since`]); else what it would have come to, and nothing is counted,
    /// so a refused write never makes another one fail. One atomic step: two writes cannot
    /// both pass on the same room.
    pub(super) fn try_add_in_flight(
        &self,
        n: u64,
        measure: Measure,
        credit: u64,
        limit: u64,
    ) -> Result<(), u64> {
        let mut refused = 0;
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |in_flight| {
                let used = self
                    .total(measure, in_flight.saturating_add(n))
                    .saturating_sub(credit);
                if used <= limit {
                    Some(in_flight + n)
                } else {
                    refused = used;
                    None
                }
            })
            .map(|_| ())
            .map_err(|_| refused)
    }

    /// The walk, the writes finished since, and `in_flight`. `finished` is read after
    /// `in_flight` was, and a write that finishes adds to `finished` before it leaves
    /// `in_flight`: a write finishing meanwhile is counted once or twice, never missed.
    fn total(&self, measure: Measure, in_flight: u64) -> u64 {
        let finished = self
            .finished
            .load(Ordering::SeqCst)
            .saturating_sub(measure.finished_then);
        measure
            .bytes
            .saturating_add(finished)
            .saturating_add(in_flight)
    }

    pub(super) fn remove_in_flight(&self, n: u64) {
        // Never below zero: each write removes what it added, once.
        let _ = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Runs `rename` (a write's last step) with no walk under way; if it succeeds, the
    /// write's `bytes` move from under way to finished.
    pub(super) fn complete(
        &self,
        bytes: u64,
        rename: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let _settled = lock(&self.settle);
        rename()?;
        self.finished.fetch_add(bytes, Ordering::SeqCst);
        self.remove_in_flight(bytes);
        Ok(())
    }
}

/// Bytes of the regular files under `root`, symlinks not followed, temporary files of writes
/// under way skipped. Iterative (a deep tree cannot exhaust the stack); entries that vanish
/// meanwhile (user code at work) are skipped.
fn walk(root: &Dir) -> io::Result<u64> {
    let mut total = 0u64;
    let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let dir = if rel.as_os_str().is_empty() {
            root.try_clone()?
        } else {
            // Not through a symlink that replaced the directory meanwhile.
            let mut options = OpenOptions::new();
            options
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW);
            match root.open_with(&rel, &options) {
                Ok(dir) => Dir::from_std_file(dir.into_std()),
                Err(_) => continue,
            }
        };
        let Ok(entries) = dir.entries() else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(UPLOAD_PREFIX) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() {
                total = total.saturating_add(meta.len());
            } else if meta.is_dir() {
                pending.push(rel.join(name));
            }
        }
    }
    Ok(total)
}
