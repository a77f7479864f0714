//! The audit log: every state change, appended to a hash chain.
//!
//! Each entry carries a sequence number, a kind, the time, the actor, the subject (an id) and
//! details (JSON, never a data value from inside the domain), plus the hash of the previous
//! entry. Its own hash is
//!
//! ```text
//! hash_n = BLAKE3-keyed(derive_key("veil audit entry v1"),
//!            len‖seq ‖ len‖kind ‖ len‖at ‖ len‖actor ‖ len‖subject ‖ len‖details ‖ prev)
//! ```
//!
//! Every field is length-prefixed, so no two different entries encode to the same bytes, and
//! the kind is hashed as its own field, so an entry of one kind can never be passed off as
//! another ("record kinds kept apart"). Entries live in the state database, written in the
//! same transaction as the change they describe.
//!
//! A chain alone cannot show that its *tail* was cut off: a shorter chain is still a valid
//! chain. So after every commit a **checkpoint** — the head's sequence number and hash, signed
//! with the platform key — is written to `audit.head`, a file outside the database. [`verify`]
//! finds the first entry that was edited, dropped or reordered, and a truncated tail by
//! comparison with the checkpoint.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::{clock, files};

const HASH_CONTEXT: &str = "veil audit entry v1";
const CHECKPOINT_CONTEXT: &[u8] = b"veil audit checkpoint v1\n";
/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What kind of state change an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    StoreInitialized,
    DatasetRegistered,
    GrantCreated,
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
    PriceSet,
    ProductListed,
    ProductPurchased,
    ProductDownloaded,
    ProductRecalled,
    PeriodSettled,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StoreInitialized => "store.initialized",
            Self::DatasetRegistered => "dataset.registered",
            Self::GrantCreated => "grant.created",
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
            Self::PriceSet => "price.set",
            Self::ProductListed => "product.listed",
            Self::ProductPurchased => "product.purchased",
            Self::ProductDownloaded => "product.downloaded",
            Self::ProductRecalled => "product.recalled",
            Self::PeriodSettled => "period.settled",
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

impl Entry {
    fn compute_hash(&self) -> String {
        let mut hasher = blake3::Hasher::new_derive_key(HASH_CONTEXT);
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
}

/// Appends one entry inside the caller's transaction and returns its sequence number.
pub fn append(
    tx: &Connection,
    kind: Kind,
    actor: &str,
    subject: &str,
    details: serde_json::Value,
) -> Result<i64> {
    let head: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let (seq, prev) = match head {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_string()),
    };
    let mut entry = Entry {
        seq,
        kind: kind.as_str().to_string(),
        at: clock::format(clock::now()),
        actor: actor.to_string(),
        subject: subject.to_string(),
        details: details.to_string(),
        prev,
        hash: String::new(),
    };
    entry.hash = entry.compute_hash();
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
    Ok(seq)
}

/// The signed head of the chain, kept outside the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub signature: String,
}

fn checkpoint_message(seq: i64, hash: &str) -> Vec<u8> {
    let mut message = CHECKPOINT_CONTEXT.to_vec();
    message.extend_from_slice(format!("{seq}\n{hash}").as_bytes());
    message
}

/// Rewrites the checkpoint to the chain's current head (never moving it backwards).
pub fn write_checkpoint(conn: &Connection, path: &Path, key: &SigningKey) -> Result<()> {
    let head: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let Some((seq, hash)) = head else {
        return Ok(());
    };
    // Two processes may commit and checkpoint in either order; the later checkpoint must not
    // replace a newer one. An exclusive lock on a file beside the checkpoint makes the
    // read-compare-write one step across processes.
    let lock_path = path.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io("opening", &lock_path, e))?;
    lock.lock()
        .map_err(|e| Error::io("locking", &lock_path, e))?;
    if let Ok(existing) = read_checkpoint(path)
        && existing.seq >= seq
    {
        return Ok(());
    }
    let signature = key.sign(&checkpoint_message(seq, &hash));
    let checkpoint = Checkpoint {
        seq,
        hash,
        signature: hex::encode(signature.to_bytes()),
    };
    let bytes = serde_json::to_vec_pretty(&checkpoint)
        .map_err(|e| Error::internal(format!("encoding the audit checkpoint: {e}")))?;
    files::write_atomic(path, &bytes, false)
}

fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| Error::invalid(format!("{} is not an audit checkpoint", path.display())))
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub entries: i64,
    pub head_hash: String,
    pub checkpoint_seq: i64,
}

/// Why verification failed: the first bad entry and what is wrong with it.
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
        "the log ends at entry {last} but the signed checkpoint covers entry {checkpoint} — the tail of the log was truncated"
    )]
    Truncated { last: i64, checkpoint: i64 },
    #[error(
        "entry {seq} does not have the hash the signed checkpoint recorded — the log was rewritten"
    )]
    CheckpointMismatch { seq: i64 },
    #[error(
        "the audit checkpoint's signature is not the platform's — audit.head was tampered with"
    )]
    CheckpointSignature,
    #[error("the audit checkpoint is missing or unreadable — audit.head was removed or damaged")]
    CheckpointMissing,
}

/// Walks the whole chain and checks it against the signed checkpoint.
pub fn verify(
    conn: &Connection,
    checkpoint_path: &Path,
    key: &VerifyingKey,
) -> Result<Result<Verified, Broken>> {
    let checkpoint = match read_checkpoint(checkpoint_path) {
        Ok(checkpoint) => checkpoint,
        Err(_) => return Ok(Err(Broken::CheckpointMissing)),
    };
    let signature_ok = hex::decode(&checkpoint.signature)
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .map(|bytes| Signature::from_bytes(&bytes))
        .is_some_and(|signature| {
            key.verify(
                &checkpoint_message(checkpoint.seq, &checkpoint.hash),
                &signature,
            )
            .is_ok()
        });
    if !signature_ok {
        return Ok(Err(Broken::CheckpointSignature));
    }

    // Rows are read in storage order (rowid), not sorted by seq, so that a reordering of the
    // rows themselves is seen as one.
    let mut statement = conn.prepare(
        "SELECT seq, kind, at, actor, subject, details, prev, hash FROM audit ORDER BY rowid",
    )?;
    let rows = statement.query_map([], |row| {
        Ok(Entry {
            seq: row.get(0)?,
            kind: row.get(1)?,
            at: row.get(2)?,
            actor: row.get(3)?,
            subject: row.get(4)?,
            details: row.get(5)?,
            prev: row.get(6)?,
            hash: row.get(7)?,
        })
    })?;
    let mut previous_hash = GENESIS.to_string();
    let mut position: i64 = 0;
    let mut head_hash = GENESIS.to_string();
    for row in rows {
        let entry = row?;
        position += 1;
        if entry.compute_hash() != entry.hash {
            return Ok(Err(Broken::Edited { seq: entry.seq }));
        }
        if entry.seq != position {
            return Ok(Err(Broken::Sequence {
                position,
                expected: position,
                found: entry.seq,
            }));
        }
        if entry.prev != previous_hash {
            return Ok(Err(Broken::Link {
                seq: entry.seq,
                previous: entry.seq - 1,
            }));
        }
        if entry.seq == checkpoint.seq && entry.hash != checkpoint.hash {
            return Ok(Err(Broken::CheckpointMismatch { seq: entry.seq }));
        }
        previous_hash = entry.hash.clone();
        head_hash = entry.hash;
    }
    if position < checkpoint.seq {
        return Ok(Err(Broken::Truncated {
            last: position,
            checkpoint: checkpoint.seq,
        }));
    }
    Ok(Ok(Verified {
        entries: position,
        head_hash,
        checkpoint_seq: checkpoint.seq,
    }))
}
