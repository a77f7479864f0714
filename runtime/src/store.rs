//! The domain store on one machine: a folder holding the state database (embedded SQLite in
//! WAL mode), the in-domain data, released products, the platform key and the audit log's
//! signed checkpoints.
//!
//! ```text
//! D/
//!   veil.db            state: catalog, grants, templates, jobs, budget, products, meter, audit,
//!                      price book, ledger, market
//!   data/<dataset>/    in-domain Parquet files; only the sandbox reads them
//!   products/<id>/     released products (the only files meant to leave)
//!   keys/platform.ed25519   the platform's Ed25519 signing key (mode 0600)
//!   audit.checkpoints  every signed checkpoint of the audit chain, one JSON line each,
//!                      append-only, outside the database (`audit.lock` serializes writers)
//!   statements/<period>/    settlement statements (CSV + JSON), derived from the ledger
//!   ballast            8 MiB of reserved blocks `veil serve` releases when the disk fills up,
//!                      so failures can still be recorded (see `space`)
//! ```
//!
//! Nothing else belongs in `products/`: a folder there that the `products` table does not
//! name, and any temporary left by a crash, is removed by `sweep` (at server start and
//! periodically).
//!
//! Every state change goes through [`Store::write`]: one `BEGIN IMMEDIATE` transaction that
//! also appends the audit entries describing the change, so the state and its audit trail
//! commit together or not at all. Before the commit the audit chain since the last checkpoint
//! is checked (a tampered chain rolls the change back); after it, the new head is signed and
//! appended to `audit.checkpoints` (see `audit`). The transaction is handed to the change as a
//! [`WriteTx`], which nothing else can create; appending an audit entry, recording a meter
//! record and posting to the ledger take one, so none of them can happen outside a write.

use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use rusqlite::{Connection, Params, Row, Transaction, TransactionBehavior};

use crate::error::{Error, Result};
use crate::{audit, files, space};

/// How long a writer waits for another writer's transaction before giving up, in milliseconds.
pub const BUSY_TIMEOUT_MS: u64 = 30_000;
const DB_FILE: &str = "veil.db";
const KEY_FILE: &str = "keys/platform.ed25519";
/// Version 2 added WASM modules and the meter's fuel, version 3 principals, version 4 the
/// server's job queue (idempotency keys, requested grants), grant requests and the money
/// tables (price book, ledger, market, recalls, downloads), version 5 keyed audit hashes and
/// the checkpoint log (no table changes: the old chain is carried over by
/// `audit::carry_over`), version 6 the refusals of WASM modules remembered by hash
/// (`compile`), version 7 the datasets' data-quality reports (`dataset_quality`, a new table:
/// datasets registered earlier have none), version 8 the expiry of rotated API keys
/// (`principal_key_expiry`, a new table: keys made earlier never expire), version 9 the
/// bureau's governance tables (dataset versions, correction requests, freezes and their
/// incident log, disputes: new tables; the price book's capitalisation rate: a column),
/// version 10 the objects of datasets on object storage (`dataset_objects`, a new table);
/// older stores are upgraded on open.
const SCHEMA_VERSION: i64 = 10;
/// The first version whose audit entries are keyed.
const KEYED_AUDIT_VERSION: i64 = 5;

/// The columns each version added to tables an older version already had, as (the version
/// that added it, its table, the column, the statement); applied in order, inside one
/// transaction, before [`SCHEMA`] runs again to add the missing tables. A step runs only
/// where its table exists without the column: a store older than the table gets the table,
/// column included, from [`SCHEMA`].
const UPGRADES: [(i64, &str, &str, &str); 5] = [
    (
        2,
        "meter",
        "fuel",
        "ALTER TABLE meter ADD COLUMN fuel INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        4,
        "jobs",
        "requested_grant",
        "ALTER TABLE jobs ADD COLUMN requested_grant TEXT;",
    ),
    (
        9,
        "price_book",
        "capitalisation_rate_bp",
        "ALTER TABLE price_book ADD COLUMN capitalisation_rate_bp INTEGER NOT NULL DEFAULT 1000;",
    ),
    (
        9,
        "grants",
        "ownership",
        "ALTER TABLE grants ADD COLUMN ownership TEXT NOT NULL DEFAULT 'operator';",
    ),
    (
        9,
        "grant_requests",
        "ownership",
        "ALTER TABLE grant_requests ADD COLUMN ownership TEXT NOT NULL DEFAULT 'operator';",
    ),
];

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    policy_json TEXT NOT NULL,
    file TEXT NOT NULL,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    content_blake3 TEXT NOT NULL,
    registered_at TEXT NOT NULL
);
-- Every version of a dataset's data (version 1 is the first registration); the `datasets`
-- row holds the latest, which jobs read. A dataset registered before versions existed has no
-- row here until its second version (its first is then recorded from the `datasets` row).
CREATE TABLE IF NOT EXISTS dataset_versions (
    dataset_id TEXT NOT NULL REFERENCES datasets (id),
    version INTEGER NOT NULL CHECK (version >= 1),
    file TEXT NOT NULL,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    content_blake3 TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    PRIMARY KEY (dataset_id, version)
);
-- Correction requests against a dataset or a product made from it, and their answers
-- (see corrections.rs).
CREATE TABLE IF NOT EXISTS corrections (
    id TEXT PRIMARY KEY,
    filed_by TEXT NOT NULL,
    filer_role TEXT NOT NULL,
    target_kind TEXT NOT NULL CHECK (target_kind IN ('dataset', 'product')),
    target_id TEXT NOT NULL,
    dataset_id TEXT NOT NULL REFERENCES datasets (id),
    provider TEXT NOT NULL,
    text TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'accepted', 'rejected')),
    answer TEXT,
    corrected_in_version INTEGER,
    filed_at TEXT NOT NULL,
    answered_at TEXT,
    answered_by TEXT
);
-- The object of each dataset version that lives on object storage (`file` is its s3:// URL):
-- its size and ETag when it was registered, which a job checks with a HEAD before it reads
-- the object (see `catalog::changed_object`). Datasets in the data folder have no row here.
CREATE TABLE IF NOT EXISTS dataset_objects (
    dataset_id TEXT NOT NULL REFERENCES datasets (id),
    url TEXT NOT NULL,
    content_blake3 TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT,
    PRIMARY KEY (dataset_id, url, content_blake3)
);
-- The data-quality report computed at registration (see quality.rs), one per dataset,
-- written in the registration's transaction. It holds in-domain values: the bureau's only.
CREATE TABLE IF NOT EXISTS dataset_quality (
    dataset_id TEXT PRIMARY KEY REFERENCES datasets (id),
    report_json TEXT NOT NULL,
    computed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    datasets_json TEXT NOT NULL,
    purpose TEXT NOT NULL,
    valid_from TEXT NOT NULL,
    valid_to TEXT NOT NULL,
    micro_epsilon_per_period INTEGER NOT NULL,
    pico_delta_per_period INTEGER NOT NULL,
    disposition TEXT NOT NULL,
    created_at TEXT NOT NULL,
    ownership TEXT NOT NULL DEFAULT 'operator'
);
-- A grant's disposition, run once after its term (see grants::dispose_expired).
CREATE TABLE IF NOT EXISTS grant_dispositions (
    grant_id TEXT PRIMARY KEY REFERENCES grants (id),
    disposition TEXT NOT NULL,
    products INTEGER NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS templates (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    operator TEXT NOT NULL,
    canonical BLOB NOT NULL,
    state TEXT NOT NULL,
    approval_json TEXT,
    reasons TEXT,
    submitted_at TEXT NOT NULL,
    decided_at TEXT
);
CREATE TABLE IF NOT EXISTS principals (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    name TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
-- When a principal's current key stops working (schema version 8). A key without a row here
-- never expires; rotating the key replaces the row (`principals::rotate`).
CREATE TABLE IF NOT EXISTS principal_key_expiry (
    principal_id TEXT PRIMARY KEY REFERENCES principals(id),
    expires_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS modules (
    blake3 TEXT PRIMARY KEY,
    bytes BLOB NOT NULL,
    stored_at TEXT NOT NULL
);
-- Modules the host refused to compile, by BLAKE3 (hex): the same bytes are refused again at
-- once with the same reason (see compile.rs). A memo only: not audited, safe to delete.
CREATE TABLE IF NOT EXISTS module_refusals (
    blake3 TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    template_id TEXT NOT NULL,
    grant_id TEXT,
    operator TEXT NOT NULL,
    params_json TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    reasons_json TEXT,
    product_id TEXT,
    reused_from TEXT,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    requested_grant TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_fingerprint ON jobs (fingerprint, state);
CREATE TABLE IF NOT EXISTS job_submissions (
    operator TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    request_blake3 TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (operator, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at);
CREATE TABLE IF NOT EXISTS grant_requests (
    id TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    datasets_json TEXT NOT NULL,
    purpose TEXT NOT NULL,
    valid_from TEXT NOT NULL,
    valid_to TEXT NOT NULL,
    micro_epsilon_per_period INTEGER NOT NULL,
    pico_delta_per_period INTEGER NOT NULL,
    disposition TEXT NOT NULL,
    state TEXT NOT NULL,
    reasons TEXT,
    grant_id TEXT,
    submitted_at TEXT NOT NULL,
    decided_at TEXT,
    decided_by TEXT,
    ownership TEXT NOT NULL DEFAULT 'operator'
);

CREATE TABLE IF NOT EXISTS budget_spend (
    job_id TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    dataset_id TEXT NOT NULL,
    period TEXT NOT NULL,
    micro_epsilon INTEGER NOT NULL,
    pico_delta INTEGER NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (job_id, dataset_id)
);
CREATE INDEX IF NOT EXISTS budget_by_grant ON budget_spend (grant_id, period);
CREATE INDEX IF NOT EXISTS budget_by_dataset ON budget_spend (dataset_id, period);
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    template_id TEXT NOT NULL,
    operator TEXT NOT NULL,
    dir TEXT NOT NULL,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    manifest_blake3 TEXT NOT NULL,
    created_at TEXT NOT NULL
);
-- What a grant's disposition made of a product after the term (see grants::dispose_expired):
-- `destroyed` (its result files deleted, its manifest kept), `archived` (kept, never sold
-- again) or `returned` (handed to the bureau). A product has at most one.
CREATE TABLE IF NOT EXISTS product_states (
    product_id TEXT PRIMARY KEY REFERENCES products (id),
    state TEXT NOT NULL CHECK (state IN ('destroyed', 'archived', 'returned')),
    grant_id TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meter (
    job_id TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    template_id TEXT NOT NULL,
    wall_ms INTEGER NOT NULL,
    cpu_ms INTEGER NOT NULL,
    rows_scanned INTEGER NOT NULL,
    bytes_scanned INTEGER NOT NULL,
    peak_memory_bytes INTEGER NOT NULL,
    micro_epsilon INTEGER NOT NULL,
    pico_delta INTEGER NOT NULL,
    output_rows INTEGER NOT NULL,
    output_bytes INTEGER NOT NULL,
    end_state TEXT NOT NULL,
    price_fen INTEGER NOT NULL,
    at TEXT NOT NULL,
    fuel INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    details TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);

-- ── Money (schema version 4): price book, ledger, market ───────────────────────────────
-- Written by `prices`, `ledger`, `market`; read by `settlement`. Amounts are integer fen.
-- The price book: one row per version, in force from `set_at` until the next version. With
-- no row, the documented defaults of `prices` apply.
CREATE TABLE IF NOT EXISTS price_book (
    version INTEGER PRIMARY KEY,
    fee_per_million_rows_fen INTEGER NOT NULL CHECK (fee_per_million_rows_fen >= 0),
    provider_bp INTEGER NOT NULL CHECK (provider_bp >= 0),
    platform_bp INTEGER NOT NULL CHECK (platform_bp >= 0),
    operator_bp INTEGER NOT NULL CHECK (operator_bp >= 0),
    set_at TEXT NOT NULL,
    set_by TEXT NOT NULL,
    audit_seq INTEGER NOT NULL,
    capitalisation_rate_bp INTEGER NOT NULL DEFAULT 1000 CHECK (capitalisation_rate_bp BETWEEN 1 AND 10000),
    CHECK (provider_bp + platform_bp + operator_bp = 10000)
);
-- The double-entry ledger. A posting is one business event (a released run, a sale) with at
-- most one posting per source; its lines move whole fen between accounts
-- (`operator:<name>`, `provider:<name>`, `buyer:<name>`, `platform`).
CREATE TABLE IF NOT EXISTS ledger_postings (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    source_kind TEXT NOT NULL,
    source_id TEXT NOT NULL,
    period TEXT NOT NULL,
    at TEXT NOT NULL,
    audit_seq INTEGER NOT NULL,
    UNIQUE (source_kind, source_id)
);
CREATE INDEX IF NOT EXISTS ledger_postings_by_period ON ledger_postings (period, id);
CREATE TABLE IF NOT EXISTS ledger_lines (
    id INTEGER PRIMARY KEY,
    posting_id INTEGER NOT NULL REFERENCES ledger_postings (id),
    account TEXT NOT NULL,
    debit_fen INTEGER NOT NULL CHECK (debit_fen >= 0),
    credit_fen INTEGER NOT NULL CHECK (credit_fen >= 0),
    item TEXT NOT NULL,
    dataset_id TEXT,
    CHECK ((debit_fen > 0) + (credit_fen > 0) = 1)
);
CREATE INDEX IF NOT EXISTS ledger_lines_by_posting ON ledger_lines (posting_id, id);
CREATE INDEX IF NOT EXISTS ledger_lines_by_account ON ledger_lines (account, posting_id);
-- The ledger and the price book are append-only: SQLite itself refuses to change history.
CREATE TRIGGER IF NOT EXISTS ledger_postings_no_update BEFORE UPDATE ON ledger_postings
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only; post a correcting entry instead'); END;
CREATE TRIGGER IF NOT EXISTS ledger_postings_no_delete BEFORE DELETE ON ledger_postings
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only; post a correcting entry instead'); END;
CREATE TRIGGER IF NOT EXISTS ledger_lines_no_update BEFORE UPDATE ON ledger_lines
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only; post a correcting entry instead'); END;
CREATE TRIGGER IF NOT EXISTS ledger_lines_no_delete BEFORE DELETE ON ledger_lines
    BEGIN SELECT RAISE(ABORT, 'the ledger is append-only; post a correcting entry instead'); END;
CREATE TRIGGER IF NOT EXISTS price_book_no_update BEFORE UPDATE ON price_book
    BEGIN SELECT RAISE(ABORT, 'the price book is append-only; set a new version instead'); END;
CREATE TRIGGER IF NOT EXISTS price_book_no_delete BEFORE DELETE ON price_book
    BEGIN SELECT RAISE(ABORT, 'the price book is append-only; set a new version instead'); END;
-- The market: a product's current listing (relisting changes the price), purchases (one per
-- buyer and product, with the shares in force when bought), recalls and every download.
CREATE TABLE IF NOT EXISTS listings (
    product_id TEXT PRIMARY KEY,
    price_fen INTEGER NOT NULL CHECK (price_fen > 0),
    listed_by TEXT NOT NULL,
    listed_at TEXT NOT NULL,
    audit_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS purchases (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL,
    buyer TEXT NOT NULL,
    price_fen INTEGER NOT NULL,
    provider_bp INTEGER NOT NULL,
    platform_bp INTEGER NOT NULL,
    operator_bp INTEGER NOT NULL,
    at TEXT NOT NULL,
    audit_seq INTEGER NOT NULL,
    UNIQUE (product_id, buyer)
);
CREATE TABLE IF NOT EXISTS recalls (
    product_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    recalled_by TEXT NOT NULL,
    at TEXT NOT NULL,
    audit_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS downloads (
    id INTEGER PRIMARY KEY,
    product_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    file_name TEXT NOT NULL,
    at TEXT NOT NULL,
    audit_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS downloads_by_product ON downloads (product_id, id);
-- Disputes (`disputes`): a buyer's complaint about one purchase and the bureau's decision. An
-- upheld dispute names the ledger posting of its refund. A purchase has at most one open and
-- at most one upheld dispute, so a sale is never refunded twice.
CREATE TABLE IF NOT EXISTS disputes (
    id TEXT PRIMARY KEY,
    purchase_id TEXT NOT NULL,
    buyer TEXT NOT NULL,
    product_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'upheld', 'rejected')),
    decision_reason TEXT,
    opened_at TEXT NOT NULL,
    decided_at TEXT,
    decided_by TEXT,
    refund_posting_id INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS disputes_one_open_per_purchase ON disputes (purchase_id)
    WHERE state = 'open';
CREATE UNIQUE INDEX IF NOT EXISTS disputes_one_upheld_per_purchase ON disputes (purchase_id)
    WHERE state = 'upheld';
CREATE INDEX IF NOT EXISTS disputes_by_buyer ON disputes (buyer, opened_at);
-- ── end of the money block ─────────────────────────────────────────────────────────────
-- The bureau's freezes (schema version 9, see freezes.rs): one row per freeze, active until
-- lifted; together they are the incident log. `target` is empty for the platform's.
CREATE TABLE IF NOT EXISTS freezes (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    block_downloads INTEGER NOT NULL,
    frozen_by TEXT NOT NULL,
    frozen_at TEXT NOT NULL,
    lifted_by TEXT,
    lifted_at TEXT,
    lift_reason TEXT
);
CREATE INDEX IF NOT EXISTS freezes_active ON freezes (lifted_at, scope, target);
"#;

/// An open domain store.
/// Where a store's jobs take their noise: OpenDP. Test builds only (the `test-noise` feature):
/// seeded noise when `VEIL_TEST_NOISE_SEED` holds a seed, so an end-to-end test can compare
/// the products of a `veil serve` and of a local run exactly (see `Store::seed_test_noise`).
fn test_noise_from_env() -> veil_gate::noise::Source {
    #[cfg(feature = "test-noise")]
    if let Some(seed) = std::env::var("VEIL_TEST_NOISE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return veil_gate::noise::Source::Seeded(seed);
    }
    Default::default()
}

pub struct Store {
    root: PathBuf,
    conn: Connection,
    key: SigningKey,
    sealer: audit::Sealer,
    /// Where jobs run from this store take their noise: always OpenDP, but in test builds.
    noise: veil_gate::noise::Source,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

impl Store {
    /// Creates an empty store in `root` (which may exist but must not hold a store yet).
    pub fn init(root: &Path) -> Result<Self> {
        if root.join(DB_FILE).exists() {
            return Err(Error::invalid(format!(
                "{} already holds a Veil store; use it as it is, or choose an empty folder",
                root.display()
            )));
        }
        for dir in [
            root.to_path_buf(),
            root.join("data"),
            root.join("products"),
            root.join("keys"),
        ] {
            fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        }
        let key_path = root.join(KEY_FILE);
        let key = crate::keys::generate()?;
        files::write_atomic(&key_path, hex::encode(key.to_bytes()).as_bytes(), true)?;
        // An empty checkpoint log before the database: the first write checkpoints into it,
        // and a store whose log is missing is refused every write (see `audit`).
        files::write_atomic(&root.join(audit::LOG_FILE), b"", false)?;

        let conn = open_connection(&root.join(DB_FILE))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
            [SCHEMA_VERSION.to_string()],
        )?;
        let mut store = Self {
            root: root.to_path_buf(),
            conn,
            sealer: audit::Sealer::new(root, &key),
            key,
            noise: test_noise_from_env(),
        };
        let public = hex::encode(store.key.verifying_key().to_bytes());
        store.write(|tx| {
            audit::append(
                tx,
                "bureau",
                "store",
                audit::Event::StoreInitialized {
                    platform_public_key: &public,
                },
            )?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Opens an existing store.
    pub fn open(root: &Path) -> Result<Self> {
        let db = root.join(DB_FILE);
        if !db.exists() {
            return Err(Error::invalid(format!(
                "{} holds no Veil store; create one with `veil init --data-dir {}`",
                root.display(),
                root.display()
            )));
        }
        let key_path = root.join(KEY_FILE);
        let key = crate::keys::load(&key_path)?;
        let conn = open_connection(&db)?;
        let version: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |row| row.get::<_, String>(0),
            )
            .map_err(Error::from)?
            .parse()
            .map_err(|_| Error::internal("reading the store's schema version"))?;
        if (1..SCHEMA_VERSION).contains(&version) {
            // Keyed audit hashes: the old chain must verify before anything changes, and the
            // checkpoint log starts at its head (see `audit::carry_over`). Writers of other
            // processes wait meanwhile.
            let _lock = audit::WriteLock::acquire(root)?;
            if version < KEYED_AUDIT_VERSION {
                audit::carry_over(&conn, root, &key)?;
            }
            // One transaction: either the store is fully at the current version or unchanged.
            // Each version's own changes, then SCHEMA again: every statement in it is
            // `IF NOT EXISTS`, so it adds exactly the tables, indexes and triggers an older
            // store lacks (the money tables of version 4 among them).
            let mut steps = String::new();
            for (to, table, column, sql) in UPGRADES {
                if to > version && lacks_column(&conn, table, column)? {
                    steps.push_str(sql);
                }
            }
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 {steps}
                 {SCHEMA}
                 UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version';
                 COMMIT;"
            ))?;
            if version < KEYED_AUDIT_VERSION {
                audit::retire_legacy_head(root)?;
            }
        } else if version != SCHEMA_VERSION {
            return Err(Error::invalid(format!(
                "this store has schema version {version}; this veil understands version {SCHEMA_VERSION}"
            )));
        }
        Ok(Self {
            root: root.to_path_buf(),
            conn,
            sealer: audit::Sealer::new(root, &key),
            key,
            noise: test_noise_from_env(),
        })
    }

    /// Where jobs run from this store take their noise (OpenDP, but in test builds).
    pub fn noise_source(&self) -> veil_gate::noise::Source {
        self.noise
    }

    /// The store's folder of in-domain data, without opening the store (for `veil executor`,
    /// which reads data and holds no database).
    pub fn data_dir_of(root: &Path) -> PathBuf {
        root.join("data")
    }

    /// Test builds only (the `test-noise` feature): jobs run from this store add seeded,
    /// deterministic noise instead of OpenDP's (see `gate::noise::Source`).
    #[cfg(feature = "test-noise")]
    pub fn seed_test_noise(&mut self, seed: u64) {
        self.noise = veil_gate::noise::Source::Seeded(seed);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Folder of in-domain data. Only the sandbox reads from it.
    pub fn data_dir(&self) -> PathBuf {
        Self::data_dir_of(&self.root)
    }

    /// Folder of settlement statements, one sub-folder per period.
    pub fn statements_dir(&self) -> PathBuf {
        self.root.join("statements")
    }

    /// Folder of released products.
    pub fn products_dir(&self) -> PathBuf {
        self.root.join("products")
    }

    /// The audit checkpoint log, `audit.checkpoints`.
    pub fn audit_log_path(&self) -> PathBuf {
        self.root.join(audit::LOG_FILE)
    }

    /// The secret key of audit entry hashes (for verification).
    pub(crate) fn audit_entry_key(&self) -> &audit::EntryKey {
        self.sealer.entry_key()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Read access to the state database.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Runs `change` in one `BEGIN IMMEDIATE` transaction, handed to it as the [`WriteTx`]
    /// that appending audit entries, recording a meter record and posting to the ledger
    /// require. `change` must append the audit entries that describe it (only here can it:
    /// the `WriteTx` carries the entry key while `change` runs).
    ///
    /// Before the commit, the audit chain from the last signed checkpoint to the new head must
    /// verify; if it does not (someone edited the database), the change is rolled back and an
    /// internal error says so: nothing is kept, and the checkpoint never moves over tampered
    /// history. After the commit, the new head is signed and appended to `audit.checkpoints`;
    /// should that fail (a full disk), the change stays committed, the error says so, and the
    /// next write checkpoints both. On any other error nothing is kept.
    ///
    /// When a step fails because the disk is full, the store's ballast is released (see
    /// [`crate::space`]) before the error is returned, so the caller's next write — recording
    /// the failure — finds room. A checkpoint that fails for lack of space after the commit is
    /// retried once with the ballast's room, since the change itself is already durable.
    pub fn write<T>(&mut self, change: impl FnOnce(&WriteTx<'_>) -> Result<T>) -> Result<T> {
        let _lock = audit::WriteLock::acquire(&self.root)?;
        let last = self.sealer.last()?;
        let committed = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::from)
            .and_then(|tx| {
                let (head_before, _) = audit::head(&tx)?;
                let write = WriteTx {
                    tx,
                    entry_key: self.sealer.entry_key(),
                };
                let value = change(&write)?;
                let head = self.sealer.check(&write, &last, head_before)?;
                write.tx.commit()?;
                Ok((value, head))
            });
        let (value, head) = committed.inspect_err(|e| {
            if e.is_storage_full() {
                space::release(&self.root);
            }
        })?;
        if let Some(head) = head {
            match self.sealer.export(&self.key, &last, head.clone()) {
                Err(e) if e.is_storage_full() => {
                    space::release(&self.root);
                    self.sealer.export(&self.key, &last, head)?;
                }
                other => other?,
            }
        }
        Ok(value)
    }

    /// Runs `look` while holding the store's write lock (a `BEGIN IMMEDIATE` transaction that
    /// is rolled back): no other connection, in this process or another, commits meanwhile.
    /// For work on files whose meaning depends on state that only committed transactions
    /// change — see `sweep`, which must not remove a product folder a job is publishing.
    pub fn with_write_lock<T>(
        &mut self,
        look: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = look(&tx);
        tx.rollback()?;
        value
    }
}

/// A state change in progress: the `BEGIN IMMEDIATE` transaction of one [`Store::write`],
/// with the key of the audit entries it appends.
///
/// Only `Store::write` creates one (its fields are private to this module), and it ends with
/// the write: so whatever takes a `&WriteTx` — [`audit::append`], `metering::record`, the
/// ledger's postings — runs inside a change whose audit trail commits with it, or not at all.
/// Everything a [`Transaction`] offers is reached through `Deref`, for the queries the change
/// makes.
///
/// Outside a write there is none to pass, and a plain connection does not do:
///
/// ```compile_fail,E0308
/// use veil_runtime::{audit, store::Store};
///
/// fn revoke_without_writing(store: &Store) -> veil_runtime::error::Result<i64> {
///     audit::append(store.conn(), "bureau", "prn-1", audit::Event::PrincipalRevoked)
/// }
/// ```
pub struct WriteTx<'a> {
    tx: Transaction<'a>,
    entry_key: &'a audit::EntryKey,
}

impl<'a> Deref for WriteTx<'a> {
    type Target = Transaction<'a>;

    fn deref(&self) -> &Transaction<'a> {
        &self.tx
    }
}

impl WriteTx<'_> {
    /// The secret key of audit entry hashes, for [`audit::append`].
    pub(crate) fn entry_key(&self) -> &audit::EntryKey {
        self.entry_key
    }
}

impl std::fmt::Debug for WriteTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteTx(…)")
    }
}

/// Every row `sql` returns, in SQLite's order, each turned into a `T` by `map`.
///
/// This is the one loop in the domain that collects rows, so no list query writes it again.
/// `map` returns two layers of error because they have different owners: the outer one is
/// SQLite's (the database could not be read, or a column does not hold the type asked for),
/// the inner one is Veil's (SQLite read the value, but it does not parse as what Veil stored
/// there, such as a state no enum variant names; the mapper reports it naming the column). The
/// first error of either kind, in row order, ends the read and is returned.
///
/// The statement goes through the connection's statement cache, because the same list is read
/// again and again (every poll of the HTTP API) and need not be compiled each time. Only the
/// domain runs SQL, so this is not public outside the crate.
pub(crate) fn query_parsed_rows<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    map: impl FnMut(&Row<'_>) -> rusqlite::Result<Result<T>>,
) -> Result<Vec<T>> {
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map(params, map)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}

/// [`query_parsed_rows`] for a `map` that only reads columns, so any error it returns is
/// SQLite's.
pub(crate) fn query_rows<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    mut map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    query_parsed_rows(conn, sql, params, |row| map(row).map(Ok))
}

/// Whether `table` exists without `column` (an upgrade step's condition).
fn lacks_column(conn: &Connection, table: &str, column: &str) -> Result<bool> {
    let tables: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |row| row.get(0),
    )?;
    let columns: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |row| row.get(0),
    )?;
    Ok(tables == 1 && columns == 0)
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Implements what every state stored as text needs, for an enum `$ty` stored in
/// `table.column`: `ALL` (in the order given), `as_str` (the stored and shown text),
/// `from_stored` (any other text means the store was changed outside Veil: an internal error
/// naming the column, the text and the allowed values — a state is the platform's own
/// bookkeeping, never a data value), `Display` and `ToSql`. One definition, so the enums
/// cannot drift apart.
macro_rules! stored_state {
    ($ty:ident, $column:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every state, in the order given where the enum is stored.
            pub const ALL: [Self; [$($text),+].len()] = [$(Self::$variant),+];

            /// The state as stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// Reads a stored state; any other text means the store was changed outside Veil.
            pub fn from_stored(text: &str) -> $crate::error::Result<Self> {
                Self::ALL
                    .into_iter()
                    .find(|state| state.as_str() == text)
                    .ok_or_else(|| {
                        $crate::error::Error::internal(format!(
                            concat!("reading ", $column, ": {:?} is none of {}"),
                            text,
                            Self::ALL.map(Self::as_str).join(", ")
                        ))
                    })
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl rusqlite::ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }
    };
}
pub(crate) use stored_state;
