//! The Veil SDK: the wire and file types shared by the server, clients, offline verifiers and
//! WASM mappers. It depends on nothing from the domain (`veil-runtime`, DataFusion), so a buyer
//! can verify a product with this crate alone.
//!
//! Read [`manifest`] first: the signed manifest of a released data product and
//! [`manifest::verify_product_dir`], which checks a download offline. [`columnar`] is the
//! payload format of WASM jobs, and `guest` (feature `guest`) turns a plain Rust function
//! into a mapper module. [`api`] holds the HTTP API's bodies and `client::Client` (feature
//! `client`) speaks it; `cargo doc -p veil-sdk --all-features` documents those two as well.

// Every public item is part of the contract with clients, verifiers and mapper authors, who
// read this crate's docs rather than the server's code; CI turns the warning into an error.

#[cfg(feature = "manifest")]
pub mod api;
#[cfg(feature = "client")]
pub mod client;
pub mod columnar;
#[cfg(feature = "guest")]
// The one module with unsafe code: it reads the host's input through a raw pointer.
#[allow(unsafe_code)]
pub mod guest;
#[cfg(feature = "manifest")]
pub mod manifest;
#[cfg(feature = "manifest")]
pub mod template;
