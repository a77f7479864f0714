//! Veil's integration tests, in one binary (one module per feature), driving the library as a
//! caller would and the `veil` binary as a user would.

mod accuracy;
mod api;
mod api_docs;
mod assets;
mod audit;
mod browser;
mod budget;
mod cli;
mod cluster;
mod compile;
mod console;
mod contract;
mod corrections;
mod disclosure;
mod disputes;
mod ends;
mod flags;
mod freeze;
mod gate_files;
mod key_range;
mod money;
mod neighbouring;
mod neighbours;
mod object_storage;
mod redaction;
mod registration;
mod serve;
mod statistics;
mod submit;
mod support;
mod term_end;
mod tidy;
mod versions;
mod views;
mod wasm;
