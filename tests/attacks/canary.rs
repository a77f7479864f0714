//! The canary domain: two small tables in which a few persons carry marked values that must
//! never leave the domain, registered in a fresh store with a grant, and a scanner that finds
//! any of those values in bytes an operator, a buyer or a log reader could see.
//!
//! Every canary lives in [`CANARY_TEXTS`] and [`CANARY_NUMBERS`]; nothing else in the data can
//! look like one (ordinary incomes stay below [`ORDINARY_INCOME_MAX`], ordinary texts never
//! contain the tokens). The corpus's SQL and parameters never contain a canary either, so a
//! canary found anywhere came out of the data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Days;
use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tempfile::TempDir;
use veil_runtime::catalog::{self, Policy};
use veil_runtime::grants::{self, Disposition, GrantRequest};
use veil_runtime::principals::{self, Role};
use veil_runtime::store::Store;

use crate::support::OPERATOR;

/// One canary person of `citizens` (and `enterprises`): every value here is unique in the data.
pub(crate) struct CanaryPerson {
    /// `citizens.person_id` / `enterprises.legal_rep_id` (identifier, the privacy unit).
    pub person_id: &'static str,
    /// `citizens.full_name` (identifier).
    pub full_name: &'static str,
    /// `citizens.district` (quasi-identifier without a public key set).
    pub district: &'static str,
    /// `citizens.birth_year`: no ordinary person is born before 1950. Known to the attacker,
    /// so it is not searched for; it lets a query single the canary out.
    pub birth_year: i32,
    /// `citizens.monthly_income` in every year (sensitive, within the bounds).
    pub monthly_income: i64,
    /// `citizens.contribution_months` (sensitive, bounds [0, 480]); with the birth year, a
    /// combination no ordinary person has (not searched for: three digits appear by chance).
    pub contribution_months: i32,
    /// `enterprises.enterprise_name` (identifier) of the canary's enterprise.
    pub enterprise_name: &'static str,
    /// `enterprises.registered_capital` (sensitive, within the bounds).
    pub registered_capital: i64,
}

/// The canary persons. Their texts carry a random-looking token, searched for without regard
/// to case, so `lower(district)` or a substring still counts as a leak.
pub(crate) const CANARIES: [CanaryPerson; 3] = [
    CanaryPerson {
        person_id: "CANARY-PID-QX7KV2",
        full_name: "CANARY-TXT-NAME-WZ4MRB",
        district: "CANARY-TXT-DISTRICT-JH8PLT",
        birth_year: 1911,
        monthly_income: 98_765_431,
        contribution_months: 473,
        enterprise_name: "CANARY-TXT-FIRM-GD5YNC",
        registered_capital: 93_571_426,
    },
    CanaryPerson {
        person_id: "CANARY-PID-FN3BU9",
        full_name: "CANARY-TXT-NAME-KT6QEA",
        district: "CANARY-TXT-DISTRICT-VC2XSH",
        birth_year: 1912,
        monthly_income: 97_531_864,
        contribution_months: 461,
        enterprise_name: "CANARY-TXT-FIRM-RM9WJP",
        registered_capital: 92_468_135,
    },
    CanaryPerson {
        person_id: "CANARY-PID-ZL5DH4",
        full_name: "CANARY-TXT-NAME-PY8GCU",
        district: "CANARY-TXT-DISTRICT-BE3NWQ",
        birth_year: 1913,
        monthly_income: 96_420_753,
        contribution_months: 452,
        enterprise_name: "CANARY-TXT-FIRM-HS7TKX",
        registered_capital: 91_357_024,
    },
];

/// Every canary text, as searched for (case-insensitively).
pub(crate) fn canary_texts() -> Vec<&'static str> {
    let mut texts = Vec::new();
    for c in &CANARIES {
        texts.extend([c.person_id, c.full_name, c.district, c.enterprise_name]);
    }
    // The tokens alone: a leak through `substr`, `replace` or `lower` keeps them.
    for c in &CANARIES {
        for text in [c.person_id, c.full_name, c.district, c.enterprise_name] {
            texts.push(text.rsplit('-').next().expect("a token"));
        }
    }
    texts
}

/// Every canary number (searched for as decimal text and as 8-byte little-endian integers and
/// floats, the way Parquet and Arrow store them).
pub(crate) fn canary_numbers() -> Vec<i64> {
    CANARIES
        .iter()
        .flat_map(|c| [c.monthly_income, c.registered_capital])
        .collect()
}

/// Ordinary incomes and capitals stay below this; canary numbers are far above it.
pub(crate) const ORDINARY_INCOME_MAX: i64 = 60_000;
/// Ordinary persons in `citizens` (each with one to three yearly records).
pub(crate) const ORDINARY_PERSONS: usize = 1_800;
/// Rows per Parquet row group of `citizens`, which is sorted by birth year: small, so a filter
/// on birth year could skip whole row groups if pruning were on.
pub(crate) const ROW_GROUP_ROWS: usize = 256;
/// The name of the provider in both policies (and of its principal).
pub(crate) const PROVIDER: &str = "canary-provider";
/// ε a month of the operator's grant (the most a grant may have).
pub(crate) const GRANT_EPSILON_PER_MONTH: f64 = 100.0;

/// The Shanxi cities, the public key set of `city`.
pub(crate) const CITIES: [&str; 11] = veil_testkit::demo_data::SHANXI_CITIES;
const DISTRICTS: [&str; 8] = [
    "Xiaodian",
    "Yingze",
    "Pingcheng",
    "Chengqu",
    "Luzhou",
    "Yuci",
    "Yanhu",
    "Lishi",
];
const RATINGS: [&str; 4] = ["A", "B", "C", "D"];

pub(crate) const CITIZENS_POLICY: &str = r#"
provider = "canary-provider"
classification_level = 3
sharing = "conditional"
acquired_on = "2026-10-31"
privacy_unit = "person_id"
unit_kind = "person"

[columns.record_id]
role = "identifier"
[columns.person_id]
role = "identifier"
[columns.full_name]
role = "identifier"
[columns.city]
role = "quasi"
keys = ["Taiyuan", "Datong", "Yangquan", "Changzhi", "Jincheng", "Shuozhou", "Jinzhong", "Yuncheng", "Xinzhou", "Linfen", "Lvliang"]
[columns.district]
role = "quasi"
[columns.gender]
role = "quasi"
keys = ["F", "M"]
[columns.birth_year]
role = "quasi"
[columns.year]
role = "public"
# Wide enough to hold the canary numbers, so clamping does not hide them.
[columns.monthly_income]
role = "sensitive"
bounds = [0, 100000000]
[columns.contribution_months]
role = "sensitive"
bounds = [0, 480]
"#;

pub(crate) const ENTERPRISES_POLICY: &str = r#"
provider = "canary-provider"
classification_level = 3
sharing = "conditional"
acquired_on = "2026-10-31"
privacy_unit = "legal_rep_id"
unit_kind = "person"

[columns.enterprise_id]
role = "identifier"
[columns.enterprise_name]
role = "identifier"
[columns.legal_rep_id]
role = "identifier"
[columns.city]
role = "quasi"
keys = ["Taiyuan", "Datong", "Yangquan", "Changzhi", "Jincheng", "Shuozhou", "Jinzhong", "Yuncheng", "Xinzhou", "Linfen", "Lvliang"]
[columns.credit_rating]
role = "quasi"
keys = ["A", "B", "C", "D"]
[columns.registered_capital]
role = "sensitive"
bounds = [0, 100000000]
"#;

/// One row of `citizens`.
struct Citizen {
    person_id: String,
    full_name: String,
    city: &'static str,
    district: String,
    gender: &'static str,
    birth_year: i32,
    year: i32,
    monthly_income: i64,
    contribution_months: i32,
}

/// One row of `enterprises`.
struct Firm {
    name: String,
    legal_rep_id: String,
    city: &'static str,
    credit_rating: &'static str,
    registered_capital: i64,
}

/// Writes `citizens.parquet` (sorted by birth year, in row groups of [`ROW_GROUP_ROWS`]) and
/// `enterprises.parquet` into `dir`, without the person `without` if one is named (the
/// neighbouring dataset); returns the number of `citizens` rows.
pub(crate) fn write_tables(dir: &Path, without: Option<&str>) -> usize {
    std::fs::create_dir_all(dir).expect("raw folder");
    let mut rng = ChaCha8Rng::seed_from_u64(20_261_201);
    let mut citizens = Vec::new();
    let mut firms = Vec::new();
    for n in 0..ORDINARY_PERSONS {
        let person_id = format!("P-{n:06}");
        let city = CITIES[rng.random_range(0..CITIES.len())];
        let district = DISTRICTS[rng.random_range(0..DISTRICTS.len())].to_string();
        let gender = if rng.random_range(0..2) == 0 {
            "F"
        } else {
            "M"
        };
        let birth_year = rng.random_range(1950..=2005);
        let income = rng.random_range(1_000..ORDINARY_INCOME_MAX);
        let records = rng.random_range(1..=3);
        for year in (2026 - records)..=2025 {
            citizens.push(Citizen {
                person_id: person_id.clone(),
                full_name: format!("Person {n}"),
                city,
                district: district.clone(),
                gender,
                birth_year,
                year,
                monthly_income: income + i64::from(year - 2023) * 100,
                contribution_months: rng.random_range(0..=480),
            });
        }
        if rng.random_range(0..4) == 0 {
            firms.push(Firm {
                name: format!("Firm {n}"),
                legal_rep_id: person_id.clone(),
                city,
                credit_rating: RATINGS[rng.random_range(0..RATINGS.len())],
                registered_capital: rng.random_range(1..ORDINARY_INCOME_MAX),
            });
        }
    }
    for (i, c) in CANARIES.iter().enumerate() {
        for year in 2023..=2025 {
            citizens.push(Citizen {
                person_id: c.person_id.into(),
                full_name: c.full_name.into(),
                city: CITIES[i],
                district: c.district.into(),
                gender: if i % 2 == 0 { "F" } else { "M" },
                birth_year: c.birth_year,
                year,
                monthly_income: c.monthly_income,
                contribution_months: c.contribution_months,
            });
        }
        firms.push(Firm {
            name: c.enterprise_name.into(),
            legal_rep_id: c.person_id.into(),
            city: CITIES[i],
            credit_rating: RATINGS[i],
            registered_capital: c.registered_capital,
        });
    }
    if let Some(gone) = without {
        citizens.retain(|c| c.person_id != gone);
        firms.retain(|f| f.legal_rep_id != gone);
    }
    // Sorted by birth year (the canaries, born 1911–1913, come first), so row groups hold
    // disjoint birth-year ranges: the layout that lets statistics prune.
    citizens.sort_by(|a, b| {
        (a.birth_year, &a.person_id, a.year).cmp(&(b.birth_year, &b.person_id, b.year))
    });

    let schema = citizens_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(
                (0..citizens.len()).map(|i| i as i64 + 1),
            )) as ArrayRef,
            strings(citizens.iter().map(|c| c.person_id.as_str())),
            strings(citizens.iter().map(|c| c.full_name.as_str())),
            strings(citizens.iter().map(|c| c.city)),
            strings(citizens.iter().map(|c| c.district.as_str())),
            strings(citizens.iter().map(|c| c.gender)),
            Arc::new(Int32Array::from_iter_values(
                citizens.iter().map(|c| c.birth_year),
            )),
            Arc::new(Int32Array::from_iter_values(
                citizens.iter().map(|c| c.year),
            )),
            Arc::new(Int64Array::from_iter_values(
                citizens.iter().map(|c| c.monthly_income),
            )),
            Arc::new(Int32Array::from_iter_values(
                citizens.iter().map(|c| c.contribution_months),
            )),
        ],
    )
    .expect("citizens batch");
    write_parquet(&dir.join("citizens.parquet"), &batch);

    let batch = RecordBatch::try_new(
        enterprises_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(
                (0..firms.len()).map(|i| i as i64 + 1),
            )) as ArrayRef,
            strings(firms.iter().map(|f| f.name.as_str())),
            strings(firms.iter().map(|f| f.legal_rep_id.as_str())),
            strings(firms.iter().map(|f| f.city)),
            strings(firms.iter().map(|f| f.credit_rating)),
            Arc::new(Int64Array::from_iter_values(
                firms.iter().map(|f| f.registered_capital),
            )),
        ],
    )
    .expect("enterprises batch");
    write_parquet(&dir.join("enterprises.parquet"), &batch);
    citizens.len()
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(values.map(Some).collect::<StringArray>())
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let properties = WriterProperties::builder()
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let file = std::fs::File::create(path).expect("create a table file");
    let mut writer =
        ArrowWriter::try_new(file, batch.schema(), Some(properties)).expect("Parquet writer");
    writer.write(batch).expect("write rows");
    writer.close().expect("finish the file");
}

fn citizens_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("record_id", DataType::Int64, false),
        Field::new("person_id", DataType::Utf8, false),
        Field::new("full_name", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("district", DataType::Utf8, false),
        Field::new("gender", DataType::Utf8, false),
        Field::new("birth_year", DataType::Int32, false),
        Field::new("year", DataType::Int32, false),
        Field::new("monthly_income", DataType::Int64, false),
        Field::new("contribution_months", DataType::Int32, false),
    ]))
}

fn enterprises_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("enterprise_id", DataType::Int64, false),
        Field::new("enterprise_name", DataType::Utf8, false),
        Field::new("legal_rep_id", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("credit_rating", DataType::Utf8, false),
        Field::new("registered_capital", DataType::Int64, false),
    ]))
}

/// API keys of the domain's principals.
pub(crate) struct Keys {
    pub bureau: String,
    pub operator: String,
    pub provider: String,
}

/// A store with `citizens` and `enterprises` registered and granted to [`OPERATOR`].
pub(crate) struct Domain {
    pub dir: TempDir,
    pub keys: Keys,
    /// Rows of `citizens`.
    pub citizens_rows: usize,
}

impl Domain {
    pub(crate) fn new() -> Self {
        Self::build(None)
    }

    /// The same domain without one person (all of their rows, in both tables).
    pub(crate) fn without(person_id: &str) -> Self {
        Self::build(Some(person_id))
    }

    fn build(without: Option<&str>) -> Self {
        crate::support::use_veil_for_jobs();
        let dir = tempfile::tempdir().expect("temporary folder");
        let raw = dir.path().join("raw");
        let citizens_rows = write_tables(&raw, without);
        let root = dir.path().join("store");
        std::fs::create_dir_all(&root).expect("store folder");
        let mut store = Store::init(&root).expect("store");
        for (name, policy) in [
            ("citizens", CITIZENS_POLICY),
            ("enterprises", ENTERPRISES_POLICY),
        ] {
            catalog::register(
                &mut store,
                name,
                &raw.join(format!("{name}.parquet")),
                Policy::parse(policy).expect("policy"),
            )
            .expect("register");
        }
        let today = veil_runtime::clock::today();
        grants::create(
            &mut store,
            GrantRequest {
                operator: OPERATOR.into(),
                datasets: vec!["citizens".into(), "enterprises".into()],
                purpose: "attack corpus".into(),
                valid_from: today - Days::new(30),
                valid_to: today + Days::new(335),
                epsilon_per_month: GRANT_EPSILON_PER_MONTH,
                delta_per_month: 0.5,
                disposition: Disposition::Archive,
                ownership: veil_runtime::grants::Ownership::Operator,
            },
        )
        .expect("grant");
        let mut key = |role, name: &str| {
            principals::add(&mut store, role, name)
                .expect("principal")
                .1
                .expose()
                .to_string()
        };
        let keys = Keys {
            bureau: key(Role::Bureau, "bureau"),
            operator: key(Role::Operator, OPERATOR),
            provider: key(Role::Provider, PROVIDER),
        };
        drop(store);
        Self {
            dir,
            keys,
            citizens_rows,
        }
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub(crate) fn raw(&self) -> PathBuf {
        self.dir.path().join("raw")
    }
}

/// The canaries found in `bytes`, by name; empty when clean.
pub(crate) fn leaks(bytes: &[u8]) -> Vec<String> {
    let lower = bytes.to_ascii_lowercase();
    let mut found = Vec::new();
    for text in canary_texts() {
        if contains(&lower, text.to_ascii_lowercase().as_bytes()) {
            found.push(format!("text `{text}`"));
        }
    }
    for number in canary_numbers() {
        let encodings: [(&str, Vec<u8>); 4] = [
            ("decimal", number.to_string().into_bytes()),
            ("i64", number.to_le_bytes().to_vec()),
            ("f64", (number as f64).to_le_bytes().to_vec()),
            ("i32", (number as i32).to_le_bytes().to_vec()),
        ];
        for (how, needle) in encodings {
            if contains(bytes, &needle) {
                found.push(format!("number {number} ({how})"));
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Fails naming `what` and the canaries in `bytes`.
pub(crate) fn assert_clean(what: &str, bytes: &[u8]) {
    let found = leaks(bytes);
    assert!(found.is_empty(), "canary values in {what}: {found:?}");
}

/// The values of the Parquet file at `path` rendered as text (a compressed page could hide a
/// canary from a byte search), after its raw bytes.
pub(crate) fn parquet_as_text(path: &Path) -> Vec<u8> {
    let mut out = std::fs::read(path).expect("read a Parquet file");
    let file = std::fs::File::open(path).expect("open a Parquet file");
    let reader = match ParquetRecordBatchReaderBuilder::try_new(file).and_then(|b| b.build()) {
        Ok(reader) => reader,
        Err(e) => panic!("{} does not read as Parquet: {e}", path.display()),
    };
    for batch in reader {
        let batch = batch.expect("a Parquet batch");
        out.extend(render(&batch).into_bytes());
    }
    out
}

/// Every value of `batch` as text, row by row.
pub(crate) fn render(batch: &RecordBatch) -> String {
    let options = FormatOptions::default().with_null("NULL");
    let formatters: Vec<ArrayFormatter> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter"))
        .collect();
    let mut out = String::new();
    for row in 0..batch.num_rows() {
        for f in &formatters {
            out.push_str(&f.value(row).to_string());
            out.push('\t');
        }
        out.push('\n');
    }
    out
}

/// Birth years of a `citizens` Parquet file's row groups, as (min, max) from its statistics.
pub(crate) fn row_group_birth_years(path: &Path) -> Vec<(i32, i32)> {
    use datafusion::parquet::file::statistics::Statistics;
    let file = std::fs::File::open(path).expect("open the table");
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("Parquet metadata");
    let column = builder
        .parquet_schema()
        .columns()
        .iter()
        .position(|c| c.name() == "birth_year")
        .expect("a birth_year column");
    builder
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| match rg.column(column).statistics() {
            Some(Statistics::Int32(s)) => (
                *s.min_opt().expect("a minimum"),
                *s.max_opt().expect("a maximum"),
            ),
            other => panic!("birth_year statistics: {other:?}"),
        })
        .collect()
}
