//! Datasets on S3-compatible object storage inside the domain.
//!
//! A dataset's file may be an object in a bucket the bureau runs inside the domain, named by
//! an `s3://<bucket>/<key>` URL. Which buckets exist, where their servers answer and the
//! credentials to read them come from one file, `<store>/object-storage.toml`, that the bureau
//! writes (never an operator, never a job's text): [`ObjectStorage::load`] reads it.
//!
//! ```toml
//! [[bucket]]
//! name = "province-data"               # datasets name objects as s3://province-data/<key>
//! endpoint = "http://127.0.0.1:9000"   # any S3-compatible server inside the domain
//! region = "us-east-1"
//! access_key_id = "…"
//! secret_access_key = "…"
//! allow_http = true                    # default false: only https endpoints
//! ```
//!
//! The file sits in the store folder, next to the data folder and not inside it: the data
//! folder is what the sandbox's `veil-domain://` store serves, and the secrets must not be
//! one misregistered table away from a query.
//!
//! A sandbox never holds a bucket's client itself. It holds a [`ReadOnlyObjects`] wrapper
//! that serves reads (`get`, ranges, `head`) of exactly the objects of its tables and
//! refuses everything else — listing, writing, deleting, copying, multipart uploads — with an
//! error that names no path. Veil's cluster executors get the same wrapper without a
//! per-object list (reads of any object of a configured bucket, nothing else), since the plan
//! they receive was already checked by the gate on the Veil server.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use datafusion::object_store::aws::AmazonS3Builder;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::{
    ClientOptions, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RetryConfig,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Deserialize;
use url::Url;

use crate::sandbox::SandboxError;

/// Name of the object storage configuration file, in the store folder.
pub const CONFIG_FILE: &str = "object-storage.toml";
/// Largest configuration file read, in bytes (a bucket takes a few hundred).
pub const CONFIG_BYTES_MAX: u64 = 64 * 1024;
/// Most buckets one configuration may name.
pub const BUCKETS_MAX: usize = 64;
/// Most objects one sandbox may read (one per table; see `session::TABLES_MAX`).
pub const OBJECTS_MAX: usize = 64;
/// Retries of one failed request (a server error or a dropped connection). A bureau's server
/// sits inside the domain: a short outage should not make a registration wait for minutes.
const RETRIES_MAX: usize = 2;
/// Longest time one request and its retries may take, in seconds.
const REQUEST_TIMEOUT_S: u64 = 60;
/// Longest time to connect to a bucket's server, in seconds.
const CONNECT_TIMEOUT_S: u64 = 10;

/// The URL scheme of objects.
pub const OBJECT_SCHEME: &str = "s3";

/// The file the object storage configuration of the store whose data folder is `data_dir`
/// lives in: `<store>/object-storage.toml`.
pub fn config_path(data_dir: &Path) -> PathBuf {
    data_dir.parent().unwrap_or(data_dir).join(CONFIG_FILE)
}

/// Whether a dataset's file names an object (`s3://…`) rather than a file in the data folder.
pub fn is_object_url(file: &str) -> bool {
    file.starts_with("s3://")
}

/// One bucket the store may read, as the bureau configured it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// The bucket's name: datasets name its objects `s3://<name>/<key>`.
    pub name: String,
    /// The S3-compatible server, e.g. `https://s3.bureau.internal:9000`.
    pub endpoint: String,
    /// The region the server signs requests for (`us-east-1` when it does not care).
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id: String,
    secret_access_key: String,
    /// Allow a plain `http://` endpoint (default `false`: the credentials and the in-domain
    /// data would cross the network unencrypted).
    #[serde(default)]
    pub allow_http: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

// The secret never appears in a log line or an error, even one that prints the whole config.
impl fmt::Debug for BucketConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BucketConfig")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    bucket: Vec<BucketConfig>,
}

/// An object named by an `s3://<bucket>/<key>` URL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectUrl {
    bucket: String,
    path: ObjectPath,
}

impl ObjectUrl {
    /// Parses an object's URL. Refused: another scheme, no bucket, no key, a key ending in
    /// `/` (a dataset is one object, never a prefix), a query or fragment.
    pub fn parse(text: &str) -> Result<Self, SandboxError> {
        let bad = |why: &str| {
            SandboxError::Config(format!(
                "{text} is not an object's URL ({why}); write s3://<bucket>/<key>.parquet"
            ))
        };
        let url = Url::parse(text).map_err(|_| bad("it does not parse"))?;
        if url.scheme() != OBJECT_SCHEME {
            return Err(bad("the scheme is not s3"));
        }
        let Some(bucket) = url.host_str().filter(|b| !b.is_empty()) else {
            return Err(bad("it names no bucket"));
        };
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(bad("it holds a query, a fragment or credentials"));
        }
        if url.path().len() <= 1 || url.path().ends_with('/') {
            return Err(bad("it names no object"));
        }
        // The same conversion DataFusion's listing table applies to the URL, so the path
        // allow-listed here is the path the scan asks for.
        let path = ObjectPath::from_url_path(url.path()).map_err(|_| bad("its key is invalid"))?;
        Ok(Self {
            bucket: bucket.to_string(),
            path,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object's key inside its bucket.
    pub fn key(&self) -> &str {
        self.path.as_ref()
    }

    pub(crate) fn path(&self) -> &ObjectPath {
        &self.path
    }
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.path)
    }
}

/// What a `HEAD` of an object tells: enough to notice that it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectFacts {
    /// The object's size, in bytes.
    pub size: u64,
    /// The server's entity tag, if it gives one.
    pub etag: Option<String>,
}

/// The store's object storage configuration: the buckets it may read.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    file: PathBuf,
    buckets: Vec<BucketConfig>,
}

impl ObjectStorage {
    /// Reads `<store>/object-storage.toml` for the store whose data folder is `data_dir`.
    /// `Ok(None)` when there is no such file: the store has no object storage.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, SandboxError> {
        let file = config_path(data_dir);
        let metadata = match std::fs::metadata(&file) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(_) => {
                return Err(SandboxError::Config(format!(
                    "{} cannot be read; give the Veil process read access to it",
                    file.display()
                )));
            }
        };
        if metadata.len() > CONFIG_BYTES_MAX {
            return Err(SandboxError::Config(format!(
                "{} is larger than {CONFIG_BYTES_MAX} bytes; it should hold only [[bucket]] tables",
                file.display()
            )));
        }
        let text = std::fs::read_to_string(&file).map_err(|_| {
            SandboxError::Config(format!(
                "{} cannot be read as UTF-8 text; give the Veil process read access to it",
                file.display()
            ))
        })?;
        Self::parse(&text, file).map(Some)
    }

    /// [`ObjectStorage::load`], refusing a store without the file: the message names the
    /// file to write.
    pub fn require(data_dir: &Path) -> Result<Self, SandboxError> {
        Self::load(data_dir)?.ok_or_else(|| {
            SandboxError::Config(format!(
                "this store has no object storage configured: the bureau writes the bucket's endpoint, region and credentials into {} (a [[bucket]] table with name, endpoint, region, access_key_id, secret_access_key; see the README, \"Object storage\")",
                config_path(data_dir).display()
            ))
        })
    }

    /// Parses the configuration's text; `file` names it in errors.
    pub fn parse(text: &str, file: PathBuf) -> Result<Self, SandboxError> {
        let parsed: ConfigFile = toml::from_str(text).map_err(|e| {
            // toml's message quotes the offending line, which may hold a secret: keep only
            // its first line ("unknown field `x`, expected one of …" and the like).
            let message = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_string();
            SandboxError::Config(format!(
                "{} is not a valid object storage configuration: {message}",
                file.display()
            ))
        })?;
        if parsed.bucket.len() > BUCKETS_MAX {
            return Err(SandboxError::Config(format!(
                "{} names more than {BUCKETS_MAX} buckets",
                file.display()
            )));
        }
        let mut seen = BTreeSet::new();
        for bucket in &parsed.bucket {
            let problem = if bucket.name.is_empty() || bucket.name.contains(['/', ':']) {
                Some("its name must be a plain bucket name".to_string())
            } else if !seen.insert(bucket.name.clone()) {
                Some("it is named twice".to_string())
            } else {
                match Url::parse(&bucket.endpoint) {
                    Ok(url) if url.scheme() == "https" => None,
                    Ok(url) if url.scheme() == "http" && bucket.allow_http => None,
                    Ok(url) if url.scheme() == "http" => Some(
                        "its endpoint is plain http; use https, or set allow_http = true for a server the domain's network alone protects".to_string(),
                    ),
                    _ => Some("its endpoint must be an http(s):// URL".to_string()),
                }
            };
            if let Some(problem) = problem {
                return Err(SandboxError::Config(format!(
                    "{}: bucket `{}`: {problem}",
                    file.display(),
                    bucket.name
                )));
            }
        }
        Ok(Self {
            file,
            buckets: parsed.bucket,
        })
    }

    /// The configuration file's path (for messages).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The configured buckets' names.
    pub fn bucket_names(&self) -> impl Iterator<Item = &str> {
        self.buckets.iter().map(|b| b.name.as_str())
    }

    fn bucket(&self, name: &str) -> Result<&BucketConfig, SandboxError> {
        self.buckets.iter().find(|b| b.name == name).ok_or_else(|| {
            SandboxError::Config(format!(
                "bucket `{name}` is not configured in {}; the bureau adds a [[bucket]] table for it",
                self.file.display()
            ))
        })
    }

    /// The S3 client of one bucket: path-style requests to its endpoint, with its region and
    /// keys and nothing from the environment.
    fn client(&self, name: &str) -> Result<Arc<dyn ObjectStore>, SandboxError> {
        let bucket = self.bucket(name)?;
        let retry = RetryConfig {
            max_retries: RETRIES_MAX,
            retry_timeout: Duration::from_secs(REQUEST_TIMEOUT_S),
            ..RetryConfig::default()
        };
        let client = ClientOptions::new()
            .with_allow_http(bucket.allow_http)
            .with_connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_S))
            .with_timeout(Duration::from_secs(REQUEST_TIMEOUT_S));
        // `AmazonS3Builder::new`, not `from_env`: credentials come only from the bureau's file.
        let store = AmazonS3Builder::new()
            .with_bucket_name(&bucket.name)
            .with_endpoint(&bucket.endpoint)
            .with_region(&bucket.region)
            .with_access_key_id(&bucket.access_key_id)
            .with_secret_access_key(&bucket.secret_access_key)
            .with_allow_http(bucket.allow_http)
            .with_virtual_hosted_style_request(false)
            .with_retry(retry)
            .with_client_options(client)
            .build()
            .map_err(|_| {
                SandboxError::Config(format!(
                    "bucket `{name}` in {} cannot be used: check its endpoint and region",
                    self.file.display()
                ))
            })?;
        Ok(Arc::new(store))
    }

    /// The bucket's client behind a wrapper that reads exactly `objects` (all in this bucket).
    pub(crate) fn allow_list(
        &self,
        bucket: &str,
        objects: impl IntoIterator<Item = ObjectPath>,
    ) -> Result<Arc<dyn ObjectStore>, SandboxError> {
        Ok(Arc::new(ReadOnlyObjects {
            inner: self.client(bucket)?,
            only: Some(objects.into_iter().collect()),
        }))
    }

    /// The bucket's client behind a wrapper that reads any of its objects and writes none.
    pub(crate) fn read_only(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, SandboxError> {
        Ok(Arc::new(ReadOnlyObjects {
            inner: self.client(bucket)?,
            only: None,
        }))
    }

    /// The object's size and ETag, from a `HEAD` request.
    pub async fn head(&self, url: &ObjectUrl) -> Result<ObjectFacts, SandboxError> {
        let client = self.client(url.bucket())?;
        let meta = client
            .head(url.path())
            .await
            .map_err(|e| self.describe(url, &e))?;
        Ok(facts(&meta))
    }

    /// Opens the object for one streaming read: its facts and its bytes, in order.
    pub async fn open(
        &self,
        url: &ObjectUrl,
    ) -> Result<(ObjectFacts, BoxStream<'static, Result<Bytes, SandboxError>>), SandboxError> {
        let client = self.client(url.bucket())?;
        let got = client
            .get_opts(url.path(), GetOptions::default())
            .await
            .map_err(|e| self.describe(url, &e))?;
        let object_facts = facts(&got.meta);
        let this = self.clone();
        let named = url.clone();
        let stream = got
            .into_stream()
            .map(move |chunk| chunk.map_err(|e| this.describe(&named, &e)))
            .boxed();
        Ok((object_facts, stream))
    }

    /// An object store error as the bureau should read it: what to check, without the
    /// secret (the server's message may quote the request; the secret is never in it, but it
    /// is removed should a server ever echo it).
    fn describe(&self, url: &ObjectUrl, error: &datafusion::object_store::Error) -> SandboxError {
        use datafusion::object_store::Error as E;
        let file = self.file.display();
        let bucket = url.bucket();
        let message = match error {
            E::NotFound { .. } => {
                format!("object {url} does not exist; check the key, or upload the object first")
            }
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => format!(
                "the server of bucket `{bucket}` refused access to {url}: check access_key_id and secret_access_key of bucket `{bucket}` in {file}"
            ),
            other => {
                let mut text = other.to_string();
                if let Ok(bucket) = self.bucket(bucket)
                    && !bucket.secret_access_key.is_empty()
                {
                    text = text.replace(&bucket.secret_access_key, "<redacted>");
                }
                // An S3 server says "SignatureDoesNotMatch" or "InvalidAccessKeyId" with a
                // 403 that object_store reports as a generic error.
                if text.contains("SignatureDoesNotMatch")
                    || text.contains("InvalidAccessKeyId")
                    || text.contains("403")
                {
                    format!(
                        "the server of bucket `{bucket}` refused access to {url}: check access_key_id and secret_access_key of bucket `{bucket}` in {file}"
                    )
                } else {
                    let short: String = text.chars().take(400).collect();
                    format!(
                        "reading {url} failed: {short}; check the endpoint of bucket `{bucket}` in {file} and that its server is running"
                    )
                }
            }
        };
        SandboxError::Config(message)
    }
}

/// The Arrow schema in a Parquet object's footer (a `HEAD`, then range reads of the
/// footer), read the way the sandbox's listing table reads it, through a client that may read
/// that one object only.
pub async fn parquet_schema(
    storage: &ObjectStorage,
    url: &ObjectUrl,
) -> Result<datafusion::arrow::datatypes::SchemaRef, SandboxError> {
    use datafusion::datasource::file_format::FileFormat;
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    let client = storage.allow_list(url.bucket(), [url.path().clone()])?;
    let meta = client
        .head(url.path())
        .await
        .map_err(|e| storage.describe(url, &e))?;
    let state = datafusion::prelude::SessionContext::new().state();
    ParquetFormat::default()
        .infer_schema(&state, &client, &[meta])
        .await
        .map_err(|_| SandboxError::Config(format!("{url} is not a valid Parquet object")))
}

fn facts(meta: &ObjectMeta) -> ObjectFacts {
    ObjectFacts {
        size: meta.size,
        etag: meta.e_tag.clone(),
    }
}

/// Runs `future` to completion on a runtime of its own, in a thread of its own, so that
/// synchronous code (registration, the command line) can read objects whether or not it is
/// itself running inside a Tokio runtime.
pub fn block_on<T: Send>(future: impl Future<Output = T> + Send) -> Result<T, SandboxError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(SandboxError::internal)?;
                Ok(runtime.block_on(future))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(SandboxError::Config(
                    "reading from object storage stopped unexpectedly".into(),
                ))
            })
    })
}

/// The stores of the buckets a sandbox may read, keyed by bucket name.
pub(crate) type BucketStores = HashMap<String, Arc<dyn ObjectStore>>;

/// Allow-listed stores for `objects`: one wrapper per bucket, reading exactly its objects.
pub(crate) fn allow_listed(
    storage: &ObjectStorage,
    objects: &[ObjectUrl],
) -> Result<BucketStores, SandboxError> {
    if objects.len() > OBJECTS_MAX {
        return Err(SandboxError::Config(format!(
            "a sandbox reads at most {OBJECTS_MAX} objects"
        )));
    }
    let mut by_bucket: HashMap<&str, Vec<ObjectPath>> = HashMap::new();
    for object in objects {
        by_bucket
            .entry(object.bucket())
            .or_default()
            .push(object.path().clone());
    }
    by_bucket
        .into_iter()
        .map(|(bucket, paths)| Ok((bucket.to_string(), storage.allow_list(bucket, paths)?)))
        .collect()
}

/// Every configured bucket, read-only (a cluster executor's view).
pub(crate) fn read_only_buckets(storage: &ObjectStorage) -> Result<BucketStores, SandboxError> {
    storage
        .bucket_names()
        .map(|bucket| Ok((bucket.to_string(), storage.read_only(bucket)?)))
        .collect()
}

/// A bucket's client that only reads: every object (`only` = `None`, an executor's view) or
/// exactly the listed ones (a sandbox's view). Everything else is refused with an error that
/// names no path, so a refusal tells a query nothing about what the bucket holds.
#[derive(Debug)]
pub struct ReadOnlyObjects {
    inner: Arc<dyn ObjectStore>,
    only: Option<BTreeSet<ObjectPath>>,
}

impl ReadOnlyObjects {
    fn allows(&self, location: &ObjectPath) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.contains(location))
    }
}

impl fmt::Display for ReadOnlyObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReadOnlyObjects")
    }
}

fn refused() -> datafusion::object_store::Error {
    datafusion::object_store::Error::Generic {
        store: "veil",
        source: "the sandbox may only read the objects of its tables".into(),
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = datafusion::object_store::Result<T>> + Send + 'a>>;

fn refuse<'a, T: Send + 'a>() -> Boxed<'a, T> {
    Box::pin(async { Err(refused()) })
}

// `ObjectStore` is an `async_trait` trait; these are its methods with the lifetimes that
// macro would write, so the gate needs no extra dependency for one impl.
impl ObjectStore for ReadOnlyObjects {
    fn put_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        _location: &'life1 ObjectPath,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> Boxed<'async_trait, PutResult>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        refuse()
    }

    fn put_multipart_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        _location: &'life1 ObjectPath,
        _opts: PutMultipartOptions,
    ) -> Boxed<'async_trait, Box<dyn MultipartUpload>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        refuse()
    }

    fn get_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        location: &'life1 ObjectPath,
        options: GetOptions,
    ) -> Boxed<'async_trait, GetResult>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        // `head` and `get_range` of `ObjectStoreExt` come here too, as options of a get.
        if !self.allows(location) {
            return refuse();
        }
        self.inner.get_opts(location, options)
    }

    fn get_ranges<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        location: &'life1 ObjectPath,
        ranges: &'life2 [Range<u64>],
    ) -> Boxed<'async_trait, Vec<Bytes>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        if !self.allows(location) {
            return refuse();
        }
        self.inner.get_ranges(location, ranges)
    }

    fn delete_stream(
        &self,
        _locations: BoxStream<'static, datafusion::object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, datafusion::object_store::Result<ObjectPath>> {
        futures::stream::once(async { Err(refused()) }).boxed()
    }

    fn list(
        &self,
        _prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, datafusion::object_store::Result<ObjectMeta>> {
        futures::stream::once(async { Err(refused()) }).boxed()
    }

    fn list_with_offset(
        &self,
        _prefix: Option<&ObjectPath>,
        _offset: &ObjectPath,
    ) -> BoxStream<'static, datafusion::object_store::Result<ObjectMeta>> {
        futures::stream::once(async { Err(refused()) }).boxed()
    }

    fn list_with_delimiter<'life0, 'life1, 'async_trait>(
        &'life0 self,
        _prefix: Option<&'life1 ObjectPath>,
    ) -> Boxed<'async_trait, ListResult>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        refuse()
    }

    fn copy_opts<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        _from: &'life1 ObjectPath,
        _to: &'life2 ObjectPath,
        _options: CopyOptions,
    ) -> Boxed<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        refuse()
    }

    fn rename_opts<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        _from: &'life1 ObjectPath,
        _to: &'life2 ObjectPath,
        _options: datafusion::object_store::RenameOptions,
    ) -> Boxed<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        refuse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::object_store::ObjectStoreExt;
    use datafusion::object_store::memory::InMemory;

    fn wrapper(only: Option<&[&str]>) -> (Arc<InMemory>, ReadOnlyObjects) {
        let inner = Arc::new(InMemory::new());
        let wrapper = ReadOnlyObjects {
            inner: inner.clone(),
            only: only.map(|paths| paths.iter().map(|p| ObjectPath::from(*p)).collect()),
        };
        (inner, wrapper)
    }

    async fn seed(inner: &InMemory) {
        for path in ["ds/a.parquet", "ds/b.parquet"] {
            inner
                .put(&ObjectPath::from(path), PutPayload::from_static(b"abcdef"))
                .await
                .expect("seed");
        }
    }

    #[tokio::test]
    async fn reads_only_the_listed_objects() {
        let (inner, store) = wrapper(Some(&["ds/a.parquet"]));
        seed(&inner).await;
        let a = ObjectPath::from("ds/a.parquet");
        let b = ObjectPath::from("ds/b.parquet");
        assert_eq!(store.head(&a).await.expect("head").size, 6);
        assert_eq!(
            store.get_range(&a, 1..3).await.expect("range").as_ref(),
            b"bc"
        );
        assert_eq!(
            store
                .get_ranges(&a, &[0..1, 4..6])
                .await
                .expect("ranges")
                .len(),
            2
        );
        let refused = store.get(&b).await.expect_err("not listed");
        // The refusal names no path: it tells nothing about what the bucket holds.
        assert!(!refused.to_string().contains("b.parquet"), "{refused}");
        assert!(store.head(&b).await.is_err());
        assert!(store.get_range(&b, 0..1).await.is_err());
        assert!(store.get_ranges(&b, &[0..1, 2..3]).await.is_err());
    }

    #[tokio::test]
    async fn never_lists_writes_deletes_or_copies() {
        for only in [Some(&["ds/a.parquet"][..]), None] {
            let (inner, store) = wrapper(only);
            seed(&inner).await;
            let a = ObjectPath::from("ds/a.parquet");
            let c = ObjectPath::from("ds/c.parquet");
            assert!(store.list(None).next().await.expect("one item").is_err());
            assert!(store.list(Some(&a)).next().await.expect("one").is_err());
            assert!(store.list_with_delimiter(None).await.is_err());
            assert!(store.put(&a, PutPayload::from_static(b"x")).await.is_err());
            assert!(store.put_multipart(&c).await.is_err());
            assert!(store.delete(&a).await.is_err());
            assert!(store.copy(&a, &c).await.is_err());
            assert!(store.rename(&a, &c).await.is_err());
            // Nothing changed underneath.
            assert_eq!(inner.head(&a).await.expect("still there").size, 6);
            assert!(inner.head(&c).await.is_err());
        }
    }

    #[tokio::test]
    async fn an_executor_reads_any_object_of_its_buckets() {
        let (inner, store) = wrapper(None);
        seed(&inner).await;
        assert!(store.head(&ObjectPath::from("ds/b.parquet")).await.is_ok());
    }

    #[test]
    fn object_urls_name_one_object() {
        let url = ObjectUrl::parse("s3://province-data/social/2026.parquet").expect("valid");
        assert_eq!(url.bucket(), "province-data");
        assert_eq!(url.key(), "social/2026.parquet");
        assert_eq!(url.to_string(), "s3://province-data/social/2026.parquet");
        for bad in [
            "s3://bucket/",
            "s3://bucket",
            "s3:///key.parquet",
            "https://bucket/key.parquet",
            "s3://bucket/key.parquet?versionId=1",
            "s3://user:pw@bucket/key.parquet",
        ] {
            assert!(ObjectUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_configuration_refuses_unknown_keys_and_plain_http() {
        let file = PathBuf::from("/store/object-storage.toml");
        let good = r#"
            [[bucket]]
            name = "b"
            endpoint = "http://127.0.0.1:9000"
            access_key_id = "id"
            secret_access_key = "very-secret"
            allow_http = true
        "#;
        let storage = ObjectStorage::parse(good, file.clone()).expect("valid");
        assert_eq!(storage.bucket_names().collect::<Vec<_>>(), ["b"]);
        assert!(!format!("{storage:?}").contains("very-secret"));

        let unknown = good.replace("allow_http", "alow_http");
        let error = ObjectStorage::parse(&unknown, file.clone())
            .expect_err("unknown key")
            .to_string();
        assert!(error.contains("alow_http"), "{error}");
        assert!(!error.contains("very-secret"), "{error}");

        let plain = good.replace("allow_http = true", "");
        let error = ObjectStorage::parse(&plain, file.clone())
            .expect_err("plain http")
            .to_string();
        assert!(error.contains("allow_http"), "{error}");
    }

    #[tokio::test]
    async fn a_sandbox_table_on_object_storage_needs_the_configuration() {
        let dir = tempfile::tempdir().expect("dir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data folder");
        let error = crate::sandbox::SandboxBuilder::new(&data)
            .table("t", "s3://b/t.parquet")
            .build()
            .await
            .expect_err("no configuration");
        assert!(error.to_string().contains(CONFIG_FILE), "{error}");
    }

    #[test]
    fn a_missing_configuration_names_the_file_to_write() {
        let dir = tempfile::tempdir().expect("dir");
        let data = dir.path().join("data");
        assert!(
            ObjectStorage::load(&data)
                .expect("no file is fine")
                .is_none()
        );
        let error = ObjectStorage::require(&data)
            .expect_err("missing")
            .to_string();
        assert!(
            error.contains(&dir.path().join(CONFIG_FILE).display().to_string()),
            "{error}"
        );
    }
}
