//! Hostile: behaves only when one particular person is absent.
//!
//! For person 424242 it loops forever (so only a limit ends the call); for person 434343 it
//! panics (a trap). Everyone else gets a normal output row `one` = 1. If the host failed the
//! job, or said how many units fell back, the operator would learn whether those persons are
//! in the data.

use veil_sdk::guest::{Output, OutputKind, Rows, Value};

fn probe(rows: &Rows) -> Output {
    for row in rows.iter() {
        match row.int("person_id") {
            Some(424242) => loop {
                std::hint::black_box(row.int("person_id"));
            },
            Some(434343) => panic!("trap on the watched person"),
            _ => {}
        }
    }
    let mut out = Output::new(&[("one", OutputKind::Int64)]);
    out.push(&[Value::Int(1)]);
    out
}

veil_sdk::veil_mapper!(probe);
