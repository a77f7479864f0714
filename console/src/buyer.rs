//! The storefront and the product pages.
//!
//! A buyer sees the products on offer, each with its listing card (template, purpose, columns,
//! sources with their acquisition dates, ε, k, rows, price — every figure from the signed
//! manifest), buys one, downloads its files and verifies them offline with the platform key
//! and the one-line command the page prints. Its purchases list marks the ones the bureau
//! recalled. The product page serves the bureau and the operator that made it too (with the
//! listing and recall forms); the API decides who may see and download what.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::Console;
use crate::api::{Api, segment};
use crate::session::{NoFields, Posted, Signed};
use crate::view::{self, Failure, Page};
use veil_runtime::principals::Role;
use veil_sdk::api::{
    ListForSale, OfferCard, PlatformKey, ProductView, PurchaseView, Reason, RecallView,
};

/// Offers the storefront shows at most, newest first.
pub const OFFERS_SHOWN_MAX: usize = 200;

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/store", get(store))
        .route("/store/{id}/buy", post(buy))
        .route("/purchases", get(purchases))
        .route("/products/{id}", get(product))
        .route("/products/{id}/files/{name}", get(file))
        .route("/products/{id}/listing", post(list_for_sale))
        .route("/products/{id}/recall", post(recall))
}

/// The command that verifies a downloaded product offline, with the platform's key.
fn verify_command(key: &PlatformKey) -> String {
    format!(
        "veil product verify DOWNLOADED_FOLDER --public-key {}",
        key.public_key_hex
    )
}

struct Offer {
    card: OfferCard,
    bought: bool,
}

#[derive(Template)]
#[template(path = "buyer/store.html")]
struct StorePage {
    page: Page,
    offers: Vec<Offer>,
    key: PlatformKey,
    verify: String,
}

async fn store(State(console): State<Arc<Console>>, who: Signed) -> Result<Response, Failure> {
    view::require(&who, "the store", Role::Buyer)?;
    let api = Api::new(&console, &who);
    let mut listed: Vec<ProductView> = api.get("/offers").await?;
    listed.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    listed.truncate(OFFERS_SHOWN_MAX);
    let bought: Vec<PurchaseView> = api.get("/purchases").await?;
    let mut offers = Vec::with_capacity(listed.len());
    for product in listed {
        let card: OfferCard = api
            .get(&format!("/offers/{}", segment(&product.id)))
            .await?;
        offers.push(Offer {
            bought: bought.iter().any(|p| p.product_id == card.product_id),
            card,
        });
    }
    let key: PlatformKey = api.get("/platform/key").await?;
    Ok(view::render(&StorePage {
        page: Page::new("Data products 数据产品", &who, "/console/store"),
        offers,
        verify: verify_command(&key),
        key,
    }))
}

async fn buy(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<NoFields>,
) -> Result<Response, Failure> {
    view::require(&posted.who, "buying", Role::Buyer)?;
    let purchase: PurchaseView = Api::new(&console, &posted.who)
        .post(
            &format!("/products/{}/purchase", segment(&id)),
            &serde_json::json!({}),
        )
        .await?;
    Ok(Redirect::to(&format!(
        "/console/products/{}",
        segment(&purchase.product_id)
    ))
    .into_response())
}

#[derive(Template)]
#[template(path = "buyer/purchases.html")]
struct PurchasesPage {
    page: Page,
    purchases: Vec<crate::disputes::PurchaseRow>,
    verify: String,
}

async fn purchases(State(console): State<Arc<Console>>, who: Signed) -> Result<Response, Failure> {
    view::require(&who, "purchases", Role::Buyer)?;
    let api = Api::new(&console, &who);
    let mut purchases: Vec<PurchaseView> = api.get("/purchases").await?;
    purchases.sort_by(|a, b| b.at.cmp(&a.at));
    let purchases = crate::disputes::purchase_rows(&api, purchases).await?;
    let key: PlatformKey = api.get("/platform/key").await?;
    Ok(view::render(&PurchasesPage {
        page: Page::new("Your purchases 已购产品", &who, "/console/purchases"),
        purchases,
        verify: verify_command(&key),
    }))
}

#[derive(Template)]
#[template(path = "buyer/product.html")]
struct ProductPage {
    page: Page,
    product: ProductView,
    card: Option<OfferCard>,
    /// Whether this principal may download its files now.
    downloadable: bool,
    /// Whether it may set the price (the bureau, or the operator that made it).
    may_list: bool,
    is_bureau: bool,
    is_buyer: bool,
    verify: String,
}

async fn product(
    State(console): State<Arc<Console>>,
    who: Signed,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let api = Api::new(&console, &who);
    let product: ProductView = api.get(&format!("/products/{}", segment(&id))).await?;
    let role = who.principal.role;
    // The listing card exists only for a product on offer.
    let card = match product.price_fen {
        Some(_) if !product.recalled => api
            .get::<OfferCard>(&format!("/offers/{}", segment(&product.id)))
            .await
            .ok(),
        _ => None,
    };
    let bought = role == Role::Buyer
        && api
            .get::<Vec<PurchaseView>>("/purchases")
            .await?
            .iter()
            .any(|p| p.product_id == product.id);
    let key: PlatformKey = api.get("/platform/key").await?;
    Ok(view::render(&ProductPage {
        page: Page::new(format!("Product {}", product.id), &who, nav_for(role)),
        downloadable: match role {
            Role::Buyer => bought && !product.recalled,
            Role::Operator => !product.recalled,
            Role::Bureau => true,
            Role::Provider => false,
        },
        may_list: matches!(role, Role::Bureau | Role::Operator) && !product.recalled,
        is_bureau: role == Role::Bureau,
        is_buyer: role == Role::Buyer,
        card,
        product,
        verify: verify_command(&key),
    }))
}

fn nav_for(role: Role) -> &'static str {
    match role {
        Role::Buyer => "/console/purchases",
        Role::Operator => "/console/operator",
        _ => "/console/jobs",
    }
}

/// A product's file, downloaded through the API (which checks who may, and records a buyer's
/// download) and saved by the browser under its own name.
async fn file(
    State(console): State<Arc<Console>>,
    who: Signed,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, Failure> {
    // Product files have plain names (`result.parquet`, `manifest.json`); anything else is not
    // one, and could not be put in a header safely.
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Failure::invalid(format!(
            "`{}` is not a product file's name",
            name.escape_default()
        )));
    }
    let mut response = Api::new(&console, &who)
        .raw(&format!(
            "/products/{}/files/{}",
            segment(&id),
            segment(&name)
        ))
        .await?;
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .map_err(|_| Failure::internal("naming a download"))?;
    response
        .headers_mut()
        .insert(header::CONTENT_DISPOSITION, disposition);
    Ok(response)
}

#[derive(Deserialize)]
pub(crate) struct PriceForm {
    price_fen: String,
}

async fn list_for_sale(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<PriceForm>,
) -> Result<Response, Failure> {
    let price_fen: i64 = posted.form.price_fen.trim().parse().map_err(|_| {
        Failure::invalid(format!(
            "the price is `{}`; write a whole number of fen (1 yuan = 100 fen)",
            posted.form.price_fen.trim()
        ))
    })?;
    let _: ProductView = Api::new(&console, &posted.who)
        .post(
            &format!("/products/{}/listing", segment(&id)),
            &ListForSale { price_fen },
        )
        .await?;
    Ok(Redirect::to(&format!("/console/products/{}", segment(&id))).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ReasonForm {
    reason: String,
}

async fn recall(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<ReasonForm>,
) -> Result<Response, Failure> {
    let _: RecallView = Api::new(&console, &posted.who)
        .post(
            &format!("/products/{}/recall", segment(&id)),
            &Reason {
                reason: posted.form.reason,
            },
        )
        .await?;
    Ok(Redirect::to(&format!("/console/products/{}", segment(&id))).into_response())
}
