//! Tampering with the audit log is detected, and `audit::verify` names the first bad entry.
//!
//! A store with real history (registrations, a grant, a template, one job) verifies; then each
//! case works on its own copy of the store folder and edits the SQLite file directly, as
//! someone with access to the disk but not to the platform key could: an edited entry, a
//! dropped entry, two entries swapped, a chain rewritten with fresh hashes, a cut-off tail, and
//! a damaged or forged checkpoint. The `veil audit verify` command reports the break and exits
//! non-zero.

use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::{Connection, params};
use tempfile::TempDir;
use veil_runtime::audit::{self, Broken, GENESIS, Verified};
use veil_runtime::store::Store;

use crate::support::{self, Fixture};

/// A store with some history, closed, so its database file holds every entry.
struct History {
    dir: TempDir,
    entries: i64,
}

impl History {
    async fn new() -> Self {
        let mut fixture = crate::support::Fixture::with_budget(1_000, 100.0);
        let outcome = fixture
            .run_sql(
                "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance \
                 WHERE year = :year GROUP BY city",
                &[("year", "2025")],
                support::approval(),
            )
            .await
            .expect("job");
        assert!(
            matches!(outcome, veil_runtime::jobs::JobOutcome::Released { .. }),
            "{outcome:?}"
        );
        let verified = verify(&fixture.store).expect("an untouched log verifies");
        assert_eq!(verified.checkpoint_seq, verified.entries);
        // store.initialized, 2 × dataset.registered, grant.created, template.submitted,
        // template.approved, job.started, budget.reserved, product.released, job.released,
        // meter.recorded.
        assert!(verified.entries >= 11, "{verified:?}");
        let Fixture { dir, store, .. } = fixture;
        drop(store);
        Self {
            dir,
            entries: verified.entries,
        }
    }

    /// A copy of the store folder to tamper with.
    fn copy(&self) -> (TempDir, PathBuf) {
        let target = tempfile::tempdir().expect("temporary folder");
        let root = target.path().join("store");
        copy_dir(&self.dir.path().join("store"), &root);
        (target, root)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

fn verify(store: &Store) -> Result<Verified, Broken> {
    audit::verify(
        store.conn(),
        &store.audit_head_path(),
        &store.signing_key().verifying_key(),
    )
    .expect("reading the log")
}

fn verify_at(root: &Path) -> Result<Verified, Broken> {
    verify(&Store::open(root).expect("open store"))
}

/// Opens the state database behind the platform's back.
fn db(root: &Path) -> Connection {
    Connection::open(root.join("veil.db")).expect("open veil.db")
}

type Row = (String, String, String, String, String, String, String);

fn contents(db: &Connection, seq: i64) -> Row {
    db.query_row(
        "SELECT kind, at, actor, subject, details, prev, hash FROM audit WHERE seq = ?1",
        [seq],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        },
    )
    .expect("entry")
}

fn set_contents(db: &Connection, seq: i64, row: &Row) {
    db.execute(
        "UPDATE audit SET kind = ?1, at = ?2, actor = ?3, subject = ?4, details = ?5, prev = ?6,
            hash = ?7 WHERE seq = ?8",
        params![row.0, row.1, row.2, row.3, row.4, row.5, row.6, seq],
    )
    .expect("update entry");
}

/// Rewrites the purpose recorded in entry 4, the grant.
fn widen_grant_purpose(db: &Connection) {
    let (kind, details): (String, String) = db
        .query_row("SELECT kind, details FROM audit WHERE seq = 4", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("entry 4");
    assert_eq!(kind, "grant.created");
    let mut details: serde_json::Value = serde_json::from_str(&details).expect("json");
    details["purpose"] = "anything at all".into();
    db.execute(
        "UPDATE audit SET details = ?1 WHERE seq = 4",
        [details.to_string()],
    )
    .expect("edit");
}

#[tokio::test]
async fn an_edited_entry_is_named() {
    let history = History::new().await;
    let (_copy, root) = history.copy();
    // Entry 4 is the grant: widen its purpose after the fact.
    widen_grant_purpose(&db(&root));
    assert_eq!(verify_at(&root), Err(Broken::Edited { seq: 4 }));

    // The command a bureau officer runs says the same and exits non-zero.
    let output = Command::new(support::veil_bin())
        .env_remove("VEIL_DATA_DIR")
        .env_remove("VEIL_CLOCK")
        .args(["audit", "verify", "--data-dir"])
        .arg(&root)
        .output()
        .expect("run veil");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(5), "{stdout}");
    assert!(
        stdout.contains("BROKEN") && stdout.contains("entry 4"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_dropped_entry_is_named() {
    let history = History::new().await;
    let (_copy, root) = history.copy();
    let middle = history.entries / 2;
    db(&root)
        .execute("DELETE FROM audit WHERE seq = ?1", [middle])
        .expect("delete");
    let broken = verify_at(&root).expect_err("a dropped entry");
    assert!(
        matches!(
            broken,
            Broken::Sequence { expected, found, .. } if expected == middle && found == middle + 1
        ) || broken
            == Broken::Link {
                seq: middle + 1,
                previous: middle
            },
        "{broken:?}"
    );
}

#[tokio::test]
async fn swapped_entries_are_named() {
    let history = History::new().await;
    let (_copy, root) = history.copy();
    // Swap the contents of entries 2 and 3 (the two dataset registrations), each keeping its
    // sequence number: the order of events is rewritten, every entry is still well-formed.
    let db = db(&root);
    let (second, third) = (contents(&db, 2), contents(&db, 3));
    set_contents(&db, 2, &third);
    set_contents(&db, 3, &second);
    drop(db);
    assert_eq!(verify_at(&root), Err(Broken::Edited { seq: 2 }));
}

#[tokio::test]
async fn a_rewritten_chain_is_caught_by_the_signed_checkpoint() {
    let history = History::new().await;
    let (_copy, root) = history.copy();
    // Edit entry 4 and recompute every hash from there on, exactly as the chain is defined
    // (see `veil_runtime::audit`): the chain is consistent again, only the signed checkpoint,
    // which needs the platform key, still holds the old head.
    let db = db(&root);
    widen_grant_purpose(&db);
    let mut prev: String = db
        .query_row("SELECT hash FROM audit WHERE seq = 3", [], |r| r.get(0))
        .expect("entry 3");
    for seq in 4..=history.entries {
        let row = contents(&db, seq);
        let hash = chain_hash(seq, &row, &prev);
        set_contents(
            &db,
            seq,
            &(row.0, row.1, row.2, row.3, row.4, prev, hash.clone()),
        );
        prev = hash;
    }
    drop(db);
    assert_eq!(
        verify_at(&root),
        Err(Broken::CheckpointMismatch {
            seq: history.entries
        })
    );
}

/// The hash of an entry as `veil_runtime::audit` defines it.
fn chain_hash(seq: i64, row: &Row, prev: &str) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("veil audit entry v1");
    let seq = seq.to_string();
    for field in [&seq, &row.0, &row.1, &row.2, &row.3, &row.4] {
        hasher.update(&(field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.update(prev.as_bytes());
    hasher.finalize().to_hex().to_string()
}

#[tokio::test]
async fn a_cut_off_tail_is_detected() {
    let history = History::new().await;
    let (_copy, root) = history.copy();
    let removed = db(&root)
        .execute("DELETE FROM audit WHERE seq > ?1", [history.entries - 2])
        .expect("delete");
    assert_eq!(removed, 2);
    assert_eq!(
        verify_at(&root),
        Err(Broken::Truncated {
            last: history.entries - 2,
            checkpoint: history.entries
        })
    );
}

#[tokio::test]
async fn a_damaged_or_forged_checkpoint_is_detected() {
    let history = History::new().await;

    // Garbage in place of the checkpoint.
    let (_copy, root) = history.copy();
    std::fs::write(root.join("audit.head"), b"\x00garbage\xff").expect("write");
    assert_eq!(verify_at(&root), Err(Broken::CheckpointMissing));

    // No checkpoint at all.
    let (_copy, root) = history.copy();
    std::fs::remove_file(root.join("audit.head")).expect("remove");
    assert_eq!(verify_at(&root), Err(Broken::CheckpointMissing));

    // A checkpoint moved back two entries (to hide a cut-off tail), keeping the signature.
    let (_copy, root) = history.copy();
    let path = root.join("audit.head");
    let mut checkpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    assert_eq!(checkpoint["seq"], history.entries);
    let earlier: String = db(&root)
        .query_row(
            "SELECT hash FROM audit WHERE seq = ?1",
            [history.entries - 2],
            |r| r.get(0),
        )
        .expect("entry");
    checkpoint["seq"] = (history.entries - 2).into();
    checkpoint["hash"] = earlier.into();
    std::fs::write(&path, serde_json::to_vec(&checkpoint).expect("json")).expect("write");
    assert_eq!(verify_at(&root), Err(Broken::CheckpointSignature));

    // A checkpoint that names a head which never existed.
    let (_copy, root) = history.copy();
    let path = root.join("audit.head");
    let mut checkpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    checkpoint["hash"] = GENESIS.into();
    std::fs::write(&path, serde_json::to_vec(&checkpoint).expect("json")).expect("write");
    assert_eq!(verify_at(&root), Err(Broken::CheckpointSignature));

    // The untouched original still verifies: every failure above came from the tampering.
    let original = verify_at(&history.dir.path().join("store")).expect("original verifies");
    assert_eq!(original.entries, history.entries);
}
