//! The WASM host against hostile guests, written in the WebAssembly text format so each one
//! is exactly the attack it names. Every guest is refused before it runs or ends its unit
//! with a typed failure, and the host stays usable for the next unit.

use crate::sandbox::wasm::{UnitFailure, WasmEngine, WasmLimits, WasmRefusal};
use veil_sdk::columnar::{BatchView, BatchWriter};

/// A module with the host ABI whose `veil_map` body is `map` (params `$ptr`, `$len`).
fn guest(extra: &str, map: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
            {extra}
            (memory (export "memory") 2)
            (func (export "veil_alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "veil_map") (param $ptr i32) (param $len i32) (result i64) {map}))"#
    );
    wat::parse_str(&text).expect("test guest is valid WAT")
}

fn input() -> Vec<u8> {
    let mut writer = BatchWriter::new(2);
    writer.int64("person_id", &[Some(7), Some(7)]);
    writer.finish()
}

fn run(bytes: &[u8], limits: &WasmLimits) -> Result<Vec<u8>, UnitFailure> {
    let engine = WasmEngine::global().expect("engine");
    let mapper = engine.compile(bytes, limits).expect("module accepted");
    mapper.run_unit(&input(), limits).output
}

fn refusal(bytes: &[u8]) -> WasmRefusal {
    let engine = WasmEngine::global().expect("engine");
    engine
        .compile(bytes, &WasmLimits::default())
        .expect_err("module refused")
}

/// Echoes its input back: a well-behaved guest.
const ECHO: &str = "(i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32)) (i64.extend_i32_u (local.get $len)))";

#[test]
fn a_well_behaved_guest_round_trips_its_input() {
    let out = run(&guest("", ECHO), &WasmLimits::default()).expect("output");
    let batch = BatchView::parse(&out).expect("a batch");
    assert_eq!(batch.column("person_id").and_then(|c| c.int64(1)), Some(7));
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    let looping = guest("", "(loop $l (br $l)) (i64.const 0)");
    assert_eq!(
        run(&looping, &WasmLimits::default()),
        Err(UnitFailure::OutOfFuel)
    );
}

#[test]
fn a_loop_with_fuel_to_spare_meets_the_deadline() {
    let looping = guest("", "(loop $l (br $l)) (i64.const 0)");
    let limits = WasmLimits {
        fuel_per_unit: u64::MAX / 4,
        unit_wall_us: 50_000,
        ..WasmLimits::default()
    };
    let started = std::time::Instant::now();
    assert_eq!(run(&looping, &limits), Err(UnitFailure::Deadline));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let bomb = guest(
        "",
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (i64.const 0)",
    );
    assert_eq!(
        run(&bomb, &WasmLimits::default()),
        Err(UnitFailure::MemoryLimit)
    );
}

#[test]
fn deep_recursion_overflows_the_stack() {
    let recursion = guest(
        "(func $down (param i32) (result i32) (call $down (i32.add (local.get 0) (i32.const 1))))",
        "(drop (call $down (i32.const 0))) (i64.const 0)",
    );
    let limits = WasmLimits {
        fuel_per_unit: u64::MAX / 4,
        ..WasmLimits::default()
    };
    assert_eq!(run(&recursion, &limits), Err(UnitFailure::StackOverflow));
}

#[test]
fn a_huge_table_is_refused_and_a_growing_one_is_stopped() {
    // Above the job's limit: refused with the sizes.
    let big = guest("(table 50000 funcref)", ECHO);
    let refused = refusal(&big);
    assert!(
        matches!(
            refused,
            WasmRefusal::TableTooLarge {
                elements: 50000,
                limit: 10000
            }
        ),
        "{refused:?}"
    );
    // Above what the engine could ever hold: refused as it compiles.
    let huge = guest("(table 5000000 funcref)", ECHO);
    assert!(matches!(refusal(&huge), WasmRefusal::Invalid(reason) if reason.contains("table")));
    let growing = guest(
        "(table $t 1 funcref)",
        "(loop $l (br_if $l (i32.ne (table.grow $t (ref.null func) (i32.const 1000)) (i32.const -1)))) (i64.const 0)",
    );
    assert_eq!(
        run(&growing, &WasmLimits::default()),
        Err(UnitFailure::MemoryLimit)
    );
}

#[test]
fn imports_beyond_the_log_are_refused_before_any_row() {
    let wasi = guest(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
        ECHO,
    );
    assert_eq!(
        refusal(&wasi),
        WasmRefusal::ForbiddenImport {
            module: "wasi_snapshot_preview1".into(),
            name: "fd_write".into()
        }
    );
    let unknown = guest(r#"(import "veil" "read_file" (func (param i32)))"#, ECHO);
    assert!(matches!(
        refusal(&unknown),
        WasmRefusal::ForbiddenImport { .. }
    ));
    // The log with another signature is not the log.
    let wrong_log = guest(r#"(import "veil" "log" (func (param i64)))"#, ECHO);
    assert!(matches!(
        refusal(&wrong_log),
        WasmRefusal::ForbiddenImport { .. }
    ));
    // The real log is allowed, and what it says goes nowhere.
    let logging = guest(
        r#"(import "veil" "log" (func $log (param i32 i32)))"#,
        &format!("(call $log (local.get $ptr) (local.get $len)) {ECHO}"),
    );
    assert!(run(&logging, &WasmLimits::default()).is_ok());
}

#[test]
fn a_module_without_the_abi_is_refused() {
    let bytes = wat::parse_str(r#"(module (memory (export "memory") 1))"#).expect("wat");
    assert_eq!(refusal(&bytes), WasmRefusal::MissingExport("veil_alloc"));
    let wrong = wat::parse_str(
        r#"(module (memory (export "memory") 1)
            (func (export "veil_alloc") (param i32) (result i32) (i32.const 0))
            (func (export "veil_map") (param i32 i32) (result i32) (i32.const 0)))"#,
    )
    .expect("wat");
    assert!(matches!(
        refusal(&wrong),
        WasmRefusal::WrongSignature {
            name: "veil_map",
            ..
        }
    ));
    assert!(matches!(
        refusal(b"not wasm at all"),
        WasmRefusal::Invalid(_)
    ));
    let big = vec![0u8; crate::sandbox::wasm::MODULE_BYTES_MAX + 1];
    assert!(matches!(refusal(&big), WasmRefusal::TooLarge { .. }));
    let threads = wat::parse_str(
        r#"(module (memory (export "memory") 1 1 shared)
            (func (export "veil_alloc") (param i32) (result i32) (i32.const 0))
            (func (export "veil_map") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .expect("wat");
    assert!(matches!(refusal(&threads), WasmRefusal::Invalid(_)));
}

#[test]
fn writing_outside_memory_traps() {
    let writer = guest(
        "",
        "(i32.store (i32.const 0x7fff_fff0) (i32.const 1)) (i64.const 0)",
    );
    assert_eq!(run(&writer, &WasmLimits::default()), Err(UnitFailure::Trap));
}

#[test]
fn bad_output_pointers_and_sizes_are_failures() {
    // A length past the end of memory.
    let past_end = guest(
        "",
        "(i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 200000))",
    );
    assert_eq!(
        run(&past_end, &WasmLimits::default()),
        Err(UnitFailure::BadOutputBuffer)
    );
    // A claimed output larger than the limit.
    let oversized = guest(
        "",
        "(i64.or (i64.shl (i64.const 0) (i64.const 32)) (i64.const 2000000))",
    );
    assert_eq!(
        run(&oversized, &WasmLimits::default()),
        Err(UnitFailure::OutputTooLarge)
    );
    // A zero answer: the guest could not read its input.
    let nothing = guest("", "(i64.const 0)");
    assert_eq!(
        run(&nothing, &WasmLimits::default()),
        Err(UnitFailure::NoOutput)
    );
    // Bytes that are not a batch come back as bytes; the caller's parse refuses them.
    let garbage = guest(
        r#"(data (i32.const 4096) "VCB1garbage")"#,
        "(i64.or (i64.shl (i64.const 4096) (i64.const 32)) (i64.const 11))",
    );
    let bytes = run(&garbage, &WasmLimits::default()).expect("bytes");
    assert!(BatchView::parse(&bytes).is_err());
}

#[test]
fn a_guest_cannot_keep_state_from_one_unit_to_the_next() {
    // A global counter and a memory cell, both bumped on every call and returned as the
    // output's length: on a fresh instance each call sees its initial values.
    let stateful = guest(
        "(global $calls (mut i32) (i32.const 0))",
        "(global.set $calls (i32.add (global.get $calls) (i32.const 1)))
         (i32.store (i32.const 64) (i32.add (i32.load (i32.const 64)) (i32.const 1)))
         (i64.or (i64.shl (i64.const 2048) (i64.const 32))
                 (i64.extend_i32_u (i32.add (global.get $calls) (i32.load (i32.const 64)))))",
    );
    let engine = WasmEngine::global().expect("engine");
    let limits = WasmLimits::default();
    let mapper = engine.compile(&stateful, &limits).expect("accepted");
    for _ in 0..5 {
        let out = mapper.run_unit(&input(), &limits).output.expect("output");
        assert_eq!(out.len(), 2, "calls + memory cell is 2 on a fresh instance");
    }
}

/// A guest that looks for the previous unit's input anywhere in its memory. Every unit's only
/// input is a secret word marked with `0x7EC2E7` in its top bytes. The guest grows its memory
/// to 3 MiB (past the part of a pooled slot the host keeps resident between units, 2 MiB),
/// counts the marked words outside its own input, then writes its own secret over all the rest
/// of its memory. It answers with as many bytes as words it found. With a secret whose low byte
/// is 0 it writes first and counts after: the control, which must find its own words.
const SNOOP: &str = r#"(module
    (memory (export "memory") 2)
    (func (export "veil_alloc") (param i32) (result i32) (i32.const 1024))
    (func $outside (param $at i32) (param $ptr i32) (param $len i32) (result i32)
        (i32.or (i32.le_u (i32.add (local.get $at) (i32.const 8)) (local.get $ptr))
                (i32.ge_u (local.get $at) (i32.add (local.get $ptr) (local.get $len)))))
    (func $count (param $ptr i32) (param $len i32) (result i32)
        (local $at i32) (local $found i32)
        (block $done (loop $next
            (br_if $done (i32.ge_u (local.get $at) (i32.mul (memory.size) (i32.const 65536))))
            (if (i32.and (call $outside (local.get $at) (local.get $ptr) (local.get $len))
                         (i64.eq (i64.shr_u (i64.load (local.get $at)) (i64.const 40))
                                 (i64.const 0x7EC2E7)))
                (then (local.set $found (i32.add (local.get $found) (i32.const 1)))))
            (local.set $at (i32.add (local.get $at) (i32.const 8)))
            (br $next)))
        (local.get $found))
    (func $spray (param $ptr i32) (param $len i32) (param $secret i64)
        (local $at i32)
        (block $done (loop $next
            (br_if $done (i32.ge_u (local.get $at) (i32.mul (memory.size) (i32.const 65536))))
            (if (call $outside (local.get $at) (local.get $ptr) (local.get $len))
                (then (i64.store (local.get $at) (local.get $secret))))
            (local.set $at (i32.add (local.get $at) (i32.const 8)))
            (br $next))))
    (func (export "veil_map") (param $ptr i32) (param $len i32) (result i64)
        (local $at i32) (local $secret i64) (local $found i32)
        (drop (memory.grow (i32.sub (i32.const 48) (memory.size))))
        ;; The secret: the marked word in the input (at any byte offset).
        (local.set $at (local.get $ptr))
        (block $done (loop $next
            (br_if $done (i32.gt_u (i32.add (local.get $at) (i32.const 8))
                                   (i32.add (local.get $ptr) (local.get $len))))
            (local.set $secret (i64.load (local.get $at)))
            (br_if $done (i64.eq (i64.shr_u (local.get $secret) (i64.const 40))
                                 (i64.const 0x7EC2E7)))
            (local.set $at (i32.add (local.get $at) (i32.const 1)))
            (br $next)))
        (if (i64.eqz (i64.and (local.get $secret) (i64.const 0xff)))
            (then (call $spray (local.get $ptr) (local.get $len) (local.get $secret))
                  (local.set $found (call $count (local.get $ptr) (local.get $len))))
            (else (local.set $found (call $count (local.get $ptr) (local.get $len)))
                  (call $spray (local.get $ptr) (local.get $len) (local.get $secret))))
        ;; Output: `found` bytes from address 1 (a zero answer would mean "no output").
        (i64.or (i64.const 0x1_0000_0000) (i64.extend_i32_u (local.get $found)))))"#;

#[test]
fn a_unit_finds_nothing_of_the_previous_units_memory() {
    let engine = WasmEngine::global().expect("engine");
    // Two passes over 3 MiB take more than the default fuel.
    let limits = WasmLimits {
        fuel_per_unit: 200_000_000,
        ..WasmLimits::default()
    };
    let snoop = wat::parse_str(SNOOP).expect("test guest is valid WAT");
    let mapper = engine.compile(&snoop, &limits).expect("accepted");
    let secret = |k: i64| {
        let mut writer = BatchWriter::new(1);
        writer.int64("person_id", &[Some(0x7EC2_E700_0000_0000 + k)]);
        writer.finish()
    };
    // The control: a unit that writes its secret everywhere and then looks finds it, so the
    // search below can see what a previous unit left.
    let control = mapper
        .run_unit(&secret(0x100), &limits)
        .output
        .expect("output");
    assert!(
        control.len() > 1000,
        "the control found {} words",
        control.len()
    );
    // Units one after another (the pool gives the same slot back each time): none finds a word
    // the unit before it wrote, in the first 2 MiB (reset in place) or above (released).
    for k in 1..=20 {
        let found = mapper.run_unit(&secret(k), &limits).output.expect("output");
        assert_eq!(found.len(), 0, "unit {k} found a previous unit's secret");
    }
}

#[test]
fn a_replica_maps_like_its_original_on_an_engine_of_its_own() {
    let engine = WasmEngine::global().expect("engine");
    let limits = WasmLimits::default();
    let mapper = engine.compile(&guest("", ECHO), &limits).expect("accepted");
    let replica = mapper.replica().expect("replica");
    let (a, b) = (
        mapper.run_unit(&input(), &limits),
        replica.run_unit(&input(), &limits),
    );
    assert_eq!(a.output, b.output);
    assert_eq!(a.fuel, b.fuel);
    assert_eq!(
        replica.run_unit(&input(), &WasmLimits::default()).output,
        Ok(input())
    );
}

#[test]
fn the_same_bytes_compile_once() {
    let bytes = guest("(global i32 (i32.const 99))", ECHO);
    let engine = WasmEngine::global().expect("engine");
    let limits = WasmLimits::default();
    let first = engine.compile(&bytes, &limits).expect("accepted");
    let compiles = engine.compiles();
    let second = engine.compile(&bytes, &limits).expect("accepted");
    assert!(std::sync::Arc::ptr_eq(&first, &second));
    assert_eq!(engine.compiles(), compiles);
}

#[test]
fn fuel_is_metered_and_deterministic() {
    let engine = WasmEngine::global().expect("engine");
    let limits = WasmLimits::default();
    let mapper = engine.compile(&guest("", ECHO), &limits).expect("accepted");
    let a = mapper.run_unit(&input(), &limits);
    let b = mapper.run_unit(&input(), &limits);
    assert!(a.fuel > 0);
    assert_eq!(a.fuel, b.fuel);
}
