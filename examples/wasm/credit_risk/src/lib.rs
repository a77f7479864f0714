//! Enterprise credit risk: a score from registry fields, per enterprise.
//!
//! Input (all enterprises of one legal representative): `industry`, `established_year`,
//! `registered_capital` (10,000 yuan), `employees`, `credit_rating` (A–D). The score (0 best,
//! 100 worst) weighs the rating, the firm's age, its capital per employee and how many firms
//! the same person represents (a common sign of shell companies). Output, one row per
//! enterprise: `industry` and `risk_score`.

// A mapper needs no unsafe code: the only unsafe step, reading the input the host wrote,
// is inside `veil_sdk::veil_mapper!`, whose contract the host keeps.
#![forbid(unsafe_code)]

use veil_sdk::guest::{Output, OutputKind, Rows, Value};

const AS_OF_YEAR: i64 = 2025;

fn rating_points(rating: Option<&str>) -> f64 {
    match rating {
        Some("A") => 5.0,
        Some("B") => 20.0,
        Some("C") => 45.0,
        Some("D") => 70.0,
        _ => 50.0,
    }
}

fn score(rows: &Rows) -> Output {
    let mut out = Output::new(&[
        ("industry", OutputKind::Utf8),
        ("risk_score", OutputKind::Float64),
    ]);
    // Representing many firms at once raises every one of them a little.
    let concentration = ((rows.len() as f64 - 1.0) * 4.0).min(15.0);
    for row in rows.iter() {
        let age = row
            .int("established_year")
            .map_or(0, |y| (AS_OF_YEAR - y).max(0));
        let youth = (10.0 - age as f64).max(0.0) * 1.2;
        let capital = row.float("registered_capital").unwrap_or(0.0).max(0.0);
        let employees = row.float("employees").unwrap_or(0.0).max(0.0);
        let thin = if employees > 0.0 && capital / employees < 1.0 {
            8.0
        } else {
            0.0
        };
        let risk = (rating_points(row.text("credit_rating")) + youth + thin + concentration)
            .clamp(0.0, 100.0);
        out.push(&[
            row.text("industry")
                .map_or(Value::Null, |s| Value::Text(s.to_string())),
            Value::Float(risk),
        ]);
    }
    out
}

veil_sdk::veil_mapper!(score);
