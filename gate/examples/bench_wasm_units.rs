//! Benchmark: the WASM host's cost per privacy unit.
//!
//! ```text
//! (cd examples/wasm && cargo build --release --target wasm32-unknown-unknown)
//! cargo run --release -p veil-gate --example bench_wasm_units -- \
//!     examples/wasm/target/wasm32-unknown-unknown/release/pension_eligibility.wasm [UNITS]
//! ```
//!
//! UNITS defaults to 1,000,000 synthetic insured persons with one to three yearly records each
//! (the columns the pension template's input SQL selects). Two figures, each on one thread:
//!
//! 1. **Per-unit overhead** of a fresh instance for a trivial mapper (it returns its input):
//!    instantiate from the pre-linked module, allocate, copy the input in, call, copy the
//!    output out, drop the store (and reset the pooled slot).
//! 2. **End-to-end throughput** of the pension-eligibility mapper over every unit — encode the
//!    unit's rows, run the mapper on a fresh instance, parse its output — against the same Rust
//!    function compiled natively doing the same decode/map/encode/parse work.
//!
//! A release build of `veil-gate` compiles DataFusion; where a release build of the examples
//! crate exists already, `bench_wasm_job` (in `examples/`) measures the same mapper through a
//! whole job, with its mapping stage timed alone.

use std::time::Instant;

use veil_gate::sandbox::wasm::{WasmEngine, WasmLimits};
use veil_sdk::columnar::{BatchView, BatchWriter};
use veil_sdk::guest::Rows;

// The guest's own source, compiled natively: its `pub fn` is the guest crate's API, not ours.
#[path = "../../examples/wasm/pension_eligibility/src/lib.rs"]
#[allow(dead_code, unreachable_pub)]
mod pension;

const CITIES: [&str; 11] = [
    "Taiyuan", "Datong", "Yangquan", "Changzhi", "Jincheng", "Shuozhou", "Jinzhong", "Yuncheng",
    "Xinzhou", "Linfen", "Lvliang",
];

/// A trivial mapper: returns its input as its output.
const TRIVIAL: &str = r#"(module
    (memory (export "memory") 1)
    (func (export "veil_alloc") (param i32) (result i32) (i32.const 1024))
    (func (export "veil_map") (param $ptr i32) (param $len i32) (result i64)
        (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
                (i64.extend_i32_u (local.get $len)))))"#;

/// A small deterministic generator (xorshift), so every run maps the same units.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One payload per unit, as the host encodes them.
fn payloads(units: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..units)
        .map(|person| {
            let records = 1 + rng.below(3) as usize;
            let birth = 1950 + rng.below(50) as i64;
            let city = CITIES[rng.below(11) as usize];
            let start_months = rng.below(400) as i64;
            let ids = vec![Some(person as i64 + 1); records];
            let cities = vec![Some(city); records];
            let births = vec![Some(birth); records];
            let months: Vec<Option<i64>> = (0..records)
                .map(|r| Some(start_months + 12 * r as i64))
                .collect();
            let years: Vec<Option<i64>> = (0..records).map(|r| Some(2023 + r as i64)).collect();
            let mut writer = BatchWriter::new(records);
            writer
                .int64("person_id", &ids)
                .utf8("city", &cities)
                .int64("birth_year", &births)
                .int64("contribution_months", &months)
                .int64("year", &years);
            writer.finish()
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let module_path = args
        .next()
        .ok_or("give the pension_eligibility.wasm path (see the header comment)")?;
    let units: usize = args.next().map_or(Ok(1_000_000), |u| u.parse())?;
    let module = std::fs::read(&module_path)?;
    let engine = WasmEngine::global()?;
    let limits = WasmLimits::default();
    eprintln!("generating {units} units…");
    let inputs = payloads(units);
    let bytes_in: usize = inputs.iter().map(Vec::len).sum();

    // 1. A trivial mapper: the host's own cost per unit.
    let trivial = engine.compile(&wat::parse_str(TRIVIAL)?, &limits)?;
    for input in inputs.iter().take(10_000) {
        trivial
            .run_unit(input, &limits)
            .output
            .map_err(|e| e.as_str())?;
    }
    let started = Instant::now();
    for input in &inputs {
        trivial
            .run_unit(input, &limits)
            .output
            .map_err(|e| e.as_str())?;
    }
    let trivial_s = started.elapsed().as_secs_f64();

    // 2. The pension mapper in WASM, end to end per unit.
    let compile_started = Instant::now();
    let mapper = engine.compile(&module, &limits)?;
    let compile_ms = compile_started.elapsed().as_secs_f64() * 1e3;
    let mut eligible_wasm = 0i64;
    let mut fuel = 0u64;
    let started = Instant::now();
    for input in &inputs {
        let run = mapper.run_unit(input, &limits);
        fuel += run.fuel;
        let output = run.output.map_err(|e| e.as_str())?;
        let batch = BatchView::parse(&output)?;
        eligible_wasm += batch
            .column("eligible")
            .and_then(|c| c.int64(0))
            .unwrap_or(0);
    }
    let wasm_s = started.elapsed().as_secs_f64();

    // The same logic natively: decode, map, encode, parse.
    let mut eligible_native = 0i64;
    let started = Instant::now();
    for input in &inputs {
        let rows = Rows::parse(input)?;
        let output = pension::eligibility(&rows).encode();
        let batch = BatchView::parse(&output)?;
        eligible_native += batch
            .column("eligible")
            .and_then(|c| c.int64(0))
            .unwrap_or(0);
    }
    let native_s = started.elapsed().as_secs_f64();
    assert_eq!(eligible_wasm, eligible_native, "WASM and native disagree");

    let per_unit = |s: f64| s / units as f64 * 1e6;
    println!(
        "units: {units} ({:.1} MB of input payloads), one thread",
        bytes_in as f64 / 1e6
    );
    println!(
        "trivial mapper, fresh instance per unit: {:.2} µs per unit ({:.0} units/s)",
        per_unit(trivial_s),
        units as f64 / trivial_s
    );
    println!(
        "pension mapper (WASM, {} bytes, compiled in {compile_ms:.0} ms): {:.2} µs per unit ({:.0} units/s), {:.0} fuel per unit",
        module.len(),
        per_unit(wasm_s),
        units as f64 / wasm_s,
        fuel as f64 / units as f64
    );
    println!(
        "pension logic native:             {:.2} µs per unit ({:.0} units/s)",
        per_unit(native_s),
        units as f64 / native_s
    );
    println!(
        "WASM over native: {:.2} µs per unit ({:.1}×); eligible persons: {eligible_wasm}",
        per_unit(wasm_s - native_s),
        wasm_s / native_s
    );
    Ok(())
}
