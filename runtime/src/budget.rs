//! Gate step 6: the privacy budget.
//!
//! ε is reserved *before* a job touches data, inside one `BEGIN IMMEDIATE` transaction that
//! reads what the grant (and each dataset with a budget of its own) has spent this period and
//! inserts the reservation only if it fits. SQLite lets one such transaction run at a time, so
//! two jobs can never both spend the last of a budget. Reservations are never refunded: a job
//! that fails after reserving may already have revealed something through its side effects.
//!
//! Each job writes one row for the grant (`dataset_id = '*'`) and one per dataset read.

use rusqlite::{Transaction, params};

use crate::catalog::Dataset;
use crate::error::Result;
use crate::gate::rules::{Refusal, Rule};
use crate::grants::{Grant, MICRO, PICO};

/// Marks the grant-level row of a reservation.
const GRANT_ROW: &str = "*";

/// ε and δ a grant or dataset has spent in a period, in millionths / trillionths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spent {
    pub micro_epsilon: i64,
    pub pico_delta: i64,
}

pub fn spent_by_grant(conn: &rusqlite::Connection, grant: &str, period: &str) -> Result<Spent> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(micro_epsilon), 0), COALESCE(SUM(pico_delta), 0) FROM budget_spend
         WHERE grant_id = ?1 AND period = ?2 AND dataset_id = ?3",
        params![grant, period, GRANT_ROW],
        |row| {
            Ok(Spent {
                micro_epsilon: row.get(0)?,
                pico_delta: row.get(1)?,
            })
        },
    )?)
}

fn spent_on_dataset(conn: &rusqlite::Connection, dataset: &str, period: &str) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(micro_epsilon), 0) FROM budget_spend WHERE dataset_id = ?1 AND period = ?2",
        params![dataset, period],
        |row| row.get(0),
    )?)
}

/// One reservation request.
#[derive(Debug, Clone)]
pub struct Reservation<'a> {
    pub job_id: &'a str,
    pub grant: &'a Grant,
    pub datasets: &'a [Dataset],
    pub period: &'a str,
    pub micro_epsilon: i64,
    pub pico_delta: i64,
    pub at: &'a str,
}

/// Reserves ε/δ inside the caller's IMMEDIATE transaction, or refuses with the budget rule.
pub fn reserve(tx: &Transaction<'_>, r: &Reservation<'_>) -> Result<Result<(), Refusal>> {
    let grant_spent = spent_by_grant(tx, r.grant.id.as_str(), r.period)?;
    if grant_spent.micro_epsilon + r.micro_epsilon > r.grant.micro_epsilon_per_month {
        let left = (r.grant.micro_epsilon_per_month - grant_spent.micro_epsilon).max(0);
        return Ok(Err(Refusal::one(
            Rule::BudgetExhausted,
            format!(
                "grant {} has ε = {} left for {}; this run needs ε = {}. Wait for the next period or ask the bureau to raise the grant's budget",
                r.grant.id,
                left as f64 / MICRO,
                r.period,
                r.micro_epsilon as f64 / MICRO
            ),
        )));
    }
    if grant_spent.pico_delta + r.pico_delta > r.grant.pico_delta_per_month {
        return Ok(Err(Refusal::one(
            Rule::BudgetExhausted,
            format!(
                "grant {} has δ = {} left for {}; this run needs δ = {}",
                r.grant.id,
                (r.grant.pico_delta_per_month - grant_spent.pico_delta).max(0) as f64 / PICO,
                r.period,
                r.pico_delta as f64 / PICO
            ),
        )));
    }
    for dataset in r.datasets {
        if let Some(budget) = &dataset.policy.budget {
            let limit = (budget.epsilon_per_month * MICRO).round() as i64;
            let spent = spent_on_dataset(tx, dataset.id.as_str(), r.period)?;
            if spent + r.micro_epsilon > limit {
                return Ok(Err(Refusal::one(
                    Rule::BudgetExhausted,
                    format!(
                        "dataset `{}` has ε = {} left for {} across all grants; this run needs ε = {}",
                        dataset.name,
                        (limit - spent).max(0) as f64 / MICRO,
                        r.period,
                        r.micro_epsilon as f64 / MICRO
                    ),
                )));
            }
        }
    }
    let mut insert = tx.prepare(
        "INSERT INTO budget_spend (job_id, grant_id, dataset_id, period, micro_epsilon, pico_delta, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    insert.execute(params![
        r.job_id,
        r.grant.id.as_str(),
        GRANT_ROW,
        r.period,
        r.micro_epsilon,
        r.pico_delta,
        r.at
    ])?;
    for dataset in r.datasets {
        insert.execute(params![
            r.job_id,
            r.grant.id.as_str(),
            dataset.id.as_str(),
            r.period,
            r.micro_epsilon,
            r.pico_delta,
            r.at
        ])?;
    }
    Ok(Ok(()))
}
