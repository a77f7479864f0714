//! How errors become HTTP responses: one place maps each kind of fault to one status.
//!
//! The platform's faults reach a client as fixed sentences; their detail (a path, a database
//! error) goes to the server's log. A failed job's record follows the same rule in
//! `veil_runtime::jobs`: its operator reads a fixed sentence, the bureau the detail in the
//! job's audit entry.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use veil_sdk::api::{ErrorBody, ErrorKind, Violation};

use veil_gate::rules::Refusal;
use veil_runtime::error::Error;

/// Seconds a client is told to wait when the job queue is full.
pub const BUSY_RETRY_AFTER_SECONDS: u32 = 2;

/// What a client is told when the store's disk is full (HTTP 507, kind `storage_full`).
pub const STORAGE_FULL_MESSAGE: &str = "the platform's storage is full, so nothing was queued or changed; the bureau has been told and must free disk space — retry later (the server takes jobs again by itself once there is room)";

/// An error on its way to a client.
#[derive(Debug)]
pub enum ApiError {
    /// A domain error, mapped by its fault.
    Domain(Error),
    /// No key, or an unknown or revoked one.
    Unauthorized,
    /// The job queue is full.
    Busy(String),
    /// The store's disk is full, so nothing is taken (see `veil_runtime::space`). Unlike a write that
    /// fails for lack of space, this is not logged: the server logged once when it happened.
    StorageFull,
}

impl ApiError {
    /// The caller's role may not use this route.
    pub fn forbidden(what: &str, roles: &str) -> Self {
        Self::Domain(Error::Forbidden(format!("{what} is for {roles} only")))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Domain(Error::invalid(message))
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self::Domain(error)
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        Self::Domain(Error::Refused(refusal))
    }
}

pub fn violations(refusal: &Refusal) -> Vec<Violation> {
    refusal
        .violations
        .iter()
        .map(|v| Violation {
            rule: v.rule.code().to_string(),
            message: v.message.clone(),
        })
        .collect()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (kind, message, rules) = match self {
            Self::Unauthorized => (
                ErrorKind::Unauthorized,
                "send `Authorization: Bearer <key>` with a key from `veil principal add`".into(),
                Vec::new(),
            ),
            Self::Busy(message) => (ErrorKind::Busy, message, Vec::new()),
            Self::StorageFull => (
                ErrorKind::StorageFull,
                STORAGE_FULL_MESSAGE.into(),
                Vec::new(),
            ),
            Self::Domain(error) => match error {
                Error::Refused(refusal) => (
                    ErrorKind::Refused,
                    refusal.to_string(),
                    violations(&refusal),
                ),
                Error::Invalid(message) => (ErrorKind::Invalid, message, Vec::new()),
                error @ Error::NotFound { .. } => {
                    (ErrorKind::NotFound, error.to_string(), Vec::new())
                }
                error @ Error::Policy(_) => (ErrorKind::Policy, error.to_string(), Vec::new()),
                Error::Conflict(message) => (ErrorKind::Conflict, message, Vec::new()),
                Error::Forbidden(message) => (ErrorKind::Forbidden, message, Vec::new()),
                Error::Resources(message) => (ErrorKind::Resources, message, Vec::new()),
                Error::StorageFull(detail) => {
                    // The detail may name the store's paths: the log gets it, the client a
                    // fixed sentence.
                    eprintln!("veil serve: {detail}");
                    (
                        ErrorKind::StorageFull,
                        STORAGE_FULL_MESSAGE.into(),
                        Vec::new(),
                    )
                }
                Error::Internal(detail) => {
                    // The detail (a path, a state-database error) is for the server's log,
                    // which stays in the domain; the client learns only that it happened.
                    eprintln!("veil serve: internal error while {detail}");
                    (
                        ErrorKind::Internal,
                        "the platform hit an internal error; the bureau can find it in the server log".into(),
                        Vec::new(),
                    )
                }
            },
        };
        let status =
            StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            Json(ErrorBody {
                kind,
                message,
                violations: rules,
            }),
        )
            .into_response();
        match kind {
            ErrorKind::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ErrorKind::Busy => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(BUSY_RETRY_AFTER_SECONDS),
                );
            }
            _ => {}
        }
        response
    }
}
