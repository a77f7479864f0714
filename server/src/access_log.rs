//! The server's log on standard error: one line per request, one when a job starts and one
//! when it ends, and the server's notices (start, warnings, shutdown).
//!
//! ```text
//! veil serve: 2026-05-01T08:00:00Z request GET /v1/jobs/{id} 200 3ms principal=prn_… role=operator
//! veil serve: 2026-05-01T08:00:01Z job started job=job_… template=3f2a…
//! veil serve: 2026-05-01T08:00:04Z job ended job=job_… template=3f2a… state=released 2950ms
//! ```
//!
//! With `veil serve --log-format json` each line is one JSON object instead (`event`:
//! `request`, `job_started`, `job_ended` or `notice`), for a log collector.
//!
//! **What a line holds, and what it never holds.** A request line names the method, the route
//! *template* the router matched (`/v1/jobs/{id}`, or `unmatched`) — never the concrete path,
//! its query string or the body —, the status, the time to the response's head (a download's
//! body streams after it), and the caller's principal id and role — never the key. A job line
//! names the job, its template id, its end state and its wall time — never its parameters, a
//! refusal's text or a failure's detail, which could carry values. So a line carries nothing
//! from inside the domain, and the log can go wherever the bureau's other logs go.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use veil_runtime::clock;
use veil_runtime::metering::EndState;

use crate::auth::CallerSlot;
use crate::metrics::Metrics;

/// How the log's lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event, for people (the default).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// The names `--log-format` accepts.
    pub const NAMES: [&str; 2] = ["text", "json"];

    /// The format named `name` (`text` or `json`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// The server's log in one format. It is `Copy`: each thread that logs holds its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Log {
    pub format: LogFormat,
}

impl Log {
    pub fn new(format: LogFormat) -> Self {
        Self { format }
    }

    /// A notice for the bureau: the server started, a warning, what a shutdown did.
    pub fn notice(self, message: &str) {
        match self.format {
            LogFormat::Text => emit(format!("veil serve: {message}")),
            LogFormat::Json => {
                emit(json!({ "time": now(), "event": "notice", "message": message }).to_string())
            }
        }
    }

    /// One answered request. `principal` is the caller's id and role when its key was valid.
    pub fn request(
        self,
        method: &str,
        route: &str,
        status: u16,
        took: Duration,
        principal: Option<&(String, String)>,
    ) {
        let ms = millis(took);
        match self.format {
            LogFormat::Text => {
                let who = principal.map_or_else(
                    || "principal=-".to_string(),
                    |(id, role)| format!("principal={id} role={role}"),
                );
                emit(format!(
                    "veil serve: {} request {method} {route} {status} {ms}ms {who}",
                    now()
                ));
            }
            LogFormat::Json => emit(
                json!({
                    "time": now(),
                    "event": "request",
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": ms,
                    "principal": principal.map(|(id, _)| id),
                    "role": principal.map(|(_, role)| role),
                })
                .to_string(),
            ),
        }
    }

    /// A worker started `job`, of template `template`.
    pub fn job_started(self, job: &str, template: &str) {
        match self.format {
            LogFormat::Text => emit(format!(
                "veil serve: {} job started job={job} template={template}",
                now()
            )),
            LogFormat::Json => emit(
                json!({ "time": now(), "event": "job_started", "job": job, "template": template })
                    .to_string(),
            ),
        }
    }

    /// `job` ended in `state` after running for `ran` (`None`: it ended before it started).
    pub fn job_ended(self, job: &str, template: &str, state: EndState, ran: Option<Duration>) {
        match self.format {
            LogFormat::Text => {
                let ran = ran.map_or_else(
                    || "before it started".to_string(),
                    |d| format!("{}ms", millis(d)),
                );
                emit(format!(
                    "veil serve: {} job ended job={job} template={template} state={} {ran}",
                    now(),
                    state.as_str()
                ));
            }
            LogFormat::Json => emit(
                json!({
                    "time": now(),
                    "event": "job_ended",
                    "job": job,
                    "template": template,
                    "state": state.as_str(),
                    "duration_ms": ran.map(millis),
                })
                .to_string(),
            ),
        }
    }
}

/// Writes one whole line to standard error (`eprintln!` holds the stream's lock for the
/// line, so lines of two threads never interleave).
fn emit(line: String) {
    eprintln!("{line}");
}

fn now() -> String {
    clock::format(clock::now())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What the request middleware needs: the counters, and the log when the server writes one.
#[derive(Debug, Clone)]
pub struct Observer {
    pub metrics: Arc<Metrics>,
    /// `None` in a router without a log (tests that call the router in process).
    pub log: Option<Log>,
}

/// The middleware around every route: counts the request for `/metrics` and writes its log
/// line. It puts an empty [`CallerSlot`] in the request, which the key check fills, so the
/// line can name the caller without this layer ever reading the key.
pub async fn observe(
    State(observer): State<Observer>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_string());
    let slot = CallerSlot::default();
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    observer
        .metrics
        .count_request(&method, route.as_deref(), status);
    if let Some(log) = observer.log {
        let principal = slot
            .get()
            .map(|(id, role)| (id.clone(), role.as_str().to_string()));
        log.request(
            crate::metrics::method_label(&method),
            route.as_deref().unwrap_or(crate::metrics::ROUTE_UNMATCHED),
            status,
            started.elapsed(),
            principal.as_ref(),
        );
    }
    response
}
