//! The web console: what the bureau, operators and buyers do in a browser, served by
//! `veil serve` under `/console/` beside the JSON API under `/v1/`.
//!
//! ```text
//! browser ─► /console/… ─► session cookie → Principal (session) ─► page handler
//!                                                                    │
//!                 ┌──────────────── reads and actions ───────────────┤
//!                 ▼                                                  ▼
//!   the API's own handlers, in process (api::Api)        bureau-only views the API has no
//!   — same role and ownership checks, same domain calls   route for (audit, principals,
//!                                                          ledger, charts): the domain directly
//!                 └───────────► askama templates (HTML, escaped) + SVG charts (plotters)
//! ```
//!
//! Read [`router`] (every page and who may open it), then [`session`] (sign-in, the cookie, the
//! CSRF token every form carries), [`api`] (how a page calls the API as its principal), and
//! the pages by role: [`bureau`], [`operator`], [`buyer`], [`jobs`] (shared by the bureau and
//! operators). [`view`] holds what every page shares, [`charts`] the SVG charts.
//!
//! **Security.** Every response carries a strict Content-Security-Policy: no script at all
//! (every action is a form; a running job's page refreshes itself with a `<meta>` tag), styles
//! only from `/console/static/`, no framing. Every text an operator or buyer wrote (template
//! names, SQL, purposes, reasons) reaches the page through askama's HTML escaping. Every
//! `POST` carries the session's CSRF token and is refused without it ([`session::Posted`] is
//! the only way a handler reads a form). The session cookie is `HttpOnly`, `SameSite=Strict`,
//! limited to `/console`, `Secure` when the request came through a TLS proxy, and ends after
//! [`session::SESSION_SECONDS_MAX`] or at once when the principal's key is rotated or revoked.
//! Pages answer with `Cache-Control: no-store`, so an API key shown once is not kept.

pub mod api;
pub mod bureau;
pub mod buyer;
pub mod charts;
pub mod disputes;
pub mod jobs;
pub mod operator;
pub mod session;
pub mod view;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use veil_server::AppState;

/// Where the console lives.
pub const PREFIX: &str = "/console";

/// The Content-Security-Policy of every console response: nothing runs, styles and images
/// come only from the console itself, forms post only to it, no page can frame it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What every console handler shares: the server's state (store, workers), the API's router
/// for in-process calls, and the sessions.
#[derive(Debug)]
pub struct Console {
    pub app: Arc<AppState>,
    pub api: Router,
    pub sessions: session::Sessions,
}

/// Every console page, under [`PREFIX`]. Who may open each is checked in its handler (the
/// API's checks for what the API offers; `view::require` for the rest).
///
/// | pages | roles |
/// |---|---|
/// | `sign-in`, `sign-out`, `static/console.css` | anyone (sign-out: signed in) |
/// | `bureau/queue`, `bureau/templates/{id}` (+ `/approve`, `/reject`, `/revoke`) | bureau |
/// | `bureau/catalog`, `bureau/datasets/{id}`, `bureau/grants/{id}`, `bureau/grant-requests/{id}/…` | bureau |
/// | `bureau/money` (+ `/settle`), `bureau/audit` (+ `/verify`), `bureau/principals` (+ actions) | bureau |
/// | `jobs`, `jobs/{id}` | bureau, operator (own) |
/// | `operator`, `operator/templates/{id}` (+ `/run`) | operator |
/// | `products/{id}`, `products/{id}/files/{name}` | bureau, operator (own), buyer (bought) |
/// | `store`, `store/{id}` (+ `/buy`), `purchases` (+ `purchases/{id}/dispute`) | buyer |
/// | `bureau/disputes` (+ `/{id}/uphold`, `/{id}/reject`) | bureau |
/// | `bureau/incidents` (+ `/freeze`, `/{id}/lift`) | bureau |
pub fn router(app: Arc<AppState>) -> Router {
    let console = Arc::new(Console {
        api: veil_server::routes::router(Arc::clone(&app)),
        app,
        sessions: session::Sessions::default(),
    });
    let pages = Router::new()
        .route("/", get(home))
        .route("/static/console.css", get(stylesheet))
        .route(
            "/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/sign-out", post(session::sign_out))
        .merge(bureau::routes())
        .merge(operator::routes())
        .merge(buyer::routes())
        .merge(disputes::routes())
        .merge(jobs::routes())
        .fallback(not_found)
        .with_state(console);
    // The home page is `/console`; `/console/` is where people type it.
    Router::new()
        .route("/console/", get(|| async { Redirect::to(PREFIX) }))
        .nest(PREFIX, pages)
        .layer(axum::middleware::from_fn(security_headers))
}

/// `/console`: the signed-in principal's first page, or the sign-in page.
async fn home(who: Option<session::Signed>) -> Redirect {
    use veil_runtime::principals::Role;
    match who.map(|who| who.principal.role) {
        None => Redirect::to("/console/sign-in"),
        Some(Role::Bureau) => Redirect::to("/console/bureau/queue"),
        Some(Role::Operator) => Redirect::to("/console/operator"),
        Some(Role::Buyer) => Redirect::to("/console/store"),
        Some(Role::Provider) => Redirect::to("/console/provider"),
    }
}

/// A console address that is no page: the console's own "not found" page, not the API's JSON.
async fn not_found() -> view::Failure {
    view::Failure::not_found()
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/console.css"),
    )
        .into_response()
}

/// The headers every console response carries (see the crate docs).
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
