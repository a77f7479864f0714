//! Benchmark: a table too large for one job's memory, and what Veil does with it.
//!
//! ```text
//! cargo run --release -p veil-examples --example bench_large_table -- [ROWS] [MEMORY_MIB]
//! ```
//!
//! ROWS defaults to 100,000,000 social-insurance records (generated once, deterministically,
//! into `target/bench-data/ROWS/`, about 1.3 GB; never committed), MEMORY_MIB to the default
//! job memory limit (1024). The job is the DP-aggregate benchmark's ("per city and gender:
//! distinct persons and average clamped income"). Veil must either release it within the
//! limit or refuse it before any ε is reserved — never stop it half-way. The program prints
//! the outcome, the ε the grant spent, the job's peak pool memory and the time taken.

use std::path::Path;
use std::time::Instant;

use veil_runtime::budget::{self, Period};
use veil_runtime::catalog::{self, Policy};
use veil_runtime::grants::{self, Disposition, GrantRequest};
use veil_runtime::jobs::{self, JobOutcome, JobRequest};
use veil_runtime::metering;
use veil_runtime::store::Store;
use veil_runtime::templates::{
    self, ApprovalRequest, JOB_MEMORY_MIB_DEFAULT, ParamSpec, ParamType, TemplateSpec,
};
use veil_testkit::demo_data;

const POLICY: &str = include_str!("policies/social_insurance.toml");
const OPERATOR: &str = "bench-operator";
const SQL: &str = "SELECT city, gender, COUNT(DISTINCT person_id) AS persons, AVG(monthly_income) AS avg_income \
     FROM social_insurance WHERE year >= :since GROUP BY city, gender";

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    // Jobs run in a child process of this very program (see `veil_gate::job`).
    veil_gate::job::serve_child_if_asked();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args.next().map_or(Ok(100_000_000), |a| a.parse())?;
    let memory_mib: u32 = args
        .next()
        .map_or(Ok(JOB_MEMORY_MIB_DEFAULT), |a| a.parse())?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench-data")
        .join(rows.to_string());
    let file = dir.join("social_insurance.parquet");
    if !file.exists() {
        eprintln!(
            "generating {rows} rows of demo data in {} (once)…",
            dir.display()
        );
        let started = Instant::now();
        demo_data::write_demo_data(rows, &dir, demo_data::DEMO_SEED)?;
        eprintln!("generated in {:.0} s", started.elapsed().as_secs_f64());
    }

    let state = tempfile::tempdir()?;
    let mut store = Store::init(&state.path().join("store"))?;
    let started = Instant::now();
    catalog::register(
        &mut store,
        "social_insurance",
        &file,
        Policy::parse(POLICY)?,
    )?;
    eprintln!("registered in {:.1} s", started.elapsed().as_secs_f64());
    let grant = grants::create(
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
    let template = templates::submit(
        &mut store,
        OPERATOR,
        TemplateSpec {
            name: "large".into(),
            sql: SQL.into(),
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
            max_groups: 1,
            max_rows: 3,
            price_per_run_fen: 0,
            memory_mib,
            ..ApprovalRequest::default()
        },
    )?;

    let started = Instant::now();
    let outcome = jobs::run(
        &mut store,
        JobRequest {
            operator: OPERATOR.into(),
            template: template.id.to_string(),
            params: vec![("since".into(), "2000".into())],
            grant: None,
        },
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let spent = budget::spent_by_grant(
        store.conn(),
        grant.id.as_str(),
        &Period::of(veil_runtime::clock::now()),
    )?;
    let peak = metering::list(store.conn())?
        .iter()
        .map(|record| record.peak_memory_bytes)
        .max()
        .unwrap_or(0);
    println!("rows: {rows}, job memory limit: {memory_mib} MiB");
    match &outcome {
        JobOutcome::Released { .. } => println!("outcome: released in {seconds:.2} s"),
        JobOutcome::Rejected { refusal, .. } => {
            println!("outcome: refused in {seconds:.2} s");
            for violation in &refusal.violations {
                println!("  {}: {}", violation.rule.code(), violation.message);
            }
        }
        other => println!("outcome: {other:?} after {seconds:.2} s"),
    }
    println!(
        "ε spent by the grant: {} µε; peak pool memory: {:.0} MiB",
        spent.micro_epsilon.0,
        peak as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
