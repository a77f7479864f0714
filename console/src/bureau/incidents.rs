//! Incidents: the bureau's emergency stop and its log. The freeze switch freezes the platform,
//! a dataset, an operator or a grant, with a reason and optionally with downloads blocked; the
//! incident log lists every freeze, who imposed and who lifted it, when and why, with a lift
//! form on each active one. Every action goes through the API (`POST /freezes`,
//! `POST /freezes/{id}/lift`, `GET /freezes`), so its checks and messages are the API's.

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
use crate::view::{self, Failure, Page};
use veil_runtime::principals::Role;
use veil_sdk::api::{FreezeRequest, FreezeView, Reason, Violation};

/// The navigation link this page sits under.
const NAV: &str = "/console/bureau/incidents";
/// The scopes the freeze switch offers, in its order.
const SCOPES: [&str; 4] = ["platform", "dataset", "operator", "grant"];

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/bureau/incidents", get(list))
        .route("/bureau/incidents/freeze", post(freeze))
        .route("/bureau/incidents/{id}/lift", post(lift))
}

#[derive(Template)]
#[template(path = "bureau/incidents.html")]
struct IncidentsPage {
    page: Page,
    scopes: Vec<&'static str>,
    active: Vec<FreezeView>,
    log: Vec<FreezeView>,
    /// What the freeze form held, shown again after a refusal.
    form: FreezeForm,
    error: Option<String>,
    error_rules: Vec<Violation>,
}

/// The freeze switch's fields, as posted.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct FreezeForm {
    #[serde(default)]
    scope: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    reason: String,
    /// Present (`on`) when the box is ticked.
    #[serde(default)]
    block_downloads: Option<String>,
}

impl FreezeForm {
    fn to_request(&self) -> FreezeRequest {
        let target = self.target.trim();
        FreezeRequest {
            scope: self.scope.trim().to_string(),
            target: (!target.is_empty()).then(|| target.to_string()),
            reason: self.reason.clone(),
            block_downloads: self.block_downloads.is_some(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LiftForm {
    #[serde(default)]
    reason: String,
}

async fn list(State(console): State<Arc<Console>>, who: Signed) -> Result<Response, Failure> {
    view::require(&who, "the incident log", Role::Bureau)?;
    incidents_page(&console, &who, FreezeForm::default(), None).await
}

async fn incidents_page(
    console: &Arc<Console>,
    who: &Signed,
    form: FreezeForm,
    error: Option<Failure>,
) -> Result<Response, Failure> {
    let log: Vec<FreezeView> = Api::new(console, who).get("/freezes").await?;
    let active = log.iter().filter(|f| f.active).cloned().collect();
    let (error, error_rules, status) = view::in_place(error);
    let mut response = view::render(&IncidentsPage {
        page: Page::new("Incidents 应急", who, NAV),
        scopes: SCOPES.to_vec(),
        active,
        log,
        form,
        error,
        error_rules,
    });
    *response.status_mut() = status;
    Ok(response)
}

async fn freeze(
    State(console): State<Arc<Console>>,
    posted: Posted<FreezeForm>,
) -> Result<Response, Failure> {
    let Posted { who, form } = posted;
    view::require(&who, "freezing", Role::Bureau)?;
    let frozen = Api::new(&console, &who)
        .post::<_, FreezeView>("/freezes", &form.to_request())
        .await;
    match frozen {
        Ok(_) => Ok(Redirect::to(NAV).into_response()),
        Err(failure) => incidents_page(&console, &who, form, Some(failure)).await,
    }
}

async fn lift(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<LiftForm>,
) -> Result<Response, Failure> {
    let Posted { who, form } = posted;
    view::require(&who, "lifting a freeze", Role::Bureau)?;
    let lifted = Api::new(&console, &who)
        .post::<_, FreezeView>(
            &format!("/freezes/{}/lift", segment(&id)),
            &Reason {
                reason: form.reason,
            },
        )
        .await;
    match lifted {
        Ok(_) => Ok(Redirect::to(NAV).into_response()),
        Err(failure) => incidents_page(&console, &who, FreezeForm::default(), Some(failure)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freeze_form_sends_no_target_when_blank_and_reads_the_checkbox() {
        let form = FreezeForm {
            scope: " platform ".into(),
            target: "  ".into(),
            reason: "drill".into(),
            block_downloads: Some("on".into()),
        };
        let request = form.to_request();
        assert_eq!(request.scope, "platform");
        assert_eq!(request.target, None);
        assert!(request.block_downloads);
        let unticked = FreezeForm {
            target: "ds-1".into(),
            ..FreezeForm::default()
        };
        assert_eq!(unticked.to_request().target.as_deref(), Some("ds-1"));
        assert!(!unticked.to_request().block_downloads);
    }
}
