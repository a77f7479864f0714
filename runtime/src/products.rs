//! Released data products: the files a buyer downloads and their signed manifest.
//!
//! The release gate hands over the noisy, k-anonymous result as Arrow record batches and a
//! draft [`Manifest`]. [`write_product`] writes them into a staging folder, and the job's final
//! transaction publishes it:
//!
//! ```text
//! write_product:  products_dir/.tmp-<job>.<id>/  result.parquet, result.csv ─► size + BLAKE3
//!                                                manifest.json (signed)      ─► fsync all
//!                 ─► StagedProduct
//! the job's final Store::write transaction (jobs::finish):
//!     INSERT the product row, audit entries, meter record
//!     StagedProduct::publish_in(tx): rename .tmp-<job>.<id> ─► products_dir/<id>, fsync
//!     COMMIT ── fails? ─► StagedProduct::abandon(): the folder is removed again
//! ```
//!
//! **Invariants.** A folder named after a product id is complete and never changes: it
//! appears by one rename of a fully written and synced staging folder, and an existing
//! product is never overwritten. It appears only inside the transaction that records it, just
//! before the commit, so a product folder the store does not know can exist only while that
//! transaction is open, or after a crash between the rename and the commit — and then the
//! store never learned of the product, its job is `running`, and `sweep` (run by
//! `jobs::recover` when the server starts) removes the folder. A staging folder carries its
//! job's id in its name, so a sweep can tell one a running job still writes from debris.
//! Buyers check a product with `veil_sdk::manifest::verify_product_dir`.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::csv::WriterBuilder;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::errors::ParquetError;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use veil_gate::Released;

use crate::ids::ProductId;
use crate::space;
use crate::store::query_rows;
use veil_sdk::manifest::{
    self, FileDigest, MANIFEST_FILE, Manifest, ManifestError, SignedManifest,
};

/// The Parquet file of every product.
pub const RESULT_PARQUET: &str = "result.parquet";

/// The CSV file of every product, with a header row.
pub const RESULT_CSV: &str = "result.csv";

/// The most rows a product may hold. Released results are aggregates over groups, so a
/// larger output means the template is not the aggregate the bureau approved; refusing it
/// also bounds the disk a single release can take.
pub const PRODUCT_ROWS_MAX: usize = 1_000_000;

/// The longest product id, in bytes. Ids become folder names, which file systems limit to
/// 255 bytes; the staging prefix and the job id need room too.
pub const PRODUCT_ID_BYTES_MAX: usize = 100;

/// The prefix of a staging folder, `.tmp-<job>.<product>`. It starts with a dot so listings of
/// released products skip it, and ids never contain a dot, so the name splits unambiguously.
const TMP_PREFIX: &str = ".tmp-";

/// What the release gate hands over for writing.
#[derive(Debug, Clone)]
pub struct ProductDraft {
    /// Everything but `files` and `rows`, which [`write_product`] fills in.
    pub manifest: Manifest,
    /// The released result, exactly as the gate let it out: a `Released` body is the only
    /// thing a product can be made of, and only the kernel creates one.
    pub released: Released,
}

/// A product written, signed and synced in its staging folder, not yet visible under its id.
///
/// The job's final transaction calls [`StagedProduct::publish_in`] as its last step; if that
/// transaction then fails to commit, the caller calls [`StagedProduct::abandon`]. Dropping a
/// staged product changes nothing on disk: a staging folder left behind is swept once its job
/// has ended. It is plain data (paths, the signed manifest, sizes), so a process that wrote it
/// can hand it to another that publishes it.
#[derive(Debug, Serialize, Deserialize)]
pub struct StagedProduct {
    /// `products_dir/.tmp-<job>.<product_id>`.
    staging: PathBuf,
    /// `products_dir/<product_id>`, where the product appears when published.
    dir: PathBuf,
    products_dir: PathBuf,
    signed: SignedManifest,
    /// The size of the whole folder: the result files and `manifest.json`.
    bytes: u64,
    /// BLAKE3 of `manifest.json`, recorded with the product.
    manifest_blake3: String,
    /// Set once `publish_in` has renamed the folder into place, so `abandon` removes only a
    /// folder this staged product put there.
    #[serde(skip)]
    published: AtomicBool,
}

impl StagedProduct {
    /// Where the product is once published: `products_dir/<product_id>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn signed(&self) -> &SignedManifest {
        &self.signed
    }

    pub fn product_id(&self) -> &str {
        &self.signed.manifest.product_id
    }

    /// The size of the whole folder: the result files and `manifest.json`.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// BLAKE3 of `manifest.json`.
    pub fn manifest_blake3(&self) -> &str {
        &self.manifest_blake3
    }

    /// Makes the product visible under its id: renames the staging folder into place and syncs
    /// the products folder. Call it as the last step inside the transaction that records the
    /// product (`tx` proves one is open), so the rename and the commit are as close as they can
    /// be; if the commit then fails, call [`StagedProduct::abandon`].
    pub fn publish_in(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), ProductError> {
        let _ = tx;
        publish(&self.staging, &self.dir, &self.products_dir)?;
        self.published.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Removes the staging folder, and the published folder if [`StagedProduct::publish_in`]
    /// put it there: the transaction that was to record the product did not commit, so no
    /// product by this id exists. Best effort: whatever is left is swept later, since the
    /// store does not know it.
    pub fn abandon(self) {
        if self.published.load(Ordering::SeqCst) {
            let _ = fs::remove_dir_all(&self.dir);
            let _ = File::open(&self.products_dir).and_then(|d| d.sync_all());
        }
        let _ = fs::remove_dir_all(&self.staging);
    }
}

/// The job a staging folder in the products folder belongs to (`.tmp-<job>.<product>`), or
/// `None` when `name` is not a staging folder's name.
pub fn staging_job(name: &str) -> Option<&str> {
    let (job, product) = name.strip_prefix(TMP_PREFIX)?.split_once('.')?;
    (is_safe_id(job) && is_safe_id(product)).then_some(job)
}

/// Why a product could not be written. Messages say what happened and what to change; none
/// carries a value from the result rows, and encoder errors keep their text in `source()`
/// only, for the domain's own logs.
#[derive(Debug, thiserror::Error)]
pub enum ProductError {
    #[error(
        "the product id is not a safe folder name; use 1 to {PRODUCT_ID_BYTES_MAX} characters from A-Z, a-z, 0-9, '_' and '-'"
    )]
    BadId,
    #[error(
        "the result has {rows} rows, more than the {PRODUCT_ROWS_MAX} a product may hold; a release is an aggregate — group more coarsely"
    )]
    TooManyRows { rows: usize },
    #[error(
        "the release produced no record batches, so the product files would have no columns; pass at least one (possibly empty) batch"
    )]
    NoBatches,
    #[error(
        "a product already exists at {}; released products are never overwritten — use a new product id", path.display()
    )]
    AlreadyExists { path: PathBuf },
    /// The products folder's file system is full; nothing was kept.
    #[error(
        "the products folder's file system is full, so the product could not be written; the bureau must free disk space, then run the job again"
    )]
    StorageFull,
    #[error(
        "{}: input/output failed ({source}); check that the products folder exists, is writable and has free space", path.display()
    )]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{RESULT_PARQUET}: the Parquet encoder failed (for example, batches with different schemas); the source error has the details"
    )]
    Parquet(#[source] ParquetError),
    #[error(
        "{RESULT_CSV}: the CSV encoder failed (for example, a column type CSV cannot represent); the source error has the details"
    )]
    Csv(#[source] ArrowError),
    #[error("{MANIFEST_FILE}: {0}")]
    Manifest(#[from] ManifestError),
}

impl From<ProductError> for crate::Error {
    fn from(error: ProductError) -> Self {
        match error {
            ProductError::StorageFull => Self::storage_full("writing a product"),
            other => Self::internal(format!("writing a product: {other}")),
        }
    }
}

/// Writes `draft` as a staged product for `products_dir/<product_id>`, signed with `key`.
///
/// Fills in `manifest.files` (Parquet first, then CSV) and `manifest.rows`. Refuses an
/// unsafe product or job id, more than [`PRODUCT_ROWS_MAX`] rows, and a product id that was
/// already released. On any error the staging folder is removed and nothing is kept; a full
/// disk is [`ProductError::StorageFull`], however deep in an encoder it surfaced.
pub fn write_product(
    products_dir: &Path,
    draft: ProductDraft,
    key: &SigningKey,
) -> Result<StagedProduct, ProductError> {
    let id = draft.manifest.product_id.clone();
    if !is_safe_id(&id) || !is_safe_id(&draft.manifest.job_id) {
        return Err(ProductError::BadId);
    }
    let rows = draft.released.rows().num_rows();
    if rows > PRODUCT_ROWS_MAX {
        return Err(ProductError::TooManyRows { rows });
    }

    fs::create_dir_all(products_dir).map_err(io_error(products_dir))?;
    let target = products_dir.join(&id);
    if target.exists() {
        return Err(ProductError::AlreadyExists { path: target });
    }
    let staging = products_dir.join(format!("{TMP_PREFIX}{}.{id}", draft.manifest.job_id));
    // Product ids are unique per job and a job is released once, so a leftover staging
    // folder can only come from an attempt that crashed; it never became a product.
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_error(&staging))?;
    }
    fs::create_dir(&staging).map_err(io_error(&staging))?;

    // Every byte of every file goes through a `DigestWriter` sharing this flag, so a full disk
    // is recognised even where an encoder turned the `io::Error` into text.
    let full = Arc::new(AtomicBool::new(false));
    match write_into(&staging, draft, rows, key, &full) {
        Ok((signed, bytes, manifest_blake3)) => Ok(StagedProduct {
            staging,
            dir: target,
            products_dir: products_dir.to_path_buf(),
            signed,
            bytes,
            manifest_blake3,
            published: AtomicBool::new(false),
        }),
        Err(e) => {
            // Best effort: the original error is what the caller needs, and a leftover
            // staging folder is harmless (swept once the job has ended).
            let _ = fs::remove_dir_all(&staging);
            if full.load(Ordering::SeqCst) || is_full(&e) {
                return Err(ProductError::StorageFull);
            }
            Err(e)
        }
    }
}

/// True when `error` comes from a full disk.
fn is_full(error: &ProductError) -> bool {
    match error {
        ProductError::StorageFull => true,
        ProductError::Io { source, .. } => space::is_full_error(source),
        other => space::is_full_in_chain(other),
    }
}

/// Writes the result files and the signed manifest into `dir`; returns the manifest, the
/// folder's total size and the manifest's BLAKE3.
fn write_into(
    dir: &Path,
    draft: ProductDraft,
    rows: usize,
    key: &SigningKey,
    full: &Arc<AtomicBool>,
) -> Result<(SignedManifest, u64, String), ProductError> {
    let ProductDraft {
        mut manifest,
        released,
    } = draft;
    let batches = std::slice::from_ref(released.rows());

    let parquet = write_parquet(dir, batches, full)?;
    let csv = write_csv(dir, batches, full)?;
    manifest.files = vec![parquet, csv];
    manifest.rows = rows as u64;

    let signed = manifest::sign(manifest, key)?;
    let manifest_path = dir.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(&signed).map_err(ManifestError::Serialize)?;
    let file = File::create(&manifest_path).map_err(io_error(&manifest_path))?;
    let mut out = DigestWriter::new(file, full);
    out.write_all(&json).map_err(io_error(&manifest_path))?;
    let (manifest_hash, manifest_bytes) = out.finish().map_err(io_error(&manifest_path))?;

    sync_dir(dir)?;
    let bytes = signed.manifest.files.iter().map(|f| f.bytes).sum::<u64>() + manifest_bytes;
    Ok((signed, bytes, manifest_hash.to_hex().to_string()))
}

/// A released product as the store records it, for listings and ownership checks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Product {
    pub id: String,
    pub job_id: String,
    pub template_id: String,
    /// The operator who made it; only it (or the bureau) may list it for sale.
    pub operator: String,
    pub rows: u64,
    pub bytes: u64,
    pub created_at: String,
    /// Recalled by the bureau: no listing, purchase or download works any more.
    pub recalled: bool,
}

const PRODUCT_COLUMNS: &str = "p.id, p.job_id, p.template_id, p.operator, p.rows, p.bytes,
    p.created_at, EXISTS (SELECT 1 FROM recalls r WHERE r.product_id = p.id)";

fn row_to_product(row: &rusqlite::Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        id: row.get(0)?,
        job_id: row.get(1)?,
        template_id: row.get(2)?,
        operator: row.get(3)?,
        rows: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
        bytes: u64::try_from(row.get::<_, i64>(5)?).unwrap_or(0),
        created_at: row.get(6)?,
        recalled: row.get(7)?,
    })
}

/// One released product.
pub fn get(conn: &rusqlite::Connection, id: &ProductId) -> crate::Result<Product> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        &format!("SELECT {PRODUCT_COLUMNS} FROM products p WHERE p.id = ?1"),
        [id.as_str()],
        row_to_product,
    )
    .optional()?
    .ok_or_else(|| crate::Error::not_found("product", id.as_str()))
}

/// Whether the store records a product with this id (committed, recalled or not).
pub fn is_recorded(conn: &rusqlite::Connection, id: &str) -> crate::Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM products WHERE id = ?1)",
        [id],
        |row| row.get(0),
    )?)
}

/// Every released product, oldest first.
pub fn list(conn: &rusqlite::Connection) -> crate::Result<Vec<Product>> {
    query_rows(
        conn,
        &format!("SELECT {PRODUCT_COLUMNS} FROM products p ORDER BY p.created_at, p.rowid"),
        [],
        row_to_product,
    )
}

/// Records what a grant's disposition made of a product (`destroyed`, `archived` or
/// `returned`); a product keeps the first state it was given.
pub fn set_state(
    tx: &rusqlite::Transaction<'_>,
    product_id: &str,
    state: &str,
    grant_id: &str,
    at: &str,
) -> crate::Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO product_states (product_id, state, grant_id, at) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![product_id, state, grant_id, at],
    )?;
    Ok(())
}

/// What a grant's disposition made of a product, if anything.
pub fn state_of(conn: &rusqlite::Connection, product_id: &str) -> crate::Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT state FROM product_states WHERE product_id = ?1",
            [product_id],
            |row| row.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            other => Err(other),
        })?)
}

/// The products in `state`.
pub fn in_state(conn: &rusqlite::Connection, state: &str) -> crate::Result<Vec<String>> {
    query_rows(
        conn,
        "SELECT product_id FROM product_states WHERE state = ?1 ORDER BY product_id",
        [state],
        |row| row.get(0),
    )
}

/// Deletes a destroyed product's result files, keeping its manifest (which names them, with
/// their digests, and stays as the record of what was released). Safe to run again.
pub fn remove_data_files(dir: &Path) -> crate::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_file() && entry.file_name() != veil_sdk::manifest::MANIFEST_FILE {
            std::fs::remove_file(&path).map_err(|e| crate::Error::io("deleting", &path, e))?;
        }
    }
    crate::files::sync_dir(dir)
}

/// The name and Arrow type of each column of the product in `dir`, read from the footer of
/// its `result.parquet` (never a row): what a buyer is told before buying.
pub fn result_columns(dir: &Path) -> crate::Result<Vec<(String, String)>> {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let path = dir.join(RESULT_PARQUET);
    let file = File::open(&path).map_err(|e| crate::Error::io("opening", &path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        crate::Error::internal(format!("reading the footer of {}: {e}", path.display()))
    })?;
    Ok(reader
        .schema()
        .fields()
        .iter()
        .map(|field| (field.name().clone(), field.data_type().to_string()))
        .collect())
}

fn write_parquet(
    dir: &Path,
    batches: &[RecordBatch],
    full: &Arc<AtomicBool>,
) -> Result<FileDigest, ProductError> {
    let path = &dir.join(RESULT_PARQUET);
    let file = File::create(path).map_err(io_error(path))?;
    let schema = batches.first().ok_or(ProductError::NoBatches)?.schema();
    let mut writer = ArrowWriter::try_new(DigestWriter::new(file, full), schema, None)
        .map_err(ProductError::Parquet)?;
    for batch in batches {
        writer.write(batch).map_err(ProductError::Parquet)?;
    }
    let out = writer.into_inner().map_err(ProductError::Parquet)?;
    finish_digest(path, RESULT_PARQUET, out)
}

fn write_csv(
    dir: &Path,
    batches: &[RecordBatch],
    full: &Arc<AtomicBool>,
) -> Result<FileDigest, ProductError> {
    let path = &dir.join(RESULT_CSV);
    let file = File::create(path).map_err(io_error(path))?;
    let mut writer = WriterBuilder::new()
        .with_header(true)
        .build(DigestWriter::new(file, full));
    for batch in batches {
        writer.write(batch).map_err(ProductError::Csv)?;
    }
    finish_digest(path, RESULT_CSV, writer.into_inner())
}

fn finish_digest(path: &Path, name: &str, out: DigestWriter) -> Result<FileDigest, ProductError> {
    let (hash, bytes) = out.finish().map_err(io_error(path))?;
    Ok(FileDigest {
        name: name.to_owned(),
        bytes,
        blake3: hash.to_hex().to_string(),
    })
}

/// Renames the finished staging folder into place and makes the rename durable.
fn publish(tmp: &Path, target: &Path, products_dir: &Path) -> Result<(), ProductError> {
    // The existence check in `write_product` can race with another writer. A released
    // folder is never empty, so `rename` onto it fails instead of replacing it; that
    // failure is reported as the product already existing.
    if target.exists() {
        return Err(ProductError::AlreadyExists {
            path: target.to_path_buf(),
        });
    }
    match fs::rename(tmp, target) {
        Ok(()) => {}
        Err(_) if target.exists() => {
            return Err(ProductError::AlreadyExists {
                path: target.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(ProductError::Io {
                path: target.to_path_buf(),
                source,
            });
        }
    }
    sync_dir(products_dir)
}

/// A buffered file writer that hashes and counts the bytes it writes, so each file's digest
/// comes from one pass, and that syncs the file to disk when finished. It raises `full` when
/// a write fails for lack of space, whatever the encoder above it makes of the error.
struct DigestWriter {
    inner: BufWriter<File>,
    hasher: blake3::Hasher,
    bytes: u64,
    full: Arc<AtomicBool>,
}

impl DigestWriter {
    fn new(file: File, full: &Arc<AtomicBool>) -> Self {
        Self {
            inner: BufWriter::new(file),
            hasher: blake3::Hasher::new(),
            bytes: 0,
            full: Arc::clone(full),
        }
    }

    /// Flushes, syncs the file to disk, and returns its digest and size.
    fn finish(self) -> io::Result<(blake3::Hash, u64)> {
        let full = Arc::clone(&self.full);
        let file = self
            .inner
            .into_inner()
            .map_err(io::IntoInnerError::into_error)
            .inspect_err(|e| note_full(&full, e))?;
        file.sync_all().inspect_err(|e| note_full(&full, e))?;
        Ok((self.hasher.finalize(), self.bytes))
    }
}

fn note_full(full: &AtomicBool, error: &io::Error) {
    if space::is_full_error(error) {
        full.store(true, Ordering::SeqCst);
    }
}

impl Write for DigestWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self
            .inner
            .write(buf)
            .inspect_err(|e| note_full(&self.full, e))?;
        // Only the bytes the inner writer accepted are hashed, so a short write followed
        // by a retry of the rest still hashes each byte once.
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|e| note_full(&self.full, e))
    }
}

fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= PRODUCT_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn sync_dir(dir: &Path) -> Result<(), ProductError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ProductError + '_ {
    move |source| {
        if space::is_full_error(&source) {
            return ProductError::StorageFull;
        }
        ProductError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use veil_sdk::manifest::{
        ColumnDescription, MANIFEST_FORMAT, NoiseScale, PrivacyRecord, SourceDataset, VerifyError,
        verify_product_dir,
    };

    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn draft(product_id: &str) -> ProductDraft {
        let schema = Arc::new(Schema::new(vec![
            Field::new("city", DataType::Utf8, false),
            Field::new("firms", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["Taiyuan", "Datong", "Yangquan"])),
                Arc::new(Int64Array::from(vec![1200, 640, 310])),
            ],
        )
        .expect("batch");
        ProductDraft {
            manifest: Manifest {
                format: MANIFEST_FORMAT.to_owned(),
                product_id: product_id.to_owned(),
                job_id: "job-1".to_owned(),
                template_id: blake3::hash(b"template").to_hex().to_string(),
                template_name: "firms per city".to_owned(),
                operator: "Shanxi Data Operations Co.".to_owned(),
                purpose: "regional economic statistics".to_owned(),
                ownership: None,
                created_at: "2025-03-01T08:00:00Z".to_owned(),
                sources: vec![SourceDataset {
                    dataset_id: "ds-1".to_owned(),
                    name: "enterprise registry".to_owned(),
                    provider: "market regulation bureau".to_owned(),
                    acquired_on: "2025-01-15".to_owned(),
                    classification_level: 2,
                    content_blake3: blake3::hash(b"dataset").to_hex().to_string(),
                    version: None,
                }],
                privacy: PrivacyRecord {
                    epsilon: 1.0,
                    delta: 0.0,
                    mechanism: "laplace (OpenDP make_laplace, discrete on integers)".to_owned(),
                    k: 10,
                    max_groups_per_unit: 1,
                    max_rows_per_group: 1,
                    groups_released: 3,
                    groups_suppressed: Some(8),
                    threshold: None,
                    noise_scales: vec![NoiseScale {
                        column: "firms".to_owned(),
                        epsilon: 1.0,
                        sensitivity: 1.0,
                        scale: 1.0,
                        ..NoiseScale::default()
                    }],
                    ..PrivacyRecord::default()
                },
                columns: vec![
                    ColumnDescription {
                        name: "city".to_owned(),
                        kind: "group key".to_owned(),
                    },
                    ColumnDescription {
                        name: "firms".to_owned(),
                        kind: "noisy count".to_owned(),
                    },
                ],
                rows: 0,
                files: Vec::new(),
                audit_checkpoint: None,
            },
            released: Released::for_tests(batch, Vec::new()),
        }
    }

    /// A product written and published inside a throwaway transaction.
    struct Published {
        dir: PathBuf,
        signed: SignedManifest,
        bytes: u64,
    }

    fn written(products: &Path, id: &str) -> Published {
        let staged = write_product(products, draft(id), &key()).expect("write product");
        let mut conn = rusqlite::Connection::open_in_memory().expect("sqlite");
        let tx = conn.transaction().expect("transaction");
        staged.publish_in(&tx).expect("publish");
        tx.commit().expect("commit");
        Published {
            dir: staged.dir().to_path_buf(),
            signed: staged.signed().clone(),
            bytes: staged.bytes(),
        }
    }

    #[test]
    fn a_written_product_verifies_with_the_pinned_key() {
        let products = tempfile::tempdir().expect("tempdir");
        let product = written(products.path(), "prod-1");
        assert_eq!(product.dir, products.path().join("prod-1"));

        let verified =
            verify_product_dir(&product.dir, Some(&key().verifying_key())).expect("verifies");
        assert!(verified.key_pinned);
        assert_eq!(verified.manifest, product.signed.manifest);
        assert_eq!(verified.manifest.rows, 3);
        let names: Vec<_> = verified
            .manifest
            .files
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, [RESULT_PARQUET, RESULT_CSV]);

        let csv = fs::read_to_string(product.dir.join(RESULT_CSV)).expect("read csv");
        assert_eq!(csv, "city,firms\nTaiyuan,1200\nDatong,640\nYangquan,310\n");
        let on_disk: u64 = fs::read_dir(&product.dir)
            .expect("list")
            .map(|e| e.expect("entry").metadata().expect("metadata").len())
            .sum();
        assert_eq!(product.bytes, on_disk);
        let names: Vec<_> = fs::read_dir(products.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["prod-1"], "the staging folder is gone");
    }

    #[test]
    fn a_staged_product_is_invisible_until_published_and_gone_when_abandoned() {
        let products = tempfile::tempdir().expect("tempdir");
        let staged = write_product(products.path(), draft("prod-1"), &key()).expect("write");
        assert!(!staged.dir().exists(), "not visible before the transaction");
        let staging = products.path().join(".tmp-job-1.prod-1");
        assert!(staging.is_dir());
        assert_eq!(staging_job(".tmp-job-1.prod-1"), Some("job-1"));
        assert_eq!(staging_job("prod-1"), None);
        assert_eq!(staging_job(".tmp-prod-1"), None);

        let mut conn = rusqlite::Connection::open_in_memory().expect("sqlite");
        let tx = conn.transaction().expect("transaction");
        staged.publish_in(&tx).expect("publish");
        assert!(staged.dir().is_dir());
        assert!(!staging.exists());
        // The commit failed: the folder goes again.
        drop(tx);
        staged.abandon();
        assert_eq!(fs::read_dir(products.path()).expect("list").count(), 0);
    }

    #[test]
    fn abandoning_an_unpublished_product_keeps_an_existing_one() {
        let products = tempfile::tempdir().expect("tempdir");
        let first = written(products.path(), "prod-1");
        let mut second = draft("prod-2");
        second.manifest.job_id = "job-2".to_owned();
        let staged = write_product(products.path(), second, &key()).expect("write");
        staged.abandon();
        verify_product_dir(&first.dir, Some(&key().verifying_key())).expect("first intact");
        let names: Vec<_> = fs::read_dir(products.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["prod-1"]);
    }

    #[test]
    fn a_flipped_byte_in_the_csv_fails_naming_the_file() {
        let products = tempfile::tempdir().expect("tempdir");
        let product = written(products.path(), "prod-1");
        let path = product.dir.join(RESULT_CSV);
        let mut bytes = fs::read(&path).expect("read");
        bytes[0] ^= 0x01;
        fs::write(&path, bytes).expect("write");

        let err =
            verify_product_dir(&product.dir, Some(&key().verifying_key())).expect_err("must fail");
        assert!(
            matches!(&err, VerifyError::DigestMismatch { name } if name == RESULT_CSV),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("result.csv: "), "{err}");
    }

    #[test]
    fn a_deleted_parquet_file_fails() {
        let products = tempfile::tempdir().expect("tempdir");
        let product = written(products.path(), "prod-1");
        fs::remove_file(product.dir.join(RESULT_PARQUET)).expect("remove");

        let err = verify_product_dir(&product.dir, None).expect_err("must fail");
        assert!(
            matches!(&err, VerifyError::FileMissing { name } if name == RESULT_PARQUET),
            "{err:?}"
        );
    }

    #[test]
    fn an_extra_file_fails() {
        let products = tempfile::tempdir().expect("tempdir");
        let product = written(products.path(), "prod-1");
        fs::write(product.dir.join("notes.txt"), b"added later").expect("write");

        let err = verify_product_dir(&product.dir, None).expect_err("must fail");
        assert!(
            matches!(&err, VerifyError::UnlistedFile { name } if name == "notes.txt"),
            "{err:?}"
        );
    }

    #[test]
    fn the_same_product_id_twice_fails_and_keeps_the_first() {
        let products = tempfile::tempdir().expect("tempdir");
        let first = written(products.path(), "prod-1");

        let mut second = draft("prod-1");
        second.manifest.job_id = "job-2".to_owned();
        let err = write_product(products.path(), second, &key()).expect_err("must fail");
        assert!(matches!(err, ProductError::AlreadyExists { .. }), "{err:?}");

        let verified =
            verify_product_dir(&first.dir, Some(&key().verifying_key())).expect("first intact");
        assert_eq!(verified.manifest.job_id, "job-1");
        assert!(!products.path().join(".tmp-job-2.prod-1").exists());
    }

    #[test]
    fn unsafe_product_ids_are_refused() {
        let products = tempfile::tempdir().expect("tempdir");
        for id in ["", "..", "../escape", "a/b", "a b", ".tmp-x"] {
            let err = write_product(products.path(), draft(id), &key()).expect_err(id);
            assert!(matches!(err, ProductError::BadId), "{id:?}: {err:?}");
        }
        let entries = fs::read_dir(products.path()).expect("list").count();
        assert_eq!(entries, 0);
    }
}
