//! Bearer-key authentication and the role and ownership checks every route makes.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::AppState;
use crate::error::ApiError;
use veil_runtime::error::Error;
use veil_runtime::principals::{self, Principal, Role};

/// The authenticated principal behind a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

/// A principal already authenticated by another front end of the same process — the web
/// console, whose session cookie stands for a key it checked at sign-in — that calls the API's
/// own handlers in process, so every role and ownership check is the API's. It travels as a
/// request extension, which only code in this process can set: no HTTP client can send one.
#[derive(Debug, Clone)]
pub struct Delegated(pub Principal);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(Delegated(principal)) = parts.extensions.get::<Delegated>() {
            return Ok(Caller(principal.clone()));
        }
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(|key| key.trim().to_string())
            .ok_or(ApiError::Unauthorized)?;
        let checked = state
            .stores
            .with(move |store| principals::check_key(store, &key))
            .await?;
        let principal = match checked {
            principals::KeyCheck::Valid(principal) => principal,
            principals::KeyCheck::Unknown => return Err(ApiError::Unauthorized),
            principals::KeyCheck::Expired(principal) => {
                return Err(ApiError::KeyExpired(principals::expired_message(
                    &principal,
                )));
            }
        };
        if let Some(slot) = parts.extensions.get::<CallerSlot>() {
            slot.fill(&principal);
        }
        Ok(Caller(principal))
    }
}

/// Where the access log learns who made a request: its middleware puts an empty slot in the
/// request and [`Caller`] fills it with the principal's id and role once the key checks out.
/// The key itself never goes in.
#[derive(Debug, Clone, Default)]
pub struct CallerSlot(Arc<std::sync::OnceLock<(String, Role)>>);

impl CallerSlot {
    /// Records the principal behind the request (the web console fills it for its own
    /// requests, whose principal comes from a session rather than a key).
    pub fn fill(&self, principal: &Principal) {
        let _ = self.0.set((principal.id.clone(), principal.role));
    }

    /// The caller's principal id and role, once its key was checked.
    pub fn get(&self) -> Option<&(String, Role)> {
        self.0.get()
    }
}

impl Caller {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn role(&self) -> Role {
        self.0.role
    }

    pub fn is_bureau(&self) -> bool {
        self.0.role == Role::Bureau
    }

    /// Refuses (403) a caller whose role is not one of `roles`; `what` names the action.
    pub fn require(&self, what: &str, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.0.role) {
            return Ok(());
        }
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(ApiError::forbidden(what, &names.join(" or ")))
    }

    /// The bureau sees everything; anyone else only what `owner` names as theirs. Another's
    /// object is reported exactly like a missing one (404), so ids cannot be probed.
    pub fn owns(&self, owner: &str, kind: &'static str, id: &str) -> Result<(), ApiError> {
        if self.is_bureau() || self.0.name == owner {
            Ok(())
        } else {
            Err(ApiError::Domain(Error::not_found(kind, id)))
        }
    }
}
