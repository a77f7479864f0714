//! Small-job latency and throughput through the HTTP API (issue 3's benchmark).
//!
//! On a 10,000-row social-insurance table, one operator submits a small SQL job through
//! `veil_sdk::client::Client` and waits for it to be released, over real HTTP on 127.0.0.1:
//!
//! 1. latency: `JOBS` jobs one after another, submit → released, p50 / p99 / max, with
//!    `GAP_MS` milliseconds between one job's release and the next submission (0: back to back,
//!    when each job also pays for starting the next one's child process; a pause as short as
//!    a person's or a scheduler's lets that child be ready before the job arrives);
//! 2. throughput: `CLIENTS` concurrent clients submitting and waiting, jobs per second.
//!
//! Every job has a different parameter, so none reuses another's product: each runs the
//! whole flow (grant, plan, gate, budget reservation, noise, product files, signature, meter,
//! audit). The server runs in this process with the default worker count.
//!
//! ```text
//! cargo run --release -p veil-examples --example bench_http -- [JOBS] [CLIENTS] [JOBS_PER_CLIENT] [GAP_MS]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_runtime::catalog::{self, Policy};
use veil_runtime::clock;
use veil_runtime::grants::{self, Disposition, GrantRequest};
use veil_runtime::principals::{self, Role};
use veil_runtime::store::Store;
use veil_runtime::templates::{self, ApprovalRequest, ParamSpec, ParamType, TemplateSpec};
use veil_sdk::api::SubmitJob;
use veil_sdk::client::Client;
use veil_server::{self, AppState, StorePool, Workers};
use veil_testkit::demo_data;

const ROWS: u64 = 10_000;
const OPERATOR: &str = "op-bench";

fn main() {
    // Jobs run in a child process of this very program (see `veil_gate::job`).
    veil_gate::job::serve_child_if_asked();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => eprintln!("cannot start the async runtime: {e}"),
    }
}

async fn run() {
    let mut args = std::env::args().skip(1);
    let mut next = |default: usize| args.next().and_then(|a| a.parse().ok()).unwrap_or(default);
    let jobs = next(1_000);
    let clients = next(32);
    let per_client = next(20);
    let gap = Duration::from_millis(next(0) as u64);

    let dir = tempfile::tempdir().expect("temporary folder");
    let raw = dir.path().join("raw");
    demo_data::write_demo_data(ROWS, &raw, demo_data::DEMO_SEED).expect("demo data");
    let root = dir.path().join("store");
    let mut store = Store::init(&root).expect("store");
    catalog::register(
        &mut store,
        "social_insurance",
        &raw.join("social_insurance.parquet"),
        Policy::parse(include_str!("policies/social_insurance.toml")).expect("policy"),
    )
    .expect("register");
    let today = clock::today();
    grants::create(
        &mut store,
        GrantRequest {
            operator: OPERATOR.into(),
            datasets: vec!["social_insurance".into()],
            purpose: "benchmark".into(),
            valid_from: today,
            valid_to: today + chrono::Days::new(30),
            epsilon_per_month: 100.0,
            delta_per_month: 0.5,
            disposition: Disposition::Archive,
            ownership: veil_runtime::grants::Ownership::Operator,
        },
    )
    .expect("grant");
    let template = templates::submit(
        &mut store,
        OPERATOR,
        TemplateSpec {
            name: "persons_by_city".into(),
            sql: "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance WHERE birth_year >= :born GROUP BY city".into(),
            params: vec![ParamSpec {
                name: "born".into(),
                kind: ParamType::Integer,
                allowed: None,
            }],
            wasm: None,
            versions: Default::default(),
        },
    )
    .expect("template");
    // ε small enough that every job of both phases fits the month's budget.
    let epsilon = 90.0 / (jobs + clients * per_client) as f64;
    templates::approve(
        &mut store,
        template.id.as_str(),
        ApprovalRequest {
            epsilon,
            k: 5,
            ..ApprovalRequest::default()
        },
    )
    .expect("approve");
    let (_, key) = principals::add(&mut store, Role::Operator, OPERATOR).expect("principal");
    drop(store);

    let state = Arc::new(AppState {
        stores: Arc::new(StorePool::new(&root).expect("pool")),
        workers: Workers::start(
            &root,
            veil_server::workers::WORKERS_DEFAULT,
            veil_server::workers::QUEUE_JOBS_DEFAULT,
        )
        .expect("workers"),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, veil_server::app(state)).await });
    let client = Client::new(&url, key.expose()).expect("client");
    let template_id = template.id.to_string();

    let run = move |client: Client, born: usize| {
        let template = template_id.clone();
        async move {
            let started = Instant::now();
            let submitted = client
                .submit_job(
                    &SubmitJob {
                        template,
                        params: [("born".to_string(), born.to_string())].into(),
                        grant: None,
                    },
                    None,
                )
                .await
                .expect("submitted");
            let job = client
                .wait_job(&submitted.job.id, Duration::from_secs(300))
                .await
                .expect("ended");
            assert_eq!(job.state, "released", "{job:?}");
            started.elapsed()
        }
    };

    let mut latencies = Vec::with_capacity(jobs);
    for born in 0..jobs {
        latencies.push(run(client.clone(), born).await);
        tokio::time::sleep(gap).await;
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "latency over {jobs} sequential jobs ({ROWS} rows, {} ms apart): \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        gap.as_millis(),
        pick(0.50).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        pick(1.0).as_secs_f64() * 1e3,
    );

    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                run(client.clone(), jobs + c * per_client + i).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let total = clients * per_client;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "throughput with {clients} concurrent clients: {total} jobs in {seconds:.1} s = {:.1} jobs/s",
        total as f64 / seconds
    );
}
