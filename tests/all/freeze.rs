//! The emergency stop, end to end: the bureau freezes the platform, a dataset or an operator
//! over HTTP or with `veil freeze` on the store; jobs under the freeze are cancelled (ε they
//! reserved stays spent), new ones are refused naming the rule `platform.frozen` and the
//! freeze, downloads are blocked when asked, and lifting it is a separate act the incident log
//! records.

use std::process::Command;
use std::time::Duration;

use veil_runtime::budget::{self, Period};
use veil_runtime::clock;
use veil_runtime::templates::TemplateSpec;
use veil_sdk::api::{ApproveTemplate, FreezeRequest, SubmitJob};
use veil_sdk::client::{Client, ClientError};

use crate::serve::{Server, add_principals, looping_template, persons_by_city, submit_looper};
use crate::support::{Fixture, OPERATOR, veil_bin};

/// How long a test waits for a job to end, in seconds.
const JOB_WAIT_SECONDS: u64 = 120;
/// ε the looping template's approval reserves per job, in millionths.
const LOOP_MICRO_EPSILON: i64 = 500_000;

/// The looper's fuel here: a job that would run for tens of seconds, so that it is surely
/// still running when a freeze (seen by the server's monitor within 2 s) cancels it.
const LONG_LOOP_FUEL_PER_UNIT: u64 = 20 * crate::serve::LOOP_FUEL_PER_UNIT;

/// Submits `spec`, approves it and returns its id.
async fn approved(operator: &Client, bureau: &Client, spec: &TemplateSpec) -> String {
    let terms = ApproveTemplate {
        epsilon: Some(0.5),
        k: Some(5),
        price_per_run_fen: Some(100),
        ..Default::default()
    };
    crate::serve::approved_template(operator, bureau, spec, terms).await
}

/// Firms per industry: a template that reads only `enterprise_registry`.
fn firms_by_industry() -> TemplateSpec {
    TemplateSpec {
        name: "firms_by_industry".into(),
        sql: "SELECT industry, COUNT(DISTINCT legal_rep_id) AS firms FROM enterprise_registry GROUP BY industry".into(),
        params: Vec::new(),
        wasm: None,
        versions: Default::default(),
    }
}

fn job(template: &str, params: &[(&str, &str)]) -> SubmitJob {
    SubmitJob {
        template: template.to_string(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        grant: None,
    }
}

/// Submits a job and waits for its end; returns its final state and product.
async fn run(operator: &Client, submit: &SubmitJob) -> (String, Option<String>) {
    let submitted = operator.submit_job(submit, None).await.expect("queued");
    let ended = operator
        .wait_job(&submitted.job.id, Duration::from_secs(JOB_WAIT_SECONDS))
        .await
        .expect("ended");
    (ended.state, ended.product_id)
}

/// The refusal of a submission under a freeze: a conflict naming the rule, the freeze and its
/// reason.
async fn refused(operator: &Client, submit: &SubmitJob, freeze: &str, reason: &str) {
    match operator.submit_job(submit, None).await {
        Err(ClientError::Conflict(message)) => {
            assert!(message.starts_with("platform.frozen: "), "{message}");
            assert!(message.contains(freeze), "{message}");
            assert!(message.contains(reason), "{message}");
        }
        other => panic!("a submission under freeze {freeze} was not refused: {other:?}"),
    }
}

/// ε the fixture's grant has spent this month, in millionths.
fn grant_spent(fixture: &Fixture) -> i64 {
    budget::spent_by_grant(
        fixture.store.conn(),
        fixture.grant.id.as_str(),
        &Period::of(clock::now()),
    )
    .expect("spent")
    .micro_epsilon
    .0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_platform_freeze_cancels_a_running_job_and_refuses_new_ones_until_lifted() {
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 1);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
    let looper = looping_template(&operator, &bureau, LONG_LOOP_FUEL_PER_UNIT).await;
    let counting = approved(&operator, &bureau, &persons_by_city(false)).await;

    let running = submit_looper(&operator, &looper, "2100", true).await;
    // A freeze needs a reason; only the bureau may impose one.
    let platform = |reason: &str| FreezeRequest {
        scope: "platform".into(),
        target: None,
        reason: reason.into(),
        block_downloads: false,
    };
    assert!(matches!(
        bureau.freeze(&platform(" ")).await,
        Err(ClientError::Invalid(_))
    ));
    assert!(matches!(
        operator.freeze(&platform("mine")).await,
        Err(ClientError::Forbidden(_))
    ));
    let freeze = bureau
        .freeze(&platform("suspected breach at the provider"))
        .await
        .expect("frozen");
    assert!(freeze.active);
    assert_eq!(freeze.cancelled_jobs, vec![running.clone()]);

    // The running job ends cancelled, with no product, and the ε it reserved stays spent.
    let ended = operator
        .wait_job(&running, Duration::from_secs(JOB_WAIT_SECONDS))
        .await
        .expect("ended");
    assert_eq!(ended.state, "cancelled", "{ended:?}");
    assert_eq!(ended.product_id, None);
    assert_eq!(grant_spent(&fixture), LOOP_MICRO_EPSILON);

    // New submissions are refused, naming the freeze, until the bureau lifts it.
    refused(
        &operator,
        &job(&counting, &[]),
        &freeze.id,
        "suspected breach at the provider",
    )
    .await;
    // Freezing the platform twice is refused; the first freeze is named.
    match bureau.freeze(&platform("again")).await {
        Err(ClientError::Conflict(message)) => assert!(message.contains(&freeze.id), "{message}"),
        other => panic!("a second platform freeze: {other:?}"),
    }
    let lifted = bureau
        .lift_freeze(&freeze.id, "provider confirmed no breach")
        .await
        .expect("lifted");
    assert!(!lifted.active);
    assert!(matches!(
        bureau.lift_freeze(&freeze.id, "twice").await,
        Err(ClientError::Conflict(_))
    ));
    let (state, product) = run(&operator, &job(&counting, &[])).await;
    assert_eq!(state, "released");
    assert!(product.is_some());

    // The incident log: the one freeze, who froze and lifted it, and why.
    let log = bureau.freezes().await.expect("incident log");
    assert_eq!(log.len(), 1, "{log:?}");
    let entry = &log[0];
    assert_eq!(entry.id, freeze.id);
    assert_eq!(entry.scope, "platform");
    assert_eq!(entry.frozen_by, "bureau");
    assert_eq!(entry.reason, "suspected breach at the provider");
    assert_eq!(entry.lifted_by.as_deref(), Some("bureau"));
    assert_eq!(
        entry.lift_reason.as_deref(),
        Some("provider confirmed no breach")
    );
    assert!(entry.lifted_at.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dataset_freeze_refuses_only_its_jobs_and_blocks_downloads_until_lifted() {
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 2);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
    let buyer = Client::new(&server.url, &keys.buyer).expect("client");
    let persons = approved(&operator, &bureau, &persons_by_city(true)).await;
    let firms = approved(&operator, &bureau, &firms_by_industry()).await;

    // A product from social_insurance, sold to the buyer.
    let (state, product) = run(&operator, &job(&persons, &[("born", "1960")])).await;
    assert_eq!(state, "released");
    let product = product.expect("a product");
    operator.list_for_sale(&product, 500).await.expect("listed");
    buyer.purchase(&product).await.expect("bought");

    let freeze = bureau
        .freeze(&FreezeRequest {
            scope: "dataset".into(),
            target: Some("social_insurance".into()),
            reason: "provider reported a wrong column".into(),
            block_downloads: true,
        })
        .await
        .expect("frozen");
    // The target is stored as the dataset's id, whatever name the bureau typed.
    assert!(freeze.target.starts_with("ds-"), "{freeze:?}");

    // Jobs reading the frozen dataset are refused; jobs reading only another are not.
    refused(
        &operator,
        &job(&persons, &[("born", "1970")]),
        &freeze.id,
        "provider reported a wrong column",
    )
    .await;
    let (state, _) = run(&operator, &job(&firms, &[])).await;
    assert_eq!(state, "released");

    // The buyer's download, through `veil client`, is refused while the freeze holds.
    let out = fixture.dir.path().join("bought");
    let download = || {
        Command::new(veil_bin())
            .args(["client", "--url", &server.url, "--token", &keys.buyer])
            .args(["product", "download", &product, "--out"])
            .arg(&out)
            .output()
            .expect("veil client runs")
    };
    let blocked = download();
    let stderr = String::from_utf8_lossy(&blocked.stderr);
    assert!(!blocked.status.success(), "{stderr}");
    assert!(stderr.contains("platform.frozen"), "{stderr}");
    assert!(stderr.contains(&freeze.id), "{stderr}");
    assert!(!out.join("result.csv").exists());

    bureau
        .lift_freeze(&freeze.id, "column corrected")
        .await
        .expect("lifted");
    let restored = download();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert!(out.join("manifest.json").exists());
    let (state, _) = run(&operator, &job(&persons, &[("born", "1970")])).await;
    assert_eq!(state, "released");
}

/// Runs `veil` with `args`; returns its exit code, standard output and standard error.
fn veil(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(veil_bin())
        .args(args)
        .output()
        .expect("veil runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn veil_freeze_on_the_store_stops_a_running_server_s_jobs() {
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let store = fixture.store_path();
    let store = store.to_str().expect("path").to_string();
    let server = Server::start(&fixture.store_path(), 1);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
    let looper = looping_template(&operator, &bureau, LONG_LOOP_FUEL_PER_UNIT).await;
    let counting = approved(&operator, &bureau, &persons_by_city(false)).await;

    // What to change is said for a target that does not exist and for a missing reason.
    let (code, _, stderr) = veil(&[
        "freeze",
        "--data-dir",
        &store,
        "--scope",
        "dataset",
        "--target",
        "nope",
        "--reason",
        "x",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("dataset `nope` does not exist"), "{stderr}");
    let (code, _, stderr) = veil(&["freeze", "--data-dir", &store, "--scope", "platform"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--reason"), "{stderr}");

    // The operator's running job: the server's monitor sees the freeze and cancels it.
    let running = submit_looper(&operator, &looper, "2100", true).await;
    let (code, stdout, stderr) = veil(&[
        "freeze",
        "--data-dir",
        &store,
        "--scope",
        "operator",
        "--target",
        OPERATOR,
        "--reason",
        "operator under investigation",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let freeze: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let id = freeze["id"].as_str().expect("an id").to_string();
    let ended = operator
        .wait_job(&running, Duration::from_secs(JOB_WAIT_SECONDS))
        .await
        .expect("ended");
    assert_eq!(ended.state, "cancelled", "{ended:?}");
    assert_eq!(grant_spent(&fixture), LOOP_MICRO_EPSILON);

    // The server refuses the operator's new jobs.
    refused(
        &operator,
        &job(&counting, &[]),
        &id,
        "operator under investigation",
    )
    .await;

    // The incident log on the store, then the lift; the server takes jobs again.
    let (code, stdout, stderr) = veil(&["freeze", "list", "--data-dir", &store]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(&id), "{stdout}");
    assert!(stdout.contains("operator under investigation"), "{stdout}");
    let (code, stdout, stderr) = veil(&[
        "freeze",
        "lift",
        &id,
        "--data-dir",
        &store,
        "--reason",
        "cleared",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(&format!("lifted freeze {id}")), "{stdout}");
    let (code, stdout, _) = veil(&["freeze", "list", "--data-dir", &store, "--json"]);
    assert_eq!(code, Some(0));
    let log: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(log[0]["lifted_by"], "bureau");
    assert_eq!(log[0]["lift_reason"], "cleared");
    let (state, _) = run(&operator, &job(&counting, &[])).await;
    assert_eq!(state, "released");
}

/// The value of cookie `name` a response sets.
fn set_cookie(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .expect("the cookie is set")
        .to_string()
}

/// The CSRF token a console page's forms carry.
fn csrf_of(html: &str) -> String {
    html.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a csrf field")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bureau_freezes_and_lifts_in_the_console() {
    let mut fixture = Fixture::new(200);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 1);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // Sign in as the bureau.
    let page = http
        .get(format!("{}/console/sign-in", server.url))
        .send()
        .await
        .expect("sign-in page");
    let sign_in = set_cookie(&page, "veil_signin");
    let csrf = csrf_of(&page.text().await.expect("html"));
    let signed = http
        .post(format!("{}/console/sign-in", server.url))
        .header("cookie", format!("veil_signin={sign_in}"))
        .form(&[("key", keys.bureau.as_str()), ("csrf", csrf.as_str())])
        .send()
        .await
        .expect("signed in");
    let session = format!("veil_session={}", set_cookie(&signed, "veil_session"));
    let open = || async {
        let page = http
            .get(format!("{}/console/bureau/incidents", server.url))
            .header("cookie", &session)
            .send()
            .await
            .expect("incidents page");
        assert_eq!(page.status(), reqwest::StatusCode::OK);
        page.text().await.expect("html")
    };
    let html = open().await;
    assert!(html.contains("Incidents 应急"), "{html}");
    assert!(html.contains(r#"<label for="freeze-downloads">"#), "{html}");

    // The freeze switch: a dataset, downloads blocked.
    let csrf = csrf_of(&html);
    let posted = http
        .post(format!("{}/console/bureau/incidents/freeze", server.url))
        .header("cookie", &session)
        .form(&[
            ("csrf", csrf.as_str()),
            ("scope", "dataset"),
            ("target", "enterprise_registry"),
            ("reason", "registry audit under way"),
            ("block_downloads", "on"),
        ])
        .send()
        .await
        .expect("frozen");
    assert_eq!(posted.status(), reqwest::StatusCode::SEE_OTHER);
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
    let log = bureau.freezes().await.expect("log");
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].active && log[0].block_downloads, "{log:?}");
    let html = open().await;
    assert!(html.contains("registry audit under way"), "{html}");
    assert!(
        html.contains(&format!(r#"id="lift-{}""#, log[0].id)),
        "{html}"
    );

    // A second freeze of the same dataset is refused in place, naming the first.
    let refused = http
        .post(format!("{}/console/bureau/incidents/freeze", server.url))
        .header("cookie", &session)
        .form(&[
            ("csrf", csrf.as_str()),
            ("scope", "dataset"),
            ("target", "enterprise_registry"),
            ("reason", "again"),
        ])
        .send()
        .await
        .expect("answered");
    assert_eq!(refused.status(), reqwest::StatusCode::CONFLICT);
    assert!(refused.text().await.expect("html").contains(&log[0].id));

    // Lifting it from its form.
    let lifted = http
        .post(format!(
            "{}/console/bureau/incidents/{}/lift",
            server.url, log[0].id
        ))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str()), ("reason", "audit finished")])
        .send()
        .await
        .expect("lifted");
    assert_eq!(lifted.status(), reqwest::StatusCode::SEE_OTHER);
    let log = bureau.freezes().await.expect("log");
    assert!(!log[0].active);
    assert_eq!(log[0].lift_reason.as_deref(), Some("audit finished"));
    let html = open().await;
    assert!(html.contains("audit finished"), "{html}");
    assert!(
        !html.contains(&format!(r#"id="lift-{}""#, log[0].id)),
        "{html}"
    );
}
