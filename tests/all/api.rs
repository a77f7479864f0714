//! The HTTP API without a port: every route × every role × own or another's object, and the
//! status each must answer (ISSUE 3's authorization matrix).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;
use veil_runtime::grants;
use veil_runtime::ids::{Fen, ProductId};
use veil_runtime::jobs::JobOutcome;
use veil_runtime::market;
use veil_runtime::principals::{self, Role};
use veil_runtime::templates::{self, TemplateSpec};
use veil_server::{self, AppState, StorePool, Workers};

use crate::support::{self, Fixture, OPERATOR};

const OTHER_OPERATOR: &str = "op-other";
const PROVIDER: &str = "Shanxi Provincial Department of Human Resources and Social Security";

/// The callers of the matrix, in the order each row is tried (the bureau last, since its
/// calls change state).
const CALLERS: [&str; 5] = ["provider", "buyer", "op_other", "op_own", "bureau"];

struct Keys {
    provider: String,
    buyer: String,
    op_other: String,
    op_own: String,
    bureau: String,
}

impl Keys {
    fn of(&self, caller: &str) -> &str {
        match caller {
            "provider" => &self.provider,
            "buyer" => &self.buyer,
            "op_other" => &self.op_other,
            "op_own" => &self.op_own,
            _ => &self.bureau,
        }
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Vec<u8>>,
) -> (StatusCode, serde_json::Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let body = match body {
        Some(bytes) => {
            request = request.header("content-type", "application/json");
            Body::from(bytes)
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
        .await
        .expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn spec(name: &str) -> TemplateSpec {
    TemplateSpec {
        name: name.into(),
        sql:
            "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY city"
                .into(),
        params: Vec::new(),
        wasm: None,
        versions: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_checks_role_and_ownership() {
    let mut fixture = Fixture::new(3_000);
    let store = &mut fixture.store;
    let key = |store: &mut _, role, name: &str| {
        principals::add(store, role, name)
            .expect("principal")
            .1
            .expose()
            .to_string()
    };
    let keys = Keys {
        bureau: key(store, Role::Bureau, "bureau"),
        provider: key(store, Role::Provider, PROVIDER),
        op_own: key(store, Role::Operator, OPERATOR),
        op_other: key(store, Role::Operator, OTHER_OPERATOR),
        buyer: key(store, Role::Buyer, "buyer-1"),
    };
    // Objects of OPERATOR: an approved template with a released job, a pending template, a
    // grant request.
    let approved = support::submit_and_approve(
        store,
        "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY city",
        &[],
        support::approval(),
    )
    .expect("template");
    let outcome = fixture.run(&approved, &[]).await.expect("job");
    let job = outcome.job_id().to_string();
    let listed = product_of(&outcome);
    let by_gender = support::submit_and_approve(
        &mut fixture.store,
        "SELECT gender, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY gender",
        &[],
        support::approval(),
    )
    .expect("template");
    let unlisted = product_of(&fixture.run(&by_gender, &[]).await.expect("job"));
    let store = &mut fixture.store;
    market::list_for_sale(
        store,
        Role::Operator,
        OPERATOR,
        &ProductId::new(&listed),
        Fen(500),
    )
    .expect("listed");
    let period = veil_runtime::clock::period_of(veil_runtime::clock::now());
    let pending = templates::submit(store, OPERATOR, spec("pending"))
        .expect("pending")
        .id
        .to_string();
    let to_reject = templates::submit(store, OPERATOR, spec("to_reject"))
        .expect("to reject")
        .id
        .to_string();
    let today = veil_runtime::clock::today();
    let application = |store: &mut _| {
        grants::apply(
            store,
            grants::GrantRequest {
                operator: OPERATOR.into(),
                datasets: vec!["social_insurance".into()],
                purpose: "matrix".into(),
                valid_from: today,
                valid_to: today + chrono::Days::new(30),
                epsilon_per_month: 1.0,
                delta_per_month: 1e-5,
                disposition: grants::Disposition::Archive,
                ownership: veil_runtime::grants::Ownership::Operator,
            },
        )
        .expect("application")
        .id
    };
    let request_1 = application(store);
    let request_2 = application(store);

    let root = fixture.store_path();
    let state = Arc::new(AppState {
        stores: Arc::new(StorePool::new(&root).expect("pool")),
        workers: Workers::start(&root, 1, veil_server::workers::QUEUE_JOBS_DEFAULT)
            .expect("workers"),
    });
    let app = veil_server::app(state);

    let module = std::fs::read(
        std::path::Path::new(veil_testkit::GUESTS_DIR).join("pension_eligibility.wasm"),
    )
    .expect("guest module");
    let json = |value: serde_json::Value| Some(value.to_string().into_bytes());
    let submit_spec = json(serde_json::json!({ "spec": spec("matrix_submit") }));
    let grant_request = json(serde_json::json!({
        "datasets": ["social_insurance"], "purpose": "more", "valid_from": today.to_string(),
        "valid_to": (today + chrono::Days::new(10)).to_string(), "epsilon_per_month": 1.0,
        "delta_per_month": 1e-5, "disposition": "archive"
    }));
    let reason = json(serde_json::json!({ "reason": "not needed" }));
    let run = json(serde_json::json!({ "template": approved }));

    // method, path, body, expected status for [provider, buyer, op_other, op_own, bureau].
    type Row<'a> = (&'a str, String, Option<Vec<u8>>, [u16; 5]);
    let rows: Vec<Row> = vec![
        ("GET", "/v1/me".into(), None, [200, 200, 200, 200, 200]),
        (
            "GET",
            "/v1/platform/key".into(),
            None,
            [200, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/v1/datasets".into(),
            None,
            [200, 403, 200, 200, 200],
        ),
        (
            "GET",
            "/v1/datasets/social_insurance".into(),
            None,
            [200, 403, 404, 200, 200],
        ),
        (
            "GET",
            "/v1/datasets/enterprise_registry".into(),
            None,
            [404, 403, 404, 200, 200],
        ),
        (
            "GET",
            "/v1/datasets/social_insurance/quality".into(),
            None,
            [403, 403, 403, 403, 200],
        ),
        ("GET", "/v1/grants".into(), None, [403, 403, 200, 200, 200]),
        (
            "GET",
            "/v1/grant-requests".into(),
            None,
            [403, 403, 200, 200, 200],
        ),
        (
            "GET",
            format!("/v1/grant-requests/{request_1}"),
            None,
            [403, 403, 404, 200, 200],
        ),
        (
            "POST",
            "/v1/grant-requests".into(),
            grant_request,
            [403, 403, 201, 201, 403],
        ),
        (
            "POST",
            format!("/v1/grant-requests/{request_1}/approve"),
            json(serde_json::json!({})),
            [403, 403, 403, 403, 200],
        ),
        (
            "POST",
            format!("/v1/grant-requests/{request_2}/reject"),
            reason.clone(),
            [403, 403, 403, 403, 200],
        ),
        (
            "GET",
            "/v1/templates".into(),
            None,
            [403, 403, 200, 200, 200],
        ),
        (
            "GET",
            format!("/v1/templates/{approved}"),
            None,
            [403, 403, 404, 200, 200],
        ),
        (
            "POST",
            "/v1/templates".into(),
            submit_spec,
            [403, 403, 201, 400, 403],
        ),
        (
            "POST",
            "/v1/modules".into(),
            Some(module),
            [403, 403, 201, 201, 403],
        ),
        (
            "POST",
            format!("/v1/templates/{pending}/approve"),
            json(serde_json::json!({ "epsilon": 1.0, "k": 5 })),
            [403, 403, 403, 403, 200],
        ),
        (
            "POST",
            format!("/v1/templates/{to_reject}/reject"),
            reason.clone(),
            [403, 403, 403, 403, 200],
        ),
        ("GET", "/v1/jobs".into(), None, [403, 403, 200, 200, 200]),
        (
            "GET",
            format!("/v1/jobs/{job}"),
            None,
            [403, 403, 404, 200, 200],
        ),
        (
            "GET",
            format!("/v1/jobs/{job}/wait?timeout_ms=10"),
            None,
            [403, 403, 404, 200, 200],
        ),
        (
            "POST",
            format!("/v1/jobs/{job}/cancel"),
            None,
            [403, 403, 404, 409, 409],
        ),
        (
            "POST",
            "/v1/jobs/dry-run".into(),
            run.clone(),
            [403, 403, 404, 200, 403],
        ),
        ("POST", "/v1/jobs".into(), run, [403, 403, 404, 202, 403]),
        ("GET", "/v1/meter".into(), None, [403, 403, 200, 200, 200]),
        (
            "GET",
            "/v1/products".into(),
            None,
            [403, 200, 200, 200, 200],
        ),
        ("GET", "/v1/offers".into(), None, [403, 200, 200, 200, 200]),
        (
            "GET",
            format!("/v1/offers/{listed}"),
            None,
            [403, 200, 200, 200, 200],
        ),
        (
            "GET",
            format!("/v1/offers/{unlisted}"),
            None,
            [403, 404, 404, 404, 404],
        ),
        (
            "GET",
            format!("/v1/products/{listed}"),
            None,
            [403, 200, 404, 200, 200],
        ),
        (
            "GET",
            format!("/v1/products/{unlisted}"),
            None,
            [403, 404, 404, 200, 200],
        ),
        (
            "GET",
            format!("/v1/products/{unlisted}/files/result.csv"),
            None,
            [403, 404, 404, 200, 200],
        ),
        (
            "GET",
            format!("/v1/products/{listed}/files/result.csv"),
            None,
            [403, 403, 404, 200, 200],
        ),
        (
            "POST",
            format!("/v1/products/{unlisted}/listing"),
            json(serde_json::json!({ "price_fen": 700 })),
            [403, 403, 404, 200, 200],
        ),
        (
            "POST",
            format!("/v1/products/{listed}/purchase"),
            None,
            [403, 201, 403, 403, 403],
        ),
        (
            "POST",
            format!("/v1/products/{listed}/purchase"),
            None,
            [403, 200, 403, 403, 403],
        ),
        (
            "GET",
            format!("/v1/products/{listed}/files/manifest.json"),
            None,
            [403, 200, 404, 200, 200],
        ),
        (
            "GET",
            "/v1/purchases".into(),
            None,
            [403, 200, 403, 403, 200],
        ),
        (
            "GET",
            format!("/v1/statements/{period}"),
            None,
            [404, 403, 404, 404, 400],
        ),
        (
            "POST",
            "/v1/settlements".into(),
            json(serde_json::json!({ "period": period })),
            [403, 403, 403, 403, 400],
        ),
        ("GET", "/v1/usage".into(), None, [200, 403, 403, 403, 403]),
        (
            "POST",
            format!("/v1/products/{listed}/recall"),
            reason.clone(),
            [403, 403, 403, 403, 200],
        ),
        (
            "GET",
            format!("/v1/products/{listed}/files/result.csv"),
            None,
            [403, 409, 404, 409, 200],
        ),
        (
            "GET",
            format!("/v1/offers/{listed}"),
            None,
            [403, 404, 404, 404, 404],
        ),
        (
            "POST",
            format!("/v1/templates/{approved}/revoke"),
            reason,
            [403, 403, 403, 403, 200],
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &rows {
        let (status, _) = call(&app, method, path, None, body.clone()).await;
        if status != StatusCode::UNAUTHORIZED {
            wrong.push(format!("{method} {path} without a key: {status}"));
        }
        let (status, _) = call(&app, method, path, Some("veil_0000"), body.clone()).await;
        if status != StatusCode::UNAUTHORIZED {
            wrong.push(format!("{method} {path} with a wrong key: {status}"));
        }
        for (caller, expected) in CALLERS.iter().zip(expected) {
            let (status, answer) =
                call(&app, method, path, Some(keys.of(caller)), body.clone()).await;
            if status.as_u16() != *expected {
                wrong.push(format!(
                    "{method} {path} as {caller}: {status}, expected {expected} ({answer})"
                ));
            }
        }
    }
    let (status, _) = call(&app, "GET", "/v1/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "health needs no key");
    for key in [None, Some("veil_0000"), Some(keys.of("buyer"))] {
        let (status, _) = call(&app, "GET", "/v1/openapi.json", key, None).await;
        assert_eq!(status, StatusCode::OK, "the OpenAPI document needs no key");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn product_of(outcome: &JobOutcome) -> String {
    match outcome {
        JobOutcome::Released { product_id, .. } => product_id.to_string(),
        other => panic!("the job was not released: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_429_and_a_queued_job_can_be_cancelled() {
    let mut fixture = Fixture::new(2_000);
    let operator = principals::add(&mut fixture.store, Role::Operator, OPERATOR)
        .expect("principal")
        .1
        .expose()
        .to_string();
    let template = support::submit_and_approve(
        &mut fixture.store,
        "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY city",
        &[],
        support::approval(),
    )
    .expect("template");
    let root = fixture.store_path();
    let store_pool = Arc::new(StorePool::new(&root).expect("pool"));
    // A queue of one place, taken.
    let workers = Workers::start(&root, 1, 1).expect("workers");
    let _taken = workers.reserve().expect("a place");
    // A job queued but not yet handed to any worker (as when the queue is full behind it).
    let queued = veil_runtime::jobs::enqueue(
        &mut fixture.store,
        &veil_runtime::jobs::JobRequest {
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
    let state = Arc::new(AppState {
        stores: store_pool,
        workers,
    });
    let app = veil_server::app(state);

    let run = Some(
        serde_json::json!({ "template": template })
            .to_string()
            .into_bytes(),
    );
    let (status, body) = call(&app, "POST", "/v1/jobs", Some(&operator), run).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["kind"], "busy");
    let (jobs_status, jobs) = call(&app, "GET", "/v1/jobs", Some(&operator), None).await;
    assert_eq!(jobs_status, StatusCode::OK);
    // Only the queued job exists: the refused submission wrote nothing.
    assert!(
        jobs.as_array().is_some_and(|jobs| jobs.len() == 1),
        "{jobs}"
    );

    // Cancelling the queued job ends it, metered at zero; cancelling again is a conflict.
    let (status, job) = call(
        &app,
        "POST",
        &format!("/v1/jobs/{queued}/cancel"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["state"], "cancelled");
    let (_, meter) = call(&app, "GET", "/v1/meter", Some(&operator), None).await;
    assert_eq!(meter[0]["end_state"], "cancelled");
    assert_eq!(meter[0]["price_fen"], 0);
    assert_eq!(meter[0]["micro_epsilon"], 0);
    let (status, _) = call(
        &app,
        "POST",
        &format!("/v1/jobs/{queued}/cancel"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

/// Jobs run on the workers' own runtime, never on the server's: a job runs to its end while
/// the server's only runtime thread is held, so neither can starve the other. (On the
/// server's runtime the job's child I/O would wait for this thread, and the job never end.)
#[tokio::test(flavor = "current_thread")]
async fn a_job_ends_while_the_servers_runtime_is_held() {
    /// Longest the job may take, in seconds; it takes a few.
    const JOB_SECONDS_MAX: u64 = 120;
    let mut fixture = Fixture::new(2_000);
    let operator = principals::add(&mut fixture.store, Role::Operator, OPERATOR)
        .expect("principal")
        .1
        .expose()
        .to_string();
    let template = support::submit_and_approve(
        &mut fixture.store,
        "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY city",
        &[],
        support::approval(),
    )
    .expect("template");
    let root = fixture.store_path();
    let workers =
        Workers::start(&root, 1, veil_server::workers::QUEUE_JOBS_DEFAULT).expect("workers");
    let ended = workers.subscribe();
    let app = veil_server::app(Arc::new(AppState {
        stores: Arc::new(StorePool::new(&root).expect("pool")),
        workers,
    }));
    let run = serde_json::json!({ "template": template })
        .to_string()
        .into_bytes();
    let (status, submitted) = call(&app, "POST", "/v1/jobs", Some(&operator), Some(run)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");

    // Hold this runtime's only thread, without yielding, until the job has ended.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(JOB_SECONDS_MAX);
    while !ended.has_changed().unwrap_or(true) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        ended.has_changed().unwrap_or(false),
        "the job did not end within {JOB_SECONDS_MAX} s while the server's runtime was held"
    );
    let id = submitted["job"]["id"].as_str().expect("a job id");
    let (_, job) = call(
        &app,
        "GET",
        &format!("/v1/jobs/{id}"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(job["state"], "released", "{job}");
}

/// Approval over HTTP runs the same domain call as `veil template approve`: ε is required,
/// and a template the gate would refuse (stored without the submission's checks, as an older
/// store may hold) is refused at approval with its rules, not approved.
#[tokio::test(flavor = "multi_thread")]
async fn http_approval_requires_epsilon_and_the_gates_static_checks() {
    let mut fixture = Fixture::new(2_000);
    let bureau = principals::add(&mut fixture.store, Role::Bureau, "bureau")
        .expect("principal")
        .1
        .expose()
        .to_string();
    // Rows of identifiers: the gate refuses this at submission, so store it unchecked.
    let raw = templates::submit(
        &mut fixture.store,
        OPERATOR,
        TemplateSpec {
            name: "raw_ids".into(),
            sql: "SELECT person_id, monthly_income FROM social_insurance".into(),
            params: Vec::new(),
            wasm: None,
            versions: Default::default(),
        },
    )
    .expect("stored unchecked")
    .id;
    let sound = templates::submit(&mut fixture.store, OPERATOR, spec("by_city"))
        .expect("stored")
        .id;
    let root = fixture.store_path();
    let app = veil_server::app(Arc::new(AppState {
        stores: Arc::new(StorePool::new(&root).expect("pool")),
        workers: Workers::start(&root, 1, veil_server::workers::QUEUE_JOBS_DEFAULT)
            .expect("workers"),
    }));
    let body = |value: serde_json::Value| Some(value.to_string().into_bytes());

    let (status, answer) = call(
        &app,
        "POST",
        &format!("/v1/templates/{sound}/approve"),
        Some(&bureau),
        body(serde_json::json!({ "k": 5 })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("`epsilon` is required")),
        "{answer}"
    );

    let (status, answer) = call(
        &app,
        "POST",
        &format!("/v1/templates/{raw}/approve"),
        Some(&bureau),
        body(serde_json::json!({ "epsilon": 1.0, "k": 5 })),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["kind"], "refused");
    let rules: Vec<&str> = answer["violations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["rule"].as_str())
        .collect();
    assert!(rules.contains(&"statement.identifier"), "{answer}");
    let (_, template) = call(
        &app,
        "GET",
        &format!("/v1/templates/{raw}"),
        Some(&bureau),
        None,
    )
    .await;
    assert_eq!(template["state"], "submitted", "{template}");

    let (status, answer) = call(
        &app,
        "POST",
        &format!("/v1/templates/{sound}/approve"),
        Some(&bureau),
        body(serde_json::json!({ "epsilon": 1.0, "k": 5 })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["state"], "approved");
}

/// Sends one raw request: any content type, any body.
async fn raw(
    app: &axum::Router,
    method: &str,
    path: &str,
    key: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (StatusCode, Option<String>, serde_json::Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {key}"));
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_vec())).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = axum::body::to_bytes(response.into_body(), 1024 * 1024)
        .await
        .expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, content_type, json)
}

/// Every error a client can provoke — malformed JSON, a wrong content type, a field of the
/// wrong type, a bad query string, an unknown route, a wrong method — answers with the
/// documented JSON body and the status its kind fixes, and says what to change.
#[tokio::test(flavor = "multi_thread")]
async fn every_http_error_is_the_documented_json() {
    let mut fixture = Fixture::new(200);
    let key = principals::add(&mut fixture.store, Role::Operator, OPERATOR)
        .expect("principal")
        .1
        .expose()
        .to_string();
    let root = fixture.store_path();
    let app = veil_server::app(Arc::new(AppState {
        stores: Arc::new(StorePool::new(&root).expect("pool")),
        workers: Workers::start(&root, 1, veil_server::workers::QUEUE_JOBS_DEFAULT)
            .expect("workers"),
    }));
    let json = Some("application/json");
    // Method, path, content type, body; then the status, kind and a word the message names.
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a [u8],
        u16,
        &'a str,
        &'a str,
    );
    let cases: [Case; 6] = [
        (
            "POST",
            "/v1/jobs",
            json,
            b"{not json",
            400,
            "invalid",
            "JSON",
        ),
        (
            "POST",
            "/v1/jobs",
            Some("text/plain"),
            b"{}",
            400,
            "invalid",
            "Content-Type: application/json",
        ),
        (
            "POST",
            "/v1/jobs",
            json,
            br#"{"template": 5}"#,
            400,
            "invalid",
            "template",
        ),
        (
            "GET",
            "/v1/jobs/job-1/wait?timeout_ms=soon",
            None,
            b"",
            400,
            "invalid",
            "timeout_ms",
        ),
        (
            "GET",
            "/v1/no-such-route",
            None,
            b"",
            404,
            "not_found",
            "openapi.json",
        ),
        ("DELETE", "/v1/jobs", None, b"", 400, "invalid", "method"),
    ];
    // The OpenAPI document describes no data: it is served without a key, so a generator can
    // fetch it.
    let (status, doc) = call(&app, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert!(doc["paths"]["/v1/jobs"].is_object(), "{doc}");
    for (method, path, content_type, body, status, kind, names) in cases {
        let (got, content, answer) = raw(&app, method, path, &key, content_type, body).await;
        let case = format!("{method} {path}: {got} {content:?} {answer}");
        assert_eq!(got.as_u16(), status, "{case}");
        assert_eq!(content.as_deref(), Some("application/json"), "{case}");
        assert_eq!(answer["kind"], kind, "{case}");
        let message = answer["message"].as_str().unwrap_or("");
        assert!(message.contains(names), "{case}");
    }
}
