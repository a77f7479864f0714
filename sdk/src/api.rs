//! The HTTP API's request and response bodies (JSON), shared by the server (`veil serve`),
//! [`crate::client::Client`] and anyone who writes their own client.
//!
//! Every route lives under [`API_PREFIX`] and takes `Authorization: Bearer <key>` (a key that
//! `veil principal add` printed), except `GET /v1/health`. Errors come back as an
//! [`ErrorBody`] whose `kind` fixes the status code (see [`ErrorKind::status`]). Money is
//! integer fen; ε and δ are plain numbers as the bureau approved them.
//!
//! The server derives its OpenAPI document from these types (feature `openapi`);
//! `GET /v1/openapi.json` serves it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::template::TemplateSpec;

/// Prefix of every route.
pub const API_PREFIX: &str = "/v1";
/// Header carrying a job submission's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Longest a `wait` call may hold the connection, in milliseconds.
pub const WAIT_MS_MAX: u64 = 60_000;

/// The four kinds of organisation that use Veil.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Bureau,
    Provider,
    Operator,
    Buyer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bureau => "bureau",
            Self::Provider => "provider",
            Self::Operator => "operator",
            Self::Buyer => "buyer",
        }
    }

    /// The role named `text` (`bureau`, `provider`, `operator` or `buyer`).
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Bureau, Self::Provider, Self::Operator, Self::Buyer]
            .into_iter()
            .find(|role| role.as_str() == text)
    }
}

/// Whose fault an error is; it fixes the HTTP status.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No key, or a key that is unknown or revoked (401).
    Unauthorized,
    /// The caller's role may not do this (403).
    Forbidden,
    /// The thing named does not exist, or is not the caller's to see (404).
    NotFound,
    /// The request is malformed; the message says what to change (400).
    Invalid,
    /// The request contradicts the current state (409).
    Conflict,
    /// A rule refused it; `violations` names every rule (422).
    Refused,
    /// A dataset policy does not fit its data (the bureau's fault, 422).
    Policy,
    /// The job queue is full (429); retry after the `Retry-After` seconds.
    Busy,
    /// A limit of the platform was reached (503).
    Resources,
    /// The platform's storage is full (507): nothing was queued or changed. The bureau must
    /// free disk space on the store; the server notices by itself and takes jobs again, so
    /// retry later.
    StorageFull,
    /// The platform failed (500).
    Internal,
}

impl ErrorKind {
    /// The HTTP status code of this kind: the one place the mapping is defined.
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Invalid => 400,
            Self::Conflict => 409,
            Self::Refused | Self::Policy => 422,
            Self::Busy => 429,
            Self::Resources => 503,
            Self::StorageFull => 507,
            Self::Internal => 500,
        }
    }
}

/// One rule that refused a job or template.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The rule's code, e.g. `budget.exhausted`.
    pub rule: String,
    /// What to change, in words.
    pub message: String,
}

/// The body of every error response.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    pub message: String,
    /// The rules that refused the request (kind `refused` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}

/// `GET /v1/health`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// `GET /v1/me`: who the key belongs to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    pub id: String,
    pub role: Role,
    pub name: String,
}

/// `GET /v1/platform/key`: the key that signs every product manifest.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformKey {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The 32-byte public key as 64 hex digits (`veil product verify --public-key`).
    pub public_key_hex: String,
}

/// A registered dataset, as its provider, the bureau and granted operators see it (never its
/// rows).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetView {
    pub id: String,
    pub name: String,
    pub provider: String,
    pub classification_level: u8,
    pub acquired_on: String,
    pub privacy_unit: String,
    pub rows: u64,
    pub registered_at: String,
}

/// `POST /v1/modules` answers with the stored module's digest.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleStored {
    pub blake3: String,
    pub bytes: u64,
}

/// `POST /v1/templates`: submit a template (its WASM module, if any, uploaded first).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitTemplate {
    pub spec: TemplateSpec,
}

/// What the bureau pinned when it approved a template.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalTerms {
    pub epsilon: f64,
    pub delta: f64,
    pub k: u32,
    pub max_groups: u32,
    pub max_rows: u32,
    pub price_per_run_fen: i64,
    pub memory_mib: u32,
    pub wall_seconds: u32,
    pub wasm_fuel_per_unit: u64,
    pub wasm_memory_mib: u32,
}

/// `POST /v1/templates/{id}/approve` (bureau). Omitted fields take the platform defaults
/// (ε 1, δ 10⁻⁶, k 10, one group and one row per unit, free).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveTemplate {
    pub epsilon: Option<f64>,
    pub delta: Option<f64>,
    pub k: Option<u32>,
    pub max_groups: Option<u32>,
    pub max_rows: Option<u32>,
    pub price_per_run_fen: Option<i64>,
    pub memory_mib: Option<u32>,
    pub wall_seconds: Option<u32>,
    pub wasm_fuel_per_unit: Option<u64>,
    pub wasm_memory_mib: Option<u32>,
}

/// A reason given with a rejection, revocation or recall.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub reason: String,
}

/// A template and where it stands.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateView {
    pub id: String,
    pub operator: String,
    /// `submitted`, `approved`, `rejected` or `revoked`.
    pub state: String,
    pub spec: TemplateSpec,
    pub approval: Option<ApprovalTerms>,
    pub reasons: Option<String>,
    pub submitted_at: String,
    pub decided_at: Option<String>,
}

/// `POST /v1/jobs` and `POST /v1/jobs/dry-run`: run an approved template. Only the template's
/// approved ε, δ, k and limits apply; any other field a client sends is ignored.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitJob {
    /// Template id (or a unique prefix of it, or its name).
    pub template: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The grant to run under; may be omitted when exactly one grant fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

/// A job and where it stands.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub template_id: String,
    pub grant_id: Option<String>,
    pub operator: String,
    pub params: BTreeMap<String, String>,
    /// `queued`, `running`, `released`, `rejected`, `failed` or `cancelled`.
    pub state: String,
    /// Why it was rejected: every rule that failed.
    #[serde(default)]
    pub violations: Vec<Violation>,
    pub failure: Option<String>,
    pub product_id: Option<String>,
    /// Set when an identical earlier job's product was returned and nothing was spent.
    pub reused_from: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

impl JobView {
    /// Whether the job has ended (it will not change again).
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state.as_str(),
            "released" | "rejected" | "failed" | "cancelled"
        )
    }
}

/// `POST /v1/jobs` answers with the job, queued (202) or, for a replayed idempotency key, as
/// it stands (200, `replayed`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub job: JobView,
    pub replayed: bool,
}

/// `POST /v1/jobs/dry-run`: what a job would do, found without reading any data row.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRun {
    /// Whether the job passes every rule that can be checked before data is read.
    pub passes: bool,
    #[serde(default)]
    pub violations: Vec<Violation>,
    /// The grant it would run under.
    pub grant_id: Option<String>,
    /// Set when an identical earlier job was released: running again returns its product
    /// and costs nothing.
    pub reuses_job: Option<String>,
    /// ε and δ one run spends (0 when it reuses).
    pub epsilon: f64,
    pub delta: f64,
    /// The price of a released run in fen: the template's per-run fee plus the rows fee for
    /// the tables it reads (whole tables: scans are never pruned by values).
    pub price_fen: i64,
    pub rows_scanned: u64,
    /// The grant's budget this month: ε allowed, already spent, and what would remain.
    pub budget_period: String,
    pub epsilon_per_period: f64,
    pub epsilon_spent: f64,
    pub epsilon_remaining_after: f64,
}

/// An authorization of datasets to an operator.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantView {
    pub id: String,
    pub operator: String,
    pub datasets: Vec<String>,
    pub purpose: String,
    pub valid_from: String,
    pub valid_to: String,
    pub epsilon_per_month: f64,
    pub delta_per_month: f64,
    pub disposition: String,
    pub created_at: String,
}

/// `POST /v1/grant-requests` (operator): apply for a grant.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestGrant {
    /// Dataset names or ids.
    pub datasets: Vec<String>,
    pub purpose: String,
    /// `YYYY-MM-DD`, both days included.
    pub valid_from: String,
    pub valid_to: String,
    pub epsilon_per_month: f64,
    pub delta_per_month: f64,
    /// `delete`, `archive` or `return`: what happens to products and keys after the term.
    pub disposition: String,
}

/// `POST /v1/grant-requests/{id}/approve` (bureau); it may lower the budget asked for.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveGrantRequest {
    pub epsilon_per_month: Option<f64>,
}

/// A grant request and where it stands.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantRequestView {
    pub id: String,
    pub operator: String,
    pub request: RequestGrant,
    /// `pending`, `approved` or `rejected`.
    pub state: String,
    pub reasons: Option<String>,
    pub grant_id: Option<String>,
    pub submitted_at: String,
    pub decided_at: Option<String>,
    /// Working days (Monday to Friday) since it was submitted, while pending.
    pub working_days_waiting: u32,
    /// Pending for more than five working days (seed 003, art. 16).
    pub overdue: bool,
}

/// A meter record: what one job used and cost.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterView {
    pub job_id: String,
    pub operator: String,
    pub template_id: String,
    pub end_state: String,
    /// Wall-clock time, CPU time and peak memory of the run: the bureau's view only. They
    /// depend on the data (how long a filter or a mapper took), so an operator's view leaves
    /// them out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// The tables' registered sizes, not what a scan read: they never depend on values.
    pub rows_scanned: u64,
    pub bytes_scanned: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    pub fuel: u64,
    pub micro_epsilon: i64,
    pub pico_delta: i64,
    pub output_rows: u64,
    pub output_bytes: u64,
    pub price_fen: i64,
    pub at: String,
}

/// One file of a product.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductFile {
    pub name: String,
    pub bytes: u64,
    pub blake3: String,
}

/// A released product.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductView {
    pub id: String,
    pub job_id: String,
    pub template_id: String,
    pub operator: String,
    pub rows: u64,
    pub created_at: String,
    /// The manifest and the files it lists; download each from
    /// `GET /v1/products/{id}/files/{name}`.
    pub files: Vec<ProductFile>,
    /// The price while it is offered for sale.
    pub price_fen: Option<i64>,
    pub recalled: bool,
}

/// `POST /v1/products/{id}/listing` (its operator or the bureau): offer it for sale.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListForSale {
    pub price_fen: i64,
}

/// A buyer's purchase of a product.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseView {
    pub id: String,
    pub product_id: String,
    pub buyer: String,
    pub price_fen: i64,
    pub at: String,
    /// False when an earlier purchase of the same product was returned (nothing charged).
    pub new: bool,
}

/// `POST /v1/products/{id}/recall` (bureau) answers with the buyers to tell.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecallView {
    pub product_id: String,
    pub reason: String,
    pub buyers: Vec<String>,
}

/// `POST /v1/settlements` (bureau): settle a closed month.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settle {
    /// `YYYY-MM`, in the bureau's time zone.
    pub period: String,
}
