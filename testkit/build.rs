//! Builds the WASM mappers in `examples/wasm/` (the demo's example jobs and the tests'
//! hostile guests) from source for `wasm32-unknown-unknown`, so `veil demo` and the tests
//! always run modules made from the code beside them. The modules land in
//! `$OUT_DIR/guests/` and `VEIL_GUESTS_DIR` names that folder for the crate's code.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: [&str; 4] = [
    "pension_eligibility",
    "credit_risk",
    "hostile_state",
    "hostile_unit_trap",
];
const TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir.join("../examples/wasm");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed={}", workspace.display());
    for file in [
        "../sdk/src/columnar.rs",
        "../sdk/src/guest.rs",
        "../sdk/src/lib.rs",
        "../sdk/Cargo.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(file).display()
        );
    }

    ensure_target();
    let target_dir = out_dir.join("guest-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    // From inside the guest workspace, so its .cargo/config.toml (stack size) applies.
    command
        .current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--offline",
            "--locked",
            "--target",
            TARGET,
        ])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags are for the host; the guests get none of them.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        command.env_remove(var);
    }
    let status = command
        .status()
        .expect("running cargo to build the WASM guests");
    assert!(
        status.success(),
        "building the WASM guests in examples/wasm failed; run `rustup target add {TARGET}` and try again"
    );

    let guests = out_dir.join("guests");
    std::fs::create_dir_all(&guests).expect("creating the guests folder");
    for guest in GUESTS {
        let built = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{guest}.wasm"));
        copy(&built, &guests.join(format!("{guest}.wasm")));
    }
    println!("cargo:rustc-env=VEIL_GUESTS_DIR={}", guests.display());
}

/// Installs the wasm32 standard library if this toolchain lacks it (a fresh machine).
fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(true);
    if !installed {
        let _ = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status();
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
}
