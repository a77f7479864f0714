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
//! and [`error`] (the one place a fault becomes a status). The request and response bodies
//! are `veil_sdk::api`, shared with `veil_sdk::client::Client`; the OpenAPI document is
//! derived from them and from the route annotations (`GET /v1/openapi.json`).
//!
//! **Authorization.** Every route but `GET /v1/health` needs a key. Each route names the roles
//! that may call it (403 otherwise), then checks that the object is the caller's: an operator
//! sees only its own templates, jobs, products, meter records and statements; a provider only
//! its own datasets and statements; a buyer only products offered for sale and what it bought.
//! Another principal's object answers 404, exactly as a missing one, so ids cannot be probed.

pub mod auth;
pub mod error;
pub mod routes;
pub mod workers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;

use veil_runtime::error::{Error, Result};
use veil_runtime::store::Store;
pub use workers::Workers;

/// Idle state-database connections kept for route handlers.
pub const STORE_CONNECTIONS_IDLE_MAX: usize = 16;
/// Largest request body, in bytes: a WASM module (8 MiB) plus room.
pub const REQUEST_BYTES_MAX: usize = 9 * 1024 * 1024;

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

/// How `veil serve` runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The store folder.
    pub data_dir: PathBuf,
    /// The address to listen on (port 0: any free port, printed at start).
    pub listen: SocketAddr,
    /// Jobs that run at the same time.
    pub workers: usize,
    /// Jobs queued or running at once.
    pub queue: usize,
    /// Seconds between two sweeps of what the store does not know (see `veil_runtime::sweep`).
    pub sweep_seconds: u64,
}

/// The router with every route, on a store that is already open (used by tests without a
/// port, and by [`serve`]).
pub fn app(state: Arc<AppState>) -> Router {
    routes::router(state)
}

/// Opens the store, starts the workers, and serves until Ctrl-C. Prints the address it
/// listens on (useful with port 0).
pub async fn serve(config: ServeConfig) -> Result<()> {
    let stores = Arc::new(StorePool::new(&config.data_dir)?);
    let workers = Workers::start_with(
        &config.data_dir,
        config.workers,
        config.queue,
        std::time::Duration::from_secs(config.sweep_seconds),
    )?;
    let state = Arc::new(AppState { stores, workers });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::invalid(format!("cannot listen on {}: {e}", config.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("reading the listening address: {e}")))?;
    println!("veil serve: listening on http://{local}");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Error::internal(format!("serving HTTP: {e}")))
}
