//! Real Veil jobs (SQL templates, policies) and benchmark programs live beside this file; see
//! `bench_dp_aggregate.rs`.
