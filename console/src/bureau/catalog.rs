//! The catalog: datasets with their policies and registration reports, grants with their
//! terms and budget use per month (a chart), and grant requests with the overdue flag and
//! the bureau's decision on each — through the API routes `veil client datasets`, `grants`
//! and `grant-request …` call; only the budget per month, which the API has no route for,
//! is read from the budget book directly.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{Months, NaiveDate};
use serde::Deserialize;

use crate::Console;
use crate::api::{Api, segment};
use crate::charts;
use crate::session::{Posted, Signed};
use crate::view::{self, Failure, Page};
use veil_runtime::principals::Role;
use veil_runtime::quality::QualityReport;
use veil_runtime::{budget, clock, settlement};
use veil_sdk::api::{
    ApproveGrantRequest, DatasetSchema, DatasetView, GrantRequestView, GrantView, Reason, Violation,
};

/// The navigation link these pages sit under.
const NAV: &str = "/console/bureau/catalog";
/// Months a grant's budget chart shows at most (the latest ones).
pub const CHART_MONTHS_MAX: usize = 12;

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/bureau/catalog", get(catalog))
        .route("/bureau/datasets/{id}", get(dataset))
        .route("/bureau/grants/{id}", get(grant))
        .route("/bureau/asset-register.csv", get(register_csv))
        .route("/bureau/grant-requests/{id}/approve", post(approve))
        .route("/bureau/grant-requests/{id}/reject", post(reject))
}

#[derive(Template)]
#[template(path = "bureau/catalog.html")]
struct CatalogPage {
    page: Page,
    datasets: Vec<DatasetView>,
    grants: Vec<GrantView>,
    pending: Vec<GrantRequestView>,
    decided: Vec<GrantRequestView>,
    overdue: usize,
    error: Option<String>,
    error_rules: Vec<Violation>,
}

async fn catalog(State(console): State<Arc<Console>>, who: Signed) -> Result<Response, Failure> {
    view::require(&who, "the catalog", Role::Bureau)?;
    catalog_page(&console, &who, None).await
}

/// The catalog, with a refused decision shown in place when there is one.
async fn catalog_page(
    console: &Arc<Console>,
    who: &Signed,
    error: Option<Failure>,
) -> Result<Response, Failure> {
    let api = Api::new(console, who);
    let datasets: Vec<DatasetView> = api.get("/datasets").await?;
    let mut grants: Vec<GrantView> = api.get("/grants").await?;
    grants.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    let requests: Vec<GrantRequestView> = api.get("/grant-requests").await?;
    // The API lists requests oldest first: the pending ones keep that order (the longest
    // waiting on top), the decided ones show the latest first.
    let (pending, mut decided): (Vec<_>, Vec<_>) =
        requests.into_iter().partition(|r| r.state == "pending");
    decided.sort_by(|a, b| b.decided_at.cmp(&a.decided_at));
    let overdue = pending.iter().filter(|r| r.overdue).count();
    let (error, error_rules, status) = view::in_place(error);
    let mut response = view::render(&CatalogPage {
        page: Page::new("Catalog 目录", who, NAV),
        datasets,
        grants,
        pending,
        decided,
        overdue,
        error,
        error_rules,
    });
    *response.status_mut() = status;
    Ok(response)
}

/// A refusal to show on the page it came from: its message, rules and status.

#[derive(Template)]
#[template(path = "bureau/dataset.html")]
struct DatasetPage {
    page: Page,
    schema: DatasetSchema,
    report: Option<QualityReport>,
    /// Why there is no report (a dataset registered before Veil made them).
    report_missing: Option<String>,
    blocking: Vec<String>,
    notes: Vec<String>,
    versions: Vec<veil_runtime::catalog::Version>,
    card: veil_runtime::assets::AssetCard,
}

/// The asset register as the finance department takes it: the API's CSV, saved as a file.
async fn register_csv(
    State(console): State<Arc<Console>>,
    who: Signed,
) -> Result<Response, Failure> {
    view::require(&who, "the asset register", Role::Bureau)?;
    let mut response = Api::new(&console, &who)
        .raw("/asset-register?format=csv")
        .await?;
    response.headers_mut().insert(
        axum::http::header::CONTENT_DISPOSITION,
        axum::http::HeaderValue::from_static("attachment; filename=\"asset-register.csv\""),
    );
    Ok(response)
}

async fn dataset(
    State(console): State<Arc<Console>>,
    who: Signed,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    view::require(&who, "a dataset's page", Role::Bureau)?;
    let api = Api::new(&console, &who);
    let schema: DatasetSchema = api.get(&format!("/datasets/{}", segment(&id))).await?;
    // The report holds values from the data: the bureau, who owns it, may read them; the API
    // refuses it to anyone else.
    let (report, report_missing) = match api
        .get::<QualityReport>(&format!("/datasets/{}/quality", segment(&schema.id)))
        .await
    {
        Ok(report) => (Some(report), None),
        Err(failure) => {
            let (status, message, rules) = failure.parts();
            if status != StatusCode::NOT_FOUND {
                return Err(failure_of(status, message, rules));
            }
            (None, Some(message))
        }
    };
    let (blocking, notes) = report
        .as_ref()
        .map(|r| (r.blocking(), r.notes()))
        .unwrap_or_default();
    let card: veil_runtime::assets::AssetCard = api
        .get(&format!("/datasets/{}/card", segment(&schema.id)))
        .await?;
    let dataset_id = schema.id.clone();
    let versions = console
        .app
        .stores
        .with(move |store| {
            let dataset = veil_runtime::catalog::get(store, &dataset_id)?;
            veil_runtime::catalog::versions(store, &dataset)
        })
        .await?;
    Ok(view::render(&DatasetPage {
        page: Page::new(format!("Dataset {}", schema.name), &who, NAV),
        schema,
        report,
        report_missing,
        blocking,
        notes,
        versions,
        card,
    }))
}

/// A failure put back together after [`Failure::parts`] took it apart.
fn failure_of(status: StatusCode, message: String, violations: Vec<Violation>) -> Failure {
    Failure::from_api(
        status,
        veil_sdk::api::ErrorBody {
            // The page shows the message and the rules; the kind only fixed the status.
            kind: veil_sdk::api::ErrorKind::Internal,
            message,
            violations,
        },
    )
}

/// One month of a grant's budget.
#[derive(Debug, Clone, PartialEq)]
struct MonthUse {
    period: String,
    epsilon: f64,
    /// δ spent, as a reader writes it (`0`, `5e-6`).
    delta: String,
}

#[derive(Template)]
#[template(path = "bureau/grant.html")]
struct GrantPage {
    page: Page,
    grant: GrantView,
    /// The grant's datasets: (id, name), the name empty for one no longer listed.
    datasets: Vec<(String, String)>,
    months: Vec<MonthUse>,
    chart: String,
    in_term: bool,
}

async fn grant(
    State(console): State<Arc<Console>>,
    who: Signed,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    view::require(&who, "a grant's page", Role::Bureau)?;
    let api = Api::new(&console, &who);
    // The API has no route for one grant; the list is the bureau's, all of them.
    let grants: Vec<GrantView> = api.get("/grants").await?;
    let grant = grants.into_iter().find(|g| g.id == id).ok_or_else(|| {
        failure_of(
            StatusCode::NOT_FOUND,
            format!("no grant `{id}`; the catalog lists every grant"),
            Vec::new(),
        )
    })?;
    let all: Vec<DatasetView> = api.get("/datasets").await?;
    let datasets = grant
        .datasets
        .iter()
        .map(|d| {
            let name = all
                .iter()
                .find(|v| &v.id == d)
                .map(|v| v.name.clone())
                .unwrap_or_default();
            (d.clone(), name)
        })
        .collect();
    let now = clock::period_of(clock::now());
    let periods = chart_months(&grant.valid_from, &grant.valid_to, &now);
    let grant_id = grant.id.clone();
    let asked = periods.clone();
    let spent = console
        .app
        .stores
        .with(move |store| {
            asked
                .iter()
                .map(|text| {
                    let period = settlement::parse_period(text)?;
                    budget::spent_by_grant(store.conn(), &grant_id, &period)
                })
                .collect::<veil_runtime::error::Result<Vec<_>>>()
        })
        .await?;
    let months: Vec<MonthUse> = periods
        .into_iter()
        .zip(spent)
        .map(|(period, spent)| MonthUse {
            period,
            epsilon: spent.micro_epsilon.epsilon(),
            delta: delta_text(spent.pico_delta.delta()),
        })
        .collect();
    let chart = charts::bars(
        "ε spent per month 每月预算使用",
        &months.iter().map(|m| m.period.clone()).collect::<Vec<_>>(),
        &months.iter().map(|m| m.epsilon).collect::<Vec<_>>(),
        "ε",
        Some(grant.epsilon_per_month),
    );
    let today = clock::today().format("%Y-%m-%d").to_string();
    let in_term = grant.valid_from <= today && today <= grant.valid_to;
    Ok(view::render(&GrantPage {
        page: Page::new(format!("Grant {}", grant.id), &who, NAV),
        grant,
        datasets,
        months,
        chart,
        in_term,
    }))
}

/// A δ as a reader writes it: `0`, or in scientific notation (`1e-6`).
fn delta_text(delta: f64) -> String {
    if delta == 0.0 {
        "0".to_string()
    } else {
        format!("{delta:e}")
    }
}

/// The months a grant's chart shows, `YYYY-MM`, oldest first: from the month its term
/// starts to the current month or the month it ends, whichever is earlier — the latest
/// [`CHART_MONTHS_MAX`] of them. None for a grant whose term has not begun.
fn chart_months(valid_from: &str, valid_to: &str, now: &str) -> Vec<String> {
    let first_of = |text: &str| {
        text.get(..7)
            .and_then(|month| NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d").ok())
    };
    let (Some(start), Some(now)) = (first_of(valid_from), first_of(now)) else {
        return Vec::new();
    };
    let end = first_of(valid_to).map_or(now, |to| to.min(now));
    let mut months = Vec::new();
    let mut month = start;
    while month <= end {
        months.push(month.format("%Y-%m").to_string());
        match month.checked_add_months(Months::new(1)) {
            Some(next) => month = next,
            None => break,
        }
    }
    let skip = months.len().saturating_sub(CHART_MONTHS_MAX);
    months.split_off(skip)
}

/// The approval form: the ε per month granted, blank for what was asked.
#[derive(Debug, Deserialize)]
pub(crate) struct ApproveForm {
    #[serde(default)]
    epsilon_per_month: String,
}

impl ApproveForm {
    fn to_request(&self) -> Result<ApproveGrantRequest, Failure> {
        let text = self.epsilon_per_month.trim();
        if text.is_empty() {
            return Ok(ApproveGrantRequest::default());
        }
        let epsilon = text.parse::<f64>().map_err(|_| {
            Failure::invalid(format!(
                "ε per month is `{text}`; write a number (e.g. 2.5), or leave it blank to grant what was asked"
            ))
        })?;
        Ok(ApproveGrantRequest {
            epsilon_per_month: Some(epsilon),
        })
    }
}

async fn approve(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<ApproveForm>,
) -> Result<Response, Failure> {
    let Posted { who, form } = posted;
    view::require(&who, "approving a grant request", Role::Bureau)?;
    let request = match form.to_request() {
        Ok(request) => request,
        Err(failure) => return catalog_page(&console, &who, Some(failure)).await,
    };
    let path = format!("/grant-requests/{}/approve", segment(&id));
    match Api::new(&console, &who)
        .post::<_, GrantRequestView>(&path, &request)
        .await
    {
        Ok(_) => Ok(Redirect::to("/console/bureau/catalog#requests").into_response()),
        Err(failure) => catalog_page(&console, &who, Some(failure)).await,
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReasonForm {
    reason: String,
}

async fn reject(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<ReasonForm>,
) -> Result<Response, Failure> {
    let Posted { who, form } = posted;
    view::require(&who, "rejecting a grant request", Role::Bureau)?;
    let path = format!("/grant-requests/{}/reject", segment(&id));
    let body = Reason {
        reason: form.reason,
    };
    match Api::new(&console, &who)
        .post::<_, GrantRequestView>(&path, &body)
        .await
    {
        Ok(_) => Ok(Redirect::to("/console/bureau/catalog#requests").into_response()),
        Err(failure) => catalog_page(&console, &who, Some(failure)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grants_months_run_from_its_start_to_now_or_its_end() {
        assert_eq!(
            chart_months("2026-10-15", "2027-12-31", "2026-12"),
            ["2026-10", "2026-11", "2026-12"]
        );
        // An ended term stops at its last month.
        assert_eq!(
            chart_months("2026-01-01", "2026-02-28", "2026-12"),
            ["2026-01", "2026-02"]
        );
        // Not begun yet: nothing to chart.
        assert!(chart_months("2027-01-01", "2027-12-31", "2026-12").is_empty());
        // At most the latest twelve.
        let long = chart_months("2024-01-01", "2030-01-01", "2026-12");
        assert_eq!(long.len(), CHART_MONTHS_MAX);
        assert_eq!(long.first().map(String::as_str), Some("2026-01"));
        assert_eq!(long.last().map(String::as_str), Some("2026-12"));
    }

    #[test]
    fn a_blank_grant_gives_what_was_asked_and_a_word_is_refused() {
        let blank = ApproveForm {
            epsilon_per_month: " ".into(),
        };
        assert_eq!(
            blank.to_request().ok(),
            Some(ApproveGrantRequest::default())
        );
        let word = ApproveForm {
            epsilon_per_month: "lots".into(),
        };
        let (status, message, _) = word.to_request().err().map(Failure::parts).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("`lots`"), "{message}");
    }
}
