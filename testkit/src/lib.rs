//! What the demo and the tests share that is not part of Veil itself: the synthetic provincial
//! data ([`demo_data`]) and the WASM guests — the example mappers the demo runs and the
//! hostile ones the tests throw at the host — built from `examples/wasm/` for
//! `wasm32-unknown-unknown` by this crate's build script, so they always match the source
//! beside them.

pub mod demo_data;

/// The folder holding the built guests, `<name>.wasm` each.
pub const GUESTS_DIR: &str = env!("VEIL_GUESTS_DIR");

/// The demo's pension-eligibility mapper.
pub const PENSION_MODULE: &[u8] = include_bytes!(concat!(
    env!("VEIL_GUESTS_DIR"),
    "/pension_eligibility.wasm"
));

/// The demo's credit-risk mapper.
pub const CREDIT_MODULE: &[u8] =
    include_bytes!(concat!(env!("VEIL_GUESTS_DIR"), "/credit_risk.wasm"));
