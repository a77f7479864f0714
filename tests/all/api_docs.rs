//! `docs/API.md`: a request and a real response for every route, recorded from one flow
//! through the router (no port). `VEIL_BLESS=1` rewrites the file; otherwise the test checks
//! that every route of the OpenAPI document has its example there.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use serde_json::json as j;
use tower::ServiceExt;
use utoipa::OpenApi;
use veil_runtime::principals::{self, Role};
use veil_server::routes::ApiDoc;
use veil_server::{self, AppState, StorePool, Workers};

use crate::support::{Fixture, OPERATOR, veil_bin};

const DOC: &str = "../docs/API.md";
const PROVIDER: &str = "Shanxi Provincial Department of Human Resources and Social Security";
/// Longest response body shown in the document, in bytes.
const SHOWN_BYTES_MAX: usize = 1_800;

struct Recorder {
    app: axum::Router,
    doc: String,
}

impl Recorder {
    async fn call(
        &mut self,
        title: &str,
        method: &str,
        path: &str,
        key: Option<(&str, &str)>,
        headers: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut request = Request::builder().method(method).uri(path);
        let mut shown = format!("{method} {path}\n");
        if let Some((who, key)) = key {
            request = request.header("authorization", format!("Bearer {key}"));
            let _ = writeln!(shown, "Authorization: Bearer <{who}'s key>");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
            let _ = writeln!(shown, "{name}: {value}");
        }
        let body = match &body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                let _ = writeln!(shown, "Content-Type: application/json\n");
                shown.push_str(&serde_json::to_string_pretty(json).expect("json"));
                shown.push('\n');
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.send(
            title,
            method,
            path,
            request.body(body).expect("request"),
            shown,
        )
        .await
    }

    async fn send(
        &mut self,
        title: &str,
        method: &str,
        path: &str,
        request: Request<Body>,
        shown: String,
    ) -> serde_json::Value {
        let response = self.app.clone().oneshot(request).await.expect("response");
        let status = response.status();
        let mut headers = String::new();
        for name in ["content-range", "retry-after", "www-authenticate"] {
            if let Some(value) = response.headers().get(name) {
                let _ = writeln!(headers, "{name}: {}", value.to_str().unwrap_or(""));
            }
        }
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
            .await
            .expect("body");
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        // A rotated key is real for as long as the flow's store lives; the document shows its
        // shape only, so no scanner mistakes it for a leaked secret.
        let mut shown_json = json.clone();
        if let Some(key) = shown_json.get_mut("key")
            && key.as_str().is_some_and(|k| k.starts_with("veil_"))
        {
            *key = "veil_<64 hex digits, shown once>".into();
        }
        let mut text = if json.is_null() {
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            serde_json::to_string_pretty(&shown_json).expect("json")
        };
        if text.len() > SHOWN_BYTES_MAX {
            let mut cut = SHOWN_BYTES_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("\n…");
        }
        let route = route_of(method, path.split('?').next().unwrap_or(path));
        let _ = write!(
            self.doc,
            "### {title}\n\n`{method} {route}`\n\n```http\n{shown}```\n\n```http\nHTTP/1.1 {status}\n{headers}\n{text}\n```\n\n"
        );
        json
    }
}

/// The OpenAPI route a concrete request matches (`{x}` matches any one segment).
fn route_of(method: &str, path: &str) -> String {
    let segments: Vec<&str> = path.split('/').collect();
    documented_routes()
        .into_iter()
        .find(|route| {
            let Some((m, template)) = route.split_once(' ') else {
                return false;
            };
            let parts: Vec<&str> = template.split('/').collect();
            m == method
                && parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| p == s || (p.starts_with('{') && p.ends_with('}')))
        })
        .and_then(|route| route.split_once(' ').map(|(_, t)| t.to_string()))
        .unwrap_or_else(|| path.to_string())
}

/// The OpenAPI paths with their methods, e.g. `POST /v1/jobs/{id}/cancel`.
fn documented_routes() -> Vec<String> {
    let doc = ApiDoc::openapi();
    let mut routes = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
        ] {
            if op.is_some() {
                routes.push(format!("{method} {path}"));
            }
        }
    }
    routes
}

/// Every operation has a summary and a description (from its handler's doc comment), so a
/// generated client documents each method.
#[test]
fn every_operation_has_a_summary_and_a_description() {
    let doc = ApiDoc::openapi();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
        ] {
            let Some(op) = op else { continue };
            let summary = op.summary.as_deref().unwrap_or("");
            let description = op.description.as_deref().unwrap_or("");
            assert!(
                !summary.trim().is_empty() && !description.trim().is_empty(),
                "{method} {path} lacks a summary or a description: {summary:?} / {description:?}"
            );
        }
    }
}

/// A parameter declared `in: path` must be a `{name}` of its route: a generated client skips a
/// route whose path parameters do not match its template (`timeout_ms` and `party` were once
/// declared in the path although they are query parameters).
#[test]
fn path_parameters_are_in_their_routes_and_the_rest_in_the_query() {
    use utoipa::openapi::path::ParameterIn;
    let doc = ApiDoc::openapi();
    let mut query = Vec::new();
    for (path, item) in &doc.paths.paths {
        for op in [&item.get, &item.post, &item.put, &item.delete]
            .into_iter()
            .flatten()
        {
            for param in op.parameters.iter().flatten() {
                let in_template = path.contains(&format!("{{{}}}", param.name));
                match param.parameter_in {
                    ParameterIn::Path => assert!(
                        in_template,
                        "{path}: `{}` is declared in the path but is not in it",
                        param.name
                    ),
                    ParameterIn::Query => {
                        assert!(!in_template, "{path}: `{}` is in the path", param.name);
                        query.push(format!("{path}?{}", param.name));
                    }
                    _ => {}
                }
            }
        }
    }
    for expected in [
        "/v1/jobs/{id}/wait?timeout_ms",
        "/v1/statements/{period}?party",
    ] {
        assert!(
            query.iter().any(|q| q == expected),
            "{expected} in {query:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_has_a_recorded_example() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
    if std::env::var("VEIL_BLESS").is_err() {
        let text = std::fs::read_to_string(&doc_path).expect("docs/API.md exists");
        let missing: Vec<String> = documented_routes()
            .into_iter()
            .filter(|route| !text.contains(&format!("`{route}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/API.md lacks an example for {missing:?}; run VEIL_BLESS=1 cargo test api_docs"
        );
        return;
    }

    let mut fixture = Fixture::new(2_000);
    let mut key = |role, name: &str| {
        principals::add(&mut fixture.store, role, name)
            .expect("principal")
            .1
            .expose()
            .to_string()
    };
    let bureau = key(Role::Bureau, "bureau");
    let operator = key(Role::Operator, OPERATOR);
    let buyer = key(Role::Buyer, "buyer-1");
    let provider = key(Role::Provider, PROVIDER);
    let (b, o, y, p) = (
        Some(("the bureau", bureau.as_str())),
        Some(("the operator", operator.as_str())),
        Some(("the buyer", buyer.as_str())),
        Some(("the provider", provider.as_str())),
    );
    let root = fixture.store_path();
    let state = Arc::new(AppState {
        stores: Arc::new(StorePool::new(&root).expect("pool")),
        workers: Workers::start(&root, 1, veil_server::workers::QUEUE_JOBS_DEFAULT)
            .expect("workers"),
    });
    let mut r = Recorder {
        app: veil_server::app(state),
        doc: String::new(),
    };
    let today = veil_runtime::clock::today();

    r.doc.push_str("## Anyone\n\n");
    r.call("Health (no key)", "GET", "/v1/health", None, &[], None)
        .await;
    r.call("Without a key", "GET", "/v1/me", None, &[], None)
        .await;
    r.call("Who am I", "GET", "/v1/me", o, &[], None).await;
    r.call(
        "The platform's public key",
        "GET",
        "/v1/platform/key",
        y,
        &[],
        None,
    )
    .await;
    r.call(
        "The OpenAPI document",
        "GET",
        "/v1/openapi.json",
        o,
        &[],
        None,
    )
    .await;

    r.doc.push_str("## Datasets and grants\n\n");
    r.call(
        "Datasets (operator: granted ones)",
        "GET",
        "/v1/datasets",
        o,
        &[],
        None,
    )
    .await;
    r.call(
        "A dataset's schema (operator: with a grant in its term)",
        "GET",
        "/v1/datasets/social_insurance",
        o,
        &[],
        None,
    )
    .await;
    r.call(
        "A dataset's data-quality report (bureau only: it quotes in-domain values)",
        "GET",
        "/v1/datasets/social_insurance/quality",
        b,
        &[],
        None,
    )
    .await;
    r.call(
        "Grants (operator: its own)",
        "GET",
        "/v1/grants",
        o,
        &[],
        None,
    )
    .await;
    let grant_request = j!({
        "datasets": ["social_insurance"], "purpose": "pension adequacy study",
        "valid_from": today.to_string(), "valid_to": (today + chrono::Days::new(90)).to_string(),
        "epsilon_per_month": 4.0, "delta_per_month": 0.000001, "disposition": "archive"
    });
    let request = r
        .call(
            "Apply for a grant (operator)",
            "POST",
            "/v1/grant-requests",
            o,
            &[],
            Some(grant_request.clone()),
        )
        .await;
    let request_id = request["id"].as_str().expect("id").to_string();
    r.call(
        "Grant requests (bureau: all, overdue flagged)",
        "GET",
        "/v1/grant-requests",
        b,
        &[],
        None,
    )
    .await;
    r.call(
        "One grant request",
        "GET",
        &format!("/v1/grant-requests/{request_id}"),
        o,
        &[],
        None,
    )
    .await;
    r.call(
        "Approve a grant request (bureau), granting less ε",
        "POST",
        &format!("/v1/grant-requests/{request_id}/approve"),
        b,
        &[],
        Some(j!({ "epsilon_per_month": 2.0 })),
    )
    .await;
    let second = r
        .call(
            "Apply again",
            "POST",
            "/v1/grant-requests",
            o,
            &[],
            Some(grant_request),
        )
        .await;
    let second_id = second["id"].as_str().expect("id").to_string();
    r.call(
        "Reject a grant request (bureau)",
        "POST",
        &format!("/v1/grant-requests/{second_id}/reject"),
        b,
        &[],
        Some(j!({ "reason": "the approved request already covers this purpose" })),
    )
    .await;

    r.doc.push_str("## Templates\n\n");
    let module =
        std::fs::read(Path::new(veil_testkit::GUESTS_DIR).join("pension_eligibility.wasm"))
            .expect("module");
    let request = Request::builder()
        .method("POST")
        .uri("/v1/modules")
        .header("authorization", format!("Bearer {operator}"))
        .header("content-type", "application/wasm")
        .body(Body::from(module.clone()))
        .expect("request");
    let shown = format!(
        "POST /v1/modules\nAuthorization: Bearer <the operator's key>\nContent-Type: application/wasm\n\n<the module's {} bytes>\n",
        module.len()
    );
    r.send(
        "Upload a WASM module (operator)",
        "POST",
        "/v1/modules",
        request,
        shown,
    )
    .await;
    let spec = j!({ "spec": {
        "name": "persons_by_city",
        "sql": "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance WHERE year = :year GROUP BY city",
        "params": [{ "name": "year", "type": "integer", "allowed": ["2023", "2024", "2025"] }]
    }});
    let template = r
        .call(
            "Submit a template (operator)",
            "POST",
            "/v1/templates",
            o,
            &[],
            Some(spec),
        )
        .await;
    let template_id = template["id"].as_str().expect("id").to_string();
    r.call(
        "Templates (operator: its own)",
        "GET",
        "/v1/templates",
        o,
        &[],
        None,
    )
    .await;
    r.call(
        "One template",
        "GET",
        &format!("/v1/templates/{template_id}"),
        o,
        &[],
        None,
    )
    .await;
    r.call(
        "Preview an approval: each output column's error at 95 % under these terms, and grouping warnings; approves nothing (bureau)",
        "POST",
        &format!("/v1/templates/{template_id}/preview"),
        b,
        &[],
        Some(j!({ "epsilon": 0.5, "k": 5, "price_per_run_fen": 250 })),
    )
    .await;
    r.call(
        "Approve a template (bureau)",
        "POST",
        &format!("/v1/templates/{template_id}/approve"),
        b,
        &[],
        Some(j!({ "epsilon": 0.5, "k": 5, "price_per_run_fen": 250 })),
    )
    .await;

    r.doc.push_str("## Jobs\n\n");
    let grant = fixture.grant.id.to_string();
    let job = j!({ "template": template_id, "params": { "year": "2024" }, "grant": grant });
    r.call(
        "Pre-flight (operator)",
        "POST",
        "/v1/jobs/dry-run",
        o,
        &[],
        Some(job.clone()),
    )
    .await;
    let submitted = r
        .call(
            "Submit a job (operator)",
            "POST",
            "/v1/jobs",
            o,
            &[("idempotency-key", "year-2024-run-1")],
            Some(job.clone()),
        )
        .await;
    let job_id = submitted["job"]["id"].as_str().expect("id").to_string();
    r.call(
        "The same submission again: the same job, nothing runs twice",
        "POST",
        "/v1/jobs",
        o,
        &[("idempotency-key", "year-2024-run-1")],
        Some(job),
    )
    .await;
    let ended = r
        .call(
            "Wait for the job (long poll)",
            "GET",
            &format!("/v1/jobs/{job_id}/wait?timeout_ms=30000"),
            o,
            &[],
            None,
        )
        .await;
    r.call(
        "One job",
        "GET",
        &format!("/v1/jobs/{job_id}"),
        o,
        &[],
        None,
    )
    .await;
    r.call("Jobs (operator: its own)", "GET", "/v1/jobs", o, &[], None)
        .await;
    r.call(
        "Cancel a job that has ended",
        "POST",
        &format!("/v1/jobs/{job_id}/cancel"),
        o,
        &[],
        None,
    )
    .await;
    r.call(
        "A refused job: the rule is named",
        "POST",
        "/v1/jobs/dry-run",
        o,
        &[],
        Some(j!({ "template": template_id, "params": { "year": "1999" } })),
    )
    .await;
    r.call(
        "Meter records (operator: its own)",
        "GET",
        "/v1/meter",
        o,
        &[],
        None,
    )
    .await;

    r.doc.push_str("## Products and the market\n\n");
    let product = ended["product_id"].as_str().expect("product").to_string();
    r.call(
        "Products (operator: its own)",
        "GET",
        "/v1/products",
        o,
        &[],
        None,
    )
    .await;
    r.call(
        "One product",
        "GET",
        &format!("/v1/products/{product}"),
        o,
        &[],
        None,
    )
    .await;
    r.call(
        "Offer a product for sale (operator)",
        "POST",
        &format!("/v1/products/{product}/listing"),
        o,
        &[],
        Some(j!({ "price_fen": 1001 })),
    )
    .await;
    r.call("Offers (buyer)", "GET", "/v1/offers", y, &[], None)
        .await;
    r.call(
        "An offer's listing card and signed manifest, before buying (buyer)",
        "GET",
        &format!("/v1/offers/{product}"),
        y,
        &[],
        None,
    )
    .await;
    r.call(
        "Buy (buyer)",
        "POST",
        &format!("/v1/products/{product}/purchase"),
        y,
        &[],
        None,
    )
    .await;
    r.call(
        "Purchases (buyer: its own)",
        "GET",
        "/v1/purchases",
        y,
        &[],
        None,
    )
    .await;
    r.call(
        "Download a file, resuming at a byte (buyer)",
        "GET",
        &format!("/v1/products/{product}/files/result.csv"),
        y,
        &[("range", "bytes=0-199")],
        None,
    )
    .await;

    r.doc.push_str("## Money\n\n");
    let period = veil_runtime::clock::period_of(veil_runtime::clock::now());
    r.call(
        "Settle a month that has not ended (bureau)",
        "POST",
        "/v1/settlements",
        b,
        &[],
        Some(j!({ "period": period })),
    )
    .await;
    let (_, end) = veil_runtime::settlement::period_bounds(&period).expect("period");
    let settled = std::process::Command::new(veil_bin())
        .args(["settle", "--period", &period, "--data-dir"])
        .arg(&root)
        .env(
            "VEIL_CLOCK",
            veil_runtime::clock::format(end + chrono::Duration::hours(1)),
        )
        .output()
        .expect("veil settle");
    assert!(settled.status.success(), "{settled:?}");
    r.doc.push_str(&format!(
        "(After the month ends, `POST /v1/settlements` — or `veil settle --period {period}` — writes every statement; the examples below were settled that way.)\n\n"
    ));
    r.call(
        "The operator's statement",
        "GET",
        &format!("/v1/statements/{period}"),
        o,
        &[],
        None,
    )
    .await;
    r.call(
        "Any party's statement (bureau)",
        "GET",
        &format!("/v1/statements/{period}?party=platform"),
        b,
        &[],
        None,
    )
    .await;
    r.call(
        "A provider's datasets: use and revenue",
        "GET",
        "/v1/usage",
        p,
        &[],
        None,
    )
    .await;
    r.doc.push_str("## The asset register\n\n");
    r.call(
        "A dataset's asset card (bureau; a provider: its own datasets)",
        "GET",
        "/v1/datasets/social_insurance/card",
        p,
        &[],
        None,
    )
    .await;
    r.call(
        "The asset register as CSV (bureau; `?format=json` or none: every card as JSON)",
        "GET",
        "/v1/asset-register?format=csv",
        b,
        &[],
        None,
    )
    .await;

    r.doc.push_str("## Correction requests\n\n");
    let correction = r
        .call(
            "Report an error in a bought product (buyer; an operator: a granted dataset or its own product)",
            "POST",
            "/v1/corrections",
            y,
            &[],
            Some(j!({ "product": product, "text": "Datong's count looks a year behind the others" })),
        )
        .await;
    let correction_id = correction["id"].as_str().expect("id").to_string();
    r.call(
        "Correction requests (provider: about its datasets; others: filed by them)",
        "GET",
        "/v1/corrections",
        p,
        &[],
        None,
    )
    .await;
    r.call(
        "Answer a correction request (provider): rejected with a reason, or accepted naming the correcting version",
        "POST",
        &format!("/v1/corrections/{correction_id}/answer"),
        p,
        &[],
        Some(j!({ "reason": "Datong's records were checked against the source registry and stand" })),
    )
    .await;

    r.doc.push_str("## Disputes\n\n");
    let dispute = r
        .call(
            "Dispute a purchase (buyer: its own, by purchase or product id)",
            "POST",
            "/v1/disputes",
            y,
            &[],
            Some(j!({ "purchase": product, "reason": "the file has no row for Taiyuan" })),
        )
        .await;
    let dispute_id = dispute["id"].as_str().expect("id").to_string();
    r.call(
        "Disputes (buyer: its own; bureau: all)",
        "GET",
        "/v1/disputes",
        y,
        &[],
        None,
    )
    .await;
    r.call(
        "Reject a dispute (bureau): nothing is refunded",
        "POST",
        &format!("/v1/disputes/{dispute_id}/reject"),
        b,
        &[],
        Some(j!({ "reason": "Taiyuan was suppressed by the k threshold, as the manifest says" })),
    )
    .await;
    let again = r
        .call(
            "Dispute it again after a rejection (buyer)",
            "POST",
            "/v1/disputes",
            y,
            &[],
            Some(j!({ "purchase": product, "reason": "the row counts do not match the manifest" })),
        )
        .await;
    let again_id = again["id"].as_str().expect("id").to_string();
    r.call(
        "Uphold a dispute (bureau): the sale is refunded by a reversing ledger posting",
        "POST",
        &format!("/v1/disputes/{again_id}/uphold"),
        b,
        &[],
        Some(j!({ "reason": "confirmed" })),
    )
    .await;
    r.call(
        "Recall a product (bureau): the buyers to tell",
        "POST",
        &format!("/v1/products/{product}/recall"),
        b,
        &[],
        Some(j!({ "reason": "a defect was found in the source data" })),
    )
    .await;
    r.call(
        "Revoke a template (bureau)",
        "POST",
        &format!("/v1/templates/{template_id}/revoke"),
        b,
        &[],
        Some(j!({ "reason": "the purpose has ended" })),
    )
    .await;
    let other = r
        .call("Submit another template", "POST", "/v1/templates", o, &[], Some(j!({ "spec": { "name": "persons_by_gender", "sql": "SELECT gender, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY gender" } })))
        .await;
    let other_id = other["id"].as_str().expect("id").to_string();
    r.call(
        "Reject a template (bureau)",
        "POST",
        &format!("/v1/templates/{other_id}/reject"),
        b,
        &[],
        Some(j!({ "reason": "gender alone serves no approved purpose" })),
    )
    .await;

    r.doc.push_str("## Emergency stop\n\n");
    let freeze = r
        .call(
            "Freeze the platform (bureau): jobs under it are cancelled, new ones refused",
            "POST",
            "/v1/freezes",
            b,
            &[],
            Some(j!({ "scope": "platform", "reason": "suspected breach at a provider", "block_downloads": true })),
        )
        .await;
    let freeze_id = freeze["id"].as_str().expect("id").to_string();
    r.call(
        "Lift a freeze (bureau)",
        "POST",
        &format!("/v1/freezes/{freeze_id}/lift"),
        b,
        &[],
        Some(j!({ "reason": "the provider confirmed no breach" })),
    )
    .await;
    r.call(
        "The incident log (bureau)",
        "GET",
        "/v1/freezes",
        b,
        &[],
        None,
    )
    .await;

    r.doc.push_str("## Keys\n\n");
    r.call(
        "Rotate a principal's key (bureau): the old key stops working at once",
        "POST",
        "/v1/principals/buyer-1/rotate",
        b,
        &[],
        Some(j!({ "expires_in_days": 90 })),
    )
    .await;
    r.call("The replaced key", "GET", "/v1/me", y, &[], None)
        .await;

    let text = format!(
        "# Veil HTTP API: an example for every route\n\nRecorded from a real flow by `tests/all/api_docs.rs` (`VEIL_BLESS=1 cargo test -p veil-cli --test all api_docs` rewrites it). Ids, keys and times differ on every run. Every route takes `Authorization: Bearer <key>` but `GET /v1/health` and `GET /v1/openapi.json`; errors are `{{\"kind\", \"message\", \"violations\"}}` with the status `kind` fixes. The OpenAPI document (`GET /v1/openapi.json`) has every schema.\n\n{}",
        r.doc
    );
    std::fs::create_dir_all(doc_path.parent().expect("docs")).expect("docs folder");
    std::fs::write(&doc_path, text).expect("write docs/API.md");
    let missing: Vec<String> = documented_routes()
        .into_iter()
        .filter(|route| !r.doc.contains(&format!("`{route}`")))
        .collect();
    assert!(missing.is_empty(), "the flow misses {missing:?}");
}

/// The generator the contract test uses, pinned: a standard, widely used one.
const GENERATOR: &str = "openapi-python-client==0.29.1";

/// Makes (once, in `target/`) a Python environment holding [`GENERATOR`], and returns the
/// generator's program. Needs `python3` with `venv` and `pip`, and PyPI.
fn openapi_generator() -> std::path::PathBuf {
    crate::support::pypi_program("openapi-generator", GENERATOR, "openapi-python-client")
}

/// A client generated from the OpenAPI document by a standard generator has every route: a
/// route the generator cannot read (a content type it does not know, a parameter declared in
/// the wrong place) would be silently missing from every client made this way.
#[test]
fn a_generated_client_has_every_route() {
    let generator = openapi_generator();
    let dir = tempfile::tempdir().expect("folder");
    let doc = dir.path().join("openapi.json");
    let text = serde_json::to_string(&ApiDoc::openapi()).expect("the document encodes");
    std::fs::write(&doc, text).expect("write the document");
    let out = dir.path().join("client");
    let output = std::process::Command::new(&generator)
        .args(["generate", "--path"])
        .arg(&doc)
        .arg("--output-path")
        .arg(&out)
        .output()
        .expect("the generator runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    assert!(!said.contains("will not be generated"), "{said}");
    // One module per operation, named by its operation id, under `<package>/api/<tag>/`.
    let mut generated = Vec::new();
    let mut folders = vec![out.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("read the client") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path
                .parent()
                .and_then(|p| p.parent())
                .and_then(|p| p.file_name())
                == Some(std::ffi::OsStr::new("api"))
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            {
                generated.push(stem.to_string());
            }
        }
    }
    let doc = ApiDoc::openapi();
    let mut missing = Vec::new();
    let mut operations = 0;
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
        ] {
            let Some(op) = op else { continue };
            operations += 1;
            let id = op.operation_id.clone().unwrap_or_default();
            if !generated.contains(&id) {
                missing.push(format!("{method} {path} ({id})"));
            }
        }
    }
    assert!(operations >= 40, "{operations} operations");
    assert!(
        missing.is_empty(),
        "not in the generated client: {missing:?}\n{said}"
    );
}
