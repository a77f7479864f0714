//! `veil serve`'s settings: from its flags, environment variables and a TOML file
//! (`--config FILE`), in that order of precedence, then the defaults.
//!
//! ```toml
//! # veil-serve.toml — every key is optional; a flag or an environment variable overrides it.
//! data_dir = "/srv/veil/store"    # relative paths are taken from this file's folder
//! listen = "127.0.0.1:8080"       # host:port; a host name such as localhost is resolved
//! workers = 2                     # jobs that run at the same time
//! queue = 256                     # jobs queued or running at once (429 beyond)
//! sweep_seconds = 300             # between sweeps of what the store does not know
//! grace_seconds = 60              # on SIGTERM or Ctrl-C, how long running jobs may take to end
//! log_format = "text"             # text | json
//!
//! [cluster]                       # run SQL jobs' folds on Veil's executors (`veil executor`)
//! executors = ["10.0.0.5:50051", "10.0.0.6:50051"]
//! bytes_per_partition = 16777216  # scan bytes per partition before another executor is used
//! ```
//!
//! An unknown key is refused, naming it, so a misspelt setting is not silently ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use veil_runtime::error::{Error, Result};

use crate::ServeConfig;
use crate::access_log::LogFormat;
use crate::workers::{
    GRACE_SECONDS_DEFAULT, GRACE_SECONDS_MAX, QUEUE_JOBS_DEFAULT, WORKERS_DEFAULT,
};

/// The address `veil serve` listens on unless told otherwise: loopback, behind the bureau's
/// TLS proxy.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";

/// Largest configuration file read, in bytes; a settings file is a few hundred.
pub const CONFIG_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Each setting of `veil serve`, if given; one layer of flags, environment or file.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub workers: Option<usize>,
    pub queue: Option<usize>,
    pub sweep_seconds: Option<u64>,
    pub grace_seconds: Option<u64>,
    pub log_format: Option<LogFormat>,
    pub cluster: Option<ClusterSettings>,
}

/// The `[cluster]` section (or `--cluster`): Veil's executors, which run SQL jobs' folds.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// The executors' addresses, `host:port`.
    #[serde(default)]
    pub executors: Vec<String>,
    /// Scan bytes per partition before the engine uses another task and executor.
    pub bytes_per_partition: Option<usize>,
}

/// Where `veil serve` runs jobs' folds when it has a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub executors: Vec<String>,
    pub bytes_per_partition: usize,
}

impl ServeSettings {
    /// The settings in the TOML file at `path`; a relative `data_dir` is taken from the
    /// file's folder, so the file means the same from wherever the server is started.
    pub fn from_file(path: &Path) -> Result<Self> {
        let size = std::fs::metadata(path)
            .map_err(|e| {
                Error::invalid(format!(
                    "cannot read the config file {}: {e}",
                    path.display()
                ))
            })?
            .len();
        if size > CONFIG_FILE_BYTES_MAX {
            return Err(Error::invalid(format!(
                "the config file {} is {size} bytes; a settings file has at most {CONFIG_FILE_BYTES_MAX}",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(format!(
                "cannot read the config file {}: {e}",
                path.display()
            ))
        })?;
        let mut settings: Self = toml::from_str(&text).map_err(|e| {
            Error::invalid(format!(
                "the config file {} is not valid: {} (keys: data_dir, listen, workers, queue, sweep_seconds, grace_seconds, log_format, [cluster] executors and bytes_per_partition)",
                path.display(),
                e.message()
            ))
        })?;
        if let Some(dir) = &settings.data_dir
            && dir.is_relative()
        {
            let base = path.parent().unwrap_or_else(|| Path::new("."));
            settings.data_dir = Some(base.join(dir));
        }
        Ok(settings)
    }

    /// These settings, each missing one taken from `lower`.
    pub fn or(self, lower: Self) -> Self {
        Self {
            data_dir: self.data_dir.or(lower.data_dir),
            listen: self.listen.or(lower.listen),
            workers: self.workers.or(lower.workers),
            queue: self.queue.or(lower.queue),
            sweep_seconds: self.sweep_seconds.or(lower.sweep_seconds),
            grace_seconds: self.grace_seconds.or(lower.grace_seconds),
            log_format: self.log_format.or(lower.log_format),
            cluster: match (self.cluster, lower.cluster) {
                // A flag's executors over the file's; the file's other cluster settings stay.
                (Some(mine), Some(theirs)) => Some(ClusterSettings {
                    executors: if mine.executors.is_empty() {
                        theirs.executors
                    } else {
                        mine.executors
                    },
                    bytes_per_partition: mine.bytes_per_partition.or(theirs.bytes_per_partition),
                }),
                (mine, theirs) => mine.or(theirs),
            },
        }
    }

    /// The server's configuration: these settings, the defaults for the rest. The store folder
    /// has no default.
    pub fn resolve(self) -> Result<ServeConfig> {
        let data_dir = self.data_dir.ok_or_else(|| {
            Error::invalid(
                "name the store folder: --data-dir D, VEIL_DATA_DIR, or data_dir in the --config file",
            )
        })?;
        let grace_seconds = self.grace_seconds.unwrap_or(GRACE_SECONDS_DEFAULT);
        if grace_seconds > GRACE_SECONDS_MAX {
            return Err(Error::invalid(format!(
                "--grace-seconds must be at most {GRACE_SECONDS_MAX}"
            )));
        }
        Ok(ServeConfig {
            data_dir,
            listen: self.listen.unwrap_or_else(|| LISTEN_DEFAULT.to_string()),
            workers: self.workers.unwrap_or(WORKERS_DEFAULT),
            queue: self.queue.unwrap_or(QUEUE_JOBS_DEFAULT),
            sweep_seconds: self
                .sweep_seconds
                .unwrap_or(veil_runtime::sweep::SWEEP_INTERVAL_SECONDS),
            grace_seconds,
            log_format: self.log_format.unwrap_or_default(),
            cluster: match self.cluster {
                Some(cluster) if cluster.executors.is_empty() => {
                    return Err(Error::invalid(
                        "the cluster has no executors: name them with --cluster HOST:PORT,… or executors = [\"HOST:PORT\"] under [cluster]",
                    ));
                }
                Some(cluster) => Some(ClusterConfig {
                    executors: cluster.executors,
                    bytes_per_partition: cluster
                        .bytes_per_partition
                        .unwrap_or(veil_runtime::cluster::BYTES_PER_PARTITION_DEFAULT),
                }),
                None => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_overrides_the_file_and_the_file_overrides_the_default() {
        let dir = tempfile::tempdir().expect("folder");
        let path = dir.path().join("serve.toml");
        std::fs::write(
            &path,
            "data_dir = \"store\"\nworkers = 3\nqueue = 9\nlog_format = \"json\"\n",
        )
        .expect("file");
        let file = ServeSettings::from_file(&path).expect("read");
        let flags = ServeSettings {
            workers: Some(5),
            ..Default::default()
        };
        let config = flags.or(file).resolve().expect("resolved");
        assert_eq!(config.workers, 5);
        assert_eq!(config.queue, 9);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.data_dir, dir.path().join("store"));
        assert_eq!(config.listen, LISTEN_DEFAULT);
        assert_eq!(config.grace_seconds, GRACE_SECONDS_DEFAULT);
    }

    #[test]
    fn the_cluster_section_names_executors_and_a_flag_overrides_them() {
        let dir = tempfile::tempdir().expect("folder");
        let path = dir.path().join("serve.toml");
        std::fs::write(
            &path,
            "data_dir = \"store\"\n[cluster]\nexecutors = [\"10.0.0.5:50051\"]\nbytes_per_partition = 1024\n",
        )
        .expect("file");
        let file = ServeSettings::from_file(&path).expect("read");
        let config = file.clone().resolve().expect("resolved");
        assert_eq!(
            config.cluster,
            Some(ClusterConfig {
                executors: vec!["10.0.0.5:50051".into()],
                bytes_per_partition: 1024
            })
        );
        let flags = ServeSettings {
            cluster: Some(ClusterSettings {
                executors: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
                bytes_per_partition: None,
            }),
            ..Default::default()
        };
        let config = flags.or(file).resolve().expect("resolved");
        let cluster = config.cluster.expect("a cluster");
        assert_eq!(cluster.executors.len(), 2);
        assert_eq!(cluster.bytes_per_partition, 1024);

        std::fs::write(&path, "data_dir = \"store\"\n[cluster]\n").expect("file");
        let error = ServeSettings::from_file(&path)
            .expect("read")
            .resolve()
            .expect_err("no executors")
            .to_string();
        assert!(error.contains("--cluster"), "{error}");
    }

    #[test]
    fn a_misspelt_key_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("folder");
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, "worker = 3\n").expect("file");
        let error = ServeSettings::from_file(&path)
            .expect_err("refused")
            .to_string();
        assert!(error.contains("unknown field `worker`"), "{error}");
        assert!(error.contains("workers"), "{error}");
    }

    #[test]
    fn without_a_store_folder_it_says_where_to_give_one() {
        let error = ServeSettings::default()
            .resolve()
            .expect_err("refused")
            .to_string();
        assert!(error.contains("--data-dir"), "{error}");
    }
}
