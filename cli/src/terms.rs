//! The terms the bureau sets, as flags: one definition of each set, shared by the local
//! command and its `veil client` twin, so the two cannot drift apart.
//!
//! - [`ApprovalTerms`]: what `veil template approve` and `veil client template approve` pin
//!   on a template (ε and δ per run, k, contribution bounds, price, resource limits). Every
//!   default is the domain's own, [`ApprovalRequest::default`]; ε has none, because the
//!   bureau must choose how much privacy one run spends on purpose.
//! - [`GrantTerms`]: what `veil grant create` gives and `veil client request-grant` asks for
//!   (datasets, purpose, term, ε and δ per month, disposition).
//!
//! Each set converts to the domain's request type (for the local command) and to the SDK's
//! wire type (for the client). The wire type is built from the domain request, field by
//! field, so a term the domain adds is a compile error here rather than a silent default on
//! one path only.

use chrono::NaiveDate;
use clap::Args;

use veil_runtime::grants::{Disposition, GrantRequest, Ownership};
use veil_runtime::jobs::JobRequest;
use veil_runtime::templates::{ApprovalRequest, Mechanism};
use veil_sdk::api::{ApproveTemplate, RequestGrant};

/// δ a grant gives per month unless told otherwise: ten runs at the default δ per run
/// ([`ApprovalRequest::default`]). A grant's δ must cover each run's δ, and an approval
/// requires δ above 0, so a grant with δ 0 would let no job run at all.
pub(crate) const DELTA_PER_MONTH_DEFAULT: f64 = 1e-5;

/// Why the bureau decides against something (a template's rejection or revocation, a
/// product's recall, a grant request's rejection): the one flag every such command takes,
/// locally and through `veil client`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ReasonArg {
    /// Why, in words the other party reads.
    #[arg(long)]
    pub reason: String,
}

/// A rotated key's validity, shared by `veil principal rotate` and its client twin.
#[derive(Debug, Clone, Args)]
pub(crate) struct KeyExpiry {
    /// Days the new key works (1 to 3660); without it the key does not expire.
    #[arg(long)]
    pub expires_in_days: Option<u32>,
}

/// The bureau's approval of a template, as flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct ApprovalTerms {
    /// ε spent by one run (required: the bureau chooses it on purpose).
    #[arg(long)]
    pub epsilon: f64,
    /// δ spent by one run.
    #[arg(long, default_value_t = ApprovalRequest::default().delta)]
    pub delta: f64,
    /// Minimum distinct privacy units behind each released group.
    #[arg(long, default_value_t = ApprovalRequest::default().k)]
    pub k: u32,
    /// Most groups one unit may contribute to.
    #[arg(long, default_value_t = ApprovalRequest::default().max_groups)]
    pub max_groups: u32,
    /// Most rows one unit may contribute to one group.
    #[arg(long, default_value_t = ApprovalRequest::default().max_rows)]
    pub max_rows: u32,
    /// Price of one released run, in fen.
    #[arg(long, default_value_t = ApprovalRequest::default().price_per_run_fen)]
    pub price_fen: i64,
    /// Memory one run may use, in MiB.
    #[arg(long, default_value_t = ApprovalRequest::default().memory_mib)]
    pub memory_mib: u32,
    /// Wall-clock time one run's query may take, in seconds.
    #[arg(long, default_value_t = ApprovalRequest::default().wall_seconds)]
    pub wall_seconds: u32,
    /// WASM templates: fuel one unit's call may burn.
    #[arg(long, default_value_t = ApprovalRequest::default().wasm_fuel_per_unit)]
    pub wasm_fuel_per_unit: u64,
    /// WASM templates: memory one unit's instance may use, in MiB.
    #[arg(long, default_value_t = ApprovalRequest::default().wasm_memory_mib)]
    pub wasm_memory_mib: u32,
    /// The noise: `laplace` (pure ε-DP per draw) or `gaussian` (zero-concentrated DP,
    /// converted to this ε and δ by OpenDP; better when one unit touches many groups).
    #[arg(long, default_value = "laplace", value_parser = ["laplace", "gaussian"])]
    pub mechanism: String,
}

impl ApprovalTerms {
    /// The approval as the domain takes it (`veil_runtime::templates::approve`).
    pub(crate) fn request(&self) -> ApprovalRequest {
        ApprovalRequest {
            epsilon: self.epsilon,
            delta: self.delta,
            k: self.k,
            max_groups: self.max_groups,
            max_rows: self.max_rows,
            price_per_run_fen: self.price_fen,
            memory_mib: self.memory_mib,
            wall_seconds: self.wall_seconds,
            wasm_fuel_per_unit: self.wasm_fuel_per_unit,
            wasm_memory_mib: self.wasm_memory_mib,
            // clap allows only the two names.
            mechanism: Mechanism::parse(&self.mechanism).unwrap_or_default(),
        }
    }

    /// The same approval as an HTTP body. Every term is sent, so the server's fallbacks for
    /// missing fields never decide anything the command line did not.
    pub(crate) fn wire(&self) -> ApproveTemplate {
        let ApprovalRequest {
            epsilon,
            delta,
            k,
            max_groups,
            max_rows,
            price_per_run_fen,
            memory_mib,
            wall_seconds,
            wasm_fuel_per_unit,
            wasm_memory_mib,
            mechanism,
        } = self.request();
        ApproveTemplate {
            epsilon: Some(epsilon),
            delta: Some(delta),
            k: Some(k),
            max_groups: Some(max_groups),
            max_rows: Some(max_rows),
            price_per_run_fen: Some(price_per_run_fen),
            memory_mib: Some(memory_mib),
            wall_seconds: Some(wall_seconds),
            wasm_fuel_per_unit: Some(wasm_fuel_per_unit),
            wasm_memory_mib: Some(wasm_memory_mib),
            mechanism: Some(mechanism.as_str().to_string()),
        }
    }
}

/// A grant's terms, as flags: what the bureau grants, or what an operator asks for. The
/// operator is not among them: the bureau names it locally, and the server takes it from the
/// applicant's key.
#[derive(Debug, Clone, Args)]
pub(crate) struct GrantTerms {
    /// Comma-separated dataset names.
    #[arg(long, value_delimiter = ',')]
    pub datasets: Vec<String>,
    /// What the data may be used for, and nothing else.
    #[arg(long)]
    pub purpose: String,
    /// First day of the term (YYYY-MM-DD).
    #[arg(long, value_parser = parse_date)]
    pub valid_from: NaiveDate,
    /// Last day of the term (YYYY-MM-DD).
    #[arg(long, value_parser = parse_date)]
    pub valid_to: NaiveDate,
    /// ε the grant's jobs may spend per month, all together.
    #[arg(long)]
    pub epsilon_per_month: f64,
    /// δ the grant's jobs may spend per month, all together; it must cover each run's δ.
    #[arg(long, default_value_t = DELTA_PER_MONTH_DEFAULT)]
    pub delta_per_month: f64,
    /// What happens to derived products after the term: destroy, archive or return.
    #[arg(long, value_parser = parse_disposition, default_value = Disposition::Archive.as_str())]
    pub disposition: Disposition,
    /// Who owns the products made under the grant: operator, bureau or shared (printed in
    /// every product's manifest).
    #[arg(long, value_parser = parse_ownership, default_value = Ownership::Operator.as_str())]
    pub ownership: Ownership,
}

impl GrantTerms {
    /// The grant for `operator`, as the domain takes it (`grants::create`, `grants::apply`).
    pub(crate) fn request(self, operator: String) -> GrantRequest {
        GrantRequest {
            operator,
            datasets: self.datasets,
            purpose: self.purpose,
            valid_from: self.valid_from,
            valid_to: self.valid_to,
            epsilon_per_month: self.epsilon_per_month,
            delta_per_month: self.delta_per_month,
            disposition: self.disposition,
            ownership: self.ownership,
        }
    }

    /// The same terms as the body of an operator's grant request.
    pub(crate) fn wire(self) -> RequestGrant {
        // The server names the operator from the applicant's key, so none is sent.
        let GrantRequest {
            operator: _,
            datasets,
            purpose,
            valid_from,
            valid_to,
            epsilon_per_month,
            delta_per_month,
            disposition,
            ownership,
        } = self.request(String::new());
        RequestGrant {
            datasets,
            purpose,
            valid_from: valid_from.to_string(),
            valid_to: valid_to.to_string(),
            epsilon_per_month,
            delta_per_month,
            disposition: disposition.as_str().to_string(),
            ownership: Some(ownership.as_str().to_string()),
        }
    }
}

fn parse_date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| "write the date as YYYY-MM-DD".into())
}

fn parse_ownership(text: &str) -> Result<Ownership, String> {
    Ownership::parse(text).map_err(|e| e.to_string())
}

fn parse_disposition(text: &str) -> Result<Disposition, String> {
    Disposition::parse(text).map_err(|e| e.to_string())
}

/// What a job runs: the same flags locally (`veil job`) and through the server
/// (`veil client job`).
#[derive(Debug, Args, Clone)]
pub(crate) struct JobArgs {
    /// Template id (or a unique prefix of it, or its name).
    #[arg(long)]
    pub template: String,
    /// A parameter value, `name=value`; repeat for several.
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// The grant to run under; may be omitted when exactly one grant fits.
    #[arg(long)]
    pub grant: Option<String>,
}

impl JobArgs {
    /// The request of `operator`.
    pub(crate) fn request(self, operator: String) -> JobRequest {
        JobRequest {
            operator,
            template: self.template,
            params: self.params,
            grant: self.grant,
        }
    }

    /// The same job as an HTTP body.
    pub(crate) fn submit(self) -> veil_sdk::api::SubmitJob {
        veil_sdk::api::SubmitJob {
            template: self.template,
            params: self.params.into_iter().collect(),
            grant: self.grant,
        }
    }
}

pub(crate) fn parse_param(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not name=value")),
    }
}
