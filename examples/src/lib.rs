//! Real Veil jobs (SQL templates, policies) and benchmark programs live beside this file; see
//! `bench_dp_aggregate.rs`.

use veil_runtime::grants::{self, Disposition, GrantRequest};
use veil_runtime::store::Store;
use veil_runtime::templates::{self, ApprovalRequest, ParamSpec, ParamType, TemplateSpec};

/// The operator the DP aggregate benchmarks run as.
pub const BENCH_OPERATOR: &str = "bench-operator";

/// For the DP aggregate benchmarks (`bench_dp_aggregate`, `bench_cluster`), in `store` where
/// `social_insurance` is registered: [`BENCH_OPERATOR`]'s grant on it (for `purpose`) and the
/// template `sql`, with one integer parameter `since`, approved at ε = 1, k = 10, one group and
/// three rows per person, with `memory_mib`. Returns the template's id.
pub fn grant_and_approve(
    store: &mut Store,
    purpose: &str,
    sql: &str,
    memory_mib: u32,
) -> veil_runtime::Result<String> {
    let today = veil_runtime::clock::today();
    grants::create(
        store,
        GrantRequest {
            operator: BENCH_OPERATOR.into(),
            datasets: vec!["social_insurance".into()],
            purpose: purpose.into(),
            valid_from: today - chrono::Days::new(1),
            valid_to: today + chrono::Days::new(300),
            epsilon_per_month: 100.0,
            delta_per_month: 0.5,
            disposition: Disposition::Archive,
            ownership: grants::Ownership::Operator,
        },
    )?;
    let template = templates::submit(
        store,
        BENCH_OPERATOR,
        TemplateSpec {
            name: "bench".into(),
            sql: sql.into(),
            params: vec![ParamSpec {
                name: "since".into(),
                kind: ParamType::Integer,
                allowed: None,
            }],
            wasm: None,
            versions: Default::default(),
        },
    )?;
    templates::approve(
        store,
        template.id.as_str(),
        ApprovalRequest {
            epsilon: 1.0,
            delta: 1e-6,
            k: 10,
            max_groups: 1,
            max_rows: 3,
            price_per_run_fen: 0,
            memory_mib,
            ..ApprovalRequest::default()
        },
    )?;
    Ok(template.id.to_string())
}
