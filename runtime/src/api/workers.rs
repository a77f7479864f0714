//! The bounded job queue and its worker pool.
//!
//! A submitted job is a `queued` row in the store (written by `jobs::enqueue`, with its
//! idempotency key) and a permit from a semaphore of [`QUEUE_JOBS_DEFAULT`] permits (or
//! `veil serve --queue N`), held until
//! the job ends: when every permit is taken the server answers 429 before writing anything.
//! [`WORKERS_DEFAULT`] workers take job ids in order; each owns its own store connection and
//! runs one job at a time with `jobs::run_queued`, so the job's own wall-time and memory limits
//! (pinned by the template's approval) bound it. A cancelled job's token stops it where it is.
//! Every job end bumps a generation counter that long-polling `wait` calls watch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::ids::JobId;
use crate::jobs;
use crate::store::Store;

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

/// The queue, shared by the route handlers.
pub struct Workers {
    sender: mpsc::UnboundedSender<JobId>,
    slots: Arc<Semaphore>,
    capacity: usize,
    /// The permit and cancellation token of every job queued or running here.
    jobs: Mutex<HashMap<JobId, Slot>>,
    /// Bumped each time a job ends.
    ended: watch::Sender<u64>,
}

struct Slot {
    _permit: OwnedSemaphorePermit,
    cancel: CancellationToken,
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
    /// `jobs::recover`).
    pub fn start(root: &Path, count: usize, capacity: usize) -> Result<Arc<Self>> {
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
        let (sender, receiver) = mpsc::unbounded_channel();
        let (ended, _) = watch::channel(0);
        let workers = Arc::new(Self {
            sender,
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            jobs: Mutex::new(HashMap::new()),
            ended,
        });
        let mut store = Store::open(root)?;
        let waiting = jobs::recover(&mut store)?;
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let handle = tokio::runtime::Handle::current();
        for index in 0..count {
            let store = Store::open(root)?;
            let (workers, receiver, handle) =
                (Arc::clone(&workers), Arc::clone(&receiver), handle.clone());
            // A job holds its store connection across awaits, and SQLite connections stay on
            // one thread; so each worker is a thread that drives its job on the server's
            // runtime, where DataFusion's own tasks run.
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

    /// How many jobs may be queued or running at once.
    pub fn capacity(&self) -> usize {
        self.capacity
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
        };
        self.jobs
            .lock()
            .map_err(|_| Error::internal("queueing a job"))?
            .insert(job.clone(), slot);
        self.sender.send(job).map_err(|_| {
            Error::Resources("the job workers have stopped; restart the server".into())
        })
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
}

async fn work(
    workers: Arc<Workers>,
    mut store: Store,
    receiver: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<JobId>>>,
) {
    loop {
        let next = receiver.lock().await.recv().await;
        let Some(job) = next else { return };
        let cancel = workers.token(&job);
        if let Err(error) = jobs::run_queued(&mut store, &job, Some(cancel)).await {
            // The job itself is recorded as failed by run_queued where it can be; what is
            // left is a platform problem for the server's log (in the domain).
            eprintln!("veil serve: job {job}: {error}");
        }
        workers.release(&job);
    }
}
