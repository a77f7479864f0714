//! The HTTP API's request and response bodies (JSON), shared by the server (`veil serve`),
//! `veil_sdk::client::Client` (feature `client`) and anyone who writes their own client.
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

use crate::manifest::{ColumnAccuracy, SignedManifest, SourceDataset};
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
    /// The data bureau: registers principals, approves templates and grants, settles money,
    /// and sees every object.
    Bureau,
    /// A data provider: owns datasets and sees who used them and what they earned.
    Provider,
    /// A data operator: submits templates, runs jobs under its grants and sells the products.
    Operator,
    /// A buyer of released products: sees the offers and downloads what it bought.
    Buyer,
}

impl Role {
    /// The role's name as the API writes it: `bureau`, `provider`, `operator` or `buyer`.
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
    /// Whose fault the error is; it fixes the HTTP status (see [`ErrorKind::status`]).
    pub kind: ErrorKind,
    /// What went wrong and what to change, in words. It never quotes a value from inside the
    /// domain (no data row, no true count).
    pub message: String,
    /// The rules that refused the request (kind `refused` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}

/// `GET /v1/health`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` whenever the server answers.
    pub status: String,
    /// The server's version (its crate version, e.g. `0.1.0`).
    pub version: String,
}

/// `GET /v1/me`: who the key belongs to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    /// The principal's id (`pr-…`), fixed when `veil principal add` created it.
    pub id: String,
    /// What the key may do; each route names the roles it admits.
    pub role: Role,
    /// The principal's name: how other views (a job's `operator`, a purchase's `buyer`) name
    /// it.
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
    /// The dataset's id (`ds-…`); a grant lists its datasets by these ids.
    pub id: String,
    /// The name a template's SQL reads it by, as a table.
    pub name: String,
    /// The organisation that provided the data, as its policy states it.
    pub provider: String,
    /// The data classification its policy states: 1 public, 2 internal, 3 sensitive, 4 core.
    pub classification_level: u8,
    /// The acquisition date, `YYYY-MM-DD`, which every product made from it prints.
    pub acquired_on: String,
    /// The column naming whom each row is about; the gate bounds each such unit's
    /// contribution to a release.
    pub privacy_unit: String,
    /// How many rows were registered. Prices and meter records use this registered size,
    /// which never depends on the values inside.
    pub rows: u64,
    /// When the dataset was registered, RFC 3339 in UTC.
    pub registered_at: String,
}

/// `GET /v1/datasets/{id}`: a dataset's schema as its policy publishes it — what a template's
/// SQL may read and how the gate treats each column. For the bureau, the dataset's provider,
/// and an operator holding a grant on it in its term. It holds no value from the data: bounds
/// and key sets are the policy's, the types come from the stored file's footer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSchema {
    /// The dataset's id (`ds-…`).
    pub id: String,
    /// The name a template's SQL reads it by, as a table.
    pub name: String,
    /// The organisation that provided the data, as its policy states it.
    pub provider: String,
    /// The data classification its policy states: 1 public, 2 internal, 3 sensitive, 4 core.
    pub classification_level: u8,
    /// Its sharing attribute: `unconditional`, `conditional` or `none` (never granted).
    pub sharing: String,
    /// The acquisition date, `YYYY-MM-DD`, which every product made from it prints.
    pub acquired_on: String,
    /// The column naming whom each row is about: the gate bounds each unit's contribution,
    /// and SQL may name it only in `COUNT(DISTINCT …)` and in a join on the unit.
    pub privacy_unit: String,
    /// What a unit is (e.g. `person`); joins are allowed only between units of one kind.
    pub unit_kind: String,
    /// The dataset's own ε per calendar month across all grants, when its policy sets one.
    pub epsilon_per_month: Option<f64>,
    /// How many rows were registered (what the meter and the price count).
    pub rows: u64,
    /// When the dataset was registered, RFC 3339 in UTC.
    pub registered_at: String,
    /// Every column, in the file's order.
    pub columns: Vec<DatasetColumn>,
}

/// One column of a dataset, as its policy publishes it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetColumn {
    /// The column's name, as SQL reads it.
    pub name: String,
    /// Its type in the stored Parquet file, as DataFusion names it (`Int64`, `Float64`,
    /// `Utf8`, `Date32`, …).
    #[serde(rename = "type")]
    pub data_type: String,
    /// `identifier` (never output, grouped by or filtered on), `quasi` (a group key, under
    /// k-anonymity), `sensitive` (only inside noisy aggregates, with bounds) or `public`.
    pub role: String,
    /// `[lo, hi]`: values are clamped into it before any sum or average.
    pub bounds: Option<Vec<f64>>,
    /// The public key set: the group keys anyone may know exist; a product grouped by this
    /// column has a row for every key.
    pub keys: Option<Vec<String>>,
}

/// `POST /v1/modules` answers with the stored module's digest.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleStored {
    /// The module's BLAKE3 digest, 64 hex digits: a WASM template's `module_blake3` names the
    /// module by it.
    pub blake3: String,
    /// The module's size in bytes.
    pub bytes: u64,
}

/// `POST /v1/templates`: submit a template (its WASM module, if any, uploaded first).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitTemplate {
    /// The template as the operator wrote it; its canonical bytes fix the template's id (see
    /// [`TemplateSpec::template_id`]).
    pub spec: TemplateSpec,
}

/// What the bureau pinned when it approved a template.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalTerms {
    /// ε one run spends from its grant's monthly budget.
    pub epsilon: f64,
    /// δ one run spends from its grant's monthly budget.
    pub delta: f64,
    /// The k of k-anonymity: the fewest distinct privacy units a released group must have.
    pub k: u32,
    /// The most groups one privacy unit may contribute to; the gate drops the rest.
    pub max_groups: u32,
    /// The most rows one privacy unit may contribute to one group; the gate drops the rest.
    pub max_rows: u32,
    /// The fee for one released run, in fen (the rows fee for the tables read comes on top).
    pub price_per_run_fen: i64,
    /// Memory one run's query may use, in MiB.
    pub memory_mib: u32,
    /// Wall-clock time one run's query may take, in seconds.
    pub wall_seconds: u32,
    /// WASM templates: the fuel one unit's mapper call may burn before it is stopped.
    pub wasm_fuel_per_unit: u64,
    /// WASM templates: the linear memory one unit's mapper instance may grow to, in MiB.
    pub wasm_memory_mib: u32,
    /// The noise its releases draw: `laplace` or `gaussian` (zero-concentrated DP, converted
    /// to `epsilon` at `delta` by OpenDP).
    #[serde(default = "laplace")]
    pub mechanism: String,
}

fn laplace() -> String {
    "laplace".to_string()
}

/// `POST /v1/templates/{id}/approve` (bureau). Omitted fields take the platform defaults
/// (ε 1, δ 10⁻⁶, k 10, one group and one row per unit, free).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveTemplate {
    /// ε one run spends; see [`ApprovalTerms::epsilon`]. Required: the server refuses an
    /// approval without it (the bureau chooses ε on purpose); optional in the type only so
    /// the refusal can name the field.
    pub epsilon: Option<f64>,
    /// δ one run spends; see [`ApprovalTerms::delta`].
    pub delta: Option<f64>,
    /// The fewest distinct units a released group needs; see [`ApprovalTerms::k`].
    pub k: Option<u32>,
    /// Groups one unit may contribute to; see [`ApprovalTerms::max_groups`].
    pub max_groups: Option<u32>,
    /// Rows one unit may contribute to a group; see [`ApprovalTerms::max_rows`].
    pub max_rows: Option<u32>,
    /// The fee per released run, in fen; see [`ApprovalTerms::price_per_run_fen`].
    pub price_per_run_fen: Option<i64>,
    /// Memory one run may use, in MiB; see [`ApprovalTerms::memory_mib`].
    pub memory_mib: Option<u32>,
    /// Wall-clock time one run may take, in seconds; see [`ApprovalTerms::wall_seconds`].
    pub wall_seconds: Option<u32>,
    /// Fuel per unit of a WASM template; see [`ApprovalTerms::wasm_fuel_per_unit`].
    pub wasm_fuel_per_unit: Option<u64>,
    /// Memory per unit of a WASM template, in MiB; see [`ApprovalTerms::wasm_memory_mib`].
    pub wasm_memory_mib: Option<u32>,
    /// `laplace` (the default) or `gaussian`; see [`ApprovalTerms::mechanism`].
    pub mechanism: Option<String>,
}

/// A reason given with a rejection, revocation or recall.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// Why, in words; it is recorded with the decision and shown to the party it concerns.
    pub reason: String,
}

/// A template and where it stands.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateView {
    /// The template's id: the BLAKE3 hash of its spec's canonical bytes, 64 hex digits.
    pub id: String,
    /// The name of the operator that submitted it.
    pub operator: String,
    /// `submitted`, `approved`, `rejected` or `revoked`.
    pub state: String,
    /// The template as submitted.
    pub spec: TemplateSpec,
    /// The terms the bureau pinned, once it approved the template.
    pub approval: Option<ApprovalTerms>,
    /// The bureau's reason for a rejection or revocation.
    pub reasons: Option<String>,
    /// When it was submitted, RFC 3339 in UTC.
    pub submitted_at: String,
    /// When the bureau last decided on it (approved, rejected or revoked), RFC 3339 in UTC.
    pub decided_at: Option<String>,
}

/// `POST /v1/jobs` and `POST /v1/jobs/dry-run`: run an approved template. Only the template's
/// approved ε, δ, k and limits apply; any other field a client sends is ignored.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitJob {
    /// Template id (or a unique prefix of it, or its name).
    pub template: String,
    /// A value for every parameter the template declares, by name, written as text (an
    /// integer parameter as its decimal digits); a JSON number is accepted too, as its text.
    #[serde(default, deserialize_with = "params_as_text")]
    pub params: BTreeMap<String, String>,
    /// The grant to run under; may be omitted when exactly one grant fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

/// Reads template parameters whose values are JSON strings or numbers, each as its text, so
/// that `{"year": 2024}` and `{"year": "2024"}` bind alike (the template's declared type then
/// checks the text).
fn params_as_text<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    /// One parameter's value, as text.
    struct Text(String);

    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = Text;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a parameter value as a string or a number")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
            }
            deserializer.deserialize_any(Visitor)
        }
    }

    let values = BTreeMap::<String, Text>::deserialize(deserializer)?;
    Ok(values.into_iter().map(|(k, Text(v))| (k, v)).collect())
}

/// A job and where it stands.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id (`job-…`).
    pub id: String,
    /// The id of the approved template it runs.
    pub template_id: String,
    /// The grant it ran under, once the run has chosen one.
    pub grant_id: Option<String>,
    /// The name of the operator that submitted it.
    pub operator: String,
    /// The parameter values it was submitted with.
    pub params: BTreeMap<String, String>,
    /// `queued`, `running`, `released`, `rejected`, `failed` or `cancelled`.
    pub state: String,
    /// Why it was rejected: every rule that failed.
    #[serde(default)]
    pub violations: Vec<Violation>,
    /// Why a `failed` job failed, in words the operator may see (the platform's own error
    /// stays in its log). Nothing was released.
    pub failure: Option<String>,
    /// The product a `released` job made (or reused).
    pub product_id: Option<String>,
    /// Set when an identical earlier job's product was returned and nothing was spent.
    pub reused_from: Option<String>,
    /// When it was submitted, RFC 3339 in UTC.
    pub created_at: String,
    /// When it ended, RFC 3339 in UTC.
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
    /// The job as it stands.
    pub job: JobView,
    /// True when the idempotency key had been used before: `job` is that earlier job, and
    /// nothing new was queued.
    pub replayed: bool,
}

/// `POST /v1/jobs/dry-run`: what a job would do, found without reading any data row.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRun {
    /// Whether the job passes every rule that can be checked before data is read.
    pub passes: bool,
    /// Every rule the job breaks, empty when it passes.
    #[serde(default)]
    pub violations: Vec<Violation>,
    /// The grant it would run under.
    pub grant_id: Option<String>,
    /// Set when an identical earlier job was released: running again returns its product
    /// and costs nothing.
    pub reuses_job: Option<String>,
    /// ε one run spends (0 when it reuses).
    pub epsilon: f64,
    /// δ one run spends (0 when it reuses).
    pub delta: f64,
    /// The price of a released run in fen: the template's per-run fee plus the rows fee for
    /// the tables it reads (whole tables: scans are never pruned by values).
    pub price_fen: i64,
    /// Rows of the tables it reads, as registered (what the rows fee and the meter count).
    pub rows_scanned: u64,
    /// The budget period the run would spend from: the calendar month, `YYYY-MM`, in the
    /// bureau's time zone (UTC+8).
    pub budget_period: String,
    /// ε the grant allows in that period.
    pub epsilon_per_period: f64,
    /// ε the grant's jobs have already reserved in that period (a reservation is never
    /// refunded, whatever the job's end).
    pub epsilon_spent: f64,
    /// ε that would remain in that period after this run.
    pub epsilon_remaining_after: f64,
    /// What each output column would be accurate to at 95 % confidence, from the approved
    /// terms alone (no data read), with a warning where it is poor.
    #[serde(default)]
    pub accuracy: Vec<ColumnAccuracy>,
    /// What else the operator should know before spending ε (e.g. a grouping that puts one
    /// person in more groups than the approval keeps, so totals are truncated).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `POST /v1/templates/{id}/preview` (bureau): what approving a template with given terms
/// would give, before approving it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Preview {
    /// Each output column's error at 95 % confidence under those terms, with a warning where
    /// it is poor.
    pub accuracy: Vec<ColumnAccuracy>,
    /// Other warnings, e.g. a grouping that lets one person fall in more groups than
    /// `max_groups`, with the value the registration report supports.
    pub warnings: Vec<String>,
}

/// An authorization of datasets to an operator.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantView {
    /// The grant's id (`gr-…`), which a job may name to run under it.
    pub id: String,
    /// The name of the operator it authorizes.
    pub operator: String,
    /// The ids of the datasets it covers.
    pub datasets: Vec<String>,
    /// What the operator may use the data for; every product made under it states this.
    pub purpose: String,
    /// The first day jobs may run under it, `YYYY-MM-DD`.
    pub valid_from: String,
    /// The last day jobs may run under it, `YYYY-MM-DD` (included).
    pub valid_to: String,
    /// ε the jobs under it may spend in one calendar month (in the bureau's time zone, UTC+8),
    /// all together.
    pub epsilon_per_month: f64,
    /// δ the jobs under it may spend in one calendar month, all together.
    pub delta_per_month: f64,
    /// `destroy`, `archive` or `return`: what happens to its products after the term.
    pub disposition: String,
    /// When the bureau granted it, RFC 3339 in UTC.
    pub created_at: String,
    /// Who owns the products made under it: `operator`, `bureau` or `shared`.
    #[serde(default)]
    pub ownership: String,
    /// When its disposition ran after the term (it runs once), RFC 3339 in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposed_at: Option<String>,
}

/// `POST /v1/grant-requests` (operator): apply for a grant.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestGrant {
    /// Dataset names or ids.
    pub datasets: Vec<String>,
    /// What the data will be used for; the bureau judges the request by it.
    pub purpose: String,
    /// The first day of the term, `YYYY-MM-DD`.
    pub valid_from: String,
    /// The last day of the term, `YYYY-MM-DD` (included).
    pub valid_to: String,
    /// ε asked for per calendar month. It must be positive: a grant of no ε runs no job.
    pub epsilon_per_month: f64,
    /// δ asked for per calendar month, in [0, 1). A grant of δ 0 runs only templates the
    /// bureau approved with δ 0, and the default approval has δ 10⁻⁶.
    pub delta_per_month: f64,
    /// `destroy`, `archive` or `return`: what happens to products and keys after the term.
    pub disposition: String,
    /// Who owns the products made under the grant: `operator` (the default), `bureau` or
    /// `shared`; printed in every product's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<String>,
}

/// `POST /v1/grant-requests/{id}/approve` (bureau); it may lower the budget asked for.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveGrantRequest {
    /// The ε per month granted, at most what was asked for; omitted, the grant gets what was
    /// asked for.
    pub epsilon_per_month: Option<f64>,
}

/// A grant request and where it stands.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantRequestView {
    /// The request's id (`greq-…`).
    pub id: String,
    /// The name of the operator that applied.
    pub operator: String,
    /// What was asked for, as submitted.
    pub request: RequestGrant,
    /// `pending`, `approved` or `rejected`.
    pub state: String,
    /// The bureau's reason for a rejection.
    pub reasons: Option<String>,
    /// The grant an approval created.
    pub grant_id: Option<String>,
    /// When it was submitted, RFC 3339 in UTC.
    pub submitted_at: String,
    /// When the bureau decided, RFC 3339 in UTC.
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
    /// The job metered.
    pub job_id: String,
    /// The name of the operator that ran it.
    pub operator: String,
    /// The template it ran.
    pub template_id: String,
    /// How the job ended: `released`, `rejected`, `failed` or `cancelled`.
    pub end_state: String,
    /// Wall-clock time, CPU time and peak memory of the run: the bureau's view only. They
    /// depend on the data (how long a filter or a mapper took), so an operator's view leaves
    /// them out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<u64>,
    /// CPU time of the run, in milliseconds (the bureau's view only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// The tables' registered sizes, not what a scan read: they never depend on values.
    pub rows_scanned: u64,
    /// The tables' registered sizes in bytes, like `rows_scanned`.
    pub bytes_scanned: u64,
    /// Peak memory of the run, in bytes (the bureau's view only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// WASM jobs: the fuel the job was allowed (fuel per unit times the rows its input read),
    /// which depends on the tables only; 0 for SQL jobs.
    pub fuel: u64,
    /// ε spent, in millionths (1 000 000 is ε = 1).
    pub micro_epsilon: i64,
    /// δ spent, in trillionths (10¹² is δ = 1).
    pub pico_delta: i64,
    /// Rows in the released product (0 unless released).
    pub output_rows: u64,
    /// Bytes of the released product's files (0 unless released).
    pub output_bytes: u64,
    /// What the run was charged, in fen (0 unless released).
    pub price_fen: i64,
    /// When the record was written, RFC 3339 in UTC.
    pub at: String,
}

/// One file of a product.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductFile {
    /// The file's name inside the product, e.g. `result.csv` or `manifest.json`.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its BLAKE3 digest, 64 hex digits; empty for `manifest.json`, which is checked by its
    /// signature instead (see [`crate::manifest::verify_product_dir`]).
    pub blake3: String,
}

/// A released product.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductView {
    /// The product's id (`prod-…`).
    pub id: String,
    /// The job that released it.
    pub job_id: String,
    /// The template that job ran.
    pub template_id: String,
    /// The name of the operator that owns it.
    pub operator: String,
    /// Rows in the released result (the same in every result file).
    pub rows: u64,
    /// When it was released, RFC 3339 in UTC.
    pub created_at: String,
    /// The manifest and the files it lists; download each from
    /// `GET /v1/products/{id}/files/{name}`.
    pub files: Vec<ProductFile>,
    /// The price while it is offered for sale.
    pub price_fen: Option<i64>,
    /// True once the bureau recalled it: it can no longer be listed, bought or downloaded.
    pub recalled: bool,
}

/// `GET /v1/offers/{id}`: what anyone who may buy reads about a product on offer before
/// buying it. Every figure is taken from the product's signed manifest, which comes whole in
/// [`OfferCard::manifest`] so a buyer can check its signature against the platform key
/// ([`crate::manifest::verify_signature`]); the manifest holds no value from inside the
/// domain, only the release's metadata. The result files are not in it: they come with the
/// purchase. A product that is not offered (never listed, or recalled) has no card.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferCard {
    /// The product's id (`prod-…`).
    pub product_id: String,
    /// What a buyer pays, in fen.
    pub price_fen: i64,
    /// The name of the operator that made it.
    pub operator: String,
    /// The template the job ran (BLAKE3 of its spec).
    pub template_id: String,
    /// The template's name, as its operator gave it.
    pub template_name: String,
    /// The purpose of the grant the job ran under (a template has no purpose of its own).
    pub purpose: String,
    /// When it was released, RFC 3339 in UTC.
    pub released_at: String,
    /// Rows in the result.
    pub rows: u64,
    /// The ε the release spent, per privacy unit.
    pub epsilon: f64,
    /// The δ the release spent.
    pub delta: f64,
    /// The k of k-anonymity: distinct privacy units a released group needed.
    pub k: u32,
    /// The noise mechanism, e.g. `laplace (OpenDP make_laplace, discrete on integers)`.
    pub mechanism: String,
    /// The result's columns, in order.
    pub columns: Vec<OfferColumn>,
    /// Every dataset the product was computed from, with its provider and acquisition date.
    pub sources: Vec<SourceDataset>,
    /// The product's `manifest.json`, exactly as the platform signed it.
    pub manifest: SignedManifest,
}

/// One column of an offered product's result.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferColumn {
    /// The column's name in the result files.
    pub name: String,
    /// What it is, as the manifest states it: `group key`, or a noisy measure and when it
    /// is NULL.
    pub kind: String,
    /// Its type in `result.parquet`, as Arrow names it (`Int64`, `Float64`, `Utf8`, …).
    #[serde(rename = "type")]
    pub data_type: String,
}

/// `POST /v1/products/{id}/listing` (its operator or the bureau): offer it for sale.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListForSale {
    /// The price a buyer pays, in fen.
    pub price_fen: i64,
}

/// A buyer's purchase of a product.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseView {
    /// The purchase's id (`pur-…`).
    pub id: String,
    /// The product bought.
    pub product_id: String,
    /// The name of the buyer.
    pub buyer: String,
    /// What the buyer was charged, in fen.
    pub price_fen: i64,
    /// When it was bought, RFC 3339 in UTC.
    pub at: String,
    /// False when an earlier purchase of the same product was returned (nothing charged).
    pub new: bool,
    /// Set when the bureau recalled the product after it was bought: it can no longer be
    /// downloaded, and the buyer should stop using it.
    #[serde(default)]
    pub recalled: Option<RecallNoticeView>,
    /// Set when the product was made from a version of a dataset that an accepted correction
    /// request has since corrected: a newer product reads the corrected data.
    #[serde(default)]
    pub superseded: bool,
}

/// `POST /v1/corrections` (operator, buyer): report an error in a dataset, or in a product
/// made from one. Text only: no attachment is accepted.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCorrection {
    /// The dataset (name or id) the error is in; for a product, which of its sources (needed
    /// only when it has several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// The product the error shows in (one the operator made or the buyer bought).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// What is wrong and where, in words (at most 2000 characters; no data values needed).
    pub text: String,
}

/// `POST /v1/corrections/{id}/answer` (the dataset's provider, or the bureau).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerCorrection {
    /// Accept: the dataset version that corrects the error (registered after the request).
    /// Leave out to reject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrected_in_version: Option<u32>,
    /// The answer, in words: what was corrected, or why the data stands.
    pub reason: String,
}

/// Why and when the bureau recalled a product a buyer holds.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecallNoticeView {
    /// The bureau's reason, as it gave it.
    pub reason: String,
    /// When it was recalled, RFC 3339 in UTC.
    pub at: String,
}

/// `POST /v1/products/{id}/recall` (bureau) answers with the buyers to tell.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecallView {
    /// The product recalled.
    pub product_id: String,
    /// The bureau's reason, as given.
    pub reason: String,
    /// The names of the buyers who bought it and must be told.
    pub buyers: Vec<String>,
}

/// `POST /v1/disputes` (buyer): disputes one of the caller's own purchases.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenDispute {
    /// The purchase disputed: its purchase id (`pur-…`) or the product id bought.
    pub purchase: String,
    /// What is wrong with it, in words (at most 2,000 bytes; no attachments).
    pub reason: String,
}

/// A buyer's dispute of a purchase and the bureau's decision.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisputeView {
    /// The dispute's id (`dsp-…`).
    pub id: String,
    /// The purchase disputed.
    pub purchase_id: String,
    /// The name of the buyer who opened it.
    pub buyer: String,
    /// The product bought.
    pub product_id: String,
    /// The buyer's reason.
    pub reason: String,
    /// `open`, `upheld` (the sale was refunded) or `rejected`.
    pub state: String,
    /// The bureau's reason for its decision.
    pub decision_reason: Option<String>,
    /// When it was opened, RFC 3339 in UTC.
    pub opened_at: String,
    /// When the bureau decided, RFC 3339 in UTC.
    pub decided_at: Option<String>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// The ledger posting of the refund, once upheld.
    pub refund_posting_id: Option<i64>,
}

/// `POST /v1/freezes` (bureau): the emergency stop.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeRequest {
    /// `platform`, `dataset`, `operator` or `grant`.
    pub scope: String,
    /// The dataset (id or name), operator name or grant id; absent for the platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Why, for the incident log; required.
    pub reason: String,
    /// Refuse downloads of the products it covers as well (default: false).
    #[serde(default)]
    pub block_downloads: bool,
}

/// One freeze, active or lifted: a line of the incident log.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeView {
    /// The freeze's id (`frz-…`), named in every refusal it causes.
    pub id: String,
    /// `platform`, `dataset`, `operator` or `grant`.
    pub scope: String,
    /// The dataset id, operator name or grant id; empty for the platform.
    pub target: String,
    /// The bureau's reason for freezing.
    pub reason: String,
    /// Downloads of the products it covers are refused too.
    pub block_downloads: bool,
    /// The bureau principal who froze.
    pub frozen_by: String,
    /// When (RFC 3339).
    pub frozen_at: String,
    /// True until the bureau lifts it.
    pub active: bool,
    /// The bureau principal who lifted it.
    pub lifted_by: Option<String>,
    /// When it was lifted (RFC 3339).
    pub lifted_at: Option<String>,
    /// The reason given for lifting it.
    pub lift_reason: Option<String>,
    /// Jobs the freeze cancelled when it was imposed (only in the answer to the request that
    /// imposed it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancelled_jobs: Vec<String>,
}

/// `POST /v1/settlements` (bureau): settle a closed month.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settle {
    /// `YYYY-MM`, in the bureau's time zone.
    pub period: String,
}

/// `POST /v1/principals/{name}/rotate` (bureau): give a principal a new API key.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Days the new key works (1 to 3660); omitted: it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u32>,
}

/// A principal's new API key, shown this once: only its hash is stored. The old key stopped
/// working when this one was made; the principal's id, name and role, and so everything it
/// owns, stay.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotatedKey {
    /// The principal's id (`pr-…`), unchanged.
    pub id: String,
    /// Its role, unchanged.
    pub role: Role,
    /// Its name, unchanged.
    pub name: String,
    /// The new key: hand it to the principal over a safe channel.
    pub key: String,
    /// When the new key stops working (RFC 3339, UTC); absent: it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_expires_at: Option<String>,
}

impl std::fmt::Debug for RotatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log through Debug.
        f.debug_struct("RotatedKey")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("key_expires_at", &self.key_expires_at)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client sends as `POST /v1/jobs`: an integer parameter may be a JSON number.
    #[test]
    fn parameters_may_be_json_numbers_or_text() {
        let job: SubmitJob =
            serde_json::from_str(r#"{"template": "t", "params": {"year": 2024, "city": "太原", "rate": 0.5, "floor": -3}}"#)
                .expect("parses");
        assert_eq!(job.params["year"], "2024");
        assert_eq!(job.params["city"], "太原");
        assert_eq!(job.params["rate"], "0.5");
        assert_eq!(job.params["floor"], "-3");
        let error =
            serde_json::from_str::<SubmitJob>(r#"{"template": "t", "params": {"year": [2024]}}"#)
                .expect_err("a list is not a value");
        assert!(
            error
                .to_string()
                .contains("a parameter value as a string or a number"),
            "{error}"
        );
    }
}
