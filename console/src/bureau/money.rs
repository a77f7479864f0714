//! Money: the price book, the ledger's postings of a period, each party's statement with its
//! totals, revenue per party and per dataset as charts, and the month-end settlement.
//!
//! Settling goes through the API's `POST /settlements` (what `veil client settle` calls);
//! the API has no route for the ledger, the price book or unsettled statements, so those are
//! read from the domain directly — the same functions `veil ledger list`, `veil price show` and
//! `veil settle` use. Money is integer fen throughout; only a chart's bar heights are scaled
//! through a float.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;

use crate::Console;
use crate::api::Api;
use crate::charts;
use crate::session::{Posted, Signed};
use crate::view::{self, Failure, Page};
use veil_runtime::ledger::{Account, Posting};
use veil_runtime::prices::PriceBook;
use veil_runtime::principals::Role;
use veil_runtime::settlement::{self, Settlement, Statement};
use veil_runtime::{catalog, clock, ledger, prices};
use veil_sdk::api::{Settle, Violation};

/// The navigation link this page sits under.
const NAV: &str = "/console/bureau/money";
/// Postings the page lists at most (the latest); the statements and charts count them all.
pub const POSTINGS_SHOWN_MAX: usize = 500;
/// Fen in a yuan.
const FEN_PER_YUAN: f64 = 100.0;

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/bureau/money", get(money))
        .route("/bureau/money/settle", post(settle))
}

/// One party's earnings in the period, for the revenue chart and its table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PartyNet {
    party: String,
    /// The party's name without its role, as the chart labels it.
    label: String,
    debit: i64,
    credit: i64,
    net: i64,
}

/// What providers earned from one dataset in the period.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DatasetRevenue {
    dataset_id: String,
    name: String,
    credit: i64,
}

#[derive(Template)]
#[template(path = "bureau/money.html")]
struct MoneyPage {
    page: Page,
    period: String,
    previous: Option<String>,
    next: Option<String>,
    is_current: bool,
    book: PriceBook,
    postings: Vec<Posting>,
    postings_total: usize,
    statements: Vec<Statement>,
    statements_error: Option<String>,
    parties: Vec<PartyNet>,
    datasets: Vec<DatasetRevenue>,
    party_chart: String,
    dataset_chart: String,
    /// Whether the period was settled before this page (its statements are on disk).
    settled_before: bool,
    /// What the settle action just did.
    settled: Option<Settlement>,
    error: Option<String>,
    error_rules: Vec<Violation>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PeriodQuery {
    #[serde(default)]
    period: Option<String>,
}

async fn money(
    State(console): State<Arc<Console>>,
    who: Signed,
    Query(query): Query<PeriodQuery>,
) -> Result<Response, Failure> {
    view::require(&who, "money", Role::Bureau)?;
    let period = match query.period.as_deref().map(str::trim) {
        Some(text) if !text.is_empty() => text.to_string(),
        _ => clock::period_of(clock::now()),
    };
    money_page(&console, &who, &period, None, None).await
}

/// Everything the page reads for one period, from one store.
struct Read {
    book: PriceBook,
    postings: Vec<Posting>,
    statements: Result<Vec<Statement>, Failure>,
    names: BTreeMap<String, String>,
    settled_before: bool,
}

async fn money_page(
    console: &Arc<Console>,
    who: &Signed,
    period: &str,
    settled: Option<Settlement>,
    error: Option<Failure>,
) -> Result<Response, Failure> {
    let parsed = settlement::parse_period(period)?;
    let asked = parsed.clone();
    let read = console
        .app
        .stores
        .with(move |store| {
            let conn = store.conn();
            let names = catalog::list(store)?
                .into_iter()
                .map(|d| (d.id.to_string(), d.name))
                .collect();
            Ok(Read {
                book: prices::current(conn)?,
                postings: ledger::postings(conn, Some(&asked))?,
                // A ledger that does not reconcile is shown as such, with the rest of the page.
                statements: settlement::statements(conn, &asked).map_err(Failure::from),
                names,
                settled_before: settlement::statement(store, asked.as_str(), "platform").is_ok(),
            })
        })
        .await?;
    let (statements, statements_error) = match read.statements {
        Ok(statements) => (statements, None),
        Err(failure) => (Vec::new(), Some(failure.parts().1)),
    };
    let parties = party_nets(&statements);
    let datasets = dataset_revenue(&read.postings, &read.names)?;
    let party_chart = charts::bars(
        &format!("Net revenue per party 各方净收入 {period}"),
        &parties.iter().map(|p| p.label.clone()).collect::<Vec<_>>(),
        &parties
            .iter()
            .map(|p| yuan_height(p.net))
            .collect::<Vec<_>>(),
        "¥ (yuan 元)",
        None,
    );
    let dataset_chart = charts::bars(
        &format!("Provider revenue per dataset 数据集收入 {period}"),
        &datasets.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
        &datasets
            .iter()
            .map(|d| yuan_height(d.credit))
            .collect::<Vec<_>>(),
        "¥ (yuan 元)",
        None,
    );
    let postings_total = read.postings.len();
    let mut postings = read.postings;
    postings.reverse();
    postings.truncate(POSTINGS_SHOWN_MAX);
    let current = clock::period_of(clock::now());
    let (error, error_rules, status) = view::in_place(error);
    let mut response = view::render(&MoneyPage {
        page: Page::new(format!("Money 结算 · {period}"), who, NAV),
        period: parsed.as_str().to_string(),
        previous: shift(parsed.as_str(), -1),
        next: shift(parsed.as_str(), 1).filter(|next| next.as_str() <= current.as_str()),
        is_current: parsed.as_str() == current,
        book: read.book,
        postings,
        postings_total,
        statements,
        statements_error,
        parties,
        datasets,
        party_chart,
        dataset_chart,
        settled_before: read.settled_before,
        settled,
        error,
        error_rules,
    });
    *response.status_mut() = status;
    Ok(response)
}

/// A bar's height in yuan: the one place money becomes a float, to scale a picture.
fn yuan_height(fen: i64) -> f64 {
    fen as f64 / FEN_PER_YUAN
}

/// The month `by` months from `period` (`YYYY-MM`).
fn shift(period: &str, by: i32) -> Option<String> {
    let first = chrono::NaiveDate::parse_from_str(&format!("{period}-01"), "%Y-%m-%d").ok()?;
    let moved = if by >= 0 {
        first.checked_add_months(chrono::Months::new(by.unsigned_abs()))?
    } else {
        first.checked_sub_months(chrono::Months::new(by.unsigned_abs()))?
    };
    Some(moved.format("%Y-%m").to_string())
}

/// Every earning party's totals in the period, from the platform statement's summary: the
/// platform, operators and providers (buyers only pay, so they are not revenue).
fn party_nets(statements: &[Statement]) -> Vec<PartyNet> {
    let Some(summary) = statements.iter().find_map(|s| s.summary.as_ref()) else {
        return Vec::new();
    };
    summary
        .parties
        .iter()
        .filter_map(|p| {
            let account = Account::parse(&p.party).ok()?;
            let label = match &account {
                Account::Platform => "platform 平台".to_string(),
                Account::Operator(name) | Account::Provider(name) => name.clone(),
                Account::Buyer(_) => return None,
            };
            Some(PartyNet {
                party: p.party.clone(),
                label,
                debit: p.debit.0,
                credit: p.credit.0,
                net: p.net.0,
            })
        })
        .collect()
}

/// What providers earned per dataset in these postings (lines of a provider account that name
/// a dataset: credits less debits, so a refund takes back the share it reverses), most first.
fn dataset_revenue(
    postings: &[Posting],
    names: &BTreeMap<String, String>,
) -> Result<Vec<DatasetRevenue>, Failure> {
    let mut by_dataset: BTreeMap<&str, i128> = BTreeMap::new();
    for line in postings.iter().flat_map(|p| &p.lines) {
        if let Some(dataset) = &line.dataset_id
            && line.account.starts_with("provider:")
        {
            *by_dataset.entry(dataset.as_str()).or_default() +=
                i128::from(line.credit.0) - i128::from(line.debit.0);
        }
    }
    let mut out = by_dataset
        .into_iter()
        .map(|(id, credit)| {
            Ok(DatasetRevenue {
                dataset_id: id.to_string(),
                name: names.get(id).cloned().unwrap_or_else(|| id.to_string()),
                credit: i64::try_from(credit)
                    .map_err(|_| Failure::internal("adding up a dataset's revenue"))?,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    out.sort_by(|a, b| b.credit.cmp(&a.credit).then(a.name.cmp(&b.name)));
    Ok(out)
}

#[derive(Debug, Deserialize)]
pub(crate) struct SettleForm {
    period: String,
}

async fn settle(
    State(console): State<Arc<Console>>,
    posted: Posted<SettleForm>,
) -> Result<Response, Failure> {
    let Posted { who, form } = posted;
    view::require(&who, "settling a period", Role::Bureau)?;
    let period = form.period.trim().to_string();
    // A malformed period is refused on a page of its own: there is no period to show.
    settlement::parse_period(&period)?;
    let body = Settle {
        period: period.clone(),
    };
    match Api::new(&console, &who)
        .post::<_, Settlement>("/settlements", &body)
        .await
    {
        Ok(settled) => money_page(&console, &who, &period, Some(settled), None).await,
        Err(failure) => money_page(&console, &who, &period, None, Some(failure)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_runtime::ids::Fen;
    use veil_runtime::ledger::Line;

    fn line(id: i64, account: &str, credit: i64, dataset: Option<&str>) -> Line {
        Line {
            id,
            account: account.into(),
            debit: Fen(0),
            credit: Fen(credit),
            item: "rows fee".into(),
            dataset_id: dataset.map(str::to_string),
        }
    }

    #[test]
    fn provider_revenue_adds_up_per_dataset_in_fen() {
        let posting = |id: i64, lines: Vec<Line>| Posting {
            id,
            kind: "run".into(),
            source_kind: "job".into(),
            source_id: format!("job-{id}"),
            period: settlement::parse_period("2026-11").unwrap(),
            at: "2026-11-02T00:00:00Z".into(),
            audit_seq: id,
            lines,
        };
        let postings = vec![
            posting(
                1,
                vec![
                    line(1, "provider:市统计局", 1_001, Some("ds-a")),
                    line(2, "provider:医保局", 5, Some("ds-b")),
                    line(3, "platform", 700, Some("ds-a")),
                ],
            ),
            posting(2, vec![line(4, "provider:市统计局", 2_002, Some("ds-a"))]),
        ];
        let names = BTreeMap::from([("ds-a".to_string(), "人口".to_string())]);
        let revenue = dataset_revenue(&postings, &names).unwrap();
        assert_eq!(
            revenue,
            vec![
                DatasetRevenue {
                    dataset_id: "ds-a".into(),
                    name: "人口".into(),
                    credit: 3_003,
                },
                // A dataset no longer in the catalog is named by its id.
                DatasetRevenue {
                    dataset_id: "ds-b".into(),
                    name: "ds-b".into(),
                    credit: 5,
                },
            ]
        );
    }

    #[test]
    fn months_step_across_years() {
        assert_eq!(shift("2026-01", -1).as_deref(), Some("2025-12"));
        assert_eq!(shift("2026-12", 1).as_deref(), Some("2027-01"));
    }
}
