//! Principals: every organisation with a key, and the bureau's actions on them — add one,
//! revoke a key, rotate a key (a new one, shown once). Rotating goes through the API's
//! `POST /principals/{name}/rotate`; adding and revoking, which the API has no route for,
//! call the same `veil_runtime::principals` functions `veil principal add` and `revoke` do
//! (each writes its audit entry).
//!
//! A new key is rendered into the answer to the form that made it, never redirected to or
//! kept: only its hash is stored, and console responses are `Cache-Control: no-store`.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::DateTime;
use serde::Deserialize;

use crate::Console;
use crate::api::{Api, segment};
use crate::session::{NoFields, Posted, Signed};
use crate::view::{self, Failure, Page};
use veil_runtime::clock;
use veil_runtime::principals::{self, KEY_EXPIRY_DAYS_MAX, Principal, Role};
use veil_sdk::api::{RotateKey, RotatedKey, Violation};

/// The navigation link this page sits under.
const NAV: &str = "/console/bureau/principals";
/// The roles the add form offers, in its order.
const ROLES: [Role; 4] = [Role::Operator, Role::Buyer, Role::Provider, Role::Bureau];

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/bureau/principals", get(list))
        .route("/bureau/principals/add", post(add))
        .route("/bureau/principals/{id}/revoke", post(revoke))
        .route("/bureau/principals/{id}/rotate", post(rotate))
}

/// One principal as the list shows it.
struct Row {
    principal: Principal,
    /// `active`, `revoked` or `expired`.
    state: &'static str,
    /// The signed-in principal itself.
    me: bool,
}

/// A key just made, shown this once.
struct NewKey {
    /// `added` or `rotated`.
    what: &'static str,
    key: RotatedKey,
}

#[derive(Template)]
#[template(path = "bureau/principals.html")]
struct PrincipalsPage {
    page: Page,
    rows: Vec<Row>,
    roles: Vec<&'static str>,
    new_key: Option<NewKey>,
    expiry_days_max: u32,
    /// What the add form held, shown again after a refusal.
    add_role: String,
    add_name: String,
    error: Option<String>,
    error_rules: Vec<Violation>,
}

async fn list(State(console): State<Arc<Console>>, who: Signed) -> Result<Response, Failure> {
    view::require(&who, "the principals", Role::Bureau)?;
    principals_page(&console, &who, Shown::default()).await
}

/// What the page shows beyond the list.
#[derive(Default)]
struct Shown {
    new_key: Option<NewKey>,
    add: Option<AddForm>,
    error: Option<Failure>,
}

async fn principals_page(
    console: &Arc<Console>,
    who: &Signed,
    shown: Shown,
) -> Result<Response, Failure> {
    let all = console
        .app
        .stores
        .with(|store| principals::list(store))
        .await?;
    let now = clock::now();
    let rows = all
        .into_iter()
        .map(|principal| Row {
            state: state_of(&principal, now),
            me: principal.id == who.principal.id,
            principal,
        })
        .collect();
    let (error, error_rules, status) = view::in_place(shown.error);
    let add = shown.add.unwrap_or_default();
    let mut response = view::render(&PrincipalsPage {
        page: Page::new("Principals 主体", who, NAV),
        rows,
        roles: ROLES.iter().map(|r| r.as_str()).collect(),
        new_key: shown.new_key,
        expiry_days_max: KEY_EXPIRY_DAYS_MAX,
        add_role: add.role,
        add_name: add.name,
        error,
        error_rules,
    });
    *response.status_mut() = status;
    Ok(response)
}

/// Whether a principal's key works now.
fn state_of(principal: &Principal, now: chrono::DateTime<chrono::Utc>) -> &'static str {
    if principal.revoked_at.is_some() {
        return "revoked";
    }
    let expired = principal
        .key_expires_at
        .as_deref()
        .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
        .is_some_and(|at| at <= now);
    if expired { "expired" } else { "active" }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AddForm {
    #[serde(default)]
    role: String,
    #[serde(default)]
    name: String,
}

async fn add(
    State(console): State<Arc<Console>>,
    posted: Posted<AddForm>,
) -> Result<Response, Failure> {
    let Posted { who, form } = posted;
    view::require(&who, "adding a principal", Role::Bureau)?;
    let role = match principals::parse_role(form.role.trim()) {
        Ok(role) => role,
        Err(error) => {
            let shown = Shown {
                error: Some(error.into()),
                add: Some(form),
                ..Shown::default()
            };
            return principals_page(&console, &who, shown).await;
        }
    };
    let name = form.name.clone();
    let added = console
        .app
        .stores
        .with(move |store| principals::add(store, role, &name))
        .await;
    let shown = match added {
        Ok((principal, key)) => Shown {
            new_key: Some(NewKey {
                what: "added",
                key: RotatedKey {
                    id: principal.id,
                    role: principal.role,
                    name: principal.name,
                    key: key.expose().to_string(),
                    key_expires_at: principal.key_expires_at,
                },
            }),
            ..Shown::default()
        },
        Err(error) => Shown {
            error: Some(error.into()),
            add: Some(form),
            ..Shown::default()
        },
    };
    principals_page(&console, &who, shown).await
}

async fn revoke(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<NoFields>,
) -> Result<Response, Failure> {
    let who = posted.who;
    view::require(&who, "revoking a principal's key", Role::Bureau)?;
    let me = who.principal.id.clone();
    let revoked = console
        .app
        .stores
        .with(move |store| {
            let id = principals::get(store, &id)?.id;
            // The bureau locking itself out of the console is surely a slip: the CLI, on the
            // store's machine, can still do it on purpose.
            if id == me {
                return Err(veil_runtime::Error::invalid(
                    "that is your own key: revoking it would sign you out with no way back in from the browser; revoke it as another bureau principal, or with `veil principal revoke` on the store's machine",
                ));
            }
            principals::revoke(store, &id)
        })
        .await;
    match revoked {
        Ok(_) => Ok(Redirect::to(NAV).into_response()),
        Err(error) => {
            let shown = Shown {
                error: Some(error.into()),
                ..Shown::default()
            };
            principals_page(&console, &who, shown).await
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RotateForm {
    #[serde(default)]
    expires_in_days: String,
}

impl RotateForm {
    fn to_request(&self) -> Result<RotateKey, Failure> {
        let text = self.expires_in_days.trim();
        if text.is_empty() {
            return Ok(RotateKey::default());
        }
        let refusal = || {
            Failure::invalid(format!(
                "days the key works is `{text}`; write a whole number from 1 to {KEY_EXPIRY_DAYS_MAX}, or leave it blank for a key that does not expire"
            ))
        };
        let days = text.parse::<u32>().map_err(|_| refusal())?;
        if !(1..=KEY_EXPIRY_DAYS_MAX).contains(&days) {
            return Err(refusal());
        }
        Ok(RotateKey {
            expires_in_days: Some(days),
        })
    }
}

async fn rotate(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted<RotateForm>,
) -> Result<Response, Failure> {
    let Posted { who, form } = posted;
    view::require(&who, "rotating a principal's key", Role::Bureau)?;
    let rotated = match form.to_request() {
        Ok(body) => {
            Api::new(&console, &who)
                .post::<_, RotatedKey>(&format!("/principals/{}/rotate", segment(&id)), &body)
                .await
        }
        Err(failure) => Err(failure),
    };
    let shown = match rotated {
        Ok(key) => Shown {
            new_key: Some(NewKey {
                what: "rotated",
                key,
            }),
            ..Shown::default()
        },
        Err(failure) => Shown {
            error: Some(failure),
            ..Shown::default()
        },
    };
    principals_page(&console, &who, shown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(revoked: Option<&str>, expires: Option<&str>) -> Principal {
        Principal {
            id: "pr-1".into(),
            role: Role::Operator,
            name: "城市规划院".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            revoked_at: revoked.map(str::to_string),
            key_expires_at: expires.map(str::to_string),
        }
    }

    #[test]
    fn a_key_is_active_until_revoked_or_past_its_expiry() {
        let now = DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
            .map(|t| t.to_utc())
            .unwrap_or_default();
        assert_eq!(state_of(&principal(None, None), now), "active");
        assert_eq!(
            state_of(&principal(None, Some("2026-07-01T00:00:00Z")), now),
            "active"
        );
        assert_eq!(
            state_of(&principal(None, Some("2026-05-01T00:00:00Z")), now),
            "expired"
        );
        assert_eq!(
            state_of(&principal(Some("2026-02-01T00:00:00Z"), None), now),
            "revoked"
        );
    }

    #[test]
    fn key_expiry_is_a_whole_number_of_days_or_none() {
        let form = |text: &str| RotateForm {
            expires_in_days: text.into(),
        };
        assert_eq!(form("").to_request().ok(), Some(RotateKey::default()));
        assert_eq!(
            form(" 90 ")
                .to_request()
                .ok()
                .and_then(|r| r.expires_in_days),
            Some(90)
        );
        assert!(form("0").to_request().is_err());
        assert!(form("99999").to_request().is_err());
        let (status, message, _) = form("soon")
            .to_request()
            .err()
            .map(Failure::parts)
            .expect("refused");
        assert_eq!(status, axum::http::StatusCode::BAD_REQUEST);
        assert!(message.contains("`soon`"), "{message}");
    }
}
