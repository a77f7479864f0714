//! Gate step 6: the budget rule, and the [`Reserved`] token a release requires.
//!
//! ε is reserved *before* a job touches data. The rule: a run's ε and δ fit in what its grant
//! has left this period, and its ε fits in what each dataset it reads (if the dataset has a
//! budget of its own) has left this period, across all grants. Reservations are never
//! refunded: a job that fails after reserving may already have revealed something through its
//! side effects.
//!
//! The kernel owns the rule; the domain owns where spends are recorded. [`reserve`] reads the
//! spends and records the new one through a [`BudgetBook`], which the domain implements over
//! its transaction (so two jobs can never both spend the last of a budget), and hands back a
//! [`Reserved`] only when the rule held and the record was written. Nothing else creates a
//! `Reserved`, and [`crate::job::run`] will not start a job without one.

use crate::policy::Dataset;
use crate::rules::{Refusal, Rule};
use crate::terms::{MICRO, PICO};

/// ε and δ a grant or dataset has spent in a period, in millionths / trillionths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spent {
    pub micro_epsilon: i64,
    pub pico_delta: i64,
}

/// One reservation request.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub job_id: &'a str,
    pub grant_id: &'a str,
    /// The grant's ε per period, in millionths.
    pub grant_micro_epsilon: i64,
    /// The grant's δ per period, in trillionths.
    pub grant_pico_delta: i64,
    /// Every dataset the job reads.
    pub datasets: &'a [Dataset],
    /// The budget period (a calendar month, `YYYY-MM`).
    pub period: &'a str,
    /// ε the run spends, in millionths.
    pub micro_epsilon: i64,
    /// δ the run spends, in trillionths.
    pub pico_delta: i64,
}

/// Where spends are kept. The domain implements it over the transaction the reservation runs
/// in, so reading the spends and recording the new one are one atomic step.
pub trait BudgetBook {
    type Error;
    /// ε and δ the grant has spent in `period`.
    fn spent_by_grant(&self, grant_id: &str, period: &str) -> Result<Spent, Self::Error>;
    /// ε spent in `period` on `dataset` across all grants, in millionths.
    fn spent_on_dataset(&self, dataset: &Dataset, period: &str) -> Result<i64, Self::Error>;
    /// Records `ask` as spent.
    fn record(&self, ask: &Ask<'_>) -> Result<(), Self::Error>;
}

/// Proof that a run's ε and δ were reserved under the budget rule. Only [`reserve`] creates
/// one; [`crate::job::run`] consumes it.
#[derive(Debug)]
pub struct Reserved {
    job_id: String,
    micro_epsilon: i64,
    pico_delta: i64,
}

impl Reserved {
    /// The job the reservation was made for.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// ε reserved, in millionths.
    pub fn micro_epsilon(&self) -> i64 {
        self.micro_epsilon
    }

    /// δ reserved, in trillionths.
    pub fn pico_delta(&self) -> i64 {
        self.pico_delta
    }

    /// The child process's own token: its parent held a `Reserved` for this job and sent its
    /// figures with the job's request (see `job`).
    pub(crate) fn in_child(job_id: String, micro_epsilon: i64, pico_delta: i64) -> Self {
        Self {
            job_id,
            micro_epsilon,
            pico_delta,
        }
    }
}

/// Applies the budget rule to `ask` against `book`, and records the spend if it fits.
/// Returns the book's own error if reading or writing failed, else the refusal (rule
/// `budget.exhausted`) or the [`Reserved`] token.
pub fn reserve<B: BudgetBook>(
    book: &B,
    ask: &Ask<'_>,
) -> Result<Result<Reserved, Refusal>, B::Error> {
    let grant_spent = book.spent_by_grant(ask.grant_id, ask.period)?;
    if grant_spent.micro_epsilon.saturating_add(ask.micro_epsilon) > ask.grant_micro_epsilon {
        let left = (ask.grant_micro_epsilon - grant_spent.micro_epsilon).max(0);
        return Ok(Err(Refusal::one(
            Rule::BudgetExhausted,
            format!(
                "grant {} has ε = {} left for {}; this run needs ε = {}. Wait for the next period or ask the bureau to raise the grant's budget",
                ask.grant_id,
                left as f64 / MICRO,
                ask.period,
                ask.micro_epsilon as f64 / MICRO
            ),
        )));
    }
    if grant_spent.pico_delta.saturating_add(ask.pico_delta) > ask.grant_pico_delta {
        return Ok(Err(Refusal::one(
            Rule::BudgetExhausted,
            format!(
                "grant {} has δ = {} left for {}; this run needs δ = {}",
                ask.grant_id,
                (ask.grant_pico_delta - grant_spent.pico_delta).max(0) as f64 / PICO,
                ask.period,
                ask.pico_delta as f64 / PICO
            ),
        )));
    }
    for dataset in ask.datasets {
        if let Some(budget) = &dataset.policy.budget {
            let limit = (budget.epsilon_per_month * MICRO).round() as i64;
            let spent = book.spent_on_dataset(dataset, ask.period)?;
            if spent.saturating_add(ask.micro_epsilon) > limit {
                return Ok(Err(Refusal::one(
                    Rule::BudgetExhausted,
                    format!(
                        "dataset `{}` has ε = {} left for {} across all grants; this run needs ε = {}",
                        dataset.name,
                        (limit - spent).max(0) as f64 / MICRO,
                        ask.period,
                        ask.micro_epsilon as f64 / MICRO
                    ),
                )));
            }
        }
    }
    book.record(ask)?;
    Ok(Ok(Reserved {
        job_id: ask.job_id.to_string(),
        micro_epsilon: ask.micro_epsilon,
        pico_delta: ask.pico_delta,
    }))
}
