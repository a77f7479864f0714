//! WASM jobs: the mapping stage between the input SQL and the release gate.
//!
//! ```text
//! input SQL (sandbox, grant's tables) ──► rows hash-partitioned by privacy unit
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

use crate::sandbox::wasm::{Mapper, UnitFailure, WasmLimits};
use crate::sandbox::{ExecStats, FoldError, Sandbox, SandboxError};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
};
use datafusion::arrow::compute::{self, SortOptions};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use datafusion::common::Column;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, Partitioning};
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
        },
    );
    for column in &spec.output {
        let policy = match (&column.keys, column.bounds) {
            (Some(keys), _) => ColumnPolicy {
                role: Role::Quasi,
                bounds: None,
                keys: Some(keys.clone()),
            },
            (None, bounds) => ColumnPolicy {
                role: Role::Sensitive,
                bounds,
                keys: None,
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
/// Shortest deadline a unit's call is given, in milliseconds (two ticks of the epoch clock, so
/// a unit always gets at least one full millisecond).
pub const UNIT_WALL_MS_MIN: u64 = 2;

/// The per-unit limits of a job whose input tables hold `rows_bound` rows in all (their
/// registered sizes, an upper bound on the number of units).
///
/// Whether a job passes its wall limit must not depend on one person: a mapper that loops for
/// one unit only would otherwise turn that unit's presence into a time-out. So the unit's
/// deadline is derived from data-independent figures — `rows_bound` units, all in one
/// partition (hashing may put them there), each running to its deadline, must still fit in
/// [`MAPPING_WALL_SHARE_PERCENT`] of the wall limit. A unit that hits its deadline contributes
/// the fallback, which changes that unit's rows only. A job whose tables are too large for
/// even [`UNIT_WALL_MS_MIN`] per unit is refused before its budget is reserved.
pub fn unit_limits(approval: &Terms, rows_bound: u64) -> Result<WasmLimits, Refusal> {
    let mut limits = approval.wasm_limits();
    let wall_ms = approval.limits().wall_ms;
    let budget_ms = wall_ms / 100 * MAPPING_WALL_SHARE_PERCENT;
    let per_unit_ms = budget_ms / rows_bound.max(1);
    if per_unit_ms < UNIT_WALL_MS_MIN {
        let needed_seconds = rows_bound
            .saturating_mul(UNIT_WALL_MS_MIN)
            .saturating_mul(100)
            .div_ceil(MAPPING_WALL_SHARE_PERCENT)
            .div_ceil(1000);
        return Err(Refusal::one(
            Rule::ResourcesLimit,
            format!(
                "the mapper's input tables hold {rows_bound} rows; mapping that many units at \
                 {UNIT_WALL_MS_MIN} ms each does not fit in {MAPPING_WALL_SHARE_PERCENT}% of \
                 the approved wall limit of {} s; ask the bureau to approve --wall-seconds \
                 {needed_seconds} or more",
                wall_ms / 1000
            ),
        ));
    }
    limits.unit_wall_ms = limits.unit_wall_ms.min(per_unit_ms);
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
    // All rows of a unit land in one partition.
    let plan = LogicalPlanBuilder::from(plan)
        .repartition(Partitioning::Hash(
            vec![Expr::Column(input.unit.clone())],
            sandbox.partitions(),
        ))
        .and_then(LogicalPlanBuilder::build)
        .map_err(|_| (MapError::Internal("planning the mapper's input"), no_stats))?;
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
    let unit_index = input.unit_index;
    let unit_is_integer = input.unit_is_integer;
    let spec = spec.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = collected
                .into_iter()
                .map(|partition| {
                    let mapper = mapper.clone();
                    let spec = &spec;
                    let schema = schema.clone();
                    scope.spawn(move || {
                        map_partition(
                            partition,
                            unit_index,
                            unit_is_integer,
                            &mapper,
                            spec,
                            &limits,
                            schema,
                            deadline,
                        )
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

/// One partition's share of `mapped`.
struct Part {
    batch: RecordBatch,
    fuel_used: u64,
    units: u64,
    fallbacks: u64,
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

#[allow(clippy::too_many_arguments)]
fn map_partition(
    collected: Collected,
    unit_index: usize,
    unit_is_integer: bool,
    mapper: &Mapper,
    spec: &WasmSpec,
    limits: &WasmLimits,
    schema: SchemaRef,
    deadline: Instant,
) -> Result<Part, MapError> {
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
    let mut part = Part {
        batch: RecordBatch::new_empty(schema.clone()),
        fuel_used: 0,
        units: 0,
        fallbacks: 0,
    };
    if let Some(first) = collected.batches.first() {
        let input = compute::concat_batches(&first.schema(), &collected.batches)
            .map_err(|_| MapError::Internal("gathering a partition's rows"))?;
        drop(collected.batches);
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
            let keyed = |text: String| match &declared.keys {
                Some(keys) if keys.contains(&text) => Some(text),
                Some(_) => None,
                None => Some(text),
            };
            let cell = match declared.kind {
                OutputType::Integer => match (view.int64(r), declared.bounds) {
                    (None, _) => Cell::Null,
                    (Some(v), Some([lo, hi])) => {
                        Cell::Int(v.clamp(lo.ceil() as i64, hi.floor() as i64))
                    }
                    (Some(v), None) => keyed(v.to_string()).map_or(Cell::Null, |_| Cell::Int(v)),
                },
                OutputType::Float => match (view.float64(r), declared.bounds) {
                    (Some(v), Some([lo, hi])) if !v.is_nan() => Cell::Float(v.clamp(lo, hi)),
                    _ => Cell::Null,
                },
                OutputType::Text => view
                    .utf8(r)
                    .and_then(|t| keyed(t.to_string()))
                    .map_or(Cell::Null, Cell::Text),
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
