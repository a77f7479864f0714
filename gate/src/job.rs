//! A job's execution, in a child process of its own.
//!
//! Everything a job does with in-domain rows — the sandboxed query, the WASM mapper, the
//! release gate's fold and noise — runs in a child process (`veil __job-exec`), started with
//! operating-system limits: its data segment (every heap allocation) is capped at the job's
//! memory limit plus [`CHILD_MEMORY_OVERHEAD_BYTES`], its CPU time at the job's wall limit
//! times its partitions, it may write no file beyond [`CHILD_FILE_BYTES_MAX`] and dump no core. So a crash, an allocation
//! failure or a runaway loop ends that job only: the parent (`veil serve` or `veil job run`)
//! sees the child end abnormally, records the job `failed` with its ε spent, and goes on.
//!
//! ```text
//! parent: checks, ε plan, budget reserved ─► spawn `veil __job-exec MEM CPU` (limits set first)
//!   stdin:  frame(request JSON) frame(module bytes)   — the approved template, its tables,
//!                                                       the parameters, the approval
//!   child:  plan + analyse again (the same code as the parent's checks), map (WASM), release
//!   stdout: frame(reply JSON) frame(Arrow IPC of the product rows)
//! parent: the product, the meter record, the audit entries (one transaction)
//! ```
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

/// Runs a job's execution in a child process of `exe` and returns what the gate released.
/// `reserved` is the proof that the run's ε and δ were reserved under the budget rule; it
/// must cover the terms the job runs under. Dropping the returned future (a cancelled job)
/// kills the child.
pub async fn run(
    reserved: Reserved,
    exe: &Path,
    request: &JobRequest,
    module: Option<&[u8]>,
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
    let memory = limits.memory_bytes as u64 + CHILD_MEMORY_OVERHEAD_BYTES;
    let cpu_seconds =
        (limits.wall_ms / 1000 + 1) * limits.partitions.max(1) as u64 + CHILD_CPU_OVERHEAD_SECONDS;
    let mut child = tokio::process::Command::new(exe)
        .arg(CHILD_COMMAND)
        .arg(memory.to_string())
        .arg(cpu_seconds.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // A panic or a library's diagnostic could quote an in-domain value: never kept.
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ChildFailure::platform(format!("starting the job's process failed ({e})")))?;

    let mut input = Vec::new();
    let json = serde_json::to_vec(request)
        .map_err(|e| ChildFailure::platform(format!("encoding the job's request ({e})")))?;
    frame(&mut input, &json);
    frame(&mut input, module.unwrap_or_default());
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| ChildFailure::platform("the job's process has no input"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| ChildFailure::platform("the job's process has no output"))?;
    let write = async move {
        // A child that dies early closes its input; the wait below says why.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
    };
    let read = async move {
        let mut output = Vec::new();
        stdout
            .take(FRAME_BYTES_MAX * 2)
            .read_to_end(&mut output)
            .await
            .map(|_| output)
    };
    let deadline = std::time::Duration::from_millis(limits.wall_ms + CHILD_GRACE_MS);
    let finished = tokio::time::timeout(deadline, async {
        let ((), output) = tokio::join!(write, read);
        let status = child.wait().await;
        (output, status)
    })
    .await;
    let (output, status) = match finished {
        Ok(done) => done,
        Err(_) => {
            let _ = child.kill().await;
            return Err(ChildFailure::platform(
                "the job's process passed its wall limit and was killed",
            ));
        }
    };
    let status = status
        .map_err(|e| ChildFailure::platform(format!("waiting for the job's process ({e})")))?;
    if !status.success() {
        return Err(ChildFailure::platform(describe_exit(&status)));
    }
    let output =
        output.map_err(|e| ChildFailure::platform(format!("reading the job's process ({e})")))?;
    parse_reply(&output)
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

fn parse_reply(output: &[u8]) -> Result<Executed, ChildFailure> {
    let bad = |what: &str| ChildFailure::platform(format!("the job's process answered {what}"));
    let mut rest = output;
    let header = unframe(&mut rest).ok_or_else(|| bad("no reply"))?;
    let reply: ChildReply =
        serde_json::from_slice(header).map_err(|_| bad("a reply that does not parse"))?;
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
            stats,
            wasm,
        } => {
            let ipc = unframe(&mut rest).ok_or_else(|| bad("no rows"))?;
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

fn unframe<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, tail) = rest.split_first_chunk::<8>()?;
    let len = u64::from_le_bytes(*len);
    if len > FRAME_BYTES_MAX || len > tail.len() as u64 {
        return None;
    }
    let (body, tail) = tail.split_at(len as usize);
    *rest = tail;
    Some(body)
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

/// Answers as a job's child process when the command line asks for it (`<exe> __job-exec
/// MEM CPU`): runs the job and exits. Returns when the process is not a child, so a binary's
/// `main` can call it first thing and go on.
pub fn serve_child_if_asked() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some(CHILD_COMMAND) {
        return;
    }
    let memory: Option<u64> = args.next().and_then(|a| a.parse().ok());
    let cpu: Option<u64> = args.next().and_then(|a| a.parse().ok());
    std::process::exit(child_main(memory, cpu));
}

/// The child's whole life: limits, request, execution, reply.
fn child_main(memory_bytes: Option<u64>, cpu_seconds: Option<u64>) -> i32 {
    // Nothing the child does may be printed: a panic message could quote a value.
    std::panic::set_hook(Box::new(|_| {}));
    if set_limits(memory_bytes, cpu_seconds).is_err() {
        return 3;
    }
    let mut input = Vec::new();
    if std::io::stdin()
        .take(FRAME_BYTES_MAX * 2)
        .read_to_end(&mut input)
        .is_err()
    {
        return 4;
    }
    let mut rest = input.as_slice();
    let (Some(json), Some(module)) = (unframe(&mut rest), unframe(&mut rest)) else {
        return 4;
    };
    let Ok(request) = serde_json::from_slice::<ChildRequest>(json) else {
        return 4;
    };
    let partitions = request.request.terms.limits().partitions.max(1);
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(partitions)
        .enable_all()
        .build()
    else {
        return 5;
    };
    let module = (!module.is_empty()).then_some(module);
    let (reply, rows) = runtime.block_on(execute(request, module));
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
    0
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
    fn frames_round_trip_and_refuse_a_short_or_huge_one() {
        let mut out = Vec::new();
        frame(&mut out, b"abc");
        frame(&mut out, b"");
        let mut rest = out.as_slice();
        assert_eq!(unframe(&mut rest), Some(b"abc".as_slice()));
        assert_eq!(unframe(&mut rest), Some(b"".as_slice()));
        assert_eq!(unframe(&mut rest), None);
        let mut short: &[u8] = &[5, 0, 0, 0, 0, 0, 0, 0, b'a'];
        assert_eq!(unframe(&mut short), None);
        let huge = (FRAME_BYTES_MAX + 1).to_le_bytes();
        let mut huge: &[u8] = &huge;
        assert_eq!(unframe(&mut huge), None);
    }
}
