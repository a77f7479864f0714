//! The catalog of in-domain datasets and their policies (数据目录, seed 001 art. 8).
//!
//! A dataset is registered by the bureau from a Parquet or CSV file plus a policy file (TOML).
//! Registration copies the data into the domain store as Parquet, hashes it with BLAKE3, and
//! checks the policy against the file's real schema. A Parquet object on the domain's object
//! storage (`s3://<bucket>/<key>`, buckets configured in `object-storage.toml`) is registered
//! where it lives instead: the same checks and hash, its size and ETag recorded, nothing kept
//! in the store (see `register_object` and [`changed_object`]). The policy is deny-by-default: every
//! column must have a role, and a policy that does not fit the file is refused with one line
//! per problem, naming the column and the fix.
//!
//! Then the values: registration computes a data-quality report over every row
//! ([`crate::quality`]) and stores it with the dataset, for the bureau only. A row without a
//! privacy unit, or a value outside a key set, refuses the registration unless the bureau
//! accepts them knowingly ([`RegisterOptions::accept_quality_issues`]). A CSV file is decoded
//! from the encoding the bureau names and split at the delimiter it names ([`CsvOptions`]);
//! a row that cannot be read is refused naming its line and column (`csv_input.rs`).
//!
//! Policy file format (see also `examples/policies/`):
//!
//! ```toml
//! provider = "Shanxi Provincial Department of Human Resources and Social Security"
//! classification_level = 3      # 1 public · 2 internal · 3 sensitive · 4 core
//! sharing = "conditional"       # unconditional | conditional | none (art. 12)
//! acquired_on = "2026-10-31"    # printed on every product (art. 18)
//! privacy_unit = "person_id"    # the column naming whom a row is about
//! unit_kind = "person"          # joins are allowed only between units of one kind
//! [budget]                      # optional: ε per calendar month across all grants
//! epsilon_per_month = 20.0
//! [columns.city]
//! role = "quasi"                # identifier | quasi | sensitive | public
//! keys = ["Taiyuan", "Datong"]  # optional public key set
//! [columns.monthly_income]
//! role = "sensitive"
//! bounds = [0, 100000]          # required for sensitive numeric columns
//! [columns.year]
//! role = "public"
//! key_range = [2019, 2025]      # optional, integer columns: every integer in it is a public key
//! ```

use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::csv::ReaderBuilder as CsvReaderBuilder;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rusqlite::{OptionalExtension, params};

pub use crate::csv_input::CsvOptions;
use crate::error::{Error, Result};
use crate::ids::DatasetId;
use crate::quality::QualityReport;
use crate::store::{Store, query_parsed_rows};
use crate::{audit, clock, csv_input, files, quality};
pub use veil_gate::policy::*;
use veil_gate::sandbox::SandboxError;
use veil_gate::sandbox::object_storage::{self, ObjectFacts, ObjectStorage, ObjectUrl};

/// Longest dataset (table) name, in bytes.
pub const DATASET_NAME_BYTES_MAX: usize = 63;
/// Rows per batch when converting CSV to Parquet.
const CSV_BATCH_ROWS: usize = 65_536;
/// Rows read to infer a CSV file's column types.
const CSV_INFER_ROWS: usize = 10_000;
/// Bytes copied at a time when a Parquet file is copied in (and progress reported).
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// The schema of a dataset's stored Parquet file (read from its footer). For a dataset on
/// object storage, the object's footer, read with two range requests.
pub fn schema_of(dataset: &Dataset, store: &Store) -> Result<SchemaRef> {
    if let Some(url) = object_url(&dataset.file)? {
        let storage = ObjectStorage::require(&store.data_dir()).map_err(storage_error)?;
        return object_storage::block_on(object_storage::parquet_schema(&storage, &url))
            .and_then(|schema| schema)
            .map_err(storage_error);
    }
    SourceFormat::Parquet.schema(
        &store.data_dir().join(&dataset.file),
        &CsvOptions::default(),
    )
}

/// The object an `s3://` file names, or `None` for a file in the data folder.
pub fn object_url(file: &str) -> Result<Option<ObjectUrl>> {
    if object_storage::is_object_url(file) {
        ObjectUrl::parse(file).map(Some).map_err(storage_error)
    } else {
        Ok(None)
    }
}

/// An object storage error as the bureau reads it: what to change, never a secret.
fn storage_error(error: SandboxError) -> Error {
    match error {
        SandboxError::Config(message) => Error::invalid(message),
        other => Error::internal(other.to_string()),
    }
}

/// How a dataset is registered, beyond its name, file and policy. The default reads CSV as
/// UTF-8 with commas, refuses data with blocking quality issues, and reports no progress.
#[derive(Default)]
pub struct RegisterOptions<'a> {
    /// How a CSV file is read (its encoding and delimiter); a Parquet file given a choice
    /// here is refused, since its text is always UTF-8.
    pub csv: CsvOptions,
    /// Register even when the quality report finds rows without a privacy unit or values
    /// outside a key set ([`QualityReport::blocking`]). Default `false`: such data is
    /// refused, because a product would silently leave those rows out or leave them without
    /// a contribution bound. With `true` the report records that the bureau accepted them.
    pub accept_quality_issues: bool,
    /// Called now and then while the file is read and checked; default none.
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
}

/// How far a registration has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub stage: Stage,
    /// Rows converted so far (CSV), or the file's rows (checking); 0 while a Parquet file is
    /// copied.
    pub rows: u64,
    /// Bytes of the source file read so far, or the stored file's bytes (checking).
    pub bytes: u64,
}

/// A stage of registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the source file into the domain as Parquet.
    Reading,
    /// Computing the data-quality report over the stored file.
    Checking,
}

impl RegisterOptions<'_> {
    fn report(&mut self, stage: Stage, rows: u64, bytes: u64) {
        if let Some(progress) = self.progress.as_mut() {
            progress(Progress { stage, rows, bytes });
        }
    }
}

/// A plain SQL identifier of at most `max` bytes: lower-case letters, digits and `_`, not
/// starting with a digit.
pub fn is_plain_identifier(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Checks that a dataset name is a plain SQL identifier.
pub fn check_name(name: &str) -> Result<()> {
    if is_plain_identifier(name, DATASET_NAME_BYTES_MAX) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "dataset name `{name}` is not allowed; use 1–{DATASET_NAME_BYTES_MAX} lowercase letters, digits and `_`, starting with a letter"
        )))
    }
}

/// Registers a dataset with the default [`RegisterOptions`].
pub fn register(store: &mut Store, name: &str, source: &Path, policy: Policy) -> Result<Dataset> {
    register_with(store, name, source, policy, RegisterOptions::default())
}

/// Registers a dataset: checks the policy against the file, copies the data into the domain
/// store as Parquet, computes its data-quality report (refusing blocking issues unless
/// `options` accepts them), and records both with an audit entry. Nothing is kept if any
/// step fails.
pub fn register_with(
    store: &mut Store,
    name: &str,
    source: &Path,
    policy: Policy,
    mut options: RegisterOptions<'_>,
) -> Result<Dataset> {
    check_name(name)?;
    if find(store, name)?.is_some() {
        return Err(Error::invalid(format!(
            "a dataset named `{name}` is already registered; choose another name"
        )));
    }
    if let Some(url) = source.to_str().map(object_url).transpose()?.flatten() {
        return register_object(store, name, &url, policy, options);
    }
    let format = SourceFormat::of(source)?;
    if matches!(format, SourceFormat::Parquet) && options.csv.chosen() {
        return Err(Error::invalid(format!(
            "{} is a Parquet file: --encoding and --delimiter apply to CSV files only (Parquet text is always UTF-8); leave them out",
            source.display()
        )));
    }
    let schema = format.schema(source, &options.csv)?;
    let problems = policy.check(&schema);
    if !problems.is_empty() {
        return Err(Error::Policy(problems));
    }

    let id = DatasetId::random();
    let relative = format!("{id}/data.parquet");
    let dir = store.data_dir().join(id.as_str());
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    let target = dir.join("data.parquet");
    let checked = copy_and_check(
        name,
        &format,
        source,
        &target,
        &schema,
        &policy,
        &mut options,
    );
    let (copied, mut report) = checked.inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    report.issues_accepted = !report.blocking().is_empty();

    let dataset = Dataset {
        id: id.clone(),
        name: name.to_string(),
        policy,
        file: relative,
        rows: copied.rows,
        bytes: copied.bytes,
        content_blake3: copied.blake3,
        registered_at: clock::format(clock::now()),
    };
    let result = record_registration(store, &dataset, &report, None);
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(error);
    }
    Ok(dataset)
}

/// Records a first registration: the dataset, its quality report, its version 1, the object
/// it names (for a dataset on object storage) and the audit entry, in one transaction.
fn record_registration(
    store: &mut Store,
    dataset: &Dataset,
    report: &QualityReport,
    object: Option<&ObjectFacts>,
) -> Result<()> {
    let policy_json = serde_json::to_string(&dataset.policy)
        .map_err(|e| Error::internal(format!("encoding a policy: {e}")))?;
    let report_json = serde_json::to_string(report)
        .map_err(|e| Error::internal(format!("encoding a quality report: {e}")))?;
    store.write(|tx| {
        tx.execute(
            "INSERT INTO datasets (id, name, policy_json, file, rows, bytes, content_blake3, registered_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                dataset.id.as_str(),
                dataset.name,
                policy_json,
                dataset.file,
                dataset.rows as i64,
                dataset.bytes as i64,
                dataset.content_blake3,
                dataset.registered_at
            ],
        )?;
        tx.execute(
            "INSERT INTO dataset_quality (dataset_id, report_json, computed_at) VALUES (?1, ?2, ?3)",
            params![dataset.id.as_str(), report_json, dataset.registered_at],
        )?;
        insert_version(tx, dataset, 1, &dataset.registered_at)?;
        if let Some(object) = object {
            insert_object(tx, dataset, object)?;
        }
        audit::append(
            tx,
            "bureau",
            dataset.id.as_str(),
            audit::Event::DatasetRegistered {
                name: &dataset.name,
                provider: &dataset.policy.provider,
                classification_level: dataset.policy.classification_level,
                acquired_on: &dataset.policy.acquired_on,
                content_blake3: &dataset.content_blake3,
                rows: dataset.rows,
            },
        )?;
        Ok(())
    })
}

/// Registers a dataset whose data is a Parquet object on the domain's object storage, where
/// it lives: nothing is copied into the store. The object is streamed once into a temporary
/// file in the data folder, which the BLAKE3 hash, the policy checks and the data-quality
/// report read, and which is removed before this returns; the dataset's `file` is the
/// object's URL, and its size and ETag are recorded so that a job can tell that the object
/// changed (see [`changed_object`]).
fn register_object(
    store: &mut Store,
    name: &str,
    url: &ObjectUrl,
    policy: Policy,
    mut options: RegisterOptions<'_>,
) -> Result<Dataset> {
    let fetched = fetch_and_check(store, name, url, &policy, &mut options)?;
    let dataset = Dataset {
        id: DatasetId::random(),
        name: name.to_string(),
        policy,
        file: url.to_string(),
        rows: fetched.copied.rows,
        bytes: fetched.copied.bytes,
        content_blake3: fetched.copied.blake3,
        registered_at: clock::format(clock::now()),
    };
    let mut report = fetched.report;
    report.issues_accepted = !report.blocking().is_empty();
    record_registration(store, &dataset, &report, Some(&fetched.facts))?;
    Ok(dataset)
}

/// An object read once and checked.
struct Fetched {
    copied: Copied,
    report: QualityReport,
    facts: ObjectFacts,
}

/// Reads the object at `url` once (hashing it on the way into a temporary file), checks its
/// schema and sums against `policy` and computes its quality report (refusing blocking issues
/// unless `options` accepts them). The temporary file is gone when this returns.
fn fetch_and_check(
    store: &Store,
    name: &str,
    url: &ObjectUrl,
    policy: &Policy,
    options: &mut RegisterOptions<'_>,
) -> Result<Fetched> {
    if options.csv.chosen() {
        return Err(Error::invalid(format!(
            "{url} is a Parquet object: --encoding and --delimiter apply to CSV files only; leave them out"
        )));
    }
    // The sandbox's listing table reads `.parquet` objects only, and only Parquet carries its
    // schema with it; CSV and JSON objects would need a conversion the store cannot keep.
    if !url.key().ends_with(".parquet") {
        return Err(Error::invalid(format!(
            "{url} is not a Parquet object (its key does not end in .parquet): only Parquet objects are registered where they live; convert it to Parquet, or register the local file"
        )));
    }
    let storage = ObjectStorage::require(&store.data_dir()).map_err(storage_error)?;
    let dir = store
        .data_dir()
        .join(format!(".object-{}", DatasetId::random()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    let tmp = dir.join("object.parquet");
    let checked = (|| {
        let (facts, bytes, blake3) = download(&storage, url, &tmp, options)?;
        let schema = ParquetRecordBatchReaderBuilder::try_new(
            File::open(&tmp).map_err(|e| Error::io("opening", &tmp, e))?,
        )
        .map(|b| b.schema().clone())
        .map_err(|_| Error::invalid(format!("{url} is not a valid Parquet object")))?;
        let problems = policy.check(&schema);
        if !problems.is_empty() {
            return Err(Error::Policy(problems));
        }
        let rows = parquet_rows(&tmp)
            .map_err(|_| Error::invalid(format!("{url} is not a valid Parquet object")))?;
        let copied = Copied {
            rows,
            bytes,
            blake3,
        };
        let report = check_copied(name, &tmp, &schema, policy, &copied, options)?;
        Ok(Fetched {
            copied,
            report,
            facts,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    checked
}

/// Streams the object into `target`, hashing it on the way: its facts, bytes and BLAKE3.
fn download(
    storage: &ObjectStorage,
    url: &ObjectUrl,
    target: &Path,
    options: &mut RegisterOptions<'_>,
) -> Result<(ObjectFacts, u64, String)> {
    use futures::StreamExt;
    let mut output = File::create(target).map_err(|e| Error::io("creating", target, e))?;
    // Progress is reported from this thread while the read runs on a runtime of its own: the
    // chunks come back over a bounded channel, and this thread writes and hashes them.
    let (sender, receiver) =
        std::sync::mpsc::sync_channel::<std::result::Result<Vec<u8>, SandboxError>>(4);
    let read = async move {
        let (facts, mut stream) = storage.open(url).await?;
        while let Some(chunk) = stream.next().await {
            let failed = chunk.is_err();
            if sender.send(chunk.map(|b| b.to_vec())).is_err() || failed {
                break;
            }
        }
        Ok::<ObjectFacts, SandboxError>(facts)
    };
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    let facts = std::thread::scope(|scope| {
        let reader = scope.spawn(|| object_storage::block_on(read));
        // Owned here, so that an early return drops it and a reader blocked on a full
        // channel stops instead of waiting for this scope forever.
        let receiver = receiver;
        for chunk in receiver.iter() {
            let chunk = chunk.map_err(storage_error)?;
            hasher.update(&chunk);
            output
                .write_all(&chunk)
                .map_err(|e| Error::io("writing", target, e))?;
            total += chunk.len() as u64;
            options.report(Stage::Reading, 0, total);
        }
        reader
            .join()
            .map_err(|_| Error::internal("reading an object stopped unexpectedly"))?
            .and_then(|read| read)
            .map_err(storage_error)
    })?;
    output
        .sync_all()
        .map_err(|e| Error::io("syncing", target, e))?;
    if total != facts.size {
        return Err(Error::invalid(format!(
            "{url} changed while it was read ({total} bytes read, {} announced); register it again once nothing writes it",
            facts.size
        )));
    }
    Ok((facts, total, hasher.finalize().to_hex().to_string()))
}

fn insert_object(
    tx: &rusqlite::Transaction<'_>,
    dataset: &Dataset,
    object: &ObjectFacts,
) -> Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO dataset_objects (dataset_id, url, content_blake3, size, etag)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            dataset.id.as_str(),
            dataset.file,
            dataset.content_blake3,
            object.size as i64,
            object.etag
        ],
    )?;
    Ok(())
}

/// The size and ETag the object of a dataset on object storage had when it was registered
/// (at the version `dataset` is at), or `None` for a dataset in the data folder.
pub fn registered_object(store: &Store, dataset: &Dataset) -> Result<Option<ObjectFacts>> {
    if !object_storage::is_object_url(&dataset.file) {
        return Ok(None);
    }
    let found = store
        .conn()
        .query_row(
            "SELECT size, etag FROM dataset_objects
             WHERE dataset_id = ?1 AND url = ?2 AND content_blake3 = ?3",
            params![dataset.id.as_str(), dataset.file, dataset.content_blake3],
            |row| {
                Ok(ObjectFacts {
                    size: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                    etag: row.get(1)?,
                })
            },
        )
        .optional()?;
    found.map(Some).ok_or_else(|| {
        Error::internal(format!(
            "the store holds no object record for `{}`",
            dataset.name
        ))
    })
}

/// For the datasets a job reads, the refusal message for the first whose object on object
/// storage is not the one registered (a `HEAD` each: size and ETag), or `None` when every
/// object is as registered. Datasets in the data folder are not checked here: the store
/// owns their files. An object that cannot be reached is an error (the job fails before it
/// reserves anything).
pub async fn changed_object(store: &Store, datasets: &[Dataset]) -> Result<Option<String>> {
    let mut storage = None;
    for dataset in datasets {
        let Some(url) = object_url(&dataset.file)? else {
            continue;
        };
        let Some(registered) = registered_object(store, dataset)? else {
            continue;
        };
        let storage = match &mut storage {
            Some(storage) => storage,
            None => {
                storage.insert(ObjectStorage::require(&store.data_dir()).map_err(storage_error)?)
            }
        };
        let now = storage.head(&url).await.map_err(storage_error)?;
        if now != registered {
            return Ok(Some(format!(
                "dataset `{}`'s object {url} changed since it was registered (size or ETag differ): the bureau registers the new object as a new version (`veil dataset update {} --file {url}`)",
                dataset.name, dataset.name
            )));
        }
    }
    Ok(None)
}

/// One version of a dataset's data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Version {
    pub dataset_id: String,
    /// 1 for the first registration, then one more for each new file.
    pub version: u32,
    /// Path of its Parquet file relative to the store's data folder, or the `s3://` URL of
    /// its object on object storage.
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub content_blake3: String,
    pub registered_at: String,
}

fn insert_version(
    tx: &rusqlite::Transaction<'_>,
    dataset: &Dataset,
    version: u32,
    at: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO dataset_versions (dataset_id, version, file, rows, bytes, content_blake3, registered_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            dataset.id.as_str(),
            version,
            dataset.file,
            dataset.rows as i64,
            dataset.bytes as i64,
            dataset.content_blake3,
            at
        ],
    )?;
    Ok(())
}

/// Every version of a dataset, oldest first. A dataset registered before versions were kept
/// has one, its registration, until a second is registered.
pub fn versions(store: &Store, dataset: &Dataset) -> Result<Vec<Version>> {
    let stored = crate::store::query_rows(
        store.conn(),
        "SELECT dataset_id, version, file, rows, bytes, content_blake3, registered_at
         FROM dataset_versions WHERE dataset_id = ?1 ORDER BY version",
        [dataset.id.as_str()],
        |row| {
            Ok(Version {
                dataset_id: row.get(0)?,
                version: row.get(1)?,
                file: row.get(2)?,
                rows: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                bytes: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
                content_blake3: row.get(5)?,
                registered_at: row.get(6)?,
            })
        },
    )?;
    if !stored.is_empty() {
        return Ok(stored);
    }
    Ok(vec![Version {
        dataset_id: dataset.id.to_string(),
        version: 1,
        file: dataset.file.clone(),
        rows: dataset.rows,
        bytes: dataset.bytes,
        content_blake3: dataset.content_blake3.clone(),
        registered_at: dataset.registered_at.clone(),
    }])
}

/// The version a dataset's data is at: the one whose content it holds (what a job read and
/// its manifest names).
pub fn version_of(store: &Store, dataset: &Dataset) -> Result<u32> {
    Ok(versions(store, dataset)?
        .iter()
        .rev()
        .find(|v| v.content_blake3 == dataset.content_blake3)
        .map_or(1, |v| v.version))
}

/// `dataset` as it was at `version`: the same id, name and policy, that version's file, rows
/// and content. Refused, naming the versions there are, when it has no such version.
pub fn at_version(store: &Store, dataset: &Dataset, version: u32) -> Result<Dataset> {
    let known = versions(store, dataset)?;
    let Some(found) = known.iter().find(|v| v.version == version) else {
        return Err(Error::invalid(format!(
            "the template reads `{}` at version {version}, but it has versions 1 to {}; submit a template that pins one of them, or none to read the latest",
            dataset.name,
            known.len()
        )));
    };
    Ok(Dataset {
        file: found.file.clone(),
        rows: found.rows,
        bytes: found.bytes,
        content_blake3: found.content_blake3.clone(),
        ..dataset.clone()
    })
}

/// Registers a new version of an existing dataset: a new file under the same name, id and
/// policy, with the same checks as the first registration (the policy against the file's
/// schema and sums, the data-quality report). Jobs read the new version from the next run
/// on; the earlier versions' files stay, since products name them. The dataset's budget is
/// the dataset's, whatever its version. A file whose content equals the latest version's is
/// refused: there is nothing new to register.
pub fn register_version(
    store: &mut Store,
    name_or_id: &str,
    source: &Path,
    mut options: RegisterOptions<'_>,
) -> Result<(Dataset, Version)> {
    let current = get(store, name_or_id)?;
    let known = versions(store, &current)?;
    let number = known.last().map_or(1, |v| v.version) + 1;
    // A new version on object storage is registered where it lives, like a first one.
    if let Some(url) = source.to_str().map(object_url).transpose()?.flatten() {
        let fetched = fetch_and_check(store, &current.name, &url, &current.policy, &mut options)?;
        let copied = fetched.copied;
        return record_version(
            store,
            &current,
            &known,
            number,
            source,
            url.to_string(),
            None,
            (copied, fetched.report, Some(fetched.facts)),
        );
    }
    let format = SourceFormat::of(source)?;
    if matches!(format, SourceFormat::Parquet) && options.csv.chosen() {
        return Err(Error::invalid(format!(
            "{} is a Parquet file: --encoding and --delimiter apply to CSV files only (Parquet text is always UTF-8); leave them out",
            source.display()
        )));
    }
    let schema = format.schema(source, &options.csv)?;
    let problems = current.policy.check(&schema);
    if !problems.is_empty() {
        return Err(Error::Policy(problems));
    }
    let relative = format!("{}/v{number}/data.parquet", current.id);
    let dir = store
        .data_dir()
        .join(current.id.as_str())
        .join(format!("v{number}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    let target = dir.join("data.parquet");
    let checked = copy_and_check(
        &current.name,
        &format,
        source,
        &target,
        &schema,
        &current.policy,
        &mut options,
    );
    let (copied, report) = checked.inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    record_version(
        store,
        &current,
        &known,
        number,
        source,
        relative,
        Some(&dir),
        (copied, report, None),
    )
}

/// Records a checked new version (its file `relative` in the data folder, whose folder `dir`
/// is removed on failure, or an object's URL with the object's facts), unless it holds the
/// latest version's data.
#[allow(clippy::too_many_arguments)]
fn record_version(
    store: &mut Store,
    current: &Dataset,
    known: &[Version],
    number: u32,
    source: &Path,
    relative: String,
    dir: Option<&Path>,
    checked: (Copied, QualityReport, Option<ObjectFacts>),
) -> Result<(Dataset, Version)> {
    let (copied, mut report, object) = checked;
    let remove = || {
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    };
    if copied.blake3 == current.content_blake3 {
        remove();
        return Err(Error::invalid(format!(
            "{} holds exactly the data of `{}` version {}; nothing new to register",
            source.display(),
            current.name,
            number - 1
        )));
    }
    report.issues_accepted = !report.blocking().is_empty();
    let at = clock::format(clock::now());
    let updated = Dataset {
        file: relative,
        rows: copied.rows,
        bytes: copied.bytes,
        content_blake3: copied.blake3,
        ..current.clone()
    };
    let report_json = serde_json::to_string(&report)
        .map_err(|e| Error::internal(format!("encoding a quality report: {e}")))?;
    let result = store.write(|tx| {
        // A dataset registered before versions were kept gets its first version recorded now.
        if number == 2 && known.len() == 1 {
            tx.execute(
                "INSERT OR IGNORE INTO dataset_versions (dataset_id, version, file, rows, bytes, content_blake3, registered_at)
                 VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    current.id.as_str(),
                    current.file,
                    current.rows as i64,
                    current.bytes as i64,
                    current.content_blake3,
                    current.registered_at
                ],
            )?;
        }
        insert_version(tx, &updated, number, &at)?;
        if let Some(object) = &object {
            insert_object(tx, &updated, object)?;
        }
        tx.execute(
            "UPDATE datasets SET file = ?1, rows = ?2, bytes = ?3, content_blake3 = ?4 WHERE id = ?5",
            params![
                updated.file,
                updated.rows as i64,
                updated.bytes as i64,
                updated.content_blake3,
                updated.id.as_str()
            ],
        )?;
        tx.execute(
            "INSERT INTO dataset_quality (dataset_id, report_json, computed_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (dataset_id) DO UPDATE SET report_json = excluded.report_json, computed_at = excluded.computed_at",
            params![updated.id.as_str(), report_json, at],
        )?;
        audit::append(
            tx,
            "bureau",
            updated.id.as_str(),
            audit::Event::DatasetVersionRegistered {
                version: number,
                content_blake3: &updated.content_blake3,
                rows: updated.rows,
            },
        )?;
        Ok(())
    });
    if let Err(error) = result {
        remove();
        return Err(error);
    }
    let version = Version {
        dataset_id: updated.id.to_string(),
        version: number,
        file: updated.file.clone(),
        rows: updated.rows,
        bytes: updated.bytes,
        content_blake3: updated.content_blake3.clone(),
        registered_at: at,
    };
    Ok((updated, version))
}

/// The file copied in, its sums checked against the policy, and its quality report, which
/// refuses blocking issues unless `options` accepts them. The caller removes the folder on
/// an error.
fn copy_and_check(
    name: &str,
    format: &SourceFormat,
    source: &Path,
    target: &Path,
    schema: &SchemaRef,
    policy: &Policy,
    options: &mut RegisterOptions<'_>,
) -> Result<(Copied, QualityReport)> {
    let copied = format.copy_into(source, target, schema, options)?;
    let report = check_copied(name, target, schema, policy, &copied, options)?;
    Ok((copied, report))
}

/// The checks of a file in the store: its sums against the policy, and its quality report,
/// which refuses blocking issues unless `options` accepts them.
fn check_copied(
    name: &str,
    target: &Path,
    schema: &SchemaRef,
    policy: &Policy,
    copied: &Copied,
    options: &mut RegisterOptions<'_>,
) -> Result<QualityReport> {
    // Only now is the row count known (a CSV file is counted while it is converted).
    let problems = policy.check_sums(schema, copied.rows);
    if !problems.is_empty() {
        return Err(Error::Policy(problems));
    }
    options.report(Stage::Checking, copied.rows, copied.bytes);
    let report = quality::compute(target, policy, &mut || {
        options.report(Stage::Checking, copied.rows, copied.bytes)
    })?;
    let blocking = report.blocking();
    if !blocking.is_empty() && !options.accept_quality_issues {
        let lines: Vec<String> = blocking.iter().map(|p| format!("  - {p}")).collect();
        return Err(Error::invalid(format!(
            "`{name}` was not registered: its data has problems the bureau must decide on\n{}\nCorrect the data or the policy and register again, or register with --accept-quality-issues to accept them knowingly (the report is kept with the dataset; `veil dataset show {name}` prints it)",
            lines.join("\n")
        )));
    }
    Ok(report)
}

/// The data-quality report computed when the dataset was registered, or `None` for a
/// dataset registered before reports existed. It holds values from inside the domain: it is
/// for the bureau, and no operator- or buyer-facing view may include it.
pub fn quality_report(store: &Store, id: &DatasetId) -> Result<Option<QualityReport>> {
    let json: Option<String> = store
        .conn()
        .query_row(
            "SELECT report_json FROM dataset_quality WHERE dataset_id = ?1",
            [id.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    json.map(|json| {
        serde_json::from_str(&json)
            .map_err(|e| Error::internal(format!("reading a stored quality report: {e}")))
    })
    .transpose()
}

/// Looks a dataset up by name or id.
pub fn find(store: &Store, name_or_id: &str) -> Result<Option<Dataset>> {
    store
        .conn()
        .query_row(
            "SELECT id, name, policy_json, file, rows, bytes, content_blake3, registered_at
             FROM datasets WHERE name = ?1 OR id = ?1",
            [name_or_id],
            row_to_dataset,
        )
        .optional()?
        .transpose()
}

/// Looks a dataset up, or says it does not exist.
pub fn get(store: &Store, name_or_id: &str) -> Result<Dataset> {
    find(store, name_or_id)?.ok_or_else(|| Error::NotFound {
        kind: "dataset",
        id: name_or_id.to_string(),
        hint: "; `veil dataset list` shows the registered ones",
    })
}

/// All datasets, by name.
pub fn list(store: &Store) -> Result<Vec<Dataset>> {
    query_parsed_rows(
        store.conn(),
        "SELECT id, name, policy_json, file, rows, bytes, content_blake3, registered_at
         FROM datasets ORDER BY name",
        [],
        row_to_dataset,
    )
}

/// A dataset's registration as other contexts need it, with its policy left as stored: the
/// ledger reads the provider from it without failing on a policy this crate can no longer
/// parse into a [`Policy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDataset {
    pub id: String,
    pub name: String,
    /// Registered rows, as stored.
    pub rows: i64,
    pub policy_json: String,
}

fn row_to_stored(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredDataset> {
    Ok(StoredDataset {
        id: row.get(0)?,
        name: row.get(1)?,
        rows: row.get(2)?,
        policy_json: row.get(3)?,
    })
}

/// One dataset's stored registration by id, or `None` if no dataset has that id.
pub fn stored(conn: &rusqlite::Connection, id: &str) -> Result<Option<StoredDataset>> {
    Ok(conn
        .query_row(
            "SELECT id, name, rows, policy_json FROM datasets WHERE id = ?1",
            [id],
            row_to_stored,
        )
        .optional()?)
}

/// Every dataset's stored registration, by name.
pub fn all_stored(conn: &rusqlite::Connection) -> Result<Vec<StoredDataset>> {
    crate::store::query_rows(
        conn,
        "SELECT id, name, rows, policy_json FROM datasets ORDER BY name",
        [],
        row_to_stored,
    )
}

fn row_to_dataset(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Dataset>> {
    let policy_json: String = row.get(2)?;
    let policy = match serde_json::from_str(&policy_json) {
        Ok(policy) => policy,
        Err(e) => {
            return Ok(Err(Error::internal(format!(
                "reading a stored policy: {e}"
            ))));
        }
    };
    Ok(Ok(Dataset {
        id: DatasetId::new(row.get::<_, String>(0)?),
        name: row.get(1)?,
        policy,
        file: row.get(3)?,
        rows: row.get::<_, i64>(4)? as u64,
        bytes: row.get::<_, i64>(5)? as u64,
        content_blake3: row.get(6)?,
        registered_at: row.get(7)?,
    }))
}

struct Copied {
    rows: u64,
    bytes: u64,
    blake3: String,
}

enum SourceFormat {
    Parquet,
    Csv,
}

impl SourceFormat {
    fn of(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::invalid(format!(
                "{} is not a readable file; give the path of a .parquet or .csv file",
                path.display()
            )));
        }
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
        {
            Some(ext) if ext == "parquet" => Ok(Self::Parquet),
            Some(ext) if ext == "csv" => Ok(Self::Csv),
            _ => Err(Error::invalid(format!(
                "{} is neither .parquet nor .csv; convert it to one of them",
                path.display()
            ))),
        }
    }

    /// The file's schema: a Parquet file's footer, or a CSV file's header with the types of
    /// its first [`CSV_INFER_ROWS`] rows.
    fn schema(&self, path: &Path, csv: &CsvOptions) -> Result<SchemaRef> {
        let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        match self {
            Self::Parquet => ParquetRecordBatchReaderBuilder::try_new(file)
                .map(|b| b.schema().clone())
                .map_err(|_| {
                    Error::invalid(format!("{} is not a valid Parquet file", path.display()))
                }),
            Self::Csv => {
                let empty = file
                    .metadata()
                    .map_err(|e| Error::io("reading", path, e))?
                    .len()
                    == 0;
                let inferred = if empty {
                    Ok((datafusion::arrow::datatypes::Schema::empty(), 0))
                } else {
                    csv.arrow_format()
                        .infer_schema(csv.decode(file), Some(CSV_INFER_ROWS))
                };
                let (schema, records) =
                    inferred.map_err(|error| csv_input::diagnose(path, csv, None, 0, &error))?;
                csv_input::check_header(path, &schema, records)?;
                Ok(Arc::new(schema))
            }
        }
    }

    /// Copies (Parquet) or converts (CSV) the source into `target`, atomically.
    fn copy_into(
        &self,
        source: &Path,
        target: &Path,
        schema: &SchemaRef,
        options: &mut RegisterOptions<'_>,
    ) -> Result<Copied> {
        let dir = target
            .parent()
            .ok_or_else(|| Error::internal("placing a dataset file"))?;
        let tmp: PathBuf = dir.join(".data.parquet.tmp");
        match self {
            Self::Parquet => {
                let mut input = File::open(source).map_err(|e| Error::io("opening", source, e))?;
                let mut output = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
                let mut buffer = vec![0u8; COPY_CHUNK_BYTES];
                let mut copied = 0u64;
                loop {
                    let n = input
                        .read(&mut buffer)
                        .map_err(|e| Error::io("reading", source, e))?;
                    if n == 0 {
                        break;
                    }
                    output
                        .write_all(&buffer[..n])
                        .map_err(|e| Error::io("copying into", &tmp, e))?;
                    copied += n as u64;
                    options.report(Stage::Reading, 0, copied);
                }
                output
                    .sync_all()
                    .map_err(|e| Error::io("syncing", &tmp, e))?;
            }
            Self::Csv => {
                let csv = options.csv;
                let file = File::open(source).map_err(|e| Error::io("opening", source, e))?;
                let decoding = csv.decode(file);
                let bytes_read = decoding.bytes_read();
                let reader = CsvReaderBuilder::new(schema.clone())
                    .with_header(true)
                    .with_delimiter(csv.delimiter())
                    .with_batch_size(CSV_BATCH_ROWS)
                    .build(BufReader::new(decoding))
                    .map_err(|error| csv_input::diagnose(source, &csv, Some(schema), 0, &error))?;
                let output = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
                let mut writer = ArrowWriter::try_new(output, schema.clone(), None)
                    .map_err(|e| Error::internal(format!("starting a Parquet file: {e}")))?;
                let mut rows = 0u64;
                for (index, batch) in reader.enumerate() {
                    // Arrow's message counts records, not lines, and knows no column names:
                    // the file is read again from this batch on to say where the bad row is.
                    let batch = batch.map_err(|error| {
                        let from = (index * CSV_BATCH_ROWS) as u64;
                        csv_input::diagnose(source, &csv, Some(schema), from, &error)
                    })?;
                    writer
                        .write(&batch)
                        .map_err(|e| Error::internal(format!("writing Parquet: {e}")))?;
                    rows += batch.num_rows() as u64;
                    options.report(Stage::Reading, rows, bytes_read.load(Ordering::Relaxed));
                }
                let output = writer
                    .into_inner()
                    .map_err(|e| Error::internal(format!("finishing Parquet: {e}")))?;
                output
                    .sync_all()
                    .map_err(|e| Error::io("syncing", &tmp, e))?;
            }
        }
        let rows = parquet_rows(&tmp).map_err(|_| {
            Error::invalid(format!("{} is not a valid Parquet file", source.display()))
        })?;
        let (bytes, blake3) = hash_file(&tmp)?;
        std::fs::rename(&tmp, target).map_err(|e| Error::io("renaming into place", target, e))?;
        files::sync_dir(dir)?;
        Ok(Copied {
            rows,
            bytes,
            blake3,
        })
    }
}

fn parquet_rows(path: &Path) -> std::result::Result<u64, ()> {
    let file = File::open(path).map_err(|_| ())?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|_| ())?;
    Ok(builder.metadata().file_metadata().num_rows().max(0) as u64)
}

/// Size and BLAKE3 digest of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buffer[..n]);
    }
    let _ = file.rewind();
    Ok((total, hasher.finalize().to_hex().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str =
        "person_id,city,income,note\n1,Taiyuan,5000,a\n2,Datong,7000,b\n3,Taiyuan,4000,c\n";

    fn policy(extra: &str) -> String {
        format!(
            r#"
provider = "Test provider"
classification_level = 2
sharing = "conditional"
acquired_on = "2026-10-01"
privacy_unit = "person_id"
unit_kind = "person"
{extra}
"#
        )
    }

    const COLUMNS: &str = r#"
[columns.person_id]
role = "identifier"
[columns.city]
role = "quasi"
keys = ["Taiyuan", "Datong"]
[columns.income]
role = "sensitive"
bounds = [0, 100000]
[columns.note]
role = "public"
"#;

    fn setup() -> (tempfile::TempDir, Store, PathBuf) {
        let dir = tempfile::tempdir().expect("temporary folder");
        let store = Store::init(&dir.path().join("store")).expect("store");
        let csv = dir.path().join("people.csv");
        std::fs::write(&csv, CSV).expect("csv");
        (dir, store, csv)
    }

    fn problems(extra: &str) -> Vec<String> {
        let (_dir, mut store, csv) = setup();
        match register(
            &mut store,
            "people",
            &csv,
            Policy::parse(&policy(extra)).expect("parse"),
        ) {
            Err(Error::Policy(problems)) => problems,
            other => panic!("expected a policy refusal, got {other:?}"),
        }
    }

    #[test]
    fn registers_a_csv_file_as_parquet() -> Result<()> {
        let (_dir, mut store, csv) = setup();
        let dataset = register(&mut store, "people", &csv, Policy::parse(&policy(COLUMNS))?)?;
        assert_eq!(dataset.rows, 3);
        let stored = store.data_dir().join(&dataset.file);
        assert_eq!(hash_file(&stored)?.1, dataset.content_blake3);
        assert_eq!(get(&store, "people")?.id, dataset.id);
        assert_eq!(list(&store)?.len(), 1);
        let report = quality_report(&store, &dataset.id)?.expect("a stored report");
        assert_eq!((report.rows, report.issues_accepted), (3, false));
        Ok(())
    }

    #[test]
    fn refuses_values_outside_a_key_set_unless_accepted_and_keeps_the_report() -> Result<()> {
        let (_dir, mut store, csv) = setup();
        let typo = COLUMNS.replace(r#"["Taiyuan", "Datong"]"#, r#"["Taiyaun", "Datong"]"#);
        let refused = register(&mut store, "people", &csv, Policy::parse(&policy(&typo))?)
            .expect_err("a value outside the key set");
        assert_eq!(refused.exit_code(), 2);
        assert!(
            refused
                .to_string()
                .contains("`Taiyuan` × 2 (nearest key `Taiyaun`)"),
            "{refused}"
        );
        // Nothing of the refused registration was kept.
        assert!(list(&store)?.is_empty());
        assert_eq!(
            std::fs::read_dir(store.data_dir()).expect("data").count(),
            0
        );

        let accepted = RegisterOptions {
            accept_quality_issues: true,
            ..RegisterOptions::default()
        };
        let dataset = register_with(
            &mut store,
            "people",
            &csv,
            Policy::parse(&policy(&typo))?,
            accepted,
        )?;
        let report = quality_report(&store, &dataset.id)?.expect("a stored report");
        assert!(report.issues_accepted);
        assert_eq!(report.key_sets[0].rows_outside, 2);
        Ok(())
    }

    #[test]
    fn reads_a_gbk_file_split_at_its_delimiter() -> Result<()> {
        let (dir, mut store, _) = setup();
        let (gbk, _, _) =
            encoding_rs::GBK.encode("person_id|city|income|note\n1|太原|5000|甲\n2|大同|7000|乙\n");
        let file = dir.path().join("people.csv");
        std::fs::write(&file, &gbk).expect("csv");
        let chinese = COLUMNS.replace(r#"["Taiyuan", "Datong"]"#, r#"["太原", "大同"]"#);
        let options = RegisterOptions {
            csv: CsvOptions::parse(Some("gbk"), Some("|"))?,
            ..RegisterOptions::default()
        };
        // With the keys in the set, nothing is outside: every value decoded to itself.
        let dataset = register_with(
            &mut store,
            "people",
            &file,
            Policy::parse(&policy(&chinese))?,
            options,
        )?;
        assert_eq!(dataset.rows, 2);
        let report = quality_report(&store, &dataset.id)?.expect("a stored report");
        assert_eq!(report.key_sets[0].rows_outside, 0);
        assert!(report.key_sets[0].keys_without_rows.is_empty());
        Ok(())
    }

    #[test]
    fn refuses_a_policy_with_an_unknown_column() {
        let found = problems(&format!("{COLUMNS}\n[columns.salary]\nrole = \"public\"\n"));
        assert!(
            found
                .iter()
                .any(|p| p.contains("`salary`") && p.contains("not in the file")),
            "{found:?}"
        );
    }

    #[test]
    fn refuses_a_column_without_a_role() {
        let without_note = COLUMNS.replace("[columns.note]\nrole = \"public\"\n", "");
        let found = problems(&without_note);
        assert!(
            found.iter().any(|p| p.contains("`note` has no role")),
            "{found:?}"
        );
    }

    #[test]
    fn refuses_a_sensitive_number_without_bounds_and_reversed_bounds() {
        let found = problems(&COLUMNS.replace("bounds = [0, 100000]\n", ""));
        assert!(
            found.iter().any(|p| p.contains("`income` has no bounds")),
            "{found:?}"
        );
        let found = problems(&COLUMNS.replace("bounds = [0, 100000]", "bounds = [100, 5]"));
        assert!(found.iter().any(|p| p.contains("lo > hi")), "{found:?}");
    }

    #[test]
    fn a_key_range_is_a_key_set_and_a_bad_one_is_refused_saying_what_to_write() -> Result<()> {
        // Accepted: every integer of the range is a key; the report counts those no row has.
        let ranged = COLUMNS.replace(
            "bounds = [0, 100000]",
            "bounds = [0, 100000]\nkey_range = [4000, 7000]",
        );
        let (_dir, mut store, csv) = setup();
        let dataset = register(&mut store, "people", &csv, Policy::parse(&policy(&ranged))?)?;
        let report = quality_report(&store, &dataset.id)?.expect("a stored report");
        let income = report
            .key_sets
            .iter()
            .find(|check| check.column == "income")
            .expect("the range is checked as a key set");
        assert_eq!(
            income.rows_outside, 0,
            "4000, 5000 and 7000 lie in the range"
        );
        assert_eq!(income.keys_without_rows_count, 3001 - 3);

        let refused = |range: &str, keys: bool| {
            let mut columns = COLUMNS.replace(
                "bounds = [0, 100000]",
                &format!("bounds = [0, 100000]\nkey_range = {range}"),
            );
            if keys {
                columns = columns.replace(
                    "bounds = [0, 100000]",
                    "bounds = [0, 100000]\nkeys = [\"4000\"]",
                );
            }
            problems(&columns)
        };
        let found = refused("[2025, 2019]", false);
        assert!(
            found
                .iter()
                .any(|p| p.contains("low > high") && p.contains("[2019, 2025]")),
            "{found:?}"
        );
        let found = refused("[0, 10000]", false);
        assert!(
            found
                .iter()
                .any(|p| p.contains("10001 keys") && p.contains("at most 10000")),
            "{found:?}"
        );
        let found = refused("[4000, 4001]", true);
        assert!(
            found
                .iter()
                .any(|p| p.contains("both `keys` and `key_range`")),
            "{found:?}"
        );
        let text = COLUMNS.replace("keys = [\"Taiyuan\", \"Datong\"]", "key_range = [1, 2]");
        let found = problems(&text);
        assert!(
            found
                .iter()
                .any(|p| p.contains("`city`") && p.contains("integer columns only")),
            "{found:?}"
        );
        Ok(())
    }

    #[test]
    fn refuses_bounds_whose_sum_over_the_table_could_overflow() {
        let huge = COLUMNS.replace("bounds = [0, 100000]", "bounds = [-1.7e308, 1.7e308]");
        let found = problems(&huge);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("column `income`"), "{found:?}");
        assert!(found[0].contains("narrow the bounds"), "{found:?}");

        // `income` is an integer column: at 3 rows, 2^62 / 3 fits and one more does not.
        let fits = COLUMNS.replace("bounds = [0, 100000]", "bounds = [0, 1.5e18]");
        let (_dir, mut store, csv) = setup();
        register(
            &mut store,
            "people",
            &csv,
            Policy::parse(&policy(&fits)).expect("parse"),
        )
        .expect("1.5e18 × 3 rows fits in 2^62");
        let over = COLUMNS.replace("bounds = [0, 100000]", "bounds = [0, 1.6e18]");
        let found = problems(&over);
        assert!(found[0].contains("2^62"), "{found:?}");
        // Nothing of the refused registration was kept.
        let (_dir, mut store, csv) = setup();
        let _ = register(
            &mut store,
            "people",
            &csv,
            Policy::parse(&policy(&over)).expect("parse"),
        );
        assert_eq!(
            std::fs::read_dir(store.data_dir()).expect("data").count(),
            0
        );
    }

    #[test]
    fn refuses_a_missing_privacy_unit_and_a_bad_date() {
        let text = policy(COLUMNS)
            .replace("privacy_unit = \"person_id\"", "privacy_unit = \"citizen\"")
            .replace("2026-10-01", "October");
        let (_dir, mut store, csv) = setup();
        let Err(Error::Policy(found)) = register(
            &mut store,
            "people",
            &csv,
            Policy::parse(&text).expect("parse"),
        ) else {
            panic!("expected a policy refusal");
        };
        assert!(
            found
                .iter()
                .any(|p| p.contains("`citizen` is not in the file")),
            "{found:?}"
        );
        assert!(found.iter().any(|p| p.contains("YYYY-MM-DD")), "{found:?}");
        // Nothing was kept.
        assert!(list(&store).map(|l| l.is_empty()).unwrap_or(false));
    }

    #[test]
    fn refuses_bad_names_and_duplicates() -> Result<()> {
        let (_dir, mut store, csv) = setup();
        assert!(
            register(
                &mut store,
                "Drop Table",
                &csv,
                Policy::parse(&policy(COLUMNS))?
            )
            .is_err()
        );
        register(&mut store, "people", &csv, Policy::parse(&policy(COLUMNS))?)?;
        assert!(register(&mut store, "people", &csv, Policy::parse(&policy(COLUMNS))?).is_err());
        Ok(())
    }
}
