//! End to end over real HTTP on 127.0.0.1: the `veil serve` binary, driven through
//! `veil_sdk::client::Client` and the `veil client` commands as an operator, the bureau and a
//! buyer would.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use veil_runtime::principals::{self, Role};
use veil_runtime::templates::{ParamSpec, ParamType, TemplateSpec};
use veil_sdk::api::{ApproveTemplate, SubmitJob};
use veil_sdk::client::{Client, ClientError};

use crate::support::{Fixture, OPERATOR, server_url, veil_bin};

/// A `veil serve` process on a free loopback port, stopped when dropped.
pub(crate) struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    pub(crate) fn start(data_dir: &Path, workers: usize) -> Self {
        Self::start_with(data_dir, workers, &[])
    }

    /// [`Server::start`] with more `veil serve` flags.
    pub(crate) fn start_with(data_dir: &Path, workers: usize, flags: &[&str]) -> Self {
        let mut child = Command::new(veil_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--workers"])
            .arg(workers.to_string())
            .args(flags)
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("veil serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("veil serve prints its address");
        let url = server_url(&line);
        Self { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Keys {
    pub bureau: String,
    pub operator: String,
    pub buyer: String,
}

pub(crate) fn add_principals(fixture: &mut Fixture) -> Keys {
    let mut key = |role, name: &str| {
        principals::add(&mut fixture.store, role, name)
            .expect("principal")
            .1
            .expose()
            .to_string()
    };
    Keys {
        bureau: key(Role::Bureau, "bureau"),
        operator: key(Role::Operator, OPERATOR),
        buyer: key(Role::Buyer, "buyer-1"),
    }
}

fn persons_by_city(min_year: bool) -> TemplateSpec {
    TemplateSpec {
        name: "persons_by_city".into(),
        sql: if min_year {
            "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance WHERE birth_year >= :born GROUP BY city".into()
        } else {
            "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY city"
                .into()
        },
        params: if min_year {
            vec![ParamSpec {
                name: "born".into(),
                kind: ParamType::Integer,
                allowed: None,
            }]
        } else {
            Vec::new()
        },
        wasm: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_runs_a_job_through_the_sdk_and_downloads_a_verified_product() {
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 2);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");

    // The operator submits; the bureau approves; the operator sees the decision.
    let submitted = operator
        .submit_template(&persons_by_city(false))
        .await
        .expect("submitted");
    assert_eq!(submitted.state, "submitted");
    assert_eq!(
        submitted.id,
        persons_by_city(false).template_id().expect("id"),
        "the client can compute the id the server gives"
    );
    bureau
        .approve_template(
            &submitted.id,
            &ApproveTemplate {
                epsilon: Some(0.5),
                k: Some(5),
                price_per_run_fen: Some(250),
                ..Default::default()
            },
        )
        .await
        .expect("approved");
    let decided = operator
        .wait_template_decided(&submitted.id, Duration::from_secs(10))
        .await
        .expect("decided");
    assert_eq!(decided.state, "approved");

    // Pre-flight: passes, costs the approved ε and the per-run fee, reads the whole table.
    let job = SubmitJob {
        template: submitted.id.clone(),
        ..Default::default()
    };
    let check = operator.dry_run(&job).await.expect("dry run");
    assert!(check.passes, "{check:?}");
    assert_eq!(check.epsilon, 0.5);
    assert_eq!(check.price_fen, 250);
    assert_eq!(check.rows_scanned, 3_000);
    assert_eq!(check.epsilon_spent, 0.0);

    // A client that sends its own ε and k: ignored, only the approval applies.
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/jobs", server.url))
        .bearer_auth(&keys.operator)
        .header("idempotency-key", "first-run")
        .json(&serde_json::json!({ "template": submitted.id, "epsilon": 50.0, "k": 1 }))
        .send()
        .await
        .expect("submit");
    assert_eq!(raw.status(), 202);
    let first: veil_sdk::api::Submitted = raw.json().await.expect("body");
    assert_eq!(first.job.state, "queued");

    // The same idempotency key again: the same job, nothing new queued or charged.
    let replay = operator
        .submit_job(&job, Some("first-run"))
        .await
        .expect("replay");
    assert!(replay.replayed);
    assert_eq!(replay.job.id, first.job.id);
    // The same key for a different request is a conflict.
    let other = SubmitJob {
        template: submitted.id.clone(),
        grant: Some(fixture.grant.id.to_string()),
        ..Default::default()
    };
    assert!(matches!(
        operator.submit_job(&other, Some("first-run")).await,
        Err(ClientError::Conflict(_))
    ));

    let done = operator
        .wait_job(&first.job.id, Duration::from_secs(120))
        .await
        .expect("waited");
    assert_eq!(done.state, "released", "{done:?}");
    let jobs = bureau.jobs().await.expect("jobs");
    assert_eq!(jobs.len(), 1, "the replay ran nothing: {jobs:?}");
    let meter = operator.meter().await.expect("meter");
    assert_eq!(meter.len(), 1);
    assert_eq!(meter[0].price_fen, 250);
    assert_eq!(meter[0].micro_epsilon, 500_000);
    // Time and memory depend on the data: the operator's meter leaves them out, the bureau's
    // has them.
    assert_eq!(
        (
            meter[0].wall_ms,
            meter[0].cpu_ms,
            meter[0].peak_memory_bytes
        ),
        (None, None, None)
    );
    let bureau_meter = bureau.meter().await.expect("bureau meter");
    assert!(bureau_meter[0].wall_ms.is_some() && bureau_meter[0].peak_memory_bytes.is_some());

    // Download every file, resume one from the middle, and verify offline.
    let product = done.product_id.expect("product");
    let out = fixture.dir.path().join("download");
    operator
        .download_product(&product, &out, |_, _| {})
        .await
        .expect("download");
    let key = operator.platform_key().await.expect("key");
    let public = veil_runtime::keys::parse_public(&key.public_key_hex).expect("key parses");
    let verified =
        veil_sdk::manifest::verify_product_dir(&out, Some(&public)).expect("product verifies");
    assert_eq!(
        verified.manifest.privacy.epsilon, 0.5,
        "the client's ε was ignored"
    );
    assert_eq!(verified.manifest.privacy.k, 5, "the client's k was ignored");
    let csv = out.join("result.csv");
    let whole = std::fs::read(&csv).expect("csv");
    std::fs::write(out.join("result.csv.part"), &whole[..whole.len() / 2]).expect("part");
    std::fs::remove_file(&csv).expect("remove");
    let bytes = operator
        .download_file(&product, "result.csv", &csv, |_| {})
        .await
        .expect("resumed");
    assert_eq!(bytes as usize, whole.len());
    assert_eq!(
        std::fs::read(&csv).expect("csv"),
        whole,
        "resumed bytes match"
    );

    // The buyer cannot see the operator's product, which is not for sale.
    let buyer = Client::new(&server.url, &keys.buyer).expect("client");
    assert!(matches!(
        buyer.product(&product).await,
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(buyer.jobs().await, Err(ClientError::Forbidden(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_submits_against_a_budget_for_one_run_exactly_one() {
    // ε 1.5 a month, ε 1 a run: room for exactly one.
    let mut fixture = Fixture::with_budget(2_000, 1.5);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 2);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
    let template = operator
        .submit_template(&persons_by_city(true))
        .await
        .expect("submitted");
    bureau
        .approve_template(
            &template.id,
            &ApproveTemplate {
                epsilon: Some(1.0),
                k: Some(5),
                ..Default::default()
            },
        )
        .await
        .expect("approved");

    // Fifty different jobs (different parameters, so none reuses another's product).
    let submits = (0..50).map(|i| {
        let operator = operator.clone();
        let template = template.id.clone();
        tokio::spawn(async move {
            operator
                .submit_job(
                    &SubmitJob {
                        template,
                        params: [("born".to_string(), (1940 + i).to_string())].into(),
                        grant: None,
                    },
                    Some(&format!("concurrent-{i}")),
                )
                .await
        })
    });
    let mut ids = Vec::new();
    for submit in submits {
        ids.push(submit.await.expect("task").expect("queued").job.id);
    }
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    for id in &ids {
        let job = operator
            .wait_job(id, Duration::from_secs(300))
            .await
            .expect("ended");
        if job.state == "rejected" {
            assert!(
                job.violations.iter().any(|v| v.rule == "budget.exhausted"),
                "{job:?}"
            );
        }
        *states.entry(job.state).or_default() += 1;
    }
    assert_eq!(
        states,
        [("rejected".to_string(), 49), ("released".to_string(), 1)].into(),
    );
}

/// Runs `veil client …` with the server's URL and a key in the environment.
fn veil_client(server: &Server, key: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(veil_bin())
        .arg("client")
        .args(args)
        .env("VEIL_URL", &server.url)
        .env("VEIL_TOKEN", key)
        .output()
        .expect("veil client runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_cli_client_submits_waits_and_downloads_a_verified_product() {
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 1);
    let template_file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/templates/income_by_city_gender.toml");

    let (code, out, err) = veil_client(
        &server,
        &keys.operator,
        &[
            "--json",
            "template",
            "submit",
            template_file.to_str().expect("path"),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let template: serde_json::Value = serde_json::from_str(&out).expect("json");
    let id = template["id"].as_str().expect("id").to_string();
    assert_eq!(template["state"], "submitted");

    // An operator may not approve its own template.
    let (code, _, err) = veil_client(
        &server,
        &keys.operator,
        &["template", "approve", &id, "--epsilon", "1"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("bureau"), "{err}");
    let (code, out, err) = veil_client(
        &server,
        &keys.bureau,
        &["template", "approve", &id, "--epsilon", "1", "--k", "5"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("approved"), "{out}");

    let (code, out, err) = veil_client(
        &server,
        &keys.operator,
        &["job", "check", "--template", &id, "--param", "year=2024"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("would pass"), "{out}");

    let (code, out, err) = veil_client(
        &server,
        &keys.operator,
        &[
            "job",
            "submit",
            "--template",
            &id,
            "--param",
            "year=2024",
            "--wait",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("released"), "{out}");
    assert!(err.contains("job job-"), "progress goes to stderr: {err}");
    let product = out
        .lines()
        .find_map(|line| line.trim().strip_prefix("product: "))
        .expect("a product line")
        .to_string();

    let dir = fixture.dir.path().join("cli-download");
    let (code, out, err) = veil_client(
        &server,
        &keys.operator,
        &[
            "product",
            "download",
            &product,
            "--out",
            dir.to_str().expect("path"),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified"), "{out}");
    assert!(dir.join("result.parquet").exists());

    // A wrong key is told what to do.
    let (code, _, err) = veil_client(&server, "veil_nothing", &["whoami"]);
    assert_ne!(code, 0);
    assert!(err.contains("Authorization: Bearer"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buyer_buys_and_verifies_a_product_and_the_bureau_settles_the_month() {
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let provider_key = principals::add(
        &mut fixture.store,
        Role::Provider,
        "Shanxi Provincial Department of Human Resources and Social Security",
    )
    .expect("provider")
    .1
    .expose()
    .to_string();
    let server = Server::start(&fixture.store_path(), 1);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
    let buyer = Client::new(&server.url, &keys.buyer).expect("client");
    let provider = Client::new(&server.url, &provider_key).expect("client");

    // Operator: a template approved at 250 fen a run, one released job (the default price
    // book: no rows fee; sales split provider 40 %, platform 20 %, operator 40 %).
    let template = operator
        .submit_template(&persons_by_city(false))
        .await
        .expect("submitted");
    bureau
        .approve_template(
            &template.id,
            &ApproveTemplate {
                epsilon: Some(1.0),
                k: Some(5),
                price_per_run_fen: Some(250),
                ..Default::default()
            },
        )
        .await
        .expect("approved");
    let submitted = operator
        .submit_job(
            &SubmitJob {
                template: template.id.clone(),
                ..Default::default()
            },
            None,
        )
        .await
        .expect("queued");
    let job = operator
        .wait_job(&submitted.job.id, Duration::from_secs(120))
        .await
        .expect("ended");
    let product = job.product_id.expect("released");

    // Not for sale yet: the buyer cannot see it. Offered at ¥10.01: it can, and buys it once.
    assert!(matches!(
        buyer.product(&product).await,
        Err(ClientError::NotFound(_))
    ));
    operator
        .list_for_sale(&product, 1_001)
        .await
        .expect("listed");
    let offers = buyer.offers().await.expect("offers");
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].price_fen, Some(1_001));
    assert!(matches!(
        buyer
            .download_product(&product, &fixture.dir.path().join("early"), |_, _| {})
            .await,
        Err(ClientError::Forbidden(_))
    ));
    let bought = buyer.purchase(&product).await.expect("bought");
    assert!(bought.new);
    let again = buyer.purchase(&product).await.expect("bought again");
    assert!(!again.new, "a second purchase charges nothing");
    assert_eq!(again.id, bought.id);

    let out = fixture.dir.path().join("bought");
    buyer
        .download_product(&product, &out, |_, _| {})
        .await
        .expect("download");
    let key = buyer.platform_key().await.expect("key");
    let public = veil_runtime::keys::parse_public(&key.public_key_hex).expect("key");
    veil_sdk::manifest::verify_product_dir(&out, Some(&public)).expect("verifies offline");
    let verify = Command::new(veil_bin())
        .args(["product", "verify", "--public-key", &key.public_key_hex])
        .arg(&out)
        .output()
        .expect("veil product verify");
    assert!(verify.status.success(), "{verify:?}");

    // The month cannot be settled while it is open; a bureau process whose clock is past
    // the month's end settles it.
    let period = veil_runtime::clock::period_of(veil_runtime::clock::now());
    assert!(matches!(
        bureau.settle(&period).await,
        Err(ClientError::Invalid(_))
    ));
    let (_, end) = veil_runtime::settlement::period_bounds(&period).expect("period");
    let settled = Command::new(veil_bin())
        .args(["settle", "--period", &period, "--data-dir"])
        .arg(fixture.store_path())
        .env(
            "VEIL_CLOCK",
            veil_runtime::clock::format(end + chrono::Duration::hours(1)),
        )
        .output()
        .expect("veil settle");
    assert!(settled.status.success(), "{settled:?}");

    // By hand: the run charged the operator 250 to the platform. The sale of 1001 split
    // 40 % to the provider (400.4 → 400), 40 % to the operator (400), the rest (201) to the
    // platform.
    let statement = operator
        .statement(&period)
        .await
        .expect("operator statement");
    assert_eq!(statement["total_debit"], 250);
    assert_eq!(statement["total_credit"], 400);
    assert_eq!(statement["net"], 150);
    let statement = provider
        .statement(&period)
        .await
        .expect("provider statement");
    assert_eq!(statement["total_credit"], 400);
    assert_eq!(statement["net"], 400);
    let platform = bureau
        .statement_of(&period, "platform")
        .await
        .expect("platform statement");
    assert_eq!(platform["net"], 250 + 201);
    assert_eq!(
        platform["summary"]["total_debit"], platform["summary"]["total_credit"],
        "the ledger balances"
    );
    let usage = provider.usage().await.expect("usage");
    assert_eq!(usage[0]["sale_shares_earned"], 400);

    // The bureau recalls the product: the buyer is named, and nobody can download it.
    let recall = bureau
        .recall(&product, "a defect in the source data")
        .await
        .expect("recall");
    assert_eq!(recall.buyers, vec!["buyer-1".to_string()]);
    // The buyer's own list of purchases says so, with the bureau's reason.
    let purchases = buyer.purchases().await.expect("purchases");
    let notice = purchases[0].recalled.as_ref().expect("marked recalled");
    assert_eq!(notice.reason, "a defect in the source data");
    assert!(matches!(
        buyer
            .download_product(&product, &fixture.dir.path().join("late"), |_, _| {})
            .await,
        Err(ClientError::Conflict(_))
    ));
    assert!(buyer.offers().await.expect("offers").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wasm_template_is_submitted_through_the_sdk_and_released() {
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 1);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");

    // The template file names its module; the SDK reads both, uploads the module (checked by
    // the host before it is stored) and submits the spec naming it by digest.
    let guests = Path::new(veil_testkit::GUESTS_DIR);
    let text = include_str!("../../examples/templates/pension_eligibility.toml");
    let (spec, module) = TemplateSpec::from_file(text, guests).expect("template file");
    let module = module.expect("a WASM template has a module");
    let stored = operator.upload_module(module).await.expect("module stored");
    assert_eq!(
        Some(stored.blake3.as_str()),
        spec.wasm.as_ref().map(|w| w.module_blake3.as_str())
    );
    let template = operator.submit_template(&spec).await.expect("submitted");
    bureau
        .approve_template(
            &template.id,
            &ApproveTemplate {
                epsilon: Some(1.0),
                k: Some(5),
                max_groups: Some(1),
                max_rows: Some(1),
                ..Default::default()
            },
        )
        .await
        .expect("approved");
    let submitted = operator
        .submit_job(
            &SubmitJob {
                template: template.id.clone(),
                params: [("born_before".to_string(), "1971".to_string())].into(),
                grant: None,
            },
            None,
        )
        .await
        .expect("queued");
    let job = operator
        .wait_job(&submitted.job.id, Duration::from_secs(120))
        .await
        .expect("ended");
    assert_eq!(job.state, "released", "{job:?}");

    // A module that imports WASI is refused at upload, naming the rule.
    let wasi = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))"#,
    )
    .expect("wat");
    let refused = operator.upload_module(wasi).await;
    assert!(
        refused
            .as_ref()
            .err()
            .is_some_and(|e| e.violations().iter().any(|v| v.rule == "wasm.module")),
        "{refused:?}"
    );
}
