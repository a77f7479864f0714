//! Signed checkpoints of the audit chain, exported to `audit.checkpoints` outside the database.
//!
//! The file holds one JSON line per checkpoint ([`Checkpoint`], the SDK's `AuditCheckpoint`),
//! oldest first. It is only ever appended to, each line synced before the write that caused it
//! returns. A crash in the middle of an append can leave a last line without its newline; such
//! a torn line was never a finished checkpoint, so readers ignore it and the next append cuts
//! it off first.
//!
//! [`Sealer`] is what `Store::write` uses: under [`WriteLock`] it reads the last checkpoint,
//! checks the entries since it inside the write's transaction ([`Sealer::check`]), and after the
//! commit signs and appends the new head ([`Sealer::export`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use rusqlite::Connection;
use serde::Deserialize;

use super::{Broken, ENTRY_COLUMNS, Entry, EntryKey, GENESIS};
use crate::error::{Error, Result};
use crate::files;
use crate::store::Store;

pub use veil_sdk::manifest::AuditCheckpoint as Checkpoint;

/// The checkpoint log, in the store's folder.
pub const LOG_FILE: &str = "audit.checkpoints";
/// Held by a writer from before its transaction until its checkpoint is exported.
const LOCK_FILE: &str = "audit.lock";
/// The single signed checkpoint of stores before schema version 5 (unkeyed hashes).
const LEGACY_HEAD_FILE: &str = "audit.head";
/// The signing context of those legacy checkpoints.
const LEGACY_CONTEXT: &[u8] = b"veil audit checkpoint v1\n";
/// How much of the log's end a writer reads to find the last line. A line is about 300
/// bytes, so this holds the last line many times over.
const TAIL_BYTES_MAX: u64 = 16 * 1024;
/// The longest line the verifier accepts; real lines are about 300 bytes.
const LINE_BYTES_MAX: usize = 4 * 1024;

/// An exclusive lock on `audit.lock`, taken by every write before its transaction and held
/// until its checkpoint is exported. Writers in other processes (a `veil` command next to
/// `veil serve`) thus export checkpoints in the order they committed, and no legitimate
/// writer can slip entries in between another's check and its signature.
pub(crate) struct WriteLock(File);

impl WriteLock {
    pub(crate) fn acquire(root: &Path) -> Result<Self> {
        let path = root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))?;
        file.lock().map_err(|e| Error::io("locking", &path, e))?;
        Ok(Self(file))
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first just does it sooner.
        let _ = self.0.unlock();
    }
}

/// The last checkpoint in the log as a writer found it.
pub(crate) struct Last {
    checkpoint: Option<Checkpoint>,
    /// Bytes up to the end of the last complete line.
    complete_len: u64,
    file_len: u64,
}

/// The head a write will checkpoint once it has committed.
#[derive(Clone)]
pub(crate) struct Head {
    seq: i64,
    hash: String,
    keyed_from: i64,
}

/// Seals writes: checks the chain since the last checkpoint and exports the next one.
pub(crate) struct Sealer {
    log: PathBuf,
    entry_key: EntryKey,
    platform: VerifyingKey,
    /// The last line this store exported or authenticated: finding it again at the end of the
    /// log needs no second signature check.
    trusted_line: Option<Vec<u8>>,
}

impl Sealer {
    pub(crate) fn new(root: &Path, signing: &SigningKey) -> Self {
        Self {
            log: root.join(LOG_FILE),
            entry_key: EntryKey::derive(signing),
            platform: signing.verifying_key(),
            trusted_line: None,
        }
    }

    pub(crate) fn entry_key(&self) -> &EntryKey {
        &self.entry_key
    }

    /// Reads the last checkpoint of the log and checks its signature.
    pub(crate) fn last(&mut self) -> Result<Last> {
        let tail = read_tail(&self.log).map_err(|e| sealing(&e))?;
        let checkpoint = match &tail.line {
            None => None,
            Some(line) => {
                let checkpoint: Checkpoint = serde_json::from_slice(line).map_err(|_| {
                    sealing("the last line of audit.checkpoints is not a checkpoint")
                })?;
                if self.trusted_line.as_deref() != Some(line.as_slice()) {
                    if !checkpoint.is_signed_by(&self.platform) {
                        return Err(sealing(
                            "the last line of audit.checkpoints is not signed by the platform",
                        ));
                    }
                    self.trusted_line = Some(line.clone());
                }
                Some(checkpoint)
            }
        };
        Ok(Last {
            checkpoint,
            complete_len: tail.complete_len,
            file_len: tail.file_len,
        })
    }

    /// Inside the write's transaction, before it commits: the entries from the last checkpoint
    /// to the head must chain correctly (see the module docs of `audit`). Returns the head to
    /// checkpoint, or `None` when the write appended nothing. `head_before` is the head's
    /// sequence number before the change ran.
    pub(crate) fn check(
        &self,
        tx: &Connection,
        last: &Last,
        head_before: i64,
    ) -> Result<Option<Head>> {
        let refuse = |broken: Broken| sealing(&broken.to_string());
        let (keyed_from, from, mut previous) = match &last.checkpoint {
            Some(checkpoint) => (checkpoint.keyed_from, checkpoint.seq, None),
            // Only a new store has no checkpoint: its first write is the one that appends
            // entry 1 (or, after a crash right after `init`, the one after it). A log emptied
            // by someone else is refused rather than signed afresh.
            None if head_before <= 1 => (1, 1, Some((0, GENESIS.to_string()))),
            None => {
                return Err(sealing(&format!(
                    "audit.checkpoints holds no checkpoint but the log holds {head_before} entries — the checkpoint log was emptied"
                )));
            }
        };
        let mut statement = tx.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM audit WHERE seq >= ?1 ORDER BY seq"
        ))?;
        let rows = statement.query_map([from], Entry::from_row)?;
        for row in rows {
            let entry = row?;
            match &previous {
                // The checkpointed entry itself (only with a checkpoint is `previous` unset).
                None => {
                    if entry.seq != from {
                        return Err(refuse(Broken::Sequence {
                            position: from,
                            expected: from,
                            found: entry.seq,
                        }));
                    }
                    if last.checkpoint.as_ref().map(|c| c.hash.as_str()) != Some(&entry.hash) {
                        return Err(refuse(Broken::CheckpointMismatch { seq: from }));
                    }
                    // Its stored hash is the checkpointed one; its contents must still match.
                    if entry.expected_hash(&self.entry_key, keyed_from) != entry.hash {
                        return Err(refuse(Broken::Edited { seq: entry.seq }));
                    }
                }
                Some((seq, hash)) => {
                    if entry.expected_hash(&self.entry_key, keyed_from) != entry.hash {
                        return Err(refuse(Broken::Edited { seq: entry.seq }));
                    }
                    if entry.seq != seq + 1 {
                        return Err(refuse(Broken::Sequence {
                            position: seq + 1,
                            expected: seq + 1,
                            found: entry.seq,
                        }));
                    }
                    if entry.prev != *hash {
                        return Err(refuse(Broken::Link {
                            seq: entry.seq,
                            previous: *seq,
                        }));
                    }
                }
            }
            previous = Some((entry.seq, entry.hash));
        }
        let Some((seq, hash)) = previous else {
            // Not even the checkpointed entry is left.
            return Err(refuse(Broken::Truncated {
                last: super::head(tx)?.0,
                checkpoint: from,
            }));
        };
        let checkpointed = last.checkpoint.as_ref().map_or(0, |c| c.seq);
        Ok((seq > checkpointed).then_some(Head {
            seq,
            hash,
            keyed_from,
        }))
    }

    /// After the commit: signs `head` and appends it to the log, synced. If this fails, the
    /// change stays committed (the error says so) and the next write checkpoints both.
    pub(crate) fn export(&mut self, key: &SigningKey, last: &Last, head: Head) -> Result<()> {
        let checkpoint = Checkpoint::sign(head.seq, head.hash, head.keyed_from, key);
        let mut line = serde_json::to_vec(&checkpoint)
            .map_err(|e| Error::internal(format!("encoding an audit checkpoint: {e}")))?;
        line.push(b'\n');
        let exported = || -> std::io::Result<()> {
            let mut file = OpenOptions::new().append(true).open(&self.log)?;
            if last.file_len != last.complete_len {
                // A torn line from a crash mid-append: never a finished checkpoint.
                file.set_len(last.complete_len)?;
            }
            file.write_all(&line)?;
            file.sync_data()
        };
        exported().map_err(|e| {
            Error::internal(format!(
                "exporting the audit checkpoint of entry {} to {}: {e} (the change itself was committed; the next write exports its checkpoint)",
                checkpoint.seq,
                self.log.display()
            ))
        })?;
        line.pop();
        self.trusted_line = Some(line);
        Ok(())
    }
}

fn sealing(what: &str) -> Error {
    Error::internal(format!(
        "sealing the audit log: {what}. Nothing was written. Run `veil audit verify` to see what changed and restore the store (veil.db, audit.checkpoints) from a backup"
    ))
}

/// The end of the log: its last complete line, if any.
struct Tail {
    line: Option<Vec<u8>>,
    complete_len: u64,
    file_len: u64,
}

fn read_tail(path: &Path) -> std::result::Result<Tail, String> {
    let describe = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "{} is missing — the checkpoint log was removed",
            path.display()
        ),
        _ => format!("reading {}: {e}", path.display()),
    };
    let mut file = File::open(path).map_err(describe)?;
    let file_len = file.metadata().map_err(describe)?.len();
    let start = file_len.saturating_sub(TAIL_BYTES_MAX);
    file.seek(SeekFrom::Start(start)).map_err(describe)?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(describe)?;
    // Everything after the last newline is a torn line (or nothing).
    let Some(end) = tail.iter().rposition(|&b| b == b'\n') else {
        if start > 0 {
            return Err(format!(
                "{}: no line ends in its last {TAIL_BYTES_MAX} bytes — the checkpoint log is damaged",
                path.display()
            ));
        }
        return Ok(Tail {
            line: None,
            complete_len: 0,
            file_len,
        });
    };
    let begin = tail[..end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    if begin == 0 && start > 0 {
        return Err(format!(
            "{}: its last line is longer than {TAIL_BYTES_MAX} bytes — the checkpoint log is damaged",
            path.display()
        ));
    }
    Ok(Tail {
        line: Some(tail[begin..end].to_vec()),
        complete_len: start + end as u64 + 1,
        file_len,
    })
}

/// The checkpoint current now, for a product manifest: the last line of the store's log, its
/// signature checked. `None` only for a store that has never completed a write.
pub fn current_checkpoint(store: &Store) -> Result<Option<Checkpoint>> {
    let path = store.audit_log_path();
    let tail = read_tail(&path)
        .map_err(|why| Error::internal(format!("reading the current audit checkpoint: {why}")))?;
    let Some(line) = tail.line else {
        return Ok(None);
    };
    let checkpoint: Checkpoint = serde_json::from_slice(&line).map_err(|_| {
        Error::internal("reading the current audit checkpoint: the last line of audit.checkpoints is not a checkpoint")
    })?;
    if !checkpoint.is_signed_by(&store.signing_key().verifying_key()) {
        return Err(Error::internal(
            "reading the current audit checkpoint: the last line of audit.checkpoints is not signed by the platform",
        ));
    }
    Ok(Some(checkpoint))
}

/// Every checkpoint of the log, checked line by line.
pub(crate) struct Log {
    pub(crate) checkpoints: Vec<Checkpoint>,
    pub(crate) keyed_from: i64,
}

impl Log {
    /// True when the log holds exactly this checkpoint.
    pub(crate) fn holds(&self, checkpoint: &Checkpoint) -> bool {
        self.checkpoints
            .binary_search_by_key(&checkpoint.seq, |c| c.seq)
            .is_ok_and(|i| self.checkpoints[i] == *checkpoint)
    }
}

/// Reads and checks every line of the log: each is a checkpoint signed by `platform`, sequence
/// numbers grow, `keyed_from` never changes. A torn last line (no newline) is ignored.
pub(crate) fn read_log(
    path: &Path,
    platform: &VerifyingKey,
) -> Result<std::result::Result<Log, Broken>> {
    let Ok(file) = File::open(path) else {
        return Ok(Err(Broken::CheckpointMissing));
    };
    let mut reader = BufReader::new(file);
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let read = (&mut reader)
            .take(LINE_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io("reading", path, e))?;
        if read == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            if line.len() > LINE_BYTES_MAX {
                return Ok(Err(Broken::CheckpointMalformed { line: number }));
            }
            // A torn last line: never a finished checkpoint.
            break;
        }
        let Ok(checkpoint) = serde_json::from_slice::<Checkpoint>(&line[..line.len() - 1]) else {
            return Ok(Err(Broken::CheckpointMalformed { line: number }));
        };
        if !checkpoint.is_signed_by(platform) {
            return Ok(Err(Broken::CheckpointSignature { line: number }));
        }
        if let Some(previous) = checkpoints.last()
            && (checkpoint.seq <= previous.seq || checkpoint.keyed_from != previous.keyed_from)
        {
            return Ok(Err(Broken::CheckpointOrder { line: number }));
        }
        checkpoints.push(checkpoint);
    }
    let Some(first) = checkpoints.first() else {
        return Ok(Err(Broken::CheckpointMissing));
    };
    let keyed_from = first.keyed_from;
    Ok(Ok(Log {
        checkpoints,
        keyed_from,
    }))
}

/// The signed checkpoint of stores before schema version 5.
#[derive(Deserialize)]
struct LegacyHead {
    seq: i64,
    hash: String,
    signature: String,
}

/// Carries a store's audit log over to keyed hashes, once, when a store older than schema
/// version 5 is opened (before its schema is upgraded; nothing in the database changes here).
///
/// - With a legacy `audit.head` (the old single signed checkpoint): its signature must be the
///   platform's and the whole unkeyed chain must verify against it. Then a new log is written
///   (atomically, replacing any left by an upgrade that crashed) with one checkpoint at the
///   chain's head and `keyed_from` = head + 1: every later entry is keyed and chains onto it.
/// - Without one, but with a checkpoint log (a store whose version was set back), the chain
///   must verify against that log as it is.
///
/// If the chain does not verify, the upgrade is refused: carrying a tampered log over would
/// sign it.
pub(crate) fn carry_over(conn: &Connection, root: &Path, signing: &SigningKey) -> Result<()> {
    let key = EntryKey::derive(signing);
    let refuse = |broken: Broken| {
        Error::internal(format!(
            "upgrading the audit log to keyed hashes: {broken}. The log must verify before it is carried over; nothing was changed — restore veil.db and audit.head from a backup"
        ))
    };
    let legacy_path = root.join(LEGACY_HEAD_FILE);
    let log_path = root.join(LOG_FILE);
    let Ok(bytes) = std::fs::read(&legacy_path) else {
        let log = match read_log(&log_path, &signing.verifying_key())? {
            Ok(log) => log,
            Err(broken) => return Err(refuse(broken)),
        };
        let checkpointed = log.checkpoints.iter().map(|c| (c.seq, c.hash.clone()));
        return super::walk(
            conn,
            &key,
            log.keyed_from,
            &checkpointed.collect(),
            &Default::default(),
            &[],
        )?
        .map(|_| ())
        .map_err(refuse);
    };
    let legacy: LegacyHead = serde_json::from_slice(&bytes).map_err(|_| {
        Error::internal(format!(
            "upgrading the audit log: {} is not an audit checkpoint; restore it from a backup",
            legacy_path.display()
        ))
    })?;
    let mut message = LEGACY_CONTEXT.to_vec();
    message.extend_from_slice(format!("{}\n{}", legacy.seq, legacy.hash).as_bytes());
    let signed = hex::decode(&legacy.signature)
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .is_some_and(|bytes| {
            signing
                .verifying_key()
                .verify(&message, &Signature::from_bytes(&bytes))
                .is_ok()
        });
    if !signed {
        return Err(refuse(Broken::CheckpointMissing));
    }
    // Every entry so far is unkeyed: `keyed_from` lies beyond any sequence number.
    let chain = super::walk(
        conn,
        &key,
        i64::MAX,
        &BTreeMap::from([(legacy.seq, legacy.hash)]),
        &Default::default(),
        &[],
    )?
    .map_err(refuse)?;
    let checkpoint = Checkpoint::sign(chain.entries, chain.head_hash, chain.entries + 1, signing);
    let mut line = serde_json::to_vec(&checkpoint)
        .map_err(|e| Error::internal(format!("encoding an audit checkpoint: {e}")))?;
    line.push(b'\n');
    files::write_atomic(&log_path, &line, false)
}

/// Removes the legacy `audit.head` once the upgrade has committed; the log replaces it.
pub(crate) fn retire_legacy_head(root: &Path) -> Result<()> {
    let path = root.join(LEGACY_HEAD_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => files::sync_dir(root),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", &path, e)),
    }
}
