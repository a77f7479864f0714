//! An async client for Veil's HTTP API, covering every operator and buyer action (and the
//! bureau's decisions, so a whole flow can be scripted).
//!
//! ```no_run
//! # async fn demo() -> Result<(), veil_sdk::client::ClientError> {
//! use veil_sdk::api::SubmitJob;
//! use veil_sdk::client::Client;
//!
//! let client = Client::new("http://127.0.0.1:8080", "veil_…")?;
//! let submitted = client.submit_job(&SubmitJob { template: "income_by_city".into(), ..Default::default() }, Some("run-1")).await?;
//! let job = client.wait_job(&submitted.job.id, std::time::Duration::from_secs(60)).await?;
//! println!("{}", job.state);
//! # Ok(()) }
//! ```
//!
//! Errors are typed by fault ([`ClientError`]); a refusal carries every rule that refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, RequestBuilder, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use crate::api::*;

/// How long one request may take before the client gives up, in seconds (a `wait` call adds
/// its own timeout).
pub const REQUEST_TIMEOUT_SECONDS: u64 = 120;

/// What went wrong, sorted by fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The key is missing, unknown or revoked.
    #[error("not authenticated: {0}")]
    Unauthorized(String),
    /// The key's role may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The object does not exist, or is not the caller's to see: the server answers both
    /// alike, so ids cannot be probed.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed (or, before sending, the server URL is); the message says what
    /// to change.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The request contradicts the object's current state, e.g. cancelling a job that has
    /// ended.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A rule refused the request, or a dataset's policy does not fit its data (the bureau's
    /// fault); every rule is listed.
    #[error("{message}")]
    Refused {
        /// The refusal in words.
        message: String,
        /// Every rule that refused, with what to change.
        violations: Vec<Violation>,
    },
    /// The queue is full; retry after the given seconds.
    #[error("the server is busy: {message} (retry after {retry_after_seconds} s)")]
    Busy {
        /// The server's message.
        message: String,
        /// The server's `Retry-After`, in seconds (1 when it sent none).
        retry_after_seconds: u64,
    },
    /// The platform's storage is full (HTTP 507): nothing was queued or changed; retry once the
    /// bureau has freed disk space.
    #[error("{0}")]
    StorageFull(String),
    /// The server or its platform failed, or answered something this client cannot read.
    #[error("server error ({status}): {message}")]
    Server {
        /// The HTTP status the server answered with.
        status: u16,
        /// The server's message, or why its answer could not be read.
        message: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the server: {0}")]
    Transport(String),
    /// A local file could not be written or read.
    #[error("{0}")]
    Local(String),
    /// A job or download did not finish in time.
    #[error("{0}")]
    Timeout(String),
}

impl ClientError {
    /// The rules that refused the request, if it was refused.
    pub fn violations(&self) -> &[Violation] {
        match self {
            Self::Refused { violations, .. } => violations,
            _ => &[],
        }
    }
}

/// Progress of a download, reported after every chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the file on disk so far, counting those an earlier attempt left.
    pub done_bytes: u64,
    /// The file's whole size, when the server said how long its answer is.
    pub total_bytes: Option<u64>,
}

/// A client for one server and one API key.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log through Debug.
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    /// A client of the server at `url` (e.g. `http://127.0.0.1:8080`) using API key `token`.
    pub fn new(url: &str, token: &str) -> Result<Self, ClientError> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Invalid(format!(
                "the server URL `{url}` must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(REQUEST_TIMEOUT_SECONDS))
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Self {
            base,
            token: token.to_string(),
            http,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{API_PREFIX}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(|e| ClientError::Server {
                status: status.as_u16(),
                message: format!("unreadable answer: {e}"),
            });
        }
        Err(error_of(response).await)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.request(Method::GET, path)).await
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    // --- Anyone ---

    /// `GET /v1/health`: whether the server answers, and its version. Needs no key.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.send(self.http.get(format!("{}{API_PREFIX}/health", self.base)))
            .await
    }

    /// `GET /v1/me`: whom the key belongs to, and its role.
    pub async fn me(&self) -> Result<Me, ClientError> {
        self.get("/me").await
    }

    /// The platform's public key, to verify products offline.
    pub async fn platform_key(&self) -> Result<PlatformKey, ClientError> {
        self.get("/platform/key").await
    }

    /// `GET /v1/datasets`: the datasets the caller may see (a provider its own, an operator
    /// those its grants cover, the bureau all), never their rows.
    pub async fn datasets(&self) -> Result<Vec<DatasetView>, ClientError> {
        self.get("/datasets").await
    }

    /// `GET /v1/datasets/{id}` (id or name): a dataset's schema as its policy publishes it —
    /// columns with their types, roles, bounds and public key sets, the privacy unit, the
    /// acquisition date. For the bureau, the dataset's provider, and an operator with a grant
    /// on it in its term; anyone else gets [`ClientError::NotFound`] or
    /// [`ClientError::Forbidden`].
    pub async fn dataset(&self, id: &str) -> Result<DatasetSchema, ClientError> {
        self.get(&format!("/datasets/{id}")).await
    }

    /// `GET /v1/datasets/{id}/quality` (bureau): the data-quality report registration stored
    /// with the dataset, as JSON. It holds values from inside the domain, so no other role
    /// may read it.
    pub async fn dataset_quality(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.get(&format!("/datasets/{id}/quality")).await
    }

    // --- Operators: grants and templates ---

    /// `GET /v1/grants`: the caller's grants (the bureau: every grant).
    pub async fn grants(&self) -> Result<Vec<GrantView>, ClientError> {
        self.get("/grants").await
    }

    /// `POST /v1/grant-requests` (operator): applies for a grant; the bureau decides.
    pub async fn request_grant(
        &self,
        request: &RequestGrant,
    ) -> Result<GrantRequestView, ClientError> {
        self.post("/grant-requests", request).await
    }

    /// `GET /v1/grant-requests`: the caller's grant requests (the bureau: every one), oldest
    /// first.
    pub async fn grant_requests(&self) -> Result<Vec<GrantRequestView>, ClientError> {
        self.get("/grant-requests").await
    }

    /// Uploads a WASM module; templates then name it by its digest.
    pub async fn upload_module(&self, bytes: Vec<u8>) -> Result<ModuleStored, ClientError> {
        self.send(
            self.request(Method::POST, "/modules")
                .header(header::CONTENT_TYPE, "application/wasm")
                .body(bytes),
        )
        .await
    }

    /// Submits a template; a WASM template's module must be uploaded first (see
    /// [`Client::submit_template_file`], which does both).
    pub async fn submit_template(
        &self,
        spec: &crate::template::TemplateSpec,
    ) -> Result<TemplateView, ClientError> {
        self.post("/templates", &SubmitTemplate { spec: spec.clone() })
            .await
    }

    /// Reads a template file (and its module, if it is a WASM template), uploads the module
    /// and submits the template.
    pub async fn submit_template_file(&self, path: &Path) -> Result<TemplateView, ClientError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClientError::Local(format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let (spec, module) = crate::template::TemplateSpec::from_file(&text, base)
            .map_err(|e| ClientError::Local(e.to_string()))?;
        if let Some(bytes) = module {
            self.upload_module(bytes).await?;
        }
        self.submit_template(&spec).await
    }

    /// `GET /v1/templates/{id}`: one template and where it stands.
    pub async fn template(&self, id: &str) -> Result<TemplateView, ClientError> {
        self.get(&format!("/templates/{id}")).await
    }

    /// `GET /v1/templates`: the caller's templates (the bureau: every one).
    pub async fn templates(&self) -> Result<Vec<TemplateView>, ClientError> {
        self.get("/templates").await
    }

    /// Polls until the bureau has decided on a template, or `timeout` passes.
    pub async fn wait_template_decided(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<TemplateView, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let template = self.template(id).await?;
            if template.state != "submitted" {
                return Ok(template);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout(format!(
                    "template {id} is still waiting for the bureau's decision"
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // --- Operators: jobs ---

    /// Submits a job. With an idempotency key, a retry after a lost answer returns the same
    /// job instead of running it twice.
    pub async fn submit_job(
        &self,
        job: &SubmitJob,
        idempotency_key: Option<&str>,
    ) -> Result<Submitted, ClientError> {
        let mut request = self.request(Method::POST, "/jobs").json(job);
        if let Some(key) = idempotency_key {
            request = request.header(IDEMPOTENCY_KEY_HEADER, key);
        }
        self.send(request).await
    }

    /// What a job would do and cost, without running it.
    pub async fn dry_run(&self, job: &SubmitJob) -> Result<DryRun, ClientError> {
        self.post("/jobs/dry-run", job).await
    }

    /// `GET /v1/jobs/{id}`: one job as it stands now.
    pub async fn job(&self, id: &str) -> Result<JobView, ClientError> {
        self.get(&format!("/jobs/{id}")).await
    }

    /// `GET /v1/jobs`: the caller's jobs (the bureau: every job).
    pub async fn jobs(&self) -> Result<Vec<JobView>, ClientError> {
        self.get("/jobs").await
    }

    /// `POST /v1/jobs/{id}/cancel`: stops a queued or running job; nothing is released. A
    /// queued job costs nothing; a running one keeps the ε it reserved. Cancelling a job that
    /// has ended is a [`ClientError::Conflict`].
    pub async fn cancel_job(&self, id: &str) -> Result<JobView, ClientError> {
        self.post(&format!("/jobs/{id}/cancel"), &()).await
    }

    /// Waits (long-polling the server) until the job has ended or `timeout` passes; returns
    /// the job as it stands then.
    pub async fn wait_job(&self, id: &str, timeout: Duration) -> Result<JobView, ClientError> {
        self.wait_job_with(id, timeout, |_| {}).await
    }

    /// Like [`Client::wait_job`], calling `progress` with the job each time the server
    /// answers (about once a second, or when its state changes).
    pub async fn wait_job_with(
        &self,
        id: &str,
        timeout: Duration,
        mut progress: impl FnMut(&JobView),
    ) -> Result<JobView, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let poll_ms = left.as_millis().clamp(0, 1_000) as u64;
            let job: JobView = self
                .get(&format!("/jobs/{id}/wait?timeout_ms={poll_ms}"))
                .await?;
            progress(&job);
            if job.is_finished() || left.is_zero() {
                return Ok(job);
            }
        }
    }

    /// `GET /v1/meter`: the caller's meter records (the bureau: every one, with time and
    /// memory).
    pub async fn meter(&self) -> Result<Vec<MeterView>, ClientError> {
        self.get("/meter").await
    }

    // --- Products ---

    /// `GET /v1/products`: the products the caller may see (an operator its own, a buyer
    /// those on offer or bought, the bureau all).
    pub async fn products(&self) -> Result<Vec<ProductView>, ClientError> {
        self.get("/products").await
    }

    /// `GET /v1/products/{id}`: one product and the files it holds.
    pub async fn product(&self, id: &str) -> Result<ProductView, ClientError> {
        self.get(&format!("/products/{id}")).await
    }

    /// Offers a product for sale (its operator, or the bureau).
    pub async fn list_for_sale(
        &self,
        id: &str,
        price_fen: i64,
    ) -> Result<ProductView, ClientError> {
        self.post(
            &format!("/products/{id}/listing"),
            &ListForSale { price_fen },
        )
        .await
    }

    /// Products offered for sale.
    pub async fn offers(&self) -> Result<Vec<ProductView>, ClientError> {
        self.get("/offers").await
    }

    /// `GET /v1/offers/{id}`: the listing card of a product on offer, readable before buying
    /// — template, purpose, columns and types, sources with acquisition dates, ε/δ, k, rows,
    /// release date, price — with the signed manifest itself; check it with
    /// [`crate::manifest::verify_signature`] and the key from [`Client::platform_key`].
    pub async fn offer(&self, id: &str) -> Result<OfferCard, ClientError> {
        self.get(&format!("/offers/{id}")).await
    }

    /// `POST /v1/products/{id}/purchase` (buyer): buys a product on offer. Buying it again
    /// returns the first purchase and charges nothing ([`PurchaseView::new`] is false).
    pub async fn purchase(&self, id: &str) -> Result<PurchaseView, ClientError> {
        self.post(&format!("/products/{id}/purchase"), &()).await
    }

    /// `GET /v1/purchases`: the caller's purchases (the bureau: every one).
    pub async fn purchases(&self) -> Result<Vec<PurchaseView>, ClientError> {
        self.get("/purchases").await
    }

    /// Downloads one file of a product to `dest`, resuming a partial `dest.part` left by an
    /// earlier attempt with a Range request. The file is written to `dest.part`, synced and
    /// renamed, so `dest` is never half-written.
    pub async fn download_file(
        &self,
        product: &str,
        name: &str,
        dest: &Path,
        mut progress: impl FnMut(Progress),
    ) -> Result<u64, ClientError> {
        let part = part_path(dest);
        let have = tokio::fs::metadata(&part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let mut request = self.request(Method::GET, &format!("/products/{product}/files/{name}"));
        if have > 0 {
            request = request.header(header::RANGE, format!("bytes={have}-"));
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(error_of(response).await);
        }
        let resumed = status == StatusCode::PARTIAL_CONTENT;
        let start = if resumed { have } else { 0 };
        let total = response.content_length().map(|len| len + start);
        let local =
            |e: std::io::Error| ClientError::Local(format!("writing {}: {e}", part.display()));
        let mut file = if resumed {
            tokio::fs::OpenOptions::new()
                .append(true)
                .open(&part)
                .await
                .map_err(local)?
        } else {
            tokio::fs::File::create(&part).await.map_err(local)?
        };
        let mut done = start;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ClientError::Transport(e.to_string()))?;
            file.write_all(&chunk).await.map_err(local)?;
            done += chunk.len() as u64;
            progress(Progress {
                done_bytes: done,
                total_bytes: total,
            });
        }
        file.sync_all().await.map_err(local)?;
        drop(file);
        tokio::fs::rename(&part, dest).await.map_err(local)?;
        Ok(done)
    }

    /// Downloads a product's manifest and every file it lists into the folder `dir`, ready for
    /// `veil_sdk::manifest::verify_product_dir`.
    pub async fn download_product(
        &self,
        id: &str,
        dir: &Path,
        mut progress: impl FnMut(&str, Progress),
    ) -> Result<PathBuf, ClientError> {
        let product = self.product(id).await?;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| ClientError::Local(format!("creating {}: {e}", dir.display())))?;
        for file in &product.files {
            let dest = dir.join(&file.name);
            self.download_file(id, &file.name, &dest, |p| progress(&file.name, p))
                .await?;
        }
        Ok(dir.to_path_buf())
    }

    // --- Money ---

    /// The caller's settled statement for a period (operator or provider), as JSON: every
    /// line carries its ledger posting and line id.
    pub async fn statement(&self, period: &str) -> Result<serde_json::Value, ClientError> {
        self.get(&format!("/statements/{period}")).await
    }

    /// Any party's statement (bureau): `operator:<name>`, `provider:<name>` or `platform`.
    pub async fn statement_of(
        &self,
        period: &str,
        party: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.send(
            self.request(Method::GET, &format!("/statements/{period}"))
                .query(&[("party", party)]),
        )
        .await
    }

    /// A provider's datasets: jobs that read them, rows fees and sale shares earned.
    pub async fn usage(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/usage").await
    }

    // --- The bureau's decisions ---

    /// `POST /v1/templates/{id}/approve` (bureau): approves a submitted template with the
    /// given terms; omitted terms take the platform defaults (see [`ApproveTemplate`]).
    pub async fn approve_template(
        &self,
        id: &str,
        terms: &ApproveTemplate,
    ) -> Result<TemplateView, ClientError> {
        self.post(&format!("/templates/{id}/approve"), terms).await
    }

    /// `POST /v1/templates/{id}/preview` (bureau): what approving the template with `terms`
    /// would give (each output column's error at 95 %, grouping warnings), without approving.
    pub async fn preview_template(
        &self,
        id: &str,
        terms: &ApproveTemplate,
    ) -> Result<Preview, ClientError> {
        self.post(&format!("/templates/{id}/preview"), terms).await
    }

    /// `POST /v1/templates/{id}/reject` (bureau): rejects a submitted template, telling the
    /// operator why.
    pub async fn reject_template(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<TemplateView, ClientError> {
        self.post(
            &format!("/templates/{id}/reject"),
            &Reason {
                reason: reason.into(),
            },
        )
        .await
    }

    /// `POST /v1/grant-requests/{id}/approve` (bureau): grants a pending request, optionally
    /// with less ε than asked for.
    pub async fn approve_grant_request(
        &self,
        id: &str,
        decision: &ApproveGrantRequest,
    ) -> Result<GrantRequestView, ClientError> {
        self.post(&format!("/grant-requests/{id}/approve"), decision)
            .await
    }

    /// `POST /v1/grant-requests/{id}/reject` (bureau): rejects a pending request, telling the
    /// operator why.
    pub async fn reject_grant_request(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<GrantRequestView, ClientError> {
        self.post(
            &format!("/grant-requests/{id}/reject"),
            &Reason {
                reason: reason.into(),
            },
        )
        .await
    }

    /// `POST /v1/products/{id}/recall` (bureau): withdraws a product from sale and download;
    /// answers with the buyers who must be told.
    pub async fn recall(&self, id: &str, reason: &str) -> Result<RecallView, ClientError> {
        self.post(
            &format!("/products/{id}/recall"),
            &Reason {
                reason: reason.into(),
            },
        )
        .await
    }

    /// `POST /v1/freezes` (bureau): freezes the platform, a dataset, an operator or a grant;
    /// jobs under it are cancelled and new ones refused until it is lifted.
    pub async fn freeze(&self, request: &FreezeRequest) -> Result<FreezeView, ClientError> {
        self.post("/freezes", request).await
    }

    /// `POST /v1/freezes/{id}/lift` (bureau): lifts a freeze, with the reason for the record.
    pub async fn lift_freeze(&self, id: &str, reason: &str) -> Result<FreezeView, ClientError> {
        self.post(
            &format!("/freezes/{id}/lift"),
            &Reason {
                reason: reason.into(),
            },
        )
        .await
    }

    /// `GET /v1/freezes` (bureau): the incident log, newest first.
    pub async fn freezes(&self) -> Result<Vec<FreezeView>, ClientError> {
        self.get("/freezes").await
    }

    /// `POST /v1/templates/{id}/revoke` (bureau): revokes an approved template, telling the
    /// operator why; no job runs it afterwards.
    pub async fn revoke_template(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<TemplateView, ClientError> {
        self.post(
            &format!("/templates/{id}/revoke"),
            &Reason {
                reason: reason.into(),
            },
        )
        .await
    }

    /// `GET /v1/grant-requests/{id}`: one grant request (the operator's own; the bureau any).
    pub async fn grant_request(&self, id: &str) -> Result<GrantRequestView, ClientError> {
        self.get(&format!("/grant-requests/{id}")).await
    }

    /// `POST /v1/principals/{name}/rotate` (bureau): gives a principal a new API key, shown
    /// once; its old key stops working at once, and everything it owns stays its own.
    pub async fn rotate_key(
        &self,
        principal: &str,
        expires_in_days: Option<u32>,
    ) -> Result<RotatedKey, ClientError> {
        self.post(
            &format!("/principals/{principal}/rotate"),
            &RotateKey { expires_in_days },
        )
        .await
    }

    /// `POST /v1/disputes` (buyer): disputes one of the caller's purchases, named by its
    /// purchase id or its product id.
    pub async fn open_dispute(
        &self,
        purchase: &str,
        reason: &str,
    ) -> Result<DisputeView, ClientError> {
        self.post(
            "/disputes",
            &OpenDispute {
                purchase: purchase.into(),
                reason: reason.into(),
            },
        )
        .await
    }

    /// `GET /v1/disputes`: the caller's disputes (the bureau: every one).
    pub async fn disputes(&self) -> Result<Vec<DisputeView>, ClientError> {
        self.get("/disputes").await
    }

    /// `POST /v1/disputes/{id}/uphold` (bureau): refunds the disputed sale.
    pub async fn uphold_dispute(&self, id: &str, reason: &str) -> Result<DisputeView, ClientError> {
        self.post(
            &format!("/disputes/{id}/uphold"),
            &Reason {
                reason: reason.into(),
            },
        )
        .await
    }

    /// `POST /v1/disputes/{id}/reject` (bureau): rejects a dispute; nothing is refunded.
    pub async fn reject_dispute(&self, id: &str, reason: &str) -> Result<DisputeView, ClientError> {
        self.post(
            &format!("/disputes/{id}/reject"),
            &Reason {
                reason: reason.into(),
            },
        )
        .await
    }

    /// `POST /v1/settlements` (bureau): settles a closed month, `YYYY-MM` in the bureau's
    /// time zone, and answers with the settlement as JSON.
    pub async fn settle(&self, period: &str) -> Result<serde_json::Value, ClientError> {
        self.post(
            "/settlements",
            &Settle {
                period: period.into(),
            },
        )
        .await
    }
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

async fn error_of(response: reqwest::Response) -> ClientError {
    let status = response.status();
    let retry_after_seconds = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let body: Option<ErrorBody> = response.json().await.ok();
    let Some(body) = body else {
        return ClientError::Server {
            status: status.as_u16(),
            message: status.canonical_reason().unwrap_or("no error body").into(),
        };
    };
    match body.kind {
        ErrorKind::Unauthorized => ClientError::Unauthorized(body.message),
        ErrorKind::Forbidden => ClientError::Forbidden(body.message),
        ErrorKind::NotFound => ClientError::NotFound(body.message),
        ErrorKind::Invalid => ClientError::Invalid(body.message),
        ErrorKind::Conflict => ClientError::Conflict(body.message),
        ErrorKind::Refused | ErrorKind::Policy => ClientError::Refused {
            message: body.message,
            violations: body.violations,
        },
        ErrorKind::Busy => ClientError::Busy {
            message: body.message,
            retry_after_seconds,
        },
        ErrorKind::StorageFull => ClientError::StorageFull(body.message),
        ErrorKind::Resources | ErrorKind::Internal => ClientError::Server {
            status: status.as_u16(),
            message: body.message,
        },
    }
}
