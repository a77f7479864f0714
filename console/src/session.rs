//! Sign-in, the session cookie, and the CSRF token every form carries.
//!
//! A principal signs in with its API key once; the console keeps, per session, the key's
//! fingerprint (the keyed hash the store keeps, never the key), a CSRF token and an expiry.
//! The browser holds only a random session token in an `HttpOnly`, `SameSite=Strict` cookie
//! limited to `/console`; the console keeps the token's BLAKE3 hash, so a copy of its memory
//! does not sign anyone in. Every request checks the fingerprint against the store again
//! (`principals::check_fingerprint`): rotating or revoking a key ends its sessions at once.
//! Sessions live in the server's memory: a restart signs everyone out, which is the safe end.
//!
//! **CSRF.** Every form carries the session's token in a hidden `csrf` field and
//! [`Posted`] — the only way a handler reads a form — refuses a post without it (403). The
//! sign-in form, posted before there is a session, carries a token that must equal the one in
//! a short-lived `veil_signin` cookie (a double submit), so another site cannot sign a browser
//! in as someone else. `SameSite=Strict` is a second, independent guard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use askama::Template;
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::Console;
use crate::view::{Failure, Page};
use veil_runtime::clock;
use veil_runtime::principals::{self, KeyCheck};

/// How long a session lasts from sign-in, in seconds: a working day.
pub const SESSION_SECONDS_MAX: i64 = 8 * 60 * 60;
/// How long the sign-in form's token is good for, in seconds.
pub const SIGN_IN_SECONDS_MAX: i64 = 30 * 60;
/// Sessions kept at once; past it, the oldest go first.
pub const SESSIONS_MAX: usize = 10_000;
/// The largest form a page posts, in bytes (a template's SQL is the longest field).
pub const FORM_BYTES_MAX: usize = 256 * 1024;

const SESSION_COOKIE: &str = "veil_session";
const SIGN_IN_COOKIE: &str = "veil_signin";

/// One signed-in browser.
#[derive(Debug, Clone)]
struct Session {
    fingerprint: String,
    csrf: String,
    expires: DateTime<Utc>,
}

/// The sessions, by the BLAKE3 hash of their cookie's token.
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    fn open(&self, fingerprint: String) -> Result<(String, Session), Failure> {
        let token = random_token()?;
        let session = Session {
            fingerprint,
            csrf: random_token()?,
            expires: clock::now() + chrono::Duration::seconds(SESSION_SECONDS_MAX),
        };
        let mut sessions = self.lock()?;
        let now = clock::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= SESSIONS_MAX
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(token_hash(&token), session.clone());
        Ok((token, session))
    }

    fn find(&self, token: &str) -> Result<Option<Session>, Failure> {
        let mut sessions = self.lock()?;
        let key = token_hash(token);
        match sessions.get(&key) {
            Some(s) if s.expires > clock::now() => Ok(Some(s.clone())),
            Some(_) => {
                sessions.remove(&key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn close(&self, token: &str) -> Result<(), Failure> {
        self.lock()?.remove(&token_hash(token));
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Session>>, Failure> {
        self.0
            .lock()
            .map_err(|_| Failure::internal("reading the console's sessions"))
    }
}

fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// 256 bits from the operating system's random source, as hex.
fn random_token() -> Result<String, Failure> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| Failure::internal("drawing a session token"))?;
    Ok(hex::encode(bytes))
}

/// Compares two tokens in time that does not depend on where they differ.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request came through the bureau's TLS proxy (which says so in
/// `X-Forwarded-Proto`); then cookies are marked `Secure`. A client that claims it falsely
/// only makes its own cookie stricter.
fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> Result<HeaderValue, Failure> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .map_err(|_| Failure::internal("writing a cookie"))
}

pub use crate::view::Signed;

impl FromRequestParts<Arc<Console>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        match signed(parts, console).await {
            Ok(Some(signed)) => Ok(signed),
            Ok(None) => Err(Redirect::to("/console/sign-in").into_response()),
            Err(failure) => Err(failure.into_response()),
        }
    }
}

impl OptionalFromRequestParts<Arc<Console>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Option<Self>, Self::Rejection> {
        signed(parts, console).await.map_err(|f| f.into_response())
    }
}

async fn signed(parts: &Parts, console: &Arc<Console>) -> Result<Option<Signed>, Failure> {
    let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let Some(session) = console.sessions.find(token)? else {
        return Ok(None);
    };
    let fingerprint = session.fingerprint.clone();
    let checked = console
        .app
        .stores
        .with(move |store| principals::check_fingerprint(store, &fingerprint))
        .await?;
    let KeyCheck::Valid(principal) = checked else {
        console.sessions.close(token)?;
        return Ok(None);
    };
    // The access log names the principal behind each request, as it does for the API.
    if let Some(slot) = parts.extensions.get::<veil_server::auth::CallerSlot>() {
        slot.fill(&principal);
    }
    Ok(Some(Signed {
        principal,
        csrf: session.csrf,
    }))
}

/// A form posted by a signed-in principal, with its CSRF token checked: the only way a
/// console handler reads a form, so no action can forget the check.
#[derive(Debug)]
pub struct Posted<T> {
    pub who: Signed,
    pub form: T,
}

impl<T: DeserializeOwned> FromRequest<Arc<Console>> for Posted<T> {
    type Rejection = Response;

    async fn from_request(request: Request, console: &Arc<Console>) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let who =
            <Signed as FromRequestParts<Arc<Console>>>::from_request_parts(&mut parts, console)
                .await?;
        let bytes = axum::body::to_bytes(body, FORM_BYTES_MAX)
            .await
            .map_err(|_| {
                Failure::invalid(format!(
                    "the form is larger than {FORM_BYTES_MAX} bytes; shorten what you wrote"
                ))
                .into_response()
            })?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).map_err(|_| {
            Failure::invalid("the form could not be read; reload the page and submit it again")
                .into_response()
        })?;
        let token = pairs
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str());
        if !token.is_some_and(|t| same_token(t, &who.csrf)) {
            return Err(Failure::csrf().into_response());
        }
        let form = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
            Failure::invalid(format!(
                "the form is not complete ({e}); fill in every field"
            ))
            .into_response()
        })?;
        Ok(Posted { who, form })
    }
}

/// The sign-in page.
#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    page: Page,
    error: Option<String>,
}

/// `GET /console/sign-in`: the form, with a fresh sign-in token in its cookie and its field.
pub async fn sign_in_page(headers: HeaderMap) -> Response {
    sign_in_form(&headers, None, axum::http::StatusCode::OK)
}

fn sign_in_form(
    headers: &HeaderMap,
    error: Option<String>,
    status: axum::http::StatusCode,
) -> Response {
    let token = match random_token() {
        Ok(token) => token,
        Err(failure) => return failure.into_response(),
    };
    let cookie = match set_cookie(
        SIGN_IN_COOKIE,
        &token,
        SIGN_IN_SECONDS_MAX,
        behind_tls(headers),
    ) {
        Ok(cookie) => cookie,
        Err(failure) => return failure.into_response(),
    };
    let page = SignInPage {
        page: Page::anonymous("Sign in 登录", token),
        error,
    };
    let mut response = crate::view::render(&page);
    *response.status_mut() = status;
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

#[derive(Deserialize)]
pub struct SignInForm {
    key: String,
    csrf: String,
}

/// `POST /console/sign-in`: exchanges an API key for a session.
pub async fn sign_in(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<SignInForm>(&body) else {
        return Failure::csrf().into_response();
    };
    let expected = cookie(&headers, SIGN_IN_COOKIE);
    if !expected.is_some_and(|t| same_token(t, &form.csrf)) {
        return Failure::csrf().into_response();
    }
    let key = form.key.trim().to_string();
    let checked = console
        .app
        .stores
        .with(move |store| {
            let check = principals::check_key(store, &key)?;
            Ok((check, principals::key_fingerprint(&key)))
        })
        .await;
    let (check, fingerprint) = match checked {
        Ok(checked) => checked,
        Err(error) => return Failure::from(error).into_response(),
    };
    match check {
        KeyCheck::Valid(_) => {}
        KeyCheck::Unknown => {
            return sign_in_form(
                &headers,
                Some("that key is not a current API key; paste the whole key (veil_…), or ask the bureau for a new one".into()),
                axum::http::StatusCode::UNAUTHORIZED,
            );
        }
        KeyCheck::Expired(principal) => {
            return sign_in_form(
                &headers,
                Some(principals::expired_message(&principal)),
                axum::http::StatusCode::UNAUTHORIZED,
            );
        }
    }
    let (token, _) = match console.sessions.open(fingerprint) {
        Ok(opened) => opened,
        Err(failure) => return failure.into_response(),
    };
    let secure = behind_tls(&headers);
    let (Ok(session), Ok(clear)) = (
        set_cookie(SESSION_COOKIE, &token, SESSION_SECONDS_MAX, secure),
        set_cookie(SIGN_IN_COOKIE, "", 0, secure),
    ) else {
        return Failure::internal("writing a cookie").into_response();
    };
    let mut response = Redirect::to(crate::PREFIX).into_response();
    response.headers_mut().append(header::SET_COOKIE, session);
    response.headers_mut().append(header::SET_COOKIE, clear);
    response
}

#[derive(Deserialize)]
pub struct NoFields {}

/// `POST /console/sign-out`: ends the session here and in the browser.
pub async fn sign_out(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    _posted: Posted<NoFields>,
) -> Response {
    if let Some(token) = cookie(&headers, SESSION_COOKIE)
        && let Err(failure) = console.sessions.close(token)
    {
        return failure.into_response();
    }
    let Ok(clear) = set_cookie(SESSION_COOKIE, "", 0, behind_tls(&headers)) else {
        return Failure::internal("writing a cookie").into_response();
    };
    let mut response = Redirect::to("/console/sign-in").into_response();
    response.headers_mut().append(header::SET_COOKIE, clear);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
        assert!(!same_token("", "a"));
    }

    #[test]
    fn a_cookie_is_read_by_its_exact_name_among_many() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("xveil_session=wrong; veil_session=right; other=1"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("veil_signin=s"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("right"));
        assert_eq!(cookie(&headers, SIGN_IN_COOKIE), Some("s"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn the_session_cookie_is_http_only_strict_and_secure_behind_tls() {
        let plain = set_cookie(SESSION_COOKIE, "t", 60, false).expect("cookie");
        let plain = plain.to_str().expect("text");
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(plain.contains("Path=/console") && !plain.contains("Secure"));
        let tls = set_cookie(SESSION_COOKIE, "t", 60, true).expect("cookie");
        assert!(tls.to_str().expect("text").ends_with("; Secure"));
    }

    #[test]
    fn a_session_ends_at_its_expiry_and_when_closed() {
        let sessions = Sessions::default();
        let (token, session) = sessions.open("fingerprint".into()).expect("opened");
        assert_eq!(session.csrf.len(), 64);
        assert!(sessions.find(&token).expect("read").is_some());
        assert!(sessions.find("another").expect("read").is_none());
        sessions.close(&token).expect("closed");
        assert!(sessions.find(&token).expect("read").is_none());
    }
}
