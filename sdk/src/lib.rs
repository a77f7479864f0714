//! The Veil SDK: the wire and file types shared by the server, clients and offline
//! verifiers. It depends on nothing from the domain (`veil-runtime`, DataFusion), so a buyer
//! can verify a product with this crate alone.
//!
//! Read [`manifest`] first: the signed manifest of a released data product and
//! [`manifest::verify_product_dir`], which checks a download offline. More comes later (the
//! HTTP wire types, the async client, WASM guest helpers).

pub mod manifest;
