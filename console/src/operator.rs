//! The operator's pages: its templates and where each stands, its grants with the budget left
//! this month, its released products, and per approved template a job form with the
//! template's parameters — check it (the API's dry run: price, ε left after, accuracy) or run
//! it. Everything goes through the API as the operator, so the operator sees what
//! `veil client` shows it and nothing more.
//!
//! Providers, who have no pages of their own in the scope, get one read-only page here
//! too: what their datasets were used for and earned (the API's `GET /v1/usage`).

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::Console;
use crate::api::{Api, segment};
use crate::session::{Posted, Signed};
use crate::view::{self, Failure, Page, Token};
use veil_runtime::principals::Role;
use veil_runtime::settlement::DatasetUsage;
use veil_runtime::{budget, clock, settlement};
use veil_sdk::api::{
    DryRun, GrantView, JobView, ProductView, SubmitJob, Submitted, TemplateView, Violation,
};

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/operator", get(home))
        .route("/operator/templates/{id}", get(template))
        .route("/operator/templates/{id}/run", post(run))
        .route("/provider", get(provider))
}

/// One of an operator's grants with this month's budget (its own page, and the bureau's
/// approval page for the operator's templates).
pub(crate) struct Budget {
    pub(crate) grant: GrantView,
    pub(crate) spent: String,
    pub(crate) left: String,
    pub(crate) in_term: bool,
}

#[derive(Template)]
#[template(path = "operator/home.html")]
struct HomePage {
    page: Page,
    templates: Vec<TemplateView>,
    budgets: Vec<Budget>,
    period: String,
    products: Vec<ProductView>,
    jobs: Vec<JobView>,
}

/// Jobs the operator's first page lists, newest first (the jobs page lists them all).
const RECENT_JOBS_MAX: usize = 10;

async fn home(State(console): State<Arc<Console>>, who: Signed) -> Result<Response, Failure> {
    view::require(&who, "the operator's page", Role::Operator)?;
    let api = Api::new(&console, &who);
    let mut templates: Vec<TemplateView> = api.get("/templates").await?;
    templates.sort_by(|a, b| b.submitted_at.cmp(&a.submitted_at));
    let grants: Vec<GrantView> = api.get("/grants").await?;
    let mut products: Vec<ProductView> = api.get("/products").await?;
    products.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    let mut jobs: Vec<JobView> = api.get("/jobs").await?;
    jobs.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    jobs.truncate(RECENT_JOBS_MAX);
    let period = clock::period_of(clock::now());
    let budgets = budgets(&console, grants, &period).await?;
    Ok(view::render(&HomePage {
        page: Page::new("Templates and budget 模板与预算", &who, "/console/operator"),
        templates,
        budgets,
        period,
        products,
        jobs,
    }))
}

/// The ε each grant spent in `period`, with what is left (for an operator, its own grants,
/// which the API already limited to it).
pub(crate) async fn budgets(
    console: &Arc<Console>,
    grants: Vec<GrantView>,
    period: &str,
) -> Result<Vec<Budget>, Failure> {
    let ids: Vec<String> = grants.iter().map(|g| g.id.clone()).collect();
    let period = period.to_string();
    let spent = console
        .app
        .stores
        .with(move |store| {
            let period = settlement::parse_period(&period)?;
            ids.iter()
                .map(|id| budget::spent_by_grant(store.conn(), id, &period))
                .collect::<veil_runtime::error::Result<Vec<_>>>()
        })
        .await?;
    let today = clock::today().format("%Y-%m-%d").to_string();
    Ok(grants
        .into_iter()
        .zip(spent)
        .map(|(grant, spent)| {
            let allowed = (grant.epsilon_per_month * 1e6).round() as i64;
            let spent = spent.micro_epsilon.0;
            Budget {
                in_term: grant.valid_from <= today && today <= grant.valid_to,
                spent: view::epsilon(spent),
                left: view::epsilon((allowed - spent).max(0)),
                grant,
            }
        })
        .collect())
}

/// The job form's fields: one per template parameter (`p.<name>`), the grant, and which
/// button was pressed.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct JobForm {
    #[serde(default)]
    grant: String,
    #[serde(default)]
    action: String,
    #[serde(flatten)]
    rest: BTreeMap<String, String>,
}

impl JobForm {
    fn submit(&self, template: &str) -> SubmitJob {
        SubmitJob {
            template: template.to_string(),
            params: self
                .rest
                .iter()
                .filter_map(|(k, v)| k.strip_prefix("p.").map(|k| (k.to_string(), v.clone())))
                .collect(),
            grant: (!self.grant.is_empty()).then(|| self.grant.clone()),
        }
    }
}

/// One parameter's field on the form.
struct Field {
    name: String,
    kind: String,
    allowed: Option<Vec<String>>,
    value: String,
}

#[derive(Template)]
#[template(path = "operator/template.html")]
struct TemplatePage {
    page: Page,
    template: TemplateView,
    sql: Vec<Token>,
    fields: Vec<Field>,
    grants: Vec<GrantView>,
    grant: String,
    check: Option<DryRun>,
    error: Option<String>,
    error_rules: Vec<Violation>,
}

async fn template(
    State(console): State<Arc<Console>>,
    who: Signed,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    view::require(&who, "running a template", Role::Operator)?;
    template_page(&console, &who, &id, &JobForm::default(), None, None).await
}

async fn template_page(
    console: &Arc<Console>,
    who: &Signed,
    id: &str,
    form: &JobForm,
    check: Option<DryRun>,
    error: Option<Failure>,
) -> Result<Response, Failure> {
    let api = Api::new(console, who);
    let template: TemplateView = api.get(&format!("/templates/{}", segment(id))).await?;
    let today = clock::today().format("%Y-%m-%d").to_string();
    let grants: Vec<GrantView> = api
        .get::<Vec<GrantView>>("/grants")
        .await?
        .into_iter()
        .filter(|g| g.valid_from <= today && today <= g.valid_to)
        .collect();
    let fields = template
        .spec
        .params
        .iter()
        .map(|p| Field {
            value: form
                .rest
                .get(&format!("p.{}", p.name))
                .cloned()
                .unwrap_or_default(),
            name: p.name.clone(),
            kind: format!("{:?}", p.kind).to_lowercase(),
            allowed: p.allowed.clone(),
        })
        .collect();
    let (error, error_rules, status) = view::in_place(error);
    let mut response = view::render(&TemplatePage {
        page: Page::new(
            format!("Template {}", template.spec.name),
            who,
            "/console/operator",
        ),
        sql: view::highlight_sql(&template.spec.sql),
        template,
        fields,
        grants,
        grant: form.grant.clone(),
        check,
        error,
        error_rules,
    });
    *response.status_mut() = status;
    Ok(response)
}

async fn run(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<JobForm>,
) -> Result<Response, Failure> {
    let Posted { who, form } = posted;
    view::require(&who, "running a template", Role::Operator)?;
    let api = Api::new(&console, &who);
    // The form names the template by its full id, never by a name another template shares.
    let submit = form.submit(&id);
    if form.action == "check" {
        return match api.post::<_, DryRun>("/jobs/dry-run", &submit).await {
            Ok(check) => template_page(&console, &who, &id, &form, Some(check), None).await,
            Err(failure) => template_page(&console, &who, &id, &form, None, Some(failure)).await,
        };
    }
    match api.post::<_, Submitted>("/jobs", &submit).await {
        Ok(submitted) => Ok(
            Redirect::to(&format!("/console/jobs/{}", segment(&submitted.job.id))).into_response(),
        ),
        Err(failure) => template_page(&console, &who, &id, &form, None, Some(failure)).await,
    }
}

#[derive(Template)]
#[template(path = "operator/provider.html")]
struct ProviderPage {
    page: Page,
    usage: Vec<DatasetUsage>,
}

async fn provider(State(console): State<Arc<Console>>, who: Signed) -> Result<Response, Failure> {
    view::require(&who, "the provider's page", Role::Provider)?;
    let usage: Vec<DatasetUsage> = Api::new(&console, &who).get("/usage").await?;
    Ok(view::render(&ProviderPage {
        page: Page::new("Use of your datasets 数据使用", &who, "/console/provider"),
        usage,
    }))
}
