//! Benchmark: how close Veil's released figures are to the truth, and whether each cell's
//! stated 95 % interval holds it — on the DP aggregate benchmark's table and job.
//!
//! ```text
//! cargo run --release -p veil-examples --example bench_utility -- [ROWS] [RUNS]
//! ```
//!
//! ROWS defaults to 10,000,000 social-insurance records (the table `bench_dp_aggregate`
//! generates into `target/bench-data/ROWS/`, in person order with integer ids), RUNS to 20.
//! The job is the DP aggregate benchmark's, approved the same way: per city and gender,
//! distinct persons and the average clamped income, ε = 1, δ = 10⁻⁶, k = 10, at most 1 group
//! and 3 rows per person. Each run is a whole job through the domain (`jobs::run`, as
//! `bench_dp_aggregate` runs it; each with another value of its `since` parameter, so none
//! reuses an earlier product), and its product's `result.parquet` is read back as a buyer
//! would read it. The true answer is the same SQL in raw DataFusion on the same file.
//!
//! Per run: the mean over the released groups of the relative error |released − true| / true,
//! for the counts and for the averages. Over all runs: the mean of those, and the share of
//! cells whose true value lies inside the cell's released 95 % interval (the product's
//! `<column>_ci_low` / `<column>_ci_high` columns; a product without them is said so, and
//! the coverage is then not measured). A marked cell (NULL: a public key below the noisy
//! threshold) is counted apart, not scored.
//!
//! The runs draw real noise, as a product does: the seeded noise of Veil's tests exists only
//! with the `test-noise` feature, which this crate must not enable (Cargo would unify the
//! feature into the `veil` binary of a workspace build). `examples/utility/run_opendp.sh`
//! runs the same query through OpenDP's own Polars API for the comparison in BENCHMARKS.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use veil_runtime::catalog::{self, Policy};
use veil_runtime::grants::{self, Disposition, GrantRequest};
use veil_runtime::jobs::{self, JobOutcome, JobRequest};
use veil_runtime::products;
use veil_runtime::store::Store;
use veil_runtime::templates::{self, ApprovalRequest, ParamSpec, ParamType, TemplateSpec};
use veil_testkit::demo_data;

const POLICY: &str = include_str!("policies/social_insurance.toml");
const OPERATOR: &str = "bench-operator";
/// The DP aggregate benchmark's template, word for word.
const VEIL_SQL: &str = "SELECT city, gender, COUNT(DISTINCT person_id) AS persons, AVG(monthly_income) AS avg_income \
     FROM social_insurance WHERE year >= :since GROUP BY city, gender";
/// The true answer: the same query without noise, the income clamped to the policy's bounds.
const TRUE_SQL: &str = "SELECT city, gender, CAST(COUNT(DISTINCT person_id) AS DOUBLE) AS persons, \
     AVG(CAST(CASE WHEN monthly_income < 0 THEN 0 WHEN monthly_income > 100000 THEN 100000 ELSE monthly_income END AS DOUBLE)) AS avg_income \
     FROM social_insurance GROUP BY city, gender";
/// The most rows and (city, gender) groups any one person has: if they exceed the approval's
/// 3 rows and 1 group, the gate's bounding drops contributions and its figures estimate less
/// than `TRUE_SQL`'s (a bias this benchmark would then wrongly count as noise).
///
/// Written with plain GROUP BYs: a `COUNT(DISTINCT …)` per person keeps a hash set per person,
/// over 20 GB at 10M rows.
const BOUNDS_SQL: &str = "SELECT MAX(rows) AS rows_max, MAX(groups) AS groups_max FROM \
     (SELECT person_id, SUM(rows) AS rows, COUNT(*) AS groups FROM \
       (SELECT person_id, city, gender, COUNT(*) AS rows FROM social_insurance \
        GROUP BY person_id, city, gender) \
      GROUP BY person_id)";
/// The approval's contribution bounds, as in `bench_dp_aggregate`.
const MAX_GROUPS: u32 = 1;
const MAX_ROWS: u32 = 3;
/// The two released measures scored, by output column.
const MEASURES: [&str; 2] = ["persons", "avg_income"];
/// Fewer runs than this give a figure the issue does not accept; the program still runs them
/// (for a quick look) and says so.
const RUNS_MIN: usize = 20;

type BoxError = Box<dyn std::error::Error>;

/// A group's key: city and gender.
type Key = (String, String);

/// The generator's file of `rows` records, in person order with integer ids (the table
/// `bench_dp_aggregate` calls int-unit).
fn generated_file(rows: u64) -> Result<PathBuf, BoxError> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench-data")
        .join(rows.to_string());
    let file = dir.join("social_insurance.parquet");
    if !file.exists() {
        eprintln!(
            "generating {rows} rows of demo data in {} (once)…",
            dir.display()
        );
        demo_data::write_demo_data(rows, &dir, demo_data::DEMO_SEED)?;
    }
    Ok(file)
}

/// The machine's load averages over 1, 5 and 15 minutes, as `/proc/loadavg` gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A column of `batch` as text, or an error naming it.
fn text_column(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, BoxError> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| format!("the result has no `{name}` column"))?;
    let text = cast(column, &DataType::Utf8)?;
    Ok(text
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

/// A numeric column of `batch` as `f64`s (`None` where NULL), or `None` if it is absent.
fn number_column(batch: &RecordBatch, name: &str) -> Result<Option<Vec<Option<f64>>>, BoxError> {
    let Some(column) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let numbers = cast(column, &DataType::Float64)?;
    let numbers = numbers.as_primitive::<Float64Type>();
    Ok(Some(
        (0..numbers.len())
            .map(|i| numbers.is_valid(i).then(|| numbers.value(i)))
            .collect(),
    ))
}

/// The true answer by group, and the most rows and groups a person has.
async fn truth(file: &Path) -> Result<(BTreeMap<Key, [f64; 2]>, i64, i64), BoxError> {
    let ctx = SessionContext::new();
    ctx.register_parquet(
        "social_insurance",
        file.to_str().ok_or("path is not UTF-8")?,
        ParquetReadOptions::default(),
    )
    .await?;
    let mut answer = BTreeMap::new();
    for batch in ctx.sql(TRUE_SQL).await?.collect().await? {
        let cities = text_column(&batch, "city")?;
        let genders = text_column(&batch, "gender")?;
        let persons = number_column(&batch, "persons")?.ok_or("no persons column")?;
        let incomes = number_column(&batch, "avg_income")?.ok_or("no avg_income column")?;
        for i in 0..batch.num_rows() {
            let (Some(city), Some(gender), Some(p), Some(a)) =
                (&cities[i], &genders[i], persons[i], incomes[i])
            else {
                return Err("the true answer has a NULL cell".into());
            };
            answer.insert((city.clone(), gender.clone()), [p, a]);
        }
    }
    let bounds = ctx.sql(BOUNDS_SQL).await?.collect().await?;
    let batch = bounds.first().ok_or("no answer to the bounds query")?;
    let max = |name: &str| -> Result<i64, BoxError> {
        let values = number_column(batch, name)?.ok_or("no bounds column")?;
        Ok(values.first().copied().flatten().unwrap_or(0.0) as i64)
    };
    Ok((answer, max("rows_max")?, max("groups_max")?))
}

/// A store with the table registered, the operator's grant and the approved template.
fn set_up(dir: &Path, file: &Path, runs: usize) -> Result<(Store, String), BoxError> {
    let mut store = Store::init(&dir.join("store"))?;
    catalog::register(&mut store, "social_insurance", file, Policy::parse(POLICY)?)?;
    grants::create(
        &mut store,
        GrantRequest {
            operator: OPERATOR.into(),
            datasets: vec!["social_insurance".into()],
            purpose: "benchmark".into(),
            valid_from: veil_runtime::clock::today(),
            valid_to: veil_runtime::clock::today() + chrono::Days::new(30),
            // ε 1 per run, with room to spare for the warm-up and a month's other use.
            epsilon_per_month: (runs as f64 + 10.0).max(100.0),
            delta_per_month: 0.5,
            disposition: Disposition::Archive,
            ownership: veil_runtime::grants::Ownership::Operator,
        },
    )?;
    let template = templates::submit(
        &mut store,
        OPERATOR,
        TemplateSpec {
            name: "bench".into(),
            sql: VEIL_SQL.into(),
            params: vec![ParamSpec {
                name: "since".into(),
                kind: ParamType::Integer,
                allowed: None,
            }],
            wasm: None,
            versions: Default::default(),
        },
    )?;
    templates::approve(
        &mut store,
        template.id.as_str(),
        ApprovalRequest {
            epsilon: 1.0,
            delta: 1e-6,
            k: 10,
            max_groups: MAX_GROUPS,
            max_rows: MAX_ROWS,
            price_per_run_fen: 0,
            memory_mib: 4096,
            ..ApprovalRequest::default()
        },
    )?;
    Ok((store, template.id.to_string()))
}

/// The first `noise_scales` array anywhere in a manifest's JSON: what each draw's scale was.
fn noise_scales(value: &serde_json::Value) -> Option<&serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map
            .get("noise_scales")
            .or_else(|| map.values().find_map(noise_scales)),
        serde_json::Value::Array(items) => items.iter().find_map(noise_scales),
        _ => None,
    }
}

/// What one product says, scored against the truth.
#[derive(Default)]
struct Score {
    /// Per measure: the sum of relative errors over the released cells, and how many.
    error_sum: [f64; 2],
    released: [usize; 2],
    /// Per measure: marked (NULL) cells.
    marked: [usize; 2],
    /// Per measure: cells with an interval, and those whose interval holds the true value;
    /// `None` when the product has no interval columns for the measure.
    with_interval: [Option<usize>; 2],
    inside: [usize; 2],
}

/// Reads one product's `result.parquet` and scores it.
fn score(product_dir: &Path, truth: &BTreeMap<Key, [f64; 2]>) -> Result<Score, BoxError> {
    let file = std::fs::File::open(product_dir.join(products::RESULT_PARQUET))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut score = Score::default();
    let mut groups = 0;
    for batch in reader {
        let batch = batch?;
        groups += batch.num_rows();
        let cities = text_column(&batch, "city")?;
        let genders = text_column(&batch, "gender")?;
        for (m, measure) in MEASURES.iter().enumerate() {
            let values = number_column(&batch, measure)?
                .ok_or_else(|| format!("the result has no `{measure}` column"))?;
            let low = number_column(&batch, &format!("{measure}_ci_low"))?;
            let high = number_column(&batch, &format!("{measure}_ci_high"))?;
            for i in 0..batch.num_rows() {
                let (Some(city), Some(gender)) = (&cities[i], &genders[i]) else {
                    return Err("a released group has a NULL key".into());
                };
                let true_value = truth
                    .get(&(city.clone(), gender.clone()))
                    .ok_or("a released group has no rows in the table")?[m];
                let Some(value) = values[i] else {
                    score.marked[m] += 1;
                    continue;
                };
                score.error_sum[m] += (value - true_value).abs() / true_value;
                score.released[m] += 1;
                if let (Some(low), Some(high)) = (&low, &high) {
                    let counted = score.with_interval[m].get_or_insert(0);
                    if let (Some(lo), Some(hi)) = (low[i], high[i]) {
                        *counted += 1;
                        if lo <= true_value && true_value <= hi {
                            score.inside[m] += 1;
                        }
                    }
                }
            }
        }
    }
    if groups != truth.len() {
        return Err(format!(
            "the product has {groups} groups; the table has {} (11 cities × 2 genders)",
            truth.len()
        )
        .into());
    }
    Ok(score)
}

fn main() -> Result<(), BoxError> {
    // Jobs run in a child process of this very program (see `veil_gate::job`).
    veil_gate::job::serve_child_if_asked();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args.next().map_or(Ok(10_000_000), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(RUNS_MIN), |a| a.parse())?;
    if runs == 0 {
        return Err("RUNS must be at least 1".into());
    }
    let file = generated_file(rows)?;
    let (truth, rows_max, groups_max) = truth(&file).await?;
    println!(
        "file: {} ({} groups; a person has at most {rows_max} rows and {groups_max} group(s))",
        file.display(),
        truth.len()
    );
    if rows_max > i64::from(MAX_ROWS) || groups_max > i64::from(MAX_GROUPS) {
        eprintln!(
            "warning: the approval keeps {MAX_ROWS} rows in {MAX_GROUPS} group per person; \
             the bounding drops contributions of this table, so part of the error below is bias"
        );
    }

    let dir = tempfile::tempdir()?;
    let (mut store, template) = set_up(dir.path(), &file, runs)?;
    let load_before = load_average();
    let mut per_run: Vec<[f64; 2]> = Vec::with_capacity(runs);
    let mut total = Score::default();
    let mut job_seconds = Vec::with_capacity(runs);
    for run in 0..runs {
        // Another `since` each run (every row matches): no run reuses an earlier product.
        let since = 2000 - run as i64;
        let started = Instant::now();
        let outcome = jobs::run(
            &mut store,
            JobRequest {
                operator: OPERATOR.into(),
                template: template.clone(),
                params: vec![("since".into(), since.to_string())],
                grant: None,
            },
        )
        .await?;
        job_seconds.push(started.elapsed().as_secs_f64());
        let product_dir = match outcome {
            JobOutcome::Released {
                dir, reused: false, ..
            } => dir,
            other => return Err(format!("run {run} did not release afresh: {other:?}").into()),
        };
        if run == 0 {
            let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(
                product_dir.join(veil_sdk::manifest::MANIFEST_FILE),
            )?)?;
            if let Some(scales) = noise_scales(&manifest) {
                println!("noise scales (run 0's manifest): {scales}");
            }
        }
        let s = score(&product_dir, &truth)?;
        let mean = |m: usize| s.error_sum[m] / s.released[m].max(1) as f64;
        per_run.push([mean(0), mean(1)]);
        eprintln!(
            "run {run}: {:.2} s; mean relative error: counts {:.6} %, averages {:.6} %",
            job_seconds[run],
            100.0 * mean(0),
            100.0 * mean(1)
        );
        for m in 0..2 {
            total.marked[m] += s.marked[m];
            total.released[m] += s.released[m];
            total.inside[m] += s.inside[m];
            if let Some(n) = s.with_interval[m] {
                *total.with_interval[m].get_or_insert(0) += n;
            }
        }
    }
    let load_after = load_average();

    let mean = |m: usize| per_run.iter().map(|r| r[m]).sum::<f64>() / runs as f64;
    let range = |m: usize| {
        let (lo, hi) = per_run.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
            (lo.min(r[m]), hi.max(r[m]))
        });
        format!("runs {:.5} %–{:.5} %", 100.0 * lo, 100.0 * hi)
    };
    job_seconds.sort_by(f64::total_cmp);
    println!(
        "rows: {rows}, runs: {runs}, ε = 1, δ = 1e-6; median job {:.2} s; load average (1, 5, 15 min): before {load_before}, after {load_after}",
        job_seconds[job_seconds.len() / 2]
    );
    if runs < RUNS_MIN {
        println!("note: fewer than {RUNS_MIN} runs; not a figure to record");
    }
    for (marked, measure) in total.marked.iter().zip(MEASURES) {
        if *marked > 0 {
            println!("note: {marked} `{measure}` cells were marked (NULL) and not scored");
        }
    }
    let coverage = |m: usize| match total.with_interval[m] {
        Some(n) if n > 0 => format!("{:.1} % of {n}", 100.0 * total.inside[m] as f64 / n as f64),
        _ => "not measured".to_string(),
    };
    println!(
        "| side | counts: mean relative error | averages: mean relative error | cells inside their 95 % interval |"
    );
    println!("|---|---|---|---|");
    println!(
        "| Veil | {:.5} % ({}) | {:.5} % ({}) | counts {}, averages {} |",
        100.0 * mean(0),
        range(0),
        100.0 * mean(1),
        range(1),
        coverage(0),
        coverage(1)
    );
    let missing: Vec<&str> = (0..2)
        .filter(|&m| total.with_interval[m].is_none())
        .map(|m| MEASURES[m])
        .collect();
    if !missing.is_empty() {
        println!(
            "coverage not measured for {}: the product has no `<column>_ci_low` / `<column>_ci_high` \
             columns for them (this build does not release per-cell intervals yet)",
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        );
    }
    Ok(())
}
