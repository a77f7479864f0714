//! The bounded job queue and its worker pool.
//!
//! A submitted job is a `queued` row in the store (written by `jobs::enqueue`, with its
//! idempotency key) and a permit from a semaphore of [`QUEUE_JOBS_DEFAULT`] permits (or
//! `veil serve --queue N`), held until
//! the job ends: when every permit is taken the server answers 429 before writing anything.
//! [`WORKERS_DEFAULT`] workers take job ids in order; each owns its own store connection and
//! runs one job at a time with `jobs::run_queued`, so the job's own wall-time and memory limits
//! (pinned by the template's approval) bound it. A cancelled job's token stops it where it is.
//! Every job end bumps a generation counter that long-polling `wait` calls watch. Each worker
//! keeps its next job's child process started and warmed up ahead of time (`jobs::Spare`), so
//! a job does not wait for a process to start; it is still one fresh process per job.
//!
//! **Jobs never run on the HTTP server's runtime.** A job's rows are read in a child process,
//! but its parent side — planning and analysis in DataFusion, the budget, the child's I/O,
//! writing the product — is async work. It runs on a multi-thread tokio runtime of the
//! workers' own ([`JOB_RUNTIME_THREADS`] threads named `veil-job`), built in
//! [`Workers::start`] and shut down when the workers are dropped; so a busy job cannot take
//! the threads that answer requests, and a flood of requests cannot stall a job.
//!
//! **No job outlives the server unended.** A job whose run returns an error (its final write
//! failed, the disk is full) is ended `failed` here with `jobs::end_unfinished`; if even that
//! cannot be written, the job is kept in memory and the record is retried every
//! [`MONITOR_TICK_MS`] until it is written (or, if the server stops first, `jobs::recover` ends
//! it at the next start). While the store's disk is full (see `veil_runtime::space`) queued jobs end
//! `failed` at once without running, and submissions are refused with 507.
//!
//! A monitor thread does the server's housekeeping on its own store connection: each tick it
//! writes the ballast back once there is room again and retries the failure records kept in
//! memory; every `--sweep-seconds` it runs `veil_runtime::sweep::sweep`.
//! Every [`FREEZE_CHECK_MS`] it cancels the running jobs an active freeze of the bureau stops
//! (`veil_runtime::freezes`), so a freeze imposed from the command line stops them too.
//!
//! **Stopping.** [`Workers::drain`] (on SIGTERM or Ctrl-C) lets no queued job start: a worker
//! that takes one leaves it `queued` in the store, where `jobs::recover` finds it at the next
//! start — it is *re-queued*, having reserved nothing and read nothing. Jobs already running
//! get a grace period to end on their own; one still running after it is cancelled (it ends
//! `cancelled`, and ε it reserved stays spent, as for every cancelled job). A job is never
//! re-queued once running: it may have reserved ε and read data, and a second run would spend
//! again.
//!
//! The workers keep the server's [`Metrics`] for the queue and the jobs, and write a log line
//! when a job starts and when it ends (see [`crate::access_log`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use veil_runtime::error::{Error, Result};
use veil_runtime::freezes;
use veil_runtime::ids::JobId;
use veil_runtime::jobs::{self, JobOutcome, JobState};
use veil_runtime::metering::EndState;
use veil_runtime::store::Store;
use veil_runtime::{space, sweep};

use crate::access_log::Log;
use crate::metrics::Metrics;

/// Jobs queued or running at once unless `veil serve --queue` says otherwise; more
/// submissions are refused with 429 until one ends.
pub const QUEUE_JOBS_DEFAULT: usize = 256;
/// Largest queue a server may be given.
pub const QUEUE_JOBS_MAX: usize = 100_000;
/// Jobs that run at the same time unless `veil serve --workers` says otherwise: one per core
/// of the machine this was sized for, since DataFusion already uses every core for one job.
pub const WORKERS_DEFAULT: usize = 2;
/// Most workers a server may start.
pub const WORKERS_MAX: usize = 64;
/// Threads of the runtime jobs run on. The parent side of a job is mostly waiting (on the
/// child, on the disk), so two threads serve every worker; more would only compete with the
/// children, which do the heavy work, for the machine's cores.
pub const JOB_RUNTIME_THREADS: usize = 2;
/// How long dropping the workers waits for the job runtime's blocking tasks to end, in
/// milliseconds, when the dropping thread may block.
const JOB_RUNTIME_SHUTDOWN_MS: u64 = 1_000;
/// How often the monitor checks the disk and retries failure records, in milliseconds.
pub const MONITOR_TICK_MS: u64 = 1_000;
/// How often the monitor looks for running jobs under an active freeze, in milliseconds: a
/// freeze imposed over HTTP cancels them at once, one imposed by another process (`veil
/// freeze` on the store) within this long.
pub const FREEZE_CHECK_MS: u64 = 2_000;
/// Longest interval between sweeps a server may be given, in seconds (a day).
pub const SWEEP_SECONDS_MAX: u64 = 86_400;
/// How long a stopping server lets running jobs end on their own unless `veil serve
/// --grace-seconds` says otherwise, in seconds: well inside the 90 s a service manager such
/// as systemd waits after SIGTERM before it kills.
pub const GRACE_SECONDS_DEFAULT: u64 = 60;
/// Longest grace period a server may be given, in seconds: an approval's longest wall time.
pub const GRACE_SECONDS_MAX: u64 = 3_600;
/// How long a stopping server waits, after cancelling the jobs its grace period did not see
/// end, for their ends to be recorded, in milliseconds.
pub const CANCEL_WAIT_MS: u64 = 10_000;

/// What a job is told when the platform failed while running it and no other reason could
/// be recorded.
const PLATFORM_FAILED_REASON: &str =
    "the platform failed while running the job; nothing was released — submit it again";

/// The queue, shared by the route handlers.
pub struct Workers {
    sender: mpsc::UnboundedSender<JobId>,
    slots: Arc<Semaphore>,
    capacity: usize,
    /// The permit and cancellation token of every job queued or running here.
    jobs: Mutex<HashMap<JobId, Slot>>,
    /// Bumped each time a job ends.
    ended: watch::Sender<u64>,
    /// The store folder.
    root: PathBuf,
    /// Jobs that must end `failed` but whose record could not be written yet, with the reason.
    unrecorded: Mutex<Vec<(JobId, &'static str)>>,
    /// The runtime the jobs run on (see the module docs); `None` only once dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// The counters `GET /metrics` shows.
    metrics: Arc<Metrics>,
    /// Where job lines and notices go; `None`: no job lines (a router used in process).
    log: Option<Log>,
    /// Set by [`Workers::drain`], under the `jobs` lock: no queued job starts any more.
    draining: AtomicBool,
    /// What happened to the jobs since the drain began.
    drained: Mutex<Drained>,
}

struct Slot {
    _permit: OwnedSemaphorePermit,
    cancel: CancellationToken,
    /// A worker took the job and runs it.
    running: bool,
}

/// What stopping the workers did with the jobs they held (see [`Workers::drain`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Jobs that ended on their own while the server stopped (released, rejected or failed).
    pub finished: usize,
    /// Jobs left `queued` in the store, never started: the next start runs them.
    pub requeued: usize,
    /// Jobs that ended `cancelled` while the server stopped: still running when the grace
    /// period ended, or cancelled by their operator meanwhile.
    pub cancelled: usize,
    /// Jobs whose end was not recorded even after they were cancelled: the next start ends
    /// them `failed` (see `jobs::recover`).
    pub unended: usize,
}

impl std::fmt::Display for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} job(s) finished, {} re-queued (they run at the next start), {} cancelled",
            self.finished, self.requeued, self.cancelled
        )?;
        if self.unended > 0 {
            write!(
                f,
                ", {} still running (they end `failed` at the next start)",
                self.unended
            )?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("free_slots", &self.slots.available_permits())
            .finish()
    }
}

impl Workers {
    /// Starts `count` workers on the store at `root` with a queue of `capacity` jobs, and
    /// queues the jobs a stopped server left queued (those it left running end `failed`; see
    /// `jobs::recover`). Sweeps every [`sweep::SWEEP_INTERVAL_SECONDS`].
    ///
    /// The jobs run on a runtime the workers build here and own, so the caller needs no
    /// runtime of its own. Dropping the last reference stops the workers: a job that is
    /// running ends first, and jobs still queued stay `queued` in the store for the next start.
    pub fn start(root: &Path, count: usize, capacity: usize) -> Result<Arc<Self>> {
        Self::start_with(
            root,
            count,
            capacity,
            Duration::from_secs(sweep::SWEEP_INTERVAL_SECONDS),
        )
    }

    /// [`Workers::start`], sweeping every `sweep_every` (1 s to [`SWEEP_SECONDS_MAX`]).
    pub fn start_with(
        root: &Path,
        count: usize,
        capacity: usize,
        sweep_every: Duration,
    ) -> Result<Arc<Self>> {
        Self::start_logged(root, count, capacity, sweep_every, None)
    }

    /// [`Workers::start_with`], writing a line to `log` when a job starts and ends (`veil
    /// serve` does; a router used in process has no log).
    pub fn start_logged(
        root: &Path,
        count: usize,
        capacity: usize,
        sweep_every: Duration,
        log: Option<Log>,
    ) -> Result<Arc<Self>> {
        if !(1..=WORKERS_MAX).contains(&count) {
            return Err(Error::invalid(format!(
                "--workers must be between 1 and {WORKERS_MAX}"
            )));
        }
        if !(1..=QUEUE_JOBS_MAX).contains(&capacity) {
            return Err(Error::invalid(format!(
                "--queue must be between 1 and {QUEUE_JOBS_MAX}"
            )));
        }
        if !(1..=SWEEP_SECONDS_MAX).contains(&sweep_every.as_secs()) {
            return Err(Error::invalid(format!(
                "--sweep-seconds must be between 1 and {SWEEP_SECONDS_MAX}"
            )));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(JOB_RUNTIME_THREADS)
            .thread_name("veil-job")
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("starting the job runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (sender, receiver) = mpsc::unbounded_channel();
        let (ended, _) = watch::channel(0);
        let workers = Arc::new(Self {
            sender,
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            jobs: Mutex::new(HashMap::new()),
            ended,
            root: root.to_path_buf(),
            unrecorded: Mutex::new(Vec::new()),
            runtime: Some(runtime),
            metrics: Metrics::new(),
            log,
            draining: AtomicBool::new(false),
            drained: Mutex::new(Drained::default()),
        });
        let mut store = Store::open(root)?;
        let waiting = jobs::recover(&mut store)?;
        if !space::ensure(root) {
            workers.notice(&format!(
                "the store's disk has no room for the {} MiB ballast; jobs are refused until space is freed",
                space::BALLAST_BYTES / (1024 * 1024)
            ));
        }
        let weak = Arc::downgrade(&workers);
        std::thread::Builder::new()
            .name("veil-monitor".into())
            .spawn(move || monitor(weak, store, sweep_every))
            .map_err(|e| Error::internal(format!("starting the monitor: {e}")))?;
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for index in 0..count {
            let store = Store::open(root)?;
            let (workers, receiver, handle) = (
                Arc::downgrade(&workers),
                Arc::clone(&receiver),
                handle.clone(),
            );
            // A job holds its store connection across awaits, and SQLite connections stay on
            // one thread; so each worker is a thread that drives its job on the job runtime,
            // where DataFusion's own tasks and the child's I/O then run too. It holds the
            // workers weakly, so dropping them closes the queue and ends the thread.
            std::thread::Builder::new()
                .name(format!("veil-worker-{index}"))
                .spawn(move || handle.block_on(work(workers, store, receiver)))
                .map_err(|e| Error::internal(format!("starting a job worker: {e}")))?;
        }
        for job in waiting {
            // A restarted server runs what was queued even beyond the queue's bound: those
            // jobs were accepted already.
            let permit = match Arc::clone(&workers.slots).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    workers.slots.add_permits(1);
                    Arc::clone(&workers.slots)
                        .try_acquire_owned()
                        .map_err(|_| Error::internal("queueing a recovered job"))?
                }
            };
            workers.admit(job, permit)?;
        }
        Ok(workers)
    }

    /// True while the store's disk is full (its ballast is released): submissions are refused
    /// and queued jobs end `failed` without running. See `veil_runtime::space`.
    pub fn storage_full(&self) -> bool {
        space::is_full(&self.root)
    }

    /// How many jobs may be queued or running at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The counters `GET /metrics` shows.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Writes a notice to the server's log (text unless the log is JSON).
    pub fn notice(&self, message: &str) {
        self.log.unwrap_or_default().notice(message);
    }

    /// A place in the queue, or `None` when it is full.
    pub fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// Hands a queued job to the workers; `permit` is released when the job ends.
    pub fn admit(&self, job: JobId, permit: OwnedSemaphorePermit) -> Result<()> {
        let slot = Slot {
            _permit: permit,
            cancel: CancellationToken::new(),
            running: false,
        };
        self.jobs
            .lock()
            .map_err(|_| Error::internal("queueing a job"))?
            .insert(job.clone(), slot);
        // Counted before it is sent: a worker may take it at once, and the gauge must not go
        // below zero then back up (it saturates at zero, so it would stay one too high).
        self.metrics.job_queued();
        self.sender.send(job).map_err(|_| {
            self.metrics.job_taken(false);
            Error::Resources("the job workers have stopped; restart the server".into())
        })?;
        Ok(())
    }

    /// Stops the workers for a server that is stopping, and says what became of the jobs:
    /// from now on no queued job starts (each stays `queued` in the store for the next start),
    /// jobs running get `grace` to end on their own, and those still running after it are
    /// cancelled and given [`CANCEL_WAIT_MS`] for their end to be recorded.
    pub async fn drain(&self, grace: Duration) -> Drained {
        let mut ended = self.subscribe();
        if let Ok(_jobs) = self.jobs.lock() {
            // Under the lock a worker takes a job with: from here on none starts.
            self.draining.store(true, Ordering::SeqCst);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.running_jobs().next().is_some() {
            if tokio::time::timeout_at(deadline, ended.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        let overdue: Vec<JobId> = self.running_jobs().collect();
        if !overdue.is_empty() {
            self.notice(&format!(
                "{} job(s) still running after the {} s grace period; cancelling them",
                overdue.len(),
                grace.as_secs()
            ));
            for job in &overdue {
                self.cancel(job);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_millis(CANCEL_WAIT_MS);
            while self.running_jobs().next().is_some() {
                if tokio::time::timeout_at(deadline, ended.changed())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        let Ok(jobs) = self.jobs.lock() else {
            return Drained::default();
        };
        let mut drained = self.drained.lock().map(|d| *d).unwrap_or_default();
        // A job still in the map either waits in the channel (it stays queued in the store)
        // or still runs (its end was not recorded in time).
        drained.unended = jobs.values().filter(|slot| slot.running).count();
        drained.requeued += jobs.len() - drained.unended;
        drained
    }

    /// The jobs a worker is running now.
    fn running_jobs(&self) -> impl Iterator<Item = JobId> {
        let running: Vec<JobId> = self
            .jobs
            .lock()
            .map(|jobs| {
                jobs.iter()
                    .filter(|(_, slot)| slot.running)
                    .map(|(job, _)| job.clone())
                    .collect()
            })
            .unwrap_or_default();
        running.into_iter()
    }

    /// A worker takes `job` off the queue: true when it is to run it, false when the server is
    /// stopping (then the job stays as the store has it — `queued` for the next start, or
    /// ended already if it was cancelled while it waited).
    fn take(&self, job: &JobId, queued: bool) -> bool {
        let Ok(mut jobs) = self.jobs.lock() else {
            return false;
        };
        if self.draining.load(Ordering::SeqCst) {
            jobs.remove(job);
            self.metrics.job_taken(false);
            if queued && let Ok(mut drained) = self.drained.lock() {
                drained.requeued += 1;
            }
            return false;
        }
        if let Some(slot) = jobs.get_mut(job) {
            slot.running = true;
        }
        self.metrics.job_taken(true);
        true
    }

    /// A job a worker took ended in `state`: counted, logged, and its place in the queue freed.
    fn finish(&self, job: &JobId, template: &str, state: EndState, ran: Option<Duration>) {
        self.metrics.job_ended(state, ran);
        if let Some(log) = self.log {
            log.job_ended(job.as_str(), template, state, ran);
        }
        if self.draining.load(Ordering::SeqCst)
            && let Ok(mut drained) = self.drained.lock()
        {
            if state == EndState::Cancelled {
                drained.cancelled += 1;
            } else {
                drained.finished += 1;
            }
        }
        self.release(job);
    }

    /// Fires the cancellation token of a job queued or running here.
    pub fn cancel(&self, job: &JobId) {
        if let Ok(jobs) = self.jobs.lock()
            && let Some(slot) = jobs.get(job)
        {
            slot.cancel.cancel();
        }
    }

    /// A receiver that changes each time a job ends.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.ended.subscribe()
    }

    fn token(&self, job: &JobId) -> CancellationToken {
        self.jobs
            .lock()
            .ok()
            .and_then(|jobs| jobs.get(job).map(|slot| slot.cancel.clone()))
            .unwrap_or_default()
    }

    fn release(&self, job: &JobId) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(job);
        }
        self.ended.send_modify(|generation| *generation += 1);
    }

    /// Ends `job` `failed` with `reason`, or keeps it for the monitor to retry.
    fn end_failed(&self, store: &mut Store, job: &JobId, reason: &'static str) {
        if let Err(error) = jobs::end_unfinished(store, job, reason) {
            self.notice(&format!(
                "job {job}: recording its failure: {error}; retrying"
            ));
            if let Ok(mut unrecorded) = self.unrecorded.lock() {
                unrecorded.push((job.clone(), reason));
            }
        }
    }

    /// Retries the failure records kept in memory; returns how many are still unwritten.
    fn retry_unrecorded(&self, store: &mut Store) -> usize {
        let waiting = match self.unrecorded.lock() {
            Ok(mut unrecorded) => std::mem::take(&mut *unrecorded),
            Err(_) => return 0,
        };
        let mut left = Vec::new();
        for (job, reason) in waiting {
            match jobs::end_unfinished(store, &job, reason) {
                Ok(_) => self.ended.send_modify(|generation| *generation += 1),
                Err(_) => left.push((job, reason)),
            }
        }
        let count = left.len();
        if let Ok(mut unrecorded) = self.unrecorded.lock() {
            unrecorded.extend(left);
        }
        count
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        // No job is running: each holds a reference while it runs. Waiting for the runtime's
        // blocking tasks is refused inside an async context — the server's runtime, or a
        // worker that held the last reference — so there the runtime is only told to stop.
        if tokio::runtime::Handle::try_current().is_ok() {
            runtime.shutdown_background();
        } else {
            runtime.shutdown_timeout(Duration::from_millis(JOB_RUNTIME_SHUTDOWN_MS));
        }
    }
}

/// The server's housekeeping (see the module docs), until the workers are gone or the store
/// folder is.
fn monitor(workers: Weak<Workers>, mut store: Store, sweep_every: Duration) {
    let root = store.root().to_path_buf();
    let folders = [
        store.products_dir(),
        store.data_dir(),
        store.statements_dir(),
    ];
    let mut last_freeze_check = Instant::now();
    let mut last_sweep = Instant::now();
    // Grants whose term ended while the server was down are disposed of at once.
    let mut disposed_once = false;
    loop {
        std::thread::sleep(Duration::from_millis(MONITOR_TICK_MS));
        let Some(workers) = workers.upgrade() else {
            return;
        };
        if !store.root().join("veil.db").exists() {
            return;
        }
        if workers.storage_full() {
            let folders: Vec<&Path> = folders.iter().map(PathBuf::as_path).collect();
            if space::restore(&root, &folders) {
                workers.notice("the store's disk has room again; taking jobs");
            }
        }
        if last_freeze_check.elapsed() >= Duration::from_millis(FREEZE_CHECK_MS) {
            last_freeze_check = Instant::now();
            match freezes::running_under(&store) {
                Ok(under) => under.iter().for_each(|job| workers.cancel(job)),
                Err(error) => workers.notice(&format!("checking the freezes: {error}")),
            }
        }
        workers.retry_unrecorded(&mut store);
        if !disposed_once || last_sweep.elapsed() >= sweep_every {
            disposed_once = true;
            match veil_runtime::grants::dispose_expired(&mut store) {
                Ok(done) => done.iter().for_each(|d| {
                    workers.notice(&format!(
                        "grant {} ended: its disposition `{}` ran over {} product(s)",
                        d.grant_id,
                        d.disposition,
                        d.products.len()
                    ))
                }),
                Err(error) => workers.notice(&format!("disposing of ended grants: {error}")),
            }
        }
        if last_sweep.elapsed() >= sweep_every {
            last_sweep = Instant::now();
            let grace = Duration::from_secs(sweep::TEMP_GRACE_SECONDS);
            match sweep::sweep(&mut store, grace) {
                Ok(swept) if !swept.removed.is_empty() => workers.notice(&format!(
                    "swept {} leftover file(s) or folder(s) the store does not know",
                    swept.removed.len()
                )),
                Ok(_) => {}
                Err(error) => workers.notice(&format!("sweeping the store: {error}")),
            }
        }
    }
}

/// One worker: runs the queued jobs one at a time until the workers are dropped.
async fn work(
    weak: Weak<Workers>,
    mut store: Store,
    receiver: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<JobId>>>,
) {
    // This worker's next job child, started ahead of time (see `jobs::Spare`): at
    // the start, and after each job once its end is recorded and its waiters are woken, so the
    // spawn and the child's start overlap the client's next request rather than delay this
    // job's answer. It is started here, on the worker's own thread, which lives as long as the
    // worker: the child's death signal is tied to the thread that started it.
    let mut spare = jobs::Spare::default();
    loop {
        jobs::fill_spare(&mut spare);
        let next = receiver.lock().await.recv().await;
        // The queue closes when the workers are dropped; a job still in it stays `queued` in
        // the store, and `jobs::recover` queues it again at the next start.
        let Some(job) = next else { return };
        let Some(workers) = weak.upgrade() else {
            return;
        };
        // The template id names the job in the log; a job that is no longer queued (cancelled
        // while it waited) does not start, and `run_queued` only reports its end.
        let (template, queued) = match jobs::get(&store, job.as_str()) {
            Ok(stored) => (stored.template_id, stored.state == JobState::Queued),
            Err(_) => (String::new(), true),
        };
        if !workers.take(&job, queued) {
            continue;
        }
        if workers.storage_full() {
            // Nothing runs while the disk is full: the job ends at once, having reserved no ε.
            workers.end_failed(&mut store, &job, jobs::STORAGE_FULL_REASON);
            workers.finish(&job, &template, EndState::Failed, None);
            continue;
        }
        if queued && let Some(log) = workers.log {
            log.job_started(job.as_str(), &template);
        }
        let started = Instant::now();
        let cancel = workers.token(&job);
        let state = match jobs::run_queued(&mut store, &job, Some(cancel), Some(&mut spare)).await {
            Ok(outcome) => end_state(&outcome),
            Err(error) => {
                // The job is recorded as ended by run_queued where it can be; this is what is
                // left: a platform problem for the server's log (in the domain), and a job
                // that must still end.
                workers.notice(&format!("job {job}: {error}"));
                let reason = if error.is_storage_full() {
                    jobs::STORAGE_FULL_REASON
                } else {
                    PLATFORM_FAILED_REASON
                };
                workers.end_failed(&mut store, &job, reason);
                EndState::Failed
            }
        };
        workers.finish(&job, &template, state, queued.then(|| started.elapsed()));
    }
}

/// How a job ended, without what it released or why it was refused.
fn end_state(outcome: &JobOutcome) -> EndState {
    match outcome {
        JobOutcome::Released { .. } => EndState::Released,
        JobOutcome::Rejected { .. } => EndState::Rejected,
        JobOutcome::Failed { .. } => EndState::Failed,
        JobOutcome::Cancelled { .. } => EndState::Cancelled,
    }
}
