//! Datasets on S3-compatible object storage, against a real S3 server on 127.0.0.1.
//!
//! The server is moto in server mode (`moto_server`, PyPI package `moto[server]`): pure
//! Python, so it installs in seconds with no compiler, into a Python environment under
//! `target/moto-venv` made on first use (like the OpenAPI generator of `api_docs`). Each test
//! starts its own server on a free port and stops it when the test ends.
//!
//! What is checked:
//! - `veil dataset register --file s3://…` registers an object where it lives (its `file` is
//!   the URL), and a job over it releases exactly what the same job releases over the same
//!   data registered as a local file (seeded test noise);
//! - an object re-uploaded with other bytes refuses the next job with `dataset.changed` before
//!   any ε is reserved;
//! - credentials the server refuses give a registration error that names the configuration
//!   file and the keys to check, never the secret;
//! - a store without `object-storage.toml` refuses an `s3://` source naming the file to write.
//!
//! The helpers are `pub(crate)` for the cluster tests: [`MotoServer::start`],
//! [`write_config`], [`create_bucket`] and [`upload`].

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use datafusion::object_store::aws::{AmazonS3, AmazonS3Builder};
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::{ObjectStoreExt, PutPayload};
use veil_runtime::budget;
use veil_runtime::catalog;
use veil_runtime::clock;
use veil_runtime::jobs::JobOutcome;
use veil_runtime::store::Store;

use crate::support::{self, Run};

/// The moto release the tests run, pinned.
const MOTO: &str = "moto[server]==5.2.5";
/// The bucket the tests use.
pub(crate) const BUCKET: &str = "province-data";
/// Credentials written into the test stores' configuration (moto without authentication
/// accepts any).
pub(crate) const ACCESS_KEY_ID: &str = "veil-test-key";
pub(crate) const SECRET_ACCESS_KEY: &str = "veil-test-secret-do-not-print";
/// How long a starting server may take to answer.
const START_TIMEOUT_MS: u64 = 30_000;

/// Makes the Python environment with moto once per build folder; tests that run at the same
/// time wait for the one that installs.
fn moto_program() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    support::pypi_program("moto-venv", MOTO, "moto_server")
}

/// A moto S3 server on 127.0.0.1, stopped when dropped.
pub(crate) struct MotoServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) endpoint: String,
}

impl MotoServer {
    /// A server that accepts any credentials.
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra environment (moto's settings, e.g. authentication).
    pub(crate) fn start_with(env: &[(&str, &str)]) -> Self {
        let program = moto_program();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_millis(START_TIMEOUT_MS),
                "moto_server did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `<store>/object-storage.toml` naming one bucket on `endpoint`.
pub(crate) fn write_config(store: &Path, endpoint: &str, bucket: &str, secret: &str) {
    let text = format!(
        "[[bucket]]\nname = \"{bucket}\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\naccess_key_id = \"{ACCESS_KEY_ID}\"\nsecret_access_key = \"{secret}\"\nallow_http = true\n"
    );
    std::fs::write(store.join("object-storage.toml"), text).expect("write object-storage.toml");
}

/// Creates `bucket` (S3's `CreateBucket` is a `PUT /<bucket>`; object_store has no call for
/// it, and moto without authentication takes it unsigned).
pub(crate) fn create_bucket(endpoint: &str, bucket: &str) {
    let address = endpoint.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connect to moto");
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send CreateBucket");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "CreateBucket: {answer}");
}

/// A client of `bucket` with the test credentials (for uploads).
pub(crate) fn client(endpoint: &str, bucket: &str) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_access_key_id(ACCESS_KEY_ID)
        .with_secret_access_key(SECRET_ACCESS_KEY)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .expect("an S3 client")
}

/// Uploads `file` as `s3://<bucket>/<key>`; returns the URL.
pub(crate) async fn upload(endpoint: &str, bucket: &str, key: &str, file: &Path) -> String {
    let bytes = std::fs::read(file).expect("read the file to upload");
    client(endpoint, bucket)
        .put(&ObjectPath::from(key), PutPayload::from(bytes))
        .await
        .expect("upload");
    format!("s3://{bucket}/{key}")
}

fn veil(args: &[&str]) -> Run {
    Command::new(support::veil_bin())
        .env_remove("VEIL_DATA_DIR")
        .env_remove("VEIL_CLOCK")
        .args(args)
        .output()
        .expect("run veil")
        .into()
}

/// `veil dataset register` of `file` (a path or an `s3://` URL) into the store at `store`.
fn register(store: &Path, name: &str, file: &str, policy: &Path) -> Run {
    veil(&[
        "dataset",
        "register",
        "--data-dir",
        store.to_str().expect("UTF-8"),
        "--name",
        name,
        "--file",
        file,
        "--policy",
        policy.to_str().expect("UTF-8"),
    ])
}

/// A store folder made with `veil init`.
fn init_store(at: &Path) {
    let run = veil(&["init", "--data-dir", at.to_str().expect("UTF-8")]);
    assert_eq!(run.code, Some(0), "{run}");
}

/// Demo data, its social-insurance policy written to a file: (raw folder, policy file).
fn demo(dir: &Path) -> (PathBuf, PathBuf) {
    let raw = dir.join("raw");
    veil_testkit::demo_data::write_demo_data(2_000, &raw, veil_testkit::demo_data::DEMO_SEED)
        .expect("demo data");
    let policy = dir.join("social.toml");
    std::fs::write(&policy, support::SOCIAL_POLICY).expect("policy");
    (raw, policy)
}

const SQL: &str =
    "SELECT city, COUNT(DISTINCT person_id) AS people FROM social_insurance GROUP BY city";

/// Grants `social_insurance` and runs [`SQL`] with seeded noise.
async fn run_job(store_dir: &Path) -> (Store, JobOutcome) {
    support::use_veil_for_jobs();
    let mut store = Store::open(store_dir).expect("open the store");
    let today = chrono::Utc::now().date_naive();
    veil_runtime::grants::create(
        &mut store,
        veil_runtime::grants::GrantRequest {
            operator: support::OPERATOR.into(),
            datasets: vec!["social_insurance".into()],
            purpose: "object storage tests".into(),
            valid_from: today - chrono::Days::new(30),
            valid_to: today + chrono::Days::new(30),
            epsilon_per_month: 100.0,
            delta_per_month: 0.5,
            disposition: veil_runtime::grants::Disposition::Archive,
            ownership: veil_runtime::grants::Ownership::Operator,
        },
    )
    .expect("grant");
    store.seed_test_noise(17);
    let template =
        support::submit_and_approve(&mut store, SQL, &[], support::approval()).expect("template");
    let outcome = support::run_template(&mut store, &template, &[])
        .await
        .expect("job");
    (store, outcome)
}

fn spent(store: &Store) -> i64 {
    let grant = veil_runtime::grants::list(store).expect("grants")[0]
        .id
        .clone();
    budget::spent_by_grant(
        store.conn(),
        grant.as_str(),
        &budget::Period::of(clock::now()),
    )
    .expect("spent")
    .micro_epsilon
    .0
}

/// An object registered where it lives releases what the same file registered locally does;
/// after the object is replaced, the next job is refused before it reserves any ε.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_over_an_object_releases_what_it_releases_over_the_local_file() {
    let server = MotoServer::start();
    create_bucket(&server.endpoint, BUCKET);
    let dir = tempfile::tempdir().expect("folder");
    let (raw, policy) = demo(dir.path());
    let local_file = raw.join("social_insurance.parquet");
    let url = upload(&server.endpoint, BUCKET, "social/2026.parquet", &local_file).await;

    let local = dir.path().join("local");
    init_store(&local);
    let run = register(
        &local,
        "social_insurance",
        local_file.to_str().expect("UTF-8"),
        &policy,
    );
    assert_eq!(run.code, Some(0), "{run}");

    let remote = dir.path().join("remote");
    init_store(&remote);
    write_config(&remote, &server.endpoint, BUCKET, SECRET_ACCESS_KEY);
    let run = register(&remote, "social_insurance", &url, &policy);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(!run.stdout.contains(SECRET_ACCESS_KEY), "{run}");

    // Registered where it lives: the URL is its file, with the same hash as the local copy,
    // and nothing was copied into the data folder.
    let (local_dataset, remote_dataset) = {
        let local = Store::open(&local).expect("local store");
        let remote = Store::open(&remote).expect("remote store");
        (
            catalog::get(&local, "social_insurance").expect("local dataset"),
            catalog::get(&remote, "social_insurance").expect("remote dataset"),
        )
    };
    assert_eq!(remote_dataset.file, url);
    assert_eq!(remote_dataset.content_blake3, local_dataset.content_blake3);
    assert_eq!(remote_dataset.rows, local_dataset.rows);
    assert_eq!(remote_dataset.bytes, local_dataset.bytes);
    let in_data = std::fs::read_dir(remote.join("data"))
        .expect("data folder")
        .count();
    assert_eq!(in_data, 0, "nothing is copied into the data folder");

    let (_, local_outcome) = run_job(&local).await;
    let (mut remote_store, remote_outcome) = run_job(&remote).await;
    let JobOutcome::Released {
        rows: Some(local_rows),
        ..
    } = &local_outcome
    else {
        panic!("expected a release, got {local_outcome:?}");
    };
    let JobOutcome::Released {
        rows: Some(remote_rows),
        ..
    } = &remote_outcome
    else {
        panic!("expected a release, got {remote_outcome:?}");
    };
    assert_eq!(local_rows, remote_rows);

    // The object is replaced with other bytes (the enterprise registry's file): the next job
    // is refused, naming the rule, and reserves nothing.
    upload(
        &server.endpoint,
        BUCKET,
        "social/2026.parquet",
        &raw.join("enterprise_registry.parquet"),
    )
    .await;
    let before = spent(&remote_store);
    let template = support::submit_and_approve(&mut remote_store, SQL, &[], support::approval())
        .expect("template");
    let outcome = support::run_template(&mut remote_store, &template, &[])
        .await
        .expect("job");
    let JobOutcome::Rejected { refusal, .. } = &outcome else {
        panic!("expected a refusal, got {outcome:?}");
    };
    assert_eq!(refusal.codes(), ["dataset.changed"], "{refusal:?}");
    let message = &refusal.violations[0].message;
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("new version"), "{message}");
    assert_eq!(spent(&remote_store), before, "no ε reserved");

    // The bureau registers the new object as a new version (here: another delivery of the
    // same table, uploaded to the same key), and jobs run again.
    let delivery = dir.path().join("delivery");
    veil_testkit::demo_data::write_demo_data(1_500, &delivery, 11).expect("demo data");
    upload(
        &server.endpoint,
        BUCKET,
        "social/2026.parquet",
        &delivery.join("social_insurance.parquet"),
    )
    .await;
    let run = veil(&[
        "dataset",
        "update",
        "social_insurance",
        "--file",
        &url,
        "--data-dir",
        remote.to_str().expect("UTF-8"),
    ]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("version 2"), "{run}");
    let outcome = support::run_template(&mut remote_store, &template, &[])
        .await
        .expect("job");
    assert!(
        matches!(outcome, JobOutcome::Released { .. }),
        "expected a release, got {outcome:?}"
    );
}

/// Credentials the server refuses: the registration fails naming the file and the keys to
/// check, and the secret appears nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_give_a_clear_error_without_the_secret() {
    // With authentication on after two requests (creating the bucket and uploading), the
    // server checks every later request against its IAM users, of which there are none.
    let server = MotoServer::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "2")]);
    create_bucket(&server.endpoint, BUCKET);
    let dir = tempfile::tempdir().expect("folder");
    let (raw, policy) = demo(dir.path());
    let url = upload(
        &server.endpoint,
        BUCKET,
        "social.parquet",
        &raw.join("social_insurance.parquet"),
    )
    .await;
    let store = dir.path().join("store");
    init_store(&store);
    let wrong = "wrong-secret-must-not-be-printed";
    write_config(&store, &server.endpoint, BUCKET, wrong);
    let run = register(&store, "social_insurance", &url, &policy);
    assert_ne!(run.code, Some(0), "{run}");
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(!said.contains(wrong), "{run}");
    assert!(said.contains("secret_access_key"), "{run}");
    assert!(said.contains("object-storage.toml"), "{run}");
    let store = Store::open(&store).expect("store");
    assert!(catalog::list(&store).expect("list").is_empty());
}

/// Without `object-storage.toml`, an `s3://` source is refused naming the file to write;
/// a CSV object is refused with what to do instead.
#[test]
fn an_object_needs_the_configuration_and_parquet() {
    let dir = tempfile::tempdir().expect("folder");
    let policy = dir.path().join("social.toml");
    std::fs::write(&policy, support::SOCIAL_POLICY).expect("policy");
    let store = dir.path().join("store");
    init_store(&store);
    let run = register(
        &store,
        "social_insurance",
        "s3://province-data/a.parquet",
        &policy,
    );
    assert_ne!(run.code, Some(0), "{run}");
    let file = store.join("object-storage.toml");
    assert!(run.stderr.contains(file.to_str().expect("UTF-8")), "{run}");
    write_config(&store, "http://127.0.0.1:9", BUCKET, SECRET_ACCESS_KEY);
    let run = register(
        &store,
        "social_insurance",
        "s3://province-data/a.csv",
        &policy,
    );
    assert_ne!(run.code, Some(0), "{run}");
    assert!(run.stderr.contains("convert it to Parquet"), "{run}");
}
