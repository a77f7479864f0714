//! The sweep: removing from the store folder what the store does not know — debris of a crash,
//! a full disk or a failed write.
//!
//! [`sweep`] runs when `veil serve` starts (from `jobs::recover`, after the jobs a stopped
//! process left `running` have ended `failed`) and then every [`SWEEP_INTERVAL_SECONDS`]
//! while it serves. It removes:
//!
//! | where | what | when |
//! |---|---|---|
//! | `products/` | a folder (or file) not named after a product the `products` table records | always |
//! | `products/` | a staging folder `.tmp-<job>.<product>` whose job is not `running`, and any other dot-name | always |
//! | `data/` | a folder no registered dataset's file is in, and a dataset's `.data.parquet.tmp` | older than the grace period |
//! | `statements/<period>/`, the store root, `keys/` | a temporary file `.<name>.tmp` (from `files::write_atomic`) | older than the grace period |
//!
//! It never removes a known product, a registered dataset's file, a statement, the state
//! database or its logs, the key, the audit checkpoint or the ballast.
//!
//! **Why it is safe next to a job that is still writing.** The products folder is listed, and
//! what to remove decided, while holding the store's write lock (`Store::with_write_lock`, a
//! `BEGIN IMMEDIATE` transaction that is rolled back); the decision is exact, with no timing
//! involved:
//! - A job publishes its product by renaming its staging folder into place *inside* its final
//!   transaction, which holds the same lock until it commits (see `products`). So while the
//!   sweep holds the lock, every folder named after a product is either recorded by a
//!   committed transaction, or left by a process that died between the rename and the commit —
//!   whose product the store never learned of.
//! - A job writes its staging folder only while it is `running` (from its claim to its final
//!   transaction), in any process on the store; the folder's name carries the job's id. A
//!   staging folder whose job is not `running` belongs to a job that has ended or to a process
//!   that died; neither will publish it.
//!
//! The removals happen after the lock is released, so writers wait only for the listing. The
//! decision still holds then: a job never goes back to `running`, product ids are random and
//! never reused, and anything created after the listing is not in it.
//!
//! Temporary files elsewhere are written outside any transaction (a statement, the audit
//! checkpoint, a dataset being copied in before its registration commits), so they cannot be
//! told from debris by the store's state; they are removed only once older than the grace
//! period ([`TEMP_GRACE_SECONDS`] for the periodic sweep: each such file is written in one go
//! and renamed at once, a dataset's copy touches its file continuously). At start the grace
//! is zero: the server is then the one process working on the store, as `jobs::recover`
//! already assumes when it ends every `running` job.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::store::{Store, query_rows};
use crate::{clock, products};

/// How often `veil serve` sweeps, in seconds, unless `--sweep-seconds` says otherwise.
pub const SWEEP_INTERVAL_SECONDS: u64 = 300;

/// How old a temporary file (or an unknown dataset folder) must be before the periodic sweep
/// removes it, in seconds. Each is written within seconds, so ten minutes leaves a wide margin
/// for a slow disk.
pub const TEMP_GRACE_SECONDS: u64 = 600;

/// What one sweep removed, as paths relative to the store folder.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub removed: Vec<PathBuf>,
}

/// Removes what the store does not know (see the module docs). `grace` is how old a
/// temporary file must be; the products folder's rules do not depend on it. A file that
/// cannot be removed is reported on stderr and left for the next sweep.
pub fn sweep(store: &mut Store, grace: Duration) -> Result<Swept> {
    let root = store.root().to_path_buf();
    let now: SystemTime = clock::now().into();
    let mut swept = Swept::default();
    // Decided under the lock, removed after it: see the module docs for why the decision
    // still holds then. Only the listing and the two queries hold up the store's writers.
    let (doomed, dataset_dirs) = store.with_write_lock(|tx| {
        let known_products = strings(tx, "SELECT id FROM products")?;
        let running = strings(tx, "SELECT id FROM jobs WHERE state = 'running'")?;
        let mut doomed = Vec::new();
        for (name, path) in entries(&root.join("products")) {
            let keep = match name.as_deref() {
                Some(name) if known_products.contains(name) => true,
                Some(name) => products::staging_job(name).is_some_and(|job| running.contains(job)),
                None => false,
            };
            if !keep {
                doomed.push(path);
            }
        }
        // A dataset's folder is the first component of its file's path (`<id>/data.parquet`).
        let datasets: HashSet<String> = strings(tx, "SELECT file FROM datasets")?
            .into_iter()
            .filter_map(|file| file.split('/').next().map(str::to_string))
            .collect();
        let mut dataset_dirs = Vec::new();
        for (name, path) in entries(&root.join("data")) {
            match name {
                Some(name) if datasets.contains(&name) => dataset_dirs.push(path),
                _ if older_than(&path, now, grace) => doomed.push(path),
                _ => {}
            }
        }
        Ok((doomed, dataset_dirs))
    })?;
    for path in doomed {
        remove(&root, &path, &mut swept);
    }
    for dir in dataset_dirs {
        sweep_temporaries(&root, &dir, now, grace, &mut swept);
        // A dataset's later versions each have a folder of their own (`<id>/v2/data.parquet`).
        for (_, version) in entries(&dir) {
            if version.is_dir() {
                sweep_temporaries(&root, &version, now, grace, &mut swept);
            }
        }
    }
    sweep_temporaries(&root, &root, now, grace, &mut swept);
    sweep_temporaries(&root, &root.join("keys"), now, grace, &mut swept);
    for (_, period) in entries(&store.statements_dir()) {
        if period.is_dir() {
            sweep_temporaries(&root, &period, now, grace, &mut swept);
        }
    }
    Ok(swept)
}

/// The first column of every row of `sql`.
fn strings(tx: &rusqlite::Transaction<'_>, sql: &str) -> Result<HashSet<String>> {
    let strings = query_rows(tx, sql, [], |row| row.get::<_, String>(0))?;
    Ok(strings.into_iter().collect())
}

/// The entries of `dir` with their names (`None` for a name that is not UTF-8, which no Veil
/// file has); nothing when `dir` does not exist or cannot be read.
fn entries(dir: &Path) -> Vec<(Option<String>, PathBuf)> {
    let Ok(listing) = fs::read_dir(dir) else {
        return Vec::new();
    };
    listing
        .filter_map(|entry| entry.ok())
        .map(|entry| (entry.file_name().into_string().ok(), entry.path()))
        .collect()
}

/// Removes the temporary files directly in `dir` (`.<name>.tmp`) older than `grace`.
fn sweep_temporaries(root: &Path, dir: &Path, now: SystemTime, grace: Duration, swept: &mut Swept) {
    for (name, path) in entries(dir) {
        let temporary = name
            .as_deref()
            .is_some_and(|name| name.starts_with('.') && name.ends_with(".tmp"));
        if temporary && path.is_file() && older_than(&path, now, grace) {
            remove(root, &path, swept);
        }
    }
}

/// True when `path` and, for a folder, every entry directly in it were last changed at least
/// `grace` before `now`. A time that cannot be read counts as recent: when in doubt, keep.
fn older_than(path: &Path, now: SystemTime, grace: Duration) -> bool {
    if grace.is_zero() {
        return true;
    }
    let old = |path: &Path| {
        fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age >= grace)
    };
    old(path) && (!path.is_dir() || entries(path).iter().all(|(_, entry)| old(entry)))
}

fn remove(root: &Path, path: &Path, swept: &mut Swept) {
    let removed = if path.is_dir() && !path.is_symlink() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Ok(()) => swept
            .removed
            .push(path.strip_prefix(root).unwrap_or(path).to_path_buf()),
        Err(e) => eprintln!(
            "veil: sweeping {}: {e}; left for the next sweep",
            path.display()
        ),
    }
}
