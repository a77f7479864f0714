//! Correction requests: every request operators and buyers filed against a dataset or a
//! product, the overdue flag past ten working days, and the bureau's answer for a provider
//! (accept naming the correcting version, or reject) — through `/v1/corrections`.

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
use veil_runtime::corrections::Correction;
use veil_runtime::principals::Role;
use veil_sdk::api::{AnswerCorrection, Violation};

const NAV: &str = "/console/bureau/corrections";

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/bureau/corrections", get(list))
        .route("/bureau/corrections/{id}/answer", post(answer))
}

#[derive(Template)]
#[template(path = "bureau/corrections.html")]
struct CorrectionsPage {
    page: Page,
    open: Vec<Correction>,
    answered: Vec<Correction>,
    error: Option<String>,
    error_rules: Vec<Violation>,
}

async fn list(State(console): State<Arc<Console>>, who: Signed) -> Result<Response, Failure> {
    view::require(&who, "correction requests", Role::Bureau)?;
    page(&console, &who, None).await
}

async fn page(
    console: &Arc<Console>,
    who: &Signed,
    error: Option<Failure>,
) -> Result<Response, Failure> {
    let all: Vec<Correction> = Api::new(console, who).get("/corrections").await?;
    let (open, mut answered): (Vec<_>, Vec<_>) = all.into_iter().partition(|c| c.state == "open");
    answered.sort_by(|a, b| b.answered_at.cmp(&a.answered_at));
    let (error, error_rules, status) = view::in_place(error);
    let mut response = view::render(&CorrectionsPage {
        page: Page::new("Correction requests 纠错申请", who, NAV),
        open,
        answered,
        error,
        error_rules,
    });
    *response.status_mut() = status;
    Ok(response)
}

#[derive(Deserialize)]
pub(crate) struct AnswerForm {
    #[serde(default)]
    version: String,
    reason: String,
}

async fn answer(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<AnswerForm>,
) -> Result<Response, Failure> {
    let Posted { who, form } = posted;
    view::require(&who, "answering a correction request", Role::Bureau)?;
    let version = match form.version.trim() {
        "" => None,
        text => match text.parse::<u32>() {
            Ok(version) => Some(version),
            Err(_) => {
                let failure = Failure::invalid(format!(
                    "the version is `{text}`; write the version number that corrects the error, or leave it empty to reject"
                ));
                return page(&console, &who, Some(failure)).await;
            }
        },
    };
    let body = AnswerCorrection {
        corrected_in_version: version,
        reason: form.reason,
    };
    match Api::new(&console, &who)
        .post::<_, Correction>(&format!("/corrections/{}/answer", segment(&id)), &body)
        .await
    {
        Ok(_) => Ok(Redirect::to(NAV).into_response()),
        Err(failure) => page(&console, &who, Some(failure)).await,
    }
}
