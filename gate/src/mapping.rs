//! WASM jobs: the mapping stage between the input SQL and the release gate.
//!
//! ```text
//! input SQL (sandbox, grant's tables) ──► rows grouped by privacy unit (hash → partition)
//!   ──► per partition: rows sorted by unit; per unit, a fresh mapper instance
//!       (crate::sandbox::wasm) gets that unit's rows and returns its output rows
//!   ──► output checked against the declared schema, values clamped to bounds, text to key
//!       sets, rows capped per unit; a failed unit contributes the fallback
//!   ──► the in-domain table `mapped` (unit column + declared columns), which only the
//!       template's release SQL can read, through the same gate as a SQL job
//! ```
//!
//! # Why the gate's guarantees survive the mapper
//! The gate bounds contributions per privacy unit of `mapped`. Every row of `mapped` carries
//! the unit whose rows produced it — the host writes that column, the mapper cannot — and a
//! unit's rows are computed from that unit's input rows alone: each call runs on a fresh
//! instance with no imports but a discarded log, so nothing from another unit (or an earlier
//! call) can reach it. A failed call contributes a fixed fallback, which depends on nothing.
//! So neighbouring inputs (one unit's rows changed) change only that unit's rows of `mapped`,
//! at most `max_rows_per_unit` rows clamped to the declared bounds — exactly the situation
//! the gate's bounding proof covers.
//!
//! Which units failed, and how many, never reaches the operator: the job's outcome and
//! messages are the same whether or not a unit fell back, and the meter charges fuel by the
//! tables' size, not by use (see `metering`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::sandbox::wasm::{DEADLINE_TICKS_MIN, Mapper, UNIT_WALL_US_MIN, UnitFailure, WasmLimits};
use crate::sandbox::{ExecStats, FoldError, Sandbox, SandboxError};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
};
use datafusion::arrow::compute::{self, SortOptions};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use datafusion::common::Column;
use datafusion::logical_expr::LogicalPlan;
use veil_sdk::columnar::{BatchView, BatchWriter, Kind};

use crate::analysis::{self, Tables};
use crate::ids::DatasetId;
use crate::policy::{ColumnPolicy, Dataset, Policy, Role};
use crate::rules::{Refusal, Rule};
use veil_sdk::template::{Fallback, OutputType, WasmSpec};

use crate::terms::Terms;

/// The table a WASM template's release SQL reads: the mapper's output.
pub const MAPPED_TABLE: &str = "mapped";

/// What the input SQL feeds the mapper.
#[derive(Debug, Clone)]
pub struct InputAnalysis {
    /// The privacy-unit column in the input plan's schema.
    pub unit: Column,
    /// Its position in the input plan's schema.
    pub unit_index: usize,
    pub unit_kind: String,
    /// Whether unit values are integers (else text).
    pub unit_is_integer: bool,
    /// Names of the tables read.
    pub tables: Vec<String>,
}

/// The payload type each input column travels as.
fn payload_kind(data_type: &DataType) -> Option<Kind> {
    match data_type {
        t if t.is_integer() => Some(Kind::Int64),
        DataType::Boolean => Some(Kind::Int64),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => Some(Kind::Float64),
        DataType::Decimal128(..) | DataType::Decimal256(..) => Some(Kind::Float64),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(Kind::Utf8),
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => Some(Kind::Utf8),
        DataType::Dictionary(_, value) => payload_kind(value),
        _ => None,
    }
}

/// Checks the input plan: tables in scope, joins only on the unit, the unit column output,
/// every column of a type the payload can carry. Identifier columns may be read: the mapper
/// runs inside the domain and its output is bounded and gated.
///
/// Returns the input plan in its total form too (`gate::allow::harden_plan`): the plan the
/// mapping stage must execute.
pub fn analyse_input(
    plan: &LogicalPlan,
    tables: &Tables,
) -> Result<(InputAnalysis, LogicalPlan), Refusal> {
    let mut refusal = Refusal::default();
    let mut used = Vec::new();
    let origins = analysis::lineage(plan, tables, &mut refusal, &mut used)?;
    let schema = plan.schema();
    for field in schema.fields() {
        if payload_kind(field.data_type()).is_none() {
            refusal.push(
                Rule::WasmInput,
                format!(
                    "input column `{}` has type {}; cast it to an integer, float or text in the input SQL",
                    field.name(),
                    field.data_type()
                ),
            );
        }
    }
    let unit = origins
        .iter()
        .enumerate()
        .find(|(_, o)| o.direct_base().is_some_and(|b| b.is_unit));
    let Some((unit_index, origin)) = unit else {
        refusal.push(
            Rule::WasmInput,
            "the input SQL does not output the privacy unit column; select it so rows can be grouped per unit",
        );
        return Err(refusal);
    };
    refusal.clone().into_result()?;
    let (qualifier, field) = schema.qualified_field(unit_index);
    let hardened = crate::allow::harden_plan(plan.clone()).map_err(|_| {
        Refusal::one(
            Rule::StatementConstruct,
            "the gate could not rewrite the input query into its total form; simplify its expressions",
        )
    })?;
    Ok((
        InputAnalysis {
            unit: Column::new(qualifier.cloned(), field.name()),
            unit_index,
            unit_kind: origin.bases[0].unit_kind.clone(),
            unit_is_integer: field.data_type().is_integer(),
            tables: used,
        },
        hardened,
    ))
}

/// The name of the unit column in `mapped`.
fn unit_name(input: &InputAnalysis) -> &str {
    input.unit.name.as_str()
}

/// The schema of `mapped`: the unit column, then the declared output columns.
pub fn mapped_schema(input: &InputAnalysis, spec: &WasmSpec) -> Result<SchemaRef, Refusal> {
    let unit_type = if input.unit_is_integer {
        DataType::Int64
    } else {
        DataType::Utf8
    };
    let mut fields = vec![Field::new(unit_name(input), unit_type, false)];
    for column in &spec.output {
        if column.name == unit_name(input) {
            return Err(Refusal::one(
                Rule::WasmOutputSchema,
                format!(
                    "output column `{}` has the unit column's name; the host writes the unit column itself",
                    column.name
                ),
            ));
        }
        let data_type = match column.kind {
            OutputType::Integer => DataType::Int64,
            OutputType::Float => DataType::Float64,
            OutputType::Text => DataType::Utf8,
        };
        fields.push(Field::new(&column.name, data_type, true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The catalog entry the gate sees for `mapped`: the unit as its privacy unit, numbers as
/// sensitive values with their declared bounds, keyed columns as quasi-identifiers with public
/// key sets. Provenance fields come from the input's datasets.
pub fn mapped_dataset(input: &InputAnalysis, spec: &WasmSpec, sources: &[Dataset]) -> Dataset {
    let mut columns = BTreeMap::new();
    columns.insert(
        unit_name(input).to_string(),
        ColumnPolicy {
            role: Role::Identifier,
            bounds: None,
            keys: None,
            key_range: None,
            p_percent: None,
            dominance: None,
        },
    );
    for column in &spec.output {
        let policy = match (&column.keys, column.bounds) {
            (Some(keys), _) => ColumnPolicy {
                role: Role::Quasi,
                bounds: None,
                keys: Some(keys.clone()),
                key_range: None,
                p_percent: None,
                dominance: None,
            },
            (None, bounds) => ColumnPolicy {
                role: Role::Sensitive,
                bounds,
                keys: None,
                key_range: None,
                p_percent: None,
                dominance: None,
            },
        };
        columns.insert(column.name.clone(), policy);
    }
    let first = sources.first();
    Dataset {
        id: DatasetId::new(MAPPED_TABLE.to_string()),
        name: MAPPED_TABLE.to_string(),
        policy: Policy {
            provider: sources
                .iter()
                .map(|d| d.policy.provider.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            classification_level: sources
                .iter()
                .map(|d| d.policy.classification_level)
                .max()
                .unwrap_or(3),
            sharing: first.map_or(crate::policy::Sharing::Conditional, |d| d.policy.sharing),
            acquired_on: sources
                .iter()
                .map(|d| d.policy.acquired_on.clone())
                .min()
                .unwrap_or_default(),
            privacy_unit: unit_name(input).to_string(),
            unit_kind: input.unit_kind.clone(),
            budget: None,
            update_cadence: None,
            columns,
        },
        file: String::new(),
        rows: sources.iter().map(|d| d.rows).max().unwrap_or(0),
        bytes: 0,
        content_blake3: String::new(),
        registered_at: String::new(),
    }
}

/// Share of the job's wall limit that the mapping stage may take when every unit runs to its
/// deadline, in percent. The rest is for the input query, the host's per-row work and the
/// release.
pub const MAPPING_WALL_SHARE_PERCENT: u64 = 75;
/// Shortest time a unit may hold its thread, deadline and the tick that notices it together,
/// in microseconds: [`UNIT_WALL_US_MIN`] plus one tick of the epoch clock at its fastest.
pub const UNIT_SLOT_US_MIN: u64 = UNIT_WALL_US_MIN + UNIT_WALL_US_MIN / DEADLINE_TICKS_MIN;

/// The per-unit limits of a job whose input tables hold `rows_bound` rows in all (their
/// registered sizes, an upper bound on the number of units).
///
/// Whether a job passes its wall limit must not depend on one person: a mapper that loops for
/// one unit only would otherwise turn that unit's presence into a time-out. So the unit's
/// deadline is derived from data-independent figures — `rows_bound` units, all in one
/// partition (hashing may put them there), each running to its deadline, must still fit in
/// [`MAPPING_WALL_SHARE_PERCENT`] of the wall limit. Each unit gets an equal slot of that share;
/// the host notices a passed deadline at the next tick of its epoch clock, which ticks at least
/// [`DEADLINE_TICKS_MIN`] times per deadline, so the deadline is the slot less one such tick.
/// A unit that hits its deadline contributes the fallback, which changes that unit's rows only.
/// A job whose tables are too large for even [`UNIT_SLOT_US_MIN`] per unit is refused before
/// its budget is reserved.
pub fn unit_limits(approval: &Terms, rows_bound: u64) -> Result<WasmLimits, Refusal> {
    const US_PER_MS: u64 = 1_000;
    let mut limits = approval.wasm_limits();
    let wall_ms = approval.limits().wall_ms;
    let budget_us = wall_ms.saturating_mul(US_PER_MS) / 100 * MAPPING_WALL_SHARE_PERCENT;
    let slot_us = budget_us / rows_bound.max(1);
    if slot_us < UNIT_SLOT_US_MIN {
        let needed_seconds = rows_bound
            .saturating_mul(UNIT_SLOT_US_MIN)
            .saturating_mul(100)
            .div_ceil(MAPPING_WALL_SHARE_PERCENT)
            .div_ceil(US_PER_MS * 1000);
        return Err(Refusal::one(
            Rule::ResourcesLimit,
            format!(
                "the mapper's input tables hold {rows_bound} rows; mapping that many units at \
                 {UNIT_SLOT_US_MIN} µs each does not fit in {MAPPING_WALL_SHARE_PERCENT}% of \
                 the approved wall limit of {} s; ask the bureau to approve --wall-seconds \
                 {needed_seconds} or more",
                wall_ms / 1000
            ),
        ));
    }
    let deadline_us = slot_us / (DEADLINE_TICKS_MIN + 1) * DEADLINE_TICKS_MIN;
    limits.unit_wall_us = limits.unit_wall_us.min(deadline_us);
    Ok(limits)
}

/// What the mapping stage produced. Everything here is in-domain.
pub struct Mapped {
    /// The rows of `mapped`.
    pub batch: RecordBatch,
    /// Fuel the calls burned (kept for the bureau's audit entry).
    pub fuel_used: u64,
    /// Units mapped, and how many of them fell back.
    pub units: u64,
    pub fallbacks: u64,
    /// The input query's costs.
    pub stats: ExecStats,
}

/// Why the mapping stage stopped the job.
#[derive(Debug)]
pub enum MapError {
    Sandbox(SandboxError),
    /// The job's wall-clock limit passed while units were still being mapped.
    TimedOut {
        limit_ms: u64,
    },
    Internal(&'static str),
}

/// One partition's input rows, collected under the job's memory pool.
struct Collected {
    batches: Vec<RecordBatch>,
    reservation: datafusion::execution::memory_pool::MemoryReservation,
}

/// Runs the input plan, then the mapper once per unit, and builds `mapped`.
pub(crate) async fn map_units(
    sandbox: &Sandbox,
    input: &InputAnalysis,
    plan: LogicalPlan,
    mapper: Arc<Mapper>,
    spec: &WasmSpec,
    limits: WasmLimits,
    schema: SchemaRef,
) -> Result<Mapped, (MapError, ExecStats)> {
    let started = Instant::now();
    let wall_ms = sandbox.limits().wall_ms;
    let no_stats = ExecStats::default();
    // The rows come out in whatever partitions the plan has; `partition_by_unit` below puts
    // each unit's rows together. (A hash repartition in the plan is not enough: DataFusion's
    // optimizer drops one that no operator above needs, and then a unit whose rows straddle
    // two byte ranges of a file came out in two partitions and was mapped twice, on part of
    // its rows each time.)
    let (collected, stats) = sandbox
        .execute_folded(
            plan,
            |reservation| Collected {
                batches: Vec::new(),
                reservation,
            },
            |state: &mut Collected, batch: &RecordBatch| {
                state
                    .reservation
                    .try_grow(batch.get_array_memory_size())
                    .map_err(|_| FoldError::Memory)?;
                state.batches.push(batch.clone());
                Ok(())
            },
        )
        .await
        .map_err(|e| (MapError::Sandbox(e), no_stats))?;

    let remaining_ms = wall_ms.saturating_sub(started.elapsed().as_millis() as u64);
    let deadline = Instant::now() + std::time::Duration::from_millis(remaining_ms);
    let input = input.clone();
    let spec = spec.clone();
    let partitions = sandbox.partitions();
    let outcome = tokio::task::spawn_blocking(move || {
        // The rows stay reserved until every unit is mapped.
        let (parts, _reservations): (Vec<_>, Vec<_>) = collected
            .into_iter()
            .map(|c| (c.batches, c.reservation))
            .unzip();
        let grouped = partition_by_unit(parts, &input, partitions)?;
        map_partitions(grouped, &input, &mapper, &spec, &limits, &schema, deadline)
    })
    .await
    .map_err(|_| (MapError::Internal("the mapping task failed"), stats))?;
    let parts = outcome.map_err(|e| {
        (
            match e {
                MapError::TimedOut { .. } => MapError::TimedOut { limit_ms: wall_ms },
                other => other,
            },
            stats,
        )
    })?;
    let mut batches = Vec::with_capacity(parts.len());
    let (mut fuel_used, mut units, mut fallbacks) = (0u64, 0u64, 0u64);
    for part in parts {
        fuel_used = fuel_used.saturating_add(part.fuel_used);
        units += part.units;
        fallbacks += part.fallbacks;
        batches.push(part.batch);
    }
    let schema = batches
        .first()
        .map(RecordBatch::schema)
        .ok_or((MapError::Internal("no partition"), stats))?;
    let batch = compute::concat_batches(&schema, &batches)
        .map_err(|_| (MapError::Internal("assembling the mapped table"), stats))?;
    Ok(Mapped {
        batch,
        fuel_used,
        units,
        fallbacks,
        stats,
    })
}

/// Puts every unit's rows in one partition: row `r` goes to partition `hash(unit) mod
/// partitions`, whichever input partition it came in. Each input partition is split on a thread
/// of its own. Rows without a unit go to the first partition (the mapping skips them).
///
/// Which partition a unit lands in changes only which thread maps it, never its output.
pub(crate) fn partition_by_unit(
    parts: Vec<Vec<RecordBatch>>,
    input: &InputAnalysis,
    partitions: usize,
) -> Result<Vec<Vec<RecordBatch>>, MapError> {
    let partitions = partitions.max(1);
    let split = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|batches| {
                scope.spawn(move || -> Result<Vec<Vec<RecordBatch>>, MapError> {
                    let mut out = vec![Vec::new(); partitions];
                    for batch in batches {
                        let targets = unit_partitions(batch.column(input.unit_index), partitions)?;
                        for (target, rows) in targets.into_iter().enumerate() {
                            if rows.is_empty() {
                                continue;
                            }
                            let rows = datafusion::arrow::array::UInt32Array::from(rows);
                            out[target].push(compute::take_record_batch(&batch, &rows).map_err(
                                |_| MapError::Internal("putting each unit's rows together"),
                            )?);
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or(Err(MapError::Internal("a grouping thread failed")))
            })
            .collect::<Result<Vec<_>, MapError>>()
    })?;
    let mut grouped = vec![Vec::new(); partitions];
    for part in split {
        for (target, batches) in part.into_iter().enumerate() {
            grouped[target].extend(batches);
        }
    }
    Ok(grouped)
}

/// For each partition, the rows of `unit` that go to it (see [`partition_by_unit`]).
fn unit_partitions(unit: &ArrayRef, partitions: usize) -> Result<Vec<Vec<u32>>, MapError> {
    /// A 64-bit mix (SplitMix64's finalizer): nearby ids land in different partitions.
    fn mix(mut x: u64) -> u64 {
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    /// FNV-1a over the bytes of a text unit.
    fn fnv(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
    }
    let fail = |_| MapError::Internal("putting each unit's rows together");
    let mut rows = vec![Vec::new(); partitions];
    let mut place = |row: usize, hash: Option<u64>| {
        let target = hash.map_or(0, |h| (mix(h) % partitions as u64) as usize);
        rows[target].push(row as u32);
    };
    if unit.data_type().is_integer() {
        let ints = compute::cast(unit, &DataType::Int64).map_err(fail)?;
        let ints = ints.as_primitive::<Int64Type>();
        for row in 0..ints.len() {
            place(row, ints.is_valid(row).then(|| ints.value(row) as u64));
        }
    } else {
        let text = compute::cast(unit, &DataType::Utf8).map_err(fail)?;
        let text = text.as_string::<i32>();
        for row in 0..text.len() {
            place(
                row,
                text.is_valid(row).then(|| fnv(text.value(row).as_bytes())),
            );
        }
    }
    Ok(rows)
}

/// Rows a partition must have for its thread to get a mapper of its own
/// ([`Mapper::replica`]): below it, compiling the module again (tens of milliseconds) costs
/// more than sharing one engine with the other threads.
pub const REPLICA_ROWS_MIN: usize = 50_000;

/// Maps every partition of `grouped` (see [`partition_by_unit`]) with [`map_partition`], one
/// thread each. The first thread uses `mapper`; each other thread with at least
/// [`REPLICA_ROWS_MIN`] rows uses a replica of it on an engine of its own, so the threads do
/// not contend for one engine's pool of instances (where no replica can be made, it shares).
pub(crate) fn map_partitions(
    grouped: Vec<Vec<RecordBatch>>,
    input: &InputAnalysis,
    mapper: &Mapper,
    spec: &WasmSpec,
    limits: &WasmLimits,
    schema: &SchemaRef,
    deadline: Instant,
) -> Result<Vec<MappedPartition>, MapError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = grouped
            .into_iter()
            .enumerate()
            .map(|(index, batches)| {
                let schema = schema.clone();
                scope.spawn(move || {
                    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                    let replica = (index > 0 && rows >= REPLICA_ROWS_MIN)
                        .then(|| mapper.replica().ok())
                        .flatten();
                    let mapper = replica.as_ref().unwrap_or(mapper);
                    map_partition(batches, input, mapper, spec, limits, schema, deadline)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or(Err(MapError::Internal("a mapping thread failed")))
            })
            .collect::<Result<Vec<_>, MapError>>()
    })
}

/// One partition's share of `mapped`.
#[derive(Debug)]
pub struct MappedPartition {
    /// The partition's rows of `mapped`.
    pub batch: RecordBatch,
    /// Fuel its calls burned.
    pub fuel_used: u64,
    /// Units mapped, and how many of them fell back.
    pub units: u64,
    pub fallbacks: u64,
}

/// An input column as it travels in the payload.
enum Payload {
    Int(datafusion::arrow::array::Int64Array),
    Float(datafusion::arrow::array::Float64Array),
    Text(datafusion::arrow::array::StringArray),
}

fn to_payload(array: &ArrayRef) -> Result<Payload, MapError> {
    let fail = |_| MapError::Internal("converting the mapper's input");
    let kind = payload_kind(array.data_type())
        .ok_or(MapError::Internal("an input column of an unsupported type"))?;
    Ok(match kind {
        Kind::Int64 => Payload::Int(
            compute::cast(array, &DataType::Int64)
                .map_err(fail)?
                .as_primitive::<Int64Type>()
                .clone(),
        ),
        Kind::Float64 => Payload::Float(
            compute::cast(array, &DataType::Float64)
                .map_err(fail)?
                .as_primitive::<Float64Type>()
                .clone(),
        ),
        Kind::Utf8 => Payload::Text(
            compute::cast(array, &DataType::Utf8)
                .map_err(fail)?
                .as_string::<i32>()
                .clone(),
        ),
    })
}

/// The output builders of `mapped`.
struct Builders {
    unit_int: Int64Builder,
    unit_text: StringBuilder,
    columns: Vec<ColumnBuilder>,
}

enum ColumnBuilder {
    Int(Int64Builder),
    Float(Float64Builder),
    Text(StringBuilder),
}

/// Maps one partition of the input query's rows (every row of a unit is in the same
/// partition): sorts them by unit, runs the mapper once per unit on a fresh instance, checks
/// each output against the declared schema, and builds the partition's rows of `mapped`
/// (`schema`, see [`mapped_schema`]). The job runs it on one thread per partition; it is
/// public so that a benchmark can time the mapping stage apart from the input query.
///
/// Stops with [`MapError::TimedOut`] when `deadline` passes between two units.
pub(crate) fn map_partition(
    batches: Vec<RecordBatch>,
    input: &InputAnalysis,
    mapper: &Mapper,
    spec: &WasmSpec,
    limits: &WasmLimits,
    schema: SchemaRef,
    deadline: Instant,
) -> Result<MappedPartition, MapError> {
    let (unit_index, unit_is_integer) = (input.unit_index, input.unit_is_integer);
    let mut builders = Builders {
        unit_int: Int64Builder::new(),
        unit_text: StringBuilder::new(),
        columns: spec
            .output
            .iter()
            .map(|c| match c.kind {
                OutputType::Integer => ColumnBuilder::Int(Int64Builder::new()),
                OutputType::Float => ColumnBuilder::Float(Float64Builder::new()),
                OutputType::Text => ColumnBuilder::Text(StringBuilder::new()),
            })
            .collect(),
    };
    let mut part = MappedPartition {
        batch: RecordBatch::new_empty(schema.clone()),
        fuel_used: 0,
        units: 0,
        fallbacks: 0,
    };
    if let Some(first) = batches.first() {
        let input = compute::concat_batches(&first.schema(), &batches)
            .map_err(|_| MapError::Internal("gathering a partition's rows"))?;
        drop(batches);
        // Rows of one unit next to each other; rows without a unit first, then skipped.
        let order = compute::sort_to_indices(
            input.column(unit_index),
            Some(SortOptions {
                descending: false,
                nulls_first: true,
            }),
            None,
        )
        .map_err(|_| MapError::Internal("ordering rows by unit"))?;
        let input = compute::take_record_batch(&input, &order)
            .map_err(|_| MapError::Internal("ordering rows by unit"))?;
        let names: Vec<String> = input
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let columns = input
            .columns()
            .iter()
            .map(to_payload)
            .collect::<Result<Vec<_>, _>>()?;
        let unit = &columns[unit_index];
        let n = input.num_rows();
        let mut start = 0;
        while start < n {
            let mut end = start + 1;
            while end < n && same_unit(unit, start, end) {
                end += 1;
            }
            if is_null(unit, start) {
                start = end;
                continue;
            }
            if Instant::now() > deadline {
                return Err(MapError::TimedOut { limit_ms: 0 });
            }
            let payload = encode_rows(&names, &columns, start, end);
            let run = mapper.run_unit(&payload, limits);
            part.fuel_used = part.fuel_used.saturating_add(run.fuel);
            part.units += 1;
            let rows = run.output.and_then(|bytes| checked_rows(&bytes, spec));
            let rows = match rows {
                Ok(rows) => rows,
                Err(_) => {
                    part.fallbacks += 1;
                    fallback_rows(spec)
                }
            };
            for row in rows {
                match unit {
                    Payload::Int(a) if unit_is_integer => {
                        builders.unit_int.append_value(a.value(start))
                    }
                    Payload::Text(a) => builders.unit_text.append_value(a.value(start)),
                    Payload::Int(a) => builders.unit_text.append_value(a.value(start).to_string()),
                    Payload::Float(a) => {
                        builders.unit_text.append_value(a.value(start).to_string())
                    }
                }
                for (builder, value) in builders.columns.iter_mut().zip(row) {
                    match (builder, value) {
                        (ColumnBuilder::Int(b), Cell::Int(v)) => b.append_value(v),
                        (ColumnBuilder::Float(b), Cell::Float(v)) => b.append_value(v),
                        (ColumnBuilder::Text(b), Cell::Text(v)) => b.append_value(v),
                        (ColumnBuilder::Int(b), _) => b.append_null(),
                        (ColumnBuilder::Float(b), _) => b.append_null(),
                        (ColumnBuilder::Text(b), _) => b.append_null(),
                    }
                }
            }
            start = end;
        }
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(1 + spec.output.len());
    arrays.push(if unit_is_integer {
        Arc::new(builders.unit_int.finish())
    } else {
        Arc::new(builders.unit_text.finish())
    });
    for builder in builders.columns {
        arrays.push(match builder {
            ColumnBuilder::Int(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Text(mut b) => Arc::new(b.finish()),
        });
    }
    part.batch = RecordBatch::try_new(schema, arrays)
        .map_err(|_| MapError::Internal("assembling the mapped rows"))?;
    Ok(part)
}

fn is_null(column: &Payload, row: usize) -> bool {
    match column {
        Payload::Int(a) => a.is_null(row),
        Payload::Float(a) => a.is_null(row),
        Payload::Text(a) => a.is_null(row),
    }
}

fn same_unit(column: &Payload, a: usize, b: usize) -> bool {
    if is_null(column, a) || is_null(column, b) {
        return is_null(column, a) && is_null(column, b);
    }
    match column {
        Payload::Int(x) => x.value(a) == x.value(b),
        Payload::Float(x) => x.value(a) == x.value(b),
        Payload::Text(x) => x.value(a) == x.value(b),
    }
}

/// Rows `start..end` of the input as one payload batch.
fn encode_rows(names: &[String], columns: &[Payload], start: usize, end: usize) -> Vec<u8> {
    let mut writer =
        BatchWriter::with_capacity(end - start, 64 + 16 * columns.len() * (end - start));
    for (name, column) in names.iter().zip(columns) {
        match column {
            Payload::Int(a) => {
                writer.int64_iter(
                    name,
                    (start..end).map(|i| a.is_valid(i).then(|| a.value(i))),
                );
            }
            Payload::Float(a) => {
                writer.float64_iter(
                    name,
                    (start..end).map(|i| a.is_valid(i).then(|| a.value(i))),
                );
            }
            Payload::Text(a) => {
                writer.utf8_iter(
                    name,
                    (start..end).map(|i| a.is_valid(i).then(|| a.value(i))),
                );
            }
        }
    }
    writer.finish()
}

/// One checked output value.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

/// Parses a mapper's output and fits it to the declared schema: exactly the declared columns
/// with their types; at most `max_rows_per_unit` rows (the first ones); numbers clamped to
/// their bounds (NaN becomes null); values outside a key set become null.
fn checked_rows(bytes: &[u8], spec: &WasmSpec) -> Result<Vec<Vec<Cell>>, UnitFailure> {
    let batch = BatchView::parse(bytes).map_err(|_| UnitFailure::NoOutput)?;
    if batch.columns().len() != spec.output.len() {
        return Err(UnitFailure::NoOutput);
    }
    let mut views = Vec::with_capacity(spec.output.len());
    for declared in &spec.output {
        let view = batch.column(&declared.name).ok_or(UnitFailure::NoOutput)?;
        let fits = matches!(
            (declared.kind, view.kind()),
            (OutputType::Integer, Kind::Int64)
                | (OutputType::Float, Kind::Float64 | Kind::Int64)
                | (OutputType::Text, Kind::Utf8)
        );
        if !fits {
            return Err(UnitFailure::NoOutput);
        }
        views.push(view);
    }
    let n = batch.num_rows().min(spec.max_rows_per_unit as usize);
    let mut rows = Vec::with_capacity(n);
    for r in 0..n {
        let mut row = Vec::with_capacity(spec.output.len());
        for (declared, view) in spec.output.iter().zip(&views) {
            // Whether a value may be kept: any value, or one of the declared keys. Checked on
            // the borrowed text, so only a kept value is copied.
            let keyed = |text: &str| match &declared.keys {
                Some(keys) => keys.iter().any(|k| k == text),
                None => true,
            };
            let cell = match declared.kind {
                OutputType::Integer => match (view.int64(r), declared.bounds) {
                    (None, _) => Cell::Null,
                    (Some(v), Some([lo, hi])) => {
                        Cell::Int(v.clamp(lo.ceil() as i64, hi.floor() as i64))
                    }
                    (Some(v), None) if keyed(&v.to_string()) => Cell::Int(v),
                    (Some(_), None) => Cell::Null,
                },
                OutputType::Float => match (view.float64(r), declared.bounds) {
                    (Some(v), Some([lo, hi])) if !v.is_nan() => Cell::Float(v.clamp(lo, hi)),
                    _ => Cell::Null,
                },
                OutputType::Text => view
                    .utf8(r)
                    .filter(|t| keyed(t))
                    .map_or(Cell::Null, |t| Cell::Text(t.to_string())),
            };
            row.push(cell);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// What a failed unit contributes.
fn fallback_rows(spec: &WasmSpec) -> Vec<Vec<Cell>> {
    match spec.fallback {
        Fallback::None => Vec::new(),
        Fallback::Default => vec![
            spec.output
                .iter()
                .map(|c| match (c.kind, &c.default) {
                    (OutputType::Integer, Some(v)) => v.as_i64().map_or(Cell::Null, Cell::Int),
                    (OutputType::Float, Some(v)) => v.as_f64().map_or(Cell::Null, Cell::Float),
                    (OutputType::Text, Some(v)) => {
                        v.as_str().map_or(Cell::Null, |s| Cell::Text(s.to_string()))
                    }
                    _ => Cell::Null,
                })
                .collect(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_sdk::template::OutputSpec;

    fn spec() -> WasmSpec {
        WasmSpec {
            module_blake3: "0".repeat(64),
            input_sql: String::new(),
            output: vec![
                OutputSpec {
                    name: "score".into(),
                    kind: OutputType::Float,
                    bounds: Some([0.0, 100.0]),
                    keys: None,
                    default: Some(serde_json::json!(50.0)),
                },
                OutputSpec {
                    name: "band".into(),
                    kind: OutputType::Text,
                    bounds: None,
                    keys: Some(vec!["low".into(), "high".into()]),
                    default: Some(serde_json::json!("low")),
                },
                OutputSpec {
                    name: "n".into(),
                    kind: OutputType::Integer,
                    bounds: Some([0.0, 3.0]),
                    keys: None,
                    default: Some(serde_json::json!(0)),
                },
            ],
            max_rows_per_unit: 2,
            fallback: Fallback::Default,
        }
    }

    #[test]
    fn every_unit_lands_in_one_partition_whatever_partition_it_came_in() {
        use datafusion::arrow::array::{Int64Array, StringArray};
        let schema = Arc::new(Schema::new(vec![
            Field::new("person_id", DataType::Int64, true),
            Field::new("city", DataType::Utf8, true),
        ]));
        let batch = |ids: &[Option<i64>]| {
            let cities: Vec<&str> = ids.iter().map(|_| "Taiyuan").collect();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids.to_vec())),
                    Arc::new(StringArray::from(cities)),
                ],
            )
            .expect("batch")
        };
        // Units 1..=40 each have rows in both input partitions (as when a unit's rows straddle
        // two byte ranges of a file); one row has no unit.
        let ids: Vec<Option<i64>> = (1..=40).map(Some).collect();
        let mut with_null = ids.clone();
        with_null.push(None);
        let parts = vec![vec![batch(&ids)], vec![batch(&with_null), batch(&ids)]];
        let input = InputAnalysis {
            unit: Column::new_unqualified("person_id"),
            unit_index: 0,
            unit_kind: "person".into(),
            unit_is_integer: true,
            tables: vec![],
        };
        let grouped = partition_by_unit(parts, &input, 3).expect("grouped");
        assert_eq!(grouped.len(), 3);
        let mut seen = BTreeMap::new();
        let mut rows = 0;
        for (index, batches) in grouped.iter().enumerate() {
            for b in batches {
                let units = b.column(0).as_primitive::<Int64Type>();
                for row in 0..b.num_rows() {
                    rows += 1;
                    if units.is_valid(row) {
                        let first = *seen.entry(units.value(row)).or_insert(index);
                        assert_eq!(
                            first,
                            index,
                            "unit {} is in two partitions",
                            units.value(row)
                        );
                    }
                }
            }
        }
        assert_eq!(rows, 121, "no row is lost or doubled");
        assert_eq!(seen.len(), 40);
        // The units spread over more than one partition.
        let used: std::collections::BTreeSet<_> = seen.values().collect();
        assert!(used.len() > 1);
    }

    #[test]
    fn output_is_clamped_keyed_and_capped() {
        let mut writer = BatchWriter::new(3);
        writer
            .float64("score", &[Some(1e9), Some(f64::NAN), Some(5.0)])
            .utf8("band", &[Some("high"), Some("a stolen id: 4217"), None])
            .int64("n", &[Some(-5), Some(2), Some(99)]);
        let rows = checked_rows(&writer.finish(), &spec()).expect("fits the schema");
        // Two rows kept of three; values clamped, NaN and unknown keys null.
        assert_eq!(
            rows,
            vec![
                vec![Cell::Float(100.0), Cell::Text("high".into()), Cell::Int(0)],
                vec![Cell::Null, Cell::Null, Cell::Int(2)],
            ]
        );
    }

    #[test]
    fn output_of_another_shape_is_a_failure_and_falls_back() {
        let mut writer = BatchWriter::new(1);
        writer.float64("score", &[Some(1.0)]);
        assert!(checked_rows(&writer.finish(), &spec()).is_err());
        let mut writer = BatchWriter::new(1);
        writer
            .utf8("score", &[Some("1")])
            .utf8("band", &[Some("low")])
            .int64("n", &[Some(1)]);
        assert!(checked_rows(&writer.finish(), &spec()).is_err());
        assert!(checked_rows(b"VCB1 not a batch", &spec()).is_err());
        assert_eq!(
            fallback_rows(&spec()),
            vec![vec![
                Cell::Float(50.0),
                Cell::Text("low".into()),
                Cell::Int(0)
            ]]
        );
        let none = WasmSpec {
            fallback: Fallback::None,
            ..spec()
        };
        assert!(fallback_rows(&none).is_empty());
    }
}
