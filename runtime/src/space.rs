//! Disk space: telling a full disk from other failures, the ballast that keeps room for
//! recording how jobs ended, and noticing when space is back.
//!
//! A full disk must not leave a job stuck `running` or `queued`, and must not turn every
//! request into a bare 500. So `veil serve` keeps a **ballast**: a file of [`BALLAST_BYTES`]
//! whose blocks are really allocated, `D/ballast`, next to the state database.
//!
//! ```text
//!  a write fails for lack of space ──► release(): delete the ballast ──► the failure record
//!  (SQLite, a product file, the          (BALLAST_BYTES free again)       fits: the job ends
//!   audit checkpoint)                                                     `failed`, metered
//!          │
//!          ▼  while the ballast is missing the store is full:
//!     POST /v1/jobs answers 507 `storage_full`; queued jobs end `failed` without running
//!          │
//!          ▼  every second the server calls restore(): once every folder of the store has
//!     RESUME_FREE_BYTES free, the ballast is written again and jobs are taken again
//! ```
//!
//! The state lives in the file system — the ballast exists or it does not — so every process
//! working on the store (the server, its workers, a `veil job run` next to it) sees and changes
//! the same state, and a restart changes nothing about it. A store the server never served has
//! no ballast and nothing here applies to it; only the server asks whether the store is full.
//!
//! Why a ballast rather than a free-space threshold checked before each write: how much a
//! write needs is not known in advance (SQLite may grow its log, a product's size depends on
//! its result), and the check and the write would race with every other writer on the disk.
//! Releasing reserved blocks at the first `ENOSPC` gives the failure records real room.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

/// The ballast's file name in the store folder.
pub const BALLAST_FILE: &str = "ballast";

/// Size of the ballast, in bytes: room for many jobs' failure records (a few pages of the
/// state database and an audit checkpoint each) after the disk filled up.
pub const BALLAST_BYTES: u64 = 8 * 1024 * 1024;

/// Free space every folder of the store needs, beyond the ballast, before a full store takes
/// jobs again, in bytes. Larger than the ballast, so that writing the ballast back cannot
/// fill the disk at once again.
pub const RESUME_FREE_BYTES: u64 = 16 * 1024 * 1024;

const _: () = assert!(RESUME_FREE_BYTES > BALLAST_BYTES);

/// The name the ballast is written under before it is renamed into place. It ends in `.tmp`
/// and starts with a dot like every temporary name, so a sweep removes one left by a crash.
const BALLAST_TMP_FILE: &str = ".ballast.tmp";

/// True when `error` says the file system is full (`ENOSPC`) or the user's quota is
/// exhausted (`EDQUOT`).
pub fn is_full_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// True when `error` or any error it wraps is a full disk: encoders (Parquet, CSV) wrap the
/// `io::Error` of the file they write.
pub fn is_full_in_chain(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<io::Error>()
            && is_full_error(io)
        {
            return true;
        }
        current = error.source();
    }
    false
}

/// Releases the ballast of the store at `root`, if it has one, so the writes that record a
/// failure find room. Called on every write that failed for lack of space; releasing twice is
/// harmless. The store is *full* from now until [`restore`] writes the ballast back.
pub fn release(root: &Path) {
    let path = root.join(BALLAST_FILE);
    match fs::remove_file(&path) {
        Ok(()) => eprintln!(
            "veil: the store's disk is full; released the {} MiB ballast so failures can be recorded, and refusing new jobs until space is freed",
            BALLAST_BYTES / (1024 * 1024)
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => eprintln!(
            "veil: could not release the ballast {}: {e}",
            path.display()
        ),
    }
}

/// True when the store at `root` has no ballast: the server released it because the disk
/// filled up and space has not come back yet (or it could not be written at start).
pub fn is_full(root: &Path) -> bool {
    !root.join(BALLAST_FILE).exists()
}

/// Writes the ballast back if it is missing and each of `folders` (the store's folders, which
/// may be on different file systems) has at least [`RESUME_FREE_BYTES`] free, plus the
/// ballast itself for `root`. Returns whether the store has its ballast afterwards, i.e.
/// whether it takes jobs. A write that runs out of space leaves no partial ballast behind.
pub fn restore(root: &Path, folders: &[&Path]) -> bool {
    let path = root.join(BALLAST_FILE);
    if path.exists() {
        return true;
    }
    if !free_at_least(root, BALLAST_BYTES + RESUME_FREE_BYTES)
        || !folders
            .iter()
            .all(|folder| !folder.exists() || free_at_least(folder, RESUME_FREE_BYTES))
    {
        return false;
    }
    let tmp = root.join(BALLAST_TMP_FILE);
    match write_ballast(&tmp).and_then(|()| fs::rename(&tmp, &path)) {
        Ok(()) => {
            let _ = File::open(root).and_then(|dir| dir.sync_all());
            true
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            if !is_full_error(&e) {
                eprintln!("veil: could not write the ballast {}: {e}", path.display());
            }
            false
        }
    }
}

/// Writes the ballast at `root` when the store has none, whatever the free space (used when
/// the server starts: a disk with room for the ballast takes jobs). Returns whether the store
/// has its ballast afterwards.
pub fn ensure(root: &Path) -> bool {
    let path = root.join(BALLAST_FILE);
    if path.exists() {
        return true;
    }
    let tmp = root.join(BALLAST_TMP_FILE);
    match write_ballast(&tmp).and_then(|()| fs::rename(&tmp, &path)) {
        Ok(()) => {
            let _ = File::open(root).and_then(|dir| dir.sync_all());
            true
        }
        Err(_) => {
            let _ = fs::remove_file(&tmp);
            false
        }
    }
}

/// Allocates [`BALLAST_BYTES`] of real blocks at `path` and syncs them. `fallocate` reserves
/// the blocks without writing them; where the file system cannot do that, zeros are written.
/// A sparse file (`set_len`) would not do: it reserves nothing.
fn write_ballast(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    #[cfg(unix)]
    let allocated =
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, BALLAST_BYTES) {
            Ok(()) => true,
            Err(e) if e == rustix::io::Errno::NOSPC || e == rustix::io::Errno::DQUOT => {
                return Err(io::Error::from(e));
            }
            Err(_) => false,
        };
    #[cfg(not(unix))]
    let allocated = false;
    if !allocated {
        use std::io::Write;
        let mut out = io::BufWriter::new(&file);
        let zeros = vec![0u8; 1024 * 1024];
        let mut left = BALLAST_BYTES;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            out.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        out.flush()?;
    }
    file.sync_all()
}

/// True when the file system holding `path` has at least `bytes` available to Veil. Where
/// free space cannot be read, only writing the ballast tells.
fn free_at_least(path: &Path, bytes: u64) -> bool {
    #[cfg(unix)]
    {
        match rustix::fs::statvfs(path) {
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize) >= bytes,
            Err(_) => true,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, bytes);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_ballast_comes_back_when_there_is_room() {
        let root = tempfile::tempdir().expect("tempdir");
        assert!(is_full(root.path()), "no ballast yet");
        assert!(ensure(root.path()));
        assert!(!is_full(root.path()));
        let ballast = root.path().join(BALLAST_FILE);
        assert_eq!(
            fs::metadata(&ballast).expect("ballast").len(),
            BALLAST_BYTES
        );

        release(root.path());
        assert!(is_full(root.path()));
        release(root.path());
        assert!(restore(root.path(), &[root.path()]));
        assert!(!is_full(root.path()));
        assert!(!root.path().join(BALLAST_TMP_FILE).exists());
    }

    #[test]
    fn full_disk_errors_are_told_apart_even_when_wrapped() {
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert!(is_full_error(&full));
        assert!(!is_full_error(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
        let wrapped = datafusion::parquet::errors::ParquetError::External(Box::new(full));
        assert!(is_full_in_chain(&wrapped));
        let other = datafusion::parquet::errors::ParquetError::General("bad".into());
        assert!(!is_full_in_chain(&other));
    }
}
