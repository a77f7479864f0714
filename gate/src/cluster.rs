//! Distributed execution of the bounding fold (feature `cluster`), on the DataFusion-contrib
//! engine `datafusion-distributed` (see ARCHITECTURE.md, "Cluster", for why this engine).
//!
//! The gate's plan is the same as on one machine (see `bounding`); only where its first half
//! runs changes:
//!
//! ```text
//! the job's process (coordinator)                 Veil's executors (`veil executor`)
//!   stage plan: scan, WHERE, joins, projection ──► each task: its share of the scan's files
//!   wrapped in FoldExec (the gate's operator)        and byte ranges, in partitions; per
//!                                                    partition one `Fold` over its rows,
//!                                                    sent back as its encoded state
//!   ◄── NetworkCoalesceExec (Arrow Flight) ◄───────
//!   decode the folds, `bounding::finish` merges a unit's slots across all of them (the same
//!   merge, and the same proof, as for the partitions of one machine), then k-anonymity,
//!   noise, the product — all in the job's process, as before.
//! ```
//!
//! `FoldExec` travels to the executors through `engine::FoldCodec`, the engine's extension
//! codec; it carries the job's `bounding::FoldSpec` (limits, measures, and the job's random
//! group hash key, so every fold ranks groups alike and the merge is exact). An executor's
//! session is built by `engine::ExecutorSession`: the sandbox's deny-by-default object-store
//! registry, no spilling, a memory pool of its own, the gate's `veil_div`/`veil_mod`, and a
//! refusal of any request without the cluster token (a shared secret from the store folder,
//! sent as a header by the job's process).
//!
//! What crosses the cluster network: the physical plan (from the job's process to the
//! executors) and every fold's state (unit keys, group keys, counts and clamped sums: raw
//! in-domain data) back. The engine's transport is gRPC over plain HTTP/2: the network between
//! the Veil server and its executors must stay inside the domain (README, "Running jobs on a
//! cluster").
//! An executor that fails or dies mid-job fails the job's query; the job then ends `failed`
//! with its ε spent, and nothing is released from the folds that did arrive.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::sandbox::SandboxError;

#[cfg(feature = "cluster")]
mod engine;
#[cfg(feature = "cluster")]
pub(crate) use engine::fold_on_cluster;

/// The header that carries the cluster token from a job's process to the executors.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
const TOKEN_HEADER: &str = "x-veil-cluster-token";
/// The file in the store folder that holds the cluster token.
pub const TOKEN_FILE: &str = "cluster.token";
/// Scan bytes each executor partition reads before the engine adds a task (the engine's own
/// default).
pub const BYTES_PER_PARTITION_DEFAULT: usize = 16 * 1024 * 1024;
/// Memory an executor's queries may hold together unless told otherwise (2 GiB).
pub const EXECUTOR_MEMORY_BYTES_DEFAULT: usize = 2 * 1024 * 1024 * 1024;
/// What a build without the `cluster` feature says when asked to use a cluster.
#[cfg_attr(feature = "cluster", allow(dead_code))]
const NOT_BUILT: &str = "this veil was built without cluster support: build it with the veil-gate feature `cluster` (on by default)";

/// Where a job's fold runs: Veil's executors, and how the engine splits the scan among them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterTarget {
    /// The executors' addresses, `http://host:port`.
    pub executors: Vec<String>,
    /// Scan bytes per partition before the engine uses another task (and executor).
    pub bytes_per_partition: usize,
    /// The cluster token every executor checks.
    pub token: String,
}

impl fmt::Debug for ClusterTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a credential: never in a log line.
        f.debug_struct("ClusterTarget")
            .field("executors", &self.executors)
            .field("bytes_per_partition", &self.bytes_per_partition)
            .finish_non_exhaustive()
    }
}

impl ClusterTarget {
    /// The executors as URLs; an address without a scheme is taken as `http://`.
    pub fn urls(&self) -> Result<Vec<Url>, SandboxError> {
        if self.executors.is_empty() {
            return Err(SandboxError::Config(
                "a cluster needs at least one executor address (host:port)".into(),
            ));
        }
        self.executors
            .iter()
            .map(|address| executor_url(address))
            .collect()
    }
}

/// `address` (`host:port` or `http://host:port`) as an executor URL.
pub fn executor_url(address: &str) -> Result<Url, SandboxError> {
    let text = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    match Url::parse(&text) {
        Ok(url) if url.scheme() == "http" && url.host_str().is_some() && url.port().is_some() => {
            Ok(url)
        }
        _ => Err(SandboxError::Config(format!(
            "executor address `{address}` is not host:port (e.g. 10.0.0.5:50051)"
        ))),
    }
}

/// The cluster token in the store folder `data_dir`, made (random, owner-readable only) if
/// `create` and there is none yet.
pub fn token(data_dir: &Path, create: bool) -> Result<String, SandboxError> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 32 => Ok(text.trim().to_string()),
        Ok(_) => Err(SandboxError::Config(format!(
            "{} holds no token (expected 64 hex characters); delete it to have one made",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|_| {
                SandboxError::Config("the system's randomness is unavailable".into())
            })?;
            let text = hex::encode(bytes);
            write_private(&path, &text)?;
            Ok(text)
        }
        Err(_) => Err(SandboxError::Config(format!(
            "cannot read the cluster token {}: copy it from the Veil server's store folder",
            path.display()
        ))),
    }
}

/// Writes `text` to `path` through a temporary file, readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), SandboxError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |_| SandboxError::Config(format!("cannot write {}", path.display()));
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(failed)
}

/// How `veil executor` runs.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The domain data folder: what the executor may read.
    pub data_dir: PathBuf,
    /// The cluster token every request must carry (see [`token`]).
    pub token: String,
    /// Memory the executor's running tasks may hold together, in bytes.
    pub memory_bytes: usize,
}

/// Serves as one of Veil's executors until `shutdown` resolves.
pub async fn serve_executor(
    listener: tokio::net::TcpListener,
    config: ExecutorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SandboxError> {
    #[cfg(feature = "cluster")]
    return engine::serve_executor(listener, config, shutdown).await;
    #[cfg(not(feature = "cluster"))]
    {
        let _ = (listener, config, shutdown);
        Err(SandboxError::Config(NOT_BUILT.into()))
    }
}

/// Whether this build can run jobs on a cluster; the refusal to give if not.
pub fn check_built() -> Result<(), SandboxError> {
    #[cfg(feature = "cluster")]
    return Ok(());
    #[cfg(not(feature = "cluster"))]
    Err(SandboxError::Config(NOT_BUILT.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executor_address_is_host_and_port() {
        assert_eq!(
            executor_url("127.0.0.1:5000").expect("valid").as_str(),
            "http://127.0.0.1:5000/"
        );
        let refused = executor_url("127.0.0.1").expect_err("no port");
        assert!(refused.to_string().contains("host:port"), "{refused}");
        assert!(executor_url("ftp://x:1").is_err());
    }

    #[test]
    fn the_token_is_never_printed() {
        let target = ClusterTarget {
            executors: vec!["127.0.0.1:1".into()],
            bytes_per_partition: 1,
            token: "secret-token-value".into(),
        };
        assert!(!format!("{target:?}").contains("secret-token-value"));
    }
}
