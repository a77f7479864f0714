//! Where SQL jobs' folds run: in each job's own process (the default), or on Veil's
//! executors when `veil serve --cluster` names them (see `veil_gate::cluster`).
//!
//! The server sets its cluster once, at start ([`use_cluster`]); every job it runs from then
//! on carries the executors' addresses and the cluster token to its process, which plans the
//! fold on them. Local commands (`veil job run`) never use a cluster. WASM jobs map their rows
//! and fold them in the job's process whatever is set here.

use std::path::Path;
use std::sync::OnceLock;

pub use veil_gate::cluster::{
    BYTES_PER_PARTITION_DEFAULT, ClusterTarget, EXECUTOR_MEMORY_BYTES_DEFAULT, ExecutorConfig,
    TOKEN_FILE, executor_url,
};

use crate::error::{Error, Result};

static TARGET: OnceLock<ClusterTarget> = OnceLock::new();

/// Runs every later job's fold on `executors` (addresses `host:port`), splitting scans at
/// `bytes_per_partition`. Makes the store's cluster token (`cluster.token` in the store
/// folder) if there is none; the executors read the same file from their copy of the store
/// folder. Refuses a second, different cluster in one process.
pub fn use_cluster(
    data_dir: &Path,
    executors: Vec<String>,
    bytes_per_partition: usize,
) -> Result<()> {
    veil_gate::cluster::check_built().map_err(|e| Error::invalid(e.to_string()))?;
    if bytes_per_partition == 0 {
        return Err(Error::invalid(
            "cluster bytes_per_partition must be at least 1",
        ));
    }
    let target = ClusterTarget {
        executors,
        bytes_per_partition,
        token: token(data_dir, true)?,
    };
    target.urls().map_err(|e| Error::invalid(e.to_string()))?;
    let set = TARGET.get_or_init(|| target.clone());
    if *set != target {
        return Err(Error::invalid(
            "this process already runs jobs on another cluster",
        ));
    }
    Ok(())
}

/// The cluster jobs run on, if [`use_cluster`] set one.
pub fn current() -> Option<ClusterTarget> {
    TARGET.get().cloned()
}

/// The store's cluster token (`cluster.token` in the store folder `root`), made if `create`
/// and there is none yet.
pub fn token(root: &Path, create: bool) -> Result<String> {
    veil_gate::cluster::token(root, create).map_err(|e| Error::invalid(e.to_string()))
}

/// Serves as one of Veil's executors (`veil executor`) until `shutdown` resolves: reads the
/// data folder of the store folder `root` (a copy of the server's, or the same shared one)
/// and answers only requests that carry its cluster token.
pub async fn serve_executor(
    listener: tokio::net::TcpListener,
    root: &Path,
    memory_bytes: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let config = ExecutorConfig {
        data_dir: crate::store::Store::data_dir_of(root),
        token: token(root, false)?,
        memory_bytes,
    };
    veil_gate::cluster::serve_executor(listener, config, shutdown)
        .await
        .map_err(|e| Error::invalid(e.to_string()))
}
