//! A job's execution, in a child process of its own.
//!
//! Everything a job does with in-domain rows — the sandboxed query, the WASM mapper, the
//! release gate's fold and noise — runs in a child process (`veil __job-exec`) under
//! operating-system limits: its data segment (every heap allocation) is capped at the job's
//! memory limit plus [`CHILD_MEMORY_OVERHEAD_BYTES`], its CPU time at the job's wall limit
//! times its partitions (see [`child_limits`]), it may write no file beyond
//! [`CHILD_FILE_BYTES_MAX`] and dump no core. So a crash, an allocation failure or a runaway
//! loop ends that job only: the parent (`veil serve` or `veil job run`) sees the child end
//! abnormally, records the job `failed` with its ε spent, and goes on.
//!
//! ```text
//! started ahead of time (a server's Spare): `veil __job-exec --warm-up`; or now: `veil __job-exec`
//!   child:  no core, no file, death with its parent; (a spare: a warm-up job); waits
//! parent: checks, ε plan, budget reserved ─► the started child
//!   stdin:  frame(request JSON)                       — the approved template, its tables,
//!                                                       the parameters, the approval
//!   child:  the job's memory and CPU limits, from the request, before anything else
//!   stdin:  frame(module bytes)
//!   child:  plan + analyse again (the same code as the parent's checks), map (WASM), release
//!   stdout: frame(reply JSON) frame(Arrow IPC of the product rows); then it exits
//! parent: the product, the meter record, the audit entries (one transaction)
//! ```
//!
//! **One fresh process per job.** A server keeps each worker's next child started ahead of
//! time ([`Spare`]), so a job does not wait for the spawn and the loader, and that child runs
//! a small job of its own on synthetic rows first (`warm_up`), so the real job's first
//! query does not pay for code and tables built on first use. Neither carries anything from
//! one job to another: a child holds nothing of any job before its request, serves that one
//! request, and exits.
//!
//! The child gets no signing key, no database and no writable file: it reads the domain's
//! data folder and answers with the gate's [`gate::Released`] — noisy rows only — or a failure
//! category. Its stderr is discarded (a panic message could quote a value), and its panic
//! hook prints nothing. Any way the child can end other than a well-formed reply is one
//! failure, whose category (never a data value) goes to the bureau's audit entry; the operator
//! sees [`gate::FAILED_MESSAGE`].
//!
//! Any binary that runs jobs must answer as the child: `veil`'s `main` calls
//! [`serve_child_if_asked`] first thing; so must an example or a benchmark that runs jobs.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use crate::sandbox::{
    ExecStats, ParamValue, Sandbox, SandboxBuilder, SandboxError, bind_named_parameters,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::LogicalPlan;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use veil_sdk::manifest::{ColumnDescription, NoiseScale};
use veil_sdk::template::TemplateSpec;

use crate::analysis::{self, Analysis};
use crate::bounding::Limits;
use crate::budget::Reserved;
use crate::mapping;
use crate::noise::Source;
use crate::policy::Dataset;
use crate::release::{self as gate, ReleaseConfig};
use crate::rules::{Refusal, Rule};
use crate::terms::Terms;
use veil_sdk::template::WasmSpec;

/// The hidden subcommand a binary answers as a job's child process.
pub const CHILD_COMMAND: &str = "__job-exec";

/// The argument after [`CHILD_COMMAND`] that asks a child started ahead of time to run its
/// warm-up job while it waits (see `warm_up`). A child started for a job at hand skips it:
/// its request is already waiting.
const WARM_UP_ARG: &str = "--warm-up";

/// Memory a child may allocate beyond its job's memory limit, in bytes: the runtime and its
/// threads' stacks, Parquet read buffers outside the query's pool, the WASM engine's pool.
pub const CHILD_MEMORY_OVERHEAD_BYTES: u64 = 1024 * 1024 * 1024;

/// CPU time a child may use beyond its job's wall limit × partitions, in seconds (starting
/// the process, planning).
pub const CHILD_CPU_OVERHEAD_SECONDS: u64 = 30;

/// Largest file the child may write, in bytes. It writes none itself; the WASM engine keeps a
/// module's initial memory image in an anonymous in-memory file (memfd), which counts as one.
/// A mapper module is at most 8 MiB, so its image fits well within this.
pub const CHILD_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// How long the parent waits beyond the job's wall limit before it kills the child, in
/// milliseconds. The child stops itself at the wall limit; this is the backstop.
pub const CHILD_GRACE_MS: u64 = 10_000;

/// Largest request or reply frame, in bytes (a product holds at most a million rows).
pub const FRAME_BYTES_MAX: u64 = 1 << 30;

/// What the parent sends: everything the job's checks used, so the child repeats them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRequest {
    /// The domain's data folder; the job's tables are files relative to it.
    pub data_dir: PathBuf,
    /// The approved template.
    pub spec: TemplateSpec,
    /// The approval's terms.
    pub terms: Terms,
    /// The parameters, bound to the template's declarations.
    pub bound: Vec<(String, ParamValue)>,
    /// The tables the grant lets the job read.
    pub tables: analysis::Tables,
    /// The registered row count of the job's tables (sizes the fold's first allocation).
    pub units_hint: usize,
    /// Test builds only: seeded noise (see `noise::Source`).
    pub noise_seed: Option<u64>,
    /// Veil's executors, when the server runs SQL jobs' folds on a cluster (`cluster`);
    /// `None`: here, in the job's process.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterTarget>,
}

/// The request as it crosses to the child, with the reservation the parent held.
#[derive(Debug, Serialize, Deserialize)]
struct ChildRequest {
    request: JobRequest,
    job_id: String,
    micro_epsilon: crate::terms::MicroEpsilon,
    pico_delta: crate::terms::PicoDelta,
}

/// What a WASM job's mapper really did: for the bureau's audit entry, never the operator.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmUsage {
    pub fuel_used: u64,
    pub units: u64,
    pub fallbacks: u64,
}

/// The sandbox's figures, as they cross the process boundary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stats {
    pub rows_scanned: u64,
    pub bytes_scanned: u64,
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
    pub wall_ms: u64,
}

impl From<ExecStats> for Stats {
    fn from(s: ExecStats) -> Self {
        Self {
            rows_scanned: s.rows_scanned,
            bytes_scanned: s.bytes_scanned,
            cpu_ms: s.cpu_ms,
            peak_memory_bytes: s.peak_memory_bytes,
            wall_ms: s.wall_ms,
        }
    }
}

/// What the child answers.
#[derive(Debug, Serialize, Deserialize)]
enum ChildReply {
    /// The gate released; the rows follow as Arrow IPC.
    Released {
        columns: Vec<ColumnDescription>,
        noise_scales: Vec<NoiseScale>,
        groups_released: u64,
        groups_suppressed: Option<u64>,
        threshold: f64,
        statement: Box<crate::release::Statement>,
        stats: Stats,
        wasm: Option<WasmUsage>,
    },
    /// The job failed after its ε was reserved. `category` never carries a data value.
    Failed {
        category: String,
        stats: Stats,
        wasm: Option<WasmUsage>,
    },
}

/// A released job's result, back in the parent.
#[derive(Debug)]
pub struct Executed {
    /// The gate's output: noisy rows only.
    pub released: gate::Released,
    /// What a WASM job's mapper did (for the bureau's audit entry).
    pub wasm: Option<WasmUsage>,
}

/// A job whose child did not release: the category for the bureau (never a data value), and
/// what it used. An operator only ever sees [`gate::FAILED_MESSAGE`].
#[derive(Debug)]
pub struct ChildFailure {
    pub category: String,
    pub stats: ExecStats,
    pub wasm: Option<WasmUsage>,
}

impl ChildFailure {
    fn platform(category: impl Into<String>) -> Self {
        Self {
            category: category.into(),
            stats: ExecStats::default(),
            wasm: None,
        }
    }
}

fn stats_of(s: Stats) -> ExecStats {
    ExecStats {
        rows_scanned: s.rows_scanned,
        bytes_scanned: s.bytes_scanned,
        cpu_ms: s.cpu_ms,
        peak_memory_bytes: s.peak_memory_bytes,
        wall_ms: s.wall_ms,
    }
}

/// A job's child process, started and waiting for its request.
///
/// Starting `<exe> __job-exec` costs milliseconds before the child can read a byte: the
/// spawn, the loader relocating a large binary, the Rust runtime's start. A [`Spare`] pays that
/// ahead of time, while its worker is idle or finishing the previous job. It is still one
/// fresh process per job: a started child holds nothing of any job until its request arrives,
/// it serves exactly that one request, and then it exits.
#[derive(Debug)]
pub struct Started {
    child: tokio::process::Child,
    exe: PathBuf,
}

impl Started {
    /// Starts `<exe> __job-exec`. The child sets its fixed limits (no core, no file beyond
    /// [`CHILD_FILE_BYTES_MAX`], death with its parent) and waits for its request; the job's
    /// own memory and CPU limits come with the request (see [`child_limits`]).
    ///
    /// With `warm_up`, the child runs its warm-up job while it waits (for a child started
    /// ahead of time). Call it on a thread that lives as long as the child may wait: the
    /// child's death signal is tied to the thread that started it (a worker's own thread, in
    /// `veil serve`).
    pub fn start(exe: &Path, warm_up: bool) -> Result<Self, ChildFailure> {
        let child = tokio::process::Command::new(exe)
            .arg(CHILD_COMMAND)
            .args(warm_up.then_some(WARM_UP_ARG))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // A panic or a library's diagnostic could quote an in-domain value: never kept.
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ChildFailure::platform(format!("starting the job's process failed ({e})"))
            })?;
        Ok(Self {
            child,
            exe: exe.to_path_buf(),
        })
    }

    /// True while the child runs `exe` and still waits for its request.
    fn is_waiting(&mut self, exe: &Path) -> bool {
        self.exe == exe && matches!(self.child.try_wait(), Ok(None))
    }
}

/// At most one child started ahead of time, for one worker's next job (see [`Started`]).
/// Dropping it kills a child still waiting.
#[derive(Debug, Default)]
pub struct Spare(Option<Started>);

impl Spare {
    /// Starts a child of `exe` unless one is waiting already. Best effort: a child that cannot
    /// be started now is started by the job that needs it, which then reports the failure.
    pub fn fill(&mut self, exe: &Path) {
        if let Some(started) = &mut self.0
            && started.is_waiting(exe)
        {
            return;
        }
        self.0 = Started::start(exe, true).ok();
    }

    /// The waiting child, if it runs `exe` and has not ended meanwhile.
    fn take(&mut self, exe: &Path) -> Option<Started> {
        self.0
            .take()
            .and_then(|mut started| started.is_waiting(exe).then_some(started))
    }
}

/// The operating system's limits for a job's child under `terms`: its data segment in bytes
/// (the job's memory limit plus [`CHILD_MEMORY_OVERHEAD_BYTES`]) and its CPU time in seconds
/// (the wall limit × partitions plus [`CHILD_CPU_OVERHEAD_SECONDS`]). The child computes them
/// from its request and sets them before it opens any table.
pub fn child_limits(terms: &Terms) -> (u64, u64) {
    let limits = terms.limits();
    let memory = limits.memory_bytes as u64 + CHILD_MEMORY_OVERHEAD_BYTES;
    let cpu_seconds =
        (limits.wall_ms / 1000 + 1) * limits.partitions.max(1) as u64 + CHILD_CPU_OVERHEAD_SECONDS;
    (memory, cpu_seconds)
}

/// Runs a job's execution in a child process of `exe` and returns what the gate released.
/// `reserved` is the proof that the run's ε and δ were reserved under the budget rule; it
/// must cover the terms the job runs under. Dropping the returned future (a cancelled job)
/// kills the child.
///
/// With a `spare`, the job takes the child waiting there, if one is; otherwise it starts its
/// own. Refilling the spare is the caller's: it blocks the calling thread for the spawn, which
/// is best done once the job's end has been recorded and answered.
pub async fn run(
    reserved: Reserved,
    exe: &Path,
    request: &JobRequest,
    module: Option<&[u8]>,
    spare: Option<&mut Spare>,
) -> Result<Executed, ChildFailure> {
    if reserved.micro_epsilon() < request.terms.micro_epsilon
        || reserved.pico_delta() < request.terms.pico_delta
    {
        return Err(ChildFailure::platform(
            "the reservation does not cover the job's terms",
        ));
    }
    let request = ChildRequest {
        request: request.clone(),
        job_id: reserved.job_id().to_string(),
        micro_epsilon: reserved.micro_epsilon(),
        pico_delta: reserved.pico_delta(),
    };
    let request = &request;
    let limits = request.request.terms.limits();
    let Started { mut child, .. } = match spare.and_then(|spare| spare.take(exe)) {
        Some(started) => started,
        None => Started::start(exe, false)?,
    };
    let mut input = Vec::new();
    let json = serde_json::to_vec(request)
        .map_err(|e| ChildFailure::platform(format!("encoding the job's request ({e})")))?;
    frame(&mut input, &json);
    frame(&mut input, module.unwrap_or_default());
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| ChildFailure::platform("the job's process has no input"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| ChildFailure::platform("the job's process has no output"))?;
    let write = async move {
        // A child that dies early closes its input; the wait below says why.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
    };
    let read = async move { read_reply(&mut stdout).await };
    let deadline = std::time::Duration::from_millis(limits.wall_ms + CHILD_GRACE_MS);
    let finished = tokio::time::timeout(deadline, async {
        let ((), reply) = tokio::join!(write, read);
        match reply {
            Ok(reply) => Ok(reply),
            // No complete reply: the child's end says why.
            Err(what) => Err((what, child.wait().await)),
        }
    })
    .await;
    match finished {
        Err(_) => {
            let _ = child.kill().await;
            Err(ChildFailure::platform(
                "the job's process passed its wall limit and was killed",
            ))
        }
        Ok(Ok((reply, rows))) => {
            // The reply is complete and the child's last act was to send it: it now only
            // exits (see `child_main`). Its exit — tearing down a process that ran a query
            // takes a millisecond or two — is reaped in the background rather than waited
            // for; how it ends can no longer change what it answered.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            parse_reply(reply, rows.as_deref())
        }
        Ok(Err((what, status))) => {
            let status = status.map_err(|e| {
                ChildFailure::platform(format!("waiting for the job's process ({e})"))
            })?;
            if !status.success() {
                return Err(ChildFailure::platform(describe_exit(&status)));
            }
            Err(ChildFailure::platform(format!(
                "the job's process answered {what}"
            )))
        }
    }
}

/// Reads the child's reply as it arrives: the header and, for a release, the rows' frame.
async fn read_reply(
    stdout: &mut tokio::process::ChildStdout,
) -> Result<(ChildReply, Option<Vec<u8>>), &'static str> {
    let header = read_frame_async(stdout).await.ok_or("no reply")?;
    let reply: ChildReply =
        serde_json::from_slice(&header).map_err(|_| "a reply that does not parse")?;
    let rows = match reply {
        ChildReply::Released { .. } => Some(read_frame_async(stdout).await.ok_or("no rows")?),
        ChildReply::Failed { .. } => None,
    };
    Ok((reply, rows))
}

/// [`read_frame`], from the child's output.
async fn read_frame_async(input: &mut tokio::process::ChildStdout) -> Option<Vec<u8>> {
    let mut len = [0u8; 8];
    input.read_exact(&mut len).await.ok()?;
    let len = u64::from_le_bytes(len);
    if len > FRAME_BYTES_MAX {
        return None;
    }
    let mut body = Vec::new();
    input.take(len).read_to_end(&mut body).await.ok()?;
    (body.len() as u64 == len).then_some(body)
}

/// Says how a child ended, in words for the bureau.
fn describe_exit(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(signal)) => format!(
            "the job's process was ended by signal {signal} (a crash, an allocation failure or a limit of the operating system)"
        ),
        (Some(code), None) => format!("the job's process exited with code {code}"),
        (None, None) => "the job's process ended abnormally".into(),
    }
}

fn parse_reply(reply: ChildReply, rows: Option<&[u8]>) -> Result<Executed, ChildFailure> {
    let bad = |what: &str| ChildFailure::platform(format!("the job's process answered {what}"));
    match reply {
        ChildReply::Failed {
            category,
            stats,
            wasm,
        } => Err(ChildFailure {
            category,
            stats: stats_of(stats),
            wasm,
        }),
        ChildReply::Released {
            columns,
            noise_scales,
            groups_released,
            groups_suppressed,
            threshold,
            statement,
            stats,
            wasm,
        } => {
            let ipc = rows.ok_or_else(|| bad("no rows"))?;
            let mut reader =
                StreamReader::try_new(ipc, None).map_err(|_| bad("rows that do not decode"))?;
            let batch = match reader.next() {
                Some(Ok(batch)) => batch,
                _ => return Err(bad("rows that do not decode")),
            };
            Ok(Executed {
                released: gate::Released {
                    batch,
                    columns,
                    noise_scales,
                    groups_released,
                    groups_suppressed,
                    threshold,
                    statement: *statement,
                    stats: stats_of(stats),
                },
                wasm,
            })
        }
    }
}

fn frame(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The program jobs' children run as, when not this process's own executable.
static EXECUTABLE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Runs every job's execution as `exe` (`<exe> __job-exec …`) instead of this process's own
/// executable — for a process whose own executable does not call [`serve_child_if_asked`],
/// such as a test harness, which points it at `veil`. The first call wins.
pub fn use_executable(exe: impl Into<PathBuf>) {
    let _ = EXECUTABLE.set(exe.into());
}

/// The program a job's child process runs.
pub fn executable() -> std::io::Result<PathBuf> {
    match EXECUTABLE.get() {
        Some(exe) => Ok(exe.clone()),
        None => std::env::current_exe(),
    }
}

/// The name a job's child takes (in `/proc/<pid>/comm`) once its request has arrived, so a
/// listing of processes tells a child running a job from one still waiting for it.
pub const CHILD_RUNNING_NAME: &str = "veil-job";

/// Answers as a job's child process when the command line asks for it (`<exe> __job-exec`):
/// waits for its request, runs the job and exits. Returns when the process is not a child, so
/// a binary's `main` can call it first thing and go on.
pub fn serve_child_if_asked() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some(CHILD_COMMAND) {
        return;
    }
    let warm = args.next().as_deref() == Some(WARM_UP_ARG);
    std::process::exit(child_main(warm));
}

/// Reads one frame (see [`frame`]) of at most [`FRAME_BYTES_MAX`] bytes from `input`.
fn read_frame(input: &mut impl Read) -> Option<Vec<u8>> {
    let mut len = [0u8; 8];
    input.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > FRAME_BYTES_MAX {
        return None;
    }
    // Read through `take` rather than into a buffer of the announced size, so a length that
    // lies costs no allocation.
    let mut body = Vec::new();
    input.take(len).read_to_end(&mut body).ok()?;
    (body.len() as u64 == len).then_some(body)
}

/// Nanoseconds in a millisecond.
const NS_PER_MS: u64 = 1_000_000;

/// CPU time this process has used so far, all threads, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    (now.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec.max(0) as u64)
}

/// The child's whole life: fixed limits, request, the job's limits, execution, reply.
fn child_main(warm: bool) -> i32 {
    // Nothing the child does may be printed: a panic message could quote a value.
    std::panic::set_hook(Box::new(|_| {}));
    // The limits that do not depend on the job first, while the child may still wait for its
    // request (see `Started`).
    if set_limits(None, None).is_err() {
        return 3;
    }
    if warm {
        warm_up();
    }
    let mut stdin = std::io::stdin().lock();
    let Some(json) = read_frame(&mut stdin) else {
        return 4;
    };
    let Ok(request) = serde_json::from_slice::<ChildRequest>(&json) else {
        return 4;
    };
    // The meter's CPU time is the whole process's from here to the reply (every thread:
    // Parquet decoding, the fold, the mapper, OpenDP), not the warm-up's before it.
    let cpu_started = process_cpu_ns();
    // The job's own limits, before the rest of the input is read and before any table is
    // opened: everything the job allocates counts against them.
    let (memory_bytes, cpu_seconds) = child_limits(&request.request.terms);
    if set_limits(Some(memory_bytes), Some(cpu_seconds)).is_err() {
        return 3;
    }
    // Best effort, for whoever lists processes: this child now runs a job.
    let _ = std::fs::write("/proc/self/comm", CHILD_RUNNING_NAME);
    let Some(module) = read_frame(&mut stdin) else {
        return 4;
    };
    drop(stdin);
    let partitions = request.request.terms.limits().partitions.max(1);
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(partitions)
        .enable_all()
        .build()
    else {
        return 5;
    };
    let module = (!module.is_empty()).then_some(module.as_slice());
    let (mut reply, rows) = runtime.block_on(execute(request, module));
    let cpu_ms = process_cpu_ns().saturating_sub(cpu_started) / NS_PER_MS;
    match &mut reply {
        ChildReply::Released { stats, .. } | ChildReply::Failed { stats, .. } => {
            stats.cpu_ms = cpu_ms;
        }
    }
    let mut output = Vec::new();
    let Ok(json) = serde_json::to_vec(&reply) else {
        return 6;
    };
    frame(&mut output, &json);
    if let Some(rows) = rows {
        let mut ipc = Vec::new();
        let written = StreamWriter::try_new(&mut ipc, rows.schema_ref()).and_then(|mut writer| {
            writer.write(&rows)?;
            writer.finish()
        });
        if written.is_err() {
            return 6;
        }
        frame(&mut output, &ipc);
    }
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(&output)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return 7;
    }
    drop(stdout);
    // The reply is out. Exiting here, rather than returning, skips tearing down the runtime,
    // joining its threads and freeing the job's memory one allocation at a time: the
    // operating system reclaims all of it at once, and the parent, which waits for this
    // exit, goes on sooner.
    std::process::exit(0)
}

/// The warm-up job's table: a few synthetic rows, made up here, of no one.
const WARM_UP_TABLE: &str = "warm_up";
/// Rows of the warm-up table.
const WARM_UP_ROWS: i64 = 64;
/// The warm-up job's policy: a unit, a group key with its key set, a bounded measure.
const WARM_UP_POLICY: &str = r#"
provider = "Veil"
classification_level = 1
sharing = "conditional"
acquired_on = "2026-01-01"
privacy_unit = "unit"
unit_kind = "warm-up"
[columns.unit]
role = "identifier"
[columns.g]
role = "quasi"
keys = ["a", "b"]
[columns.v]
role = "sensitive"
bounds = [0, 100]
"#;
/// The warm-up job's statement: the shapes small jobs have (a filter, groups, a distinct
/// count, a sum).
const WARM_UP_SQL: &str = "SELECT g, COUNT(DISTINCT unit) AS units, SUM(v) AS total \
    FROM warm_up WHERE v >= $floor GROUP BY g";

/// Runs, in a child still waiting for its request, one job of its own through the same
/// planner, analysis, bounded query and noise as a real job, over [`WARM_UP_ROWS`] synthetic
/// rows in memory, and discards what it released.
///
/// A fresh process runs everything for the first time: code is paged in, lazily built
/// tables (DataFusion's functions, OpenDP's) are built, the allocator grows. Doing that here,
/// while the previous job is being recorded, halves the first real query's time. It reads no
/// file and no domain data, spends no ε (its reservation is its own, for rows that are no
/// one's), and nothing it computes leaves the process: the child answers only its request.
fn warm_up() {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    // Best effort: a warm-up that fails only leaves the job to start cold.
    let _ = runtime.block_on(warm_up_job());
}

async fn warm_up_job() -> Result<(), String> {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    let schema = Arc::new(Schema::new(vec![
        Field::new("unit", DataType::Int64, false),
        Field::new("g", DataType::Utf8, false),
        Field::new("v", DataType::Int64, false),
    ]));
    let units: Vec<i64> = (0..WARM_UP_ROWS).collect();
    let groups: Vec<&str> = units
        .iter()
        .map(|u| if u % 2 == 0 { "a" } else { "b" })
        .collect();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(units.clone())),
            Arc::new(StringArray::from(groups)),
            Arc::new(Int64Array::from(units)),
        ],
    )
    .map_err(|e| format!("the table: {e}"))?;
    let terms = Terms {
        micro_epsilon: crate::terms::MicroEpsilon::from_epsilon(1.0)
            .map_err(|e| format!("ε: {e:?}"))?,
        pico_delta: crate::terms::PicoDelta::from_delta(1e-6).map_err(|e| format!("δ: {e:?}"))?,
        k: 5,
        max_groups: 1,
        max_rows: 1,
        memory_mib: 64,
        wall_seconds: 10,
        wasm_fuel_per_unit: 0,
        wasm_memory_mib: 0,
        mechanism: crate::terms::Mechanism::Laplace,
    };
    let dataset = Dataset {
        id: crate::ids::DatasetId::new("ds-warm-up"),
        name: WARM_UP_TABLE.into(),
        policy: crate::policy::Policy::parse(WARM_UP_POLICY)
            .map_err(|e| format!("the policy: {e:?}"))?,
        file: String::new(),
        rows: WARM_UP_ROWS as u64,
        bytes: 0,
        content_blake3: String::new(),
        registered_at: String::new(),
    };
    let tables: analysis::Tables = HashMap::from([(WARM_UP_TABLE.to_string(), dataset)]);
    // The sandbox needs a folder for its (unused) table store; it reads no file from it.
    let sandbox = SandboxBuilder::new(std::env::temp_dir())
        .limits(terms.limits())
        .memory_table(WARM_UP_TABLE, schema, vec![batch])
        .build()
        .await
        .map_err(|e| format!("the sandbox: {e}"))?;
    let bound = [("floor".to_string(), ParamValue::Integer(0))];
    let plan = sandbox
        .plan_query(WARM_UP_SQL, &bound)
        .await
        .map_err(|e| format!("the plan: {e}"))?;
    let analysis = analysis::analyse(&plan, &tables).map_err(|r| format!("the analysis: {r:?}"))?;
    let config = release_config(&terms, WARM_UP_ROWS as usize, None);
    let noise = gate::plan_noise(&analysis, &config).map_err(|r| format!("the ε plan: {r:?}"))?;
    let reserved = Reserved::in_child("warm-up".into(), terms.micro_epsilon, terms.pico_delta);
    gate::release(reserved, &sandbox, &analysis, config, &noise)
        .await
        .map(|_| ())
        .map_err(|(e, _)| format!("the release: {e}"))
}

/// The operating system's limits on this process: data segment, CPU time, file size (see
/// [`CHILD_FILE_BYTES_MAX`]), no core dump (a core would hold in-domain rows), and death with
/// its parent: a child outlives no server, even one killed with SIGKILL (a parent that died
/// before the signal was set leaves an orphan, which gives up at once).
pub fn set_limits(memory_bytes: Option<u64>, cpu_seconds: Option<u64>) -> rustix::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let limit = |n: u64| Rlimit {
        current: Some(n),
        maximum: Some(n),
    };
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::getppid().is_none_or(|parent| parent.as_raw_pid() == 1) {
        return Err(rustix::io::Errno::SRCH);
    }
    setrlimit(Resource::Core, limit(0))?;
    setrlimit(Resource::Fsize, limit(CHILD_FILE_BYTES_MAX))?;
    if let Some(bytes) = memory_bytes {
        setrlimit(Resource::Data, limit(bytes))?;
    }
    if let Some(seconds) = cpu_seconds {
        setrlimit(Resource::Cpu, limit(seconds))?;
    }
    Ok(())
}

/// The job's execution, in the child: the same preparation as the parent's checks, then the
/// mapper (WASM jobs) and the release gate.
async fn execute(
    request: ChildRequest,
    module: Option<&[u8]>,
) -> (ChildReply, Option<RecordBatch>) {
    // The parent held this job's reservation (see `run`).
    let reserved = Reserved::in_child(request.job_id, request.micro_epsilon, request.pico_delta);
    let request = request.request;
    let failed = |category: String, stats: ExecStats, wasm: Option<WasmUsage>| {
        (
            ChildReply::Failed {
                category,
                stats: stats.into(),
                wasm,
            },
            None,
        )
    };
    let bound = request.bound.clone();
    let approval = &request.terms;
    let data_dir = request.data_dir.as_path();
    let mut wasm = None;
    let mut input_stats = ExecStats::default();
    let prepared = match &request.spec.wasm {
        None => {
            prepare_sql(
                data_dir,
                &request.spec,
                Some(approval),
                &bound,
                &request.tables,
            )
            .await
        }
        Some(spec) => {
            let Some(module) = module else {
                return failed(
                    "the mapper module is missing".into(),
                    ExecStats::default(),
                    None,
                );
            };
            match map(data_dir, &request, spec, module, &bound).await {
                Ok((ready, usage, stats)) => {
                    wasm = Some(usage);
                    input_stats = stats;
                    ready
                }
                Err(failure) => {
                    return failed(failure.category, failure.stats, failure.wasm);
                }
            }
        }
    };
    let (sandbox, analysis) = match prepared {
        // A SQL job's fold may run on the cluster; a WASM job's rows are mapped here, in
        // memory, and folded here too.
        Ok(Ok((sandbox, analysis))) if request.spec.wasm.is_none() && request.cluster.is_some() => {
            match on_cluster(sandbox, request.cluster.clone()) {
                Ok(sandbox) => (sandbox, analysis),
                Err(e) => return failed(e.to_string(), input_stats, wasm),
            }
        }
        Ok(Ok(ready)) => ready,
        Ok(Err(refusal)) => {
            return failed(
                format!(
                    "the checks refused the job again ({})",
                    refusal.codes().join(", ")
                ),
                input_stats,
                wasm,
            );
        }
        Err(failure) => return failed(failure, input_stats, wasm),
    };
    let config = release_config(approval, request.units_hint, request.noise_seed);
    let plan = match gate::plan_noise(&analysis, &config) {
        Ok(plan) => plan,
        Err(refusal) => {
            return failed(
                format!(
                    "the ε plan was refused again ({})",
                    refusal.codes().join(", ")
                ),
                input_stats,
                wasm,
            );
        }
    };
    match gate::release(reserved, &sandbox, &analysis, config, &plan).await {
        Ok(released) => {
            let stats = combine(input_stats, released.stats, wasm.is_some());
            (
                ChildReply::Released {
                    columns: released.columns,
                    noise_scales: released.noise_scales,
                    groups_released: released.groups_released,
                    groups_suppressed: released.groups_suppressed,
                    threshold: released.threshold,
                    statement: Box::new(released.statement),
                    stats: stats.into(),
                    wasm,
                },
                Some(released.batch),
            )
        }
        Err((error, stats)) => failed(
            error.to_string(),
            combine(input_stats, stats, wasm.is_some()),
            wasm,
        ),
    }
}

/// `sandbox`, set to fold on `target`'s executors (see `cluster`).
fn on_cluster(
    sandbox: Sandbox,
    target: Option<crate::cluster::ClusterTarget>,
) -> Result<Sandbox, SandboxError> {
    crate::cluster::check_built()?;
    #[cfg(feature = "cluster")]
    if let Some(target) = target {
        return Ok(sandbox.on_cluster(target));
    }
    let _ = target;
    Ok(sandbox)
}

/// The gate's configuration for a run under `approval`'s terms.
pub fn release_config(
    approval: &Terms,
    units_hint: usize,
    noise_seed: Option<u64>,
) -> ReleaseConfig {
    ReleaseConfig {
        epsilon: approval.epsilon(),
        delta: approval.delta(),
        k: approval.k,
        limits: Limits {
            max_groups: approval.max_groups,
            max_rows: approval.max_rows,
        },
        units_hint,
        noise: noise_source(noise_seed),
        mechanism: approval.mechanism,
    }
}

fn noise_source(seed: Option<u64>) -> Source {
    match seed {
        #[cfg(feature = "test-noise")]
        Some(seed) => Source::Seeded(seed),
        _ => Source::OpenDp,
    }
}

/// The seed a store's noise source carries (test builds only), to hand to the child.
pub fn seed_of(source: Source) -> Option<u64> {
    match source {
        Source::OpenDp => None,
        #[cfg(feature = "test-noise")]
        Source::Seeded(seed) => Some(seed),
    }
}

/// The meter's figures for a job: a WASM job's rows and bytes scanned are its input query's
/// (the release query reads `mapped`, whose size depends on the data); CPU adds up.
fn combine(input: ExecStats, release: ExecStats, wasm: bool) -> ExecStats {
    if !wasm {
        return release;
    }
    ExecStats {
        rows_scanned: input.rows_scanned,
        bytes_scanned: input.bytes_scanned,
        cpu_ms: input.cpu_ms + release.cpu_ms,
        peak_memory_bytes: input.peak_memory_bytes.max(release.peak_memory_bytes),
        wall_ms: input.wall_ms + release.wall_ms,
    }
}

/// A sandbox over the grant's tables.
async fn grant_sandbox(
    data_dir: &Path,
    approval: Option<&Terms>,
    tables: &analysis::Tables,
) -> Result<Sandbox, String> {
    let mut builder = SandboxBuilder::new(data_dir);
    if let Some(approval) = approval {
        builder = builder.limits(approval.limits());
    }
    for dataset in tables.values() {
        builder = builder.table(dataset.name.clone(), PathBuf::from(&dataset.file));
    }
    builder.build().await.map_err(|e| e.to_string())
}

/// A SQL job's statement policy and the shape of its plan (the job's checks, `check_static`
/// and the child all call this one function).
pub async fn prepare_sql(
    data_dir: &Path,
    spec: &TemplateSpec,
    approval: Option<&Terms>,
    bound: &[(String, ParamValue)],
    tables: &analysis::Tables,
) -> Result<Result<(Sandbox, Analysis), Refusal>, String> {
    let sandbox = grant_sandbox(data_dir, approval, tables).await?;
    let (sql, _) = bind_named_parameters(&spec.sql);
    let plan = match sandbox.plan_query(&sql, bound).await {
        Ok(plan) => plan,
        Err(e) => return Ok(Err(refusal_of_sandbox(&e))),
    };
    Ok(analysis::analyse(&plan, tables).map(|analysis| (sandbox, analysis)))
}

/// A WASM job's input and output, checked.
pub struct CheckedWasm {
    sandbox: Sandbox,
    input_plan: LogicalPlan,
    input: mapping::InputAnalysis,
    schema: SchemaRef,
    release_sql: String,
    /// The per-unit limits (see [`mapping::unit_limits`]); the approval's when none was given.
    limits: crate::sandbox::wasm::WasmLimits,
}

impl CheckedWasm {
    /// The mapper's input analysis (which tables, which unit column).
    pub fn input(&self) -> &mapping::InputAnalysis {
        &self.input
    }

    /// The mapped table's schema, as the template declares it.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The per-unit limits the mapper would run under.
    pub fn limits(&self) -> crate::sandbox::wasm::WasmLimits {
        self.limits
    }
}

/// Checks everything about a WASM job that needs no data row: the input plan, the declared
/// output and the release SQL over an empty `mapped` (the same gate as a SQL job). Returns
/// the release plan's analysis too, which fixes the job's ε plan.
pub async fn check_wasm(
    data_dir: &Path,
    spec: &TemplateSpec,
    wasm: &WasmSpec,
    approval: Option<&Terms>,
    bound: &[(String, ParamValue)],
    tables: &analysis::Tables,
) -> Result<Result<(CheckedWasm, Analysis), Refusal>, String> {
    let sandbox = grant_sandbox(data_dir, approval, tables).await?;
    let (input_sql, _) = bind_named_parameters(&wasm.input_sql);
    let input_plan = match sandbox.plan_query(&input_sql, bound).await {
        Ok(plan) => plan,
        Err(e) => return Ok(Err(refusal_of_sandbox(&e))),
    };
    let (input, input_plan) = match mapping::analyse_input(&input_plan, tables) {
        Ok(input) => input,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let schema = match mapping::mapped_schema(&input, wasm) {
        Ok(schema) => schema,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let sources: Vec<Dataset> = input
        .tables
        .iter()
        .filter_map(|name| tables.get(name).cloned())
        .collect();
    let limits = match approval {
        Some(approval) => {
            let rows_bound = sources.iter().fold(0u64, |n, d| n.saturating_add(d.rows));
            match mapping::unit_limits(approval, rows_bound) {
                Ok(limits) => limits,
                Err(refusal) => return Ok(Err(refusal)),
            }
        }
        None => crate::sandbox::wasm::WasmLimits::default(),
    };
    let (release_sql, _) = bind_named_parameters(&spec.sql);
    let analysis = match plan_release(
        data_dir,
        approval,
        &input,
        wasm,
        &sources,
        &release_sql,
        bound,
        schema.clone(),
        Vec::new(),
    )
    .await?
    {
        Ok((_, analysis)) => analysis,
        Err(refusal) => return Ok(Err(refusal)),
    };
    Ok(Ok((
        CheckedWasm {
            sandbox,
            input_plan,
            input,
            schema,
            release_sql,
            limits,
        },
        analysis,
    )))
}

/// Plans and analyses the release SQL over `mapped` holding `batches`.
#[allow(clippy::too_many_arguments)]
async fn plan_release(
    data_dir: &Path,
    approval: Option<&Terms>,
    input: &mapping::InputAnalysis,
    wasm: &WasmSpec,
    sources: &[Dataset],
    release_sql: &str,
    bound: &[(String, ParamValue)],
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Result<(Sandbox, Analysis), Refusal>, String> {
    let mut builder =
        SandboxBuilder::new(data_dir).memory_table(mapping::MAPPED_TABLE, schema, batches);
    if let Some(approval) = approval {
        builder = builder.limits(approval.limits());
    }
    let sandbox = builder.build().await.map_err(|e| e.to_string())?;
    // The release SQL may use only the parameters it names; the others are ignored by it.
    let plan = match sandbox.plan_query(release_sql, bound).await {
        Ok(plan) => plan,
        Err(e) => return Ok(Err(refusal_of_sandbox(&e))),
    };
    let mut mapped_tables: analysis::Tables = HashMap::new();
    mapped_tables.insert(
        mapping::MAPPED_TABLE.to_string(),
        mapping::mapped_dataset(input, wasm, sources),
    );
    Ok(analysis::analyse(&plan, &mapped_tables).map(|analysis| (sandbox, analysis)))
}

/// A WASM job in the child: the mapper over every unit, then the release plan over its output.
async fn map(
    data_dir: &Path,
    request: &JobRequest,
    spec: &WasmSpec,
    module: &[u8],
    bound: &[(String, ParamValue)],
) -> Result<
    (
        Result<Result<(Sandbox, Analysis), Refusal>, String>,
        WasmUsage,
        ExecStats,
    ),
    ChildFailure,
> {
    let approval = &request.terms;
    let checked = match check_wasm(
        data_dir,
        &request.spec,
        spec,
        Some(approval),
        bound,
        &request.tables,
    )
    .await
    {
        Ok(Ok((checked, _))) => checked,
        Ok(Err(refusal)) => {
            return Err(ChildFailure::platform(format!(
                "the checks refused the job again ({})",
                refusal.codes().join(", ")
            )));
        }
        Err(failure) => return Err(ChildFailure::platform(failure)),
    };
    let limits = checked.limits;
    let mapper = crate::sandbox::wasm::WasmEngine::global()
        .and_then(|engine| engine.compile(module, &limits))
        .map_err(|e| ChildFailure::platform(format!("compiling the mapper failed ({e})")))?;
    let CheckedWasm {
        sandbox,
        input_plan,
        input,
        schema,
        release_sql,
        ..
    } = checked;
    let mapped = mapping::map_units(
        &sandbox,
        &input,
        input_plan,
        Arc::clone(&mapper),
        spec,
        limits,
        schema.clone(),
    )
    .await;
    let mapped = match mapped {
        Ok(mapped) => mapped,
        Err((error, stats)) => {
            let category = match error {
                mapping::MapError::Sandbox(e) => format!("the mapper's input query stopped: {e}"),
                mapping::MapError::TimedOut { limit_ms } => {
                    format!("the mapping stage passed the job's wall limit of {limit_ms} ms")
                }
                mapping::MapError::Internal(what) => {
                    format!("the mapping stage failed while {what}")
                }
            };
            return Err(ChildFailure {
                category,
                stats,
                wasm: None,
            });
        }
    };
    let usage = WasmUsage {
        fuel_used: mapped.fuel_used,
        units: mapped.units,
        fallbacks: mapped.fallbacks,
    };
    let sources: Vec<Dataset> = input
        .tables
        .iter()
        .filter_map(|name| request.tables.get(name).cloned())
        .collect();
    let ready = plan_release(
        data_dir,
        Some(approval),
        &input,
        spec,
        &sources,
        &release_sql,
        bound,
        schema,
        vec![mapped.batch],
    )
    .await;
    Ok((ready, usage, mapped.stats))
}

/// The rule a sandbox error breaks, for refusals before any row is read.
pub fn refusal_of_sandbox(error: &SandboxError) -> Refusal {
    let rule = match error {
        SandboxError::Parse(_) | SandboxError::TooLong { .. } => Rule::StatementParse,
        SandboxError::MultipleStatements { .. } => Rule::StatementSingle,
        SandboxError::Forbidden(_) => Rule::StatementReadOnly,
        SandboxError::UnknownTable { .. } | SandboxError::UnknownColumn { .. } => {
            Rule::StatementScope
        }
        SandboxError::Planning(_) => Rule::StatementConstruct,
        SandboxError::UnboundParameter => Rule::StatementParameters,
        SandboxError::QueryFailed(_) => Rule::StatementConstruct,
        SandboxError::ResourcesExhausted | SandboxError::TimedOut { .. } => Rule::ResourcesLimit,
        SandboxError::TableUnreadable { .. }
        | SandboxError::Config(_)
        | SandboxError::Internal(_) => {
            return Refusal::default();
        }
    };
    Refusal::one(rule, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_frame_reads_what_frame_wrote_and_refuses_a_short_or_huge_one() {
        let mut out = Vec::new();
        frame(&mut out, b"request");
        frame(&mut out, b"");
        let mut input = out.as_slice();
        assert_eq!(
            read_frame(&mut input).as_deref(),
            Some(b"request".as_slice())
        );
        assert_eq!(read_frame(&mut input).as_deref(), Some(b"".as_slice()));
        assert_eq!(read_frame(&mut input), None);
        let mut short: &[u8] = &[5, 0, 0, 0, 0, 0, 0, 0, b'a'];
        assert_eq!(read_frame(&mut short), None);
        let huge = (FRAME_BYTES_MAX + 1).to_le_bytes();
        let mut huge: &[u8] = &huge;
        assert_eq!(read_frame(&mut huge), None);
    }

    /// The warm-up is the real pipeline over synthetic rows: if a change to the planner, the
    /// analysis or the gate refused it, every child would start cold again, unnoticed.
    #[tokio::test]
    async fn the_warm_up_job_is_released() {
        assert_eq!(warm_up_job().await, Ok(()));
    }

    #[test]
    fn child_limits_cover_the_jobs_memory_and_cpu() {
        let terms = Terms {
            micro_epsilon: crate::terms::MicroEpsilon(1),
            pico_delta: crate::terms::PicoDelta(0),
            k: 5,
            max_groups: 1,
            max_rows: 1,
            memory_mib: 512,
            wall_seconds: 60,
            wasm_fuel_per_unit: 0,
            wasm_memory_mib: 0,
            mechanism: crate::terms::Mechanism::Laplace,
        };
        let (memory, cpu) = child_limits(&terms);
        assert_eq!(memory, 512 * 1024 * 1024 + CHILD_MEMORY_OVERHEAD_BYTES);
        let partitions = terms.limits().partitions.max(1) as u64;
        assert_eq!(cpu, 61 * partitions + CHILD_CPU_OVERHEAD_SECONDS);
    }
}
