//! Benchmark: Veil's DP aggregate job end to end against the same aggregation in raw
//! DataFusion, on the same Parquet file, in the same process, on four tables.
//!
//! ```text
//! cargo run --release -p veil-examples --example bench_dp_aggregate -- [ROWS] [RUNS] [TABLES]
//! ```
//!
//! ROWS defaults to 10,000,000 social-insurance records (generated once, deterministically,
//! into `target/bench-data/ROWS/`), RUNS to 5. The same records are stored four ways, because
//! the gate's fold is sensitive to both: person ids as integers or as 18-character strings
//! (the length of a resident identity number), and rows in person order (as the generator
//! writes them) or shuffled by a fixed permutation of the record id. TABLES picks some of
//! them by name (comma-separated, e.g. `int-unit,text-random`); all four by default.
//!
//! The job is "per city and gender: distinct persons and average clamped income". Veil's
//! figure is the whole job: grant and template checks, planning, the gate's analysis, budget
//! reservation, the bounded query in the job's child process, k-anonymity, OpenDP noise,
//! writing and signing the product, the meter record and audit entries. Raw DataFusion runs
//! the equivalent SQL (`COUNT(DISTINCT person_id)`, `AVG` of the clamped income) with the
//! same parallelism. Runs alternate between the two to share the machine's state fairly; per
//! table the medians and their ratio are printed, with the peak memory each reserved from
//! DataFusion's memory pool, and the machine's load average before and after.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use veil_gate::sandbox::PeakTrackingPool;
use veil_runtime::catalog::{self, Policy};
use veil_runtime::jobs::{self, JobOutcome, JobRequest};
use veil_runtime::metering;
use veil_runtime::store::Store;
use veil_testkit::demo_data;

const POLICY: &str = include_str!("policies/social_insurance.toml");
const OPERATOR: &str = veil_examples::BENCH_OPERATOR;
const VEIL_SQL: &str = "SELECT city, gender, COUNT(DISTINCT person_id) AS persons, AVG(monthly_income) AS avg_income \
     FROM social_insurance WHERE year >= :since GROUP BY city, gender";
const RAW_SQL: &str = "SELECT city, gender, COUNT(DISTINCT person_id) AS persons, \
     AVG(CASE WHEN monthly_income < 0 THEN 0 WHEN monthly_income > 100000 THEN 100000 ELSE monthly_income END) AS avg_income \
     FROM social_insurance WHERE year >= 2000 GROUP BY city, gender";

type BoxError = Box<dyn std::error::Error>;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn max_rss_bytes() -> u64 {
    // /proc/self/status's VmHWM is the peak resident set, in kB.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// One way of storing the benchmark's records.
#[derive(Clone, Copy)]
struct Table {
    name: &'static str,
    /// Person ids as 18-character strings instead of integers.
    text_ids: bool,
    /// Rows shuffled instead of in person order.
    shuffled: bool,
}

const TABLES: [Table; 4] = [
    Table {
        name: "int-unit",
        text_ids: false,
        shuffled: false,
    },
    Table {
        name: "int-random",
        text_ids: false,
        shuffled: true,
    },
    Table {
        name: "text-unit",
        text_ids: true,
        shuffled: false,
    },
    Table {
        name: "text-random",
        text_ids: true,
        shuffled: true,
    },
];

/// The shuffle: rows ordered by `record_id · A mod P`, a bijection on record ids below the
/// prime `P` (2³¹ − 1, with the MINSTD multiplier), so every run of the benchmark stores the
/// same permutation and no two rows tie.
const SHUFFLE_KEY_SQL: &str = "(record_id * 48271) % 2147483647";
/// A text person id: 18 decimal digits, distinct per person, as long as an identity number.
const TEXT_ID_SQL: &str = "CAST(person_id * 7919 + 110101190000000000 AS VARCHAR)";

/// The generator's file of `rows` records, in person order with integer ids.
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

/// The file of `table`, derived once from the generator's file with DataFusion's COPY
/// (Snappy, row groups of the generator's size, as the generator writes them).
async fn table_file(rows: u64, table: Table) -> Result<PathBuf, BoxError> {
    let source = generated_file(rows)?;
    if !table.text_ids && !table.shuffled {
        return Ok(source);
    }
    let dir = source.parent().ok_or("the data file has no folder")?;
    let file = dir.join(format!("social_insurance-{}.parquet", table.name));
    if file.exists() {
        return Ok(file);
    }
    eprintln!(
        "deriving the {} table from {} (once)…",
        table.name,
        source.display()
    );
    let ctx = SessionContext::new();
    ctx.register_parquet(
        "generated",
        source.to_str().ok_or("path is not UTF-8")?,
        ParquetReadOptions::default(),
    )
    .await?;
    let schema = ctx.table("generated").await?.schema().clone();
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|field| match field.name().as_str() {
            "person_id" if table.text_ids => format!("{TEXT_ID_SQL} AS person_id"),
            name => format!("\"{name}\""),
        })
        .collect();
    let order = if table.shuffled {
        format!(" ORDER BY {SHUFFLE_KEY_SQL}")
    } else {
        String::new()
    };
    let staged = dir.join(format!(".social_insurance-{}.parquet.tmp", table.name));
    let copy = format!(
        "COPY (SELECT {} FROM generated{order}) TO '{}' STORED AS PARQUET \
         OPTIONS ('format.compression' 'snappy', 'format.max_row_group_size' '{}')",
        columns.join(", "),
        staged.to_str().ok_or("path is not UTF-8")?,
        demo_data::ROW_GROUP_ROWS_MAX,
    );
    ctx.sql(&copy).await?.collect().await?;
    std::fs::File::open(&staged)?.sync_all()?;
    std::fs::rename(&staged, &file)?;
    Ok(file)
}

/// The machine's load averages over 1, 5 and 15 minutes, as `/proc/loadavg` gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

async fn raw_run(file: &Path, partitions: usize) -> Result<(f64, usize), BoxError> {
    let pool = Arc::new(PeakTrackingPool::new(GreedyMemoryPool::new(usize::MAX / 2)));
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(pool.clone() as Arc<dyn MemoryPool>)
        .build_arc()?;
    let ctx = SessionContext::new_with_config_rt(
        SessionConfig::new().with_target_partitions(partitions),
        runtime,
    );
    let started = Instant::now();
    ctx.register_parquet(
        "social_insurance",
        file.to_str().ok_or("path is not UTF-8")?,
        ParquetReadOptions::default(),
    )
    .await?;
    let batches = ctx.sql(RAW_SQL).await?.collect().await?;
    let seconds = started.elapsed().as_secs_f64();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(
        rows, 22,
        "raw DataFusion should return 11 cities × 2 genders"
    );
    Ok((seconds, pool.peak()))
}

/// A store with the table registered, the operator's grant and the approved template.
fn set_up(dir: &Path, file: &Path) -> Result<(Store, String), BoxError> {
    let mut store = Store::init(&dir.join("store"))?;
    catalog::register(&mut store, "social_insurance", file, Policy::parse(POLICY)?)?;
    let template = veil_examples::grant_and_approve(&mut store, "benchmark", VEIL_SQL, 4096)?;
    Ok((store, template))
}

/// One table's medians and peaks.
struct Figures {
    veil_seconds: f64,
    raw_seconds: f64,
    veil_peak_bytes: u64,
    raw_peak_bytes: usize,
}

async fn bench_table(
    table: Table,
    file: &Path,
    runs: usize,
    partitions: usize,
) -> Result<Figures, BoxError> {
    let dir = tempfile::tempdir()?;
    let (mut store, template) = set_up(dir.path(), file)?;
    let mut veil_seconds = Vec::new();
    let mut raw_seconds = Vec::new();
    let mut raw_peak_bytes = 0usize;
    // Each Veil run uses another `since` (all rows match), so no run is an identical rerun.
    for run in 0..=runs {
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
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            JobOutcome::Released {
                rows: Some(batch), ..
            } => {
                assert_eq!(
                    batch.num_rows(),
                    22,
                    "Veil should release 11 cities × 2 genders"
                );
            }
            other => return Err(format!("the benchmark job did not release: {other:?}").into()),
        }
        let (raw, peak) = raw_run(file, partitions).await?;
        // The first pair warms the page cache and allocators; it is not counted.
        if run > 0 {
            veil_seconds.push(seconds);
            raw_seconds.push(raw);
        }
        raw_peak_bytes = raw_peak_bytes.max(peak);
        eprintln!(
            "{} run {run}: veil {seconds:.3} s, raw {raw:.3} s",
            table.name
        );
    }
    let veil_peak_bytes = metering::list(store.conn())?
        .iter()
        .map(|record| record.peak_memory_bytes)
        .max()
        .unwrap_or(0);
    Ok(Figures {
        veil_seconds: median(&mut veil_seconds),
        raw_seconds: median(&mut raw_seconds),
        veil_peak_bytes,
        raw_peak_bytes,
    })
}

fn main() -> Result<(), BoxError> {
    // Jobs run in a child process of this very program (see `veil_gate::job`).
    veil_gate::job::serve_child_if_asked();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args.next().map_or(Ok(10_000_000), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let chosen: Vec<Table> = match args.next() {
        None => TABLES.to_vec(),
        Some(names) => names
            .split(',')
            .map(|name| {
                TABLES
                    .iter()
                    .find(|t| t.name == name)
                    .copied()
                    .ok_or_else(|| {
                        format!(
                            "unknown table {name:?}: int-unit, int-random, text-unit or text-random"
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut files = Vec::new();
    for table in &chosen {
        files.push(table_file(rows, *table).await?);
    }

    let load_before = load_average();
    let mut results = Vec::new();
    for (table, file) in chosen.iter().zip(&files) {
        results.push((table, bench_table(*table, file, runs, partitions).await?));
    }
    let load_after = load_average();

    const MIB: f64 = 1024.0 * 1024.0;
    println!("rows: {rows}, runs: {runs} per table (after one warm-up), partitions: {partitions}");
    println!("load average (1, 5, 15 min): before {load_before}, after {load_after}");
    println!(
        "| table | Veil (median) | raw DataFusion (median) | ratio | Veil peak pool | raw peak pool |"
    );
    println!("|---|---|---|---|---|---|");
    for (table, f) in &results {
        println!(
            "| {} | {:.3} s | {:.3} s | {:.2}× | {:.0} MiB | {:.0} MiB |",
            table.name,
            f.veil_seconds,
            f.raw_seconds,
            f.veil_seconds / f.raw_seconds,
            f.veil_peak_bytes as f64 / MIB,
            f.raw_peak_bytes as f64 / MIB,
        );
    }
    println!(
        "process peak resident set: {:.0} MiB (the jobs' child processes not included)",
        max_rss_bytes() as f64 / MIB
    );
    Ok(())
}
