//! The sandbox's only object store: the domain data folder, under its own URL scheme.
//!
//! DataFusion's default registry serves `file://` from the whole host file system. The sandbox
//! replaces it with [`DomainStoreRegistry`], which knows exactly one store — a
//! `LocalFileSystem` rooted at the domain data folder — and refuses every other URL. A plan that
//! somehow named `/etc/passwd` or `s3://…` would find no store to read it with.

use std::path::{Component, Path};
use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::object_store::ObjectStore;
use datafusion::object_store::local::LocalFileSystem;
use url::Url;

use crate::sandbox::SandboxError;

/// URL scheme of the domain data folder.
pub const DOMAIN_SCHEME: &str = "veil-domain";
const DOMAIN_URL: &str = "veil-domain://data/";

/// Serves the domain data folder and nothing else.
#[derive(Debug)]
pub struct DomainStoreRegistry {
    store: Arc<dyn ObjectStore>,
}

impl DomainStoreRegistry {
    pub fn new(data_dir: &Path) -> Result<Self, SandboxError> {
        let store = LocalFileSystem::new_with_prefix(data_dir).map_err(|_| {
            SandboxError::Config(format!(
                "the domain data folder {} cannot be opened",
                data_dir.display()
            ))
        })?;
        Ok(Self {
            store: Arc::new(store),
        })
    }

    fn is_domain(url: &Url) -> bool {
        url.scheme() == DOMAIN_SCHEME && url.host_str() == Some("data")
    }
}

impl ObjectStoreRegistry for DomainStoreRegistry {
    fn register_store(
        &self,
        _url: &Url,
        _store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        // Registering stores is how a session would reach new places; the sandbox allows none.
        None
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if Self::is_domain(url) {
            Ok(self.store.clone())
        } else {
            Err(DataFusionError::Plan(
                "the sandbox has no object store for this location".into(),
            ))
        }
    }
}

/// Checks that a table path is relative and stays inside the domain data folder.
pub(crate) fn checked_relative(relative: &Path) -> Result<&Path, SandboxError> {
    let ok = !relative.as_os_str().is_empty()
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(relative)
    } else {
        Err(SandboxError::Config(format!(
            "table path {} must be relative to the domain data folder, without `..`",
            relative.display()
        )))
    }
}

/// The `veil-domain://` URL of a table file.
pub(crate) fn domain_url(relative: &Path) -> Result<String, SandboxError> {
    let relative = checked_relative(relative)?;
    let mut url = String::from(DOMAIN_URL);
    let mut first = true;
    for component in relative.components() {
        if !first {
            url.push('/');
        }
        first = false;
        let part = component
            .as_os_str()
            .to_str()
            .ok_or_else(|| SandboxError::Config("table paths must be valid UTF-8".into()))?;
        url.push_str(part);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_that_leave_the_domain() {
        assert!(checked_relative(Path::new("/etc/passwd")).is_err());
        assert!(checked_relative(Path::new("../x.parquet")).is_err());
        assert!(checked_relative(Path::new("a/../../x")).is_err());
        assert!(checked_relative(Path::new("ds_1/data.parquet")).is_ok());
    }

    #[test]
    fn serves_only_the_domain_scheme() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let registry = DomainStoreRegistry::new(dir.path())?;
        assert!(
            registry
                .get_store(&Url::parse("veil-domain://data/x")?)
                .is_ok()
        );
        assert!(
            registry
                .get_store(&Url::parse("file:///etc/passwd")?)
                .is_err()
        );
        assert!(registry.get_store(&Url::parse("s3://bucket/x")?).is_err());
        Ok(())
    }
}
