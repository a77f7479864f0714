//! The approval queue: each submitted template with what the bureau needs to decide on it —
//! its SQL, parameters, the datasets it reads with their policies, the gate's static verdict,
//! the error each output column would have at the terms being chosen, and the operator's
//! grants with the budget left — and the decisions (approve with terms, reject, revoke),
//! through the same API routes `veil client template …` calls.

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
use veil_runtime::{clock, templates};
use veil_sdk::api::{
    ApproveTemplate, DatasetSchema, GrantView, Preview, Reason, TemplateView, Violation,
};

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/bureau/queue", get(queue))
        .route("/bureau/templates/{id}", get(detail))
        .route("/bureau/templates/{id}/approve", post(approve))
        .route("/bureau/templates/{id}/reject", post(reject))
        .route("/bureau/templates/{id}/revoke", post(revoke))
}

#[derive(Template)]
#[template(path = "bureau/queue.html")]
struct QueuePage {
    page: Page,
    pending: Vec<TemplateView>,
    decided: Vec<TemplateView>,
}

async fn queue(State(console): State<Arc<Console>>, who: Signed) -> Result<Response, Failure> {
    view::require(&who, "the approval queue", Role::Bureau)?;
    let all: Vec<TemplateView> = Api::new(&console, &who).get("/templates").await?;
    let (pending, mut decided): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|t| t.state == "submitted");
    decided.sort_by(|a, b| b.decided_at.cmp(&a.decided_at));
    Ok(view::render(&QueuePage {
        page: Page::new("Approval queue 模板审批", &who, "/console/bureau/queue"),
        pending,
        decided,
    }))
}

/// The terms on the approval form, as the bureau typed them (kept as text so a page
/// re-rendered after an error shows exactly what was typed).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TermsForm {
    epsilon: String,
    delta: String,
    k: String,
    max_groups: String,
    max_rows: String,
    price_per_run_fen: String,
    mechanism: String,
    /// `preview` (show the accuracy, decide nothing) or `approve`.
    #[serde(default)]
    action: String,
}

impl Default for TermsForm {
    fn default() -> Self {
        let d = templates::ApprovalRequest::default();
        Self {
            epsilon: String::new(),
            delta: d.delta.to_string(),
            k: d.k.to_string(),
            max_groups: d.max_groups.to_string(),
            max_rows: d.max_rows.to_string(),
            price_per_run_fen: d.price_per_run_fen.to_string(),
            mechanism: "laplace".into(),
            action: String::new(),
        }
    }
}

impl TermsForm {
    /// The API's approval body; a field that is not a number is refused naming it.
    fn to_request(&self) -> Result<ApproveTemplate, Failure> {
        fn number<T: std::str::FromStr>(text: &str, field: &str) -> Result<T, Failure> {
            text.trim().parse().map_err(|_| {
                Failure::invalid(format!("{field} is `{}`; write a number", text.trim()))
            })
        }
        if self.epsilon.trim().is_empty() {
            return Err(Failure::invalid(
                "ε is required: choose the ε one run of this template may spend (e.g. 0.5)",
            ));
        }
        Ok(ApproveTemplate {
            epsilon: Some(number(&self.epsilon, "ε")?),
            delta: Some(number(&self.delta, "δ")?),
            k: Some(number(&self.k, "k")?),
            max_groups: Some(number(&self.max_groups, "max groups")?),
            max_rows: Some(number(&self.max_rows, "max rows")?),
            price_per_run_fen: Some(number(&self.price_per_run_fen, "price per run")?),
            mechanism: Some(self.mechanism.clone()),
            ..ApproveTemplate::default()
        })
    }
}

/// One dataset the template reads, as its policy publishes it.
struct Read {
    schema: DatasetSchema,
}

#[derive(Template)]
#[template(path = "bureau/template.html")]
struct DetailPage {
    page: Page,
    template: TemplateView,
    sql: Vec<Token>,
    reads: Vec<Read>,
    verdict: Vec<Violation>,
    verdict_error: Option<String>,
    grants: Vec<crate::operator::Budget>,
    period: String,
    terms: TermsForm,
    preview: Option<Preview>,
    error: Option<String>,
    error_rules: Vec<Violation>,
}

async fn detail(
    State(console): State<Arc<Console>>,
    who: Signed,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    view::require(&who, "a template's approval page", Role::Bureau)?;
    detail_page(&console, &who, &id, TermsForm::default(), None, None).await
}

async fn detail_page(
    console: &Arc<Console>,
    who: &Signed,
    id: &str,
    terms: TermsForm,
    preview: Option<Preview>,
    error: Option<Failure>,
) -> Result<Response, Failure> {
    let api = Api::new(console, who);
    let template: TemplateView = api.get(&format!("/templates/{}", segment(id))).await?;
    // The gate's static verdict, as it stands now (grants may have changed since it was
    // submitted): the same check submission ran.
    let spec = template.spec.clone();
    let operator = template.operator.clone();
    let (verdict, read_ids) = console
        .app
        .stores
        .with_async(move |store| async move {
            let verdict = templates::static_check(&store, &operator, &spec).await;
            let read = templates::named_datasets(&store, &spec)
                .map(|ds| ds.into_iter().map(|d| d.id.to_string()).collect::<Vec<_>>());
            (store, Ok((verdict, read)))
        })
        .await?;
    let (verdict, verdict_error) = match verdict {
        Ok(()) => (Vec::new(), None),
        Err(veil_runtime::error::Error::Refused(refusal)) => {
            (veil_server::error::violations(&refusal), None)
        }
        Err(other) => {
            let (_, body) = veil_server::error::ApiError::Domain(other).to_body();
            (Vec::new(), Some(body.message))
        }
    };
    let mut reads = Vec::new();
    for dataset in read_ids? {
        let schema: DatasetSchema = api.get(&format!("/datasets/{}", segment(&dataset))).await?;
        reads.push(Read { schema });
    }
    let period = clock::period_of(clock::now());
    let all_grants: Vec<GrantView> = api.get("/grants").await?;
    let today = clock::today().format("%Y-%m-%d").to_string();
    let mine: Vec<GrantView> = all_grants
        .into_iter()
        .filter(|g| {
            g.operator == template.operator
                && g.valid_from.as_str() <= today.as_str()
                && today.as_str() <= g.valid_to.as_str()
        })
        .collect();
    let grants = crate::operator::budgets(console, mine, &period).await?;
    let (error, error_rules, status) = view::in_place(error);
    let page = DetailPage {
        page: Page::new(
            format!("Template {}", template.spec.name),
            who,
            "/console/bureau/queue",
        ),
        sql: view::highlight_sql(&template.spec.sql),
        template,
        reads,
        verdict,
        verdict_error,
        grants,
        period,
        terms,
        preview,
        error,
        error_rules,
    };
    let mut response = view::render(&page);
    *response.status_mut() = status;
    Ok(response)
}

async fn approve(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<TermsForm>,
) -> Result<Response, Failure> {
    let Posted { who, form } = posted;
    view::require(&who, "approving a template", Role::Bureau)?;
    let request = match form.to_request() {
        Ok(request) => request,
        Err(failure) => return detail_page(&console, &who, &id, form, None, Some(failure)).await,
    };
    let api = Api::new(&console, &who);
    let path = format!("/templates/{}", segment(&id));
    if form.action == "preview" {
        return match api
            .post::<_, Preview>(&format!("{path}/preview"), &request)
            .await
        {
            Ok(preview) => detail_page(&console, &who, &id, form, Some(preview), None).await,
            Err(failure) => detail_page(&console, &who, &id, form, None, Some(failure)).await,
        };
    }
    match api
        .post::<_, TemplateView>(&format!("{path}/approve"), &request)
        .await
    {
        Ok(_) => Ok(
            Redirect::to(&format!("/console/bureau/templates/{}", segment(&id))).into_response(),
        ),
        Err(failure) => detail_page(&console, &who, &id, form, None, Some(failure)).await,
    }
}

#[derive(Deserialize)]
pub(crate) struct ReasonForm {
    reason: String,
}

async fn reject(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<ReasonForm>,
) -> Result<Response, Failure> {
    decide(&console, posted, &id, "reject").await
}

async fn revoke(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<ReasonForm>,
) -> Result<Response, Failure> {
    decide(&console, posted, &id, "revoke").await
}

async fn decide(
    console: &Arc<Console>,
    posted: Posted<ReasonForm>,
    id: &str,
    action: &str,
) -> Result<Response, Failure> {
    let Posted { who, form } = posted;
    view::require(&who, "deciding on a template", Role::Bureau)?;
    let body = Reason {
        reason: form.reason,
    };
    let path = format!("/templates/{}/{action}", segment(id));
    match Api::new(console, &who)
        .post::<_, TemplateView>(&path, &body)
        .await
    {
        Ok(_) => {
            Ok(Redirect::to(&format!("/console/bureau/templates/{}", segment(id))).into_response())
        }
        Err(failure) => {
            detail_page(console, &who, id, TermsForm::default(), None, Some(failure)).await
        }
    }
}
