//! Every route, who may call it, and how domain types become wire types.
//!
//! | route | roles | sees |
//! |---|---|---|
//! | `GET /v1/health`, `GET /v1/openapi.json` | anyone, no key | — |
//! | `GET /v1/me`, `/v1/platform/key` | all | — |
//! | `POST /v1/principals/{name}/rotate` | bureau | — |
//! | `GET /v1/datasets` | bureau, provider, operator | provider: own; operator: granted |
//! | `GET /v1/datasets/{id}` (id or name) | bureau, provider, operator | provider: own; operator: granted, grant in its term |
//! | `GET /v1/datasets/{id}/quality` | bureau | — |
//! | `GET /v1/datasets/{id}/card` | bureau, provider | provider: own datasets |
//! | `GET /v1/asset-register[?format=csv]` | bureau | — |
//! | `POST /v1/corrections` | operator, buyer | a granted dataset, an own or bought product |
//! | `GET /v1/corrections` | bureau, provider, operator, buyer | provider: its datasets; others: filed by them |
//! | `POST /v1/corrections/{id}/answer` | bureau, provider | provider: its datasets |
//! | `GET /v1/grants` | bureau, operator | operator: own |
//! | `POST /v1/grant-requests` | operator | — |
//! | `GET /v1/grant-requests[/{id}]` | bureau, operator | operator: own |
//! | `POST /v1/grant-requests/{id}/approve`, `/reject` | bureau | — |
//! | `POST /v1/modules`, `POST /v1/templates` | operator | — |
//! | `GET /v1/templates[/{id}]` | bureau, operator | operator: own |
//! | `POST /v1/templates/{id}/approve`, `/preview`, `/reject`, `/revoke` | bureau | — |
//! | `POST /v1/jobs`, `POST /v1/jobs/dry-run` | operator | — |
//! | `GET /v1/jobs[/{id}]`, `GET /v1/jobs/{id}/wait`, `POST /v1/jobs/{id}/cancel` | bureau, operator | operator: own |
//! | `GET /v1/meter` | bureau, operator | operator: own |
//! | `GET /v1/products[/{id}]` | bureau, operator, buyer | operator: own; buyer: offered or bought |
//! | `GET /v1/products/{id}/files/{name}` | bureau, operator, buyer | operator: own; buyer: bought |
//! | `POST /v1/products/{id}/listing` | bureau, operator | operator: own |
//! | `GET /v1/offers`, `GET /v1/offers/{id}` | all but provider | offered and not recalled |
//! | `POST /v1/products/{id}/purchase` | buyer | — |
//! | `GET /v1/purchases` | bureau, buyer | buyer: own |
//! | `POST /v1/products/{id}/recall` | bureau | — |
//! | `POST /v1/disputes` | buyer | own purchases only |
//! | `GET /v1/disputes` | bureau, buyer | buyer: own |
//! | `POST /v1/disputes/{id}/uphold`, `/reject` | bureau | — |
//! | `GET /v1/statements/{period}[?party=]` | bureau, operator, provider | own (bureau: any) |
//! | `GET /v1/usage` | provider | own datasets |
//! | `POST /v1/settlements` | bureau | — |
//! | `POST /v1/freezes`, `POST /v1/freezes/{id}/lift`, `GET /v1/freezes` | bureau | — |

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::OpenApi;
use veil_sdk::api::*;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, violations};
use veil_runtime::catalog::{self, Dataset};
use veil_runtime::error::Error;
use veil_runtime::freezes;
use veil_runtime::grants::{self, Application, Grant};
use veil_runtime::ids::{Fen, JobId, ProductId};
use veil_runtime::jobs::{self, Job, JobRequest};
use veil_runtime::metering::{self, MeterRecord};
use veil_runtime::principals::{self, Role};
use veil_runtime::templates::{self, ApprovalRequest, Mechanism, Template};
use veil_runtime::{disputes, market, products, settlement};

type Answer<T> = Result<Json<T>, ApiError>;
type AppState_ = State<Arc<AppState>>;

/// The OpenAPI document, derived from the route annotations and the wire types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Veil",
        description = "Authorized operation of public data: raw data does not leave the domain. Every route but /v1/health takes `Authorization: Bearer <key>`."
    ),
    paths(
        health, openapi, me, platform_key, datasets, dataset_get, dataset_quality, dataset_card, asset_register, correction_file, corrections_list, correction_answer, grants_list, grant_request_create,
        grant_requests_list, grant_request_get, grant_request_approve, grant_request_reject,
        module_upload, template_submit, templates_list, template_get, template_approve, template_preview,
        template_reject, template_revoke, job_submit, job_dry_run, jobs_list, job_get, job_wait,
        job_cancel, meter_list, products_list, offers, offer_get, product_get, product_file,
        product_list_for_sale, product_purchase, purchases_list, product_recall, dispute_open,
        disputes_list, dispute_uphold, dispute_reject, statement_get,
        settle, provider_usage, principal_rotate, freeze_create, freeze_lift, freezes_list
    ),
    modifiers(&BearerAuth),
    tags((name = "veil"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route. The table in the module docs says who may call each.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/me", get(me))
        .route("/platform/key", get(platform_key))
        .route("/principals/{name}/rotate", post(principal_rotate))
        .route("/datasets", get(datasets))
        .route("/datasets/{id}", get(dataset_get))
        .route("/datasets/{id}/quality", get(dataset_quality))
        .route("/datasets/{id}/card", get(dataset_card))
        .route("/asset-register", get(asset_register))
        .route("/corrections", post(correction_file).get(corrections_list))
        .route("/corrections/{id}/answer", post(correction_answer))
        .route("/grants", get(grants_list))
        .route(
            "/grant-requests",
            post(grant_request_create).get(grant_requests_list),
        )
        .route("/grant-requests/{id}", get(grant_request_get))
        .route("/grant-requests/{id}/approve", post(grant_request_approve))
        .route("/grant-requests/{id}/reject", post(grant_request_reject))
        .route("/modules", post(module_upload))
        .route("/templates", post(template_submit).get(templates_list))
        .route("/templates/{id}", get(template_get))
        .route("/templates/{id}/approve", post(template_approve))
        .route("/templates/{id}/preview", post(template_preview))
        .route("/templates/{id}/reject", post(template_reject))
        .route("/templates/{id}/revoke", post(template_revoke))
        .route("/jobs", post(job_submit).get(jobs_list))
        .route("/jobs/dry-run", post(job_dry_run))
        .route("/jobs/{id}", get(job_get))
        .route("/jobs/{id}/wait", get(job_wait))
        .route("/jobs/{id}/cancel", post(job_cancel))
        .route("/meter", get(meter_list))
        .route("/products", get(products_list))
        .route("/offers", get(offers))
        .route("/offers/{id}", get(offer_get))
        .route("/products/{id}", get(product_get))
        .route("/products/{id}/files/{name}", get(product_file))
        .route("/products/{id}/listing", post(product_list_for_sale))
        .route("/products/{id}/purchase", post(product_purchase))
        .route("/products/{id}/recall", post(product_recall))
        .route("/purchases", get(purchases_list))
        .route("/disputes", post(dispute_open).get(disputes_list))
        .route("/disputes/{id}/uphold", post(dispute_uphold))
        .route("/disputes/{id}/reject", post(dispute_reject))
        .route("/statements/{period}", get(statement_get))
        .route("/freezes", post(freeze_create).get(freezes_list))
        .route("/freezes/{id}/lift", post(freeze_lift))
        .route("/settlements", post(settle))
        .route("/usage", get(provider_usage));
    Router::new()
        .nest(API_PREFIX, api)
        .fallback(crate::error::unknown_route)
        .layer(DefaultBodyLimit::max(crate::REQUEST_BYTES_MAX))
        // Outermost: axum's own plain-text rejections become the documented JSON errors.
        .layer(axum::middleware::map_response(crate::error::json_errors))
        .with_state(state)
}

// --- Conversions to wire types ---

fn dataset_view(d: &Dataset) -> DatasetView {
    DatasetView {
        id: d.id.to_string(),
        name: d.name.clone(),
        provider: d.policy.provider.clone(),
        classification_level: d.policy.classification_level,
        acquired_on: d.policy.acquired_on.clone(),
        privacy_unit: d.policy.privacy_unit.clone(),
        rows: d.rows,
        registered_at: d.registered_at.clone(),
    }
}

/// A dataset's schema as its policy publishes it: the columns in the stored file's order, each
/// with its type from the file's footer and its role, bounds and key set from the policy.
fn dataset_schema(d: &Dataset, columns: &[(String, String)]) -> DatasetSchema {
    DatasetSchema {
        id: d.id.to_string(),
        name: d.name.clone(),
        provider: d.policy.provider.clone(),
        classification_level: d.policy.classification_level,
        sharing: serde_json::to_value(d.policy.sharing)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        acquired_on: d.policy.acquired_on.clone(),
        privacy_unit: d.policy.privacy_unit.clone(),
        unit_kind: d.policy.unit_kind.clone(),
        epsilon_per_month: d.policy.budget.as_ref().map(|b| b.epsilon_per_month),
        rows: d.rows,
        registered_at: d.registered_at.clone(),
        // Registration refuses a file with a column the policy gives no role, so every
        // column has one; a column without would be left out rather than shown without rules.
        columns: columns
            .iter()
            .filter_map(|(name, data_type)| {
                let policy = d.policy.columns.get(name)?;
                Some(DatasetColumn {
                    name: name.clone(),
                    data_type: data_type.clone(),
                    role: policy.role.as_str().to_string(),
                    bounds: policy.bounds.map(|b| b.to_vec()),
                    keys: policy.key_set().map(|k| k.into_owned()),
                })
            })
            .collect(),
    }
}

/// The listing card of a product on offer, every figure taken from its signed manifest (and
/// the column types from its Parquet footer).
fn offer_card(
    price: Fen,
    signed: veil_sdk::manifest::SignedManifest,
    types: &[(String, String)],
) -> OfferCard {
    let m = &signed.manifest;
    OfferCard {
        product_id: m.product_id.clone(),
        price_fen: price.0,
        operator: m.operator.clone(),
        template_id: m.template_id.clone(),
        template_name: m.template_name.clone(),
        purpose: m.purpose.clone(),
        released_at: m.created_at.clone(),
        rows: m.rows,
        epsilon: m.privacy.epsilon,
        delta: m.privacy.delta,
        k: m.privacy.k,
        mechanism: m.privacy.mechanism.clone(),
        columns: m
            .columns
            .iter()
            .map(|c| OfferColumn {
                name: c.name.clone(),
                kind: c.kind.clone(),
                data_type: types
                    .iter()
                    .find(|(name, _)| *name == c.name)
                    .map(|(_, t)| t.clone())
                    .unwrap_or_default(),
            })
            .collect(),
        sources: m.sources.clone(),
        manifest: signed,
    }
}

fn grant_view(g: &Grant) -> GrantView {
    GrantView {
        id: g.id.to_string(),
        operator: g.operator.clone(),
        datasets: g.datasets.iter().map(|d| d.to_string()).collect(),
        purpose: g.purpose.clone(),
        valid_from: g.valid_from.to_string(),
        valid_to: g.valid_to.to_string(),
        epsilon_per_month: g.micro_epsilon_per_month.epsilon(),
        delta_per_month: g.pico_delta_per_month.delta(),
        disposition: g.disposition.as_str().to_string(),
        created_at: g.created_at.clone(),
        ownership: g.ownership.as_str().to_string(),
        disposed_at: g.disposed_at.clone(),
    }
}

fn application_view(a: &Application) -> GrantRequestView {
    let today = veil_runtime::clock::today();
    GrantRequestView {
        id: a.id.clone(),
        operator: a.operator.clone(),
        request: RequestGrant {
            datasets: a.datasets.clone(),
            purpose: a.purpose.clone(),
            valid_from: a.valid_from.to_string(),
            valid_to: a.valid_to.to_string(),
            epsilon_per_month: a.micro_epsilon_per_month.epsilon(),
            delta_per_month: a.pico_delta_per_month.delta(),
            disposition: a.disposition.as_str().to_string(),
            ownership: Some(a.ownership.as_str().to_string()),
        },
        state: a.state.as_str().to_string(),
        reasons: a.reasons.clone(),
        grant_id: a.grant_id.clone(),
        submitted_at: a.submitted_at.clone(),
        decided_at: a.decided_at.clone(),
        working_days_waiting: if a.state == grants::ApplicationState::Pending {
            a.working_days_waiting(today)
        } else {
            0
        },
        overdue: a.is_overdue(today),
    }
}

fn template_view(t: &Template) -> TemplateView {
    TemplateView {
        id: t.id.to_string(),
        operator: t.operator.clone(),
        state: t.state.as_str().to_string(),
        spec: t.spec.clone(),
        approval: t.approval.as_ref().map(|a| ApprovalTerms {
            epsilon: a.epsilon(),
            delta: a.delta(),
            k: a.k,
            max_groups: a.max_groups,
            max_rows: a.max_rows,
            price_per_run_fen: a.price_per_run.0,
            memory_mib: a.memory_mib,
            wall_seconds: a.wall_seconds,
            wasm_fuel_per_unit: a.wasm_fuel_per_unit,
            wasm_memory_mib: a.wasm_memory_mib,
            mechanism: a.mechanism.as_str().to_string(),
        }),
        reasons: t.reasons.clone(),
        submitted_at: t.submitted_at.clone(),
        decided_at: t.decided_at.clone(),
    }
}

fn job_view(j: &Job) -> JobView {
    JobView {
        id: j.id.to_string(),
        template_id: j.template_id.clone(),
        grant_id: j.grant_id.clone(),
        operator: j.operator.clone(),
        params: j.params.iter().cloned().collect(),
        state: j.state.as_str().to_string(),
        violations: j.reasons.as_ref().map(violations).unwrap_or_default(),
        failure: j.failure.clone(),
        product_id: j.product_id.clone(),
        reused_from: j.reused_from.clone(),
        created_at: j.created_at.clone(),
        finished_at: j.finished_at.clone(),
    }
}

/// A meter record as `caller` may see it: time and memory, which depend on the data, only for
/// the bureau.
fn meter_view(m: &MeterRecord, caller: &Caller) -> MeterView {
    let bureau = caller.is_bureau();
    MeterView {
        job_id: m.job_id.clone(),
        operator: m.operator.clone(),
        template_id: m.template_id.clone(),
        end_state: m.end_state.as_str().to_string(),
        wall_ms: bureau.then_some(m.wall_ms),
        cpu_ms: bureau.then_some(m.cpu_ms),
        rows_scanned: m.rows_scanned,
        bytes_scanned: m.bytes_scanned,
        peak_memory_bytes: bureau.then_some(m.peak_memory_bytes),
        fuel: m.fuel,
        micro_epsilon: m.micro_epsilon.0,
        pico_delta: m.pico_delta.0,
        output_rows: m.output_rows,
        output_bytes: m.output_bytes,
        price_fen: m.price.0,
        at: m.at.clone(),
    }
}

fn job_request(caller: &Caller, body: SubmitJob) -> JobRequest {
    JobRequest {
        operator: caller.name().to_string(),
        template: body.template,
        params: body.params.into_iter().collect(),
        grant: body.grant,
    }
}

// --- Anyone ---

/// Whether the server is up.
///
/// No key needed. Answers as long as the server runs; says nothing about the data.
#[utoipa::path(get, path = "/v1/health", tag = "veil", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// This OpenAPI document.
///
/// No key needed: it describes the routes and their types, never any data.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "veil",
    responses((status = 200, description = "this document")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Who the key belongs to.
///
/// The caller's principal: its id, name and role.
#[utoipa::path(get, path = "/v1/me", tag = "veil", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
async fn me(caller: Caller) -> Json<Me> {
    Json(Me {
        id: caller.0.id.clone(),
        role: caller.role(),
        name: caller.name().to_string(),
    })
}

/// The platform's public signing key.
///
/// Verifies every product's manifest and audit checkpoint offline (`veil product verify
/// --public-key`).
#[utoipa::path(get, path = "/v1/platform/key", tag = "veil", security(("bearer" = [])),
    responses((status = 200, body = PlatformKey)))]
async fn platform_key(State(state): AppState_, _caller: Caller) -> Answer<PlatformKey> {
    let key = state
        .stores
        .with(|store| Ok(hex::encode(store.signing_key().verifying_key().to_bytes())))
        .await?;
    Ok(Json(PlatformKey {
        algorithm: "ed25519".into(),
        public_key_hex: key,
    }))
}

/// Rotate a principal's key (bureau).
///
/// Issues a new key, shown once, and revokes the old one at once; the principal keeps its id,
/// name, grants and templates. An optional expiry in days (see
/// `veil_runtime::principals::rotate`).
#[utoipa::path(post, path = "/v1/principals/{name}/rotate", tag = "veil", security(("bearer" = [])),
    params(("name" = String, Path, description = "the principal's name or id")),
    request_body = RotateKey,
    responses((status = 200, body = RotatedKey, description = "the new key, shown once; the old key no longer works"),
        (status = 403, body = ErrorBody, description = "not the bureau"),
        (status = 404, body = ErrorBody, description = "no such principal")))]
async fn principal_rotate(
    State(state): AppState_,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<RotateKey>,
) -> Answer<RotatedKey> {
    caller.require("rotating a principal's key", &[Role::Bureau])?;
    let (principal, key) = state
        .stores
        .with(move |store| principals::rotate(store, &name, body.expires_in_days))
        .await?;
    Ok(Json(RotatedKey {
        id: principal.id,
        role: principal.role,
        name: principal.name,
        key: key.expose().to_string(),
        key_expires_at: principal.key_expires_at,
    }))
}

// --- Datasets and grants ---

/// The datasets the caller may see.
///
/// Bureau: all; provider: its own; operator: those a grant gives it.
#[utoipa::path(get, path = "/v1/datasets", tag = "veil", security(("bearer" = [])),
    responses((status = 200, body = Vec<DatasetView>)))]
async fn datasets(State(state): AppState_, caller: Caller) -> Answer<Vec<DatasetView>> {
    caller.require(
        "listing datasets",
        &[Role::Bureau, Role::Provider, Role::Operator],
    )?;
    let views = state
        .stores
        .with(move |store| {
            let granted: Vec<String> = grants::list(store)?
                .into_iter()
                .filter(|g| g.operator == caller.name())
                .flat_map(|g| g.datasets.into_iter().map(|d| d.to_string()))
                .collect();
            Ok(catalog::list(store)?
                .iter()
                .filter(|d| match caller.role() {
                    Role::Bureau => true,
                    Role::Provider => d.policy.provider == caller.name(),
                    Role::Operator => granted.contains(&d.id.to_string()),
                    Role::Buyer => false,
                })
                .map(dataset_view)
                .collect())
        })
        .await?;
    Ok(Json(views))
}

/// A dataset's schema.
///
/// Columns with their roles, types, bounds and public key sets, the privacy unit and the
/// acquisition date — what an operator needs to write a template. Bureau, the dataset's provider,
/// or an operator whose grant covers it today.
#[utoipa::path(get, path = "/v1/datasets/{id}", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path, description = "the dataset's id (`ds-…`) or name")),
    responses((status = 200, body = DatasetSchema),
        (status = 404, body = ErrorBody, description = "no such dataset, or not one the caller may read: an operator needs a grant on it in its term, a provider must have provided it")))]
async fn dataset_get(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
) -> Answer<DatasetSchema> {
    caller.require(
        "reading a dataset's schema",
        &[Role::Bureau, Role::Provider, Role::Operator],
    )?;
    let schema = state
        .stores
        .with({
            let id = id.clone();
            move |store| {
                let Some(dataset) = catalog::find(store, &id)? else {
                    return Ok(None);
                };
                // The schema serves writing SQL: an operator reads it while one of its grants
                // covers the dataset today, as a job would need.
                let today = veil_runtime::clock::today();
                let visible = match caller.role() {
                    Role::Bureau => true,
                    Role::Provider => dataset.policy.provider == caller.name(),
                    Role::Operator => grants::list(store)?.iter().any(|g| {
                        g.operator == caller.name()
                            && g.is_in_term(today)
                            && g.datasets.contains(&dataset.id)
                    }),
                    Role::Buyer => false,
                };
                if !visible {
                    return Ok(None);
                }
                let file = catalog::schema_of(&dataset, store)?;
                let columns: Vec<(String, String)> = file
                    .fields()
                    .iter()
                    .map(|f| (f.name().clone(), f.data_type().to_string()))
                    .collect();
                Ok(Some(dataset_schema(&dataset, &columns)))
            }
        })
        .await?;
    // Another's dataset answers exactly like a missing one, so names cannot be probed.
    schema.map(Json).ok_or(ApiError::Domain(Error::NotFound {
        kind: "dataset",
        id,
        hint: "; `veil client datasets` lists the ones you may read",
    }))
}

/// A dataset's registration quality report (bureau).
///
/// Values outside key sets, values beyond bounds, nulls, missing privacy units and rows per unit,
/// as measured when the dataset was registered. The bureau only: it holds values from the data.
#[utoipa::path(get, path = "/v1/datasets/{id}/quality", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path, description = "the dataset's id (`ds-…`) or name")),
    responses((status = 200, description = "the data-quality report registration stored: nulls per column, values outside key sets with their counts and nearest keys, values outside bounds, rows without a unit, rows per unit. It holds in-domain values: the bureau's only"),
        (status = 403, body = ErrorBody, description = "not the bureau"),
        (status = 404, body = ErrorBody, description = "no such dataset, or one registered before reports existed")))]
async fn dataset_quality(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
) -> Answer<veil_runtime::quality::QualityReport> {
    // The report quotes values from inside the domain: only the bureau, who owns the data,
    // may read it.
    caller.require("reading a dataset's quality report", &[Role::Bureau])?;
    let report = state
        .stores
        .with(move |store| {
            let dataset = catalog::get(store, &id)?;
            catalog::quality_report(store, &dataset.id)?.ok_or(Error::NotFound {
                kind: "quality report of dataset",
                id: dataset.name,
                hint: "; the dataset was registered before Veil made quality reports",
            })
        })
        .await?;
    Ok(Json(report))
}

/// A dataset's asset card (bureau; a provider for its own datasets).
///
/// Provider, classification, sharing, update cadence, versions, covering grants, jobs and ε per
/// month, derived products, the provider's revenue from it and its valuation (the method is
/// stated on the card). No value from the data.
#[utoipa::path(get, path = "/v1/datasets/{id}/card", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path, description = "the dataset's id (`ds-…`) or name")),
    responses((status = 200, description = "the asset card"),
        (status = 403, body = ErrorBody, description = "neither the bureau nor a provider"),
        (status = 404, body = ErrorBody, description = "no such dataset, or not the provider's")))]
async fn dataset_card(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
) -> Answer<veil_runtime::assets::AssetCard> {
    caller.require("reading an asset card", &[Role::Bureau, Role::Provider])?;
    let wanted = id.clone();
    let card = state
        .stores
        .with(move |store| veil_runtime::assets::card(store, &wanted))
        .await?;
    caller.owns(&card.provider, "dataset", &id)?;
    Ok(Json(card))
}

/// Report an error in a dataset or a product (operator, buyer).
///
/// Text only. An operator may report on a dataset its grants cover or a product it made; a
/// buyer on a product it bought. The dataset's provider answers within ten working days.
#[utoipa::path(post, path = "/v1/corrections", tag = "veil", security(("bearer" = [])),
    request_body = FileCorrection,
    responses((status = 201, description = "the request, open"),
        (status = 400, body = ErrorBody, description = "no dataset or product named, an empty or too long text"),
        (status = 404, body = ErrorBody, description = "no such dataset or product, or not one the caller may report on")))]
async fn correction_file(
    State(state): AppState_,
    caller: Caller,
    Json(body): Json<FileCorrection>,
) -> Result<(StatusCode, Json<veil_runtime::corrections::Correction>), ApiError> {
    use veil_runtime::corrections::{self, Target};
    caller.require("reporting an error", &[Role::Operator, Role::Buyer])?;
    let target = match (body.product, body.dataset) {
        (Some(product_id), dataset) => Target::Product {
            product_id,
            dataset,
        },
        (None, Some(dataset)) => Target::Dataset(dataset),
        (None, None) => {
            return Err(ApiError::invalid(
                "name the `dataset` or the `product` the error is in",
            ));
        }
    };
    let (name, role) = (caller.name().to_string(), caller.role());
    let filed = state
        .stores
        .with(move |store| corrections::file(store, &name, role, target, &body.text))
        .await?;
    Ok((StatusCode::CREATED, Json(filed)))
}

/// Correction requests.
///
/// Bureau: all; a provider: those about its datasets; an operator or a buyer: those it filed.
/// Open ones carry their working days waiting and the overdue flag (over ten).
#[utoipa::path(get, path = "/v1/corrections", tag = "veil", security(("bearer" = [])),
    responses((status = 200, description = "the requests, oldest first")))]
async fn corrections_list(
    State(state): AppState_,
    caller: Caller,
) -> Answer<Vec<veil_runtime::corrections::Correction>> {
    let all = state
        .stores
        .with(|store| veil_runtime::corrections::list(store))
        .await?;
    Ok(Json(
        all.into_iter()
            .filter(|c| match caller.role() {
                Role::Bureau => true,
                Role::Provider => c.provider == caller.name(),
                Role::Operator | Role::Buyer => c.filed_by == caller.name(),
            })
            .collect(),
    ))
}

/// Answer a correction request (the dataset's provider, or the bureau).
///
/// Accept by naming the version that corrects the error (registered after the request), or
/// reject with the reason alone. Products made from older versions are then superseded.
#[utoipa::path(post, path = "/v1/corrections/{id}/answer", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = AnswerCorrection,
    responses((status = 200, description = "the answered request"),
        (status = 404, body = ErrorBody, description = "no such request, or not about the provider's data"),
        (status = 409, body = ErrorBody, description = "already answered")))]
async fn correction_answer(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<AnswerCorrection>,
) -> Answer<veil_runtime::corrections::Correction> {
    caller.require(
        "answering a correction request",
        &[Role::Bureau, Role::Provider],
    )?;
    let (name, role) = (caller.name().to_string(), caller.role());
    let answered = state
        .stores
        .with(move |store| {
            veil_runtime::corrections::answer(
                store,
                &name,
                role,
                &id,
                body.corrected_in_version,
                &body.reason,
            )
        })
        .await?;
    Ok(Json(answered))
}

/// How the asset register is exported.
#[derive(Debug, Deserialize)]
struct RegisterFormat {
    #[serde(default)]
    format: Option<String>,
}

/// The asset register (bureau).
///
/// Every dataset's card, as JSON, or with `?format=csv` one CSV row per dataset for the
/// finance department (money in integer fen).
#[utoipa::path(get, path = "/v1/asset-register", tag = "veil", security(("bearer" = [])),
    params(("format" = Option<String>, Query, description = "`json` (the default) or `csv`")),
    responses((status = 200, description = "every dataset's asset card (JSON), or the register as CSV"),
        (status = 400, body = ErrorBody, description = "a format other than json or csv"),
        (status = 403, body = ErrorBody, description = "not the bureau")))]
async fn asset_register(
    State(state): AppState_,
    caller: Caller,
    Query(format): Query<RegisterFormat>,
) -> Result<axum::response::Response, ApiError> {
    caller.require("reading the asset register", &[Role::Bureau])?;
    let cards = state
        .stores
        .with(|store| veil_runtime::assets::register(store))
        .await?;
    match format.format.as_deref() {
        None | Some("json") => Ok(Json(cards).into_response()),
        Some("csv") => Ok((
            [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            veil_runtime::assets::register_csv(&cards),
        )
            .into_response()),
        Some(other) => Err(ApiError::invalid(format!(
            "format is `{other}`; write json or csv"
        ))),
    }
}

/// Grants.
///
/// Bureau: all; operator: its own.
#[utoipa::path(get, path = "/v1/grants", tag = "veil", security(("bearer" = [])),
    responses((status = 200, body = Vec<GrantView>)))]
async fn grants_list(State(state): AppState_, caller: Caller) -> Answer<Vec<GrantView>> {
    caller.require("listing grants", &[Role::Bureau, Role::Operator])?;
    let views = state
        .stores
        .with(move |store| {
            Ok(grants::list(store)?
                .iter()
                .filter(|g| caller.is_bureau() || g.operator == caller.name())
                .map(grant_view)
                .collect())
        })
        .await?;
    Ok(Json(views))
}

/// Ask the bureau for a grant (operator).
///
/// Names the datasets, the purpose, the term and the monthly ε; the bureau approves or rejects it.
#[utoipa::path(post, path = "/v1/grant-requests", tag = "veil", security(("bearer" = [])),
    request_body = RequestGrant, responses((status = 201, body = GrantRequestView)))]
async fn grant_request_create(
    State(state): AppState_,
    caller: Caller,
    Json(body): Json<RequestGrant>,
) -> Result<(StatusCode, Json<GrantRequestView>), ApiError> {
    caller.require("applying for a grant", &[Role::Operator])?;
    let date = |text: &str, field: &str| {
        text.parse::<chrono::NaiveDate>().map_err(|_| {
            ApiError::invalid(format!("{field} `{text}` is not a date; write YYYY-MM-DD"))
        })
    };
    let request = grants::GrantRequest {
        operator: caller.name().to_string(),
        datasets: body.datasets,
        purpose: body.purpose,
        valid_from: date(&body.valid_from, "valid_from")?,
        valid_to: date(&body.valid_to, "valid_to")?,
        epsilon_per_month: body.epsilon_per_month,
        delta_per_month: body.delta_per_month,
        disposition: grants::Disposition::parse(&body.disposition)?,
        ownership: match body.ownership.as_deref() {
            None => grants::Ownership::default(),
            Some(text) => grants::Ownership::parse(text)?,
        },
    };
    let application = state
        .stores
        .with(move |store| grants::apply(store, request))
        .await?;
    Ok((StatusCode::CREATED, Json(application_view(&application))))
}

/// Grant requests.
///
/// Bureau: all; operator: its own.
#[utoipa::path(get, path = "/v1/grant-requests", tag = "veil", security(("bearer" = [])),
    responses((status = 200, body = Vec<GrantRequestView>, description = "oldest first; `overdue` flags requests pending more than five working days")))]
async fn grant_requests_list(
    State(state): AppState_,
    caller: Caller,
) -> Answer<Vec<GrantRequestView>> {
    caller.require("listing grant requests", &[Role::Bureau, Role::Operator])?;
    let views = state
        .stores
        .with(move |store| {
            Ok(grants::applications(store)?
                .iter()
                .filter(|a| caller.is_bureau() || a.operator == caller.name())
                .map(application_view)
                .collect())
        })
        .await?;
    Ok(Json(views))
}

/// One grant request.
///
/// Bureau, or the operator that made it.
#[utoipa::path(get, path = "/v1/grant-requests/{id}", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, body = GrantRequestView)))]
async fn grant_request_get(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
) -> Answer<GrantRequestView> {
    caller.require("reading a grant request", &[Role::Bureau, Role::Operator])?;
    let application = state
        .stores
        .with({
            let id = id.clone();
            move |store| grants::application(store, &id)
        })
        .await?;
    caller.owns(&application.operator, "grant request", &id)?;
    Ok(Json(application_view(&application)))
}

/// Approve a grant request (bureau).
///
/// Creates the grant, optionally with a smaller monthly ε than asked.
#[utoipa::path(post, path = "/v1/grant-requests/{id}/approve", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = ApproveGrantRequest,
    responses((status = 200, body = GrantRequestView)))]
async fn grant_request_approve(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ApproveGrantRequest>,
) -> Answer<GrantRequestView> {
    caller.require("approving a grant request", &[Role::Bureau])?;
    let (application, _) = state
        .stores
        .with(move |store| {
            grants::approve_application(store, &id, caller.name(), body.epsilon_per_month)
        })
        .await?;
    Ok(Json(application_view(&application)))
}

/// Reject a grant request (bureau).
///
/// With a reason the operator reads.
#[utoipa::path(post, path = "/v1/grant-requests/{id}/reject", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = Reason,
    responses((status = 200, body = GrantRequestView)))]
async fn grant_request_reject(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Reason>,
) -> Answer<GrantRequestView> {
    caller.require("rejecting a grant request", &[Role::Bureau])?;
    let application = state
        .stores
        .with(move |store| grants::reject_application(store, &id, caller.name(), &body.reason))
        .await?;
    Ok(Json(application_view(&application)))
}

// --- Templates ---

/// Upload a WASM mapper module (operator).
///
/// The module is checked by the host before it is stored; a WASM template then names it by its
/// BLAKE3 digest. The body is the module's bytes, sent as `application/octet-stream` (the SDK
/// sends `application/wasm`; any content type is taken).
#[utoipa::path(post, path = "/v1/modules", tag = "veil", security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = ModuleStored), (status = 422, body = ErrorBody)))]
async fn module_upload(
    State(state): AppState_,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<ModuleStored>), ApiError> {
    caller.require("uploading a WASM module", &[Role::Operator])?;
    let bytes = body.to_vec();
    let stored = state
        .stores
        .with(move |store| templates::store_module(store, caller.name(), &bytes))
        .await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

/// Submit a template (operator).
///
/// SQL with `:named` parameters, or a WASM template; the gate's static rules run first and refuse
/// what would leak.
#[utoipa::path(post, path = "/v1/templates", tag = "veil", security(("bearer" = [])),
    request_body = SubmitTemplate,
    responses((status = 201, body = TemplateView), (status = 422, body = ErrorBody)))]
async fn template_submit(
    State(state): AppState_,
    caller: Caller,
    Json(body): Json<SubmitTemplate>,
) -> Result<(StatusCode, Json<TemplateView>), ApiError> {
    caller.require("submitting a template", &[Role::Operator])?;
    // The domain's one submission runs the gate's static checks, as `veil template submit`
    // does, so a refused template is answered now with its rules and nothing is stored.
    let template = state
        .stores
        .with_async(move |mut store| async move {
            let module = match &body.spec.wasm {
                Some(wasm) => match templates::module_bytes(&store, &wasm.module_blake3) {
                    Ok(bytes) => Some(bytes),
                    Err(_) => {
                        let missing = Error::invalid(format!(
                            "module {} is not uploaded; POST it to /v1/modules first",
                            wasm.module_blake3
                        ));
                        return (store, Err(missing));
                    }
                },
                None => None,
            };
            let submitted =
                templates::submit_checked(&mut store, caller.name(), body.spec, module).await;
            (store, submitted)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(template_view(&template))))
}

/// Templates.
///
/// Bureau: all; operator: its own.
#[utoipa::path(get, path = "/v1/templates", tag = "veil", security(("bearer" = [])),
    responses((status = 200, body = Vec<TemplateView>)))]
async fn templates_list(State(state): AppState_, caller: Caller) -> Answer<Vec<TemplateView>> {
    caller.require("listing templates", &[Role::Bureau, Role::Operator])?;
    let views = state
        .stores
        .with(move |store| {
            Ok(templates::list(store)?
                .iter()
                .filter(|t| caller.is_bureau() || t.operator == caller.name())
                .map(template_view)
                .collect())
        })
        .await?;
    Ok(Json(views))
}

async fn owned_template(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
) -> Result<Template, ApiError> {
    let template = state
        .stores
        .with({
            let id = id.to_string();
            move |store| templates::get(store, &id)
        })
        .await?;
    caller.owns(&template.operator, "template", id)?;
    Ok(template)
}

/// One template.
///
/// Its SQL, parameters, state and, once approved, the bureau's terms. Id, unique prefix or name.
#[utoipa::path(get, path = "/v1/templates/{id}", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, body = TemplateView)))]
async fn template_get(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
) -> Answer<TemplateView> {
    caller.require("reading a template", &[Role::Bureau, Role::Operator])?;
    Ok(Json(template_view(
        &owned_template(&state, &caller, &id).await?,
    )))
}

/// Approve a template (bureau).
///
/// Pins ε, δ, k, the per-person limits, the price and the job's limits; the gate's checks run again
/// first.
#[utoipa::path(post, path = "/v1/templates/{id}/approve", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = ApproveTemplate,
    responses((status = 200, body = TemplateView)))]
async fn template_approve(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ApproveTemplate>,
) -> Answer<TemplateView> {
    caller.require("approving a template", &[Role::Bureau])?;
    let request = approval_request(body)?;
    let template = state
        .stores
        .with_async(move |mut store| async move {
            let approved = templates::approve_checked(&mut store, &id, request).await;
            (store, approved)
        })
        .await?;
    Ok(Json(template_view(&template)))
}

/// The domain's approval request from an approval body: ε required, the rest defaulted.
fn approval_request(body: ApproveTemplate) -> Result<ApprovalRequest, Error> {
    // ε is the bureau's choice, made on purpose: required here as on the command line.
    let Some(epsilon) = body.epsilon else {
        return Err(Error::invalid(
            "`epsilon` is required: choose the ε one run of this template may spend (e.g. 0.5)",
        ));
    };
    let defaults = ApprovalRequest::default();
    let mechanism = match body.mechanism.as_deref() {
        None => defaults.mechanism,
        Some(name) => Mechanism::parse(name).ok_or_else(|| {
            Error::invalid(format!(
                "`mechanism` is `{name}`; write \"laplace\" or \"gaussian\""
            ))
        })?,
    };
    Ok(ApprovalRequest {
        epsilon,
        delta: body.delta.unwrap_or(defaults.delta),
        k: body.k.unwrap_or(defaults.k),
        max_groups: body.max_groups.unwrap_or(defaults.max_groups),
        max_rows: body.max_rows.unwrap_or(defaults.max_rows),
        price_per_run_fen: body.price_per_run_fen.unwrap_or(defaults.price_per_run_fen),
        memory_mib: body.memory_mib.unwrap_or(defaults.memory_mib),
        wall_seconds: body.wall_seconds.unwrap_or(defaults.wall_seconds),
        wasm_fuel_per_unit: body
            .wasm_fuel_per_unit
            .unwrap_or(defaults.wasm_fuel_per_unit),
        wasm_memory_mib: body.wasm_memory_mib.unwrap_or(defaults.wasm_memory_mib),
        mechanism,
    })
}

/// Preview an approval (bureau).
///
/// What approving the template with these terms would give, without approving it: each output
/// column's error at 95 % confidence (no data read) and warnings about the grouping.
#[utoipa::path(post, path = "/v1/templates/{id}/preview", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = ApproveTemplate,
    responses((status = 200, body = Preview)))]
async fn template_preview(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ApproveTemplate>,
) -> Answer<Preview> {
    caller.require("previewing an approval", &[Role::Bureau])?;
    let request = approval_request(body)?;
    let preview = state
        .stores
        .with_async(move |store| async move {
            let preview = templates::preview(&store, &id, &request).await;
            (store, preview)
        })
        .await?;
    Ok(Json(preview))
}

/// Reject a template (bureau).
///
/// With a reason the operator reads.
#[utoipa::path(post, path = "/v1/templates/{id}/reject", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = Reason,
    responses((status = 200, body = TemplateView)))]
async fn template_reject(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Reason>,
) -> Answer<TemplateView> {
    caller.require("rejecting a template", &[Role::Bureau])?;
    let template = state
        .stores
        .with(move |store| templates::reject(store, &id, &body.reason))
        .await?;
    Ok(Json(template_view(&template)))
}

/// Revoke an approved template (bureau).
///
/// No new job may run it; released products stay.
#[utoipa::path(post, path = "/v1/templates/{id}/revoke", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = Reason,
    responses((status = 200, body = TemplateView)))]
async fn template_revoke(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Reason>,
) -> Answer<TemplateView> {
    caller.require("revoking a template", &[Role::Bureau])?;
    let template = state
        .stores
        .with(move |store| templates::revoke(store, &id, &body.reason))
        .await?;
    Ok(Json(template_view(&template)))
}

// --- Jobs ---

/// Submit a job (operator).
///
/// Runs an approved template with parameter values under a grant; answers at once with the queued
/// job. `Idempotency-Key` makes a retry safe.
#[utoipa::path(post, path = "/v1/jobs", tag = "veil", security(("bearer" = [])),
    request_body = SubmitJob,
    params(("idempotency-key" = Option<String>, Header, description = "a retried submission with the same key returns the first job")),
    responses((status = 202, body = Submitted, description = "queued"),
        (status = 200, body = Submitted, description = "replayed idempotency key"),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 507, body = ErrorBody, description = "the store's disk is full (`storage_full`); retry once the bureau has freed space")))]
async fn job_submit(
    State(state): AppState_,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<SubmitJob>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    caller.require("submitting a job", &[Role::Operator])?;
    owned_template(&state, &caller, &body.template).await?;
    let key = match headers.get(IDEMPOTENCY_KEY_HEADER) {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::invalid("the idempotency key must be ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    // While the disk is full nothing is queued: the job could only end `failed` (see `space`).
    if state.workers.storage_full() {
        return Err(ApiError::StorageFull);
    }
    // A place in the queue first: a full queue refuses before anything is written.
    let permit = state.workers.reserve().ok_or_else(|| {
        ApiError::Busy(format!(
            "{} jobs are queued or running, the most this server takes; retry shortly",
            state.workers.capacity()
        ))
    })?;
    let request = job_request(&caller, body);
    let submission = state
        .stores
        .with(move |store| jobs::enqueue(store, &request, key.as_deref()))
        .await?;
    if submission.replayed {
        return Ok((
            StatusCode::OK,
            Json(Submitted {
                job: job_view(&submission.job),
                replayed: true,
            }),
        ));
    }
    state.workers.admit(submission.job.id.clone(), permit)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            job: job_view(&submission.job),
            replayed: false,
        }),
    ))
}

/// Pre-flight a job (operator).
///
/// Would it pass, under which grant, at what ε and price, and what would remain of the month's
/// budget? Nothing runs and nothing is spent.
#[utoipa::path(post, path = "/v1/jobs/dry-run", tag = "veil", security(("bearer" = [])),
    request_body = SubmitJob, responses((status = 200, body = DryRun)))]
async fn job_dry_run(
    State(state): AppState_,
    caller: Caller,
    Json(body): Json<SubmitJob>,
) -> Answer<DryRun> {
    caller.require("checking a job", &[Role::Operator])?;
    owned_template(&state, &caller, &body.template).await?;
    let request = job_request(&caller, body);
    let answer = state
        .stores
        .with_async(move |store| async move {
            let answer = jobs::dry_run(&store, &request).await;
            (store, answer)
        })
        .await?;
    Ok(Json(answer))
}

/// Jobs.
///
/// Bureau: all; operator: its own.
#[utoipa::path(get, path = "/v1/jobs", tag = "veil", security(("bearer" = [])),
    responses((status = 200, body = Vec<JobView>)))]
async fn jobs_list(State(state): AppState_, caller: Caller) -> Answer<Vec<JobView>> {
    caller.require("listing jobs", &[Role::Bureau, Role::Operator])?;
    let views = state
        .stores
        .with(move |store| {
            Ok(jobs::list(store)?
                .iter()
                .filter(|j| caller.is_bureau() || j.operator == caller.name())
                .map(job_view)
                .collect())
        })
        .await?;
    Ok(Json(views))
}

async fn owned_job(state: &Arc<AppState>, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    let job = state
        .stores
        .with({
            let id = id.to_string();
            move |store| jobs::get(store, &id)
        })
        .await?;
    caller.owns(&job.operator, "job", id)?;
    Ok(job)
}

/// One job.
///
/// Its state, and once ended its product or why it was refused.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, body = JobView)))]
async fn job_get(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
) -> Answer<JobView> {
    caller.require("reading a job", &[Role::Bureau, Role::Operator])?;
    Ok(Json(job_view(&owned_job(&state, &caller, &id).await?)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct WaitQuery {
    /// How long to hold the request while the job has not ended, in milliseconds (at most
    /// 60000; default 30000).
    timeout_ms: Option<u64>,
}

/// Wait for a job to end.
///
/// Holds the request until the job ends or `timeout_ms` passes, then answers with the job as it
/// stands.
#[utoipa::path(get, path = "/v1/jobs/{id}/wait", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path), WaitQuery),
    responses((status = 200, body = JobView, description = "the job when it ended, or as it stands at the timeout")))]
async fn job_wait(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Answer<JobView> {
    caller.require("waiting for a job", &[Role::Bureau, Role::Operator])?;
    let timeout = Duration::from_millis(query.timeout_ms.unwrap_or(30_000).min(WAIT_MS_MAX));
    let deadline = tokio::time::Instant::now() + timeout;
    // Subscribe before reading, so an end between the read and the wait is not missed.
    let mut ended = state.workers.subscribe();
    loop {
        let job = owned_job(&state, &caller, &id).await?;
        if job_view(&job).is_finished() {
            return Ok(Json(job_view(&job)));
        }
        match tokio::time::timeout_at(deadline, ended.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok(Json(job_view(&owned_job(&state, &caller, &id).await?))),
        }
    }
}

/// Cancel a job.
///
/// A queued job ends at once with nothing spent; a running one stops, and ε it reserved stays
/// spent.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = JobView, description = "the job as it stands; a running job ends `cancelled` shortly"),
        (status = 409, body = ErrorBody)))]
async fn job_cancel(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
) -> Answer<JobView> {
    caller.require("cancelling a job", &[Role::Bureau, Role::Operator])?;
    let job = owned_job(&state, &caller, &id).await?;
    if job_view(&job).is_finished() {
        return Err(ApiError::Domain(Error::Conflict(format!(
            "job {id} has already ended ({})",
            job.state
        ))));
    }
    let job_id = JobId::new(id);
    state.workers.cancel(&job_id);
    let actor = caller.name().to_string();
    let job = state
        .stores
        .with(move |store| jobs::cancel_queued(store, &job_id, &actor))
        .await?;
    Ok(Json(job_view(&job)))
}

/// Meter records.
///
/// One per job. The operator's own omit wall time, CPU time and peak memory, which depend on the
/// data; the bureau's have them.
#[utoipa::path(get, path = "/v1/meter", tag = "veil", security(("bearer" = [])),
    responses((status = 200, body = Vec<MeterView>)))]
async fn meter_list(State(state): AppState_, caller: Caller) -> Answer<Vec<MeterView>> {
    caller.require("reading meter records", &[Role::Bureau, Role::Operator])?;
    let views = state
        .stores
        .with(move |store| {
            Ok(metering::list(store.conn())?
                .iter()
                .filter(|m| caller.is_bureau() || m.operator == caller.name())
                .map(|m| meter_view(m, &caller))
                .collect())
        })
        .await?;
    Ok(Json(views))
}

// --- Products and the market ---

/// A product as a caller may see it, with the files its signed manifest lists.
struct StoredProduct {
    view: ProductView,
    dir: std::path::PathBuf,
    /// Whether the caller (a buyer) bought it.
    bought: bool,
}

fn stored_product(
    store: &veil_runtime::store::Store,
    product: products::Product,
    caller: &Caller,
) -> veil_runtime::Result<StoredProduct> {
    let id = ProductId::new(&product.id);
    let dir = store.products_dir().join(&product.id);
    let manifest = veil_sdk::manifest::read_manifest(&dir)
        .map_err(|e| Error::internal(format!("reading product {}'s manifest: {e}", product.id)))?;
    let manifest_bytes = std::fs::metadata(dir.join(veil_sdk::manifest::MANIFEST_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let mut files = vec![ProductFile {
        name: veil_sdk::manifest::MANIFEST_FILE.into(),
        bytes: manifest_bytes,
        blake3: String::new(),
    }];
    files.extend(manifest.manifest.files.iter().map(|f| ProductFile {
        name: f.name.clone(),
        bytes: f.bytes,
        blake3: f.blake3.clone(),
    }));
    let listing = market::listing(store.conn(), &id)?;
    let bought = caller.role() == Role::Buyer
        && market::purchases_of(store.conn(), caller.name())?
            .iter()
            .any(|p| p.product_id == product.id);
    Ok(StoredProduct {
        view: ProductView {
            id: product.id,
            job_id: product.job_id,
            template_id: product.template_id,
            operator: product.operator,
            rows: product.rows,
            created_at: product.created_at,
            files,
            price_fen: listing.filter(|_| !product.recalled).map(|l| l.price.0),
            recalled: product.recalled,
        },
        dir,
        bought,
    })
}

/// Who may see a product: the bureau; its operator; a buyer while it is offered for sale, or
/// that bought it.
fn may_read_product(caller: &Caller, product: &StoredProduct) -> bool {
    match caller.role() {
        Role::Bureau => true,
        Role::Operator => product.view.operator == caller.name(),
        Role::Buyer => product.bought || product.view.price_fen.is_some(),
        Role::Provider => false,
    }
}

async fn readable_product(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
) -> Result<StoredProduct, ApiError> {
    let found = state
        .stores
        .with({
            let (id, caller) = (id.to_string(), caller.clone());
            move |store| {
                let product = products::get(store.conn(), &ProductId::new(&id))?;
                stored_product(store, product, &caller)
            }
        })
        .await;
    match found {
        Ok(product) if may_read_product(caller, &product) => Ok(product),
        Ok(_) | Err(Error::NotFound { .. }) => {
            Err(ApiError::Domain(Error::not_found("product", id)))
        }
        Err(error) => Err(error.into()),
    }
}

async fn visible_products(
    state: &Arc<AppState>,
    caller: &Caller,
    only_offered: bool,
) -> Result<Vec<ProductView>, ApiError> {
    let caller = caller.clone();
    let products = state
        .stores
        .with(move |store| {
            let mut visible = Vec::new();
            for product in products::list(store.conn())? {
                let product = stored_product(store, product, &caller)?;
                let offered = product.view.price_fen.is_some();
                if (!only_offered && may_read_product(&caller, &product))
                    || (only_offered && offered)
                {
                    visible.push(product.view);
                }
            }
            Ok(visible)
        })
        .await?;
    Ok(products)
}

/// Products.
///
/// Bureau: all; operator: its own; buyer: those offered or bought.
#[utoipa::path(get, path = "/v1/products", tag = "veil", security(("bearer" = [])),
    responses((status = 200, body = Vec<ProductView>, description = "operator: its own; buyer: offered or bought; bureau: all")))]
async fn products_list(State(state): AppState_, caller: Caller) -> Answer<Vec<ProductView>> {
    caller.require(
        "listing products",
        &[Role::Bureau, Role::Operator, Role::Buyer],
    )?;
    Ok(Json(visible_products(&state, &caller, false).await?))
}

/// Products offered for sale.
///
/// Listed and not recalled.
#[utoipa::path(get, path = "/v1/offers", tag = "veil", security(("bearer" = [])),
    responses((status = 200, body = Vec<ProductView>, description = "products offered for sale, not recalled")))]
async fn offers(State(state): AppState_, caller: Caller) -> Answer<Vec<ProductView>> {
    caller.require(
        "listing offers",
        &[Role::Bureau, Role::Operator, Role::Buyer],
    )?;
    Ok(Json(visible_products(&state, &caller, true).await?))
}

/// A listing card, before buying.
///
/// What the product is — template, purpose, columns, sources with acquisition dates, ε/δ, k, rows,
/// release date, price — and its signed manifest, which holds no in-domain values.
#[utoipa::path(get, path = "/v1/offers/{id}", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path, description = "the product's id (`prod-…`)")),
    responses((status = 200, body = OfferCard, description = "the listing card, readable before buying, with the signed manifest"),
        (status = 404, body = ErrorBody, description = "no such product on offer: never listed, or recalled")))]
async fn offer_get(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
) -> Answer<OfferCard> {
    caller.require(
        "reading an offer",
        &[Role::Bureau, Role::Operator, Role::Buyer],
    )?;
    let card = state
        .stores
        .with({
            let id = id.clone();
            move |store| {
                let product_id = ProductId::new(&id);
                let product = match products::get(store.conn(), &product_id) {
                    Ok(product) => product,
                    Err(Error::NotFound { .. }) => return Ok(None),
                    Err(error) => return Err(error),
                };
                // A recalled product keeps its listing row but is no longer offered.
                let Some(listing) = market::listing(store.conn(), &product_id)? else {
                    return Ok(None);
                };
                if product.recalled {
                    return Ok(None);
                }
                // The manifest states the release's metadata and no value from inside the
                // domain (sdk/src/manifest.rs), so it may be read before buying; the result
                // files come only with a purchase.
                let dir = store.products_dir().join(&product.id);
                let signed = veil_sdk::manifest::read_manifest(&dir).map_err(|e| {
                    Error::internal(format!("reading product {}'s manifest: {e}", product.id))
                })?;
                let types = products::result_columns(&dir)?;
                Ok(Some(offer_card(listing.price, signed, &types)))
            }
        })
        .await?;
    card.map(Json).ok_or(ApiError::Domain(Error::NotFound {
        kind: "offer of product",
        id,
        hint: "; it is not for sale (never offered, or recalled): `veil client offers` lists what is",
    }))
}

/// One product.
///
/// Its manifest and files, for whoever may read it.
#[utoipa::path(get, path = "/v1/products/{id}", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, body = ProductView)))]
async fn product_get(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
) -> Answer<ProductView> {
    caller.require(
        "reading a product",
        &[Role::Bureau, Role::Operator, Role::Buyer],
    )?;
    Ok(Json(readable_product(&state, &caller, &id).await?.view))
}

/// Offer a product for sale, or change its price.
///
/// The product's operator or the bureau; a recalled product cannot be listed.
#[utoipa::path(post, path = "/v1/products/{id}/listing", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = ListForSale,
    responses((status = 200, body = ProductView)))]
async fn product_list_for_sale(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ListForSale>,
) -> Answer<ProductView> {
    caller.require(
        "offering a product for sale",
        &[Role::Bureau, Role::Operator],
    )?;
    readable_product(&state, &caller, &id).await?;
    let role = caller.role();
    let actor = caller.name().to_string();
    let product_id = ProductId::new(&id);
    state
        .stores
        .with(move |store| {
            market::list_for_sale(store, role, &actor, &product_id, Fen(body.price_fen))
        })
        .await?;
    Ok(Json(readable_product(&state, &caller, &id).await?.view))
}

fn purchase_view(p: &market::Purchase, new: bool) -> PurchaseView {
    purchase_view_of(p, new, false)
}

fn purchase_view_of(p: &market::Purchase, new: bool, superseded: bool) -> PurchaseView {
    PurchaseView {
        superseded,
        id: p.id.clone(),
        product_id: p.product_id.clone(),
        buyer: p.buyer.clone(),
        price_fen: p.price.0,
        at: p.at.clone(),
        new,
        recalled: p.recalled.as_ref().map(|r| RecallNoticeView {
            reason: r.reason.clone(),
            at: r.at.clone(),
        }),
    }
}

/// Buy a product (buyer).
///
/// Charges the listed price once; buying it again returns the first purchase.
#[utoipa::path(post, path = "/v1/products/{id}/purchase", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 201, body = PurchaseView, description = "bought"),
        (status = 200, body = PurchaseView, description = "bought before: nothing charged again")))]
async fn product_purchase(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<PurchaseView>), ApiError> {
    caller.require("buying a product", &[Role::Buyer])?;
    readable_product(&state, &caller, &id).await?;
    let buyer = caller.name().to_string();
    let product_id = ProductId::new(&id);
    let (purchase, new) = state
        .stores
        .with(move |store| {
            let before = market::purchases_of(store.conn(), &buyer)?.len();
            let purchase = market::purchase(store, &buyer, &product_id)?;
            let after = market::purchases_of(store.conn(), &buyer)?.len();
            Ok((purchase, after > before))
        })
        .await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(purchase_view(&purchase, new))))
}

/// Purchases.
///
/// Bureau: all; buyer: its own, each marked if the product was recalled since.
#[utoipa::path(get, path = "/v1/purchases", tag = "veil", security(("bearer" = [])),
    responses((status = 200, body = Vec<PurchaseView>)))]
async fn purchases_list(State(state): AppState_, caller: Caller) -> Answer<Vec<PurchaseView>> {
    caller.require("listing purchases", &[Role::Bureau, Role::Buyer])?;
    let (purchases, superseded) = state
        .stores
        .with(move |store| {
            let purchases = if caller.is_bureau() {
                market::all_purchases(store.conn())?
            } else {
                market::purchases_of(store.conn(), caller.name())?
            };
            Ok((
                purchases,
                veil_runtime::corrections::superseded_products(store)?,
            ))
        })
        .await?;
    Ok(Json(
        purchases
            .iter()
            .map(|p| purchase_view_of(p, true, superseded.contains(&p.product_id)))
            .collect(),
    ))
}

/// Recall a product (bureau).
///
/// It can no longer be listed, bought or downloaded; answers with the buyers to tell.
#[utoipa::path(post, path = "/v1/products/{id}/recall", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = Reason,
    responses((status = 200, body = RecallView, description = "the buyers to tell")))]
async fn product_recall(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Reason>,
) -> Answer<RecallView> {
    caller.require("recalling a product", &[Role::Bureau])?;
    let recall = state
        .stores
        .with(move |store| market::recall(store, &ProductId::new(&id), &body.reason))
        .await?;
    Ok(Json(RecallView {
        product_id: recall.product_id,
        reason: recall.reason,
        buyers: recall.buyers,
    }))
}

fn dispute_view(d: &disputes::Dispute) -> DisputeView {
    DisputeView {
        id: d.id.clone(),
        purchase_id: d.purchase_id.clone(),
        buyer: d.buyer.clone(),
        product_id: d.product_id.clone(),
        reason: d.reason.clone(),
        state: d.state.as_str().to_string(),
        decision_reason: d.decision_reason.clone(),
        opened_at: d.opened_at.clone(),
        decided_at: d.decided_at.clone(),
        decided_by: d.decided_by.clone(),
        refund_posting_id: d.refund_posting_id,
    }
}

/// Dispute a purchase (buyer).
///
/// Only the caller's own purchase, named by purchase id or product id; one open dispute per
/// purchase, and none once a dispute on it was upheld.
#[utoipa::path(post, path = "/v1/disputes", tag = "veil", security(("bearer" = [])),
    request_body = OpenDispute,
    responses((status = 201, body = DisputeView, description = "opened")))]
async fn dispute_open(
    State(state): AppState_,
    caller: Caller,
    Json(body): Json<OpenDispute>,
) -> Result<(StatusCode, Json<DisputeView>), ApiError> {
    caller.require("disputing a purchase", &[Role::Buyer])?;
    let buyer = caller.name().to_string();
    let dispute = state
        .stores
        .with(move |store| disputes::open(store, &buyer, &body.purchase, &body.reason))
        .await?;
    Ok((StatusCode::CREATED, Json(dispute_view(&dispute))))
}

/// Disputes.
///
/// Bureau: all; buyer: its own, with the bureau's decisions.
#[utoipa::path(get, path = "/v1/disputes", tag = "veil", security(("bearer" = [])),
    responses((status = 200, body = Vec<DisputeView>)))]
async fn disputes_list(State(state): AppState_, caller: Caller) -> Answer<Vec<DisputeView>> {
    caller.require("listing disputes", &[Role::Bureau, Role::Buyer])?;
    let found = state
        .stores
        .with(move |store| {
            if caller.is_bureau() {
                disputes::list(store.conn())
            } else {
                disputes::of_buyer(store.conn(), caller.name())
            }
        })
        .await?;
    Ok(Json(found.iter().map(dispute_view).collect()))
}

/// Uphold a dispute (bureau).
///
/// Refunds the sale: a ledger posting that reverses the sale's lines, in this period.
#[utoipa::path(post, path = "/v1/disputes/{id}/uphold", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = Reason,
    responses((status = 200, body = DisputeView, description = "upheld and refunded")))]
async fn dispute_uphold(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Reason>,
) -> Answer<DisputeView> {
    caller.require("upholding a dispute", &[Role::Bureau])?;
    let actor = caller.name().to_string();
    let dispute = state
        .stores
        .with(move |store| disputes::uphold(store, &actor, &id, &body.reason))
        .await?;
    Ok(Json(dispute_view(&dispute)))
}

/// Reject a dispute (bureau).
///
/// Nothing is refunded; the buyer sees the reason.
#[utoipa::path(post, path = "/v1/disputes/{id}/reject", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = Reason,
    responses((status = 200, body = DisputeView, description = "rejected")))]
async fn dispute_reject(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Reason>,
) -> Answer<DisputeView> {
    caller.require("rejecting a dispute", &[Role::Bureau])?;
    let actor = caller.name().to_string();
    let dispute = state
        .stores
        .with(move |store| disputes::reject(store, &actor, &id, &body.reason))
        .await?;
    Ok(Json(dispute_view(&dispute)))
}

fn freeze_view(freeze: &freezes::Freeze) -> FreezeView {
    FreezeView {
        id: freeze.id.clone(),
        scope: freeze.scope.as_str().to_string(),
        target: freeze.target.clone(),
        reason: freeze.reason.clone(),
        block_downloads: freeze.block_downloads,
        frozen_by: freeze.frozen_by.clone(),
        frozen_at: freeze.frozen_at.clone(),
        active: freeze.is_active(),
        lifted_by: freeze.lifted_by.clone(),
        lifted_at: freeze.lifted_at.clone(),
        lift_reason: freeze.lift_reason.clone(),
        cancelled_jobs: Vec::new(),
    }
}

/// Freeze the platform, a dataset, an operator or a grant (bureau).
///
/// The emergency stop: queued jobs under it end `cancelled` at once, running ones are
/// cancelled (ε they reserved stays spent), new submissions are refused naming the rule
/// `platform.frozen` and the freeze, and with `block_downloads` the products it covers cannot
/// be downloaded, until the bureau lifts it.
#[utoipa::path(post, path = "/v1/freezes", tag = "veil", security(("bearer" = [])),
    request_body = FreezeRequest,
    responses((status = 200, body = FreezeView, description = "the freeze, with the running jobs it cancelled"),
        (status = 400, body = ErrorBody, description = "no reason, an unknown scope, or a target the scope does not take"),
        (status = 404, body = ErrorBody, description = "no such dataset, operator or grant"),
        (status = 409, body = ErrorBody, description = "the same scope and target is frozen already")))]
async fn freeze_create(
    State(state): AppState_,
    caller: Caller,
    Json(body): Json<FreezeRequest>,
) -> Answer<FreezeView> {
    caller.require("freezing", &[Role::Bureau])?;
    let actor = caller.name().to_string();
    let (freeze, under) = state
        .stores
        .with(move |store| {
            let scope = freezes::Scope::parse(&body.scope)?;
            let freeze = freezes::freeze(
                store,
                &actor,
                scope,
                body.target.as_deref().unwrap_or_default(),
                &body.reason,
                body.block_downloads,
            )?;
            Ok((freeze, freezes::running_under(store)?))
        })
        .await?;
    // Running jobs stop now: their workers' tokens fire, and each ends `cancelled`.
    for job in &under {
        state.workers.cancel(job);
    }
    let mut view = freeze_view(&freeze);
    view.cancelled_jobs = under.iter().map(ToString::to_string).collect();
    Ok(Json(view))
}

/// Lift a freeze (bureau).
///
/// A separate act, audited with its own reason; jobs may be submitted again afterwards.
#[utoipa::path(post, path = "/v1/freezes/{id}/lift", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = Reason,
    responses((status = 200, body = FreezeView, description = "the freeze, lifted"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "already lifted")))]
async fn freeze_lift(
    State(state): AppState_,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Reason>,
) -> Answer<FreezeView> {
    caller.require("lifting a freeze", &[Role::Bureau])?;
    let actor = caller.name().to_string();
    let freeze = state
        .stores
        .with(move |store| freezes::lift(store, &actor, &id, &body.reason))
        .await?;
    Ok(Json(freeze_view(&freeze)))
}

/// The incident log (bureau).
///
/// Every freeze, active or lifted, newest first: what was frozen, why, by whom, and who lifted
/// it, when and why.
#[utoipa::path(get, path = "/v1/freezes", tag = "veil", security(("bearer" = [])),
    responses((status = 200, body = Vec<FreezeView>)))]
async fn freezes_list(State(state): AppState_, caller: Caller) -> Answer<Vec<FreezeView>> {
    caller.require("reading the incident log", &[Role::Bureau])?;
    let log = state
        .stores
        .with(|store| freezes::incidents(store.conn()))
        .await?;
    Ok(Json(log.iter().map(freeze_view).collect()))
}

/// Largest chunk a download stream reads at once, in bytes.
const DOWNLOAD_CHUNK_BYTES: usize = 64 * 1024;

/// Download a product file.
///
/// Resumable with `Range`; the operator's own products, or a buyer's purchases.
#[utoipa::path(get, path = "/v1/products/{id}/files/{name}", tag = "veil", security(("bearer" = [])),
    params(("id" = String, Path), ("name" = String, Path),
        ("range" = Option<String>, Header, description = "`bytes=N-` or `bytes=N-M` to resume")),
    responses((status = 200, description = "the file, streamed"),
        (status = 206, description = "the requested range"),
        (status = 416, description = "the range lies outside the file")))]
async fn product_file(
    State(state): AppState_,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::http::header;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    caller.require(
        "downloading a product",
        &[Role::Bureau, Role::Operator, Role::Buyer],
    )?;
    let product = readable_product(&state, &caller, &id).await?;
    // A buyer downloads only what it bought; nobody but the bureau downloads a recalled product.
    if caller.role() == Role::Buyer && !product.bought {
        return Err(ApiError::Domain(Error::Forbidden(format!(
            "buy product {id} before downloading it"
        ))));
    }
    if product.view.recalled && !caller.is_bureau() {
        return Err(ApiError::Domain(Error::Conflict(format!(
            "product {id} was recalled by the bureau; it can no longer be downloaded"
        ))));
    }
    // What the grant's disposition made of it at the end of its term.
    let product_id = id.clone();
    let disposed = state
        .stores
        .with(move |store| products::state_of(store.conn(), &product_id))
        .await?;
    match disposed.as_deref() {
        Some("destroyed") if name != veil_sdk::manifest::MANIFEST_FILE => {
            return Err(ApiError::Domain(Error::Conflict(format!(
                "product {id} was destroyed when its grant's term ended (its disposition); only its manifest remains"
            ))));
        }
        Some("returned") if caller.role() == Role::Operator => {
            return Err(ApiError::Domain(Error::not_found("product", id)));
        }
        _ => {}
    }
    // The bureau's freeze with blocked downloads stops everyone but the bureau itself.
    if !caller.is_bureau() {
        let product_id = ProductId::new(&id);
        let frozen = state
            .stores
            .with(move |store| freezes::check_product(store, &product_id))
            .await?;
        if let Some(freeze) = frozen {
            return Err(ApiError::Domain(
                freeze.refusal("its products cannot be downloaded"),
            ));
        }
    }
    // Only the manifest and the files it lists, by plain name: never a path.
    if !product.view.files.iter().any(|f| f.name == name) {
        return Err(ApiError::Domain(Error::not_found("product file", name)));
    }
    let path = product.dir.join(&name);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Error::io("opening", &path, e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| Error::io("reading", &path, e))?
        .len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|text| parse_range(text, len));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(None) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response());
        }
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| Error::io("reading", &path, e))?;
    let stream =
        tokio_util::io::ReaderStream::with_capacity(file.take(end - start), DOWNLOAD_CHUNK_BYTES);
    let role = caller.role();
    let actor = caller.name().to_string();
    state
        .stores
        .with(move |store| {
            let product_id = ProductId::new(&id);
            if role == Role::Buyer {
                // Checked again inside the transaction that records the download.
                market::record_download(store, &actor, &product_id, &name).map(|_| ())
            } else {
                market::record_owner_download(store, &actor, &product_id, &name, start)
            }
        })
        .await?;
    let mut response = axum::response::Response::new(axum::body::Body::from_stream(stream));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, (end - start).into());
    headers.insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) =
            header::HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1))
    {
        headers.insert(header::CONTENT_RANGE, value);
    }
    Ok(response)
}

/// `bytes=N-` or `bytes=N-M` as a half-open `[start, end)` inside a file of `len` bytes;
/// `None` when it lies outside (or is a form this server does not serve, like suffixes).
fn parse_range(text: &str, len: u64) -> Option<(u64, u64)> {
    let spec = text.strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = match end.trim() {
        "" => len,
        last => last.parse::<u64>().ok()?.checked_add(1)?.min(len),
    };
    (start < end).then_some((start, end))
}

// --- Money ---

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct StatementQuery {
    /// The bureau names the party: `operator:<name>`, `provider:<name>` or `platform`.
    /// Operators and providers always get their own.
    party: Option<String>,
}

/// A settled month's statement.
///
/// Operators and providers get their own; the bureau names the party with `?party=`.
#[utoipa::path(get, path = "/v1/statements/{period}", tag = "veil", security(("bearer" = [])),
    params(("period" = String, Path, description = "YYYY-MM"), StatementQuery),
    responses((status = 200, description = "the settled statement (JSON, with every line's ledger posting and line id)")))]
async fn statement_get(
    State(state): AppState_,
    caller: Caller,
    Path(period): Path<String>,
    Query(query): Query<StatementQuery>,
) -> Answer<settlement::Statement> {
    caller.require(
        "reading a statement",
        &[Role::Bureau, Role::Operator, Role::Provider],
    )?;
    let party = match caller.role() {
        Role::Operator => format!("operator:{}", caller.name()),
        Role::Provider => format!("provider:{}", caller.name()),
        _ => query
            .party
            .ok_or_else(|| ApiError::invalid("name the party: ?party=operator:<name>"))?,
    };
    let statement = state
        .stores
        .with(move |store| settlement::statement(store, &period, &party))
        .await?;
    Ok(Json(statement))
}

/// Settle a closed month (bureau).
///
/// Writes each party's statement, once the month has ended; settled months are final.
#[utoipa::path(post, path = "/v1/settlements", tag = "veil", security(("bearer" = [])),
    request_body = Settle,
    responses((status = 200, description = "the statements written, with their digests"),
        (status = 400, body = ErrorBody, description = "the period has not ended, or is malformed")))]
async fn settle(
    State(state): AppState_,
    caller: Caller,
    Json(body): Json<Settle>,
) -> Answer<settlement::Settlement> {
    caller.require("settling a period", &[Role::Bureau])?;
    let settled = state
        .stores
        .with(move |store| settlement::settle(store, &body.period, caller.name()))
        .await?;
    Ok(Json(settled))
}

/// Usage of a provider's datasets (provider).
///
/// Jobs, ε spent and the provider's shares earned, per dataset.
#[utoipa::path(get, path = "/v1/usage", tag = "veil", security(("bearer" = [])),
    responses((status = 200, description = "per dataset of the provider: jobs that read it, rows fees and sale shares earned")))]
async fn provider_usage(
    State(state): AppState_,
    caller: Caller,
) -> Answer<Vec<settlement::DatasetUsage>> {
    caller.require("reading dataset usage", &[Role::Provider])?;
    let usage = state
        .stores
        .with(move |store| settlement::provider_usage(store.conn(), caller.name()))
        .await?;
    Ok(Json(usage))
}
