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

use std::fmt;

use chrono::{DateTime, Months, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::clock;
use crate::policy::Dataset;
use crate::rules::{Refusal, Rule};
use crate::terms::{MicroEpsilon, PicoDelta};

/// A budget period: a calendar month in the bureau's time zone, written `YYYY-MM`. Budgets
/// are spent per period, and the ledger posts and settles per period. Serializes as that text;
/// only [`Period::of`] and [`Period::parse`] make one, so every `Period` is a real month.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Period(String);

/// A period that is not written `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("write the period as YYYY-MM, a calendar month in bureau time (for example 2026-11)")]
pub struct MalformedPeriod;

impl Period {
    /// The period `instant` falls in, in the bureau's time zone.
    pub fn of(instant: DateTime<Utc>) -> Self {
        Self(clock::period_of(instant))
    }

    /// Reads a period a user or a stored row wrote; refuses anything but a real `YYYY-MM`.
    pub fn parse(text: &str) -> Result<Self, MalformedPeriod> {
        let bytes = text.as_bytes();
        let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
        if bytes.len() != 7 || bytes[4] != b'-' || !digits(0..4) || !digits(5..7) {
            return Err(MalformedPeriod);
        }
        Self::first_day(text)?;
        Ok(Self(text.to_string()))
    }

    /// The period as stored: `YYYY-MM`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The period's bounds: its first instant and the first instant after it, in UTC.
    pub fn bounds(&self) -> Result<(DateTime<Utc>, DateTime<Utc>), MalformedPeriod> {
        let first = Self::first_day(&self.0)?;
        let next = first
            .checked_add_months(Months::new(1))
            .ok_or(MalformedPeriod)?;
        let offset = clock::bureau_offset();
        let at_midnight = |day: NaiveDate| {
            offset
                .from_local_datetime(&day.and_time(chrono::NaiveTime::MIN))
                .single()
                .map(|t| t.with_timezone(&Utc))
                .ok_or(MalformedPeriod)
        };
        Ok((at_midnight(first)?, at_midnight(next)?))
    }

    fn first_day(text: &str) -> Result<NaiveDate, MalformedPeriod> {
        NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").map_err(|_| MalformedPeriod)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Period {
    type Error = MalformedPeriod;

    fn try_from(text: String) -> Result<Self, MalformedPeriod> {
        Self::parse(&text)
    }
}

impl From<Period> for String {
    fn from(period: Period) -> Self {
        period.0
    }
}

/// ε and δ a grant or dataset has spent in a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spent {
    pub micro_epsilon: MicroEpsilon,
    pub pico_delta: PicoDelta,
}

/// One reservation request.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub job_id: &'a str,
    pub grant_id: &'a str,
    /// The grant's ε per period.
    pub grant_micro_epsilon: MicroEpsilon,
    /// The grant's δ per period.
    pub grant_pico_delta: PicoDelta,
    /// Every dataset the job reads.
    pub datasets: &'a [Dataset],
    /// The budget period the run spends in.
    pub period: &'a Period,
    /// ε the run spends.
    pub micro_epsilon: MicroEpsilon,
    /// δ the run spends.
    pub pico_delta: PicoDelta,
}

/// Where spends are kept. The domain implements it over the transaction the reservation runs
/// in, so reading the spends and recording the new one are one atomic step.
pub trait BudgetBook {
    type Error;
    /// ε and δ the grant has spent in `period`.
    fn spent_by_grant(&self, grant_id: &str, period: &Period) -> Result<Spent, Self::Error>;
    /// ε spent in `period` on `dataset` across all grants.
    fn spent_on_dataset(
        &self,
        dataset: &Dataset,
        period: &Period,
    ) -> Result<MicroEpsilon, Self::Error>;
    /// Records `ask` as spent.
    fn record(&self, ask: &Ask<'_>) -> Result<(), Self::Error>;
}

/// Proof that a run's ε and δ were reserved under the budget rule. Only [`reserve`] creates
/// one; [`crate::job::run`] consumes it.
#[derive(Debug)]
pub struct Reserved {
    job_id: String,
    micro_epsilon: MicroEpsilon,
    pico_delta: PicoDelta,
}

impl Reserved {
    /// The job the reservation was made for.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// ε reserved.
    pub fn micro_epsilon(&self) -> MicroEpsilon {
        self.micro_epsilon
    }

    /// δ reserved.
    pub fn pico_delta(&self) -> PicoDelta {
        self.pico_delta
    }

    /// The child process's own token: its parent held a `Reserved` for this job and sent its
    /// figures with the job's request (see `job`).
    pub(crate) fn in_child(
        job_id: String,
        micro_epsilon: MicroEpsilon,
        pico_delta: PicoDelta,
    ) -> Self {
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
        return Ok(Err(Refusal::one(
            Rule::BudgetExhausted,
            format!(
                "grant {} has ε = {} left for {}; this run needs ε = {}. Wait for the next period or ask the bureau to raise the grant's budget",
                ask.grant_id,
                ask.grant_micro_epsilon
                    .left_after(grant_spent.micro_epsilon),
                ask.period,
                ask.micro_epsilon
            ),
        )));
    }
    if grant_spent.pico_delta.saturating_add(ask.pico_delta) > ask.grant_pico_delta {
        return Ok(Err(Refusal::one(
            Rule::BudgetExhausted,
            format!(
                "grant {} has δ = {} left for {}; this run needs δ = {}",
                ask.grant_id,
                ask.grant_pico_delta.left_after(grant_spent.pico_delta),
                ask.period,
                ask.pico_delta
            ),
        )));
    }
    for dataset in ask.datasets {
        if let Some(budget) = &dataset.policy.budget {
            let limit = MicroEpsilon::rounded(budget.epsilon_per_month);
            let spent = book.spent_on_dataset(dataset, ask.period)?;
            if spent.saturating_add(ask.micro_epsilon) > limit {
                return Ok(Err(Refusal::one(
                    Rule::BudgetExhausted,
                    format!(
                        "dataset `{}` has ε = {} left for {} across all grants; this run needs ε = {}",
                        dataset.name,
                        limit.left_after(spent),
                        ask.period,
                        ask.micro_epsilon
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_is_a_bureau_month() {
        let period = Period::parse("2026-11").expect("a month");
        let (start, end) = period.bounds().expect("bounds");
        // Midnight in Beijing is 16:00 UTC the day before.
        assert_eq!(clock::format(start), "2026-10-31T16:00:00Z");
        assert_eq!(clock::format(end), "2026-11-30T16:00:00Z");
        assert_eq!(Period::of(start), period);
        assert_eq!(serde_json::to_string(&period).expect("json"), "\"2026-11\"");
        for bad in [
            "2026-13",
            "2026-1",
            "26-11",
            "2026/11",
            "2026-11-01",
            "+202-11",
            "",
        ] {
            assert_eq!(Period::parse(bad), Err(MalformedPeriod), "{bad}");
            assert!(
                serde_json::from_str::<Period>(&format!("{bad:?}")).is_err(),
                "{bad}"
            );
        }
    }
}
