//! Benchmark: a WASM job end to end — the pension-eligibility template through the gate —
//! against the same logic in raw DataFusion SQL, on the same Parquet file, in the same process.
//!
//! ```text
//! cargo run --release -p veil-examples --example bench_wasm_job -- [ROWS] [RUNS]
//! ```
//!
//! ROWS defaults to 10,000,000 social-insurance records (generated once, deterministically,
//! into `target/bench-data/ROWS/`, shared with `bench_dp_aggregate`), RUNS to 5. Each run
//! alternates two measurements, after one warm-up round that is not counted:
//!
//! 1. **Veil**: `jobs::run` of the pension template (`examples/templates/pension_eligibility.toml`
//!    with its mapper `examples/wasm/pension_eligibility`, built by `veil-testkit`): grant and
//!    template checks, the input query in the sandbox, one fresh WASM instance per insured
//!    person, the output checks, the release SQL through the gate, noise, the signed product,
//!    the meter record and audit entries — in the job's own child process, as in production.
//! 2. **Raw SQL**: the same rule said in SQL — per person the latest city, the highest
//!    contribution months and the birth year, then per city the persons, the eligible ones and
//!    the average months short — in raw DataFusion with the same parallelism, no privacy.
//!
//! Each run uses another `born_before` (1971, 1970, …; the template's `allowed` list is dropped
//! here), so no Veil run is an identical rerun that would return an earlier product. Figures
//! per unit divide by the run's number of insured persons (the units), which the job's audit
//! entry (the bureau's, with the mapper's real unit and fallback counts) must agree with.
//!
//! The mapping stage is not measured apart: its functions return in-domain rows and stay
//! inside the gate. `veil-gate`'s own `bench_wasm_units` times the host's per-unit overhead.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use veil_gate::job::WasmUsage;
use veil_runtime::catalog::{self, Policy};
use veil_runtime::grants::{self, Disposition, GrantRequest};
use veil_runtime::jobs::{self, JobOutcome, JobRequest};
use veil_runtime::metering;
use veil_runtime::store::Store;
use veil_runtime::templates::{self, ApprovalRequest, SpecRules, TemplateSpec};
use veil_testkit::demo_data;

const POLICY: &str = include_str!("policies/social_insurance.toml");
const TEMPLATE: &str = include_str!("templates/pension_eligibility.toml");
/// The template's list of allowed `born_before` values, dropped so every run can differ.
const ALLOWED_LINE: &str = "allowed = [\"1966\", \"1971\"]\n";
const MODULE_NAME: &str = "pension_eligibility.wasm";
const OPERATOR: &str = "bench-operator";
/// The latest `born_before` (the first run's); each later run takes a year less.
const BORN_BEFORE_FIRST: i64 = 1971;
/// The job's wall limit, in seconds: the kernel's largest, which a WASM job over ten million
/// rows needs (each unit's slot is 75% of it divided by the table's rows).
const WALL_SECONDS: u32 = (veil_gate::sandbox::JOB_WALL_MS_MAX / 1000) as u32;
/// The job's memory limit, in MiB (the mapping stage holds the input rows of its partition).
const MEMORY_MIB: u32 = 4096;

/// The mapper's rule (`examples/wasm/pension_eligibility`) and the template's release query in
/// one SQL statement. The latest city is the city of the person's latest year; a person's
/// birth year is the same on each of their records.
fn raw_sql(born_before: i64) -> String {
    format!(
        "SELECT city, COUNT(DISTINCT person_id) AS persons, SUM(eligible) AS eligible, \
                AVG(months_short) AS avg_months_short \
         FROM ( \
             SELECT person_id, first_value(city ORDER BY year DESC) AS city, \
                    CASE WHEN 2025 - MIN(birth_year) >= 60 \
                          AND COALESCE(MAX(contribution_months), 0) >= 180 THEN 1 ELSE 0 END \
                        AS eligible, \
                    CASE WHEN COALESCE(MAX(contribution_months), 0) >= 180 THEN 0 \
                         WHEN COALESCE(MAX(contribution_months), 0) <= 0 THEN 180 \
                         ELSE 180 - MAX(contribution_months) END AS months_short \
             FROM social_insurance WHERE birth_year < {born_before} \
             GROUP BY person_id \
         ) per_person \
         GROUP BY city"
    )
}

type BoxError = Box<dyn std::error::Error>;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Clock ticks per second of `/proc`'s CPU times (`USER_HZ`, 100 on Linux).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// CPU time this process has used, and its waited-for children (the jobs' child processes),
/// in seconds, from `/proc/self/stat`: CPU figures stay comparable when other programs share
/// the machine, which wall-clock figures do not.
fn process_cpu_seconds() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0.0, 0.0);
    };
    // The fields after the command name (which may hold spaces) start at field 3, `state`;
    // utime, stime, cutime and cstime are fields 14 to 17.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |range: std::ops::Range<usize>| {
        range
            .filter_map(|i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
            .sum::<u64>() as f64
            / CLOCK_TICKS_PER_SECOND
    };
    (ticks(11..13), ticks(13..15))
}

/// Longest the benchmark waits for a finished job's child process to be counted in
/// `/proc/self/stat` (it is once it has been reaped), in milliseconds.
const CHILD_REAPED_WAIT_MS: u64 = 2_000;

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

fn context(partitions: usize) -> SessionContext {
    SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions))
}

/// The raw SQL's wall and CPU time, with the number of persons and of eligible ones it counted.
async fn raw_run(
    file: &Path,
    partitions: usize,
    born_before: i64,
) -> Result<(f64, f64, u64, u64), BoxError> {
    let ctx = context(partitions);
    let (cpu, _) = process_cpu_seconds();
    let started = Instant::now();
    ctx.register_parquet(
        "social_insurance",
        file.to_str().ok_or("path is not UTF-8")?,
        ParquetReadOptions::default(),
    )
    .await?;
    let batches = ctx.sql(&raw_sql(born_before)).await?.collect().await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds().0 - cpu;
    let (mut persons, mut eligible) = (0u64, 0u64);
    for batch in &batches {
        let p = batch.column(1).as_primitive::<Int64Type>();
        let e = batch.column(2).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            persons += p.value(row) as u64;
            eligible += e.value(row) as u64;
        }
    }
    Ok((seconds, cpu, persons, eligible))
}

/// What the mapper of the latest released job really did, from the bureau's audit entry
/// (`{"product":…,"wasm":{"fallbacks":F,"fuel_used":U,"units":N}}`).
fn wasm_usage(store: &Store) -> Result<WasmUsage, BoxError> {
    let details: String = store.conn().query_row(
        "SELECT details FROM audit WHERE kind = 'job.released' ORDER BY seq DESC LIMIT 1",
        [],
        |row| row.get(0),
    )?;
    let field = |name: &str| -> Result<u64, BoxError> {
        let key = format!("\"{name}\":");
        let at = details
            .find(&key)
            .ok_or_else(|| format!("the job's audit entry has no `{name}`: {details}"))?;
        let digits: String = details[at + key.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Ok(digits.parse()?)
    };
    Ok(WasmUsage {
        fuel_used: field("fuel_used")?,
        units: field("units")?,
        fallbacks: field("fallbacks")?,
    })
}

/// One run's figures, in µs per unit.
struct Figures {
    veil_wall: f64,
    veil_cpu: f64,
    raw_wall: f64,
    raw_cpu: f64,
}

fn main() -> Result<(), BoxError> {
    // Jobs run in a child process of this very program (see `veil_gate::job`), and submitting
    // a WASM template checks its module in another (see `veil_runtime::compile`).
    veil_gate::job::serve_child_if_asked();
    veil_runtime::compile::serve_check_if_asked();
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
            ownership: veil_runtime::grants::Ownership::Operator,
        },
    )?;
    if !TEMPLATE.contains(ALLOWED_LINE) {
        return Err("the pension template's `allowed` line changed; update ALLOWED_LINE".into());
    }
    let modules = dir.path().join("modules");
    std::fs::create_dir_all(&modules)?;
    std::fs::write(modules.join(MODULE_NAME), veil_testkit::PENSION_MODULE)?;
    let (spec, module) = TemplateSpec::parse_file(&TEMPLATE.replace(ALLOWED_LINE, ""), &modules)?;
    let template = templates::submit_with_module(&mut store, OPERATOR, spec, module)?;
    let template = templates::approve(
        &mut store,
        template.id.as_str(),
        ApprovalRequest {
            epsilon: 1.0,
            delta: 1e-6,
            k: 10,
            max_groups: 1,
            max_rows: 1,
            price_per_run_fen: 0,
            memory_mib: MEMORY_MIB,
            wall_seconds: WALL_SECONDS,
            ..ApprovalRequest::default()
        },
    )?;
    let mut all = Vec::new();
    let mut units = Vec::new();
    let mut fuel_per_unit = 0.0;
    let mut fallbacks = 0;
    for run in 0..=runs {
        let born_before = BORN_BEFORE_FIRST - run as i64;
        let (own_cpu, child_cpu) = process_cpu_seconds();
        let started = Instant::now();
        let outcome = jobs::run(
            &mut store,
            JobRequest {
                operator: OPERATOR.into(),
                template: template.id.to_string(),
                params: vec![("born_before".into(), born_before.to_string())],
                grant: None,
            },
        )
        .await?;
        let veil = started.elapsed().as_secs_f64();
        let own_cpu = process_cpu_seconds().0 - own_cpu;
        // The job's child process counts once it has been reaped, which may be a moment after
        // `jobs::run` returns.
        let waited = Instant::now();
        let mut child_cpu_now = process_cpu_seconds().1;
        while child_cpu_now <= child_cpu
            && waited.elapsed() < Duration::from_millis(CHILD_REAPED_WAIT_MS)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
            child_cpu_now = process_cpu_seconds().1;
        }
        let veil_cpu = own_cpu + (child_cpu_now - child_cpu);
        match outcome {
            JobOutcome::Released {
                rows: Some(batch), ..
            } if batch.num_rows() > 0 => {}
            other => return Err(format!("the pension job did not release: {other:?}").into()),
        }
        let (raw, raw_cpu, persons, eligible_sql) = raw_run(&file, partitions, born_before).await?;
        let usage = wasm_usage(&store)?;
        if usage.units != persons {
            return Err(format!(
                "the job mapped {} units; the raw SQL counted {persons} persons",
                usage.units
            )
            .into());
        }
        let per_unit = |s: f64| s / persons as f64 * 1e6;
        let figures = Figures {
            veil_wall: per_unit(veil),
            veil_cpu: per_unit(veil_cpu),
            raw_wall: per_unit(raw),
            raw_cpu: per_unit(raw_cpu),
        };
        eprintln!(
            "run {run} (born before {born_before}, {persons} units), µs per unit wall/CPU: \
             veil job {:.2}/{:.2} ({} fallbacks), raw SQL {:.2}/{:.2}, \
             {eligible_sql} eligible",
            figures.veil_wall, figures.veil_cpu, usage.fallbacks, figures.raw_wall, figures.raw_cpu,
        );
        // The first round warms the page cache, the allocators and the module cache.
        if run > 0 {
            fallbacks += usage.fallbacks;
            all.push(figures);
            fuel_per_unit = usage.fuel_used as f64 / usage.units as f64;
            units.push(persons as f64);
        }
    }
    let peak = metering::list(store.conn())?
        .iter()
        .map(|r| r.peak_memory_bytes)
        .max()
        .unwrap_or(0);
    let med = |f: fn(&Figures) -> f64| median(&mut all.iter().map(f).collect::<Vec<_>>());
    println!(
        "rows: {rows}, runs: {runs} (after one warm-up), partitions: {partitions}, \
         units per run (median): {:.0}, module: {} bytes, {fuel_per_unit:.0} fuel per unit",
        median(&mut units),
        veil_testkit::PENSION_MODULE.len()
    );
    println!("medians, µs per unit            wall     CPU (all threads and processes)");
    println!(
        "veil WASM job, end to end   {:>8.2} {:>8.2}",
        med(|f| f.veil_wall),
        med(|f| f.veil_cpu)
    );
    println!(
        "raw DataFusion SQL          {:>8.2} {:>8.2}",
        med(|f| f.raw_wall),
        med(|f| f.raw_cpu)
    );
    println!(
        "ratio veil / raw SQL: {:.2} wall, {:.2} CPU",
        med(|f| f.veil_wall / f.raw_wall),
        med(|f| f.veil_cpu / f.raw_cpu)
    );
    println!("units that fell back (ran out of their deadline), all counted runs: {fallbacks}");
    println!(
        "peak memory reserved by the job: {:.1} MiB",
        peak as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
