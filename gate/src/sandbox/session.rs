//! The hardened DataFusion session (feature `sql`, on by default). See the crate docs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use futures::StreamExt;

pub use crate::sandbox::error::{ForbiddenStatement, SandboxError};
use crate::sandbox::object_storage::{self, ObjectStorage, ObjectUrl};
pub use crate::sandbox::params::{ParamValue, bind_named_parameters};
pub use crate::sandbox::pool::PeakTrackingPool;
pub use crate::sandbox::registry::{DOMAIN_SCHEME, DomainStoreRegistry};
use crate::sandbox::{error, registry};

/// Default memory a single job's query may hold, in bytes (512 MiB).
pub const JOB_MEMORY_BYTES_DEFAULT: usize = 512 * 1024 * 1024;
/// Largest memory limit a template may ask for, in bytes (8 GiB).
pub const JOB_MEMORY_BYTES_MAX: usize = 8 * 1024 * 1024 * 1024;
/// Default wall-clock time a single job's query may run, in milliseconds (5 minutes).
pub const JOB_WALL_MS_DEFAULT: u64 = 5 * 60 * 1000;
/// Longest wall-clock limit a template may ask for, in milliseconds (1 hour).
pub const JOB_WALL_MS_MAX: u64 = 60 * 60 * 1000;
/// Longest SQL text accepted, in bytes. Longer text is refused before parsing.
pub const SQL_BYTES_MAX: usize = 64 * 1024;
/// Deepest SQL nesting the parser accepts before refusing (guards the parser's stack).
pub const SQL_RECURSION_DEPTH_MAX: usize = 64;
/// Most operators (arithmetic, comparison, `||`, `AND`, `OR`, `LIKE`, …) one statement may
/// hold. A chain `a + b + c …` parses without nesting, into a tree as deep as it is long, and
/// planning walks such trees recursively: a chain of a thousand terms overflowed a worker's
/// stack and took the server down. The limit keeps every expression tree far from that.
pub const SQL_OPERATORS_MAX: usize = 200;
/// Most `JOIN`s one statement may hold (each one multiplies the planner's work).
pub const SQL_JOINS_MAX: usize = 16;
/// Most tables one sandbox may hold (a grant's scope).
pub const TABLES_MAX: usize = 64;

const _: () = assert!(JOB_MEMORY_BYTES_DEFAULT <= JOB_MEMORY_BYTES_MAX);
const _: () = assert!(JOB_WALL_MS_DEFAULT <= JOB_WALL_MS_MAX);

/// Resource limits of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Memory the query's operators may reserve, in bytes. Exceeding it fails the job with
    /// [`SandboxError::ResourcesExhausted`]; nothing spills to disk.
    pub memory_bytes: usize,
    /// Wall-clock time the query may run, in milliseconds.
    pub wall_ms: u64,
    /// Parallelism of the query (DataFusion's target partitions).
    pub partitions: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            memory_bytes: JOB_MEMORY_BYTES_DEFAULT,
            wall_ms: JOB_WALL_MS_DEFAULT,
            partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// What a query cost, read from DataFusion's own execution metrics (not estimated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecStats {
    /// Rows the table scans produced.
    pub rows_scanned: u64,
    /// Bytes the Parquet readers fetched from the domain store.
    pub bytes_scanned: u64,
    /// CPU time spent in the plan's operators, summed over partitions, in milliseconds. A job's
    /// child process replaces it with its whole CPU time (see `job::child_main`), which also
    /// counts Parquet decoding, the bounding fold and a mapper.
    pub cpu_ms: u64,
    /// Highest memory reserved by the query at any moment, in bytes.
    pub peak_memory_bytes: u64,
    /// Wall-clock time of the execution, in milliseconds.
    pub wall_ms: u64,
}

/// Builds a [`Sandbox`]. Everything is denied unless this builder allows it.
///
/// Defaults and their security effect:
/// - **tables**: none. Only tables added with [`SandboxBuilder::table`] can be named by a
///   query; everything else fails planning as an unknown table.
/// - **file system**: the only object store is the domain data folder given to
///   [`SandboxBuilder::new`], under the `veil-domain://` scheme. `file://` and every other
///   scheme have no store, so no path on the host can be read, even by a plan that slipped
///   past the statement policy.
/// - **object storage**: none. A table given as an `s3://` URL adds a read-only store for
///   its bucket that reads exactly the tables' objects (no listing, no other key, no write),
///   with the credentials of the store's `object-storage.toml` (see `object_storage`).
/// - **spilling**: disabled. A query that runs out of its memory pool fails; it never writes
///   temporary files.
/// - **statements**: one read-only query. DDL, DML, `COPY`, `SET`, `EXPLAIN` and every
///   other statement kind are refused before planning (see [`Sandbox::plan_query`]).
/// - **table functions** (`generate_series`, `range`, …) and `information_schema`: none.
/// - **Parquet pruning** (row-group statistics, page index, bloom filters): off, so the
///   number of rows and bytes scanned does not depend on values inside the data. This costs
///   speed on selective filters and buys a meter that leaks nothing.
#[derive(Debug)]
pub struct SandboxBuilder {
    data_dir: PathBuf,
    limits: SandboxLimits,
    tables: Vec<(String, PathBuf)>,
    memory_tables: Vec<(String, SchemaRef, Vec<RecordBatch>)>,
}

impl SandboxBuilder {
    /// Starts a sandbox whose only readable files live under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            limits: SandboxLimits::default(),
            tables: Vec::new(),
            memory_tables: Vec::new(),
        }
    }

    /// Sets the job's resource limits (default: [`SandboxLimits::default`]).
    pub fn limits(mut self, limits: SandboxLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Allows a query to read table `name` from the Parquet file at `relative_path` (relative
    /// to the domain data folder; absolute paths and `..` are refused at build time), or from
    /// the Parquet object an `s3://<bucket>/<key>` URL names. For an object, [`build`] reads
    /// the store's object storage configuration (`object-storage.toml`, beside the data
    /// folder) and lets the session read exactly that object of that bucket — no listing, no
    /// other object, no write; a store without the file refuses the table naming the file.
    ///
    /// [`build`]: SandboxBuilder::build
    pub fn table(mut self, name: impl Into<String>, relative_path: impl Into<PathBuf>) -> Self {
        self.tables.push((name.into(), relative_path.into()));
        self
    }

    /// Allows a query to read table `name` held in memory: rows computed inside the domain
    /// (a WASM mapper's output) that only this sandbox's query may read.
    pub fn memory_table(
        mut self,
        name: impl Into<String>,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Self {
        self.memory_tables.push((name.into(), schema, batches));
        self
    }

    /// Builds the session and registers the allowed tables.
    pub async fn build(self) -> Result<Sandbox, SandboxError> {
        let limits = self.limits;
        if limits.memory_bytes == 0 || limits.memory_bytes > JOB_MEMORY_BYTES_MAX {
            return Err(SandboxError::Config(format!(
                "memory limit must be between 1 byte and {JOB_MEMORY_BYTES_MAX} bytes"
            )));
        }
        if limits.wall_ms == 0 || limits.wall_ms > JOB_WALL_MS_MAX {
            return Err(SandboxError::Config(format!(
                "wall-clock limit must be between 1 ms and {JOB_WALL_MS_MAX} ms"
            )));
        }
        if self.tables.len() + self.memory_tables.len() > TABLES_MAX {
            return Err(SandboxError::Config(format!(
                "a sandbox holds at most {TABLES_MAX} tables"
            )));
        }

        let mut config = SessionConfig::new()
            .with_information_schema(false)
            .with_target_partitions(limits.partitions.max(1))
            .with_default_catalog_and_schema("veil", "domain")
            .with_create_default_catalog_and_schema(true);
        {
            let options = config.options_mut();
            options.sql_parser.recursion_limit =
                datafusion::config::ConfigNonZeroUsize::try_new(SQL_RECURSION_DEPTH_MAX)
                    .map_err(SandboxError::internal)?;
            options.execution.collect_statistics = false;
            options.execution.parquet.pruning = false;
            options.execution.parquet.pushdown_filters = false;
            options.execution.parquet.enable_page_index = false;
            options.execution.parquet.bloom_filter_on_read = false;
            options.catalog.information_schema = false;
        }

        let pool = Arc::new(PeakTrackingPool::new(GreedyMemoryPool::new(
            limits.memory_bytes,
        )));
        // A table on object storage names an `s3://` URL; every other is a relative path.
        let mut objects = Vec::new();
        let mut table_urls = Vec::with_capacity(self.tables.len());
        for (name, path) in &self.tables {
            let text = path.to_str().unwrap_or_default();
            if object_storage::is_object_url(text) {
                let object = ObjectUrl::parse(text)?;
                table_urls.push((name.clone(), object.to_string()));
                objects.push(object);
            } else {
                table_urls.push((name.clone(), registry::domain_url(path)?));
            }
        }
        let registry = Arc::new(if objects.is_empty() {
            DomainStoreRegistry::new(&self.data_dir)?
        } else {
            let storage = ObjectStorage::require(&self.data_dir)?;
            DomainStoreRegistry::with_objects(&self.data_dir, &storage, &objects)?
        });
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .with_object_store_registry(registry)
            .build_arc()
            .map_err(SandboxError::internal)?;

        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            // No table functions and no table factories: `generate_series`, `range` and
            // `CREATE EXTERNAL TABLE … STORED AS …` have nothing to call.
            .with_table_functions(HashMap::new())
            .with_table_factories(HashMap::new())
            .build();
        let ctx = SessionContext::new_with_state(state);
        // The gate rewrites `/` and `%` to these total forms (see `functions`).
        ctx.register_udf(crate::sandbox::functions::div().as_ref().clone());
        ctx.register_udf(crate::sandbox::functions::modulo().as_ref().clone());
        // A listing table's format carries its own Parquet options, which default to pruning
        // on: take the session's (pruning, page index and bloom filters off), so what a scan
        // reads never depends on the values in the file.
        let parquet_options = ctx.state().table_options().parquet.clone();

        let mut names = Vec::with_capacity(self.tables.len());
        for (name, url) in table_urls {
            let table_url = ListingTableUrl::parse(&url).map_err(SandboxError::internal)?;
            let format = ParquetFormat::default().with_options(parquet_options.clone());
            let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
            let table_config = ListingTableConfig::new(table_url)
                .with_listing_options(options)
                .infer_schema(&ctx.state())
                .await
                .map_err(|_| SandboxError::TableUnreadable {
                    table: name.clone(),
                })?;
            let table = ListingTable::try_new(table_config).map_err(SandboxError::internal)?;
            ctx.register_table(name.as_str(), Arc::new(table))
                .map_err(SandboxError::internal)?;
            names.push(name);
        }
        for (name, schema, batches) in self.memory_tables {
            let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])
                .map_err(SandboxError::internal)?;
            ctx.register_table(name.as_str(), Arc::new(table))
                .map_err(SandboxError::internal)?;
            names.push(name);
        }

        Ok(Sandbox {
            ctx,
            pool,
            limits,
            tables: names,
            #[cfg(feature = "cluster")]
            cluster: None,
        })
    }
}

/// A hardened DataFusion session for one job. See [`SandboxBuilder`] for what it allows.
pub struct Sandbox {
    ctx: SessionContext,
    pool: Arc<PeakTrackingPool<GreedyMemoryPool>>,
    limits: SandboxLimits,
    tables: Vec<String>,
    /// Where the gate's fold runs: here (`None`), or on Veil's executors (`cluster`).
    #[cfg(feature = "cluster")]
    cluster: Option<crate::cluster::ClusterTarget>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("limits", &self.limits)
            .field("tables", &self.tables)
            .finish()
    }
}

impl Sandbox {
    /// The tables a query may name.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// Highest memory reserved from the job's pool so far, in bytes.
    pub fn peak_memory_bytes(&self) -> u64 {
        self.pool.peak() as u64
    }

    /// The statement policy: turns operator SQL into a logical plan, or refuses it.
    ///
    /// `sql` uses `$name` placeholders (see [`bind_named_parameters`] for the `:name` form
    /// templates use); `params` gives each one a value. Refused, in this order:
    /// text longer than [`SQL_BYTES_MAX`]; more operators or joins than
    /// [`SQL_OPERATORS_MAX`] and [`SQL_JOINS_MAX`]; text that does not parse; more than one statement;
    /// any statement that is not a plain query (DDL, DML, `COPY`, `SET`, `EXPLAIN`, …);
    /// a query naming a table outside the sandbox; a plan DataFusion marks as DDL, DML or a
    /// statement; an unbound placeholder.
    pub async fn plan_query(
        &self,
        sql: &str,
        params: &[(String, ParamValue)],
    ) -> Result<LogicalPlan, SandboxError> {
        if sql.len() > SQL_BYTES_MAX {
            return Err(SandboxError::TooLong {
                bytes: sql.len(),
                max: SQL_BYTES_MAX,
            });
        }
        let dialect = GenericDialect {};
        check_size(&dialect, sql)?;
        let mut statements = DFParserBuilder::new(sql)
            .with_dialect(&dialect)
            .with_recursion_limit(SQL_RECURSION_DEPTH_MAX)
            .build()
            .and_then(|mut parser| parser.parse_statements())
            .map_err(|e| SandboxError::Parse(error::describe_parse_error(&e)))?;
        if statements.len() > 1 {
            return Err(SandboxError::MultipleStatements {
                count: statements.len(),
            });
        }
        let Some(statement) = statements.pop_front() else {
            return Err(SandboxError::Parse(
                "the SQL text holds no statement".into(),
            ));
        };
        let statement = match statement {
            DFStatement::Statement(inner) => match *inner {
                SqlStatement::Query(_) => DFStatement::Statement(inner),
                other => return Err(SandboxError::Forbidden(ForbiddenStatement::of_sql(&other))),
            },
            other => {
                return Err(SandboxError::Forbidden(ForbiddenStatement::of_datafusion(
                    &other,
                )));
            }
        };

        let state = self.ctx.state();
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| error::map_plan_error(&e, &self.tables))?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|_| SandboxError::Forbidden(ForbiddenStatement::Other("non-query plan")))?;

        let values: Vec<(String, datafusion::scalar::ScalarValue)> = params
            .iter()
            .map(|(name, value)| (name.clone(), value.to_scalar()))
            .collect();
        let plan = plan
            .with_param_values(values)
            .map_err(|_| SandboxError::UnboundParameter)?;
        // DataFusion's analyzer (type coercion among its rules) runs now rather than at
        // execution, so the plan the gate inspects already holds every cast and function the
        // execution will evaluate: nothing is added behind the gate's back.
        state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})
            .map_err(|e| error::map_plan_error(&e, &self.tables))
    }

    /// Runs a plan under the sandbox's time limit and returns every output batch with what
    /// it cost. The batches are raw, in-domain data: only the sandbox's own tests look at them.
    #[cfg(test)]
    pub(crate) async fn execute(
        &self,
        plan: LogicalPlan,
    ) -> Result<(Vec<RecordBatch>, ExecStats), SandboxError> {
        let (partitions, stats) = self
            .execute_folded(
                plan,
                |_reservation| Vec::new(),
                |batches: &mut Vec<RecordBatch>, batch: &RecordBatch| {
                    batches.push(batch.clone());
                    Ok(())
                },
            )
            .await?;
        Ok((partitions.into_iter().flatten().collect(), stats))
    }
}

/// What a partition fold may report instead of finishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoldError {
    /// The fold's own memory did not fit the job's pool.
    Memory,
    /// An invariant of the folding code broke; the text names the step.
    Internal(&'static str),
}

impl Sandbox {
    /// The job's resource limits.
    pub fn limits(&self) -> SandboxLimits {
        self.limits
    }

    /// Runs the gate's fold on `target`'s executors instead of here (see `cluster`).
    #[cfg(feature = "cluster")]
    pub fn on_cluster(mut self, target: crate::cluster::ClusterTarget) -> Self {
        self.cluster = Some(target);
        self
    }

    /// The executors the gate's fold runs on, if not here.
    #[cfg(feature = "cluster")]
    pub(crate) fn cluster(&self) -> Option<&crate::cluster::ClusterTarget> {
        self.cluster.as_ref()
    }

    /// The session's state, for the cluster's coordinator (which adds the engine's planner).
    #[cfg(feature = "cluster")]
    pub(crate) fn session_state(&self) -> datafusion::execution::SessionState {
        self.ctx.state()
    }

    /// The job's memory pool.
    #[cfg(feature = "cluster")]
    pub(crate) fn memory_pool(&self) -> Arc<dyn datafusion::execution::memory_pool::MemoryPool> {
        self.pool.clone()
    }

    /// The plan's output partition count, as the sandbox would execute it.
    pub fn partitions(&self) -> usize {
        self.limits.partitions.max(1)
    }

    /// Runs a plan and folds each output partition's batches into its own state, one task per
    /// partition, under the job's time limit, without collecting the rows. `init` makes a
    /// partition's state and is handed a reservation of the job's memory pool, which the fold
    /// grows as its state grows (so the limit covers it and the meter shows it).
    ///
    /// The batches are raw, in-domain data: only the gate may fold them.
    pub(crate) async fn execute_folded<S, I, F>(
        &self,
        plan: LogicalPlan,
        init: I,
        fold: F,
    ) -> Result<(Vec<S>, ExecStats), SandboxError>
    where
        S: Send + 'static,
        I: Fn(datafusion::execution::memory_pool::MemoryReservation) -> S,
        F: Fn(&mut S, &RecordBatch) -> Result<(), FoldError> + Send + Sync + 'static,
    {
        let started = Instant::now();
        let deadline = Duration::from_millis(self.limits.wall_ms);
        let state = self.ctx.state();
        let fold = Arc::new(fold);
        let pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool> = self.pool.clone();
        let run = async {
            let physical = state
                .create_physical_plan(&plan)
                .await
                .map_err(|e| error::map_exec_error(&e))?;
            let streams = datafusion::physical_plan::execute_stream_partitioned(
                physical.clone(),
                self.ctx.task_ctx(),
            )
            .map_err(|e| error::map_exec_error(&e))?;
            // Dropping the set (on error or time-out) aborts every task still running.
            let mut tasks = tokio::task::JoinSet::new();
            for (index, mut stream) in streams.into_iter().enumerate() {
                let reservation = datafusion::execution::memory_pool::MemoryConsumer::new(format!(
                    "veil-fold-{index}"
                ))
                .register(&pool);
                let mut partition_state = init(reservation);
                let fold = fold.clone();
                tasks.spawn(async move {
                    while let Some(batch) = stream.next().await {
                        let batch = batch.map_err(|e| error::map_exec_error(&e))?;
                        fold(&mut partition_state, &batch).map_err(|e| match e {
                            FoldError::Memory => SandboxError::ResourcesExhausted,
                            FoldError::Internal(what) => SandboxError::Internal(what.to_string()),
                        })?;
                    }
                    Ok::<_, SandboxError>((index, partition_state))
                });
            }
            let mut states: Vec<Option<S>> = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                let (index, partition_state) = joined
                    .map_err(|_| SandboxError::Internal("a partition task failed".into()))??;
                if states.len() <= index {
                    states.resize_with(index + 1, || None);
                }
                states[index] = Some(partition_state);
            }
            Ok::<_, SandboxError>((states.into_iter().flatten().collect::<Vec<S>>(), physical))
        };
        let (states, physical) = match tokio::time::timeout(deadline, run).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(SandboxError::TimedOut {
                    limit_ms: self.limits.wall_ms,
                });
            }
        };
        let mut stats = collect_stats(physical.as_ref());
        stats.peak_memory_bytes = self.pool.peak() as u64;
        stats.wall_ms = started.elapsed().as_millis() as u64;
        Ok((states, stats))
    }
}

/// Sums scan and compute metrics over a finished physical plan.
pub(crate) fn collect_stats(plan: &dyn ExecutionPlan) -> ExecStats {
    let mut stats = ExecStats::default();
    let mut compute_ns: u64 = 0;
    let mut stack: Vec<&dyn ExecutionPlan> = vec![plan];
    while let Some(node) = stack.pop() {
        if let Some(metrics) = node.metrics() {
            let metrics = metrics.aggregate_by_name();
            compute_ns += metrics.elapsed_compute().unwrap_or(0) as u64;
            if node.children().is_empty() {
                stats.rows_scanned += metrics.output_rows().unwrap_or(0) as u64;
                if let Some(bytes) = metrics.sum_by_name("bytes_scanned") {
                    stats.bytes_scanned += bytes.as_usize() as u64;
                }
            }
        }
        stack.extend(node.children().into_iter().map(|child| child.as_ref()));
    }
    stats.cpu_ms = compute_ns / 1_000_000;
    stats
}

/// Path of a table file inside the domain data folder, checked to stay inside it.
pub fn checked_relative_path(relative: &Path) -> Result<&Path, SandboxError> {
    registry::checked_relative(relative)
}

/// Refuses SQL with more operators or joins than the planner can take safely
/// ([`SQL_OPERATORS_MAX`], [`SQL_JOINS_MAX`]). Counted on tokens, which needs no recursion.
fn check_size(dialect: &GenericDialect, sql: &str) -> Result<(), SandboxError> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

    let tokens = Tokenizer::new(dialect, sql)
        .tokenize()
        .map_err(|e| SandboxError::Parse(e.to_string()))?;
    let (mut operators, mut joins) = (0usize, 0usize);
    for token in &tokens {
        match token {
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::StringConcat
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret
            | Token::ShiftLeft
            | Token::ShiftRight => operators += 1,
            Token::Word(word) => match word.keyword {
                Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::IS
                | Keyword::BETWEEN
                | Keyword::IN => operators += 1,
                Keyword::JOIN => joins += 1,
                _ => {}
            },
            _ => {}
        }
    }
    if operators > SQL_OPERATORS_MAX {
        return Err(SandboxError::Parse(format!(
            "the query holds {operators} operators; the limit is {SQL_OPERATORS_MAX} (use IN lists and CASE instead of long chains)"
        )));
    }
    if joins > SQL_JOINS_MAX {
        return Err(SandboxError::Parse(format!(
            "the query holds {joins} joins; the limit is {SQL_JOINS_MAX}"
        )));
    }
    Ok(())
}
