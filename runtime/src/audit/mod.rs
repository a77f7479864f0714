//! The audit log: every state change, appended to a keyed hash chain that only the platform
//! can extend, sealed by signed checkpoints kept outside the database, and cross-checked
//! against the money and the products it describes.
//!
//! ```text
//! Store::write ─► change + audit::append (entries, keyed hashes)      one SQLite transaction
//!              ─► checkpoints: entries since the last checkpoint chain?  no ─► roll back, fail
//!              ─► commit ─► sign (seq, hash) ─► append a line to audit.checkpoints, fsync
//! veil audit verify ─► every checkpoint line ─► the whole chain ─► cross_check (products,
//!                      meter ↔ ledger ↔ audit, statements) ─► the first mismatch, or clean
//! ```
//!
//! # Entries
//!
//! Each entry carries a sequence number, a kind, the time, the actor, the subject (an id) and
//! details (JSON, never a data value from inside the domain), plus the hash of the previous
//! entry. Kind and details come from one typed [`Event`], whose stored shape per kind is fixed
//! in one place (`event.rs`). Its own hash is
//!
//! ```text
//! K      = blake3::derive_key("veil audit entry key v2", platform signing key's secret bytes)
//! hash_n = BLAKE3-keyed(K, len‖seq ‖ len‖kind ‖ len‖at ‖ len‖actor ‖ len‖subject ‖ len‖details ‖ prev)
//! ```
//!
//! Every field is length-prefixed, so no two different entries encode to the same bytes, and
//! the kind is hashed as its own field, so an entry of one kind can never be passed off as
//! another. Because `K` comes from the platform's secret, someone who can write the database
//! but does not hold the key cannot compute the hash of an entry they edit, insert or reorder:
//! rewriting the chain "consistently" is no longer possible. Entries live in the state
//! database, written in the same transaction as the change they describe: [`append`] takes a
//! [`WriteTx`], which only [`Store::write`](crate::store::Store::write) creates and which
//! carries `K` while the change runs.
//!
//! Stores created before schema version 5 hold entries hashed without a key (BLAKE3 in
//! derive-key mode with the context `"veil audit entry v1"`). They are carried over once, when
//! the store is upgraded: the old chain must verify against the old signed checkpoint
//! (`audit.head`), and then the first checkpoint of the new log is signed at its head with
//! `keyed_from` = the next sequence number. Entries from `keyed_from` on are keyed; the first
//! of them chains onto the last unkeyed one, so the unkeyed prefix is pinned by a keyed hash
//! and by that signed checkpoint. `keyed_from` is part of every signed checkpoint, so it
//! cannot be moved (see `checkpoints::carry_over`).
//!
//! # Checkpoints
//!
//! A chain alone cannot show that its *tail* was cut off, and keyed hashes alone do not stop
//! the platform from signing whatever the database holds. So every write is **sealed**
//! (`checkpoints::Sealer`): inside the write's transaction, before it commits, the entries
//! from the last signed checkpoint to the new head must chain correctly — the entry at the
//! checkpoint's sequence number must still carry the checkpointed hash, and every entry after
//! it must have its keyed hash and point at its predecessor. If not, the transaction is rolled
//! back and the write fails: **nothing is committed and the checkpoint never moves forward over
//! tampered history.** Only then does the transaction commit, and the new head (sequence
//! number, hash, `keyed_from`) is signed with the platform key and appended as one JSON line to
//! `audit.checkpoints`, a file outside the database that is only ever appended to, and synced.
//! Each product manifest carries the checkpoint current when it was written, so buyers hold
//! witnesses too ([`current_checkpoint`]).
//!
//! # Verification
//!
//! [`verify`] checks every line of the checkpoint log (signature, order), walks the whole
//! chain — finding the first entry that was edited, dropped or reordered, a truncated tail, and
//! any entry that no longer has the hash a checkpoint (exported or in a product manifest)
//! recorded — and then cross-checks what the log describes ([`cross_check`]): products and
//! their manifests, meter records, ledger postings and purchases, and settled statement files.
//! It names the first mismatch.

mod checkpoints;
pub mod cross_check;
mod event;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ed25519_dalek::SigningKey;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::clock;
use crate::error::Result;
use crate::store::{Store, WriteTx};

pub use checkpoints::{Checkpoint, LOG_FILE, current_checkpoint};
pub(crate) use checkpoints::{Sealer, WriteLock, carry_over, retire_legacy_head};
pub use cross_check::Record;
pub use event::{Downloader, Event, Phase, Release};

/// The derive-key context of unkeyed (pre-version-5) entry hashes.
const UNKEYED_CONTEXT: &str = "veil audit entry v1";
/// The derive-key context that turns the platform's secret key into the entry key.
const ENTRY_KEY_CONTEXT: &str = "veil audit entry key v2";
/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What kind of state change an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    StoreInitialized,
    DatasetRegistered,
    DatasetVersionRegistered,
    CorrectionFiled,
    CorrectionAnswered,
    GrantCreated,
    GrantDisposed,
    GrantRequested,
    GrantRequestApproved,
    GrantRequestRejected,
    ModuleStored,
    TemplateSubmitted,
    TemplateApproved,
    TemplateRejected,
    TemplateRevoked,
    JobQueued,
    JobStarted,
    JobCancelled,
    BudgetReserved,
    JobReleased,
    JobRejected,
    JobFailed,
    ProductReleased,
    MeterRecorded,
    PrincipalAdded,
    PrincipalRevoked,
    PrincipalKeyRotated,
    PriceSet,
    ProductListed,
    ProductPurchased,
    ProductDownloaded,
    ProductRecalled,
    FreezeImposed,
    FreezeLifted,
    PeriodSettled,
    DisputeOpened,
    DisputeUpheld,
    DisputeRejected,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StoreInitialized => "store.initialized",
            Self::DatasetRegistered => "dataset.registered",
            Self::DatasetVersionRegistered => "dataset.version_registered",
            Self::CorrectionFiled => "correction.filed",
            Self::CorrectionAnswered => "correction.answered",
            Self::GrantCreated => "grant.created",
            Self::GrantDisposed => "grant.disposed",
            Self::GrantRequested => "grant.requested",
            Self::GrantRequestApproved => "grant_request.approved",
            Self::GrantRequestRejected => "grant_request.rejected",
            Self::ModuleStored => "module.stored",
            Self::TemplateSubmitted => "template.submitted",
            Self::TemplateApproved => "template.approved",
            Self::TemplateRejected => "template.rejected",
            Self::TemplateRevoked => "template.revoked",
            Self::JobQueued => "job.queued",
            Self::JobStarted => "job.started",
            Self::JobCancelled => "job.cancelled",
            Self::BudgetReserved => "budget.reserved",
            Self::JobReleased => "job.released",
            Self::JobRejected => "job.rejected",
            Self::JobFailed => "job.failed",
            Self::ProductReleased => "product.released",
            Self::MeterRecorded => "meter.recorded",
            Self::PrincipalAdded => "principal.added",
            Self::PrincipalRevoked => "principal.revoked",
            Self::PrincipalKeyRotated => "principal.key_rotated",
            Self::PriceSet => "price.set",
            Self::ProductListed => "product.listed",
            Self::ProductPurchased => "product.purchased",
            Self::ProductDownloaded => "product.downloaded",
            Self::ProductRecalled => "product.recalled",
            Self::FreezeImposed => "freeze.imposed",
            Self::FreezeLifted => "freeze.lifted",
            Self::PeriodSettled => "period.settled",
            Self::DisputeOpened => "dispute.opened",
            Self::DisputeUpheld => "dispute.upheld",
            Self::DisputeRejected => "dispute.rejected",
        }
    }
}

/// One entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: i64,
    pub kind: String,
    pub at: String,
    pub actor: String,
    pub subject: String,
    pub details: String,
    pub prev: String,
    pub hash: String,
}

/// The secret key of entry hashes, derived from the platform's signing key. It never leaves
/// the process and is never written anywhere.
#[derive(Clone)]
pub struct EntryKey([u8; 32]);

impl EntryKey {
    /// `blake3::derive_key` with a context of its own, so the entry key is unrelated to every
    /// other use of the platform key.
    pub fn derive(signing: &SigningKey) -> Self {
        Self(blake3::derive_key(ENTRY_KEY_CONTEXT, signing.as_bytes()))
    }
}

impl std::fmt::Debug for EntryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EntryKey(…)")
    }
}

impl Entry {
    /// The hash this entry must carry: keyed from `keyed_from` on, unkeyed before it.
    pub(crate) fn expected_hash(&self, key: &EntryKey, keyed_from: i64) -> String {
        let mut hasher = if self.seq >= keyed_from {
            blake3::Hasher::new_keyed(&key.0)
        } else {
            blake3::Hasher::new_derive_key(UNKEYED_CONTEXT)
        };
        for field in [
            self.seq.to_string().as_str(),
            &self.kind,
            &self.at,
            &self.actor,
            &self.subject,
            &self.details,
        ] {
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
        hasher.update(self.prev.as_bytes());
        hasher.finalize().to_hex().to_string()
    }

    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            seq: row.get(0)?,
            kind: row.get(1)?,
            at: row.get(2)?,
            actor: row.get(3)?,
            subject: row.get(4)?,
            details: row.get(5)?,
            prev: row.get(6)?,
            hash: row.get(7)?,
        })
    }
}

const ENTRY_COLUMNS: &str = "seq, kind, at, actor, subject, details, prev, hash";

/// How many entries the log holds, and the latest `limit` of them, newest first (the bureau's
/// console shows them; `verify` is what checks them).
pub fn recent(conn: &Connection, limit: u32) -> Result<(i64, Vec<Entry>)> {
    let total: i64 = conn.query_row("SELECT COUNT(*) FROM audit", [], |row| row.get(0))?;
    let entries = crate::store::query_rows(
        conn,
        &format!("SELECT {ENTRY_COLUMNS} FROM audit ORDER BY seq DESC LIMIT ?1"),
        [limit],
        Entry::from_row,
    )?;
    Ok((total, entries))
}

/// The head of the chain: its sequence number (0 when empty) and hash.
pub(crate) fn head(conn: &Connection) -> Result<(i64, String)> {
    let head: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    Ok(head.unwrap_or_else(|| (0, GENESIS.to_string())))
}

/// Appends the entry recording `event`, done by `actor` to `subject` (an id), inside the
/// write transaction `tx`, and returns its sequence number.
///
/// Only [`Store::write`] opens a [`WriteTx`], and it carries the entry key for exactly as long
/// as the change runs: an entry can be appended nowhere else, which the compiler checks.
pub fn append(tx: &WriteTx<'_>, actor: &str, subject: &str, event: Event<'_>) -> Result<i64> {
    let (last, prev) = head(tx)?;
    let mut entry = Entry {
        seq: last + 1,
        kind: event.kind().as_str().to_string(),
        at: clock::format(clock::now()),
        actor: actor.to_string(),
        subject: subject.to_string(),
        details: event.details().to_string(),
        prev,
        hash: String::new(),
    };
    // New entries are always keyed: `keyed_from` is never above the head.
    entry.hash = entry.expected_hash(tx.entry_key(), 0);
    tx.execute(
        "INSERT INTO audit (seq, kind, at, actor, subject, details, prev, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            entry.seq,
            entry.kind,
            entry.at,
            entry.actor,
            entry.subject,
            entry.details,
            entry.prev,
            entry.hash
        ],
    )?;
    Ok(entry.seq)
}

/// The result of a successful verification: what was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub entries: i64,
    pub head_hash: String,
    /// The newest exported checkpoint.
    pub checkpoint_seq: i64,
    /// Lines of `audit.checkpoints`, each checked against the chain.
    pub checkpoints: usize,
    /// The first keyed entry (1 unless the store was carried over from unkeyed hashes).
    pub keyed_from: i64,
    pub products: usize,
    pub meter_records: usize,
    pub postings: usize,
    pub statement_files: usize,
}

/// Why verification failed: the first problem found and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("entry {seq}: its contents do not match its hash — the entry was edited or moved")]
    Edited { seq: i64 },
    #[error(
        "entry at position {position} has sequence number {found}; expected {expected} — an entry was dropped or the entries were reordered"
    )]
    Sequence {
        position: i64,
        expected: i64,
        found: i64,
    },
    #[error(
        "entry {seq}: it does not point at the hash of entry {previous} — an entry before it was dropped, replaced or reordered"
    )]
    Link { seq: i64, previous: i64 },
    #[error(
        "the log ends at entry {last} but a signed checkpoint covers entry {checkpoint} — the tail of the log was truncated"
    )]
    Truncated { last: i64, checkpoint: i64 },
    #[error(
        "entry {seq} does not have the hash a signed checkpoint recorded — the log was rewritten"
    )]
    CheckpointMismatch { seq: i64 },
    #[error(
        "audit.checkpoints line {line}: the signature is not the platform's — the checkpoint log was tampered with"
    )]
    CheckpointSignature { line: usize },
    #[error("audit.checkpoints line {line}: not a checkpoint (damaged, or not written by Veil)")]
    CheckpointMalformed { line: usize },
    #[error(
        "audit.checkpoints line {line}: it does not follow the line before it (sequence numbers must grow and the first keyed entry stay the same) — the checkpoint log was edited"
    )]
    CheckpointOrder { line: usize },
    #[error(
        "the audit checkpoint log is missing, unreadable or empty — audit.checkpoints was removed or damaged"
    )]
    CheckpointMissing,
    #[error("{record} {id}: {what}")]
    Mismatch {
        record: Record,
        id: String,
        what: String,
    },
}

/// The chain as one walk found it.
struct Chain {
    entries: i64,
    head_hash: String,
    /// The hash of each entry asked for.
    hashes: BTreeMap<i64, String>,
    /// The entries of the kinds the cross-checks read, by sequence number.
    captured: HashMap<i64, Entry>,
}

/// Walks the whole chain in storage order (rowid, not sorted by seq, so that a reordering of
/// the rows is seen as one), checking every hash and link, that each of `checkpoints` still
/// holds, and that the chain reaches the newest of them.
fn walk(
    conn: &Connection,
    key: &EntryKey,
    keyed_from: i64,
    checkpoints: &BTreeMap<i64, String>,
    wanted: &BTreeSet<i64>,
    capture: &[&str],
) -> Result<Result<Chain, Broken>> {
    let mut statement =
        conn.prepare(&format!("SELECT {ENTRY_COLUMNS} FROM audit ORDER BY rowid"))?;
    let rows = statement.query_map([], Entry::from_row)?;
    let mut chain = Chain {
        entries: 0,
        head_hash: GENESIS.to_string(),
        hashes: BTreeMap::new(),
        captured: HashMap::new(),
    };
    for row in rows {
        let entry = row?;
        let position = chain.entries + 1;
        if entry.expected_hash(key, keyed_from) != entry.hash {
            return Ok(Err(Broken::Edited { seq: entry.seq }));
        }
        if entry.seq != position {
            return Ok(Err(Broken::Sequence {
                position,
                expected: position,
                found: entry.seq,
            }));
        }
        if entry.prev != chain.head_hash {
            return Ok(Err(Broken::Link {
                seq: entry.seq,
                previous: entry.seq - 1,
            }));
        }
        if checkpoints
            .get(&entry.seq)
            .is_some_and(|hash| *hash != entry.hash)
        {
            return Ok(Err(Broken::CheckpointMismatch { seq: entry.seq }));
        }
        if wanted.contains(&entry.seq) {
            chain.hashes.insert(entry.seq, entry.hash.clone());
        }
        chain.entries = position;
        chain.head_hash = entry.hash.clone();
        if capture.contains(&entry.kind.as_str()) {
            chain.captured.insert(entry.seq, entry);
        }
    }
    if let Some((&newest, _)) = checkpoints.last_key_value()
        && chain.entries < newest
    {
        return Ok(Err(Broken::Truncated {
            last: chain.entries,
            checkpoint: newest,
        }));
    }
    Ok(Ok(chain))
}

/// Verifies the audit log and everything it vouches for (see the module docs); names the
/// first problem.
pub fn verify(store: &Store) -> Result<Result<Verified, Broken>> {
    let platform = store.signing_key().verifying_key();
    // The checkpoint log is read before the database: every line in it names an entry that was
    // committed before the line was written, so the snapshot read next holds all of them.
    let log = match checkpoints::read_log(&store.audit_log_path(), &platform)? {
        Ok(log) => log,
        Err(broken) => return Ok(Err(broken)),
    };
    // One read transaction: the chain and every table are read from the same snapshot.
    let snapshot = store.conn().unchecked_transaction()?;
    let products = cross_check::read_products(&snapshot, &store.products_dir(), &platform)?;
    let checkpointed: BTreeMap<i64, String> = log
        .checkpoints
        .iter()
        .map(|c| (c.seq, c.hash.clone()))
        .collect();
    let wanted: BTreeSet<i64> = products
        .iter()
        .filter_map(cross_check::ProductOnDisk::checkpoint_seq)
        .collect();
    let chain = match walk(
        &snapshot,
        store.audit_entry_key(),
        log.keyed_from,
        &checkpointed,
        &wanted,
        cross_check::CAPTURED_KINDS,
    )? {
        Ok(chain) => chain,
        Err(broken) => return Ok(Err(broken)),
    };
    let checked = cross_check::Context {
        conn: &snapshot,
        log: &log,
        hashes: &chain.hashes,
        captured: &chain.captured,
    };
    let products_checked = match checked.products(&products) {
        Ok(count) => count,
        Err(broken) => return Ok(Err(broken)),
    };
    let (meter_records, postings) = match checked.money()? {
        Ok(counts) => counts,
        Err(broken) => return Ok(Err(broken)),
    };
    let statement_files = match checked.statements(&store.statements_dir())? {
        Ok(count) => count,
        Err(broken) => return Ok(Err(broken)),
    };
    Ok(Ok(Verified {
        entries: chain.entries,
        head_hash: chain.head_hash,
        checkpoint_seq: log.checkpoints.last().map_or(0, |c| c.seq),
        checkpoints: log.checkpoints.len(),
        keyed_from: log.keyed_from,
        products: products_checked,
        meter_records,
        postings,
        statement_files,
    }))
}
