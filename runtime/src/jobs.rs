//! Jobs: one run of an approved template, from request to released product or refusal.
//!
//! [`run`] is the whole flow of DESIGN.md in one function:
//!
//! 1. the template must be approved, belong to the operator, and its stored bytes must still
//!    hash to its id; the parameters must match its declarations;
//! 2. a grant of the operator must cover the query's tables and today's date;
//! 3. the sandbox plans the SQL (statement policy) and the gate analyses the plan (shape);
//! 4. an identical earlier job (same template, parameters, grant and data) returns its product
//!    and spends nothing; otherwise ε is reserved atomically;
//! 5. the gate runs the bounded query and releases noisy, k-anonymous rows;
//! 6. the product is written and signed; the job, its meter record and audit entries commit
//!    together.
//!
//! Every job that gets past "which template?" gets a job row and a meter record, whatever its
//! end, and every refusal names its rules.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Instant;

use datafusion::arrow::record_batch::RecordBatch;
use futures::FutureExt;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use veil_gate::sandbox::{ExecStats, ParamValue};
use veil_sdk::manifest::{MANIFEST_FORMAT, Manifest, PrivacyRecord, SourceDataset};

use crate::budget::{MicroEpsilon, Period, PicoDelta};
use crate::catalog::{self, Dataset};
use crate::error::{Error, Result};
use crate::freezes;
use crate::grants::{self, Grant};
use crate::ids::{Fen, JobId, ProductId};
use crate::metering::{self, EndState, MeterRecord};
use crate::products::{self, ProductDraft, ProductError, StagedProduct};
use crate::store::{Store, WriteTx, query_parsed_rows, stored_state};
use crate::templates::{self, SpecRules, Template, TemplateState, WasmSpec};
use crate::{audit, budget, clock};
use crate::{ledger, prices};
use veil_gate::analysis::{self, Analysis};
use veil_gate::job as exec;
use veil_gate::release as gate;
use veil_gate::rules::{Refusal, Rule};

/// What an operator asks for.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub operator: String,
    /// Template id (or unique prefix, or name).
    pub template: String,
    pub params: Vec<(String, String)>,
    /// The grant to run under; may be omitted when exactly one grant fits.
    pub grant: Option<String>,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    Released {
        job_id: JobId,
        product_id: ProductId,
        dir: PathBuf,
        /// True when an identical earlier job's product was returned and nothing was spent.
        reused: bool,
        /// The product's rows (already released; safe to show).
        rows: Option<RecordBatch>,
    },
    Rejected {
        job_id: JobId,
        refusal: Refusal,
    },
    Failed {
        job_id: JobId,
        reason: String,
    },
    /// Cancelled by the operator or the bureau before it ended.
    Cancelled {
        job_id: JobId,
    },
}

impl JobOutcome {
    pub fn job_id(&self) -> &JobId {
        match self {
            Self::Released { job_id, .. }
            | Self::Rejected { job_id, .. }
            | Self::Failed { job_id, .. }
            | Self::Cancelled { job_id } => job_id,
        }
    }
}

/// Where a job stands. Stored in `jobs.state`, and serialized, as its lowercase name.
///
/// A job is `queued` when submitted and while a worker checks it, and `running` once the
/// worker claims it, in the transaction that reserves its ε; it ends in one of the four
/// [`EndState`]s its meter record also holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Submitted, or being checked by a worker; no row read, nothing reserved.
    Queued,
    /// Claimed by a worker, in the transaction that decides its ε reservation: it may have
    /// reserved ε and be reading data.
    Running,
    /// Ended with a product.
    Released,
    /// Ended refused by a rule.
    Rejected,
    /// Ended without running to its end.
    Failed,
    /// Ended cancelled by the operator or the bureau.
    Cancelled,
}

stored_state!(JobState, "jobs.state", {
    Queued => "queued",
    Running => "running",
    Released => "released",
    Rejected => "rejected",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl JobState {
    /// How the job ended, or `None` while it is queued or running.
    pub fn end(self) -> Option<EndState> {
        match self {
            Self::Queued | Self::Running => None,
            Self::Released => Some(EndState::Released),
            Self::Rejected => Some(EndState::Rejected),
            Self::Failed => Some(EndState::Failed),
            Self::Cancelled => Some(EndState::Cancelled),
        }
    }
}

impl From<EndState> for JobState {
    fn from(end: EndState) -> Self {
        match end {
            EndState::Released => Self::Released,
            EndState::Rejected => Self::Rejected,
            EndState::Failed => Self::Failed,
            EndState::Cancelled => Self::Cancelled,
        }
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub template_id: String,
    pub grant_id: Option<String>,
    pub operator: String,
    pub params: Vec<(String, String)>,
    pub state: JobState,
    pub reasons: Option<Refusal>,
    pub failure: Option<String>,
    pub product_id: Option<String>,
    pub reused_from: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// The grant the operator asked to run under, if it named one.
    pub requested_grant: Option<String>,
}

/// Costs gathered while the job runs, for its meter record.
#[derive(Debug, Default, Clone, Copy)]
struct Costs {
    stats: veil_gate::sandbox::ExecStats,
    /// Fuel charged (WASM jobs; see `metering`).
    fuel: u64,
    /// What the mapper really did; kept for the bureau's audit entry only.
    wasm: Option<exec::WasmUsage>,
    micro_epsilon: MicroEpsilon,
    pico_delta: PicoDelta,
    output_rows: u64,
    output_bytes: u64,
    price: Fen,
}

/// Longest idempotency key a client may send, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// A submitted job: the stored row, and whether an earlier submission with the same
/// idempotency key already created it (then nothing new was queued).
#[derive(Debug, Clone)]
pub struct Submission {
    pub job: Job,
    pub replayed: bool,
}

/// A worker's next job child, started ahead of time (see `veil_gate::job::Spare`); a server
/// keeps one per worker and hands it to [`run_queued`].
pub use veil_gate::job::Spare;

/// Starts `spare`'s child unless one is waiting already; best effort (a job whose spare is
/// empty starts its own child, and reports if that fails). Call it on a thread that lives as
/// long as the spare: the child's death signal is tied to the thread that started it.
pub fn fill_spare(spare: &mut Spare) {
    if let Ok(exe) = exec::executable() {
        spare.fill(&exe);
    }
}

/// Runs one job to its end: [`enqueue`], then [`run_queued`]. Returns `Err` only when the
/// request names no template at all or the platform itself fails; every refusal is an
/// `Ok(JobOutcome::Rejected)` with its rules.
pub async fn run(store: &mut Store, request: JobRequest) -> Result<JobOutcome> {
    let submission = enqueue(store, &request, None)?;
    run_queued(store, &submission.job.id, None, None).await
}

/// Records a job as `queued`, without reading any data or reserving any ε.
///
/// With an idempotency key, a second submission by the same operator with the same key and the
/// same request returns the first job (`replayed`), so a client that retries after a lost
/// response never runs or charges twice; the same key with a different request is refused.
pub fn enqueue(
    store: &mut Store,
    request: &JobRequest,
    idempotency_key: Option<&str>,
) -> Result<Submission> {
    if let Some(key) = idempotency_key
        && (key.is_empty()
            || key.len() > IDEMPOTENCY_KEY_BYTES_MAX
            || !key.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Error::invalid(format!(
            "an idempotency key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} printable ASCII characters without spaces"
        )));
    }
    let template = templates::get(store, &request.template)?;
    let params_json = serde_json::to_string(&request.params)
        .map_err(|e| Error::internal(format!("encoding parameters: {e}")))?;
    // What the key stands for: the same key must always mean the same request.
    let request_blake3 = blake3::hash(
        serde_json::json!([template.id, request.params, request.grant])
            .to_string()
            .as_bytes(),
    )
    .to_hex()
    .to_string();
    // The datasets the template names and the grant the job would run under (the one in term
    // when it names none), for the bureau's freezes (see `freezes`): checked inside the
    // transaction that queues the job, so a freeze either sees the job queued and cancels it,
    // or the job sees the freeze and is refused. Worked out only while a freeze is in force; one
    // imposed meanwhile stops the job before it reserves anything (`execute`).
    let (named, grant) = if freezes::active(store.conn())?.is_empty() {
        (Vec::new(), request.grant.clone())
    } else {
        let named: Vec<String> = templates::named_datasets(store, &template.spec)?
            .into_iter()
            .map(|d| d.id.to_string())
            .collect();
        let grant = match &request.grant {
            Some(grant) => Some(grant.clone()),
            None => choose_grant(store, &request.operator, None)?
                .ok()
                .map(|g| g.id.to_string()),
        };
        (named, grant)
    };
    let job_id = JobId::random();
    let now = clock::format(clock::now());
    let replayed = store.write(|tx| {
        if let Some(key) = idempotency_key {
            let earlier: Option<(String, String)> = tx
                .query_row(
                    "SELECT job_id, request_blake3 FROM job_submissions
                     WHERE operator = ?1 AND idempotency_key = ?2",
                    params![request.operator, key],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            if let Some((earlier_job, earlier_request)) = earlier {
                if earlier_request != request_blake3 {
                    return Err(Error::Conflict(format!(
                        "idempotency key `{key}` was already used for a different job ({earlier_job}); use a new key for a new job"
                    )));
                }
                return Ok(Some(JobId::new(earlier_job)));
            }
            tx.execute(
                "INSERT INTO job_submissions (operator, idempotency_key, job_id, request_blake3, at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![request.operator, key, job_id.as_str(), request_blake3, now],
            )?;
        }
        if let Some(freeze) = freezes::check_job(
            tx,
            &request.operator,
            grant.as_deref(),
            &named,
        )? {
            return Err(freeze.refusal("no job under it can be submitted"));
        }
        tx.execute(
            "INSERT INTO jobs (id, template_id, operator, params_json, fingerprint, state,
                created_at, requested_grant)
             VALUES (?1, ?2, ?3, ?4, '', ?5, ?6, ?7)",
            params![
                job_id.as_str(),
                template.id.as_str(),
                request.operator,
                params_json,
                JobState::Queued,
                now,
                request.grant
            ],
        )?;
        audit::append(
            tx,
            &request.operator,
            job_id.as_str(),
            audit::Event::JobQueued {
                template: &template.id,
                params: &request.params,
            },
        )?;
        Ok(None)
    })?;
    let id = replayed.clone().unwrap_or(job_id);
    Ok(Submission {
        job: get(store, id.as_str())?,
        replayed: replayed.is_some(),
    })
}

/// Runs a `queued` job to its end. `cancel`, when it fires, stops the job where it is: a
/// queued job never starts, a running one ends `cancelled` (ε already reserved stays spent,
/// as for every job that started).
///
/// With a `spare` (a server's worker keeps one), the job's child process is the one started
/// there ahead of time (see [`Spare`]); refilling it is the caller's, with [`fill_spare`],
/// once the job's end has been answered.
pub async fn run_queued(
    store: &mut Store,
    job_id: &JobId,
    cancel: Option<CancellationToken>,
    spare: Option<&mut Spare>,
) -> Result<JobOutcome> {
    let started = Instant::now();
    let job = get(store, job_id.as_str())?;
    let request = JobRequest {
        operator: job.operator.clone(),
        template: job.template_id.clone(),
        params: job.params.clone(),
        grant: job.requested_grant.clone(),
    };
    let template = templates::get(store, &job.template_id)?;
    let cancel = cancel.unwrap_or_default();
    // Only a queued job starts; a cancelled one (or one another worker took) does not. The
    // job is claimed — `running`, audited as started — in the transaction that reserves its ε
    // (see `execute`), so a job costs one synced commit fewer; until then it stays `queued`,
    // having written nothing, and its checks are only reads. A job refused before that ends
    // from `queued` in `finish`.
    if job.state != JobState::Queued {
        return outcome_of(store, job_id);
    }

    let mut costs = Costs::default();
    let mut claimed = false;
    // A panic in the gate is a platform bug; the job must still end, metered and audited,
    // rather than stay `running` forever.
    let execution = AssertUnwindSafe(execute(
        store,
        &request,
        &template,
        job_id,
        &mut costs,
        &mut claimed,
        spare,
    ))
    .catch_unwind();
    let result = tokio::select! {
        // A token that has already fired wins before the job does any work.
        biased;
        () = cancel.cancelled() => Ok(Decision::Cancelled),
        result = execution => result.unwrap_or_else(|_| {
            Ok(Decision::Failed(Failure::after_reservation("the job's execution panicked"), None))
        }),
    };
    let wall_ms = started.elapsed().as_millis() as u64;
    finish(
        store, &request, &template, job_id, result, costs, wall_ms, claimed,
    )
}

/// Cancels a job that has not ended. A queued job ends `cancelled` here, metered at zero;
/// a running job is only marked for the caller, which fires its worker's token (see
/// `api::workers`). Returns the job as it now stands.
pub fn cancel_queued(store: &mut Store, job_id: &JobId, actor: &str) -> Result<Job> {
    let job = get(store, job_id.as_str())?;
    if job.state != JobState::Queued {
        return Ok(job);
    }
    let now = clock::format(clock::now());
    store.write(|tx| {
        let changed = tx.execute(
            "UPDATE jobs SET state = ?1, finished_at = ?2 WHERE id = ?3 AND state = ?4",
            params![JobState::Cancelled, now, job_id.as_str(), JobState::Queued],
        )?;
        if changed == 0 {
            return Ok(());
        }
        audit::append(
            tx,
            actor,
            job_id.as_str(),
            audit::Event::JobCancelled {
                during: audit::Phase::Queued,
            },
        )?;
        let meter = MeterRecord::idle(
            job_id.as_str(),
            &job.operator,
            &job.template_id,
            EndState::Cancelled,
            (MicroEpsilon::ZERO, PicoDelta::ZERO),
            &now,
        );
        record_meter(tx, &meter, job_id)
    })?;
    get(store, job_id.as_str())
}

/// What a job that could not end because the store's disk was full is told.
pub const STORAGE_FULL_REASON: &str = "the platform's storage was full, so the job could not run to its end and nothing was released; submit it again once the bureau has freed disk space";

/// What a job whose end could not be recorded, for another reason, is told.
const FINISH_FAILED_REASON: &str =
    "the platform could not record the job's end, so nothing was released; submit it again";

/// Ends the jobs a stopped process left `running` (they end `failed`, metered, and their
/// reserved ε stays spent), removes what the stopped process left on disk that the store
/// does not know (see `sweep`), and returns the ids of the jobs still `queued`, oldest first,
/// so a new server can run them.
///
/// Run by `veil serve` before it takes requests, as the one process working on the store: a
/// job another process is running at that moment is ended too, like the rest.
pub fn recover(store: &mut Store) -> Result<Vec<JobId>> {
    let interrupted: Vec<Job> = list(store)?
        .into_iter()
        .filter(|job| job.state == JobState::Running)
        .collect();
    let reason = "the platform stopped while the job ran; submit it again";
    for job in interrupted {
        // On a full disk the first attempt releases the ballast (see `space`): retry once.
        if let Err(error) = end_unfinished(store, &job.id, reason) {
            if !error.is_storage_full() {
                return Err(error);
            }
            end_unfinished(store, &job.id, reason)?;
        }
    }
    let swept = crate::sweep::sweep(store, std::time::Duration::ZERO)?;
    if !swept.removed.is_empty() {
        eprintln!(
            "veil: removed {} leftover file(s) or folder(s) the store does not know",
            swept.removed.len()
        );
    }
    Ok(list(store)?
        .into_iter()
        .filter(|job| job.state == JobState::Queued)
        .map(|job| job.id)
        .collect())
}

/// Ends a job that is still `queued` or `running` as `failed` with `reason`, metered with the
/// ε it reserved (which stays spent), and audited. Returns whether it changed the job: a job
/// that has ended already is left as it is, so calling this again after an error is safe.
/// Used by [`recover`], when a job's final transaction fails, and by the server when a job
/// cannot run because the disk is full.
pub fn end_unfinished(store: &mut Store, job_id: &JobId, reason: &str) -> Result<bool> {
    let job = get(store, job_id.as_str())?;
    let now = clock::format(clock::now());
    store.write(|tx| {
        let changed = tx.execute(
            "UPDATE jobs SET state = ?1, reasons_json = ?2, finished_at = ?3
             WHERE id = ?4 AND state IN (?5, ?6)",
            params![
                JobState::Failed,
                serde_json::json!({ "failure": reason }).to_string(),
                now,
                job.id.as_str(),
                JobState::Queued,
                JobState::Running
            ],
        )?;
        if changed == 0 {
            return Ok(false);
        }
        audit::append(
            tx,
            "platform",
            job.id.as_str(),
            audit::Event::JobFailed {
                failure: reason,
                category: None,
            },
        )?;
        let reserved = tx.query_row(
            "SELECT COALESCE(MAX(micro_epsilon), 0), COALESCE(MAX(pico_delta), 0)
             FROM budget_spend WHERE job_id = ?1",
            [job.id.as_str()],
            |row| Ok((MicroEpsilon(row.get(0)?), PicoDelta(row.get(1)?))),
        )?;
        let meter = MeterRecord::idle(
            job.id.as_str(),
            &job.operator,
            &job.template_id,
            EndState::Failed,
            reserved,
            &now,
        );
        record_meter(tx, &meter, &job.id)?;
        Ok(true)
    })
}

/// The meter record, its audit entry and its ledger posting, inside the caller's transaction.
/// The audit entry of a job that started: its checks ran, whether or not it was claimed.
fn record_started(
    tx: &WriteTx<'_>,
    request: &JobRequest,
    template: &Template,
    job_id: &JobId,
) -> Result<()> {
    audit::append(
        tx,
        &request.operator,
        job_id.as_str(),
        audit::Event::JobStarted {
            template: &template.id,
            params: &request.params,
        },
    )?;
    Ok(())
}

fn record_meter(tx: &WriteTx<'_>, meter: &MeterRecord, job_id: &JobId) -> Result<()> {
    metering::record(tx, meter)?;
    let meter_seq = audit::append(
        tx,
        "meter",
        job_id.as_str(),
        audit::Event::MeterRecorded {
            end_state: meter.end_state.as_str(),
            price: meter.price,
            epsilon: meter.micro_epsilon.epsilon(),
            ledger_lines: &ledger::run_lines(tx, meter)?,
        },
    )?;
    ledger::post_run(tx, meter, meter_seq)?;
    Ok(())
}

/// The outcome of a job that has ended (or the state it is in), read back from the store.
fn outcome_of(store: &Store, job_id: &JobId) -> Result<JobOutcome> {
    let job = get(store, job_id.as_str())?;
    Ok(match job.state {
        JobState::Released => {
            let product = job.product_id.clone().unwrap_or_default();
            JobOutcome::Released {
                job_id: job.id,
                dir: store.products_dir().join(&product),
                product_id: ProductId::new(product),
                reused: job.reused_from.is_some(),
                rows: None,
            }
        }
        JobState::Rejected => JobOutcome::Rejected {
            job_id: job.id,
            refusal: job.reasons.unwrap_or_default(),
        },
        JobState::Cancelled => JobOutcome::Cancelled { job_id: job.id },
        state @ (JobState::Queued | JobState::Running | JobState::Failed) => JobOutcome::Failed {
            job_id: job.id,
            reason: job
                .failure
                .unwrap_or_else(|| format!("the job is {state}, not queued")),
        },
    })
}

/// What `execute` decided.
enum Decision {
    Released {
        product_id: ProductId,
        /// Written and signed, published by `finish`'s transaction.
        staged: Box<StagedProduct>,
        rows: RecordBatch,
        grant: Grant,
    },
    Reused {
        product_id: ProductId,
        dir: PathBuf,
        from_job: String,
        grant: Grant,
    },
    Rejected(Refusal, Option<Grant>),
    Failed(Failure, Option<Grant>),
    Cancelled,
    /// The job was no longer `queued` when it was to be claimed (cancelled meanwhile, or
    /// taken by another worker): its end is someone else's to record.
    NotQueued,
}

/// A job that failed: what its operator sees, and what only the bureau's records hold.
#[derive(Debug, Clone)]
struct Failure {
    /// Shown to the operator: one of a few fixed sentences, never built from an error, so no
    /// path, I/O error or DataFusion text can reach an operator through it (the same
    /// redaction as an HTTP error's). After the budget is reserved this is always
    /// [`gate::FAILED_MESSAGE`], whatever went wrong: a message that depended on the data
    /// would be an oracle.
    operator: &'static str,
    /// What went wrong, for the bureau's audit entry only (never a data value).
    bureau: String,
}

impl Failure {
    /// A failure after ε was reserved: one fixed message for the operator.
    fn after_reservation(bureau: impl Into<String>) -> Self {
        Self {
            operator: gate::FAILED_MESSAGE,
            bureau: bureau.into(),
        }
    }

    /// The platform's disk was full: a condition of the platform, not of the data, so it may
    /// be said as it is.
    fn storage_full() -> Self {
        Self {
            operator: STORAGE_FULL_REASON,
            bureau: "the platform's storage was full".into(),
        }
    }

    /// A platform fault before any row was read.
    fn platform(bureau: impl Into<String>) -> Self {
        Self {
            operator: "the platform hit an internal error while preparing the job; nothing was read or spent. The bureau has the job's record",
            bureau: bureau.into(),
        }
    }
}

async fn execute(
    store: &mut Store,
    request: &JobRequest,
    template: &Template,
    job_id: &JobId,
    costs: &mut Costs,
    claimed: &mut bool,
    spare: Option<&mut Spare>,
) -> Result<Decision> {
    // 1. Template and parameters.
    if let Some(refusal) = template_refusal(template, &request.operator) {
        return Ok(Decision::Rejected(refusal, None));
    }
    let Some(approval) = template.approval.clone() else {
        return Ok(Decision::Rejected(
            Refusal::one(
                Rule::TemplateNotApproved,
                "the template has no approval on record",
            ),
            None,
        ));
    };
    let bound = match template.spec.bind(&request.params) {
        Ok(bound) => bound,
        Err(refusal) => return Ok(Decision::Rejected(refusal, None)),
    };

    // 2. Grant.
    let grant = match choose_grant(store, &request.operator, request.grant.as_deref())? {
        Ok(grant) => grant,
        Err(refusal) => return Ok(Decision::Rejected(refusal, None)),
    };
    let mut tables = grant_tables(store, &grant)?;
    // A dataset the template pins is read at that version; every other at its latest.
    for (name, version) in &template.spec.versions {
        if let Some(dataset) = tables.get_mut(name) {
            *dataset = catalog::at_version(store, dataset, *version)?;
        }
    }

    // 3. Statement policy and shape, on the plan (for WASM jobs: the input plan, the module
    //    and the release SQL over the declared output, all before any row is read).
    let prepared = match &template.spec.wasm {
        None => exec::prepare_sql(
            &store.data_dir(),
            &template.spec,
            Some(&approval.terms()),
            &bound,
            &tables,
        )
        .await
        .map(|checked| checked.map(|(_, analysis)| Prepared::Sql(Box::new(analysis)))),
        Some(wasm) => prepare_wasm(store, template, wasm, &approval, &bound, &tables).await,
    };
    let prepared = match prepared {
        Ok(Ok(prepared)) => Ok(prepared),
        Ok(Err(refusal)) => Err(Decision::Rejected(refusal, Some(grant.clone()))),
        Err(failure) => Err(Decision::Failed(
            Failure::platform(failure),
            Some(grant.clone()),
        )),
    };
    let prepared = match prepared {
        Ok(prepared) => prepared,
        // Planning reads the tables' schemas: an object replaced by one of another schema
        // fails here, and the bureau's fix is the one `dataset.changed` names, so it is said
        // first (checking every table of the grant, since the plan did not say which it uses).
        Err(decision) => {
            let all: Vec<Dataset> = tables.values().cloned().collect();
            if let Ok(Some(changed)) = catalog::changed_object(store, &all).await {
                return Ok(Decision::Rejected(
                    Refusal::one(Rule::DatasetChanged, changed),
                    Some(grant),
                ));
            }
            return Ok(decision);
        }
    };
    let used: Vec<Dataset> = prepared
        .tables()
        .iter()
        .filter_map(|name| tables.get(name).cloned())
        .collect();
    // A dataset on object storage must still be the object registered: one HEAD each, before
    // anything is reserved (the bytes the job would read must be the bytes hashed).
    match catalog::changed_object(store, &used).await {
        Ok(None) => {}
        Ok(Some(changed)) => {
            return Ok(Decision::Rejected(
                Refusal::one(Rule::DatasetChanged, changed),
                Some(grant),
            ));
        }
        Err(e) => {
            return Ok(Decision::Failed(
                Failure::platform(e.to_string()),
                Some(grant),
            ));
        }
    }

    // The ε plan: every draw, its share and scale, and the existence threshold, checked by
    // OpenDP now — a plan it refuses costs nothing. The child repeats it from the same inputs.
    // Registries hold one to a few rows per unit; half the largest table's rows is a fair
    // first size for the fold's per-unit map.
    let units_hint = used.iter().map(|d| d.rows as usize).max().unwrap_or(0) / 2;
    let noise_seed = exec::seed_of(store.noise_source());
    let config = exec::release_config(&approval.terms(), units_hint, noise_seed);
    if let Err(refusal) = gate::plan_noise(prepared.release_analysis(), &config).and_then(|_| {
        check_memory(
            prepared.release_analysis(),
            &config,
            &used,
            &approval.terms(),
        )
    }) {
        return Ok(Decision::Rejected(refusal, Some(grant)));
    }

    // A freeze imposed while the job waited stops it before it reserves anything: it ends
    // `cancelled`, as the freeze's own sweep would have ended it (see `freezes`). A freeze
    // imposed after this read finds the job running and has the server cancel it.
    let used_ids: Vec<String> = used.iter().map(|d| d.id.to_string()).collect();
    if freezes::check_job(
        store.conn(),
        &request.operator,
        Some(grant.id.as_str()),
        &used_ids,
    )?
    .is_some()
    {
        return Ok(Decision::Cancelled);
    }

    // 4. Identical earlier job, else reserve ε.
    let fingerprint = fingerprint(template, &request.params, &grant, &used);
    let period = Period::of(clock::now());
    let at = clock::format(clock::now());
    let reserved = store.write(|tx| {
        // The claim (see `run_queued`): whatever the reservation decides below, a job that
        // gets this far has started, and its end is recorded from `running`.
        let changed = tx.execute(
            "UPDATE jobs SET state = ?1 WHERE id = ?2 AND state = ?3",
            params![JobState::Running, job_id.as_str(), JobState::Queued],
        )?;
        if changed != 1 {
            return Ok(None);
        }
        record_started(tx, request, template, job_id)?;
        let earlier: Option<(String, String, Option<String>)> = tx
            .query_row(
                "SELECT id, state, product_id FROM jobs
                 WHERE fingerprint = ?1 AND id != ?2 AND state IN (?3, ?4)
                 ORDER BY created_at LIMIT 1",
                params![
                    fingerprint,
                    job_id.as_str(),
                    JobState::Released,
                    JobState::Running
                ],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        let earlier = earlier
            .map(|(id, state, product)| JobState::from_stored(&state).map(|state| (id, state, product)))
            .transpose()?;
        match earlier {
            Some((id, JobState::Released, Some(product))) => {
                return Ok(Some(Err(Ok((id, product)))));
            }
            Some(_) => {
                return Ok(Some(Err(Err(Refusal::one(
                    Rule::BudgetIdenticalInProgress,
                    "an identical job (same template, parameters, grant and data) is running; run it again when it has finished to get its product at no cost",
                )))));
            }
            None => {}
        }
        let reservation = budget::Reservation {
            job_id: job_id.as_str(),
            grant: &grant,
            datasets: &used,
            period: &period,
            micro_epsilon: approval.micro_epsilon,
            pico_delta: approval.pico_delta,
            at: &at,
        };
        let token = match budget::reserve(tx, &reservation)? {
            Ok(token) => token,
            Err(refusal) => return Ok(Some(Err(Err(refusal)))),
        };
        tx.execute(
            "UPDATE jobs SET fingerprint = ?1, grant_id = ?2 WHERE id = ?3",
            params![fingerprint, grant.id.as_str(), job_id.as_str()],
        )?;
        audit::append(
            tx,
            &request.operator,
            job_id.as_str(),
            audit::Event::BudgetReserved {
                grant: &grant.id,
                period: period.as_str(),
                epsilon: approval.epsilon(),
                delta: approval.delta(),
                datasets: &used,
            },
        )?;
        Ok(Some(Ok(token)))
    })?;
    let Some(reserved) = reserved else {
        return Ok(Decision::NotQueued);
    };
    *claimed = true;
    let reserved = match reserved {
        Ok(token) => {
            costs.micro_epsilon = approval.micro_epsilon;
            costs.pico_delta = approval.pico_delta;
            token
        }
        Err(Ok((from_job, product))) => {
            let dir = store.products_dir().join(&product);
            return Ok(Decision::Reused {
                product_id: ProductId::new(product),
                dir,
                from_job,
                grant,
            });
        }
        Err(Err(refusal)) => return Ok(Decision::Rejected(refusal, Some(grant))),
    };

    // 5. The job's execution, in a child process under the job's limits (see `exec`): for
    //    WASM jobs the mapper once per unit, then the gate. From here on, whatever goes wrong,
    //    the operator sees one fixed failure (`Failure::after_reservation`).
    let module = match prepared {
        Prepared::Sql(_) => None,
        Prepared::Wasm(wasm) => Some(wasm.module),
    };
    let child = exec::JobRequest {
        data_dir: store.data_dir(),
        spec: template.spec.clone(),
        terms: approval.terms(),
        bound,
        tables: tables.clone(),
        units_hint,
        noise_seed,
        cluster: crate::cluster::current(),
    };
    let exe = exec::executable()
        .map_err(|e| Error::internal(format!("finding this program to run a job ({e})")))?;
    // What the meter charges depends on the tables' registered sizes, never on what a scan
    // read (see `metering`).
    let (registered_rows, registered_bytes) = used.iter().fold((0u64, 0u64), |(r, b), d| {
        (r.saturating_add(d.rows), b.saturating_add(d.bytes))
    });
    if template.spec.wasm.is_some() {
        costs.fuel = approval.wasm_fuel_per_unit.saturating_mul(registered_rows);
    }
    let executed = exec::run(reserved, &exe, &child, module.as_deref(), spare).await;
    let released = match executed {
        Ok(executed) => {
            costs.wasm = executed.wasm;
            costs.stats = metered(executed.released.stats(), registered_rows, registered_bytes);
            executed.released
        }
        Err(failure) => {
            costs.wasm = failure.wasm;
            costs.stats = metered(failure.stats, registered_rows, registered_bytes);
            return Ok(Decision::Failed(
                Failure::after_reservation(failure.category),
                Some(grant),
            ));
        }
    };

    // 6. The product.
    let product_id = ProductId::random();
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_string(),
        product_id: product_id.to_string(),
        job_id: job_id.to_string(),
        template_id: template.id.to_string(),
        template_name: template.spec.name.clone(),
        operator: request.operator.clone(),
        purpose: grant.purpose.clone(),
        ownership: Some(grant.ownership.as_str().to_string()),
        created_at: clock::format(clock::now()),
        sources: used
            .iter()
            .map(|d| SourceDataset {
                dataset_id: d.id.to_string(),
                name: d.name.clone(),
                provider: d.policy.provider.clone(),
                acquired_on: d.policy.acquired_on.clone(),
                classification_level: d.policy.classification_level,
                content_blake3: d.content_blake3.clone(),
                version: catalog::version_of(store, d).ok(),
            })
            .collect(),
        privacy: {
            let statement = released.statement().clone();
            PrivacyRecord {
                epsilon: approval.epsilon(),
                delta: approval.delta(),
                mechanism: statement.mechanism,
                k: approval.k,
                max_groups_per_unit: approval.max_groups,
                max_rows_per_group: approval.max_rows,
                groups_released: released.groups_released(),
                groups_suppressed: released.groups_suppressed(),
                threshold: Some(released.threshold()),
                noise_scales: released.noise_scales().to_vec(),
                accounting: statement.accounting,
                accuracy: statement.accuracy,
                contributions_dropped: statement.contributions_dropped,
                disclosure: statement.disclosure,
                post_processing: Some(statement.post_processing),
            }
        },
        columns: released.columns().to_vec(),
        rows: 0,
        files: Vec::new(),
        audit_checkpoint: audit::current_checkpoint(store)?,
    };
    let rows = released.rows().clone();
    // Staged only: the product appears when `finish` commits the transaction recording it.
    let draft = ProductDraft { manifest, released };
    let staged = match products::write_product(&store.products_dir(), draft, store.signing_key()) {
        Ok(staged) => staged,
        Err(ProductError::StorageFull) => {
            // Room for recording the failure: see `space`.
            crate::space::release(store.root());
            return Ok(Decision::Failed(Failure::storage_full(), Some(grant)));
        }
        Err(e) => {
            return Ok(Decision::Failed(
                Failure::after_reservation(format!("writing the product: {e}")),
                Some(grant),
            ));
        }
    };
    costs.output_rows = rows.num_rows() as u64;
    costs.output_bytes = staged.bytes();
    costs.price = prices::run_price(store.conn(), approval.price_per_run, registered_rows)?;
    Ok(Decision::Released {
        product_id,
        staged: Box::new(staged),
        rows,
        grant,
    })
}

/// Records the job's end, its meter record and audit entries in one transaction; a released
/// job's product is published inside it, just before the commit (see `products`). If that
/// transaction fails, the product is removed again and the job still ends `failed`.
/// `claimed`: whether the job left `queued` in its reservation's transaction (a job refused
/// before it ends from `queued`).
#[allow(clippy::too_many_arguments)] // The job's whole ending, called from one place.
fn finish(
    store: &mut Store,
    request: &JobRequest,
    template: &Template,
    job_id: &JobId,
    result: Result<Decision>,
    mut costs: Costs,
    wall_ms: u64,
    claimed: bool,
) -> Result<JobOutcome> {
    let decision = match result {
        Ok(Decision::NotQueued) => return outcome_of(store, job_id),
        Ok(decision) => decision,
        Err(error) if error.is_storage_full() => Decision::Failed(Failure::storage_full(), None),
        // A platform failure still ends the job and meters it; the error is reported after.
        Err(error) => Decision::Failed(Failure::after_reservation(error.to_string()), None),
    };
    let now = clock::format(clock::now());
    let (state, outcome) = match &decision {
        Decision::Released {
            product_id,
            staged,
            rows,
            ..
        } => (
            EndState::Released,
            JobOutcome::Released {
                job_id: job_id.clone(),
                product_id: product_id.clone(),
                dir: staged.dir().to_path_buf(),
                reused: false,
                rows: Some(rows.clone()),
            },
        ),
        Decision::Reused {
            product_id, dir, ..
        } => (
            EndState::Released,
            JobOutcome::Released {
                job_id: job_id.clone(),
                product_id: product_id.clone(),
                dir: dir.clone(),
                reused: true,
                rows: None,
            },
        ),
        Decision::Rejected(refusal, _) => (
            EndState::Rejected,
            JobOutcome::Rejected {
                job_id: job_id.clone(),
                refusal: refusal.clone(),
            },
        ),
        Decision::Failed(failure, _) => (
            EndState::Failed,
            JobOutcome::Failed {
                job_id: job_id.clone(),
                reason: failure.operator.to_string(),
            },
        ),
        Decision::Cancelled => (
            EndState::Cancelled,
            JobOutcome::Cancelled {
                job_id: job_id.clone(),
            },
        ),
        Decision::NotQueued => return outcome_of(store, job_id),
    };
    if !matches!(decision, Decision::Released { .. }) {
        // Only a released run is charged; ε once reserved stays spent.
        costs.price = Fen(0);
    }
    let meter = MeterRecord {
        job_id: job_id.to_string(),
        operator: request.operator.clone(),
        template_id: template.id.to_string(),
        wall_ms,
        cpu_ms: costs.stats.cpu_ms,
        rows_scanned: costs.stats.rows_scanned,
        bytes_scanned: costs.stats.bytes_scanned,
        peak_memory_bytes: costs.stats.peak_memory_bytes,
        micro_epsilon: costs.micro_epsilon,
        pico_delta: costs.pico_delta,
        output_rows: costs.output_rows,
        output_bytes: costs.output_bytes,
        end_state: state,
        price: costs.price,
        at: now.clone(),
        fuel: costs.fuel,
    };
    let written = store.write(|tx| {
        let (reasons, product, reused_from, grant): (Option<String>, Option<String>, Option<String>, Option<&Grant>) =
            match &decision {
                Decision::Released { product_id, grant, .. } => (None, Some(product_id.to_string()), None, Some(grant)),
                Decision::Reused { product_id, from_job, grant, .. } => {
                    (None, Some(product_id.to_string()), Some(from_job.clone()), Some(grant))
                }
                Decision::Rejected(refusal, grant) => (
                    Some(serde_json::to_string(refusal).unwrap_or_default()),
                    None,
                    None,
                    grant.as_ref(),
                ),
                Decision::Failed(failure, grant) => (
                    Some(serde_json::json!({ "failure": failure.operator }).to_string()),
                    None,
                    None,
                    grant.as_ref(),
                ),
                Decision::Cancelled | Decision::NotQueued => (None, None, None, None),
            };
        // A job ends from the state it is in: `running` once claimed, else still `queued` (it
        // was refused, failed or cancelled before its claim). If it is no longer in that state,
        // someone else has ended it (a queued job cancelled meanwhile): nothing is written.
        let from = if claimed { JobState::Running } else { JobState::Queued };
        let changed = tx.execute(
            "UPDATE jobs SET state = ?1, reasons_json = ?2, product_id = ?3, reused_from = ?4,
                grant_id = COALESCE(grant_id, ?5), finished_at = ?6 WHERE id = ?7 AND state = ?8",
            params![
                JobState::from(state),
                reasons,
                product,
                reused_from,
                grant.map(|g| g.id.to_string()),
                now,
                job_id.as_str(),
                from
            ],
        )?;
        if changed != 1 {
            return Ok(false);
        }
        if !claimed && !matches!(decision, Decision::Cancelled) {
            // Refused or failed before its claim: the job did start (its checks ran), so its
            // trail reads as every started job's does.
            record_started(tx, request, template, job_id)?;
        }
        if let Decision::Released {
            product_id,
            staged,
            rows,
            ..
        } = &decision
        {
            let (dir, manifest_blake3) = (staged.dir(), staged.manifest_blake3());
            tx.execute(
                "INSERT INTO products (id, job_id, template_id, operator, dir, rows, bytes, manifest_blake3, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    product_id.as_str(),
                    job_id.as_str(),
                    template.id.as_str(),
                    request.operator,
                    dir.display().to_string(),
                    rows.num_rows() as i64,
                    costs.output_bytes as i64,
                    manifest_blake3,
                    now
                ],
            )?;
            audit::append(
                tx,
                "gate",
                product_id.as_str(),
                audit::Event::ProductReleased {
                    job: job_id,
                    manifest_blake3,
                    rows: rows.num_rows(),
                },
            )?;
        }
        let event = match &decision {
            // A WASM job's real fuel, unit and fallback counts are for the bureau only.
            Decision::Released { product_id, .. } => audit::Event::JobReleased {
                product: product_id,
                how: audit::Release::Ran { wasm: costs.wasm },
            },
            Decision::Reused { product_id, from_job, .. } => audit::Event::JobReleased {
                product: product_id,
                how: audit::Release::Reused { from_job },
            },
            Decision::Rejected(refusal, _) => audit::Event::JobRejected { refusal },
            Decision::Failed(failure, _) => audit::Event::JobFailed {
                failure: failure.operator,
                category: Some(&failure.bureau),
            },
            Decision::Cancelled => audit::Event::JobCancelled {
                during: if claimed {
                    audit::Phase::Running
                } else {
                    audit::Phase::Queued
                },
            },
            Decision::NotQueued => return Ok(false),
        };
        audit::append(tx, &request.operator, job_id.as_str(), event)?;
        record_meter(tx, &meter, job_id)?;
        if let Decision::Released { staged, .. } = &decision {
            staged.publish_in(tx)?;
        }
        Ok(true)
    });
    let error = match written {
        Ok(true) => return Ok(outcome),
        Ok(false) => {
            // Ended by someone else: a product staged for it is not one.
            if let Decision::Released { staged, .. } = decision {
                staged.abandon();
            }
            return outcome_of(store, job_id);
        }
        Err(error) => error,
    };
    // Not committed (or committed, and then the checkpoint failed): a product the store does
    // not know must not stay visible, and the job must still end.
    if let Decision::Released { staged, .. } = decision
        && !products::is_recorded(store.conn(), staged.product_id()).unwrap_or(true)
    {
        staged.abandon();
    }
    let reason = if error.is_storage_full() {
        STORAGE_FULL_REASON
    } else {
        FINISH_FAILED_REASON
    };
    match end_unfinished(store, job_id, reason) {
        Ok(true) => Ok(JobOutcome::Failed {
            job_id: job_id.clone(),
            reason: reason.into(),
        }),
        Ok(false) => outcome_of(store, job_id),
        Err(_) => Err(error),
    }
}

fn template_refusal(template: &Template, operator: &str) -> Option<Refusal> {
    if template.operator != operator {
        return Some(Refusal::one(
            Rule::TemplateNotApproved,
            "the template belongs to another operator; submit your own template",
        ));
    }
    match template.state {
        TemplateState::Approved => None,
        TemplateState::Submitted => Some(Refusal::one(
            Rule::TemplateNotApproved,
            format!(
                "template {} is waiting for the bureau's approval",
                template.id
            ),
        )),
        TemplateState::Rejected => Some(Refusal::one(
            Rule::TemplateNotApproved,
            format!(
                "template {} was rejected: {}",
                template.id,
                template.reasons.clone().unwrap_or_default()
            ),
        )),
        TemplateState::Revoked => Some(Refusal::one(
            Rule::TemplateNotApproved,
            format!(
                "template {} was revoked: {}",
                template.id,
                template.reasons.clone().unwrap_or_default()
            ),
        )),
    }
}

fn choose_grant(
    store: &Store,
    operator: &str,
    wanted: Option<&str>,
) -> Result<Result<Grant, Refusal>> {
    let today = clock::today();
    if let Some(id) = wanted {
        let grant = match grants::get(store, id) {
            Ok(grant) => grant,
            Err(Error::NotFound { .. }) => {
                return Ok(Err(Refusal::one(
                    Rule::GrantScope,
                    format!("grant {id} does not exist"),
                )));
            }
            Err(e) => return Err(e),
        };
        if grant.operator != operator {
            return Ok(Err(Refusal::one(
                Rule::GrantScope,
                format!("grant {id} is not a grant to operator `{operator}`"),
            )));
        }
        if !grant.is_in_term(today) {
            return Ok(Err(Refusal::one(
                Rule::GrantTerm,
                format!(
                    "grant {id} is valid from {} to {}; today is {today}",
                    grant.valid_from, grant.valid_to
                ),
            )));
        }
        return Ok(Ok(grant));
    }
    let mine: Vec<Grant> = grants::list(store)?
        .into_iter()
        .filter(|g| g.operator == operator)
        .collect();
    if mine.is_empty() {
        return Ok(Err(Refusal::one(
            Rule::GrantScope,
            format!("operator `{operator}` has no grant; the bureau must grant datasets first"),
        )));
    }
    let active: Vec<Grant> = mine
        .iter()
        .filter(|g| g.is_in_term(today))
        .cloned()
        .collect();
    match active.len() {
        0 => Ok(Err(Refusal::one(
            Rule::GrantTerm,
            format!(
                "none of operator `{operator}`'s grants is in its term today ({today}); the bureau must renew one"
            ),
        ))),
        1 => Ok(Ok(active
            .into_iter()
            .next()
            .unwrap_or_else(|| mine[0].clone()))),
        _ => Ok(Err(Refusal::one(
            Rule::GrantScope,
            format!(
                "operator `{operator}` has {} grants in term; choose one with --grant ({})",
                active.len(),
                active
                    .iter()
                    .map(|g| g.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))),
    }
}

/// Maps a sandbox error to the gate rule it breaks (empty for failures that are not the
/// operator's fault).
/// What step 3 prepared for the gate.
enum Prepared {
    Sql(Box<Analysis>),
    Wasm(Box<PreparedWasm>),
}

/// A WASM job, checked and ready to hand to its child.
struct PreparedWasm {
    /// The grant's tables the input SQL reads.
    input_tables: Vec<String>,
    /// The release SQL's analysis over an empty `mapped`: the groups and measures the release
    /// will have, which fix its ε plan before the mapper runs.
    release: Analysis,
    module: Vec<u8>,
}

impl Prepared {
    /// The grant's tables the job reads.
    fn tables(&self) -> &[String] {
        match self {
            Self::Sql(analysis) => analysis.tables(),
            Self::Wasm(wasm) => &wasm.input_tables,
        }
    }

    /// The analysis of the query the gate will release.
    fn release_analysis(&self) -> &Analysis {
        match self {
            Self::Sql(analysis) => analysis,
            Self::Wasm(wasm) => &wasm.release,
        }
    }
}

/// The grant's datasets, by table name.
fn grant_tables(store: &Store, grant: &Grant) -> Result<analysis::Tables> {
    let mut tables: analysis::Tables = HashMap::new();
    for dataset_id in &grant.datasets {
        let dataset = catalog::get(store, dataset_id.as_str())?;
        tables.insert(dataset.name.clone(), dataset);
    }
    Ok(tables)
}

/// Step 3 for a WASM job: the input plan, the declared output and the release SQL over an
/// empty `mapped`, and the module's presence. The module itself was compiled and its imports
/// checked when it was uploaded; the child compiles it again under the job's limits.
async fn prepare_wasm(
    store: &Store,
    template: &Template,
    wasm: &WasmSpec,
    approval: &templates::Approval,
    bound: &[(String, ParamValue)],
    tables: &analysis::Tables,
) -> std::result::Result<std::result::Result<Prepared, Refusal>, String> {
    let (checked, release) = match exec::check_wasm(
        &store.data_dir(),
        &template.spec,
        wasm,
        Some(&approval.terms()),
        bound,
        tables,
    )
    .await?
    {
        Ok(checked) => checked,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let module = match templates::module_bytes(store, &wasm.module_blake3) {
        Ok(module) => module,
        Err(Error::Refused(refusal)) => return Ok(Err(refusal)),
        Err(e) => return Err(e.to_string()),
    };
    Ok(Ok(Prepared::Wasm(Box::new(PreparedWasm {
        input_tables: checked.input().tables.clone(),
        release,
        module,
    }))))
}

/// The meter's figures: CPU, wall time and peak memory as the job used them (for the bureau;
/// an operator's view of the meter leaves them out), rows and bytes as the tables' registered
/// sizes, so that neither the meter nor the price depends on which rows a filter kept.
fn metered(used: ExecStats, rows: u64, bytes: u64) -> ExecStats {
    ExecStats {
        rows_scanned: rows,
        bytes_scanned: bytes,
        ..used
    }
}

/// The products released by jobs under grant `grant_id` (a reused product once).
pub fn products_of_grant(conn: &rusqlite::Connection, grant_id: &str) -> Result<Vec<String>> {
    crate::store::query_rows(
        conn,
        "SELECT DISTINCT product_id FROM jobs WHERE grant_id = ?1 AND product_id IS NOT NULL
         ORDER BY product_id",
        [grant_id],
        |row| row.get(0),
    )
}

/// Identity of a job's inputs: an identical fingerprint means an identical release.
fn fingerprint(
    template: &Template,
    params: &[(String, String)],
    grant: &Grant,
    used: &[Dataset],
) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut hasher = blake3::Hasher::new_derive_key("veil job fingerprint v1");
    hasher.update(template.id.as_str().as_bytes());
    for (name, value) in sorted {
        for part in [name, value] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
    }
    hasher.update(grant.id.as_str().as_bytes());
    for dataset in used {
        hasher.update(dataset.content_blake3.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

const JOB_COLUMNS: &str = "id, template_id, grant_id, operator, params_json, state, reasons_json,
    product_id, reused_from, created_at, finished_at, requested_grant";

fn row_to_job(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Job>> {
    let params_json: String = row.get(4)?;
    let reasons_json: Option<String> = row.get(6)?;
    let (reasons, failure) = match reasons_json {
        Some(json) => match serde_json::from_str::<Refusal>(&json) {
            Ok(refusal) => (Some(refusal), None),
            Err(_) => (
                None,
                serde_json::from_str::<serde_json::Value>(&json)
                    .ok()
                    .and_then(|v| v["failure"].as_str().map(str::to_string)),
            ),
        },
        None => (None, None),
    };
    // A stored state outside `JobState` is reported naming its column, rather than as
    // SQLite's conversion error.
    let state = match JobState::from_stored(&row.get::<_, String>(5)?) {
        Ok(state) => state,
        Err(error) => return Ok(Err(error)),
    };
    Ok(Ok(Job {
        id: JobId::new(row.get::<_, String>(0)?),
        template_id: row.get(1)?,
        grant_id: row.get(2)?,
        operator: row.get(3)?,
        params: serde_json::from_str(&params_json).unwrap_or_default(),
        state,
        reasons,
        failure,
        product_id: row.get(7)?,
        reused_from: row.get(8)?,
        created_at: row.get(9)?,
        finished_at: row.get(10)?,
        requested_grant: row.get(11)?,
    }))
}

pub fn get(store: &Store, id: &str) -> Result<Job> {
    store
        .conn()
        .query_row(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
            [id],
            row_to_job,
        )
        .optional()?
        .transpose()?
        .ok_or_else(|| Error::NotFound {
            kind: "job",
            id: id.to_string(),
            hint: "; `veil job list` shows the jobs",
        })
}

pub fn list(store: &Store) -> Result<Vec<Job>> {
    query_parsed_rows(
        store.conn(),
        &format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at, rowid"),
        [],
        row_to_job,
    )
}

/// Pre-flight: what [`run`] would decide before it reads any data row — the template, grant,
/// statement and shape rules, an identical earlier job, and the budget — with what the run
/// would cost. Nothing is stored: the budget check runs the real reservation inside a
/// transaction that is rolled back.
/// What a job's checks refuse, besides its approval, for a template not yet approved: its
/// parameters, the operator's grant, and for a SQL template the statement policy and the plan
/// over the grant's tables. Approval terms (ε, k, limits) are not known yet, so the noise plan,
/// the memory check and the budget are not checked; nor is a WASM template's mapper.
async fn unapproved_violations(
    store: &Store,
    template: &Template,
    request: &JobRequest,
) -> Result<Vec<veil_gate::rules::Violation>> {
    let bound = match template.spec.bind(&request.params) {
        Ok(bound) => bound,
        Err(refusal) => return Ok(refusal.violations),
    };
    let grant = match choose_grant(store, &request.operator, request.grant.as_deref())? {
        Ok(grant) => grant,
        Err(refusal) => return Ok(refusal.violations),
    };
    if template.spec.wasm.is_some() {
        return Ok(Vec::new());
    }
    let tables = grant_tables(store, &grant)?;
    match exec::prepare_sql(&store.data_dir(), &template.spec, None, &bound, &tables).await {
        Ok(Ok(_)) => Ok(Vec::new()),
        Ok(Err(refusal)) => Ok(refusal.violations),
        Err(failure) => Err(Error::internal(format!("checking the job: {failure}"))),
    }
}

pub async fn dry_run(store: &Store, request: &JobRequest) -> Result<veil_sdk::api::DryRun> {
    let template = templates::get(store, &request.template)?;
    let period = Period::of(clock::now());
    let mut answer = veil_sdk::api::DryRun {
        passes: false,
        violations: Vec::new(),
        grant_id: None,
        reuses_job: None,
        epsilon: 0.0,
        delta: 0.0,
        price_fen: 0,
        rows_scanned: 0,
        budget_period: period.to_string(),
        epsilon_per_period: 0.0,
        epsilon_spent: 0.0,
        epsilon_remaining_after: 0.0,
        accuracy: Vec::new(),
        warnings: Vec::new(),
    };
    let refuse = |mut answer: veil_sdk::api::DryRun, refusal: &Refusal| {
        answer.violations = refusal
            .violations
            .iter()
            .map(|v| veil_sdk::api::Violation {
                rule: v.rule.code().to_string(),
                message: v.message.clone(),
            })
            .collect();
        Ok(answer)
    };
    if let Some(mut refusal) = template_refusal(&template, &request.operator) {
        // A template still waiting for approval: say, too, what else a job would meet, so the
        // operator can fix it before the bureau looks.
        if template.operator == request.operator && template.state == TemplateState::Submitted {
            refusal
                .violations
                .extend(unapproved_violations(store, &template, request).await?);
        }
        return refuse(answer, &refusal);
    }
    let Some(approval) = template.approval.clone() else {
        return refuse(
            answer,
            &Refusal::one(
                Rule::TemplateNotApproved,
                "the template has no approval on record",
            ),
        );
    };
    let bound = match template.spec.bind(&request.params) {
        Ok(bound) => bound,
        Err(refusal) => return refuse(answer, &refusal),
    };
    let grant = match choose_grant(store, &request.operator, request.grant.as_deref())? {
        Ok(grant) => grant,
        Err(refusal) => return refuse(answer, &refusal),
    };
    answer.grant_id = Some(grant.id.to_string());
    let spent = budget::spent_by_grant(store.conn(), grant.id.as_str(), &period)?;
    answer.epsilon_per_period = grant.micro_epsilon_per_month.epsilon();
    answer.epsilon_spent = spent.micro_epsilon.epsilon();
    answer.epsilon_remaining_after = answer.epsilon_per_period - answer.epsilon_spent;
    let tables = grant_tables(store, &grant)?;
    let prepared = match &template.spec.wasm {
        None => exec::prepare_sql(
            &store.data_dir(),
            &template.spec,
            Some(&approval.terms()),
            &bound,
            &tables,
        )
        .await
        .map(|checked| checked.map(|(_, analysis)| Prepared::Sql(Box::new(analysis)))),
        Some(wasm) => prepare_wasm(store, &template, wasm, &approval, &bound, &tables).await,
    };
    let prepared = match prepared {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(refusal)) => return refuse(answer, &refusal),
        Err(failure) => return Err(Error::internal(format!("checking the job: {failure}"))),
    };
    let used: Vec<Dataset> = prepared
        .tables()
        .iter()
        .filter_map(|name| tables.get(name).cloned())
        .collect();
    let config = exec::release_config(&approval.terms(), 0, None);
    let plan = gate::plan_noise(prepared.release_analysis(), &config).and_then(|plan| {
        check_memory(
            prepared.release_analysis(),
            &config,
            &used,
            &approval.terms(),
        )
        .map(|()| plan)
    });
    match plan {
        Ok(plan) => answer.accuracy = plan.accuracy().to_vec(),
        Err(refusal) => return refuse(answer, &refusal),
    }
    answer.warnings = crate::contribution::max_groups_warnings(
        store,
        &tables,
        prepared.release_analysis(),
        approval.max_groups,
        crate::contribution::Audience::Operator,
    )?;
    answer.rows_scanned = used.iter().map(|d| d.rows).sum();
    let fingerprint = fingerprint(&template, &request.params, &grant, &used);
    let earlier: Option<String> = store
        .conn()
        .query_row(
            "SELECT id FROM jobs WHERE fingerprint = ?1 AND state = ?2
             ORDER BY created_at LIMIT 1",
            params![fingerprint, JobState::Released],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(job) = earlier {
        answer.reuses_job = Some(job);
        answer.passes = true;
        return Ok(answer);
    }
    let at = clock::format(clock::now());
    let probe_id = JobId::random();
    let reservation = budget::Reservation {
        job_id: probe_id.as_str(),
        grant: &grant,
        datasets: &used,
        period: &period,
        micro_epsilon: approval.micro_epsilon,
        pico_delta: approval.pico_delta,
        at: &at,
    };
    // Dropping the transaction rolls the probe reservation back.
    let tx = store.conn().unchecked_transaction()?;
    let fits = budget::reserve(&tx, &reservation)?;
    drop(tx);
    answer.epsilon = approval.epsilon();
    answer.delta = approval.delta();
    answer.epsilon_remaining_after -= answer.epsilon;
    answer.price_fen =
        prices::run_price(store.conn(), approval.price_per_run, answer.rows_scanned)?.0;
    match fits {
        Ok(_probe) => answer.passes = true,
        Err(refusal) => return refuse(answer, &refusal),
    }
    Ok(answer)
}

/// Statically checks a template against a grant's tables, without touching any row: the
/// statement policy and shape rules (see [`templates::static_check`], which every submission
/// runs; both call one function, `templates::check_against`).
pub async fn check_static(
    store: &Store,
    template: &Template,
    grant: &Grant,
) -> Result<Result<Analysis, Refusal>> {
    templates::check_against(store, &template.spec, &grant_tables(store, grant)?).await
}

/// The kernel's memory check (see [`veil_gate::release::check_memory`]) on the registered row
/// counts of the tables the job reads.
fn check_memory(
    analysis: &Analysis,
    config: &veil_gate::ReleaseConfig,
    used: &[Dataset],
    terms: &veil_gate::Terms,
) -> std::result::Result<(), Refusal> {
    let rows: Vec<u64> = used.iter().map(|d| d.rows).collect();
    let limits = terms.limits();
    gate::check_memory(
        analysis,
        config,
        &rows,
        limits.memory_bytes,
        limits.partitions,
    )
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_state_reads_back_as_it_was_stored_and_shown() {
        for state in JobState::ALL {
            assert_eq!(JobState::from_stored(state.as_str()).ok(), Some(state));
            // The HTTP API and the audit log show the same text the store holds.
            assert_eq!(
                serde_json::to_value(state).ok(),
                Some(serde_json::json!(state.as_str()))
            );
            if let Some(end) = state.end() {
                assert_eq!(JobState::from(end), state);
                assert_eq!(end.as_str(), state.as_str());
            }
        }
    }

    #[test]
    fn a_stored_job_state_outside_the_enum_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::init(&dir.path().join("store")).expect("store");
        store
            .conn()
            .execute(
                "INSERT INTO jobs (id, template_id, operator, params_json, fingerprint, state, created_at)
                 VALUES ('job-1', 'tpl-1', 'op', '[]', '', 'paused', '2026-11-23T10:00:00Z')",
                [],
            )
            .expect("insert");
        for error in [
            get(&store, "job-1").expect_err("a job in no known state"),
            list(&store).expect_err("a list holding it"),
        ] {
            let message = error.to_string();
            assert!(matches!(error, Error::Internal(_)), "{message}");
            assert!(
                message.contains("jobs.state")
                    && message.contains("\"paused\"")
                    && message.contains("queued, running, released, rejected, failed, cancelled"),
                "{message}"
            );
        }
    }
}
