//! The `veil` binary: parses the command line, runs it against the domain library
//! (`veil_runtime`) or a server (`veil client`), and turns errors into messages and exit codes.

// The commands' doc comments are their `--help` text, written for a terminal: `[wasm]` there
// names a TOML table, not an item to link.
#![allow(rustdoc::broken_intra_doc_links)]

mod client;
mod client_actions;
mod corrections;
mod demo;
mod disputes;
mod freezes;
mod local;
mod output;
mod profile;
mod progress;
mod terms;
#[cfg(test)]
mod tests;

use clap::Parser;

fn main() {
    // A job's execution runs as a child process of this same program (see `veil_gate::job`).
    veil_gate::job::serve_child_if_asked();
    // So does an uploaded WASM module's check (see `veil_runtime::compile`).
    veil_runtime::compile::serve_check_if_asked();
    let cli = local::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(local::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    };
    std::process::exit(code);
}
