//! The `veil` binary. All logic lives in the `veil_runtime` library; this only parses the
//! command line, runs it, and turns errors into messages and exit codes.

use clap::Parser;

fn main() {
    // A job's execution runs as a child process of this same program (see `exec`).
    veil_runtime::exec::serve_child_if_asked();
    // So does an uploaded WASM module's check (see `compile`).
    veil_runtime::compile::serve_check_if_asked();
    let cli = veil_runtime::cli::Cli::parse();
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
    let code = match runtime.block_on(veil_runtime::cli::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    };
    std::process::exit(code);
}
