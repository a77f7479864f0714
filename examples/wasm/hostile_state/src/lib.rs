//! Hostile: tries to carry state from one unit to the next.
//!
//! It counts its calls in a global and keeps the previous unit's id in memory, and outputs
//! both: `calls` (1 on a fresh instance) and `previous_unit` (0 on a fresh instance). If the
//! host ever reused an instance, the second unit would see 2 and the first unit's id.

// A mapper needs no unsafe code: the only unsafe step, reading the input the host wrote,
// is inside `veil_sdk::veil_mapper!`, whose contract the host keeps.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicI64, Ordering};

use veil_sdk::guest::{Output, OutputKind, Rows, Value};

static CALLS: AtomicI64 = AtomicI64::new(0);
static PREVIOUS_UNIT: AtomicI64 = AtomicI64::new(0);

fn remember(rows: &Rows) -> Output {
    let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    let unit = rows.iter().find_map(|r| r.int("person_id")).unwrap_or(0);
    let previous = PREVIOUS_UNIT.swap(unit, Ordering::Relaxed);
    let mut out = Output::new(&[
        ("calls", OutputKind::Int64),
        ("previous_unit", OutputKind::Int64),
    ]);
    out.push(&[Value::Int(calls), Value::Int(previous)]);
    out
}

veil_sdk::veil_mapper!(remember);
