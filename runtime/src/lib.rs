//! Veil's domain: everything between "the bureau registers a dataset" and "a buyer verifies a
//! product", on one machine. Every front end — the `veil` command line, `veil serve`'s HTTP
//! API — calls this library; what may leave the domain is decided by the kernel, `veil_gate`,
//! which this library calls and never bypasses (it holds no row of in-domain data).
//!
//! ```text
//! catalog ──► grants ──► templates (submit → static checks → approve, BLAKE3-pinned)
//!                              │
//!                  jobs::run ──┤ check grant & template, bind parameters
//!                              ├─ veil_gate::job::prepare_sql / check_wasm (statement policy,
//!                              │                                            analysis, ε plan)
//!                              ├─ budget     (the kernel's rule over budget_spend ─► Reserved)
//!                              ├─ veil_gate::job::run(Reserved, …) ─► Released (noisy rows)
//!                              ├─ products   (Parquet + CSV + signed manifest of a Released)
//!                              └─ metering, audit  (one meter record per job; keyed hash chain,
//!                                                   signed checkpoints in audit.checkpoints)
//!                                      └─ ledger → settlement (fen, double entry)
//! market (listing, purchase, download, recall) for buyers.
//! ```
//!
//! Read in this order: [`store::Store`] (where state lives, and [`store::WriteTx`], the only
//! way to change it), [`catalog`] (datasets and their policies), [`templates`], [`jobs::run`]
//! (the whole flow of one job), then [`audit`]; for money, [`market`], [`ledger`] and
//! [`settlement`]; for clean ends after a crash or a full disk, [`sweep`] and [`space`].

pub mod assets;
pub mod audit;
pub mod budget;
pub mod catalog;
pub mod cluster;

pub mod compile;
pub mod contribution;
pub mod corrections;
mod csv_input;
pub mod disputes;
pub mod error;
pub mod files;
pub mod freezes;
pub mod grants;
pub mod jobs;
pub mod keys;
pub mod ledger;
pub mod market;
pub mod metering;
pub mod prices;
pub mod principals;
pub mod products;
pub mod quality;
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
