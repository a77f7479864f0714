//! Hostile: misbehaves only when one particular person is in the data.
//!
//! The input SQL hands it two watched person ids as constant columns (`loop_unit`,
//! `trap_unit`, from job parameters). For the first it loops forever, so only a limit ends
//! the call; for the second it panics (a trap). Everyone else gets one normal row, `one` = 1.
//! If the host failed the job, or said how many units fell back, the operator would learn
//! whether the watched persons are in the data.

// A mapper needs no unsafe code: the only unsafe step, reading the input the host wrote,
// is inside `veil_sdk::veil_mapper!`, whose contract the host keeps.
#![forbid(unsafe_code)]

use veil_sdk::guest::{Output, OutputKind, Rows, Value};

fn probe(rows: &Rows) -> Output {
    for row in rows.iter() {
        let person = row.int("person_id");
        if person.is_some() && person == row.int("loop_unit") {
            loop {
                std::hint::black_box(row.int("person_id"));
            }
        }
        if person.is_some() && person == row.int("trap_unit") {
            panic!("trap on the watched person");
        }
    }
    let mut out = Output::new(&[("one", OutputKind::Int64)]);
    out.push(&[Value::Int(1)]);
    out
}

veil_sdk::veil_mapper!(probe);
