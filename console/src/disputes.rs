//! Disputes in the console: a buyer disputes a purchase from its purchases page, the bureau
//! upholds (refunds) or rejects it on `bureau/disputes`.
//!
//! Every read and action goes through the API (`/v1/disputes…`), so the buyer-only and
//! own-purchase checks, the bounded reason and the refund are exactly the API's.

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
use veil_sdk::api::{DisputeView, OpenDispute, PurchaseView, Reason};

/// Where the bureau's disputes page lives (also its navigation link).
pub const BUREAU_PAGE: &str = "/console/bureau/disputes";

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/purchases/{id}/dispute", post(open))
        .route("/bureau/disputes", get(bureau_page))
        .route("/bureau/disputes/{id}/uphold", post(uphold))
        .route("/bureau/disputes/{id}/reject", post(reject))
}

/// A purchase on the buyer's purchases page, with its latest dispute.
pub struct PurchaseRow {
    pub purchase: PurchaseView,
    pub dispute: Option<DisputeView>,
    /// No dispute on it is open or upheld, so the buyer may open one.
    pub may_dispute: bool,
}

/// The buyer's purchases with their disputes, for `buyer/purchases.html`.
pub(crate) async fn purchase_rows(
    api: &Api<'_>,
    purchases: Vec<PurchaseView>,
) -> Result<Vec<PurchaseRow>, Failure> {
    let disputes: Vec<DisputeView> = api.get("/disputes").await?;
    Ok(purchases
        .into_iter()
        .map(|purchase| {
            let mine: Vec<&DisputeView> = disputes
                .iter()
                .filter(|d| d.purchase_id == purchase.id)
                .collect();
            let may_dispute = mine.iter().all(|d| d.state == "rejected");
            PurchaseRow {
                dispute: mine.last().map(|d| (*d).clone()),
                may_dispute,
                purchase,
            }
        })
        .collect())
}

#[derive(Deserialize)]
pub(crate) struct ReasonForm {
    reason: String,
}

async fn open(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<ReasonForm>,
) -> Result<Response, Failure> {
    view::require(&posted.who, "disputing a purchase", Role::Buyer)?;
    let _: DisputeView = Api::new(&console, &posted.who)
        .post(
            "/disputes",
            &OpenDispute {
                purchase: id,
                reason: posted.form.reason,
            },
        )
        .await?;
    Ok(Redirect::to("/console/purchases").into_response())
}

#[derive(Template)]
#[template(path = "bureau/disputes.html")]
struct BureauPage {
    page: Page,
    disputes: Vec<DisputeView>,
    reason_bytes_max: usize,
}

async fn bureau_page(
    State(console): State<Arc<Console>>,
    who: Signed,
) -> Result<Response, Failure> {
    view::require(&who, "disputes", Role::Bureau)?;
    let mut disputes: Vec<DisputeView> = Api::new(&console, &who).get("/disputes").await?;
    // Open disputes first (they wait for the bureau), then the newest.
    disputes.sort_by(|a, b| {
        (b.state == "open")
            .cmp(&(a.state == "open"))
            .then(b.opened_at.cmp(&a.opened_at))
    });
    Ok(view::render(&BureauPage {
        page: Page::new("Disputes 争议", &who, BUREAU_PAGE),
        disputes,
        reason_bytes_max: veil_runtime::disputes::REASON_BYTES_MAX,
    }))
}

async fn decide(
    console: &Arc<Console>,
    id: &str,
    decision: &str,
    posted: Posted<ReasonForm>,
) -> Result<Response, Failure> {
    let _: DisputeView = Api::new(console, &posted.who)
        .post(
            &format!("/disputes/{}/{decision}", segment(id)),
            &Reason {
                reason: posted.form.reason,
            },
        )
        .await?;
    Ok(Redirect::to(BUREAU_PAGE).into_response())
}

async fn uphold(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<ReasonForm>,
) -> Result<Response, Failure> {
    decide(&console, &id, "uphold", posted).await
}

async fn reject(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<ReasonForm>,
) -> Result<Response, Failure> {
    decide(&console, &id, "reject", posted).await
}
