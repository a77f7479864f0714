//! The HTTP API: `veil serve`, a JSON API over the domain store for the bureau, providers,
//! operators and buyers at once.
//!
//! ```text
//! request ─► auth (bearer key → Principal) ─► route: role check, then ownership check
//!              │                                 │
//!              │                    StorePool (one SQLite connection per blocking task)
//!              │                                 │
//!              └─ POST /v1/jobs ─► jobs::enqueue ─► Workers (bounded queue, N workers)
//!                                                       └─ jobs::run_queued ─► gate ─► product
//!                                                          (on the workers' own runtime)
//! ```
//!
//! Requests are answered on the caller's tokio runtime (`veil serve`'s); jobs run on a
//! runtime the [`Workers`] own, so neither can take the other's threads (see [`workers`]).
//!
//! Read [`app`] (every route and who may call it), then [`auth`], [`routes`], [`workers`],
//! and [`error`] (the one place a fault becomes a status); [`access_log`], [`metrics`] and
//! [`config`] are how the server runs as a service (its log, `GET /metrics`, its settings). The request and response bodies
//! are `veil_sdk::api`, shared with `veil_sdk::client::Client`; the OpenAPI document is
//! derived from them and from the route annotations (`GET /v1/openapi.json`).
//!
//! **Authorization.** Every route but `GET /v1/health` needs a key. Each route names the roles
//! that may call it (403 otherwise), then checks that the object is the caller's: an operator
//! sees only its own templates, jobs, products, meter records and statements; a provider only
//! its own datasets and statements; a buyer only products offered for sale and what it bought.
//! Another principal's object answers 404, exactly as a missing one, so ids cannot be probed.
//! `GET /metrics` is the bureau's.
//!
//! **Running as a service.** [`serve`] writes a log line per request and per job start and end
//! ([`access_log`]: route templates and principal ids, never paths, parameters, bodies or
//! keys), warns when it listens beyond loopback, and stops gracefully on SIGTERM or Ctrl-C:
//! it stops accepting, lets running jobs end within a grace period, leaves queued ones queued
//! for the next start (see [`Workers::drain`]) and says what became of them.

pub mod access_log;
pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod workers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

pub use access_log::{Log, LogFormat};
use veil_runtime::error::{Error, Result};
use veil_runtime::store::Store;
pub use workers::Workers;

/// Idle state-database connections kept for route handlers.
pub const STORE_CONNECTIONS_IDLE_MAX: usize = 16;
/// Largest request body, in bytes: a WASM module (8 MiB) plus room.
pub const REQUEST_BYTES_MAX: usize = 9 * 1024 * 1024;
/// How long a stopping server waits for the requests still in flight once its jobs are
/// settled, in milliseconds; a long-poll on a re-queued job would otherwise hold it to its
/// own timeout.
pub const HTTP_CLOSE_MS: u64 = 5_000;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// Store connections for the handlers.
    pub stores: Arc<StorePool>,
    /// The job queue; jobs run on its own runtime.
    pub workers: Arc<Workers>,
}

/// Store connections for route handlers. SQLite connections are not shared between threads;
/// each handler borrows one on a blocking thread and gives it back.
#[derive(Debug)]
pub struct StorePool {
    root: PathBuf,
    idle: Mutex<Vec<Store>>,
}

impl StorePool {
    pub fn new(root: &Path) -> Result<Self> {
        // Opening once here makes a wrong folder fail at start, not at the first request.
        let first = Store::open(root)?;
        Ok(Self {
            root: root.to_path_buf(),
            idle: Mutex::new(vec![first]),
        })
    }

    fn take(&self) -> Result<Store> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(store) => Ok(store),
            None => Store::open(&self.root),
        }
    }

    fn give_back(&self, store: Store) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < STORE_CONNECTIONS_IDLE_MAX
        {
            idle.push(store);
        }
    }

    /// Runs `f` with a store on a blocking thread.
    pub async fn with<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut store = pool.take()?;
            let result = f(&mut store);
            pool.give_back(store);
            result
        })
        .await
        .map_err(|_| Error::internal("running a request on a blocking thread"))?
    }

    /// Runs an async domain function that needs a store (the store's connection cannot cross
    /// threads, so the future runs to completion on one blocking thread).
    pub async fn with_async<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Store) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (Store, Result<T>)>,
    {
        let pool = Arc::clone(self);
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let store = pool.take()?;
            let (store, result) = handle.block_on(f(store));
            pool.give_back(store);
            result
        })
        .await
        .map_err(|_| Error::internal("running a request on a blocking thread"))?
    }
}

/// How `veil serve` runs (built from flags, environment and file by
/// [`config::ServeSettings::resolve`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// The store folder.
    pub data_dir: PathBuf,
    /// The address to listen on, `host:port`; a host name is resolved (port 0: any free port,
    /// printed at start).
    pub listen: String,
    /// Jobs that run at the same time.
    pub workers: usize,
    /// Jobs queued or running at once.
    pub queue: usize,
    /// Seconds between two sweeps of what the store does not know (see `veil_runtime::sweep`).
    pub sweep_seconds: u64,
    /// Seconds running jobs get to end when the server is stopped.
    pub grace_seconds: u64,
    /// How the log's lines are written.
    pub log_format: LogFormat,
    /// Veil's executors, when SQL jobs' folds run on a cluster.
    pub cluster: Option<config::ClusterConfig>,
}

/// The router with every route, on a store that is already open (used by tests without a
/// port, and by [`serve`]): counts requests for `GET /metrics` but writes no log.
pub fn app(state: Arc<AppState>) -> Router {
    observed(state, None, Router::new())
}

/// Every route, `GET /metrics`, and around them the layer that counts each request and,
/// with a `log`, writes its line.
fn observed(state: Arc<AppState>, log: Option<Log>, front: Router) -> Router {
    let observer = access_log::Observer {
        metrics: Arc::clone(state.workers.metrics()),
        log,
    };
    let service = Router::new()
        .route("/metrics", get(metrics::metrics))
        .with_state(Arc::clone(&state));
    routes::router(state)
        .merge(service)
        .merge(front)
        .layer(axum::middleware::from_fn_with_state(
            observer,
            access_log::observe,
        ))
}

/// Opens the store, starts the workers, and serves until SIGTERM or Ctrl-C, then stops
/// gracefully (see the crate docs). Prints the address it listens on (useful with port 0).
pub async fn serve(config: ServeConfig) -> Result<()> {
    serve_with(config, |_| Router::new()).await
}

/// [`serve`], with another front end's routes beside the API's (the web console's, which
/// `veil serve` mounts under `/console/`): `front` builds them on the same state, so they share
/// the store, the workers, the log and the metrics.
pub async fn serve_with(
    config: ServeConfig,
    front: impl FnOnce(Arc<AppState>) -> Router,
) -> Result<()> {
    let log = Log::new(config.log_format);
    // The handlers are in place before the address is printed, so a signal sent by whoever
    // read it is always caught.
    let mut signals = StopSignals::new()?;
    let listener = bind(&config.listen).await?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("reading the listening address: {e}")))?;
    if !local.ip().is_loopback() {
        log.notice(&format!(
            "warning: listening on {local}, which is not a loopback address: anyone who can reach it talks to the API without TLS. Listen on 127.0.0.1 behind the bureau's TLS proxy unless this is what you mean."
        ));
    }
    if let Some(cluster) = &config.cluster {
        veil_runtime::cluster::use_cluster(
            &config.data_dir,
            cluster.executors.clone(),
            cluster.bytes_per_partition,
        )?;
        log.notice(&format!(
            "veil serve: SQL jobs fold on {} executor(s)",
            cluster.executors.len()
        ));
    }
    let stores = Arc::new(StorePool::new(&config.data_dir)?);
    let workers = Workers::start_logged(
        &config.data_dir,
        config.workers,
        config.queue,
        Duration::from_secs(config.sweep_seconds),
        Some(log),
    )?;
    let state = Arc::new(AppState {
        stores,
        workers: Arc::clone(&workers),
    });
    let front = front(Arc::clone(&state));
    println!("veil serve: listening on http://{local}");
    let stop = CancellationToken::new();
    let mut http = tokio::spawn(
        axum::serve(listener, observed(state, Some(log), front))
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    let why = tokio::select! {
        served = &mut http => {
            return match served {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::internal(format!("serving HTTP: {e}"))),
                Err(_) => Err(Error::internal("serving HTTP: the server task ended")),
            };
        }
        why = signals.next() => why,
    };
    // No new connection from here; requests in flight are answered.
    stop.cancel();
    log.notice(&format!(
        "{why}: stopping — no new requests or jobs; running jobs get up to {} s to end (a second signal stops at once)",
        config.grace_seconds
    ));
    let grace = Duration::from_secs(config.grace_seconds);
    tokio::select! {
        drained = workers.drain(grace) => {
            let _ = tokio::time::timeout(Duration::from_millis(HTTP_CLOSE_MS), http).await;
            log.notice(&format!("stopped: {drained}"));
        }
        again = signals.next() => {
            log.notice(&format!(
                "{again} again: stopped at once; jobs still running end `failed` at the next start, queued ones run then"
            ));
        }
    }
    Ok(())
}

/// Binds the first address `listen` (`host:port`) resolves to.
async fn bind(listen: &str) -> Result<tokio::net::TcpListener> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host(listen)
        .await
        .map_err(|e| {
            Error::invalid(format!(
                "--listen {listen}: {e}; give host:port, e.g. 127.0.0.1:8080 or localhost:8080"
            ))
        })?
        .collect();
    let mut last = None;
    for address in &addresses {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(format!("{address}: {e}")),
        }
    }
    Err(Error::invalid(format!(
        "cannot listen on {listen} ({}); choose a free port or another address",
        last.unwrap_or_else(|| "it resolves to no address".into())
    )))
}

/// SIGTERM (what a service manager sends) and SIGINT (Ctrl-C), caught from the moment they
/// are created.
struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    fn new() -> Result<Self> {
        let catch =
            |kind| signal(kind).map_err(|e| Error::internal(format!("catching stop signals: {e}")));
        Ok(Self {
            terminate: catch(SignalKind::terminate())?,
            interrupt: catch(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next one; names it.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "Ctrl-C",
        }
    }
}
