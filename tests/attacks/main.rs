//! Veil attacked as a hostile operator would attack it (issue 9), in one test binary:
//!
//! - `canary`: a domain whose data holds marked values that must never leave it, and the
//!   scanner that looks for them;
//! - `corpus`: the data-driven attack corpus `tests/attacks/*.test`, run through `veil serve`
//!   and its HTTP API, with the canary scan over everything an operator, buyer or log reader
//!   sees;
//! - `kill`: a job's child process killed (or dying) under `veil serve` ends that job only; a
//!   killed server leaves no job child running; no query, however deep, kills the server;
//! - `mapper`: a WASM mapper that logs its raw input leaks nothing;
//! - `neighbours`: every case the corpus releases, on the canary domain with and without one
//!   canary person, differs only as the noise allows;
//! - `pruning`: the meter does not depend on which row groups a filter selects.
//!
//! `cargo test -p veil-runtime --test attacks` runs it all (about a minute and a half on two
//! cores).

#[path = "../all/neighbouring.rs"]
mod neighbouring;
#[path = "../all/support.rs"]
mod support;

mod canary;
mod corpus;
mod kill;
mod mapper;
mod neighbours;
mod pruning;
mod server;
