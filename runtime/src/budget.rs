//! Where the privacy budget's spends are kept: the `budget_spend` table.
//!
//! The rule itself (what fits) is the kernel's, `veil_gate::budget`; this module is its
//! [`BudgetBook`] over the caller's `BEGIN IMMEDIATE` transaction, which reads what the grant
//! (and each dataset with a budget of its own) has spent this period and inserts the
//! reservation only if the rule passed. SQLite lets one such transaction run at a time, so
//! two jobs can never both spend the last of a budget. Reservations are never refunded.
//!
//! Each job writes one row for the grant (`dataset_id = '*'`) and one per dataset read.

use rusqlite::{Transaction, params};

use veil_gate::budget::{Ask, BudgetBook};
pub use veil_gate::budget::{Period, Reserved, Spent};
pub use veil_gate::terms::{MicroEpsilon, PicoDelta};
use veil_gate::{Refusal, policy::Dataset};

use crate::error::{Error, Result};
use crate::grants::Grant;

/// Marks the grant-level row of a reservation.
const GRANT_ROW: &str = "*";

/// The datasets job `job_id` reserved budget on (the grant-level row left out), by id.
pub fn datasets_read_by_job(conn: &rusqlite::Connection, job_id: &str) -> Result<Vec<String>> {
    crate::store::query_rows(
        conn,
        "SELECT dataset_id FROM budget_spend WHERE job_id = ?1 AND dataset_id <> ?2
         ORDER BY dataset_id",
        params![job_id, GRANT_ROW],
        |row| row.get(0),
    )
}

/// How many jobs reserved budget on dataset `dataset_id`, whatever their end.
pub fn jobs_reading_dataset(conn: &rusqlite::Connection, dataset_id: &str) -> Result<u64> {
    let jobs: i64 = conn.query_row(
        "SELECT COUNT(DISTINCT job_id) FROM budget_spend WHERE dataset_id = ?1",
        [dataset_id],
        |row| row.get(0),
    )?;
    Ok(u64::try_from(jobs).unwrap_or(0))
}

/// One month of a dataset's use: the jobs that reserved budget on it and the ε they spent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MonthUse {
    /// `YYYY-MM`, a bureau-time calendar month.
    pub period: String,
    pub jobs: u64,
    pub micro_epsilon: i64,
}

/// Per month, oldest first, the jobs that reserved budget on dataset `dataset_id` (whatever
/// their end) and the ε they spent on it.
pub fn use_of_dataset(conn: &rusqlite::Connection, dataset_id: &str) -> Result<Vec<MonthUse>> {
    crate::store::query_rows(
        conn,
        "SELECT period, COUNT(DISTINCT job_id), COALESCE(SUM(micro_epsilon), 0) FROM budget_spend
         WHERE dataset_id = ?1 GROUP BY period ORDER BY period",
        [dataset_id],
        |row| {
            Ok(MonthUse {
                period: row.get(0)?,
                jobs: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                micro_epsilon: row.get(2)?,
            })
        },
    )
}

/// The jobs that reserved budget on dataset `dataset_id`, whatever their end.
pub fn jobs_of_dataset(conn: &rusqlite::Connection, dataset_id: &str) -> Result<Vec<String>> {
    crate::store::query_rows(
        conn,
        "SELECT DISTINCT job_id FROM budget_spend WHERE dataset_id = ?1 ORDER BY job_id",
        [dataset_id],
        |row| row.get(0),
    )
}

/// ε and δ `grant` has spent in `period`.
pub fn spent_by_grant(conn: &rusqlite::Connection, grant: &str, period: &Period) -> Result<Spent> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(micro_epsilon), 0), COALESCE(SUM(pico_delta), 0) FROM budget_spend
         WHERE grant_id = ?1 AND period = ?2 AND dataset_id = ?3",
        params![grant, period.as_str(), GRANT_ROW],
        |row| {
            Ok(Spent {
                micro_epsilon: MicroEpsilon(row.get(0)?),
                pico_delta: PicoDelta(row.get(1)?),
            })
        },
    )?)
}

fn spent_on_dataset(
    conn: &rusqlite::Connection,
    dataset: &str,
    period: &Period,
) -> Result<MicroEpsilon> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(micro_epsilon), 0) FROM budget_spend WHERE dataset_id = ?1 AND period = ?2",
        params![dataset, period.as_str()],
        |row| row.get(0).map(MicroEpsilon),
    )?)
}

/// One reservation request.
#[derive(Debug, Clone)]
pub struct Reservation<'a> {
    pub job_id: &'a str,
    pub grant: &'a Grant,
    pub datasets: &'a [Dataset],
    pub period: &'a Period,
    pub micro_epsilon: MicroEpsilon,
    pub pico_delta: PicoDelta,
    pub at: &'a str,
}

/// The budget book over one transaction: reads and writes `budget_spend` rows.
struct Book<'t, 'c> {
    tx: &'t Transaction<'c>,
    at: &'t str,
}

impl BudgetBook for Book<'_, '_> {
    type Error = Error;

    fn spent_by_grant(&self, grant_id: &str, period: &Period) -> Result<Spent> {
        spent_by_grant(self.tx, grant_id, period)
    }

    fn spent_on_dataset(&self, dataset: &Dataset, period: &Period) -> Result<MicroEpsilon> {
        spent_on_dataset(self.tx, dataset.id.as_str(), period)
    }

    fn record(&self, ask: &Ask<'_>) -> Result<()> {
        let mut insert = self.tx.prepare(
            "INSERT INTO budget_spend (job_id, grant_id, dataset_id, period, micro_epsilon, pico_delta, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let rows = std::iter::once(GRANT_ROW).chain(ask.datasets.iter().map(|d| d.id.as_str()));
        for dataset in rows {
            insert.execute(params![
                ask.job_id,
                ask.grant_id,
                dataset,
                ask.period.as_str(),
                ask.micro_epsilon.0,
                ask.pico_delta.0,
                self.at
            ])?;
        }
        Ok(())
    }
}

/// Reserves ε/δ inside the caller's IMMEDIATE transaction under the kernel's budget rule, or
/// refuses with it. The [`Reserved`] token is what lets the job run.
pub fn reserve(tx: &Transaction<'_>, r: &Reservation<'_>) -> Result<Result<Reserved, Refusal>> {
    let ask = Ask {
        job_id: r.job_id,
        grant_id: r.grant.id.as_str(),
        grant_micro_epsilon: r.grant.micro_epsilon_per_month,
        grant_pico_delta: r.grant.pico_delta_per_month,
        datasets: r.datasets,
        period: r.period,
        micro_epsilon: r.micro_epsilon,
        pico_delta: r.pico_delta,
    };
    veil_gate::budget::reserve(&Book { tx, at: r.at }, &ask)
}
