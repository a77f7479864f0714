//! The engine side of `cluster`: the fold as a DataFusion operator, its codec, the
//! coordinator's run and the executor's service (see the parent module's docs).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, LargeBinaryArray, RecordBatch, UInt8Array};
use datafusion::arrow::array::{UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt8Type};
use datafusion::arrow::datatypes::{UInt32Type, UInt64Type};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer, MemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SendableRecordBatchStream, SessionState, SessionStateBuilder};
use datafusion::execution::{TaskContext, registry::FunctionRegistry};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion_distributed::{
    DistributedExt, NetworkCoalesceExec, SessionStateBuilderExt, Worker, WorkerQueryContext,
    WorkerResolver, WorkerSessionBuilder,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::StreamExt;
use tonic::codegen::http::{HeaderMap, HeaderValue};
use url::Url;

use super::{ClusterTarget, ExecutorConfig, TOKEN_HEADER};
use crate::bounding::{Fold, FoldSpec};
use crate::sandbox::{DomainStoreRegistry, ExecStats, Sandbox, SandboxError};

/// The most bytes of fold state one batch carries back from an executor.
const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Record kinds in `FoldExec`'s output: a chunk of a fold's state; a task's figures; a fold's
/// end, whose chunk number is how many chunks the fold sent.
const KIND_STATE: u8 = 0;
const KIND_STATS: u8 = 1;
const KIND_END: u8 = 2;

/// Runs the gate's stage plan on the cluster: the executors fold their partitions, the folds
/// come back here. Returns them with the run's figures; any executor's failure fails it.
pub(crate) async fn fold_on_cluster(
    sandbox: &Sandbox,
    target: &ClusterTarget,
    plan: LogicalPlan,
    spec: FoldSpec,
    unit_type: &DataType,
    key_types: &[DataType],
) -> Result<(Vec<Fold>, ExecStats), SandboxError> {
    let started = Instant::now();
    let deadline = Duration::from_millis(sandbox.limits().wall_ms);
    let urls = target.urls()?;
    // The engine runs a stage of one task in this process, without the network; a cluster of
    // one executor gets two tasks (on it), so that the executor, not the Veil server, scans.
    let max_tasks = urls.len().max(2);
    let mut headers = HeaderMap::new();
    let token = HeaderValue::from_str(&target.token)
        .map_err(|_| SandboxError::Config("the cluster token is not printable text".into()))?;
    headers.insert(TOKEN_HEADER, token);
    let spec = Arc::new(spec);
    let internal = |e: DataFusionError| SandboxError::internal(e);
    let state = SessionStateBuilder::new_from_existing(sandbox.session_state())
        .with_query_planner(Arc::new(FoldPlanner {
            spec: Arc::clone(&spec),
        }))
        .with_distributed_planner()
        .with_distributed_worker_resolver(Executors(urls))
        .with_distributed_user_codec(FoldCodec)
        .with_distributed_max_tasks_per_stage(max_tasks)
        .map_err(internal)?
        .with_distributed_passthrough_headers(headers)
        .map_err(internal)?
        .with_distributed_file_scan_config_bytes_per_partition(target.bytes_per_partition.max(1))
        .map_err(internal)?
        .with_distributed_metrics_collection(false)
        .map_err(internal)?
        .build();
    let run = async {
        let physical = state
            .create_physical_plan(&plan)
            .await
            .map_err(|e| crate::sandbox::error::map_exec_error(&e))?;
        // The folds that must all come back.
        let expected = folds_expected(&physical)
            .ok_or_else(|| SandboxError::Internal("the cluster's plan has no fold in it".into()))?;
        let mut stream = datafusion::physical_plan::execute_stream(physical, state.task_ctx())
            .map_err(|e| crate::sandbox::error::map_exec_error(&e))?;
        let mut received = Received::default();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| crate::sandbox::error::map_exec_error(&e))?;
            received.add(&batch)?;
        }
        received.check_complete(expected)?;
        Ok::<_, SandboxError>(received)
    };
    let received = match tokio::time::timeout(deadline, run).await {
        Ok(received) => received?,
        Err(_) => {
            return Err(SandboxError::TimedOut {
                limit_ms: sandbox.limits().wall_ms,
            });
        }
    };
    let mut folds = Vec::with_capacity(received.states.len());
    for (index, chunks) in received.states.into_values().enumerate() {
        let bytes = chunks.into_values().collect::<Vec<_>>().concat();
        let reservation = MemoryConsumer::new(format!("veil-fold-received-{index}"))
            .register(&sandbox.memory_pool());
        let fold =
            Fold::decode(&spec, unit_type, key_types, reservation, &bytes).map_err(
                |e| match e {
                    crate::sandbox::FoldError::Memory => SandboxError::ResourcesExhausted,
                    crate::sandbox::FoldError::Internal(what) => {
                        SandboxError::Internal(what.into())
                    }
                },
            )?;
        folds.push(fold);
    }
    let mut stats = received.stats;
    stats.peak_memory_bytes = stats
        .peak_memory_bytes
        .saturating_add(sandbox.peak_memory_bytes());
    stats.wall_ms = started.elapsed().as_millis() as u64;
    Ok((folds, stats))
}

/// How many folds `plan` makes, one per partition of the fold: the partitions of the engine's
/// node that gathers them from the executors' tasks (or the fold's own, were it run here).
fn folds_expected(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    let partitions =
        |p: &Arc<dyn ExecutionPlan>| p.properties().output_partitioning().partition_count();
    if plan.downcast_ref::<FoldExec>().is_some() {
        return Some(partitions(plan));
    }
    let gathers_folds = plan.downcast_ref::<NetworkCoalesceExec>().is_some()
        && plan
            .children()
            .iter()
            .any(|child| child.downcast_ref::<FoldExec>().is_some());
    if gathers_folds {
        return Some(partitions(plan));
    }
    plan.children().into_iter().find_map(folds_expected)
}

/// What came back from the executors: each fold's state in chunks, by the fold's tag and the
/// chunk's place, and their figures added up.
#[derive(Default)]
struct Received {
    states: BTreeMap<u64, BTreeMap<u32, Vec<u8>>>,
    /// Each fold's count of chunks, from its end record.
    ends: BTreeMap<u64, u32>,
    stats: ExecStats,
}

impl Received {
    /// Refuses what came back unless it is `expected` folds, each with its end record and
    /// every chunk it counts: a fold or a chunk that never arrived (a stream cut short, an
    /// executor gone) must fail the job, never shrink the data it releases.
    fn check_complete(&self, expected: usize) -> Result<(), SandboxError> {
        let complete = self.states.len() == expected
            && self.ends.len() == expected
            && self.states.iter().all(|(tag, chunks)| {
                let Some(&count) = self.ends.get(tag) else {
                    return false;
                };
                // Chunk numbers are unique (`add`), so `count` of them below `count` are all.
                chunks.len() == count as usize && chunks.keys().all(|&seq| seq < count)
            });
        if complete {
            Ok(())
        } else {
            Err(SandboxError::Internal(
                "the executors' folds came back incomplete".into(),
            ))
        }
    }

    fn add(&mut self, batch: &RecordBatch) -> Result<(), SandboxError> {
        let malformed = || SandboxError::Internal("an executor's reply is malformed".into());
        if batch.num_columns() != 4 {
            return Err(malformed());
        }
        let tags = batch
            .column(0)
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(malformed)?;
        let seqs = batch
            .column(1)
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(malformed)?;
        let kinds = batch
            .column(2)
            .as_primitive_opt::<UInt8Type>()
            .ok_or_else(malformed)?;
        let bytes = batch
            .column(3)
            .as_binary_opt::<i64>()
            .ok_or_else(malformed)?;
        for row in 0..batch.num_rows() {
            let (tag, seq, value) = (tags.value(row), seqs.value(row), bytes.value(row));
            match kinds.value(row) {
                KIND_STATE => {
                    let chunks = self.states.entry(tag).or_default();
                    if chunks.insert(seq, value.to_vec()).is_some() {
                        return Err(malformed());
                    }
                }
                KIND_END => {
                    if self.ends.insert(tag, seq).is_some() || !value.is_empty() {
                        return Err(malformed());
                    }
                }
                KIND_STATS => {
                    let figures = TaskFigures::decode(value).ok_or_else(malformed)?;
                    let stats = &mut self.stats;
                    stats.rows_scanned = stats.rows_scanned.saturating_add(figures.rows_scanned);
                    stats.bytes_scanned = stats.bytes_scanned.saturating_add(figures.bytes_scanned);
                    stats.cpu_ms = stats.cpu_ms.saturating_add(figures.cpu_ms);
                    stats.peak_memory_bytes =
                        stats.peak_memory_bytes.saturating_add(figures.fold_bytes);
                }
                _ => return Err(malformed()),
            }
        }
        Ok(())
    }
}

/// One executor task's figures: its scan's rows and bytes, its operators' and folds' CPU
/// time, and the memory its folds held at the end.
struct TaskFigures {
    rows_scanned: u64,
    bytes_scanned: u64,
    cpu_ms: u64,
    fold_bytes: u64,
}

impl TaskFigures {
    fn encode(&self) -> Vec<u8> {
        [
            self.rows_scanned,
            self.bytes_scanned,
            self.cpu_ms,
            self.fold_bytes,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 32 {
            return None;
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        Some(Self {
            rows_scanned: word(0),
            bytes_scanned: word(1),
            cpu_ms: word(2),
            fold_bytes: word(3),
        })
    }
}

/// The executors, as the engine's resolver sees them.
struct Executors(Vec<Url>);

impl WorkerResolver for Executors {
    fn get_urls(&self) -> DfResult<Vec<Url>> {
        Ok(self.0.clone())
    }
}

/// Plans the stage plan as DataFusion would and puts the gate's fold on top, so that the
/// distributed planner (which wraps this one) cuts the stage below the fold's output.
#[derive(Debug)]
struct FoldPlanner {
    spec: Arc<FoldSpec>,
}

#[async_trait]
impl QueryPlanner for FoldPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = DefaultPhysicalPlanner::default()
            .create_physical_plan(logical_plan, session)
            .await?;
        Ok(Arc::new(FoldExec::new(input, Arc::clone(&self.spec))))
    }
}

impl fmt::Debug for FoldSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The spec holds the job's group hash key: never printed.
        f.write_str("FoldSpec")
    }
}

/// The gate's bounding fold as a physical operator: per input partition, one [`Fold`] over
/// the partition's rows, emitted as its encoded state in chunks, tagged with a random number
/// that tells this fold's chunks from every other's. The last partition of a task to finish
/// adds the task's figures (from its input's metrics).
pub(crate) struct FoldExec {
    input: Arc<dyn ExecutionPlan>,
    spec: Arc<FoldSpec>,
    properties: Arc<PlanProperties>,
    finished: Arc<AtomicUsize>,
    fold_bytes: Arc<AtomicUsize>,
    fold_ns: Arc<AtomicUsize>,
}

impl FoldExec {
    fn new(input: Arc<dyn ExecutionPlan>, spec: Arc<FoldSpec>) -> Self {
        let partitions = input.properties().output_partitioning().partition_count();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(output_schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            input,
            spec,
            properties,
            finished: Arc::new(AtomicUsize::new(0)),
            fold_bytes: Arc::new(AtomicUsize::new(0)),
            fold_ns: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// `FoldExec`'s output: (fold tag, chunk number, record kind, bytes).
fn output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("tag", DataType::UInt64, false),
        Field::new("seq", DataType::UInt32, false),
        Field::new("kind", DataType::UInt8, false),
        Field::new("bytes", DataType::LargeBinary, false),
    ]))
}

impl fmt::Debug for FoldExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VeilFoldExec")
    }
}

impl DisplayAs for FoldExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "VeilFoldExec")
    }
}

impl ExecutionPlan for FoldExec {
    fn name(&self) -> &str {
        "VeilFoldExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match <[_; 1]>::try_from(children) {
            Ok([input]) => Ok(Arc::new(FoldExec::new(input, Arc::clone(&self.spec)))),
            Err(_) => Err(DataFusionError::Internal(
                "VeilFoldExec has exactly one input".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let mut input = self.input.execute(partition, Arc::clone(&context))?;
        let input_schema = self.input.schema();
        let n_groups = self.spec.n_groups();
        if input_schema.fields().len() < 1 + n_groups {
            return Err(DataFusionError::Internal(
                "VeilFoldExec's input lacks the unit and group columns".into(),
            ));
        }
        let unit_type = input_schema.field(0).data_type().clone();
        let key_types: Vec<DataType> = (1..=n_groups)
            .map(|i| input_schema.field(i).data_type().clone())
            .collect();
        let reservation =
            MemoryConsumer::new(format!("veil-fold-{partition}")).register(context.memory_pool());
        let spec = Arc::clone(&self.spec);
        let whole = Arc::clone(&self.input);
        let partitions = self.properties.output_partitioning().partition_count();
        let (finished, fold_bytes, fold_ns) = (
            Arc::clone(&self.finished),
            Arc::clone(&self.fold_bytes),
            Arc::clone(&self.fold_ns),
        );
        let work = async move {
            let fold_error = |e: crate::sandbox::FoldError| match e {
                crate::sandbox::FoldError::Memory => DataFusionError::ResourcesExhausted(
                    "the fold's state exceeds the executor's memory".into(),
                ),
                crate::sandbox::FoldError::Internal(what) => DataFusionError::Internal(what.into()),
            };
            let mut fold =
                Fold::from_spec(&spec, &unit_type, &key_types, reservation).map_err(fold_error)?;
            let mut spent = Duration::ZERO;
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let at = Instant::now();
                fold.add_batch(&batch).map_err(fold_error)?;
                spent += at.elapsed();
            }
            let at = Instant::now();
            let state = fold.encode();
            spent += at.elapsed();
            fold_bytes.fetch_add(fold.reserved_bytes(), Ordering::Relaxed);
            fold_ns.fetch_add(spent.as_nanos() as usize, Ordering::Relaxed);
            drop(fold);
            let mut tag_bytes = [0u8; 8];
            getrandom::fill(&mut tag_bytes)
                .map_err(|_| DataFusionError::Internal("no randomness for a fold tag".into()))?;
            let tag = u64::from_le_bytes(tag_bytes);
            let mut records: Vec<(u32, u8, Vec<u8>)> = state
                .chunks(CHUNK_BYTES)
                .enumerate()
                .map(|(seq, chunk)| (seq as u32, KIND_STATE, chunk.to_vec()))
                .collect();
            if records.is_empty() {
                records.push((0, KIND_STATE, Vec::new()));
            }
            records.push((records.len() as u32, KIND_END, Vec::new()));
            drop(state);
            if finished.fetch_add(1, Ordering::AcqRel) + 1 == partitions {
                let scanned = crate::sandbox::collect_stats(whole.as_ref());
                let figures = TaskFigures {
                    rows_scanned: scanned.rows_scanned,
                    bytes_scanned: scanned.bytes_scanned,
                    cpu_ms: scanned.cpu_ms + (fold_ns.load(Ordering::Relaxed) as u64) / 1_000_000,
                    fold_bytes: fold_bytes.load(Ordering::Relaxed) as u64,
                };
                records.push((0, KIND_STATS, figures.encode()));
            }
            let batch = RecordBatch::try_new(
                output_schema(),
                vec![
                    Arc::new(UInt64Array::from(vec![tag; records.len()])),
                    Arc::new(UInt32Array::from_iter_values(records.iter().map(|r| r.0))),
                    Arc::new(UInt8Array::from_iter_values(records.iter().map(|r| r.1))),
                    Arc::new(LargeBinaryArray::from_iter_values(
                        records.iter().map(|r| r.2.as_slice()),
                    )),
                ],
            )?;
            Ok(batch)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            output_schema(),
            futures::stream::once(work),
        )))
    }
}

/// The engine's extension codec for [`FoldExec`]: its spec as bytes (its input is the engine's
/// to encode).
#[derive(Debug)]
struct FoldCodec;

impl PhysicalExtensionCodec for FoldCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = inputs else {
            return Err(DataFusionError::Internal(
                "VeilFoldExec has exactly one input".into(),
            ));
        };
        let spec = FoldSpec::decode(buf)
            .ok_or_else(|| DataFusionError::Internal("a malformed VeilFoldExec".into()))?;
        Ok(Arc::new(FoldExec::new(Arc::clone(input), Arc::new(spec))))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let Some(exec) = node.downcast_ref::<FoldExec>() else {
            return Err(DataFusionError::Internal(format!(
                "Veil's codec encodes VeilFoldExec only, not {}",
                node.name()
            )));
        };
        buf.extend_from_slice(&exec.spec.encode());
        Ok(())
    }
}

/// Serves as one of Veil's executors until `shutdown` resolves.
pub(super) async fn serve_executor(
    listener: tokio::net::TcpListener,
    config: ExecutorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SandboxError> {
    // Checked now, so a bad object storage configuration stops the executor at start; each
    // task reads it again (see `ExecutorSession`), so buckets the bureau adds later reach
    // running executors too.
    DomainStoreRegistry::for_executor(&config.data_dir)?;
    let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(config.memory_bytes));
    // The engine's own runtime (which every task's session replaces with its own) reaches
    // the domain data folder only, not the engine's default of the whole file system.
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::clone(&pool))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .with_object_store_registry(Arc::new(DomainStoreRegistry::new(&config.data_dir)?))
        .build_arc()
        .map_err(SandboxError::internal)?;
    let worker = Worker::from_session_builder(ExecutorSession {
        token: Arc::new(config.token),
        data_dir: Arc::new(config.data_dir),
        pool,
    })
    .with_runtime_env(runtime)
    .with_version(env!("CARGO_PKG_VERSION"));
    tonic::transport::Server::builder()
        .add_service(worker.into_worker_server())
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(|e| SandboxError::Config(format!("the executor stopped: {e}")))
}

/// The connections `listener` accepts, as the transport's server takes them.
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}

/// Builds an executor's session for one task: only for a request with the cluster token, with
/// the gate's functions and codec.
#[derive(Clone)]
struct ExecutorSession {
    token: Arc<String>,
    /// The domain data folder.
    data_dir: Arc<PathBuf>,
    /// The memory every task of this executor draws from.
    pool: Arc<dyn MemoryPool>,
}

#[async_trait]
impl WorkerSessionBuilder for ExecutorSession {
    async fn build_session_state(&self, ctx: WorkerQueryContext) -> DfResult<SessionState> {
        let presented = ctx
            .headers
            .get(TOKEN_HEADER)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        // Compared in constant time, so response timing does not reveal the token.
        let expected = blake3::hash(self.token.as_bytes());
        if blake3::hash(presented) != expected {
            return Err(DataFusionError::Execution(
                "this executor serves only its Veil server (cluster token refused)".into(),
            ));
        }
        // The sandbox's registry, without a per-object list (see `for_executor`); no disk,
        // so nothing spills; the executor's one memory pool.
        let registry = DomainStoreRegistry::for_executor(&self.data_dir)
            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::clone(&self.pool))
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .with_object_store_registry(Arc::new(registry))
            .build_arc()?;
        let mut state = ctx
            .builder
            .with_runtime_env(runtime)
            .with_distributed_user_codec(FoldCodec)
            .build();
        state.register_udf(crate::sandbox::functions::div())?;
        state.register_udf(crate::sandbox::functions::modulo())?;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_figures_round_trip() {
        let figures = TaskFigures {
            rows_scanned: 1,
            bytes_scanned: 2,
            cpu_ms: 3,
            fold_bytes: 4,
        };
        let back = TaskFigures::decode(&figures.encode()).expect("decodes");
        assert_eq!(
            (
                back.rows_scanned,
                back.bytes_scanned,
                back.cpu_ms,
                back.fold_bytes
            ),
            (1, 2, 3, 4)
        );
        assert!(TaskFigures::decode(&[0u8; 31]).is_none());
    }

    /// A batch of records (tag, chunk number, kind, bytes) as `FoldExec` sends them.
    fn records(rows: &[(u64, u32, u8, &[u8])]) -> RecordBatch {
        RecordBatch::try_new(
            output_schema(),
            vec![
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(UInt8Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(LargeBinaryArray::from_iter_values(rows.iter().map(|r| r.3))),
            ],
        )
        .expect("a batch")
    }

    #[test]
    fn folds_missing_a_chunk_an_end_or_a_whole_fold_are_refused() {
        // Two folds: tag 1 in two chunks (which may arrive in separate batches), tag 2 in one.
        let whole = [
            (1, 0, KIND_STATE, &b"ab"[..]),
            (1, 1, KIND_STATE, &b"c"[..]),
            (1, 2, KIND_END, &b""[..]),
            (2, 0, KIND_STATE, &b"d"[..]),
            (2, 1, KIND_END, &b""[..]),
        ];
        let received = |rows: &[(u64, u32, u8, &[u8])]| {
            let mut received = Received::default();
            for row in rows {
                received.add(&records(&[*row])).expect("well formed");
            }
            received
        };
        assert!(received(&whole).check_complete(2).is_ok());
        // A whole fold (its task's stream cut before it) is missing, or one more was due.
        assert!(received(&whole[..3]).check_complete(2).is_err());
        assert!(received(&whole).check_complete(3).is_err());
        for lost in 0..whole.len() {
            let mut rows = whole.to_vec();
            rows.remove(lost);
            let outcome = received(&rows).check_complete(2);
            assert!(outcome.is_err(), "record {lost} lost, yet complete");
        }
        // A chunk sent twice is malformed, as is an end that carries bytes.
        let mut twice = Received::default();
        twice.add(&records(&whole[..1])).expect("first");
        assert!(twice.add(&records(&whole[..1])).is_err());
        assert!(
            Received::default()
                .add(&records(&[(3, 0, KIND_END, &b"x"[..])]))
                .is_err()
        );
    }
}
