//! Veil's privacy kernel: the only door out of the domain.
//!
//! Everything that touches in-domain rows, and everything that decides what may leave, lives
//! in this crate and nowhere else. An auditor reviewing Veil's trusted code reads this crate.
//!
//! ```text
//!  operator SQL ──► sandbox::Sandbox::plan_query ──► LogicalPlan
//!                    (hardened DataFusion, deny by default)  │
//!                                                            ▼
//!                    analysis::analyse (statement policy, allow-list, shape) ──► Analysis
//!                                                            │
//!                    release::plan_noise (the ε plan, checked by OpenDP) ──► NoisePlan
//!                                                            │
//!  domain's book ──► budget::reserve (the budget rule) ──► Reserved   ◄── only way to get one
//!                                                            │
//!                    job::run(Reserved, …) ──► child process `veil __job-exec` (rlimits):
//!                       sandbox scan ─► mapping (WASM) ─► bounding ─► k / τ on noisy counts
//!                       ─► OpenDP noise ─► assembly
//!                                                            │
//!                                                            ▼
//!                    Released (private fields) ──► the domain writes and signs the product
//! ```
//!
//! Read in this order: [`sandbox::SandboxBuilder`] (what a job's SQL may reach), [`analysis`]
//! and [`allow`] (the statement policy), [`release`] (bounding, selection, noise, assembly),
//! [`budget`] (the rule and the [`Reserved`] token), then [`job`] (the child process that puts
//! them together).
//!
//! ## What this crate promises, and how the compiler holds it
//!
//! - **No public function returns in-domain rows or true totals.** The sandbox's execution,
//!   the WASM mapping stage and the bounding fold are crate-private. The only rows that
//!   leave are a [`Released`] body's, which holds noisy aggregates of groups chosen on noisy
//!   counts.
//! - **A release needs a reservation.** [`job::run`] takes a [`Reserved`], which only
//!   [`budget::reserve`] creates, after the budget rule passed and the caller's ledger
//!   recorded the spend.
//! - **An [`Analysis`] comes only from [`analysis::analyse`]**; its fields are private.
//! - **A [`Released`] body comes only from a job's child process**; its fields are private,
//!   and it is the only thing a product writer can sign.
//!
//! Each of these is shown by a doc test that must fail to compile:
//!
//! ```compile_fail
//! // The sandbox does not hand out raw batches…
//! async fn leak(sandbox: &veil_gate::sandbox::Sandbox, plan: datafusion::logical_expr::LogicalPlan) {
//!     let _ = sandbox.execute(plan).await;
//! }
//! ```
//! ```compile_fail
//! // …nor its DataFusion session (any SQL, no statement policy)…
//! fn leak(sandbox: &veil_gate::sandbox::Sandbox) {
//!     let _ = sandbox.context();
//! }
//! ```
//! ```compile_fail
//! // …nor a fold over the rows it scans.
//! async fn leak(sandbox: &veil_gate::sandbox::Sandbox, plan: datafusion::logical_expr::LogicalPlan) {
//!     let _ = sandbox.execute_folded(plan, |_| (), |_: &mut (), _| Ok(())).await;
//! }
//! ```
//! ```compile_fail
//! // The mapping stage's raw output is not reachable.
//! let _ = veil_gate::mapping::map_units;
//! ```
//! ```compile_fail
//! // The bounding fold's true per-group totals are not reachable.
//! let _ = veil_gate::bounding::finish;
//! ```
//! ```compile_fail
//! // An Analysis cannot be built by hand, so `analyse` cannot be skipped.
//! use datafusion::common::Column;
//! use datafusion::logical_expr::LogicalPlan;
//! fn forge(input: LogicalPlan, unit: Column) -> veil_gate::Analysis {
//!     veil_gate::Analysis { input, unit, unit_kind: String::new(), groups: Vec::new(),
//!         measures: Vec::new(), output: Vec::new(), tables: Vec::new() }
//! }
//! ```
//! ```compile_fail
//! // A release cannot be run without a reservation, and a reservation cannot be forged.
//! let _ = veil_gate::Reserved { job_id: String::new(), micro_epsilon: 1, pico_delta: 1 };
//! ```
//! ```compile_fail
//! // The gate's release function is not public: only a job's child process calls it.
//! let _ = veil_gate::release::release;
//! ```
//! ```compile_fail
//! // A Released body cannot be built from arbitrary rows.
//! fn forge(batch: datafusion::arrow::record_batch::RecordBatch) -> veil_gate::Released {
//!     veil_gate::Released { batch, columns: Vec::new(), noise_scales: Vec::new(),
//!         groups_released: 0, groups_suppressed: None, threshold: 0.0,
//!         stats: Default::default() }
//! }
//! ```

pub mod accuracy;
pub mod allow;
pub mod analysis;
pub(crate) mod bounding;
pub mod budget;
pub mod clock;
pub mod cluster;
pub mod disclosure;
pub mod ids;
pub mod job;
pub mod mapping;
pub mod noise;
pub mod policy;
pub mod release;
pub mod rules;
pub mod sandbox;
pub mod terms;

pub use analysis::{Analysis, analyse};
pub use budget::Reserved;
pub use release::{
    FAILED_MESSAGE, NoisePlan, ReleaseConfig, ReleaseFailure, Released, check_memory, plan_noise,
};
pub use rules::{Refusal, Rule};
pub use terms::Terms;

#[cfg(test)]
mod tests {
    mod accuracy;
    mod expressions;
}
