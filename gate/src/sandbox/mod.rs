//! Isolation for untrusted jobs.
//!
//! An operator's SQL is untrusted code that runs next to raw in-domain data. This module
//! builds the one place where such SQL is parsed, planned and executed: a [`Sandbox`], a
//! DataFusion session that is hardened before the first byte of operator text reaches it.
//!
//! ```text
//!  SandboxBuilder (deny by default) ──► Sandbox ──► plan_query(sql, params) ──► LogicalPlan
//!        │                                  │                                      │
//!        │ only the grant's tables,         │ one read-only query, no DDL/DML/     │ (`analysis`
//!        │ no host file system,             │ COPY/SET/EXPLAIN, no table           │  inspects it)
//!        │ memory pool + time limit         │ functions, named parameters bound    │
//!        ▼                                  ▼                                      ▼
//!                           execute_folded(plan) ──► per-partition folds + ExecStats
//!                           (crate-private: only `release` and `mapping` fold rows)
//! ```
//!
//! Read [`SandboxBuilder`] first (what is allowed and why), then [`Sandbox::plan_query`] (the
//! statement policy). Execution is crate-private: outside this crate a `Sandbox` plans and
//! describes, and never hands out a row, a batch or its DataFusion session.
//!
//! An operator's WASM module is untrusted code too: [`wasm`] runs it as a mapper, one fresh
//! instance per privacy unit, with no way out but its output bytes. The host is public (the
//! domain checks uploaded modules with it, and a benchmark times it); it maps only input its
//! caller already holds. The stage that feeds it in-domain rows, `mapping::map_units`, is
//! crate-private.
//!
//! This module never interprets query *results*: deciding what may leave the domain is the
//! job of `analysis` and `release`. Everything computed here is still inside the domain.

pub(crate) mod error;
pub mod functions;
pub mod object_storage;
mod params;
mod pool;
mod registry;
mod session;
pub mod wasm;

pub use session::*;

#[cfg(test)]
mod tests {
    mod hardening;
    mod wasm_host;
}
