//! Pension eligibility: is this insured person entitled to a basic pension?
//!
//! Input (one person's social-insurance records): `birth_year`, `contribution_months` (the
//! running total on each yearly record), `city`. The rule, simplified from the national one: a
//! person is eligible at 60 or older with at least 180 months (15 years) of contributions.
//! Output, one row per person: `city` (the latest record's), `eligible` (0 or 1) and
//! `months_short` (months still missing, 0 to 180).

// A mapper needs no unsafe code: the only unsafe step, reading the input the host wrote,
// is inside `veil_sdk::veil_mapper!`, whose contract the host keeps.
#![forbid(unsafe_code)]

use veil_sdk::guest::{Output, OutputKind, Rows, Value};

const PENSION_AGE: i64 = 60;
const MONTHS_REQUIRED: i64 = 180;
/// The year the rule is applied in.
const AS_OF_YEAR: i64 = 2025;

/// The mapper (public so a benchmark can run the same logic natively).
pub fn eligibility(rows: &Rows) -> Output {
    let mut out = Output::new(&[
        ("city", OutputKind::Utf8),
        ("eligible", OutputKind::Int64),
        ("months_short", OutputKind::Int64),
    ]);
    let months = rows
        .iter()
        .filter_map(|r| r.int("contribution_months"))
        .max()
        .unwrap_or(0);
    let birth_year = rows.iter().find_map(|r| r.int("birth_year"));
    let latest_city = rows
        .iter()
        .filter_map(|r| Some((r.int("year")?, r.text("city")?)))
        .max_by_key(|(year, _)| *year)
        .map(|(_, city)| city.to_string());
    let old_enough = birth_year.is_some_and(|y| AS_OF_YEAR - y >= PENSION_AGE);
    let eligible = old_enough && months >= MONTHS_REQUIRED;
    out.push(&[
        latest_city.map_or(Value::Null, Value::Text),
        Value::Int(i64::from(eligible)),
        Value::Int((MONTHS_REQUIRED - months).clamp(0, MONTHS_REQUIRED)),
    ]);
    out
}

veil_sdk::veil_mapper!(eligibility);
