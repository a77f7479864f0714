//! The sandbox's object stores: the domain data folder, under its own URL scheme, and the
//! objects of its tables in the domain's buckets.
//!
//! DataFusion's default registry serves `file://` from the whole host file system. The sandbox
//! replaces it with [`DomainStoreRegistry`], which knows a `LocalFileSystem` rooted at the
//! domain data folder and, for a sandbox whose tables live on object storage, one read-only
//! wrapper per bucket that reads exactly those tables' objects (see `object_storage`). Every
//! other URL is refused: a plan that somehow named `/etc/passwd` or another `s3://` object
//! would find no store to read it with.

use std::path::{Component, Path};
use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::object_store::ObjectStore;
use datafusion::object_store::local::LocalFileSystem;
use url::Url;

use crate::sandbox::SandboxError;
use crate::sandbox::object_storage::{self, BucketStores, OBJECT_SCHEME, ObjectStorage, ObjectUrl};

/// URL scheme of the domain data folder.
pub const DOMAIN_SCHEME: &str = "veil-domain";
const DOMAIN_URL: &str = "veil-domain://data/";

/// Serves the domain data folder and the allowed buckets' objects, and nothing else.
#[derive(Debug)]
pub struct DomainStoreRegistry {
    store: Arc<dyn ObjectStore>,
    /// Read-only stores by bucket name; empty unless a constructor below was given objects
    /// or is an executor's.
    buckets: BucketStores,
}

impl DomainStoreRegistry {
    /// The domain data folder only: no bucket is reachable.
    pub fn new(data_dir: &Path) -> Result<Self, SandboxError> {
        Ok(Self {
            store: Self::domain_store(data_dir)?,
            buckets: BucketStores::new(),
        })
    }

    /// The domain data folder and exactly `objects`, read through the store's object storage
    /// configuration `storage`: a sandbox's view.
    pub(crate) fn with_objects(
        data_dir: &Path,
        storage: &ObjectStorage,
        objects: &[ObjectUrl],
    ) -> Result<Self, SandboxError> {
        Ok(Self {
            store: Self::domain_store(data_dir)?,
            buckets: object_storage::allow_listed(storage, objects)?,
        })
    }

    /// A cluster executor's view: the domain data folder and every bucket configured in the
    /// store's `object-storage.toml` (read from beside `data_dir`), read-only — `get` and
    /// `head` of any object, never a listing, a write or a delete. There is no per-object
    /// list because the executor runs plan fragments whose tables the gate already fixed on
    /// the Veil server. A store without the file gives an executor no bucket.
    pub fn for_executor(data_dir: &Path) -> Result<Self, SandboxError> {
        let buckets = match ObjectStorage::load(data_dir)? {
            Some(storage) => object_storage::read_only_buckets(&storage)?,
            None => BucketStores::new(),
        };
        Ok(Self {
            store: Self::domain_store(data_dir)?,
            buckets,
        })
    }

    fn domain_store(data_dir: &Path) -> Result<Arc<dyn ObjectStore>, SandboxError> {
        let store = LocalFileSystem::new_with_prefix(data_dir).map_err(|_| {
            SandboxError::Config(format!(
                "the domain data folder {} cannot be opened",
                data_dir.display()
            ))
        })?;
        Ok(Arc::new(store))
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
            return Ok(self.store.clone());
        }
        let bucket = (url.scheme() == OBJECT_SCHEME)
            .then(|| url.host_str())
            .flatten()
            .and_then(|host| self.buckets.get(host));
        if let Some(bucket) = bucket {
            Ok(bucket.clone())
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

    fn store_with_config(dir: &Path) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        std::fs::write(
            dir.join(object_storage::CONFIG_FILE),
            "[[bucket]]\nname = \"b\"\nendpoint = \"https://s3.domain.internal\"\naccess_key_id = \"id\"\nsecret_access_key = \"s\"\n",
        )?;
        Ok(data)
    }

    #[test]
    fn serves_the_buckets_of_its_objects_only() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let data = store_with_config(dir.path())?;
        let storage = ObjectStorage::require(&data)?;
        let objects = [ObjectUrl::parse("s3://b/t/data.parquet")?];
        let registry = DomainStoreRegistry::with_objects(&data, &storage, &objects)?;
        assert!(
            registry
                .get_store(&Url::parse("s3://b/t/data.parquet")?)
                .is_ok()
        );
        assert!(registry.get_store(&Url::parse("s3://other/x")?).is_err());
        assert!(
            registry
                .get_store(&Url::parse("veil-domain://data/x")?)
                .is_ok()
        );
        // An object in a bucket the configuration does not name is refused at build time.
        let unknown = [ObjectUrl::parse("s3://other/x.parquet")?];
        assert!(DomainStoreRegistry::with_objects(&data, &storage, &unknown).is_err());
        Ok(())
    }

    #[test]
    fn an_executor_reaches_the_configured_buckets() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let data = store_with_config(dir.path())?;
        let registry = DomainStoreRegistry::for_executor(&data)?;
        assert!(
            registry
                .get_store(&Url::parse("s3://b/any.parquet")?)
                .is_ok()
        );
        assert!(registry.get_store(&Url::parse("s3://other/x")?).is_err());
        assert!(
            registry
                .get_store(&Url::parse("file:///etc/passwd")?)
                .is_err()
        );
        // Without the file an executor has the data folder only.
        let bare = tempfile::tempdir()?;
        let bare_data = bare.path().join("data");
        std::fs::create_dir_all(&bare_data)?;
        let registry = DomainStoreRegistry::for_executor(&bare_data)?;
        assert!(
            registry
                .get_store(&Url::parse("s3://b/any.parquet")?)
                .is_err()
        );
        Ok(())
    }
}
