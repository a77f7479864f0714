//! How a page calls the JSON API as its signed-in principal, in process.
//!
//! The request goes to the API's own router with the principal in a
//! [`veil_server::auth::Delegated`] extension instead of a key, so every role check, ownership
//! check ("another operator's job is not found"), domain call and error message is exactly the
//! API's — the console adds no second copy of them to drift apart.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use crate::Console;
use crate::session::Signed;
use crate::view::Failure;
use veil_sdk::api::ErrorBody;

/// The largest API answer a page reads, in bytes (lists of jobs and products).
pub const ANSWER_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The API, as one signed-in principal.
pub struct Api<'a> {
    console: &'a Arc<Console>,
    who: &'a Signed,
}

impl<'a> Api<'a> {
    pub fn new(console: &'a Arc<Console>, who: &'a Signed) -> Self {
        Self { console, who }
    }

    /// `GET /v1{path}`, read as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let response = self.send(Method::GET, path, None).await?;
        read(response).await
    }

    /// `POST /v1{path}` with a JSON body, read as `T`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Failure> {
        let body = serde_json::to_vec(body).map_err(|_| Failure::internal("writing a request"))?;
        let response = self.send(Method::POST, path, Some(body)).await?;
        read(response).await
    }

    /// `GET /v1{path}` as the API answers it (a file download), or the page for its error.
    pub async fn raw(&self, path: &str) -> Result<Response, Failure> {
        let response = self.send(Method::GET, path, None).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(failure(response).await)
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, Failure> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", veil_sdk::api::API_PREFIX));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let mut request = request
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .map_err(|_| Failure::invalid("that address is not one the console can ask for"))?;
        request
            .extensions_mut()
            .insert(veil_server::auth::Delegated(self.who.principal.clone()));
        self.console
            .api
            .clone()
            .oneshot(request)
            .await
            .map_err(|_| Failure::internal("calling the API"))
    }
}

async fn read<T: DeserializeOwned>(response: Response) -> Result<T, Failure> {
    if !response.status().is_success() {
        return Err(failure(response).await);
    }
    let bytes = axum::body::to_bytes(response.into_body(), ANSWER_BYTES_MAX)
        .await
        .map_err(|_| Failure::internal("reading the API's answer"))?;
    serde_json::from_slice(&bytes).map_err(|_| Failure::internal("reading the API's answer"))
}

async fn failure(response: Response) -> Failure {
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), ANSWER_BYTES_MAX)
        .await
        .ok()
        .and_then(|bytes| serde_json::from_slice::<ErrorBody>(&bytes).ok());
    match body {
        Some(body) => Failure::from_api(status, body),
        None if status == StatusCode::NOT_FOUND => Failure::invalid("not found"),
        None => Failure::internal("calling the API"),
    }
}

/// A path segment as the API reads it: percent-encoded, so an id a user typed cannot add a
/// segment or a query.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
