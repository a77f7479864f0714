//! Isolation for untrusted jobs.
//!
//! An operator's SQL is untrusted code that runs next to raw in-domain data. This crate builds
//! the one place where such SQL is parsed, planned and executed: a [`Sandbox`], a DataFusion
//! session that is hardened before the first byte of operator text reaches it.
//!
//! ```text
//!  SandboxBuilder (deny by default) ──► Sandbox ──► plan_query(sql, params) ──► LogicalPlan
//!        │                                  │                                      │
//!        │ only the grant's tables,         │ one read-only query, no DDL/DML/     │ (the gate in
//!        │ no host file system,             │ COPY/SET/EXPLAIN, no table           │  veil-runtime
//!        │ memory pool + time limit         │ functions, named parameters bound    │  inspects it)
//!        ▼                                  ▼                                      ▼
//!                                    execute(plan) ──► batches + ExecStats (rows/bytes scanned,
//!                                                       CPU, peak memory) — never leave the domain
//! ```
//!
//! Read [`SandboxBuilder`] first (what is allowed and why), then [`Sandbox::plan_query`] (the
//! statement policy) and [`Sandbox::execute`] (limits and metrics).
//!
//! An operator's WASM module is untrusted code too: [`wasm`] runs it as a mapper, one fresh
//! instance per privacy unit, with no way out but its output bytes.
//!
//! This crate never interprets query *results*: deciding what may leave the domain is the job of
//! `veil_runtime::gate`. Everything returned here is still inside the domain.

#[cfg(feature = "sql")]
mod error;
#[cfg(feature = "sql")]
pub mod functions;
#[cfg(feature = "sql")]
mod params;
#[cfg(feature = "sql")]
mod pool;
#[cfg(feature = "sql")]
mod registry;
#[cfg(feature = "sql")]
mod session;
pub mod wasm;

#[cfg(feature = "sql")]
pub use session::*;
