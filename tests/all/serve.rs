//! End to end over real HTTP on 127.0.0.1: the `veil serve` binary, driven through
//! `veil_sdk::client::Client` and the `veil client` commands as an operator, the bureau and a
//! buyer would.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
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
        Self::start_in(data_dir, workers, flags, &[])
    }

    /// [`Server::start_with`] with environment variables (e.g. a pinned `VEIL_CLOCK`).
    pub(crate) fn start_in(
        data_dir: &Path,
        workers: usize,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(veil_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--workers"])
            .arg(workers.to_string())
            .args(flags)
            .arg("--data-dir")
            .arg(data_dir)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("veil serve starts");
        // The server's notices and errors reach the test's output; its line per request and
        // per job would bury them, so they are left out here (the tests of the log read it).
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let routine = line
                    .split(' ')
                    .nth(3)
                    .is_some_and(|w| w == "request" || w == "job");
                if !routine {
                    eprintln!("{line}");
                }
            }
        });
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

pub(crate) fn persons_by_city(min_year: bool) -> TemplateSpec {
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
        versions: Default::default(),
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
    // Before approving, the bureau sees what its terms would give each output column; a
    // preview approves nothing.
    let (code, out, err) = veil_client(
        &server,
        &keys.bureau,
        &[
            "--json",
            "template",
            "approve",
            &id,
            "--epsilon",
            "0.05",
            "--k",
            "5",
            "--preview",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let preview: serde_json::Value = serde_json::from_str(&out).expect("json");
    let columns: Vec<&str> = preview["accuracy"]
        .as_array()
        .expect("accuracy per column")
        .iter()
        .filter_map(|c| c["column"].as_str())
        .collect();
    assert_eq!(columns, ["persons", "avg_income"], "{preview:#}");
    // At ε 0.05 the average of a five-person group is mostly noise: said so, naming it.
    assert!(
        preview["accuracy"][1]["warning"]
            .as_str()
            .is_some_and(|w| w.contains("`avg_income`")),
        "{preview:#}"
    );
    let (code, out, err) = veil_client(&server, &keys.bureau, &["--json", "template", "show", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("\"submitted\""),
        "a preview approves nothing: {out}"
    );
    let (code, out, err) = veil_client(
        &server,
        &keys.bureau,
        &["template", "approve", &id, "--epsilon", "1", "--k", "5"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("approved"), "{out}");
    assert!(
        out.contains("accuracy at 95 %") && out.contains("avg_income"),
        "{out}"
    );

    let (code, out, err) = veil_client(
        &server,
        &keys.operator,
        &["job", "check", "--template", &id, "--param", "year=2024"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("would pass"), "{out}");
    assert!(
        out.contains("accuracy at 95 %") && out.contains("persons"),
        "{out}"
    );

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
    let product = released_product(&operator, &template.id).await;

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

// --- Running the server as a service: its log, `/metrics`, its address, stopping, settings ---

/// A `veil serve` started with `args` whose standard error — its log — is collected; killed
/// when dropped unless it has exited.
struct Service {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Service {
    /// Starts `veil serve args…` with no `VEIL_*` setting from the test's environment but
    /// `env`, and waits for its address.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(veil_bin());
        command.arg("serve").args(args);
        for (name, _) in std::env::vars() {
            if name.starts_with("VEIL_") && name != "VEIL_CLOCK" {
                command.env_remove(name);
            }
        }
        let mut child = command
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("veil serve starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("veil serve prints its address");
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|url| url.starts_with("http://"))
            .unwrap_or_else(|| {
                panic!(
                    "veil serve printed no address: {line:?}\n{}",
                    log.lock().expect("log")
                )
            })
            .to_string();
        Self { child, url, log }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// The log once a line containing `needle` is in it (or a panic after `seconds`).
    fn log_with(&self, needle: &str, seconds: u64) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no `{needle}` in the server's log after {seconds} s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits (at most `seconds`) for the server to exit; its exit code.
    fn terminate(&mut self, seconds: u64) -> Option<i32> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting") {
                // The log's last lines are read by then or very soon after.
                std::thread::sleep(Duration::from_millis(100));
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "veil serve still runs {seconds} s after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The principal id of the principal named `name`.
fn principal_id(fixture: &Fixture, name: &str) -> String {
    principals::list(&fixture.store)
        .expect("principals")
        .into_iter()
        .find(|p| p.name == name)
        .map(|p| p.id)
        .expect("the principal exists")
}

/// The value of the sample of `family` whose labels include `labels` (a histogram: its count).
fn sample(
    exposition: &openmetrics_parser::MetricsExposition<
        openmetrics_parser::PrometheusType,
        openmetrics_parser::PrometheusValue,
    >,
    family: &str,
    labels: &[(&str, &str)],
) -> f64 {
    use openmetrics_parser::PrometheusValue;
    let family = exposition
        .families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}"));
    family
        .iter_samples()
        .find(|s| {
            let set = s.get_labelset().expect("labels");
            labels
                .iter()
                .all(|(name, value)| set.get_label_value(name) == Some(*value))
        })
        .map(|s| match &s.value {
            PrometheusValue::Counter(c) => c.value.as_f64(),
            PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
            PrometheusValue::Histogram(h) => h.count.unwrap_or(0) as f64,
            PrometheusValue::Summary(s) => s.count.unwrap_or(0) as f64,
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_names_route_templates_and_principals_and_metrics_count_the_requests() {
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let operator_id = principal_id(&fixture, OPERATOR);
    let bureau_id = principal_id(&fixture, "bureau");
    let store = fixture.store_path();
    let server = Service::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--data-dir",
            store.to_str().expect("path"),
        ],
        &[],
    );
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
    let http = reqwest::Client::new();

    let template = operator
        .submit_template(&persons_by_city(true))
        .await
        .expect("submitted");
    bureau
        .approve_template(
            &template.id,
            &ApproveTemplate {
                epsilon: Some(0.5),
                k: Some(5),
                ..Default::default()
            },
        )
        .await
        .expect("approved");
    // A parameter value that appears nowhere else: the log must not carry it.
    const BORN: &str = "1931";
    let submitted = operator
        .submit_job(
            &SubmitJob {
                template: template.id.clone(),
                params: [("born".to_string(), BORN.to_string())].into(),
                grant: None,
            },
            None,
        )
        .await
        .expect("queued");
    let job_id = submitted.job.id.clone();
    let job = operator
        .wait_job(&job_id, Duration::from_secs(60))
        .await
        .expect("ended");
    assert_eq!(job.state, "released", "{job:?}");
    // Three requests of one route, one with a query string; a path no route matches.
    for query in ["", "", "?verbose=secret-in-query"] {
        let answer = http
            .get(format!("{}/v1/jobs/{job_id}{query}", server.url))
            .bearer_auth(&keys.operator)
            .send()
            .await
            .expect("answer");
        assert_eq!(answer.status(), 200);
    }
    let missing = http
        .get(format!("{}/v1/no-such-route-secret", server.url))
        .bearer_auth(&keys.operator)
        .send()
        .await
        .expect("answer");
    assert_eq!(missing.status(), 404);

    // The metrics are the bureau's: an operator's key is refused, naming who may read them.
    let refused = http
        .get(format!("{}/metrics", server.url))
        .bearer_auth(&keys.operator)
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status(), 403);
    let body = refused.text().await.expect("body");
    assert!(body.contains("bureau"), "{body}");
    // A waiter is woken as soon as the job's end is in the store; the worker counts the end a
    // moment later. Scrape until it has (a few scrapes at most).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (text, metrics) = loop {
        let scraped = http
            .get(format!("{}/metrics", server.url))
            .bearer_auth(&keys.bureau)
            .send()
            .await
            .expect("answer");
        assert_eq!(scraped.status(), 200);
        assert!(
            scraped.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with("text/plain; version=0.0.4"),
            "{:?}",
            scraped.headers()
        );
        let text = scraped.text().await.expect("body");
        let metrics = openmetrics_parser::prometheus::parse_prometheus(&text)
            .unwrap_or_else(|e| panic!("not the Prometheus text format ({e}):\n{text}"));
        let counted = sample(&metrics, "veil_jobs_ended_total", &[("state", "released")]) == 1.0;
        if counted || std::time::Instant::now() > deadline {
            break (text, metrics);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let requests = |method, route, status| {
        sample(
            &metrics,
            "veil_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("GET", "/v1/jobs/{id}", "200"), 3.0, "{text}");
    assert_eq!(requests("POST", "/v1/jobs", "202"), 1.0, "{text}");
    assert_eq!(requests("POST", "/v1/templates", "201"), 1.0, "{text}");
    assert_eq!(requests("GET", "unmatched", "404"), 1.0, "{text}");
    assert_eq!(requests("GET", "/metrics", "403"), 1.0, "{text}");
    assert_eq!(
        sample(&metrics, "veil_jobs_ended_total", &[("state", "released")]),
        1.0
    );
    assert_eq!(
        sample(&metrics, "veil_jobs_ended_total", &[("state", "rejected")]),
        0.0
    );
    assert_eq!(
        sample(&metrics, "veil_job_duration_seconds", &[]),
        1.0,
        "{text}"
    );
    assert_eq!(sample(&metrics, "veil_jobs_queued", &[]), 0.0);
    assert_eq!(sample(&metrics, "veil_jobs_running", &[]), 0.0);
    assert_eq!(sample(&metrics, "veil_job_queue_capacity", &[]), 256.0);
    // Nothing in them names a job, a template, a concrete path or a value.
    for absent in [
        job_id.as_str(),
        template.id.as_str(),
        BORN,
        "secret",
        OPERATOR,
    ] {
        assert!(!text.contains(absent), "`{absent}` in the metrics:\n{text}");
    }

    // The log: route templates, statuses and principal ids, one line per request.
    let log = server.log_with("request GET /metrics 200", 10);
    let line_of = |needle: &str| -> String {
        log.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with `{needle}` in the log:\n{log}"))
            .to_string()
    };
    let submit = line_of("request POST /v1/jobs 202");
    assert!(
        submit.ends_with(&format!("principal={operator_id} role=operator")),
        "{submit}"
    );
    assert!(
        line_of("request POST /v1/templates/{id}/approve 200")
            .contains(&format!("principal={bureau_id} role=bureau")),
        "{log}"
    );
    assert_eq!(
        log.matches("request GET /v1/jobs/{id} 200").count(),
        3,
        "{log}"
    );
    // No route, no key check: the line says no principal rather than reading the key itself.
    assert!(
        line_of("request GET unmatched 404").ends_with("principal=-"),
        "{log}"
    );
    assert!(
        line_of("request GET /metrics 403").contains("role=operator"),
        "{log}"
    );
    // The job's start and end, by job and template id.
    let started = line_of("job started");
    assert!(
        started.contains(&format!("job={job_id} template={}", template.id)),
        "{started}"
    );
    let ended = line_of("job ended");
    assert!(
        ended.contains(&format!("job={job_id} template={}", template.id))
            && ended.contains("state=released"),
        "{ended}"
    );
    // Never a concrete path, a query, a parameter, a body or a key.
    for line in log.lines().filter(|l| l.contains(" request ")) {
        let route = line.split(' ').nth(5).expect("a route");
        assert!(
            route == "unmatched" || !route.contains(job_id.as_str()),
            "{line}"
        );
    }
    for absent in [
        "secret",
        "verbose",
        "born",
        "Bearer",
        keys.operator.as_str(),
        keys.bureau.as_str(),
    ] {
        assert!(!log.contains(absent), "`{absent}` in the log:\n{log}");
    }
    for token in log.split_whitespace() {
        assert!(
            !token.contains(BORN) || token.ends_with("ms"),
            "the parameter's value in the log: {token}\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listening_beyond_loopback_is_warned_about_and_a_host_name_is_resolved() {
    let fixture = Fixture::new(100);
    let store = fixture.store_path();
    let store = store.to_str().expect("path");

    let open = Service::start(&["--listen", "0.0.0.0:0", "--data-dir", store], &[]);
    assert!(open.url.starts_with("http://0.0.0.0:"), "{}", open.url);
    let log = open.log_with("not a loopback address", 10);
    assert!(log.contains("warning: listening on 0.0.0.0:"), "{log}");
    assert!(
        log.contains("127.0.0.1"),
        "the warning says what to do instead: {log}"
    );
    drop(open);

    let local = Service::start(&["--listen", "localhost:0", "--data-dir", store], &[]);
    assert!(
        local.url.starts_with("http://127.0.0.1:") || local.url.starts_with("http://[::1]:"),
        "{}",
        local.url
    );
    let health = reqwest::get(format!("{}/v1/health", local.url))
        .await
        .expect("answer");
    assert_eq!(health.status(), 200);
    assert!(
        !local.log().contains("loopback"),
        "no warning on loopback: {}",
        local.log()
    );

    // An address that is not host:port is refused, saying what to give.
    let refused = Command::new(veil_bin())
        .args(["serve", "--listen", "localhost", "--data-dir", store])
        .output()
        .expect("veil serve runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("host:port"), "{stderr}");
}

/// A mapper that loops until its fuel runs out, for every unit: a job over it runs for as long
/// as the units' fuel lasts, long enough to stop the server while it runs.
const LOOPING_MAPPER: &str = r#"(module
    (memory (export "memory") 1)
    (func (export "veil_alloc") (param i32) (result i32) (i32.const 8192))
    (func (export "veil_map") (param i32 i32) (result i64)
        (loop $forever (br $forever))
        (i64.const 0)))"#;

/// Fuel per unit of the looping mapper: a job over the 3,000-row fixture runs one to a few
/// seconds, depending on the machine.
pub(crate) const LOOP_FUEL_PER_UNIT: u64 = 4_000_000;

/// Submits and approves a WASM template over [`LOOPING_MAPPER`] with a parameter `born`, so
/// that each value is another job, allowing each unit `fuel_per_unit`; returns its id.
pub(crate) async fn looping_template(
    operator: &Client,
    bureau: &Client,
    fuel_per_unit: u64,
) -> String {
    use veil_sdk::template::{Fallback, OutputSpec, OutputType, WasmSpec};
    let module = wat::parse_str(LOOPING_MAPPER).expect("wat");
    operator
        .upload_module(module.clone())
        .await
        .expect("the module is accepted");
    let spec = TemplateSpec {
        name: "looper".into(),
        sql: "SELECT COUNT(DISTINCT person_id) AS persons, SUM(one) AS ones FROM mapped".into(),
        params: vec![ParamSpec {
            name: "born".into(),
            kind: ParamType::Integer,
            allowed: None,
        }],
        wasm: Some(WasmSpec {
            module_blake3: blake3::hash(&module).to_hex().to_string(),
            input_sql: "SELECT person_id FROM social_insurance WHERE birth_year < :born".into(),
            output: vec![OutputSpec {
                name: "one".into(),
                kind: OutputType::Integer,
                bounds: Some([0.0, 1.0]),
                keys: None,
                default: Some(serde_json::json!(1)),
            }],
            max_rows_per_unit: 1,
            fallback: Fallback::Default,
        }),
        versions: Default::default(),
    };
    let template = operator.submit_template(&spec).await.expect("submitted");
    bureau
        .approve_template(
            &template.id,
            &ApproveTemplate {
                epsilon: Some(0.5),
                k: Some(5),
                max_groups: Some(1),
                max_rows: Some(1),
                wasm_fuel_per_unit: Some(fuel_per_unit),
                ..Default::default()
            },
        )
        .await
        .expect("approved");
    template.id
}

/// Submits a job of `template` with `born`; returns its id once a worker runs it (waiting for
/// that only when `until_running`).
pub(crate) async fn submit_looper(
    operator: &Client,
    template: &str,
    born: &str,
    until_running: bool,
) -> String {
    let submitted = operator
        .submit_job(
            &SubmitJob {
                template: template.to_string(),
                params: [("born".to_string(), born.to_string())].into(),
                grant: None,
            },
            None,
        )
        .await
        .expect("queued");
    let id = submitted.job.id;
    if !until_running {
        return id;
    }
    loop {
        let job = operator.job(&id).await.expect("job");
        match job.state.as_str() {
            "running" => return id,
            "queued" => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("the job ended ({other}) before it was seen running: {job:?}"),
        }
    }
}

/// A job's state as the store holds it.
fn stored_state(fixture: &Fixture, job: &str) -> String {
    veil_runtime::jobs::get(&fixture.store, job)
        .expect("the job")
        .state
        .as_str()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_running_job_finish_re_queues_a_waiting_one_and_says_so() {
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let store = fixture.store_path();
    let store = store.to_str().expect("path").to_string();
    let mut server = Service::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--data-dir",
            &store,
        ],
        &[],
    );
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
    let template = looping_template(&operator, &bureau, LOOP_FUEL_PER_UNIT).await;

    // One worker: the first job runs, the second waits behind it when the signal comes.
    let running = submit_looper(&operator, &template, "2100", true).await;
    let waiting = submit_looper(&operator, &template, "2101", false).await;
    let code = server.terminate(120);
    let log = server.log();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    assert!(
        log.contains(
            "stopped: 1 job(s) finished, 1 re-queued (they run at the next start), 0 cancelled"
        ),
        "{log}"
    );
    assert_eq!(stored_state(&fixture, &running), "released");
    assert_eq!(stored_state(&fixture, &waiting), "queued");

    // The next start runs the re-queued job. With a one-second grace period, a job still
    // running when the server is stopped is cancelled, and the server says so.
    let mut server = Service::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--grace-seconds",
            "1",
            "--data-dir",
            &store,
        ],
        &[],
    );
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let job = operator
        .wait_job(&waiting, Duration::from_secs(120))
        .await
        .expect("ended");
    assert_eq!(job.state, "released", "{job:?}");
    let overdue = submit_looper(&operator, &template, "2102", true).await;
    let code = server.terminate(60);
    let log = server.log();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("1 job(s) still running after the 1 s grace period; cancelling them"),
        "{log}"
    );
    assert!(
        log.contains(
            "stopped: 0 job(s) finished, 0 re-queued (they run at the next start), 1 cancelled"
        ),
        "{log}"
    );
    assert_eq!(stored_state(&fixture, &overdue), "cancelled");
}

/// `veil_job_queue_capacity` as the bureau scrapes it.
async fn queue_capacity(url: &str, bureau_key: &str) -> f64 {
    let text = reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .bearer_auth(bureau_key)
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("body");
    let metrics = openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("not the Prometheus text format ({e}):\n{text}"));
    sample(&metrics, "veil_job_queue_capacity", &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_file_sets_the_server_and_the_environment_and_flags_override_it() {
    let mut fixture = Fixture::new(100);
    let keys = add_principals(&mut fixture);
    let bureau_id = principal_id(&fixture, "bureau");
    // The store folder is named relative to the file, which is elsewhere than the test's
    // working folder.
    let config = fixture.dir.path().join("serve.toml");
    std::fs::write(
        &config,
        "data_dir = \"store\"\nlisten = \"127.0.0.1:0\"\nqueue = 7\nlog_format = \"json\"\n",
    )
    .expect("config file");
    let config = config.to_str().expect("path");

    let server = Service::start(&["--config", config], &[]);
    assert_eq!(queue_capacity(&server.url, &keys.bureau).await, 7.0);
    let log = server.log_with("\"event\":\"request\"", 10);
    for line in log.lines() {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        if entry["event"] == "request" {
            assert_eq!(entry["method"], "GET", "{line}");
            assert_eq!(entry["route"], "/metrics", "{line}");
            assert_eq!(entry["status"], 200, "{line}");
            assert_eq!(entry["principal"], bureau_id.as_str(), "{line}");
            assert_eq!(entry["role"], "bureau", "{line}");
            assert!(entry["duration_ms"].is_u64(), "{line}");
        }
    }
    drop(server);

    // An environment variable overrides the file; a flag overrides both.
    let server = Service::start(
        &["--config", config],
        &[("VEIL_QUEUE", "5"), ("VEIL_LOG_FORMAT", "text")],
    );
    assert_eq!(queue_capacity(&server.url, &keys.bureau).await, 5.0);
    let log = server.log_with("request GET /metrics 200", 10);
    assert!(!log.contains("\"event\""), "{log}");
    drop(server);
    let server = Service::start(
        &["--config", config, "--queue", "3"],
        &[("VEIL_QUEUE", "5")],
    );
    assert_eq!(queue_capacity(&server.url, &keys.bureau).await, 3.0);
    drop(server);

    // A misspelt key is refused by name, with the keys there are.
    std::fs::write(fixture.dir.path().join("bad.toml"), "worker = 3\n").expect("file");
    let refused = Command::new(veil_bin())
        .args(["serve", "--config"])
        .arg(fixture.dir.path().join("bad.toml"))
        .output()
        .expect("veil serve runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown field `worker`"), "{stderr}");
    assert!(stderr.contains("workers"), "{stderr}");
}

/// Runs `veil client args…` with only the `VEIL_*` variables in `env`.
fn client_with(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(veil_bin());
    command.arg("client").args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("VEIL_") {
            command.env_remove(name);
        }
    }
    let output = command
        .envs(env.iter().copied())
        .output()
        .expect("veil client runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_client_profile_names_the_server_and_a_key_file_and_the_environment_overrides_it() {
    use std::os::unix::fs::PermissionsExt;
    let mut fixture = Fixture::new(100);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 1);
    let dir = fixture.dir.path().join("profiles");
    std::fs::create_dir_all(&dir).expect("folder");
    let key_file = dir.join("operator.key");
    std::fs::write(&key_file, format!("{}\n", keys.operator)).expect("key file");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let profile = dir.join("operator.toml");
    std::fs::write(
        &profile,
        format!("url = \"{}\"\ntoken_file = \"operator.key\"\n", server.url),
    )
    .expect("profile");
    let profile = profile.to_str().expect("path");

    // The profile alone: its server, the key in its token file (found next to the profile).
    let (code, out, err) = client_with(&["--profile", profile, "whoami"], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(OPERATOR), "{out}");
    assert!(!err.contains("warning"), "{err}");
    // The environment overrides it: another key.
    let (code, out, err) = client_with(
        &["whoami"],
        &[("VEIL_PROFILE", profile), ("VEIL_TOKEN", &keys.bureau)],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("bureau "), "{out}");
    // And a flag overrides the environment: a server where none listens is not reached.
    let (code, _, err) = client_with(
        &["--url", "http://127.0.0.1:9", "whoami"],
        &[("VEIL_PROFILE", profile), ("VEIL_URL", &server.url)],
    );
    assert_ne!(code, Some(0), "{err}");

    // A key file others may read is warned about.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, _, err) = client_with(&["--profile", profile, "whoami"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("chmod 600"), "{err}");

    // With no server named anywhere, the message lists every place one may come from.
    let (code, _, err) = client_with(&["whoami"], &[("VEIL_TOKEN", &keys.operator)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--url") && err.contains("VEIL_URL") && err.contains("--profile"),
        "{err}"
    );
}

/// `veil client template show` prints what an operator's engineer needs to write a job: the
/// SQL, each parameter with its type and allowed values, the state, and once approved the
/// bureau's terms.
#[test]
fn the_client_shows_a_templates_sql_parameters_state_and_terms() {
    let mut fixture = Fixture::new(100);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 1);
    let template = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/templates/income_by_city_gender.toml");
    let operator = [
        ("VEIL_URL", server.url.as_str()),
        ("VEIL_TOKEN", &keys.operator),
    ];
    let bureau = [
        ("VEIL_URL", server.url.as_str()),
        ("VEIL_TOKEN", &keys.bureau),
    ];
    let (code, _, err) = client_with(
        &["template", "submit", template.to_str().expect("path")],
        &operator,
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, listed, err) = client_with(&["--json", "template", "list"], &operator);
    assert_eq!(code, Some(0), "{err}");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    let id = listed[0]["id"].as_str().expect("an id").to_string();

    let (code, shown, err) = client_with(&["template", "show", &id], &operator);
    assert_eq!(code, Some(0), "{err}");
    for expected in [
        "template `income_by_city_gender`",
        "state:      submitted",
        "approval:   none yet",
        "param:      :year (integer, one of 2023, 2024, 2025)",
        "WHERE year = :year",
    ] {
        assert!(shown.contains(expected), "{expected:?} in:\n{shown}");
    }

    let (code, _, err) = client_with(
        &[
            "template",
            "approve",
            &id,
            "--epsilon",
            "1",
            "--k",
            "5",
            "--price-fen",
            "500",
        ],
        &bureau,
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, shown, err) = client_with(&["template", "show", &id], &operator);
    assert_eq!(code, Some(0), "{err}");
    assert!(shown.contains("state:      approved"), "{shown}");
    assert!(
        shown.contains("approval:   ε 1 δ") && shown.contains("k 5") && shown.contains("price"),
        "{shown}"
    );
    assert!(
        shown.contains("limits:     memory 1024 MiB, wall 300 s"),
        "{shown}"
    );
}

/// Submits a job of `template` (no parameters) as `operator`, waits for it, and returns the
/// product it released.
/// Submits `spec` as the operator and approves it with `terms` as the bureau; returns its id.
pub(crate) async fn approved_template(
    operator: &Client,
    bureau: &Client,
    spec: &TemplateSpec,
    terms: ApproveTemplate,
) -> String {
    let template = operator.submit_template(spec).await.expect("submitted");
    bureau
        .approve_template(&template.id, &terms)
        .await
        .expect("approved");
    template.id
}

pub(crate) async fn released_product(operator: &Client, template: &str) -> String {
    let submitted = operator
        .submit_job(
            &SubmitJob {
                template: template.to_string(),
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
    job.product_id.expect("released")
}
