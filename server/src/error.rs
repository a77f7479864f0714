//! How errors become HTTP responses: one place maps each kind of fault to one status.
//!
//! The platform's faults reach a client as fixed sentences; their detail (a path, a database
//! error) goes to the server's log. A failed job's record follows the same rule in
//! `veil_runtime::jobs`: its operator reads a fixed sentence, the bureau the detail in the
//! job's audit entry.

use axum::Json;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
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
    /// A principal's key past its expiry: 401 like [`ApiError::Unauthorized`], with a message
    /// saying what to do.
    KeyExpired(String),
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

/// The domain's messages name the local commands that help (`veil template list`); a client
/// of the HTTP API has the `veil client` twins instead. Each pair: the local text, the text an
/// HTTP client reads.
const CLIENT_COMMANDS: [(&str, &str); 6] = [
    ("`veil template list`", "`veil client template list`"),
    ("`veil job list`", "`veil client job list`"),
    ("`veil grant list`", "`veil client grants`"),
    ("`veil dataset list`", "`veil client datasets`"),
    (
        "(veil settle --period)",
        "(`veil client settle --period`, the bureau)",
    ),
    (
        "`veil principal list`",
        "the bureau's `veil principal list`",
    ),
];

/// A message as an HTTP client reads it: local commands replaced by their client twins.
pub fn for_http(message: String) -> String {
    if !message.contains("veil ") {
        return message;
    }
    CLIENT_COMMANDS
        .iter()
        .fold(message, |text, (local, client)| text.replace(local, client))
}

pub fn violations(refusal: &Refusal) -> Vec<Violation> {
    refusal
        .violations
        .iter()
        .map(|v| Violation {
            rule: v.rule.code().to_string(),
            message: for_http(v.message.clone()),
        })
        .collect()
}

impl ApiError {
    /// The status and body a client reads for this error (what [`IntoResponse`] sends; the web
    /// console shows the same on its pages).
    pub fn to_body(self) -> (StatusCode, ErrorBody) {
        let (kind, message, rules) = match self {
            Self::Unauthorized => (
                ErrorKind::Unauthorized,
                "send `Authorization: Bearer <key>` with your current API key; a key that was revoked or replaced by a rotation no longer works: ask the bureau for a new one".into(),
                Vec::new(),
            ),
            Self::KeyExpired(message) => (ErrorKind::Unauthorized, message, Vec::new()),
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
        let message = for_http(message);
        let status =
            StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            ErrorBody {
                kind,
                message,
                violations: rules,
            },
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.to_body();
        let kind = body.kind;
        let mut response = (status, Json(body)).into_response();
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

/// Longest text of axum's own rejection that is kept in the JSON error replacing it, in bytes.
const REJECTION_TEXT_BYTES_MAX: usize = 4 * 1024;

/// Answers a path that is no route with the documented JSON error.
pub async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::Domain(Error::NotFound {
        kind: "route",
        id: format!("{method} {}", uri.path()),
        hint: "; GET /v1/openapi.json lists every route",
    })
}

/// Makes every error response the documented JSON body (`{kind, message, violations}` with
/// the status its kind fixes), including axum's own rejections, which are plain text: a body
/// that is not JSON or lacks `Content-Type: application/json`, a body too large, a query
/// string or path parameter of the wrong type, a method a route does not take. Their text
/// describes the client's own request, never stored data, so it is kept in the message.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let bytes = axum::body::to_bytes(response.into_body(), REJECTION_TEXT_BYTES_MAX)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = match status {
        StatusCode::NOT_FOUND => {
            "no such route; GET /v1/openapi.json lists every route".to_string()
        }
        StatusCode::METHOD_NOT_ALLOWED => match allow.as_ref().and_then(|v| v.to_str().ok()) {
            Some(methods) => format!("this route does not take that method; it takes {methods}"),
            None => "this route does not take that method; GET /v1/openapi.json lists the \
                     methods of every route"
                .to_string(),
        },
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            format!("send the body as JSON with `Content-Type: application/json` ({text})")
        }
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the body is larger than the {} MiB a request may carry",
            crate::REQUEST_BYTES_MAX / (1024 * 1024)
        ),
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_string(),
        _ => text,
    };
    let kind = match status {
        StatusCode::NOT_FOUND => ErrorKind::NotFound,
        StatusCode::UNAUTHORIZED => return ApiError::Unauthorized.into_response(),
        _ if status.is_server_error() => {
            eprintln!("veil serve: {status} from the HTTP layer: {message}");
            let detail = format!("serving a request ({status})");
            return ApiError::Domain(Error::Internal(detail)).into_response();
        }
        _ => ErrorKind::Invalid,
    };
    let status = StatusCode::from_u16(kind.status()).unwrap_or(status);
    let body = ErrorBody {
        kind,
        message,
        violations: Vec::new(),
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_client_is_told_the_client_commands() {
        let message =
            Error::not_found("job", "j-1").to_string() + "; `veil job list` shows the jobs";
        let told = for_http(message);
        assert!(
            told.ends_with("`veil client job list` shows the jobs"),
            "{told}"
        );
        assert!(!told.contains("`veil job"), "{told}");
    }
}
