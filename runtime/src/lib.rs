//! Veil's domain: everything between "the bureau registers a dataset" and "a buyer verifies a
//! product", on one machine.
//!
//! ```text
//! catalog ──► grants ──► templates (submit → approve, BLAKE3-pinned)
//!                              │
//!                  jobs::run ──┤ check grant & template, bind parameters
//!                              ├─ veil_sandbox: hardened DataFusion plans the SQL
//!                              ├─ gate::analysis   (statement policy, shape)
//!                              ├─ budget           (reserve ε atomically, never refund)
//!                              ├─ gate::release    (bounding, k, threshold, OpenDP noise)
//!                              ├─ products         (Parquet + CSV + signed manifest)
//!                              └─ metering, audit  (one meter record per job; keyed hash chain,
//!                                                   signed checkpoints in audit.checkpoints)
//!                                      └─ ledger → settlement (fen, double entry)
//! api (veil serve): bearer key → role → ownership → the functions above; jobs::enqueue and a
//! bounded worker pool; market (listing, purchase, download, recall) for buyers.
//! ```
//!
//! Read in this order: [`store::Store`] (where state lives and how it changes), [`catalog`]
//! (datasets and their policies), [`templates`], [`jobs::run`] (the whole flow of one job),
//! [`gate`] (the only door out), then [`audit`]; for the service, [`api`], then [`market`],
//! [`ledger`] and [`settlement`]; for clean ends after a crash or a full disk, [`sweep`] and
//! [`space`].

pub mod audit;
pub mod budget;
pub mod catalog;

pub mod compile;
pub mod error;
pub mod files;
pub mod grants;
pub mod jobs;
pub mod keys;
pub mod ledger;
pub mod market;
pub mod metering;
pub mod prices;
pub mod principals;
pub mod products;
pub mod settlement;
pub mod space;
pub mod store;
pub mod sweep;
pub mod templates;

pub use error::{Error, Result};
/// The one clock (tests pin it); the kernel's, so both sides read the same time.
pub use veil_gate::clock;
/// Identifiers are the kernel's, so a wrong id type is a compile error on both sides.
pub use veil_gate::ids;
