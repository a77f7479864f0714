//! The catalog of in-domain datasets and their policies (数据目录, seed 001 art. 8).
//!
//! A dataset is registered by the bureau from a Parquet or CSV file plus a policy file (TOML).
//! Registration copies the data into the domain store as Parquet, hashes it with BLAKE3, and
//! checks the policy against the file's real schema. The policy is deny-by-default: every
//! column must have a role, and a policy that does not fit the file is refused with one line
//! per problem, naming the column and the fix.
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
//! ```

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::csv::ReaderBuilder as CsvReaderBuilder;
use datafusion::arrow::csv::reader::Format as CsvFormat;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rusqlite::{OptionalExtension, params};

use crate::error::{Error, Result};
use crate::ids::DatasetId;
use crate::store::{Store, query_parsed_rows};
use crate::{audit, clock, files};
pub use veil_gate::policy::*;

/// Longest dataset (table) name, in bytes.
pub const DATASET_NAME_BYTES_MAX: usize = 63;
/// Rows per batch when converting CSV to Parquet.
const CSV_BATCH_ROWS: usize = 65_536;
/// Rows read to infer a CSV file's column types.
const CSV_INFER_ROWS: usize = 10_000;

/// The schema of a dataset's stored Parquet file (read from its footer).
pub fn schema_of(dataset: &Dataset, store: &Store) -> Result<SchemaRef> {
    SourceFormat::Parquet.schema(&store.data_dir().join(&dataset.file))
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

/// Registers a dataset: checks the policy against the file, copies the data into the domain
/// store as Parquet, and records it with an audit entry. Nothing is kept if any step fails.
pub fn register(store: &mut Store, name: &str, source: &Path, policy: Policy) -> Result<Dataset> {
    check_name(name)?;
    if find(store, name)?.is_some() {
        return Err(Error::invalid(format!(
            "a dataset named `{name}` is already registered; choose another name"
        )));
    }
    let format = SourceFormat::of(source)?;
    let schema = format.schema(source)?;
    let problems = policy.check(&schema);
    if !problems.is_empty() {
        return Err(Error::Policy(problems));
    }

    let id = DatasetId::random();
    let relative = format!("{id}/data.parquet");
    let dir = store.data_dir().join(id.as_str());
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    let target = dir.join("data.parquet");
    let copied = format.copy_into(source, &target).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    // Only now is the row count known (a CSV file is counted while it is converted).
    let problems = policy.check_sums(&schema, copied.rows);
    if !problems.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(Error::Policy(problems));
    }

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
    let policy_json = serde_json::to_string(&dataset.policy)
        .map_err(|e| Error::internal(format!("encoding a policy: {e}")))?;
    let result = store.write(|tx| {
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
    });
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(error);
    }
    Ok(dataset)
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

    fn schema(&self, path: &Path) -> Result<SchemaRef> {
        let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        match self {
            Self::Parquet => ParquetRecordBatchReaderBuilder::try_new(file)
                .map(|b| b.schema().clone())
                .map_err(|_| {
                    Error::invalid(format!("{} is not a valid Parquet file", path.display()))
                }),
            Self::Csv => {
                let (schema, _) = CsvFormat::default()
                    .with_header(true)
                    .infer_schema(BufReader::new(file), Some(CSV_INFER_ROWS))
                    .map_err(|_| {
                        Error::invalid(format!(
                            "{} is not a CSV file with a header row",
                            path.display()
                        ))
                    })?;
                Ok(Arc::new(schema))
            }
        }
    }

    /// Copies (Parquet) or converts (CSV) the source into `target`, atomically.
    fn copy_into(&self, source: &Path, target: &Path) -> Result<Copied> {
        let dir = target
            .parent()
            .ok_or_else(|| Error::internal("placing a dataset file"))?;
        let tmp: PathBuf = dir.join(".data.parquet.tmp");
        match self {
            Self::Parquet => {
                let mut input = File::open(source).map_err(|e| Error::io("opening", source, e))?;
                let mut output = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
                std::io::copy(&mut input, &mut output)
                    .and_then(|_| output.sync_all())
                    .map_err(|e| Error::io("copying into", &tmp, e))?;
            }
            Self::Csv => {
                let schema = self.schema(source)?;
                let file = File::open(source).map_err(|e| Error::io("opening", source, e))?;
                let reader = CsvReaderBuilder::new(schema.clone())
                    .with_header(true)
                    .with_batch_size(CSV_BATCH_ROWS)
                    .build(BufReader::new(file))
                    .map_err(|_| {
                        Error::invalid(format!("{} cannot be read as CSV", source.display()))
                    })?;
                let output = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
                let mut writer = ArrowWriter::try_new(output, schema, None)
                    .map_err(|e| Error::internal(format!("starting a Parquet file: {e}")))?;
                for (index, batch) in reader.enumerate() {
                    // The CSV reader's message may quote the offending value, which belongs
                    // to the provider; only the batch position is reported.
                    let batch = batch.map_err(|_| {
                        Error::invalid(format!(
                            "{}: a value in rows {}..{} does not fit its column's inferred type; fix the file or quote the column",
                            source.display(),
                            index * CSV_BATCH_ROWS + 1,
                            (index + 1) * CSV_BATCH_ROWS
                        ))
                    })?;
                    writer
                        .write(&batch)
                        .map_err(|e| Error::internal(format!("writing Parquet: {e}")))?;
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
