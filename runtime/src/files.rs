//! Crash-safe file writes: a temporary name in the same folder, `fsync`, rename, `fsync` of
//! the folder. A reader sees the old file or the new one, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically. `secret` files get mode 0600 on Unix.
pub fn write_atomic(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::invalid(format!("{} has no parent folder", path.display())))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid(format!("{} is not a file path", path.display())))?;
    // A unique temporary name, so two processes writing the same file never share one.
    let tmp = dir.join(format!(".{name}.{}.tmp", crate::ids::JobId::random()));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(&tmp)
        .map_err(|e| Error::io("creating", &tmp, e))?;
    // A temporary that could not be finished is removed at once (a full disk is the usual
    // cause, and it should not be left fuller); one a crash leaves is removed by `sweep`.
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("writing", &tmp, e))
        .and_then(|()| {
            drop(file);
            fs::rename(&tmp, path).map_err(|e| Error::io("renaming into place", path, e))
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// Flushes a folder's entries (the rename of a file in it) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing folder", dir, e))
}
