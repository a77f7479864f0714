//! Clean ends (issue 9, defects 10 and 7).
//!
//! - A product folder appears only with the transaction that records it, and goes again when
//!   that transaction fails.
//! - Recovery (`veil serve` at start) and the server's periodic sweep remove every product
//!   folder and temporary the store does not know, and nothing it knows.
//! - `kill -9` of `veil serve` while jobs run, at different moments, leaves nothing behind once
//!   the server is back, and every known product verifies.
//! - A full disk (a real, small tmpfs) ends jobs `failed` with a clear message, answers
//!   submissions with the documented `storage_full` error (HTTP 507, CLI exit code 6), and
//!   the server takes jobs again by itself when space returns.
//! - Policy bounds whose sum could overflow are refused at registration, and contribution
//!   limits whose sensitivity could, at approval — through the `veil` binary.
//!
//! The disk-full tests mount a tmpfs, which needs root (or `CAP_SYS_ADMIN`); without it they
//! fail and say so rather than skip.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use veil_runtime::jobs::{self, JobOutcome, JobRequest};
use veil_runtime::principals::{self, Role};
use veil_runtime::store::Store;
use veil_runtime::templates::{ParamSpec, ParamType, TemplateSpec};
use veil_runtime::{metering, space, sweep};
use veil_sdk::api::{ApproveTemplate, SubmitJob};
use veil_sdk::client::{Client, ClientError};

use crate::serve::Server;
use crate::support::{Fixture, OPERATOR, Tmpfs, approval, submit_and_approve, veil_bin};

const MIB: u64 = 1024 * 1024;

const PERSONS_BY_CITY: &str =
    "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY city";

/// A tmpfs of a fixed size mounted for one test (see `support::Tmpfs`).
struct SmallDisk {
    disk: Tmpfs,
}

impl SmallDisk {
    fn mount(at: &Path, bytes: u64) -> Self {
        Self {
            disk: Tmpfs::mount(at, &format!("size={bytes}"), "a small real file system"),
        }
    }

    /// Writes `name` on the disk until no byte more fits.
    fn fill(&self, name: &str) -> PathBuf {
        let path = self.disk.at.join(name);
        let mut file = File::create(&path).expect("filler");
        let chunk = vec![0x5a_u8; MIB as usize];
        for size in [MIB as usize, 4096, 1] {
            loop {
                match file.write(&chunk[..size]) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if space::is_full_error(&e) => break,
                    Err(e) => panic!("filling the disk: {e}"),
                }
            }
        }
        let _ = file.sync_all();
        path
    }
}

/// Names in a folder, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("folder");
    for entry in fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn folder_with_a_file(dir: &Path) {
    fs::create_dir_all(dir).expect("folder");
    fs::write(dir.join("result.csv"), "city,persons\n").expect("file");
}

/// The ids of the products the store records.
fn known_products(store: &Path) -> Vec<String> {
    let store = Store::open(store).expect("store");
    let mut ids: Vec<String> = veil_runtime::products::list(store.conn())
        .expect("products")
        .into_iter()
        .map(|p| p.id)
        .collect();
    ids.sort();
    ids
}

fn platform_key(store: &Path) -> ed25519_dalek::VerifyingKey {
    Store::open(store)
        .expect("store")
        .signing_key()
        .verifying_key()
}

/// What recovery must leave: in `products/` exactly the known products, each verifying; no
/// temporary anywhere in the store folder.
fn assert_clean(store: &Path) {
    let known = known_products(store);
    assert_eq!(
        names(&store.join("products")),
        known,
        "products/ holds exactly the products the store knows"
    );
    let key = platform_key(store);
    for id in &known {
        veil_sdk::manifest::verify_product_dir(&store.join("products").join(id), Some(&key))
            .unwrap_or_else(|e| panic!("product {id} verifies: {e}"));
    }
    for dir in [store.to_path_buf(), store.join("keys")] {
        let temporaries: Vec<String> = names(&dir)
            .into_iter()
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(temporaries.is_empty(), "{}: {temporaries:?}", dir.display());
    }
}

fn audit_verifies(store: &Path) {
    let out = Command::new(veil_bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(store)
        .output()
        .expect("veil audit verify");
    assert!(out.status.success(), "{out:?}");
}

fn persons_born_from() -> TemplateSpec {
    TemplateSpec {
        name: "persons_born_from".into(),
        sql: "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance WHERE birth_year >= :born GROUP BY city".into(),
        params: vec![ParamSpec {
            name: "born".into(),
            kind: ParamType::Integer,
            allowed: None,
        }],
        wasm: None,
        versions: Default::default(),
    }
}

/// Principals for the fixture's operator and the bureau; their keys.
fn keys(fixture: &mut Fixture) -> (String, String) {
    let mut key = |role, name: &str| {
        principals::add(&mut fixture.store, role, name)
            .expect("principal")
            .1
            .expose()
            .to_string()
    };
    (key(Role::Operator, OPERATOR), key(Role::Bureau, "bureau"))
}

/// The operator submits [`persons_born_from`], the bureau approves it at ε 0.1; its id.
async fn approved_template(operator: &Client, bureau: &Client) -> String {
    let template = operator
        .submit_template(&persons_born_from())
        .await
        .expect("submitted");
    bureau
        .approve_template(
            &template.id,
            &ApproveTemplate {
                epsilon: Some(0.1),
                k: Some(5),
                ..Default::default()
            },
        )
        .await
        .expect("approved");
    template.id
}

fn job(template: &str, born: u32) -> SubmitJob {
    SubmitJob {
        template: template.into(),
        params: [("born".to_string(), born.to_string())].into(),
        grant: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_product_appears_only_with_the_transaction_that_records_it() {
    let mut fixture = Fixture::new(2_000);
    let template =
        submit_and_approve(&mut fixture.store, PERSONS_BY_CITY, &[], approval()).expect("approved");
    // The job's final transaction cannot commit: the products table refuses every row.
    fixture
        .store
        .conn()
        .execute_batch(
            "CREATE TRIGGER refuse_products BEFORE INSERT ON products
             BEGIN SELECT RAISE(ABORT, 'no product rows in this test'); END;",
        )
        .expect("trigger");
    let outcome = fixture.run(&template, &[]).await.expect("the job ends");
    let JobOutcome::Failed { job_id, reason } = outcome else {
        panic!("expected a failed job, got {outcome:?}");
    };
    assert!(
        reason.contains("could not record the job's end"),
        "{reason}"
    );
    // No product folder and no staging folder: the product was never visible.
    let products = fixture.store.products_dir();
    assert_eq!(names(&products), Vec::<String>::new());
    let stored = jobs::get(&fixture.store, job_id.as_str()).expect("job");
    assert_eq!(stored.state.as_str(), "failed");
    let meter = metering::list(fixture.store.conn()).expect("meter");
    let record = meter
        .iter()
        .find(|m| m.job_id == job_id.as_str())
        .expect("the failed job is metered");
    assert_eq!(record.end_state.as_str(), "failed");
    assert_eq!(record.micro_epsilon.0, 1_000_000, "its ε stays spent");

    // Once the table takes rows again, the same job releases a product that verifies.
    fixture
        .store
        .conn()
        .execute_batch("DROP TRIGGER refuse_products")
        .expect("drop trigger");
    let outcome = fixture.run(&template, &[]).await.expect("the job ends");
    let JobOutcome::Released {
        product_id, dir, ..
    } = outcome
    else {
        panic!("expected a release, got {outcome:?}");
    };
    assert_eq!(names(&products), vec![product_id.to_string()]);
    veil_sdk::manifest::verify_product_dir(
        &dir,
        Some(&fixture.store.signing_key().verifying_key()),
    )
    .expect("verifies");
    audit_verifies(&fixture.store_path());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_and_recovery_remove_only_what_the_store_does_not_know() {
    let mut fixture = Fixture::new(2_000);
    let template =
        submit_and_approve(&mut fixture.store, PERSONS_BY_CITY, &[], approval()).expect("approved");
    let JobOutcome::Released {
        product_id, dir, ..
    } = fixture.run(&template, &[]).await.expect("job")
    else {
        panic!("expected a release");
    };
    let root = fixture.store_path();
    let products = root.join("products");

    // What crashes leave: a complete, signed product the store never recorded (killed between
    // the rename and the commit), staging folders of jobs that ended (new and old naming),
    // a stray file.
    copy_dir(&dir, &products.join("prod-unknown"));
    folder_with_a_file(&products.join(".tmp-job-gone.prod-gone"));
    folder_with_a_file(&products.join(".tmp-prod-oldformat"));
    fs::write(products.join("stray.txt"), "?").expect("stray");
    // A job that is running has its staging folder: the periodic sweep must keep it.
    let running = jobs::enqueue(
        &mut fixture.store,
        &JobRequest {
            operator: OPERATOR.into(),
            template: template.clone(),
            params: Vec::new(),
            grant: None,
        },
        None,
    )
    .expect("queued")
    .job
    .id;
    fixture
        .store
        .conn()
        .execute(
            "UPDATE jobs SET state = 'running' WHERE id = ?1",
            [running.as_str()],
        )
        .expect("running");
    let in_flight = format!(".tmp-{running}.prod-inflight");
    folder_with_a_file(&products.join(&in_flight));
    // Temporaries written outside any transaction, just now: the periodic sweep waits.
    fs::write(root.join(".audit.head.fresh.tmp"), "{}").expect("tmp");
    fs::write(root.join("keys/.platform.ed25519.fresh.tmp"), "00").expect("tmp");
    fs::create_dir_all(root.join("statements/2020-01")).expect("statements");
    fs::write(root.join("statements/2020-01/.platform.csv.fresh.tmp"), "").expect("tmp");
    fs::write(root.join("statements/2020-01/platform.csv"), "kept").expect("statement");
    fs::create_dir_all(root.join("data/ds-unregistered")).expect("data");
    fs::write(root.join("data/ds-unregistered/data.parquet"), "?").expect("data");
    let datasets = names(&root.join("data"));

    let swept = sweep::sweep(
        &mut fixture.store,
        Duration::from_secs(sweep::TEMP_GRACE_SECONDS),
    )
    .expect("sweep");
    let mut removed: Vec<String> = swept
        .removed
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        [
            "products/.tmp-job-gone.prod-gone",
            "products/.tmp-prod-oldformat",
            "products/prod-unknown",
            "products/stray.txt",
        ]
    );
    let mut expected = vec![in_flight.clone(), product_id.to_string()];
    expected.sort();
    assert_eq!(names(&products), expected);
    assert!(root.join(".audit.head.fresh.tmp").exists());
    assert!(
        root.join("statements/2020-01/.platform.csv.fresh.tmp")
            .exists()
    );
    assert_eq!(names(&root.join("data")), datasets);

    // Recovery at start: the running job ends `failed`; everything unknown goes, however new.
    let queued = jobs::recover(&mut fixture.store).expect("recover");
    assert!(queued.is_empty(), "{queued:?}");
    assert_eq!(
        jobs::get(&fixture.store, running.as_str())
            .expect("job")
            .state
            .as_str(),
        "failed"
    );
    assert_eq!(names(&products), vec![product_id.to_string()]);
    assert_eq!(names(&root.join("statements/2020-01")), ["platform.csv"]);
    assert!(!root.join("data/ds-unregistered").exists());
    assert_eq!(
        names(&root.join("data")).len(),
        2,
        "the registered datasets stay"
    );
    assert_clean(&root);
    // The sweep keeps a file it cannot call a leftover; `veil audit verify` names a statement
    // no settlement recorded, so the planted one goes before the store is verified.
    fs::remove_dir_all(root.join("statements/2020-01")).expect("remove the planted statement");
    audit_verifies(&root);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_sweeps_debris_while_it_serves() {
    let mut fixture = Fixture::new(2_000);
    let template =
        submit_and_approve(&mut fixture.store, PERSONS_BY_CITY, &[], approval()).expect("approved");
    let JobOutcome::Released {
        product_id, dir, ..
    } = fixture.run(&template, &[]).await.expect("job")
    else {
        panic!("expected a release");
    };
    let root = fixture.store_path();
    let _server = Server::start_with(&root, 1, &["--sweep-seconds", "1"]);
    let products = root.join("products");
    copy_dir(&dir, &products.join("prod-unknown"));
    folder_with_a_file(&products.join(".tmp-job-gone.prod-gone"));
    fs::write(root.join(".audit.head.fresh.tmp"), "{}").expect("tmp");

    let deadline = Instant::now() + Duration::from_secs(20);
    while names(&products) != [product_id.to_string()] {
        assert!(
            Instant::now() < deadline,
            "the server did not sweep: {:?}",
            names(&products)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        root.join(".audit.head.fresh.tmp").exists(),
        "a fresh temporary is left to the process writing it"
    );
    veil_sdk::manifest::verify_product_dir(&dir, Some(&platform_key(&root))).expect("verifies");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_nine_while_jobs_run_leaves_nothing_the_store_does_not_know() {
    let mut fixture = Fixture::new(3_000);
    let (operator_key, bureau_key) = keys(&mut fixture);
    let root = fixture.store_path();
    let mut template = None;
    let mut all_jobs = Vec::new();
    // Kill at different moments: before the first job starts, while the first run, in the
    // middle of the batch, near its end.
    for (attempt, delay_ms) in [0_u64, 10, 40, 90, 180].into_iter().enumerate() {
        let server = Server::start(&root, 2);
        let operator = Client::new(&server.url, &operator_key).expect("client");
        let bureau = Client::new(&server.url, &bureau_key).expect("client");
        let template = match &template {
            Some(id) => String::clone(id),
            None => template
                .insert(approved_template(&operator, &bureau).await)
                .clone(),
        };
        for j in 0..6 {
            let born = 1930 + (attempt as u32) * 6 + j;
            let submitted = operator
                .submit_job(&job(&template, born), None)
                .await
                .expect("queued");
            all_jobs.push(submitted.job.id);
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        drop(server); // SIGKILL, then wait for it

        if attempt == 2 {
            // Exactly what the worst moments leave, whether or not this kill hit one.
            let products = root.join("products");
            if let Some(known) = known_products(&root).first() {
                copy_dir(&products.join(known), &products.join("prod-never-recorded"));
            }
            folder_with_a_file(&products.join(".tmp-job-killed.prod-killed"));
            fs::write(root.join(".audit.head.killed.tmp"), "{}").expect("tmp");
        }

        // The restarted server has recovered before it answers; the jobs left queued run.
        let server = Server::start(&root, 2);
        let operator = Client::new(&server.url, &operator_key).expect("client");
        for id in &all_jobs {
            let ended = operator
                .wait_job(id, Duration::from_secs(120))
                .await
                .expect("the job ends");
            assert!(ended.is_finished(), "{ended:?}");
            if ended.state == "failed" {
                assert_eq!(
                    ended.failure.as_deref(),
                    Some("the platform stopped while the job ran; submit it again"),
                    "{ended:?}"
                );
            }
        }
        assert_clean(&root);
        drop(server);
    }
    assert!(!known_products(&root).is_empty(), "some jobs released");
    audit_verifies(&root);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_product_that_does_not_fit_ends_its_job_failed_and_leaves_nothing() {
    let mut fixture = Fixture::new(2_000);
    let template =
        submit_and_approve(&mut fixture.store, PERSONS_BY_CITY, &[], approval()).expect("approved");
    let products = fixture.store.products_dir();
    let disk = SmallDisk::mount(&products, MIB);
    let filler = disk.fill("filler");

    let outcome = fixture.run(&template, &[]).await.expect("the job ends");
    let JobOutcome::Failed { job_id, reason } = outcome else {
        panic!("expected a failed job, got {outcome:?}");
    };
    assert_eq!(reason, jobs::STORAGE_FULL_REASON);
    assert_eq!(
        names(&products),
        ["filler"],
        "no product, no staging folder"
    );
    let meter = metering::list(fixture.store.conn()).expect("meter");
    let record = meter
        .iter()
        .find(|m| m.job_id == job_id.as_str())
        .expect("metered");
    assert_eq!(
        (record.end_state.as_str(), record.micro_epsilon.0),
        ("failed", 1_000_000)
    );
    // The command line says the same, with its own exit code.
    let run = Command::new(veil_bin())
        .args([
            "job",
            "run",
            "--operator",
            OPERATOR,
            "--template",
            &template,
            "--data-dir",
        ])
        .arg(fixture.store_path())
        .output()
        .expect("veil job run");
    assert_eq!(run.status.code(), Some(6), "{run:?}");
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("storage was full"),
        "{run:?}"
    );
    assert_eq!(names(&products), ["filler"]);

    fs::remove_file(&filler).expect("free the space");
    let outcome = fixture.run(&template, &[]).await.expect("the job ends");
    assert!(
        matches!(outcome, JobOutcome::Released { .. }),
        "{outcome:?}"
    );
    drop(disk);
}

/// Runs `veil client` against `server` with `key`.
fn veil_client(server: &Server, key: &str, args: &[&str]) -> std::process::Output {
    Command::new(veil_bin())
        .arg("client")
        .args(args)
        .env("VEIL_URL", &server.url)
        .env("VEIL_TOKEN", key)
        .output()
        .expect("veil client runs")
}

/// Every submission is refused with the documented error while the disk is full: HTTP 507
/// with kind `storage_full` (raw), `ClientError::StorageFull` (SDK), exit code 6 (CLI).
async fn assert_submissions_refused(
    server: &Server,
    operator: &Client,
    key: &str,
    template: &str,
    born: u32,
) {
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/jobs", server.url))
        .bearer_auth(key)
        .json(&job(template, born))
        .send()
        .await
        .expect("submit");
    assert_eq!(raw.status(), 507);
    let body: veil_sdk::api::ErrorBody = raw.json().await.expect("error body");
    assert_eq!(body.kind, veil_sdk::api::ErrorKind::StorageFull);
    assert!(body.message.contains("free disk space"), "{}", body.message);
    assert!(matches!(
        operator.submit_job(&job(template, born + 1), None).await,
        Err(ClientError::StorageFull(_))
    ));
    let born = (born + 2).to_string();
    let cli = veil_client(
        server,
        key,
        &[
            "job",
            "submit",
            "--template",
            template,
            "--param",
            &format!("born={born}"),
        ],
    );
    assert_eq!(cli.status.code(), Some(6), "{cli:?}");
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("storage is full"),
        "{cli:?}"
    );
}

/// Frees `filler` and waits until the server takes a job again; that job must release.
async fn free_and_release(
    filler: &Path,
    root: &Path,
    operator: &Client,
    template: &str,
    born: u32,
) {
    fs::remove_file(filler).expect("free the space");
    let deadline = Instant::now() + Duration::from_secs(30);
    let submitted = loop {
        match operator.submit_job(&job(template, born), None).await {
            Ok(submitted) => break submitted,
            Err(ClientError::StorageFull(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(other) => panic!("the server did not take jobs again: {other:?}"),
        }
    };
    let ended = operator
        .wait_job(&submitted.job.id, Duration::from_secs(60))
        .await
        .expect("ended");
    assert_eq!(ended.state, "released", "{ended:?}");
    assert!(
        root.join(space::BALLAST_FILE).exists(),
        "the ballast is back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_jobs_refuses_submissions_and_recovers_without_a_restart() {
    // The store on a 64 MiB file system, its products on another of 24 MiB (as a bureau might
    // put them on a volume of their own), so either can fill up alone.
    let (mut fixture, (disk, products_disk)) = Fixture::prepared(2_000, |store| {
        let disk = SmallDisk::mount(store, 64 * MIB);
        let elsewhere = store.with_file_name("products-volume");
        let products_disk = SmallDisk::mount(&elsewhere, 24 * MIB);
        fs::create_dir(elsewhere.join("products")).expect("products folder");
        std::os::unix::fs::symlink(elsewhere.join("products"), store.join("products"))
            .expect("products link");
        (disk, products_disk)
    });
    let (operator_key, bureau_key) = keys(&mut fixture);
    let root = fixture.store_path();
    let server = Server::start(&root, 1);
    let operator = Client::new(&server.url, &operator_key).expect("client");
    let bureau = Client::new(&server.url, &bureau_key).expect("client");
    let template = approved_template(&operator, &bureau).await;
    assert!(
        root.join(space::BALLAST_FILE).exists(),
        "the server keeps a ballast"
    );

    // With room, a job releases.
    let first = operator
        .submit_job(&job(&template, 1950), None)
        .await
        .expect("queued");
    let first = operator
        .wait_job(&first.job.id, Duration::from_secs(60))
        .await
        .expect("ended");
    assert_eq!(first.state, "released", "{first:?}");

    // 1. The products' disk fills up. A job is accepted (its records fit), and ends `failed`
    //    with the message when its product does not fit: never stuck `running`.
    let filler = products_disk.fill("filler");
    let submitted = operator
        .submit_job(&job(&template, 1951), None)
        .await
        .expect("queued: the state database still has room");
    let ended = operator
        .wait_job(&submitted.job.id, Duration::from_secs(60))
        .await
        .expect("ended");
    assert_eq!(ended.state, "failed", "{ended:?}");
    assert_eq!(ended.failure.as_deref(), Some(jobs::STORAGE_FULL_REASON));
    assert!(
        !root.join(space::BALLAST_FILE).exists(),
        "the ballast was released for the failure record"
    );
    assert_submissions_refused(&server, &operator, &operator_key, &template, 1960).await;
    free_and_release(&filler, &root, &operator, &template, 1952).await;

    // 2. The store's own disk fills up. The next submission either is refused at once (its
    //    record did not fit) or, if its record still fit, is accepted and ends `failed`.
    let filler = disk.fill("filler");
    match operator.submit_job(&job(&template, 1953), None).await {
        Ok(submitted) => {
            let ended = operator
                .wait_job(&submitted.job.id, Duration::from_secs(60))
                .await
                .expect("ended");
            assert_eq!(ended.state, "failed", "{ended:?}");
            assert_eq!(ended.failure.as_deref(), Some(jobs::STORAGE_FULL_REASON));
        }
        Err(ClientError::StorageFull(message)) => {
            assert!(message.contains("storage is full"), "{message}");
        }
        Err(other) => panic!("expected storage_full, got {other:?}"),
    }
    assert!(
        !root.join(space::BALLAST_FILE).exists(),
        "the ballast was released"
    );
    assert_submissions_refused(&server, &operator, &operator_key, &template, 1970).await;
    // No job is left queued or running while the disk is full.
    let jobs = operator.jobs().await.expect("jobs");
    assert!(jobs.iter().all(|j| j.is_finished()), "{jobs:?}");
    free_and_release(&filler, &root, &operator, &template, 1954).await;

    drop(server);
    assert_clean(&root);
    audit_verifies(&root);
    // Unmounted first, so the temporary folder can then be removed whole.
    drop(products_disk);
    drop(disk);
    drop(fixture);
}

/// Runs `veil` with `args` and returns its exit code and stderr.
fn veil<I, S>(args: I) -> (Option<i32>, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(veil_bin())
        .env_remove("VEIL_DATA_DIR")
        .env_remove("VEIL_CLOCK")
        .args(args)
        .output()
        .expect("veil runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bounds_that_could_break_a_sum_are_refused_at_registration_and_approval() {
    let temp = tempfile::tempdir().expect("temporary folder");
    let store = temp.path().join("store");
    let d = store.to_str().expect("utf-8");
    assert_eq!(veil(["init", "--data-dir", d]).0, Some(0));
    let csv = temp.path().join("people.csv");
    fs::write(
        &csv,
        "person_id,city,amount\n1,Taiyuan,5\n2,Datong,7\n3,Taiyuan,4\n",
    )
    .expect("csv");
    let policy = |bounds: &str| {
        let path = temp.path().join("policy.toml");
        fs::write(
            &path,
            format!(
                r#"
provider = "Test provider"
classification_level = 2
sharing = "conditional"
acquired_on = "2026-10-01"
privacy_unit = "person_id"
unit_kind = "person"
[columns.person_id]
role = "identifier"
[columns.city]
role = "quasi"
keys = ["Taiyuan", "Datong"]
[columns.amount]
role = "sensitive"
bounds = {bounds}
"#
            ),
        )
        .expect("policy");
        path
    };
    let register = |bounds: &str| {
        veil([
            OsStr::new("dataset"),
            OsStr::new("register"),
            OsStr::new("--data-dir"),
            store.as_os_str(),
            OsStr::new("--name"),
            OsStr::new("people"),
            OsStr::new("--file"),
            csv.as_os_str(),
            OsStr::new("--policy"),
            policy(bounds).as_os_str(),
        ])
    };

    // ±1.7e308 is finite, but a sum over the table is not: refused, naming the column and the
    // fix, and nothing is kept.
    let (code, out, err) = register("[-1.7e308, 1.7e308]");
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("column `amount`"), "{err}");
    assert!(err.contains("narrow the bounds"), "{err}");
    let (_, list, _) = veil(["dataset", "list", "--data-dir", d]);
    assert!(!list.contains("people"), "{list}");

    // 1e18 × 3 rows fits in 2^62: registered.
    let (code, out, err) = register("[0, 1e18]");
    assert_eq!(code, Some(0), "{out}{err}");

    // One unit's share of a sum, at 1000 groups × 10000 rows × 1e18, does not fit: the
    // approval is refused naming the column and the flags to change; the defaults fit.
    let today = chrono::Utc::now().date_naive();
    let (code, out, err) = veil([
        "grant",
        "create",
        "--data-dir",
        d,
        "--operator",
        OPERATOR,
        "--datasets",
        "people",
        "--purpose",
        "tests",
        "--valid-from",
        &(today - chrono::Days::new(30)).to_string(),
        "--valid-to",
        &(today + chrono::Days::new(300)).to_string(),
        "--epsilon-per-month",
        "10",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let template = temp.path().join("template.toml");
    fs::write(
        &template,
        "name = \"amount_by_city\"\nsql = \"SELECT city, SUM(amount) AS total FROM people GROUP BY city\"\n",
    )
    .expect("template");
    let (code, out, err) = veil([
        OsStr::new("template"),
        OsStr::new("submit"),
        OsStr::new("--data-dir"),
        store.as_os_str(),
        OsStr::new("--operator"),
        OsStr::new(OPERATOR),
        OsStr::new("--file"),
        template.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let id = out
        .split("`: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("a template id in {out}"))
        .to_string();
    let (code, out, err) = veil([
        "template",
        "approve",
        "--data-dir",
        d,
        &id,
        "--epsilon",
        "1",
        "--max-groups",
        "1000",
        "--max-rows",
        "10000",
    ]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("column `people.amount`"), "{err}");
    assert!(err.contains("--max-groups"), "{err}");
    let (code, out, err) = veil([
        "template",
        "approve",
        "--data-dir",
        d,
        &id,
        "--epsilon",
        "1",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
}
