//! The allowed expression language is total: a query the gate accepts never fails while it
//! runs, whatever the data.
//!
//! After ε is reserved a failure is an outcome, and an outcome that one person's value can
//! flip is an exact oracle (`1/(CASE WHEN income > x THEN 0 ELSE 1 END)`). So every function
//! and operator on the allow-list (`gate::allow`) must answer NULL rather than fail, and stay
//! bounded in size. This test writes a table of hostile values — NULLs, empty and long text,
//! multi-byte characters, `%` and `_`, `i64::MIN`/`MAX`, zero, NaN, ±∞, −0.0, far dates —
//! then runs random expressions over the allowed grammar through the real gate
//! (`gate::analyse`, `gate::plan_noise`, `gate::release`) in group keys, filters and aggregate
//! arguments. Every query is either refused before it runs, naming a rule, or released; none
//! may fail or panic. `VEIL_EXPRESSIONS_FUZZ` sets how many queries run (default
//! [`QUERIES_DEFAULT`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use crate::analysis::{self, Tables};
use crate::bounding::Limits;
use crate::budget::Reserved;
use crate::ids::DatasetId;
use crate::noise::Source;
use crate::policy::{Dataset, Policy};
use crate::release::{self as gate, ReleaseConfig};
use crate::sandbox::SandboxBuilder;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use futures::FutureExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Random queries a CI run checks.
const QUERIES_DEFAULT: usize = 800;
/// Rows and persons of the hostile table.
const ROWS: usize = 600;
const PERSONS: i64 = 150;
/// Deepest expression nesting.
const DEPTH_MAX: u32 = 3;

const POLICY: &str = r#"
provider = "tests"
classification_level = 2
sharing = "conditional"
acquired_on = "2026-11-01"
privacy_unit = "person_id"
unit_kind = "person"
[columns.person_id]
role = "identifier"
[columns.t1]
role = "quasi"
[columns.t2]
role = "quasi"
[columns.i1]
role = "quasi"
[columns.i2]
role = "quasi"
[columns.f1]
role = "quasi"
[columns.b]
role = "quasi"
[columns.d]
role = "quasi"
[columns.amount]
role = "sensitive"
bounds = [0, 1000]
"#;

#[tokio::test]
async fn allowed_expressions_never_fail_while_they_run() {
    let count = std::env::var("VEIL_EXPRESSIONS_FUZZ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(QUERIES_DEFAULT);
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let source = dir.path().join("hostile.parquet");
    write_hostile_table(&source, &mut rng);
    // Registered as the catalog would: the policy fits the file's schema.
    let policy = Policy::parse(POLICY).expect("policy");
    let schema =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(&source).expect("the hostile table"),
        )
        .expect("a Parquet file")
        .schema()
        .clone();
    assert_eq!(policy.check(&schema), Vec::<String>::new());
    let dataset = Dataset {
        id: DatasetId::new("ds-hostile"),
        name: "hostile".into(),
        policy,
        file: "hostile.parquet".into(),
        rows: ROWS as u64,
        bytes: std::fs::metadata(&source).expect("size").len(),
        content_blake3: String::new(),
        registered_at: String::new(),
    };
    let mut tables: Tables = Tables::new();
    tables.insert(dataset.name.clone(), dataset.clone());
    let config = ReleaseConfig {
        epsilon: 1.0,
        delta: 1e-6,
        k: 2,
        limits: Limits {
            max_groups: 3,
            max_rows: 3,
        },
        units_hint: 0,
        noise: Source::OpenDp,
        mechanism: crate::terms::Mechanism::Laplace,
    };

    let mut released = 0;
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed: Vec<String> = Vec::new();
    for _ in 0..count {
        let sql = random_query(&mut rng);
        let sandbox = SandboxBuilder::new(dir.path())
            .table(dataset.name.clone(), dataset.file.clone())
            .build()
            .await
            .expect("a sandbox");
        let plan = match sandbox.plan_query(&sql, &[]).await {
            Ok(plan) => plan,
            Err(e) => {
                *refused
                    .entry(format!("planning: {}", first_words(&e.to_string())))
                    .or_default() += 1;
                continue;
            }
        };
        let analysis = match analysis::analyse(&plan, &tables) {
            Ok(analysis) => analysis,
            Err(refusal) => {
                let codes = refusal.codes();
                assert!(!codes.is_empty(), "a refusal names its rule: {sql}");
                *refused.entry(codes.join(",")).or_default() += 1;
                continue;
            }
        };
        let noise = match gate::plan_noise(&analysis, &config) {
            Ok(noise) => noise,
            Err(refusal) => {
                *refused.entry(refusal.codes().join(",")).or_default() += 1;
                continue;
            }
        };
        let reserved = Reserved::in_child(
            "job-expressions".into(),
            crate::terms::MicroEpsilon(1_000_000),
            crate::terms::PicoDelta(1),
        );
        let run = gate::release(reserved, &sandbox, &analysis, config, &noise);
        match AssertUnwindSafe(run).catch_unwind().await {
            Ok(Ok(_)) => released += 1,
            Ok(Err((failure, _))) => failed.push(format!("{sql}\n    -> {failure}")),
            Err(_) => failed.push(format!("{sql}\n    -> panicked")),
        }
    }
    eprintln!("released {released}, refused {refused:?}");
    assert!(
        failed.is_empty(),
        "{} accepted queries failed while they ran:\n{}",
        failed.len(),
        failed.join("\n")
    );
    // Most random queries must get through, or the test checks little.
    assert!(
        released * 2 >= count,
        "only {released} of {count} random queries were released: {refused:?}"
    );
}

fn first_words(text: &str) -> String {
    text.split_whitespace()
        .take(6)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A table of values chosen to break functions: NULLs, empty and long text, multi-byte
/// characters, LIKE's wildcards, integer extremes, zero, NaN, infinities, −0.0, far dates.
fn write_hostile_table(path: &std::path::Path, rng: &mut ChaCha8Rng) {
    let texts = [
        "",
        " ",
        "a",
        "abc",
        "ABC",
        "100%",
        "_x_",
        "0",
        "-1",
        "9223372036854775807",
        "1e400",
        "NaN",
        "2026-02-30",
        "太原市",
        "é\u{301}",
        "\u{0}",
        "🙂🙂🙂",
        "  padded  ",
    ];
    let long = "长".repeat(300);
    let ints = [
        0,
        1,
        -1,
        2,
        7,
        i64::MAX,
        i64::MIN,
        i64::MAX - 1,
        i64::MIN + 1,
        1 << 31,
        -(1 << 31),
        1 << 32,
        1_000_000_007,
    ];
    let floats = [
        0.0,
        -0.0,
        1.0,
        -1.5,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        1e-300,
        123.456,
    ];
    let maybe = |rng: &mut ChaCha8Rng| rng.random_range(0..8) != 0;
    let text = |rng: &mut ChaCha8Rng| -> Option<String> {
        maybe(rng).then(|| match rng.random_range(0..10) {
            0 => long.clone(),
            _ => texts[rng.random_range(0..texts.len())].to_string(),
        })
    };
    let mut t1 = Vec::new();
    let mut t2 = Vec::new();
    let mut i1 = Vec::new();
    let mut i2 = Vec::new();
    let mut f1 = Vec::new();
    let mut b = Vec::new();
    let mut d = Vec::new();
    let mut amount = Vec::new();
    let mut person = Vec::new();
    for _ in 0..ROWS {
        person.push(rng.random_range(1..=PERSONS));
        t1.push(text(rng));
        t2.push(text(rng));
        i1.push(maybe(rng).then(|| ints[rng.random_range(0..ints.len())]));
        i2.push(maybe(rng).then(|| ints[rng.random_range(0..ints.len())]));
        f1.push(maybe(rng).then(|| floats[rng.random_range(0..floats.len())]));
        b.push(maybe(rng).then(|| rng.random_range(0..2) == 1));
        d.push(maybe(rng).then(|| {
            [0, 1, -719_162, 2_932_896, 20_000, i32::MAX, i32::MIN][rng.random_range(0..7)]
        }));
        amount.push(maybe(rng).then(|| rng.random_range(-5_000..5_000)));
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("person_id", Arc::new(Int64Array::from(person))),
        ("t1", Arc::new(StringArray::from(t1))),
        ("t2", Arc::new(StringArray::from(t2))),
        ("i1", Arc::new(Int64Array::from(i1))),
        ("i2", Arc::new(Int64Array::from(i2))),
        ("f1", Arc::new(Float64Array::from(f1))),
        ("b", Arc::new(BooleanArray::from(b))),
        ("d", Arc::new(Date32Array::from(d))),
        ("amount", Arc::new(Int64Array::from(amount))),
    ];
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), *name != "person_id"))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .expect("a hostile batch");
    let mut writer =
        ArrowWriter::try_new(File::create(path).expect("a file"), schema, None).expect("a writer");
    writer.write(&batch).expect("written");
    writer.close().expect("closed");
}

/// The expression types the generator writes.
#[derive(Clone, Copy)]
enum Ty {
    Text,
    Int,
    Float,
    Bool,
}

/// One random query: the expression in a group key, a filter, or an aggregate's argument.
fn random_query(rng: &mut ChaCha8Rng) -> String {
    match rng.random_range(0..4) {
        0 | 1 => {
            let ty = [Ty::Text, Ty::Int, Ty::Float, Ty::Bool][rng.random_range(0..4)];
            let key = expr(rng, ty, DEPTH_MAX);
            format!(
                "SELECT {key} AS k, COUNT(DISTINCT person_id) AS n, SUM(amount) AS s \
                 FROM hostile GROUP BY {key}"
            )
        }
        2 => {
            let filter = expr(rng, Ty::Bool, DEPTH_MAX);
            format!("SELECT COUNT(*) AS n, AVG(amount) AS a FROM hostile WHERE {filter}")
        }
        _ => {
            let condition = expr(rng, Ty::Bool, DEPTH_MAX - 1);
            format!(
                "SELECT COUNT(DISTINCT person_id) AS n, \
                 SUM(CASE WHEN {condition} THEN amount ELSE 0 END) AS s FROM hostile"
            )
        }
    }
}

fn expr(rng: &mut ChaCha8Rng, ty: Ty, depth: u32) -> String {
    if depth == 0 || rng.random_range(0..4) == 0 {
        return leaf(rng, ty);
    }
    let d = depth - 1;
    match ty {
        Ty::Text => match rng.random_range(0..14) {
            0 => format!("lower({})", expr(rng, Ty::Text, d)),
            1 => format!("upper({})", expr(rng, Ty::Text, d)),
            2 => format!("trim({})", expr(rng, Ty::Text, d)),
            3 => format!("ltrim({}, 'a ')", expr(rng, Ty::Text, d)),
            4 => format!(
                "concat({}, {})",
                expr(rng, Ty::Text, d),
                expr(rng, Ty::Text, d)
            ),
            5 => format!("{} || {}", expr(rng, Ty::Text, d), expr(rng, Ty::Text, d)),
            6 => format!(
                "substr({}, {}, {})",
                expr(rng, Ty::Text, d),
                [-3, 0, 1, 2, 2_147_483_647, -2_147_483_648][rng.random_range(0..6)],
                [0, 1, 5, 2_147_483_647][rng.random_range(0..4)]
            ),
            7 => format!(
                "left({}, {})",
                expr(rng, Ty::Text, d),
                [-5, 0, 3, 2_147_483_647][rng.random_range(0..4)]
            ),
            8 => format!(
                "right({}, {})",
                expr(rng, Ty::Text, d),
                [-5, 0, 3, -2_147_483_647][rng.random_range(0..4)]
            ),
            9 => format!("replace({}, 'a', 'xyz')", expr(rng, Ty::Text, d)),
            10 => format!("CAST({} AS VARCHAR)", expr(rng, Ty::Int, d)),
            11 => format!("CAST({} AS VARCHAR)", expr(rng, Ty::Float, d)),
            12 => format!(
                "CASE WHEN {} THEN {} ELSE {} END",
                expr(rng, Ty::Bool, d),
                expr(rng, Ty::Text, d),
                expr(rng, Ty::Text, d)
            ),
            _ => format!("coalesce(nullif({}, 'a'), 'z')", expr(rng, Ty::Text, d)),
        },
        Ty::Int => match rng.random_range(0..12) {
            0 => format!("({} + {})", expr(rng, Ty::Int, d), expr(rng, Ty::Int, d)),
            1 => format!("({} - {})", expr(rng, Ty::Int, d), expr(rng, Ty::Int, d)),
            2 => format!("({} * {})", expr(rng, Ty::Int, d), expr(rng, Ty::Int, d)),
            3 => format!("({} / {})", expr(rng, Ty::Int, d), expr(rng, Ty::Int, d)),
            4 => format!("({} % {})", expr(rng, Ty::Int, d), expr(rng, Ty::Int, d)),
            5 => format!("(-{})", expr(rng, Ty::Int, d)),
            6 => format!("length({})", expr(rng, Ty::Text, d)),
            7 => format!("octet_length({})", expr(rng, Ty::Text, d)),
            8 => format!("strpos({}, 'a')", expr(rng, Ty::Text, d)),
            9 => format!("CAST({} AS BIGINT)", expr(rng, Ty::Text, d)),
            10 => format!("CAST({} AS BIGINT)", expr(rng, Ty::Float, d)),
            _ => format!(
                "CASE WHEN {} THEN {} ELSE {} END",
                expr(rng, Ty::Bool, d),
                expr(rng, Ty::Int, d),
                expr(rng, Ty::Int, d)
            ),
        },
        Ty::Float => match rng.random_range(0..10) {
            0 => format!(
                "({} + {})",
                expr(rng, Ty::Float, d),
                expr(rng, Ty::Float, d)
            ),
            1 => format!(
                "({} * {})",
                expr(rng, Ty::Float, d),
                expr(rng, Ty::Float, d)
            ),
            2 => format!(
                "({} / {})",
                expr(rng, Ty::Float, d),
                expr(rng, Ty::Float, d)
            ),
            3 => format!(
                "({} % {})",
                expr(rng, Ty::Float, d),
                expr(rng, Ty::Float, d)
            ),
            4 => format!("abs({})", expr(rng, Ty::Float, d)),
            5 => format!("floor({})", expr(rng, Ty::Float, d)),
            6 => format!(
                "round({}, {})",
                expr(rng, Ty::Float, d),
                [-15, -1, 0, 2, 15][rng.random_range(0..5)]
            ),
            7 => format!("CAST({} AS DOUBLE)", expr(rng, Ty::Int, d)),
            8 => format!("CAST({} AS DOUBLE)", expr(rng, Ty::Text, d)),
            _ => format!("ceil({})", expr(rng, Ty::Float, d)),
        },
        Ty::Bool => match rng.random_range(0..14) {
            0 => format!("{} < {}", expr(rng, Ty::Int, d), expr(rng, Ty::Int, d)),
            1 => format!("{} = {}", expr(rng, Ty::Text, d), expr(rng, Ty::Text, d)),
            2 => format!("{} >= {}", expr(rng, Ty::Float, d), expr(rng, Ty::Float, d)),
            3 => format!(
                "{} LIKE '{}'",
                expr(rng, Ty::Text, d),
                ["a%", "%\u{592a}%", "_", "%%", ""][rng.random_range(0..5)]
            ),
            4 => format!("{} ILIKE '%A_'", expr(rng, Ty::Text, d)),
            5 => format!(
                "{} BETWEEN {} AND {}",
                expr(rng, Ty::Int, d),
                expr(rng, Ty::Int, d),
                expr(rng, Ty::Int, d)
            ),
            6 => format!(
                "{} IN (0, 1, -1, 9223372036854775807)",
                expr(rng, Ty::Int, d)
            ),
            7 => format!(
                "({} AND {})",
                expr(rng, Ty::Bool, d),
                expr(rng, Ty::Bool, d)
            ),
            8 => format!("({} OR {})", expr(rng, Ty::Bool, d), expr(rng, Ty::Bool, d)),
            9 => format!("NOT {}", expr(rng, Ty::Bool, d)),
            10 => format!("{} IS NULL", expr(rng, Ty::Text, d)),
            11 => format!("starts_with({}, 'a')", expr(rng, Ty::Text, d)),
            12 => format!(
                "{} IS DISTINCT FROM {}",
                expr(rng, Ty::Int, d),
                expr(rng, Ty::Int, d)
            ),
            _ => format!("date_part('year', d) > {}", expr(rng, Ty::Int, d)),
        },
    }
}

fn leaf(rng: &mut ChaCha8Rng, ty: Ty) -> String {
    match ty {
        Ty::Text => ["t1", "t2", "'x'", "''", "'%'"][rng.random_range(0..5)].to_string(),
        Ty::Int => {
            ["i1", "i2", "0", "-1", "9223372036854775807", "3"][rng.random_range(0..6)].to_string()
        }
        Ty::Float => {
            ["f1", "0.0", "-0.0", "1e308", "CAST(i1 AS DOUBLE)"][rng.random_range(0..5)].to_string()
        }
        Ty::Bool => ["b", "TRUE", "i1 > i2", "t1 = t2"][rng.random_range(0..4)].to_string(),
    }
}

/// The README's allow-list is the code's (`gate::allow::readme_section`), between the markers
/// below; `VEIL_BLESS=1` rewrites it.
#[test]
fn the_readme_lists_exactly_the_allowed_expressions() {
    const START: &str =
        "<!-- allow-list: generated from gate::allow; VEIL_BLESS=1 rewrites it -->\n";
    const END: &str = "<!-- allow-list end -->";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let (before, rest) = readme
        .split_once(START)
        .expect("README.md has the allow-list's start marker");
    let (listed, after) = rest
        .split_once(END)
        .expect("README.md has the allow-list's end marker");
    let wanted = crate::allow::readme_section();
    if std::env::var("VEIL_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, format!("{before}{START}{wanted}{END}{after}"))
            .expect("README.md rewritten");
        return;
    }
    assert_eq!(
        listed, wanted,
        "README.md's allow-list differs from gate::allow; rerun with VEIL_BLESS=1"
    );
}
