//! Tampering with the audit log, or with anything it vouches for, is detected, and
//! `veil audit verify` names the first thing that is wrong.
//!
//! A store with real history (registrations, a grant, a template, one released and charged
//! job) verifies; then each case works on its own copy of the store folder and edits it
//! directly, as someone with access to the disk but not to the platform key could:
//!
//! - the chain: an edited entry, a dropped entry, two entries swapped, a chain rewritten with
//!   recomputed (unkeyed) hashes, a cut-off tail — and after the last two, ordinary writes,
//!   which the platform refuses to seal rather than sign over the tampering;
//! - the checkpoint log: damaged, removed, a line moved or reordered; a product's manifest
//!   checkpoint that the log no longer holds;
//! - the money (a settled month with a run and a sale): a statement file, a ledger line (also a
//!   balanced shift between two lines), a meter price and a purchase price, each edited;
//! - an older store with unkeyed hashes, carried over once (and refused when tampered).
//!
//! Failures are checked through `audit::verify` (the exact break) and through the `veil`
//! binary (exit code 5 and the message a bureau officer reads).

use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::Signer;
use rusqlite::{Connection, params};
use tempfile::TempDir;
use veil_runtime::audit::{self, Broken, Checkpoint, GENESIS, Record, Verified};
use veil_runtime::clock;
use veil_runtime::ids::{Fen, ProductId};
use veil_runtime::jobs::JobOutcome;
use veil_runtime::ledger::Account;
use veil_runtime::market;
use veil_runtime::prices::{self, PriceRequest, Shares};
use veil_runtime::principals::{self, Role};
use veil_runtime::settlement;
use veil_runtime::store::Store;
use veil_sdk::manifest::{MANIFEST_FILE, SignedManifest};

use crate::support::{self, Fixture, OPERATOR, Run};

const BY_CITY: &str = "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance \
     WHERE year = :year GROUP BY city";

/// A store with some history, closed, so its database file holds every entry.
struct History {
    dir: TempDir,
    entries: i64,
    product: ProductId,
}

impl History {
    async fn new() -> Self {
        let mut fixture = Fixture::with_budget(1_000, 100.0);
        let outcome = fixture
            .run_sql(BY_CITY, &[("year", "2025")], support::approval())
            .await
            .expect("job");
        let JobOutcome::Released { product_id, .. } = outcome else {
            panic!("expected a release, got {outcome:?}");
        };
        let verified = verify(&fixture.store).expect("an untouched log verifies");
        assert_eq!(verified.checkpoint_seq, verified.entries);
        // store.initialized, 2 × dataset.registered, grant.created, template.submitted,
        // template.approved, job.started, budget.reserved, product.released, job.released,
        // meter.recorded.
        assert!(verified.entries >= 11, "{verified:?}");
        assert_eq!(
            (verified.products, verified.meter_records, verified.postings),
            (1, 1, 1),
            "{verified:?}"
        );
        let Fixture { dir, store, .. } = fixture;
        drop(store);
        Self {
            dir,
            entries: verified.entries,
            product: product_id,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A copy of the store folder to tamper with.
    fn copy(&self) -> (TempDir, PathBuf) {
        copy_store(&self.root())
    }
}

fn copy_store(root: &Path) -> (TempDir, PathBuf) {
    let target = tempfile::tempdir().expect("temporary folder");
    let copy = target.path().join("store");
    copy_dir(root, &copy);
    (target, copy)
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
    audit::verify(store).expect("reading the log")
}

fn verify_at(root: &Path) -> Result<Verified, Broken> {
    verify(&Store::open(root).expect("open store"))
}

/// Runs `veil <args> --data-dir <root>`, its clock pinned to `clock` if given.
fn veil_at(root: &Path, clock: Option<&str>, args: &[&str]) -> Run {
    let mut command = Command::new(support::veil_bin());
    command.env_remove("VEIL_DATA_DIR").env_remove("VEIL_CLOCK");
    if let Some(instant) = clock {
        command.env("VEIL_CLOCK", instant);
    }
    let output = command
        .args(args)
        .arg("--data-dir")
        .arg(root)
        .output()
        .expect("run veil");
    Run::from(output)
}

fn veil(root: &Path, args: &[&str]) -> Run {
    veil_at(root, None, args)
}

/// `veil audit verify` must fail with exit code 5 and say `expected`.
fn assert_verify_names(root: &Path, expected: &[&str]) {
    let run = veil(root, &["audit", "verify"]);
    assert_eq!(run.code, Some(5), "{run}");
    assert!(run.stdout.contains("BROKEN"), "{run}");
    for text in expected {
        assert!(run.stdout.contains(text), "`{text}` not named:\n{run}");
    }
}

/// An ordinary write through the binary: adding a buyer.
fn add_buyer(root: &Path, name: &str) -> Run {
    veil(
        root,
        &["principal", "add", "--role", "buyer", "--name", name],
    )
}

/// Opens the state database behind the platform's back.
fn db(root: &Path) -> Connection {
    Connection::open(root.join("veil.db")).expect("open veil.db")
}

fn log_lines(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join(audit::LOG_FILE))
        .expect("read the checkpoint log")
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_log(root: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(root.join(audit::LOG_FILE), text).expect("write the checkpoint log");
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

/// How an attacker hashes entries: without the key, as Veil did before entries were keyed
/// (BLAKE3 in derive-key mode), or with the platform's entry key (only someone who holds the
/// platform key can).
enum Hashing {
    Unkeyed,
    Keyed([u8; 32]),
}

fn entry_hash(hashing: &Hashing, seq: i64, row: &Row, prev: &str) -> String {
    let mut hasher = match hashing {
        Hashing::Unkeyed => blake3::Hasher::new_derive_key("veil audit entry v1"),
        Hashing::Keyed(key) => blake3::Hasher::new_keyed(key),
    };
    let seq = seq.to_string();
    for field in [&seq, &row.0, &row.1, &row.2, &row.3, &row.4] {
        hasher.update(&(field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.update(prev.as_bytes());
    hasher.finalize().to_hex().to_string()
}

/// Recomputes every hash from entry `from` on, so the chain is consistent again.
fn rechain(db: &Connection, hashing: &Hashing, from: i64) {
    let mut prev: String = if from == 1 {
        GENESIS.to_string()
    } else {
        db.query_row("SELECT hash FROM audit WHERE seq = ?1", [from - 1], |r| {
            r.get(0)
        })
        .expect("entry before")
    };
    let last: i64 = db
        .query_row("SELECT MAX(seq) FROM audit", [], |r| r.get(0))
        .expect("head");
    for seq in from..=last {
        let row = contents(db, seq);
        let hash = entry_hash(hashing, seq, &row, &prev);
        set_contents(
            db,
            seq,
            &(row.0, row.1, row.2, row.3, row.4, prev, hash.clone()),
        );
        prev = hash;
    }
}

fn platform_key(root: &Path) -> ed25519_dalek::SigningKey {
    veil_runtime::keys::load(&root.join("keys/platform.ed25519")).expect("platform key")
}

// ── The chain ──────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn an_edited_entry_is_named() {
    let history = History::new().await;
    let (_copy, root) = history.copy();
    // Entry 4 is the grant: widen its purpose after the fact.
    widen_grant_purpose(&db(&root));
    assert_eq!(verify_at(&root), Err(Broken::Edited { seq: 4 }));
    // The command a bureau officer runs says the same and exits 5.
    assert_verify_names(&root, &["entry 4"]);
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
async fn a_chain_rewritten_without_the_key_is_named_and_never_sealed() {
    let history = History::new().await;
    let (_copy, root) = history.copy();
    // Edit entry 4 and recompute every hash from there on, as entries were hashed before they
    // were keyed: the chain links up again, but without the platform's secret no hash is right.
    let db = db(&root);
    widen_grant_purpose(&db);
    rechain(&db, &Hashing::Unkeyed, 4);
    drop(db);
    assert_eq!(verify_at(&root), Err(Broken::Edited { seq: 4 }));

    // Then one ordinary write: the platform refuses to seal it, nothing is written, and the
    // checkpoint does not move.
    let before = log_lines(&root);
    let run = add_buyer(&root, "late-buyer");
    assert_eq!(run.code, Some(1), "{run}");
    // The write checks the entries since the last checkpoint: the head it signed is gone.
    assert!(
        run.stderr.contains("sealing the audit log")
            && run.stderr.contains(&format!("entry {}", history.entries))
            && run.stderr.contains("rewritten"),
        "{run}"
    );
    assert_eq!(
        log_lines(&root),
        before,
        "no checkpoint over tampered history"
    );
    let added: i64 = self::db(&root)
        .query_row(
            "SELECT COUNT(*) FROM principals WHERE name = 'late-buyer'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(added, 0, "the refused write was rolled back");
    assert_verify_names(&root, &["entry 4", "edited"]);
}

#[tokio::test]
async fn every_exported_checkpoint_is_checked_not_only_the_last() {
    let history = History::new().await;
    let (_copy, root) = history.copy();
    // Even someone holding the entry key (so every hash is right) cannot rewrite entries that
    // a checkpoint already covers: the grant was checkpointed when it was written, long before
    // the last checkpoint.
    let key = blake3::derive_key("veil audit entry key v2", platform_key(&root).as_bytes());
    let db = db(&root);
    widen_grant_purpose(&db);
    rechain(&db, &Hashing::Keyed(key), 4);
    drop(db);
    let checkpoints: Vec<i64> = log_lines(&root)
        .iter()
        .map(|l| serde_json::from_str::<Checkpoint>(l).expect("json").seq)
        .collect();
    let first_covering = *checkpoints
        .iter()
        .find(|&&seq| seq >= 4)
        .expect("a checkpoint covers the grant");
    assert!(
        first_covering < history.entries,
        "an older checkpoint than the last: {checkpoints:?}"
    );
    assert_eq!(
        verify_at(&root),
        Err(Broken::CheckpointMismatch {
            seq: first_covering
        })
    );
    // And the next write will not sign the rewritten head either.
    let run = add_buyer(&root, "late-buyer");
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stderr.contains("sealing the audit log"), "{run}");
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
async fn a_cut_off_tail_stays_cut_off_through_four_writes() {
    let history = History::new().await;
    let (_copy, root) = history.copy();
    db(&root)
        .execute("DELETE FROM audit WHERE seq > ?1", [history.entries - 2])
        .expect("delete");
    let before = log_lines(&root);
    // Four writes would once have refilled the tail and re-signed the head; each is refused.
    for i in 0..4 {
        let run = add_buyer(&root, &format!("buyer-{i}"));
        assert_eq!(run.code, Some(1), "write {i}: {run}");
        assert!(run.stderr.contains("truncated"), "write {i}: {run}");
    }
    assert_eq!(log_lines(&root), before);
    let last: i64 = db(&root)
        .query_row("SELECT MAX(seq) FROM audit", [], |r| r.get(0))
        .expect("head");
    assert_eq!(last, history.entries - 2, "nothing was appended");
    assert_verify_names(&root, &["truncated", &format!("entry {}", history.entries)]);
}

// ── The checkpoint log ─────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn a_damaged_or_forged_checkpoint_log_is_detected() {
    let history = History::new().await;
    let log = |root: &Path| root.join(audit::LOG_FILE);

    // Garbage in place of the log (no complete line at all).
    let (_copy, root) = history.copy();
    std::fs::write(log(&root), b"\x00garbage\xff").expect("write");
    assert_eq!(verify_at(&root), Err(Broken::CheckpointMissing));

    // A garbage line in the middle.
    let (_copy, root) = history.copy();
    let mut lines = log_lines(&root);
    lines.insert(2, "{\"seq\": 3}".into());
    write_log(&root, &lines);
    assert_eq!(
        verify_at(&root),
        Err(Broken::CheckpointMalformed { line: 3 })
    );

    // No log at all: verification fails, and so does every write.
    let (_copy, root) = history.copy();
    std::fs::remove_file(log(&root)).expect("remove");
    assert_eq!(verify_at(&root), Err(Broken::CheckpointMissing));
    let run = add_buyer(&root, "late-buyer");
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stderr.contains("is missing"), "{run}");

    // An emptied log: a new store's first write is the only one that may start it.
    let (_copy, root) = history.copy();
    std::fs::write(log(&root), b"").expect("empty");
    assert_eq!(verify_at(&root), Err(Broken::CheckpointMissing));
    let run = add_buyer(&root, "late-buyer");
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stderr.contains("was emptied"), "{run}");
    assert!(log_lines(&root).is_empty(), "nothing was signed afresh");

    // The last checkpoint moved back two entries (to hide a cut-off tail), keeping its
    // signature.
    let (_copy, root) = history.copy();
    let mut lines = log_lines(&root);
    let last = lines.len();
    let mut checkpoint: Checkpoint = serde_json::from_str(&lines[last - 1]).expect("json");
    assert_eq!(checkpoint.seq, history.entries);
    checkpoint.seq = history.entries - 2;
    checkpoint.hash = db(&root)
        .query_row(
            "SELECT hash FROM audit WHERE seq = ?1",
            [history.entries - 2],
            |r| r.get(0),
        )
        .expect("entry");
    lines[last - 1] = serde_json::to_string(&checkpoint).expect("json");
    write_log(&root, &lines);
    assert_eq!(
        verify_at(&root),
        Err(Broken::CheckpointSignature { line: last })
    );

    // A checkpoint that names a head which never existed.
    let (_copy, root) = history.copy();
    let mut lines = log_lines(&root);
    let mut checkpoint: Checkpoint = serde_json::from_str(&lines[0]).expect("json");
    checkpoint.hash = GENESIS.into();
    lines[0] = serde_json::to_string(&checkpoint).expect("json");
    write_log(&root, &lines);
    assert_eq!(
        verify_at(&root),
        Err(Broken::CheckpointSignature { line: 1 })
    );

    // Two genuine lines swapped.
    let (_copy, root) = history.copy();
    let mut lines = log_lines(&root);
    lines.swap(1, 2);
    write_log(&root, &lines);
    assert_eq!(verify_at(&root), Err(Broken::CheckpointOrder { line: 3 }));

    // A torn last line (a crash in the middle of an append) is not a checkpoint: it is
    // ignored, and the next write cuts it off before appending.
    let (_copy, root) = history.copy();
    let lines = log_lines(&root);
    let mut text = std::fs::read(log(&root)).expect("read");
    text.extend_from_slice(b"{\"seq\":99,\"ha");
    std::fs::write(log(&root), text).expect("write");
    verify_at(&root).expect("a torn last line is ignored");
    let run = add_buyer(&root, "after-a-crash");
    assert_eq!(run.code, Some(0), "{run}");
    let after = log_lines(&root);
    assert_eq!(after.len(), lines.len() + 1);
    assert_eq!(after[..lines.len()], lines[..]);
    verify_at(&root).expect("verifies after the write");

    // The untouched original still verifies: every failure above came from the tampering.
    let original = verify_at(&history.root()).expect("original verifies");
    assert_eq!(original.entries, history.entries);
}

// ── Products carry witnesses ───────────────────────────────────────────────────────────────

fn manifest_of(root: &Path, product: &ProductId) -> SignedManifest {
    let path = root
        .join("products")
        .join(product.as_str())
        .join(MANIFEST_FILE);
    serde_json::from_slice(&std::fs::read(path).expect("manifest")).expect("json")
}

#[tokio::test]
async fn a_product_carries_the_checkpoint_current_when_it_was_written() {
    let history = History::new().await;
    let root = history.root();
    let signed = manifest_of(&root, &history.product);
    let checkpoint = signed
        .manifest
        .audit_checkpoint
        .clone()
        .expect("a product carries a checkpoint");
    let platform = platform_key(&root).verifying_key();
    assert!(checkpoint.is_signed_by(&platform));
    assert!(
        log_lines(&root)
            .iter()
            .any(|line| serde_json::from_str::<Checkpoint>(line).expect("json") == checkpoint),
        "the manifest's checkpoint is one the platform exported"
    );
    let released: i64 = db(&root)
        .query_row(
            "SELECT seq FROM audit WHERE kind = 'product.released' AND subject = ?1",
            [history.product.as_str()],
            |r| r.get(0),
        )
        .expect("product.released");
    assert!(checkpoint.seq < released, "{checkpoint:?} vs {released}");
    assert_eq!(
        checkpoint,
        serde_json::from_str::<Checkpoint>(
            &log_lines(&root)
                .into_iter()
                .rev()
                .find(|l| serde_json::from_str::<Checkpoint>(l).expect("json").seq < released)
                .expect("a line before the release")
        )
        .expect("json"),
        "the newest checkpoint before the job's final transaction"
    );
    // A buyer checks it offline with the product, and the bureau against the log.
    let product_dir = root.join("products").join(history.product.as_str());
    let hex = hex::encode(platform.to_bytes());
    let run = Command::new(support::veil_bin())
        .args(["product", "verify"])
        .arg(&product_dir)
        .args(["--public-key", &hex])
        .output()
        .expect("run veil");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{run:?}");
    assert!(
        stdout.contains(&format!(
            "audit checkpoint: entry {} with hash {}",
            checkpoint.seq, checkpoint.hash
        )),
        "{stdout}"
    );
    let run = veil(&root, &["audit", "verify"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("1 products"), "{run}");

    // A log from which that checkpoint was dropped (the other lines still in order and
    // signed) is caught by the product's witness.
    let (_copy, copy) = history.copy();
    let lines: Vec<String> = log_lines(&copy)
        .into_iter()
        .filter(|l| serde_json::from_str::<Checkpoint>(l).expect("json") != checkpoint)
        .collect();
    write_log(&copy, &lines);
    assert!(matches!(
        verify_at(&copy),
        Err(Broken::Mismatch { record: Record::Product, ref id, ref what })
            if *id == history.product.as_str() && what.contains("not in audit.checkpoints")
    ));

    // A product row removed from the database is named by its audit entry.
    let (_copy, copy) = history.copy();
    db(&copy)
        .execute("DELETE FROM products", [])
        .expect("delete");
    assert_verify_names(
        &copy,
        &[
            &format!("product {}", history.product),
            "no row in the products table",
        ],
    );

    // A product's manifest replaced by another one the platform signed (here: re-signed
    // without the checkpoint) is not the manifest its audit entry recorded.
    let (_copy, copy) = history.copy();
    let mut manifest = signed.manifest.clone();
    manifest.audit_checkpoint = None;
    let resigned = veil_sdk::manifest::sign(manifest, &platform_key(&copy)).expect("sign");
    std::fs::write(
        copy.join("products")
            .join(history.product.as_str())
            .join(MANIFEST_FILE),
        serde_json::to_vec_pretty(&resigned).expect("json"),
    )
    .expect("write");
    assert_verify_names(&copy, &["manifest.json is not the manifest"]);
}

// ── Money ──────────────────────────────────────────────────────────────────────────────────

/// A settled month: a price book, one charged run, a product sold to one buyer, and the month
/// settled by the binary with its clock pinned after the month.
struct Settled {
    dir: TempDir,
    period: String,
    job: String,
    purchase: String,
}

impl Settled {
    async fn new() -> Self {
        let mut fixture = Fixture::new(2_000);
        prices::set(
            &mut fixture.store,
            "bureau",
            &PriceRequest {
                fee_per_million_rows_fen: 1_000_000,
                shares: Shares {
                    provider_bp: 5_000,
                    platform_bp: 1_500,
                    operator_bp: 3_500,
                },
                capitalisation_rate_bp: veil_runtime::prices::DEFAULT_CAPITALISATION_RATE_BP,
            },
        )
        .expect("price book");
        principals::add(&mut fixture.store, Role::Buyer, "buyer-a").expect("buyer");
        let outcome = fixture
            .run_sql(BY_CITY, &[("year", "2024")], support::approval())
            .await
            .expect("run");
        let JobOutcome::Released {
            job_id, product_id, ..
        } = outcome
        else {
            panic!("expected a release, got {outcome:?}");
        };
        market::list_for_sale(
            &mut fixture.store,
            Role::Bureau,
            "bureau",
            &product_id,
            Fen(999),
        )
        .expect("list");
        let purchase = market::purchase(&mut fixture.store, "buyer-a", &product_id)
            .expect("buy")
            .id;
        let period = clock::period_of(clock::now());
        let (_, end) = settlement::period_bounds(&period).expect("bounds");
        let root = fixture.store_path();
        let run = veil_at(
            &root,
            Some(&clock::format(end)),
            &["settle", "--period", &period],
        );
        assert_eq!(run.code, Some(0), "{run}");
        let Fixture { dir, store, .. } = fixture;
        drop(store);
        let settled = Self {
            dir,
            period,
            job: job_id.to_string(),
            purchase,
        };
        let run = veil(&settled.root(), &["audit", "verify"]);
        assert_eq!(run.code, Some(0), "{run}");
        assert!(
            run.stdout
                .contains("1 products, 1 meter records, 2 ledger postings, 6 statement files"),
            "{run}"
        );
        settled
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn statement(&self, root: &Path, party: &Account, extension: &str) -> (PathBuf, String) {
        let name = format!("{}.{extension}", settlement::file_stem(party));
        (
            root.join("statements").join(&self.period).join(&name),
            format!("statements/{}/{name}", self.period),
        )
    }
}

/// Lets the test change the ledger, as an attacker with database access would.
fn drop_ledger_triggers(db: &Connection) {
    db.execute_batch(
        "DROP TRIGGER ledger_lines_no_update; DROP TRIGGER ledger_postings_no_update;",
    )
    .expect("drop triggers");
}

#[tokio::test]
async fn edited_money_is_named_by_audit_verify() {
    let settled = Settled::new().await;
    let operator = Account::Operator(OPERATOR.into());

    // A statement CSV: the operator's total debit, one fen less.
    let (_copy, root) = copy_store(&settled.root());
    let (path, id) = settled.statement(&root, &operator, "csv");
    let csv = std::fs::read_to_string(&path).expect("csv");
    let total = csv.lines().last().expect("total line").to_string();
    let fields: Vec<&str> = total.split(',').collect();
    let debit: i64 = fields[9].parse().expect("debit");
    let edited = total.replacen(&format!(",{debit},"), &format!(",{},", debit - 1), 1);
    std::fs::write(&path, csv.replace(&total, &edited)).expect("write");
    assert_verify_names(
        &root,
        &[&format!("statement {id}"), "edited after settlement"],
    );

    // A statement JSON: the platform's net, one fen more.
    let (_copy, root) = copy_store(&settled.root());
    let (path, id) = settled.statement(&root, &Account::Platform, "json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("json")).expect("json");
    json["net"] = (json["net"].as_i64().expect("net") + 1).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&json).expect("json")).expect("write");
    assert_verify_names(&root, &[&format!("statement {id}")]);

    // A forged statement for a party the settlement never listed.
    let (_copy, root) = copy_store(&settled.root());
    let (path, _) = settled.statement(&root, &operator, "csv");
    let forged = path.with_file_name("operator-someone-else.csv");
    std::fs::copy(&path, &forged).expect("copy");
    assert_verify_names(
        &root,
        &["operator-someone-else.csv", "not one of the statements"],
    );

    // A ledger line: the operator's run charge, one fen less.
    let (_copy, root) = copy_store(&settled.root());
    let conn = db(&root);
    drop_ledger_triggers(&conn);
    let posting: i64 = conn
        .query_row(
            "SELECT id FROM ledger_postings WHERE source_kind = 'job' AND source_id = ?1",
            [&settled.job],
            |r| r.get(0),
        )
        .expect("posting");
    conn.execute(
        "UPDATE ledger_lines SET debit_fen = debit_fen - 1 WHERE posting_id = ?1 AND debit_fen > 0",
        [posting],
    )
    .expect("edit");
    drop(conn);
    assert!(matches!(
        verify_at(&root),
        Err(Broken::Mismatch { record: Record::LedgerPosting, ref id, .. })
            if id.starts_with(&posting.to_string())
    ));
    assert_verify_names(
        &root,
        &[
            &format!("ledger posting {posting} (job {})", settled.job),
            "debits",
        ],
    );

    // A balanced shift: one fen from the provider's rows fee to the platform's per-run fee.
    // Every total still adds up; only the lines the audit entry recorded tell.
    let (_copy, root) = copy_store(&settled.root());
    let conn = db(&root);
    drop_ledger_triggers(&conn);
    for (item, change) in [("rows fee", -1), ("per-run fee", 1)] {
        let changed = conn
            .execute(
                "UPDATE ledger_lines SET credit_fen = credit_fen + ?1 WHERE posting_id = ?2 AND item = ?3",
                params![change, posting, item],
            )
            .expect("edit");
        assert_eq!(changed, 1, "{item}");
    }
    drop(conn);
    assert_verify_names(
        &root,
        &[
            &format!("ledger posting {posting}"),
            "platform, per-run fee",
            "a credit of 101 fen",
            "recorded a credit of 100 fen",
        ],
    );

    // The meter's price.
    let (_copy, root) = copy_store(&settled.root());
    db(&root)
        .execute(
            "UPDATE meter SET price_fen = price_fen + 500 WHERE job_id = ?1",
            [&settled.job],
        )
        .expect("edit");
    assert_verify_names(
        &root,
        &[
            &format!("meter record of job {}", settled.job),
            "meter.recorded audit entry",
        ],
    );

    // A purchase's price.
    let (_copy, root) = copy_store(&settled.root());
    db(&root)
        .execute(
            "UPDATE purchases SET price_fen = 1 WHERE id = ?1",
            [&settled.purchase],
        )
        .expect("edit");
    assert_verify_names(
        &root,
        &[
            &format!("purchase {}", settled.purchase),
            "product.purchased audit entry",
        ],
    );

    // Nothing above touched the original.
    verify_at(&settled.root()).expect("the original verifies");
}

// ── Stores from before keyed hashes ────────────────────────────────────────────────────────

/// Turns a store into what a version 4 Veil left: unkeyed entry hashes, a single signed
/// checkpoint in `audit.head`, no checkpoint log.
fn make_unkeyed_version_4(root: &Path) -> (i64, String) {
    let db = db(root);
    rechain(&db, &Hashing::Unkeyed, 1);
    let (seq, hash): (i64, String) = db
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("head");
    db.execute(
        "UPDATE meta SET value = '4' WHERE key = 'schema_version'",
        [],
    )
    .expect("version 4");
    drop(db);
    let mut message = b"veil audit checkpoint v1\n".to_vec();
    message.extend_from_slice(format!("{seq}\n{hash}").as_bytes());
    let signature = platform_key(root).sign(&message);
    let head = serde_json::json!({
        "seq": seq,
        "hash": hash,
        "signature": hex::encode(signature.to_bytes()),
    });
    std::fs::write(root.join("audit.head"), head.to_string()).expect("audit.head");
    std::fs::remove_file(root.join(audit::LOG_FILE)).expect("remove the log");
    (seq, hash)
}

fn small_store() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let root = dir.path().join("store");
    let mut store = Store::init(&root).expect("store");
    principals::add(&mut store, Role::Operator, "op-old").expect("principal");
    principals::add(&mut store, Role::Buyer, "buyer-old").expect("principal");
    drop(store);
    (dir, root)
}

#[test]
fn an_unkeyed_store_is_carried_over_once_and_then_keyed() {
    let (_dir, root) = small_store();
    let (head, head_hash) = make_unkeyed_version_4(&root);

    // The first command opens (and so upgrades) the store: the old chain verified against its
    // old checkpoint, the new log starts at its head.
    let run = veil(&root, &["audit", "verify"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stdout
            .contains(&format!("entries before {} were carried over", head + 1)),
        "{run}"
    );
    assert!(
        !root.join("audit.head").exists(),
        "the legacy checkpoint is retired"
    );
    let lines = log_lines(&root);
    assert_eq!(lines.len(), 1);
    let carried: Checkpoint = serde_json::from_str(&lines[0]).expect("json");
    assert_eq!((carried.seq, carried.keyed_from), (head, head + 1));
    assert_eq!(carried.hash, head_hash);

    // New entries are keyed and chain onto the last unkeyed one.
    let run = add_buyer(&root, "buyer-new");
    assert_eq!(run.code, Some(0), "{run}");
    let (prev, hash): (String, String) = db(&root)
        .query_row(
            "SELECT prev, hash FROM audit WHERE seq = ?1",
            [head + 1],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("first keyed entry");
    assert_eq!(prev, head_hash);
    let row = contents(&db(&root), head + 1);
    assert_ne!(
        hash,
        entry_hash(&Hashing::Unkeyed, head + 1, &row, &prev),
        "keyed"
    );
    let verified = verify_at(&root).expect("verifies");
    assert_eq!(
        (verified.entries, verified.keyed_from),
        (head + 1, head + 1)
    );
    assert_eq!(log_lines(&root).len(), 2);

    // The unkeyed prefix stays pinned: rewriting it, even consistently, is caught.
    let (_copy, copy) = copy_store(&root);
    let db = db(&copy);
    db.execute("UPDATE audit SET actor = 'someone else' WHERE seq = 2", [])
        .expect("edit");
    rechain(&db, &Hashing::Unkeyed, 2);
    drop(db);
    let broken = verify_at(&copy).expect_err("rewritten prefix");
    assert!(
        matches!(
            broken,
            Broken::CheckpointMismatch { .. } | Broken::Edited { .. }
        ),
        "{broken:?}"
    );
}

#[test]
fn a_tampered_unkeyed_store_is_not_carried_over() {
    let (_dir, root) = small_store();
    make_unkeyed_version_4(&root);
    // Rewrite entry 2 and recompute the unkeyed hashes after it, which nothing but the old
    // signed checkpoint can catch.
    let db = db(&root);
    db.execute("UPDATE audit SET actor = 'someone else' WHERE seq = 2", [])
        .expect("edit");
    rechain(&db, &Hashing::Unkeyed, 2);
    drop(db);
    let run = veil(&root, &["audit", "verify"]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr.contains("upgrading the audit log")
            && run
                .stderr
                .contains("does not have the hash a signed checkpoint recorded"),
        "{run}"
    );
    // Nothing was changed: still version 4, the old checkpoint in place, no new log.
    let version: String = self::db(&root)
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .expect("version");
    assert_eq!(version, "4");
    assert!(root.join("audit.head").exists());
    assert!(!root.join(audit::LOG_FILE).exists());
}
