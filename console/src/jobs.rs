//! Jobs and the meter, for the bureau (every job) and operators (their own): a filterable list
//! and each job's page — its state (refreshing itself while it runs), its meter record, its
//! outcome and its product. Both read the API, so an operator asking for another operator's
//! job by its URL is told it does not exist, exactly as the API tells it.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::Console;
use crate::api::{Api, segment};
use crate::session::{NoFields, Posted, Signed};
use crate::view::{self, Failure, Page};
use veil_runtime::principals::Role;
use veil_sdk::api::{JobView, MeterView};

/// Jobs a list shows at most, newest first.
pub const JOBS_SHOWN_MAX: usize = 500;
/// Seconds between two refreshes of a running job's page.
pub const JOB_REFRESH_SECONDS: u32 = 2;

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/{id}", get(detail))
        .route("/jobs/{id}/cancel", post(cancel))
}

/// The list's filters, each optional.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Filter {
    #[serde(default)]
    state: String,
    #[serde(default)]
    operator: String,
    #[serde(default)]
    template: String,
}

const STATES: [&str; 6] = [
    "queued",
    "running",
    "released",
    "rejected",
    "failed",
    "cancelled",
];

struct Row {
    job: JobView,
    meter: Option<MeterView>,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct ListPage {
    page: Page,
    filter: Filter,
    states: [&'static str; 6],
    rows: Vec<Row>,
    shown_max: usize,
    is_bureau: bool,
}

fn may_see_jobs(who: &Signed) -> Result<(), Failure> {
    match who.principal.role {
        Role::Bureau | Role::Operator => Ok(()),
        _ => Err(Failure::forbidden("jobs", "the bureau or operators")),
    }
}

async fn list(
    State(console): State<Arc<Console>>,
    who: Signed,
    Query(filter): Query<Filter>,
) -> Result<Response, Failure> {
    may_see_jobs(&who)?;
    let api = Api::new(&console, &who);
    let jobs: Vec<JobView> = api.get("/jobs").await?;
    let meter: Vec<MeterView> = api.get("/meter").await?;
    let mut rows: Vec<Row> = jobs
        .into_iter()
        .filter(|j| filter.state.is_empty() || j.state == filter.state)
        .filter(|j| filter.operator.is_empty() || j.operator == filter.operator)
        .filter(|j| filter.template.is_empty() || j.template_id.starts_with(&filter.template))
        .map(|job| Row {
            meter: meter.iter().find(|m| m.job_id == job.id).cloned(),
            job,
        })
        .collect();
    rows.sort_by(|a, b| b.job.created_at.cmp(&a.job.created_at));
    rows.truncate(JOBS_SHOWN_MAX);
    Ok(view::render(&ListPage {
        page: Page::new("Jobs and meter 作业与计量", &who, "/console/jobs"),
        filter,
        states: STATES,
        rows,
        shown_max: JOBS_SHOWN_MAX,
        is_bureau: who.principal.role == Role::Bureau,
    }))
}

#[derive(Template)]
#[template(path = "job.html")]
struct DetailPage {
    page: Page,
    job: JobView,
    meter: Option<MeterView>,
    refresh: Option<u32>,
}

async fn detail(
    State(console): State<Arc<Console>>,
    who: Signed,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    may_see_jobs(&who)?;
    let api = Api::new(&console, &who);
    let job: JobView = api.get(&format!("/jobs/{}", segment(&id))).await?;
    let meter: Vec<MeterView> = api.get("/meter").await?;
    let refresh = (!job.is_finished()).then_some(JOB_REFRESH_SECONDS);
    Ok(view::render(&DetailPage {
        page: Page::new(format!("Job {}", job.id), &who, "/console/jobs"),
        meter: meter.into_iter().find(|m| m.job_id == job.id),
        job,
        refresh,
    }))
}

async fn cancel(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<NoFields>,
) -> Result<Response, Failure> {
    may_see_jobs(&posted.who)?;
    let job: JobView = Api::new(&console, &posted.who)
        .post(
            &format!("/jobs/{}/cancel", segment(&id)),
            &serde_json::json!({}),
        )
        .await?;
    Ok(Redirect::to(&format!("/console/jobs/{}", segment(&job.id))).into_response())
}
