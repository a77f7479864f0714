//! End to end on a cluster: `veil serve --cluster` with two `veil executor` processes on
//! 127.0.0.1, all started here. The same jobs run on the cluster and in one local process,
//! with the test-only seeded noise (`VEIL_TEST_NOISE_SEED`), and their products must be
//! byte-identical; executors that die fail the job cleanly (ε spent, nothing released).
//!
//! The social-insurance table is written again with small row groups in a shuffled order
//! first, so the engine splits its scan over both executors and most persons' rows reach
//! several folds on different machines: the merge of their slots is what is under test.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::file::properties::WriterProperties;
use veil_runtime::budget::{self, Period};
use veil_runtime::products::RESULT_CSV;
use veil_runtime::templates::TemplateSpec;
use veil_sdk::api::{ApproveTemplate, SubmitJob};
use veil_sdk::client::Client;

use crate::serve::{Server, add_principals, approved_template};
use crate::support::{Fixture, OPERATOR, run_template, veil_bin};

/// Rows of the social-insurance table (several per person).
const ROWS: u64 = 40_000;
/// Rows per row group of the rewritten table: many row groups, so many scan ranges.
const ROW_GROUP_ROWS: usize = 2_000;
/// The seed of the test-only noise, the same for the server and the local run.
const NOISE_SEED: &str = "15015";

/// A `veil executor` on a free loopback port, stopped when dropped.
struct Executor {
    child: Child,
    address: String,
}

impl Executor {
    fn start(store: &Path) -> Self {
        let mut child = Command::new(veil_bin())
            .args(["executor", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(store)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("veil executor starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("veil executor prints its address");
        let address = line
            .trim()
            .strip_prefix("veil executor: listening on ")
            .unwrap_or_else(|| panic!("an address line, got {line:?}"))
            .to_string();
        Self { child, address }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes the Parquet file at `path` again with its rows in a shuffled (fixed) order and in
/// row groups of [`ROW_GROUP_ROWS`] rows.
fn shuffle_into_small_row_groups(path: &Path) {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("raw table"))
        .and_then(|b| b.build())
        .expect("a Parquet reader");
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("rows");
    let schema = batches[0].schema();
    let all = concat_batches(&schema, &batches).expect("one batch");
    let n = all.num_rows() as u64;
    // A stride coprime with n visits every row once, far from its neighbours.
    let stride = (1..n)
        .rev()
        .find(|s| gcd(*s, n) == 1 && *s < n / 3)
        .unwrap_or(1);
    let order = UInt32Array::from_iter_values((0..n).map(|i| ((i * stride) % n) as u32));
    let columns = all
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &order, None).expect("take"))
        .collect();
    let shuffled = RecordBatch::try_new(Arc::clone(&schema), columns).expect("batch");
    let properties = WriterProperties::builder()
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let tmp = path.with_extension("tmp");
    let mut writer =
        ArrowWriter::try_new(File::create(&tmp).expect("file"), schema, Some(properties))
            .expect("writer");
    writer.write(&shuffled).expect("rows written");
    writer.close().expect("closed");
    std::fs::rename(&tmp, path).expect("renamed");
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A store whose social-insurance table is shuffled into small row groups, the cluster's
/// token made, two executors serving it and a `veil serve --cluster` using them.
struct Cluster {
    fixture: Fixture,
    executors: Vec<Executor>,
    server: Server,
    operator: Client,
    bureau: Client,
}

impl Cluster {
    fn start() -> Self {
        Self::start_serving(2, |store| store.to_path_buf())
    }

    /// A cluster of `executors` executors serving the store folder `executor_dir` returns for
    /// the server's store folder.
    fn start_serving(executors: usize, executor_dir: impl Fn(&Path) -> std::path::PathBuf) -> Self {
        let (mut fixture, ()) = Fixture::prepared(ROWS, |store| {
            let raw = store.parent().expect("the fixture's folder").join("raw");
            shuffle_into_small_row_groups(&raw.join("social_insurance.parquet"));
        });
        fixture
            .store
            .seed_test_noise(NOISE_SEED.parse().expect("a seed"));
        let keys = add_principals(&mut fixture);
        let store = fixture.store_path();
        veil_runtime::cluster::token(&store, true).expect("the cluster token");
        let served = executor_dir(&store);
        let executors: Vec<Executor> = (0..executors).map(|_| Executor::start(&served)).collect();
        let addresses: Vec<&str> = executors.iter().map(|e| e.address.as_str()).collect();
        let config = fixture.dir.path().join("serve.toml");
        // One byte per partition: the engine uses every executor for any scan.
        std::fs::write(&config, "[cluster]\nbytes_per_partition = 1\n").expect("config");
        let cluster = addresses.join(",");
        let server = Server::start_in(
            &store,
            1,
            &[
                "--config",
                config.to_str().expect("a UTF-8 path"),
                "--cluster",
                &cluster,
            ],
            &[("VEIL_TEST_NOISE_SEED", NOISE_SEED)],
        );
        let operator = Client::new(&server.url, &keys.operator).expect("client");
        let bureau = Client::new(&server.url, &keys.bureau).expect("client");
        Self {
            fixture,
            executors,
            server,
            operator,
            bureau,
        }
    }

    /// `spec` under `name`, approved (each name is its own template, so no run reuses another's
    /// product).
    async fn template(&self, name: &str, sql: &str) -> String {
        let spec = TemplateSpec {
            name: name.into(),
            sql: sql.into(),
            params: Vec::new(),
            wasm: None,
            versions: Default::default(),
        };
        approved_template(&self.operator, &self.bureau, &spec, terms()).await
    }

    async fn submit(&self, template: &str) -> String {
        self.submit_under(template, None).await
    }

    /// [`Cluster::submit`] under the grant `grant` (when the operator has several).
    async fn submit_under(&self, template: &str, grant: Option<&str>) -> String {
        self.operator
            .submit_job(
                &SubmitJob {
                    template: template.to_string(),
                    grant: grant.map(String::from),
                    ..Default::default()
                },
                None,
            )
            .await
            .expect("queued")
            .job
            .id
    }

    /// `job` once it has ended.
    async fn ended(&self, job: &str) -> veil_sdk::api::JobView {
        self.operator
            .wait_job(job, Duration::from_secs(180))
            .await
            .expect("ended")
    }

    fn product_csv(&self, product: &str) -> String {
        std::fs::read_to_string(
            self.fixture
                .store_path()
                .join("products")
                .join(product)
                .join(RESULT_CSV),
        )
        .expect("the product's CSV")
    }

    fn spent(&self) -> f64 {
        budget::spent_by_grant(
            self.fixture.store.conn(),
            self.fixture.grant.id.as_str(),
            &Period::of(veil_runtime::clock::now()),
        )
        .expect("spent")
        .micro_epsilon
        .epsilon()
    }

    /// Runs `sql` as a template of its own on the cluster and another locally, and compares
    /// their products byte for byte.
    async fn releases_what_one_process_releases(&mut self, name: &str, sql: &str) {
        let on_cluster = self.template(&format!("{name}_cluster"), sql).await;
        let job = self.submit(&on_cluster).await;
        let ended = self.ended(&job).await;
        assert_eq!(ended.state, "released", "{name} on the cluster: {ended:?}");
        let cluster_csv = self.product_csv(ended.product_id.as_deref().expect("a product"));

        let local = self.template(&format!("{name}_local"), sql).await;
        let outcome = run_template(&mut self.fixture.store, &local, &[])
            .await
            .expect("ran");
        let veil_runtime::jobs::JobOutcome::Released {
            product_id, reused, ..
        } = outcome
        else {
            panic!("{name} locally: {outcome:?}");
        };
        assert!(!reused, "each template runs for itself");
        let local_csv = self.product_csv(product_id.as_str());
        assert!(
            local_csv.lines().count() > 1,
            "{name} releases rows:\n{local_csv}"
        );
        assert_eq!(
            cluster_csv, local_csv,
            "{name}: the cluster's product differs from one process's"
        );
    }

    /// With its executors gone, a job fails cleanly: ε spent, nothing released, and the
    /// operator is not told where the executors were.
    async fn fails_without_executors(&self) {
        let before = self.spent();
        let template = self.template("by_city_no_executors", JOBS[0].1).await;
        let job = self.submit(&template).await;
        let ended = self.ended(&job).await;
        assert_eq!(ended.state, "failed", "{ended:?}");
        assert!(ended.product_id.is_none());
        let failure = ended.failure.expect("a failure message");
        assert!(
            !failure.contains("127.0.0.1"),
            "the operator is not told the cluster's addresses: {failure}"
        );
        assert!(
            (self.spent() - before - 1.0).abs() < 1e-9,
            "a failed job's ε stays spent"
        );
        let _ = &self.server;
    }
}

fn terms() -> ApproveTemplate {
    ApproveTemplate {
        epsilon: Some(1.0),
        delta: Some(1e-6),
        k: Some(5),
        max_groups: Some(3),
        max_rows: Some(3),
        price_per_run_fen: Some(100),
        ..Default::default()
    }
}

/// Jobs that exercise every kind of slot: distinct units, capped rows, integer and float sums,
/// averages, several groups per unit (so the min-k choice and cut units cross executors).
const JOBS: &[(&str, &str)] = &[
    (
        "by_city",
        "SELECT city, COUNT(DISTINCT person_id) AS persons, COUNT(*) AS records FROM social_insurance GROUP BY city",
    ),
    (
        "by_city_year",
        "SELECT city, year, SUM(monthly_income) AS wages, AVG(monthly_income) AS mean_wage FROM social_insurance GROUP BY city, year",
    ),
    (
        "by_industry",
        "SELECT industry, COUNT(*) AS records, SUM(contribution_months) AS months FROM social_insurance WHERE birth_year >= 1960 GROUP BY industry",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_of_two_executors_releases_exactly_what_one_process_releases() {
    let mut cluster = Cluster::start();
    for (name, sql) in JOBS {
        cluster.releases_what_one_process_releases(name, sql).await;
    }
    // The executors really did the work: with both gone, the next job cannot run.
    for executor in &mut cluster.executors {
        executor.kill();
    }
    cluster.fails_without_executors().await;
}

/// One executor: the engine would run a stage of one task in the job's process, so Veil gives
/// it two tasks on the executor; the executor scans, and the product is still one process's.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_of_one_executor_scans_on_it() {
    let mut cluster = Cluster::start_serving(1, |store| store.to_path_buf());
    let (name, sql) = JOBS[1];
    cluster.releases_what_one_process_releases(name, sql).await;
    cluster.executors[0].kill();
    cluster.fails_without_executors().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_executor_killed_mid_job_fails_the_job_and_releases_nothing() {
    let mut cluster = Cluster::start();
    let (name, sql) = JOBS[1];
    // What one process releases, for a run that outlives the kill.
    let local = cluster.template(&format!("{name}_local"), sql).await;
    let expected = match run_template(&mut cluster.fixture.store, &local, &[])
        .await
        .expect("ran")
    {
        veil_runtime::jobs::JobOutcome::Released { product_id, .. } => {
            cluster.product_csv(product_id.as_str())
        }
        other => panic!("locally: {other:?}"),
    };
    let template = cluster.template(&format!("{name}_killed"), sql).await;
    let before = cluster.spent();
    let job = cluster.submit(&template).await;
    // Kill one executor as soon as the job is running.
    let mut killed = false;
    for _ in 0..600 {
        let view = cluster.operator.job(&job).await.expect("job");
        if view.state == "running" {
            cluster.executors[1].kill();
            killed = true;
            break;
        }
        if view.state != "queued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(killed, "the job was seen running");
    let ended = cluster.ended(&job).await;
    assert!(
        (cluster.spent() - before - 1.0).abs() < 1e-9,
        "the run's ε is spent whatever happened"
    );
    match ended.state.as_str() {
        "failed" => assert!(ended.product_id.is_none(), "{ended:?}"),
        // The engine finished before the kill reached it: then the product is whole.
        "released" => assert_eq!(
            cluster.product_csv(ended.product_id.as_deref().expect("a product")),
            expected,
            "a run that lost an executor released something else than one process"
        ),
        other => panic!("unexpected end {other}: {ended:?}"),
    }
    // The other executor still serves: the cluster's next job with a new executor set is
    // not this test's business, but the server itself is still up.
    cluster
        .operator
        .job(&job)
        .await
        .expect("the server answers");
    let _ = OPERATOR;
}

#[tokio::test(flavor = "multi_thread")]
async fn executors_refuse_a_server_without_their_token() {
    // The executors read the same data through a store folder of their own, whose cluster
    // token is another one.
    let cluster = Cluster::start_serving(2, |store| {
        let other = store
            .parent()
            .expect("the fixture's folder")
            .join("executor-store");
        std::fs::create_dir_all(&other).expect("folder");
        std::os::unix::fs::symlink(store.join("data"), other.join("data")).expect("link");
        veil_runtime::cluster::token(&other, true).expect("another token");
        other
    });
    let template = cluster.template("by_city_wrong_token", JOBS[0].1).await;
    let before = cluster.spent();
    let job = cluster.submit(&template).await;
    let ended = cluster.ended(&job).await;
    assert_eq!(ended.state, "failed", "{ended:?}");
    assert!(ended.product_id.is_none());
    assert!((cluster.spent() - before - 1.0).abs() < 1e-9);
}

/// A dataset registered from a bucket: the executors read the object straight from the S3
/// server with the store's credentials, and the product equals one process's.
#[tokio::test(flavor = "multi_thread")]
async fn executors_read_an_object_storage_dataset_and_release_what_one_process_releases() {
    use crate::object_storage::{
        MotoServer, SECRET_ACCESS_KEY, create_bucket, upload, write_config,
    };
    use veil_runtime::catalog::{self, Policy};
    use veil_runtime::grants::{self, Disposition, GrantRequest, Ownership};

    let moto = MotoServer::start();
    let mut cluster = Cluster::start();
    let store = cluster.fixture.store_path();
    write_config(&store, &moto.endpoint, "province", SECRET_ACCESS_KEY);
    create_bucket(&moto.endpoint, "province");
    let url = upload(
        &moto.endpoint,
        "province",
        "social/2026.parquet",
        &cluster.fixture.raw_path().join("social_insurance.parquet"),
    )
    .await;
    let policy = crate::support::SOCIAL_POLICY.replace("social_insurance", "social_bucket");
    catalog::register(
        &mut cluster.fixture.store,
        "social_bucket",
        Path::new(&url),
        Policy::parse(&policy).expect("policy"),
    )
    .expect("registered from the bucket");
    let today = veil_runtime::clock::today();
    let grant = grants::create(
        &mut cluster.fixture.store,
        GrantRequest {
            operator: OPERATOR.into(),
            datasets: vec!["social_bucket".into()],
            purpose: "cluster over object storage".into(),
            valid_from: today - chrono::Days::new(1),
            valid_to: today + chrono::Days::new(30),
            epsilon_per_month: 100.0,
            delta_per_month: 0.5,
            disposition: Disposition::Archive,
            ownership: Ownership::Operator,
        },
    )
    .expect("grant");
    let sql = "SELECT city, COUNT(DISTINCT person_id) AS persons, AVG(monthly_income) AS mean_income FROM social_bucket GROUP BY city";
    let on_cluster = cluster.template("bucket_cluster", sql).await;
    let job = cluster
        .submit_under(&on_cluster, Some(grant.id.as_str()))
        .await;
    let ended = cluster.ended(&job).await;
    assert_eq!(ended.state, "released", "{ended:?}");
    let cluster_csv = cluster.product_csv(ended.product_id.as_deref().expect("a product"));
    let local = cluster.template("bucket_local", sql).await;
    let ran = veil_runtime::jobs::run(
        &mut cluster.fixture.store,
        veil_runtime::jobs::JobRequest {
            operator: OPERATOR.into(),
            template: local,
            params: Vec::new(),
            grant: Some(grant.id.to_string()),
        },
    )
    .await
    .expect("ran");
    let veil_runtime::jobs::JobOutcome::Released { product_id, .. } = ran else {
        panic!("the local run did not release");
    };
    assert_eq!(cluster_csv, cluster.product_csv(product_id.as_str()));
}
