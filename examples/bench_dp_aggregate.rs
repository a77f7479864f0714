//! Benchmark: Veil's DP aggregate job end to end against the same aggregation in raw
//! DataFusion, on the same Parquet file, in the same process.
//!
//! ```text
//! cargo run --release -p veil-examples --example bench_dp_aggregate -- [ROWS] [RUNS]
//! ```
//!
//! ROWS defaults to 10,000,000 social-insurance records (generated once, deterministically,
//! into `target/bench-data/ROWS/`), RUNS to 5. The job is "per city and gender: distinct
//! persons and average clamped income". Veil's figure is the whole job: grant and template
//! checks, planning, the gate's analysis, budget reservation, the bounded query, k-anonymity,
//! OpenDP noise, writing and signing the product, the meter record and audit entries. Raw
//! DataFusion runs the equivalent SQL (`COUNT(DISTINCT person_id)`, `AVG` of the clamped
//! income) with the same parallelism. Runs alternate between the two to share the machine's
//! state fairly; the medians and their ratio are printed, with the peak memory each reserved
//! from DataFusion's memory pool and the process's peak resident set.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use veil_gate::sandbox::PeakTrackingPool;
use veil_runtime::catalog::{self, Policy};
use veil_runtime::grants::{self, Disposition, GrantRequest};
use veil_runtime::jobs::{self, JobOutcome, JobRequest};
use veil_runtime::metering;
use veil_runtime::store::Store;
use veil_runtime::templates::{self, ApprovalRequest, ParamSpec, ParamType, TemplateSpec};
use veil_testkit::demo_data;

const POLICY: &str = include_str!("policies/social_insurance.toml");
const OPERATOR: &str = "bench-operator";
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

fn data_file(rows: u64) -> Result<PathBuf, BoxError> {
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

fn main() -> Result<(), BoxError> {
    // Jobs run in a child process of this very program (see `veil_gate::job`).
    veil_gate::job::serve_child_if_asked();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args.next().map_or(Ok(10_000_000), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
    let file = data_file(rows)?;

    let dir = tempfile::tempdir()?;
    let mut store = Store::init(&dir.path().join("store"))?;
    catalog::register(
        &mut store,
        "social_insurance",
        &file,
        Policy::parse(POLICY)?,
    )?;
    grants::create(
        &mut store,
        GrantRequest {
            operator: OPERATOR.into(),
            datasets: vec!["social_insurance".into()],
            purpose: "benchmark".into(),
            valid_from: veil_runtime::clock::today(),
            valid_to: veil_runtime::clock::today() + chrono::Days::new(30),
            epsilon_per_month: 100.0,
            delta_per_month: 0.5,
            disposition: Disposition::Archive,
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
        },
    )?;
    templates::approve(
        &mut store,
        template.id.as_str(),
        ApprovalRequest {
            epsilon: 1.0,
            delta: 1e-6,
            k: 10,
            max_groups: 1,
            max_rows: 3,
            price_per_run_fen: 0,
            memory_mib: 4096,
            ..ApprovalRequest::default()
        },
    )?;

    let mut veil_seconds = Vec::new();
    let mut raw_seconds = Vec::new();
    let mut veil_peak = 0u64;
    let mut raw_peak = 0usize;
    // Each Veil run uses another `since` (all rows match), so no run is an identical rerun.
    for run in 0..=runs {
        let since = 2000 - run as i64;
        let started = Instant::now();
        let outcome = jobs::run(
            &mut store,
            JobRequest {
                operator: OPERATOR.into(),
                template: template.id.to_string(),
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
        let (raw, peak) = raw_run(&file, partitions).await?;
        // The first pair warms the page cache and allocators; it is not counted.
        if run > 0 {
            veil_seconds.push(seconds);
            raw_seconds.push(raw);
        }
        raw_peak = raw_peak.max(peak);
        eprintln!("run {run}: veil {seconds:.3} s, raw {raw:.3} s");
    }
    for record in metering::list(store.conn())? {
        veil_peak = veil_peak.max(record.peak_memory_bytes);
    }
    let veil = median(&mut veil_seconds);
    let raw = median(&mut raw_seconds);
    println!("rows: {rows}, runs: {runs} (after one warm-up), partitions: {partitions}");
    println!("veil end to end (median): {veil:.3} s");
    println!("raw DataFusion (median):  {raw:.3} s");
    println!("ratio veil / raw:         {:.3}", veil / raw);
    println!(
        "peak memory reserved: veil {:.1} MiB (DataFusion pool, including the gate's fold), raw {:.1} MiB",
        veil_peak as f64 / (1024.0 * 1024.0),
        raw_peak as f64 / (1024.0 * 1024.0)
    );
    println!(
        "process peak resident set: {:.1} MiB",
        max_rss_bytes() as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
