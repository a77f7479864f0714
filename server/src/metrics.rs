//! `GET /metrics`: the server's own counts in the Prometheus text exposition format (version
//! 0.0.4), for the bureau.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `veil_http_requests_total` | counter | `method`, `route` (the route template), `status` |
//! | `veil_jobs_queued` | gauge | — |
//! | `veil_jobs_running` | gauge | — |
//! | `veil_job_queue_capacity` | gauge | — |
//! | `veil_jobs_ended_total` | counter | `state` (released, rejected, failed, cancelled) |
//! | `veil_job_duration_seconds` | histogram | — |
//! | `veil_storage_full` | gauge | — |
//!
//! **Counts only.** Nothing here comes from inside the domain: no row count of a result, no
//! value, no parameter, no template or dataset name. A request is labelled by its route
//! *template* (`/v1/jobs/{id}`), never by its concrete path, so no id, period or file name
//! becomes a label either, and the number of series stays bounded by the router's routes. A
//! job's duration is its wall time, which the bureau already sees in the meter. The route is
//! for the bureau only (403 for every other role): how busy the platform is, and how many jobs
//! were refused, is the bureau's business.
//!
//! The counters are plain atomics and one small map, kept in the [`Workers`](crate::Workers)
//! (which every handler already shares) and written out by hand: the format is a few lines
//! of text, and a registry crate would add dependencies for nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use veil_runtime::metering::EndState;
use veil_runtime::principals::Role;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the job-duration histogram's buckets, in seconds: from a small job's
/// fraction of a second to the longest wall time an approval allows.
pub const JOB_DURATION_BUCKETS_SECONDS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Most request series (method × route × status) kept. The router has a few dozen routes and
/// a handler answers a handful of statuses, so real traffic stays far below; past it, a new
/// combination is counted under the route [`ROUTE_OTHER`], so a flood of odd requests adds at
/// most one series per method label and status.
pub const REQUEST_SERIES_MAX: usize = 2_048;

/// The route label of a request that matched no route.
pub const ROUTE_UNMATCHED: &str = "unmatched";
/// The route label once [`REQUEST_SERIES_MAX`] series exist.
pub const ROUTE_OTHER: &str = "other";

/// The end states, in the order they are written.
const END_STATES: [EndState; 4] = [
    EndState::Released,
    EndState::Rejected,
    EndState::Failed,
    EndState::Cancelled,
];

/// One request series: method, route template, status.
type RequestKey = (&'static str, String, u16);

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    queued: AtomicUsize,
    running: AtomicUsize,
    ended: [AtomicU64; END_STATES.len()],
    /// Jobs that ran, by the first bucket their duration fits (the last slot: beyond every
    /// bound).
    duration_buckets: [AtomicU64; JOB_DURATION_BUCKETS_SECONDS.len() + 1],
    duration_micros_sum: AtomicU64,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts one answered request. `route` is the route template, or `None` when no route
    /// matched.
    pub fn count_request(&self, method: &axum::http::Method, route: Option<&str>, status: u16) {
        let route = route.unwrap_or(ROUTE_UNMATCHED);
        let Ok(mut requests) = self.requests.lock() else {
            return;
        };
        let mut key = (method_label(method), route.to_string(), status);
        if !requests.contains_key(&key) && requests.len() >= REQUEST_SERIES_MAX {
            key.1 = ROUTE_OTHER.to_string();
        }
        *requests.entry(key).or_insert(0) += 1;
    }

    /// A job entered this server's queue.
    pub fn job_queued(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    /// A worker took a queued job off the queue; `runs` says whether it starts running it
    /// (rather than leaving it queued in the store because the server is stopping).
    pub fn job_taken(&self, runs: bool) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if runs {
            self.running.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A job a worker took ended in `state`; `ran` is how long it ran, or `None` when it had
    /// ended before it could start (cancelled while queued).
    pub fn job_ended(&self, state: EndState, ran: Option<Duration>) {
        let _ = self
            .running
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if let Some(index) = END_STATES.iter().position(|s| *s == state) {
            self.ended[index].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(ran) = ran {
            let seconds = ran.as_secs_f64();
            let bucket = JOB_DURATION_BUCKETS_SECONDS
                .iter()
                .position(|bound| seconds <= *bound)
                .unwrap_or(JOB_DURATION_BUCKETS_SECONDS.len());
            self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
            let micros = u64::try_from(ran.as_micros()).unwrap_or(u64::MAX);
            self.duration_micros_sum
                .fetch_add(micros, Ordering::Relaxed);
        }
    }

    /// The exposition: every metric of the module docs, `capacity` and `storage_full` taken
    /// from the queue as it stands.
    pub fn render(&self, capacity: usize, storage_full: bool) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "veil_http_requests_total",
            "counter",
            "HTTP requests answered, by method, route template and status.",
        );
        if let Ok(requests) = self.requests.lock() {
            for ((method, route, status), count) in requests.iter() {
                let _ = writeln!(
                    out,
                    "veil_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {count}",
                    escape_label(route)
                );
            }
        }
        let gauges = [
            (
                "veil_jobs_queued",
                "Jobs in this server's queue, waiting for a worker.",
                self.queued.load(Ordering::Relaxed),
            ),
            (
                "veil_jobs_running",
                "Jobs a worker is running.",
                self.running.load(Ordering::Relaxed),
            ),
            (
                "veil_job_queue_capacity",
                "Jobs that may be queued or running at once (veil serve --queue).",
                capacity,
            ),
            (
                "veil_storage_full",
                "1 while the store's disk is full and jobs are refused, else 0.",
                usize::from(storage_full),
            ),
        ];
        for (name, help, value) in gauges {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        family(
            &mut out,
            "veil_jobs_ended_total",
            "counter",
            "Jobs this server's workers saw end, by end state.",
        );
        for (state, count) in END_STATES.iter().zip(&self.ended) {
            let _ = writeln!(
                out,
                "veil_jobs_ended_total{{state=\"{}\"}} {}",
                state.as_str(),
                count.load(Ordering::Relaxed)
            );
        }
        family(
            &mut out,
            "veil_job_duration_seconds",
            "histogram",
            "Wall time of the jobs this server ran, from the worker taking the job to its end.",
        );
        let mut cumulative = 0;
        for (index, count) in self.duration_buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = JOB_DURATION_BUCKETS_SECONDS
                .get(index)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "veil_job_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let sum = self.duration_micros_sum.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "veil_job_duration_seconds_sum {sum}");
        let _ = writeln!(out, "veil_job_duration_seconds_count {cumulative}");
        out
    }
}

/// A family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The method as a label from a fixed set, so a client's invented methods add no series.
pub(crate) fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

/// `GET /metrics` (bureau only).
pub(crate) async fn metrics(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require("reading the server's metrics", &[Role::Bureau])?;
    let workers = &state.workers;
    let text = workers
        .metrics()
        .render(workers.capacity(), workers.storage_full());
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_duration_lands_in_its_bucket_and_every_bucket_above_it() {
        let metrics = Metrics::new();
        metrics.job_queued();
        metrics.job_taken(true);
        metrics.job_ended(EndState::Released, Some(Duration::from_millis(700)));
        let text = metrics.render(8, false);
        assert!(
            text.contains("veil_job_duration_seconds_bucket{le=\"0.5\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("veil_job_duration_seconds_bucket{le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("veil_job_duration_seconds_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("veil_job_duration_seconds_sum 0.7\n"),
            "{text}"
        );
        assert!(text.contains("veil_jobs_ended_total{state=\"released\"} 1\n"));
        assert!(text.contains("veil_jobs_running 0\n"), "{text}");
        assert!(text.contains("veil_job_queue_capacity 8\n"), "{text}");
    }

    #[test]
    fn past_the_series_limit_new_combinations_count_under_route_other() {
        let metrics = Metrics::new();
        for status in 0..(REQUEST_SERIES_MAX as u16 + 10) {
            metrics.count_request(&axum::http::Method::GET, Some("/v1/jobs/{id}"), status);
        }
        let requests = metrics.requests.lock().expect("lock");
        assert_eq!(requests.len(), REQUEST_SERIES_MAX + 10);
        let other: u64 = requests
            .iter()
            .filter(|((_, route, _), _)| route == ROUTE_OTHER)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(other, 10);
    }
}
