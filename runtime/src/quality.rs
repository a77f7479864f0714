//! The data-quality report computed when a dataset is registered: what in the data does not
//! fit its policy, for the bureau to decide on before any operator uses it.
//!
//! A policy checks types and roles; only the values show whether the data is what the bureau
//! thinks it is. A typo in a key set (`Taiyaun`) silently drops the largest city from every
//! product grouped by `city`; a row without a privacy unit belongs to nobody, so no
//! contribution bound holds for it. The report says, over every row of the converted file:
//!
//! - per quasi-identifier column with a key set: the values outside it, with their counts and
//!   the nearest key by edit distance, and the keys no row has;
//! - per bounded column: how many values lie below and above the bounds (every sum clamps them);
//! - nulls per column;
//! - rows without a privacy unit (null, or text that is empty or blank), and rows per unit
//!   (min, median, 99th percentile, max — what `--max-rows` at approval is chosen against);
//! - per column that can be a group key (role quasi or public, text or integer): how many
//!   distinct values one unit has in it (a null is one value, as it is one group), with the
//!   same four figures — what `--max-groups` is chosen against (`crate::contribution`).
//!
//! [`QualityReport::blocking`] names what refuses a registration unless the bureau accepts it
//! knowingly: a row without a unit, and values outside a key set.
//!
//! **Who sees it.** The report holds values from inside the domain (the values outside a key
//! set). It is the bureau's: it is stored with the dataset in `dataset_quality` and shown by
//! `veil dataset show`, and no operator- or buyer-facing view includes it.
//!
//! **Memory.** Everything is computed by DataFusion over the Parquet file, streamed: one
//! aggregate pass for nulls, bounds and blank units, one group-by per keyed column (state:
//! its distinct values), one group-by over the units (state: one count per unit) whose
//! result is reduced to a histogram of counts, and per groupable column one group-by over
//! (unit, value) pairs (state: one entry per distinct pair, at most one per row) reduced the
//! same way. No column's values are collected.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;
use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::DFSchema;
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, sum};
use datafusion::prelude::{
    DataFrame, Expr, ParquetReadOptions, SessionConfig, SessionContext, btrim, cast, col, ident,
    lit,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use veil_gate::policy::{Policy, Role};

use crate::csv_input::shown;
use crate::error::{Error, Result};

/// Values outside a key set kept per column, the most frequent first.
pub const OUTSIDE_VALUES_KEPT_MAX: usize = 20;
/// Keys without rows kept per column, in the key set's order.
pub const KEYS_WITHOUT_ROWS_KEPT_MAX: usize = 50;
/// Characters of a value kept in the report; longer values are cut with `…`.
pub const VALUE_KEPT_CHARS_MAX: usize = 200;
/// Characters compared when looking for the nearest key: the edit distance costs the product
/// of the two lengths, and a value longer than this is no typo of a key anyway.
pub const EDIT_DISTANCE_CHARS_MAX: usize = 64;
/// Values outside a key set named in a refusal, per column.
const VALUES_IN_MESSAGE_MAX: usize = 10;
/// Threads the check runs on at most.
const THREADS_MAX: usize = 4;
/// Milliseconds between two calls of [`compute`]'s `tick` while the check runs.
pub const TICK_MS: u64 = 100;

/// What registration found in the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    /// Rows checked: every row of the registered file.
    pub rows: u64,
    /// Every column with at least one null, in the file's order.
    pub nulls: Vec<ColumnNulls>,
    /// Every column with a key set, in the file's order.
    pub key_sets: Vec<KeySetCheck>,
    /// Every numeric column with bounds, in the file's order.
    pub bounds: Vec<BoundsCheck>,
    /// The privacy unit column.
    pub unit: UnitCheck,
    /// Distinct values per unit in every column that can be a group key (role quasi or
    /// public, text or integer type, not the unit itself), in the file's order. Empty in a
    /// report stored before Veil computed it.
    #[serde(default)]
    pub values_per_unit: Vec<ValuesPerUnit>,
    /// True when the bureau registered the data with its blocking issues, knowingly
    /// (`--accept-quality-issues`).
    pub issues_accepted: bool,
}

/// Nulls in one column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnNulls {
    pub column: String,
    pub nulls: u64,
}

/// One keyed column's values against its key set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySetCheck {
    pub column: String,
    /// Rows whose value (not null) is outside the key set.
    pub rows_outside: u64,
    /// Distinct values outside the key set.
    pub distinct_outside: u64,
    /// The most frequent of them (at most [`OUTSIDE_VALUES_KEPT_MAX`]), most rows first.
    pub outside: Vec<OutsideValue>,
    /// Keys of the set no row has, in the set's order (at most
    /// [`KEYS_WITHOUT_ROWS_KEPT_MAX`]); a misspelt key shows up here too.
    pub keys_without_rows: Vec<String>,
    /// How many keys no row has, all of them.
    pub keys_without_rows_count: u64,
}

/// A value outside a key set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsideValue {
    /// The value as text (cut at [`VALUE_KEPT_CHARS_MAX`] characters).
    pub value: String,
    pub rows: u64,
    /// The key with the smallest edit distance (the first in the set's order on a tie).
    pub nearest_key: String,
    /// Characters inserted, deleted or replaced to turn the value into the nearest key.
    pub distance: u32,
}

/// One bounded column's values against its bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundsCheck {
    pub column: String,
    pub lo: f64,
    pub hi: f64,
    /// Rows with a value below `lo`, raised to `lo` in every sum.
    pub below: u64,
    /// Rows with a value above `hi` (or NaN), lowered to `hi` in every sum.
    pub above: u64,
}

/// The privacy unit column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitCheck {
    pub column: String,
    /// Rows whose unit is null.
    pub nulls: u64,
    /// Rows whose unit is text that is empty or only spaces.
    pub blanks: u64,
    /// Distinct units among the other rows.
    pub units: u64,
    /// Rows per unit, over the units; absent when no row has a unit.
    pub rows_per_unit: Option<RowsPerUnit>,
}

/// How many rows one unit has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowsPerUnit {
    pub min: u64,
    /// The lower median.
    pub median: u64,
    /// 99% of the units have at most this many rows.
    pub p99: u64,
    pub max: u64,
}

/// How many distinct values one unit has in a column that can be a group key, over the units
/// that have rows (a null is one value: it makes a group of its own). A product grouped by
/// the column puts a unit in that many groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValuesPerUnit {
    pub column: String,
    pub min: u64,
    /// The lower median.
    pub median: u64,
    /// 99% of the units have at most this many values.
    pub p99: u64,
    pub max: u64,
}

impl QualityReport {
    /// The distinct values per unit of `column`, if the report has them.
    pub fn values_per_unit(&self, column: &str) -> Option<&ValuesPerUnit> {
        self.values_per_unit.iter().find(|v| v.column == column)
    }

    /// What refuses the registration unless the bureau accepts it: one line per problem,
    /// naming the column, the values (the most frequent), their counts and the nearest keys.
    pub fn blocking(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let unit = &self.unit;
        if unit.nulls + unit.blanks > 0 {
            problems.push(format!(
                "privacy unit `{}`: {} row(s) name no unit ({} null, {} empty or blank); every row must say whom it is about — fill the unit in or drop those rows",
                shown(&unit.column),
                unit.nulls + unit.blanks,
                unit.nulls,
                unit.blanks
            ));
        }
        for check in &self.key_sets {
            if check.rows_outside == 0 {
                continue;
            }
            let mut values: Vec<String> = check
                .outside
                .iter()
                .take(VALUES_IN_MESSAGE_MAX)
                .map(|v| {
                    format!(
                        "`{}` × {} (nearest key `{}`)",
                        shown(&v.value),
                        v.rows,
                        shown(&v.nearest_key)
                    )
                })
                .collect();
            let named = values.len() as u64;
            if check.distinct_outside > named {
                values.push(format!("and {} more", check.distinct_outside - named));
            }
            problems.push(format!(
                "column `{}`: {} value(s) outside its key set, in {} row(s): {}; products grouped by `{}` leave these rows out — correct the key set in the policy or the values in the data",
                shown(&check.column),
                check.distinct_outside,
                check.rows_outside,
                values.join(", "),
                shown(&check.column),
            ));
        }
        problems
    }

    /// What registration notes without refusing: values the bounds clamp, nulls.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for check in &self.bounds {
            if check.below + check.above > 0 {
                notes.push(format!(
                    "column `{}`: {} value(s) below and {} above the bounds [{}, {}] are clamped in every sum",
                    shown(&check.column),
                    check.below,
                    check.above,
                    veil_gate::policy::show_number(check.lo),
                    veil_gate::policy::show_number(check.hi)
                ));
            }
        }
        if !self.nulls.is_empty() {
            let columns: Vec<String> = self
                .nulls
                .iter()
                .map(|n| format!("`{}` {}", shown(&n.column), n.nulls))
                .collect();
            notes.push(format!("nulls: {}", columns.join(", ")));
        }
        notes
    }
}

impl fmt::Display for QualityReport {
    /// The whole report for people, one finding per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "data quality at registration ({} rows checked){}",
            self.rows,
            if self.issues_accepted {
                "; the bureau registered it with the issues below accepted"
            } else {
                ""
            }
        )?;
        let unit = &self.unit;
        write!(
            f,
            "  privacy unit `{}`: {} units; {} row(s) without a unit ({} null, {} empty or blank)",
            shown(&unit.column),
            unit.units,
            unit.nulls + unit.blanks,
            unit.nulls,
            unit.blanks
        )?;
        match unit.rows_per_unit {
            Some(r) => writeln!(
                f,
                "; rows per unit: min {}, median {}, 99th percentile {}, max {}",
                r.min, r.median, r.p99, r.max
            )?,
            None => writeln!(f)?,
        }
        if !self.values_per_unit.is_empty() {
            writeln!(
                f,
                "  distinct values per unit, in columns that can be group keys (min / median / 99th percentile / max; `--max-groups` is chosen against them):"
            )?;
            for v in &self.values_per_unit {
                writeln!(
                    f,
                    "    `{}`: {} / {} / {} / {}",
                    shown(&v.column),
                    v.min,
                    v.median,
                    v.p99,
                    v.max
                )?;
            }
        }
        for check in &self.key_sets {
            if check.rows_outside == 0 {
                write!(
                    f,
                    "  key set of `{}`: every value is in it",
                    shown(&check.column)
                )?;
            } else {
                write!(
                    f,
                    "  key set of `{}`: {} value(s) outside it, in {} row(s)",
                    shown(&check.column),
                    check.distinct_outside,
                    check.rows_outside
                )?;
            }
            if check.keys_without_rows_count > 0 {
                let keys: Vec<String> = check
                    .keys_without_rows
                    .iter()
                    .map(|k| format!("`{}`", shown(k)))
                    .collect();
                let more = check.keys_without_rows_count - keys.len() as u64;
                write!(
                    f,
                    "; keys no row has: {}{}",
                    keys.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                )?;
            }
            writeln!(f)?;
            for value in &check.outside {
                writeln!(
                    f,
                    "    `{}` × {}: nearest key `{}` ({} edit(s))",
                    shown(&value.value),
                    value.rows,
                    shown(&value.nearest_key),
                    value.distance
                )?;
            }
            let listed = check.outside.len() as u64;
            if check.distinct_outside > listed {
                writeln!(
                    f,
                    "    and {} more value(s)",
                    check.distinct_outside - listed
                )?;
            }
        }
        for check in &self.bounds {
            writeln!(
                f,
                "  bounds of `{}` [{}, {}]: {} value(s) below, {} above (clamped in every sum)",
                shown(&check.column),
                veil_gate::policy::show_number(check.lo),
                veil_gate::policy::show_number(check.hi),
                check.below,
                check.above
            )?;
        }
        if self.nulls.is_empty() {
            writeln!(f, "  nulls: none")?;
        } else {
            let columns: Vec<String> = self
                .nulls
                .iter()
                .map(|n| format!("`{}` {}", shown(&n.column), n.nulls))
                .collect();
            writeln!(f, "  nulls: {}", columns.join(", "))?;
        }
        Ok(())
    }
}

/// Computes the report over the Parquet file at `file` (a registered dataset's converted
/// data) under `policy`, whose check against the file's schema has passed.
///
/// The work runs on a thread and an async runtime of its own, so it may be called from any
/// context, inside another runtime too; the caller's thread waits, calling `tick` every
/// [`TICK_MS`] meanwhile (to show that it is alive).
pub fn compute(file: &Path, policy: &Policy, tick: &mut dyn FnMut()) -> Result<QualityReport> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(THREADS_MAX);
    std::thread::scope(|scope| {
        let check = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("veil-quality")
                .enable_all()
                .build()
                .map_err(|e| Error::internal(format!("starting the data-quality check: {e}")))?;
            runtime.block_on(compute_async(file, policy, threads))
        });
        while !check.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(TICK_MS));
            tick();
        }
        check.join().unwrap_or_else(|_| {
            Err(Error::internal(
                "computing the data-quality report: the check stopped unexpectedly",
            ))
        })
    })
}

/// A DataFusion error while checking the bureau's own converted file: the platform's fault.
fn df_error(error: DataFusionError) -> Error {
    Error::internal(format!("computing the data-quality report: {error}"))
}

async fn compute_async(file: &Path, policy: &Policy, threads: usize) -> Result<QualityReport> {
    let path = file
        .to_str()
        .ok_or_else(|| Error::internal("computing the data-quality report: a non-UTF-8 path"))?;
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(threads));
    let table = ctx
        .read_parquet(path, ParquetReadOptions::default())
        .await
        .map_err(df_error)?;
    let schema: DFSchema = table.schema().clone();
    let columns: Vec<(String, DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let unit_type = columns
        .iter()
        .find(|(name, _)| *name == policy.privacy_unit)
        .map(|(_, t)| t.clone())
        .ok_or_else(|| {
            Error::internal(
                "computing the data-quality report: the privacy unit is not in the file",
            )
        })?;
    let unit_is_text = is_text(&unit_type);

    // One pass: rows, non-null counts, values outside bounds, blank units.
    let bounded: Vec<(String, f64, f64)> = columns
        .iter()
        .filter(|(_, t)| t.is_numeric())
        .filter_map(|(name, _)| {
            let [lo, hi] = policy.column(name)?.bounds?;
            Some((name.clone(), lo, hi))
        })
        .collect();
    let mut aggregates = vec![count(lit(1)).alias("rows")];
    for (index, (name, _)) in columns.iter().enumerate() {
        aggregates.push(count(ident(name)).alias(format!("filled_{index}")));
    }
    for (index, (name, lo, hi)) in bounded.iter().enumerate() {
        let value = cast(ident(name), DataType::Float64);
        aggregates.push(
            sum(cast(value.clone().lt(lit(*lo)), DataType::Int64)).alias(format!("below_{index}")),
        );
        aggregates
            .push(sum(cast(value.gt(lit(*hi)), DataType::Int64)).alias(format!("above_{index}")));
    }
    if unit_is_text {
        aggregates
            .push(sum(cast(blank(&policy.privacy_unit), DataType::Int64)).alias("blank_units"));
    }
    let totals = table
        .clone()
        .aggregate(vec![], aggregates)
        .map_err(df_error)?
        .collect()
        .await
        .map_err(df_error)?;
    let row = OneRow(totals.first().ok_or_else(|| {
        Error::internal("computing the data-quality report: the totals have no row")
    })?);
    let rows = row.int("rows")?;
    let mut nulls = Vec::new();
    let mut unit_nulls = 0;
    for (index, (name, _)) in columns.iter().enumerate() {
        let missing = rows.saturating_sub(row.int(&format!("filled_{index}"))?);
        if *name == policy.privacy_unit {
            unit_nulls = missing;
        }
        if missing > 0 {
            nulls.push(ColumnNulls {
                column: name.clone(),
                nulls: missing,
            });
        }
    }
    let mut bounds = Vec::new();
    for (index, (name, lo, hi)) in bounded.iter().enumerate() {
        bounds.push(BoundsCheck {
            column: name.clone(),
            lo: *lo,
            hi: *hi,
            below: row.int(&format!("below_{index}"))?,
            above: row.int(&format!("above_{index}"))?,
        });
    }
    let blanks = if unit_is_text {
        row.int("blank_units")?
    } else {
        0
    };

    let mut key_sets = Vec::new();
    for (name, data_type) in &columns {
        if let Some(keys) = policy.column(name).and_then(|c| c.key_set()) {
            key_sets.push(check_key_set(&table, name, data_type, &keys).await?);
        }
    }

    // The columns a product can be grouped by, but the unit's own (one value per unit).
    let groupable: Vec<(String, bool)> = columns
        .iter()
        .filter(|(name, data_type)| {
            *name != policy.privacy_unit
                && (is_text(data_type) || data_type.is_integer())
                && policy
                    .column(name)
                    .is_some_and(|c| matches!(c.role, Role::Quasi | Role::Public))
        })
        .map(|(name, data_type)| (name.clone(), data_type.is_integer()))
        .collect();
    let (units, rows_per_unit, values_per_unit) =
        per_unit(&table, &policy.privacy_unit, unit_is_text, &groupable).await?;
    Ok(QualityReport {
        rows,
        nulls,
        key_sets,
        bounds,
        unit: UnitCheck {
            column: policy.privacy_unit.clone(),
            nulls: unit_nulls,
            blanks,
            units,
            rows_per_unit,
        },
        values_per_unit,
        issues_accepted: false,
    })
}

fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// True when a text column's value is empty or only spaces.
fn blank(column: &str) -> Expr {
    btrim(vec![cast(ident(column), DataType::Utf8)]).eq(lit(""))
}

/// The one row of an aggregate without groups, read by column name.
struct OneRow<'a>(&'a RecordBatch);

impl OneRow<'_> {
    /// A count or a sum of 0/1 values; a sum over no rows is null, which is 0 here.
    fn int(&self, name: &str) -> Result<u64> {
        let column = self.0.column_by_name(name).ok_or_else(|| {
            Error::internal(format!("computing the data-quality report: no `{name}`"))
        })?;
        let values = column.as_primitive_opt::<Int64Type>().ok_or_else(|| {
            Error::internal(format!(
                "computing the data-quality report: `{name}` is not an integer"
            ))
        })?;
        if values.is_empty() || values.is_null(0) {
            return Ok(0);
        }
        Ok(values.value(0).max(0) as u64)
    }
}

/// Runs `frame` and hands each output row's first two columns to `each`, batch by batch: a
/// group key (text, or null) and a count.
async fn for_each_count(frame: DataFrame, mut each: impl FnMut(Option<&str>, u64)) -> Result<()> {
    for_each_batch(frame, |batch| {
        let (Some(values), Some(counts)) = (
            batch.column(0).as_string_opt::<i32>(),
            batch.column(1).as_primitive_opt::<Int64Type>(),
        ) else {
            return Err(unexpected_types());
        };
        for index in 0..batch.num_rows() {
            let value = (!values.is_null(index)).then(|| values.value(index));
            each(value, counts.value(index).max(0) as u64);
        }
        Ok(())
    })
    .await
}

/// Runs `frame` and hands each output batch to `each`, as the stream yields it.
async fn for_each_batch(
    frame: DataFrame,
    mut each: impl FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    let mut stream = frame.execute_stream().await.map_err(df_error)?;
    while let Some(batch) = stream.next().await {
        each(&batch.map_err(df_error)?)?;
    }
    Ok(())
}

fn unexpected_types() -> Error {
    Error::internal("computing the data-quality report: a group-by answered unexpected types")
}

async fn check_key_set(
    table: &DataFrame,
    column: &str,
    data_type: &DataType,
    keys: &[String],
) -> Result<KeySetCheck> {
    // An integer column's values are compared as the integers the keys spell ("007" is 7).
    let canonical = |key: &str| -> String {
        if data_type.is_integer() {
            key.trim()
                .parse::<i64>()
                .map_or_else(|_| key.to_string(), |k| k.to_string())
        } else {
            key.to_string()
        }
    };
    let key_index: HashMap<String, usize> = keys
        .iter()
        .enumerate()
        .map(|(index, key)| (canonical(key), index))
        .collect();
    let mut key_rows = vec![0u64; keys.len()];
    let mut rows_outside = 0u64;
    let mut distinct_outside = 0u64;
    // The most frequent values outside: a min-heap of the kept ones, the least frequent (and
    // on a tie the greatest value) on top, so it is the one a more frequent value replaces.
    let mut kept: BinaryHeap<Reverse<(u64, Reverse<String>)>> = BinaryHeap::new();

    let frame = table
        .clone()
        .aggregate(
            vec![cast(ident(column), DataType::Utf8).alias("value")],
            vec![count(lit(1)).alias("rows")],
        )
        .map_err(df_error)?;
    for_each_count(frame, |value, rows| {
        let Some(value) = value else {
            return;
        };
        if let Some(&index) = key_index.get(value) {
            key_rows[index] += rows;
            return;
        }
        rows_outside += rows;
        distinct_outside += 1;
        kept.push(Reverse((rows, Reverse(cut(value)))));
        if kept.len() > OUTSIDE_VALUES_KEPT_MAX {
            kept.pop();
        }
    })
    .await?;

    let mut outside: Vec<OutsideValue> = kept
        .into_iter()
        .map(|Reverse((rows, Reverse(value)))| {
            let (nearest_key, distance) = nearest_key(&value, keys);
            OutsideValue {
                value,
                rows,
                nearest_key: nearest_key.to_string(),
                distance,
            }
        })
        .collect();
    outside.sort_by(|a, b| b.rows.cmp(&a.rows).then_with(|| a.value.cmp(&b.value)));
    let missing: Vec<&String> = keys
        .iter()
        .zip(&key_rows)
        .filter(|(_, rows)| **rows == 0)
        .map(|(key, _)| key)
        .collect();
    Ok(KeySetCheck {
        column: column.to_string(),
        rows_outside,
        distinct_outside,
        outside,
        keys_without_rows_count: missing.len() as u64,
        keys_without_rows: missing
            .into_iter()
            .take(KEYS_WITHOUT_ROWS_KEPT_MAX)
            .cloned()
            .collect(),
    })
}

/// The rows of `table` that name a unit (not null, and for a text unit not empty or blank).
fn named_rows(table: &DataFrame, unit: &str, unit_is_text: bool) -> Result<DataFrame> {
    let mut named = ident(unit).is_not_null();
    if unit_is_text {
        named = named.and(Expr::Not(Box::new(blank(unit))));
    }
    table.clone().filter(named).map_err(df_error)
}

/// Distinct units, rows per unit and, per column of `groupable` (name, integer type),
/// distinct values per unit, over the rows that name a unit (a null is one value, as it is
/// one group).
///
/// Two group-bys do it in the common case. One over the units counts each unit's rows and,
/// per integer column, its distinct values (DataFusion's grouped `COUNT(DISTINCT)`: one hash
/// set of (unit, value) for all units) and non-null values; its result is grouped again by
/// those figures, so only their distinct combinations come back, and they are folded into
/// one histogram (count → units) per figure. The other is over (unit, every text column):
/// when each unit has one combination, each text column has one value per unit, and with a
/// single text column the combinations are its values. Grouping columns are mostly one
/// value per unit (a city, a gender), so only when some unit has several combinations of
/// several text columns does each of them get a group-by of its own over (unit, value).
async fn per_unit(
    table: &DataFrame,
    unit: &str,
    unit_is_text: bool,
    groupable: &[(String, bool)],
) -> Result<(u64, Option<RowsPerUnit>, Vec<ValuesPerUnit>)> {
    const ROWS: &str = "__veil_rows";
    let integers: Vec<&str> = groupable
        .iter()
        .filter(|(_, integer)| *integer)
        .map(|(column, _)| column.as_str())
        .collect();
    let texts: Vec<&str> = groupable
        .iter()
        .filter(|(_, integer)| !*integer)
        .map(|(column, _)| column.as_str())
        .collect();
    let name = |what: &str, i: usize| format!("__veil_{what}_{i}");
    let mut aggregates = vec![count(lit(1)).alias(ROWS)];
    for (i, column) in integers.iter().enumerate() {
        aggregates.push(count(ident(*column)).alias(name("filled", i)));
        aggregates.push(count_distinct(ident(*column)).alias(name("distinct", i)));
    }
    let mut figures = vec![col(ROWS)];
    for i in 0..integers.len() {
        // Plus 1 when the unit has a null in the column: a group of its own.
        let null = cast(col(name("filled", i)).lt(col(ROWS)), DataType::Int64);
        figures.push((col(name("distinct", i)) + null).alias(name("values", i)));
    }
    let frame = named_rows(table, unit, unit_is_text)?
        .aggregate(vec![ident(unit)], aggregates)
        .map_err(df_error)?
        .aggregate(figures, vec![count(lit(1)).alias("__veil_units")])
        .map_err(df_error)?;
    // Histograms count → units: rows per unit, then one per integer column.
    let mut histograms: Vec<BTreeMap<u64, u64>> = vec![BTreeMap::new(); 1 + integers.len()];
    for_each_batch(frame, |batch| {
        let figures = (0..batch.num_columns())
            .map(|c| {
                batch
                    .column(c)
                    .as_primitive_opt::<Int64Type>()
                    .ok_or_else(unexpected_types)
            })
            .collect::<Result<Vec<_>>>()?;
        let Some((units, figures)) = figures.split_last() else {
            return Err(unexpected_types());
        };
        for row in 0..batch.num_rows() {
            let units = units.value(row).max(0) as u64;
            for (histogram, figure) in histograms.iter_mut().zip(figures) {
                *histogram
                    .entry(figure.value(row).max(0) as u64)
                    .or_default() += units;
            }
        }
        Ok(())
    })
    .await?;
    let mut histograms = histograms.into_iter();
    let (units, rows_per_unit) = summarize(&histograms.next().unwrap_or_default());
    let mut by_column: HashMap<&str, BTreeMap<u64, u64>> =
        integers.iter().copied().zip(histograms).collect();

    if !texts.is_empty() {
        let mut keys = vec![ident(unit)];
        keys.extend(texts.iter().map(|column| ident(*column)));
        let frame = named_rows(table, unit, unit_is_text)?
            .aggregate(keys, vec![])
            .map_err(df_error)?
            .aggregate(vec![ident(unit)], vec![count(lit(1)).alias("n")])
            .map_err(df_error)?;
        let combinations = histogram(frame).await?;
        if texts.len() == 1 || combinations.keys().all(|n| *n == 1) {
            // One text column: its values are the combinations. Several, and one combination
            // per unit: each has one value per unit.
            for column in &texts {
                by_column.insert(column, combinations.clone());
            }
        } else {
            for column in &texts {
                by_column.insert(
                    column,
                    pairs_per_unit(table, unit, unit_is_text, column).await?,
                );
            }
        }
    }

    let mut values_per_unit = Vec::with_capacity(groupable.len());
    for (column, _) in groupable {
        let histogram = by_column.remove(column.as_str()).unwrap_or_default();
        // A file whose every row lacks a unit has no unit to count values of.
        let spread = summarize(&histogram).1.unwrap_or(RowsPerUnit {
            min: 0,
            median: 0,
            p99: 0,
            max: 0,
        });
        values_per_unit.push(ValuesPerUnit {
            column: column.clone(),
            min: spread.min,
            median: spread.median,
            p99: spread.p99,
            max: spread.max,
        });
    }
    Ok((units, rows_per_unit, values_per_unit))
}

/// The histogram (distinct values → units) of `column`, over the rows that name a unit: the
/// distinct (unit, value) pairs — a null value is one, as in a GROUP BY — counted per unit.
async fn pairs_per_unit(
    table: &DataFrame,
    unit: &str,
    unit_is_text: bool,
    column: &str,
) -> Result<BTreeMap<u64, u64>> {
    let frame = named_rows(table, unit, unit_is_text)?
        .aggregate(vec![ident(unit), ident(column)], vec![])
        .map_err(df_error)?
        .aggregate(vec![ident(unit)], vec![count(lit(1)).alias("n")])
        .map_err(df_error)?;
    histogram(frame).await
}

/// Runs `per_unit` (one row per unit, its count in column `n`) and folds its counts into a
/// histogram count → units, grouped by DataFusion so only distinct counts come back.
async fn histogram(per_unit: DataFrame) -> Result<BTreeMap<u64, u64>> {
    let histogram_frame = per_unit
        .aggregate(vec![col("n")], vec![count(lit(1)).alias("units")])
        .map_err(df_error)?;
    let mut histogram: BTreeMap<u64, u64> = BTreeMap::new();
    for_each_batch(histogram_frame, |batch| {
        let (Some(rows), Some(units)) = (
            batch.column(0).as_primitive_opt::<Int64Type>(),
            batch.column(1).as_primitive_opt::<Int64Type>(),
        ) else {
            return Err(unexpected_types());
        };
        for index in 0..batch.num_rows() {
            *histogram
                .entry(rows.value(index).max(0) as u64)
                .or_default() += units.value(index).max(0) as u64;
        }
        Ok(())
    })
    .await?;
    Ok(histogram)
}

/// Units and rows per unit from a histogram rows → units.
fn summarize(histogram: &BTreeMap<u64, u64>) -> (u64, Option<RowsPerUnit>) {
    let units: u64 = histogram.values().sum();
    let (Some((&min, _)), Some((&max, _))) =
        (histogram.first_key_value(), histogram.last_key_value())
    else {
        return (0, None);
    };
    // The value at 1-based rank `rank` in the sorted list of per-unit counts.
    let at_rank = |rank: u64| {
        let mut seen = 0;
        for (&rows, &count) in histogram {
            seen += count;
            if seen >= rank {
                return rows;
            }
        }
        max
    };
    let median = at_rank(units.div_ceil(2));
    let p99 = at_rank((units * 99).div_ceil(100).max(1));
    (
        units,
        Some(RowsPerUnit {
            min,
            median,
            p99,
            max,
        }),
    )
}

/// A value cut to [`VALUE_KEPT_CHARS_MAX`] characters.
fn cut(value: &str) -> String {
    match value.char_indices().nth(VALUE_KEPT_CHARS_MAX) {
        Some((at, _)) => format!("{}…", &value[..at]),
        None => value.to_string(),
    }
}

/// The key nearest to `value` by edit distance, the first in `keys`' order on a tie.
/// `keys` is a policy's key set, never empty (the policy check refuses an empty one).
pub fn nearest_key<'k>(value: &str, keys: &'k [String]) -> (&'k str, u32) {
    let mut best: (&str, u32) = ("", u32::MAX);
    for key in keys {
        let distance = edit_distance(value, key);
        if distance < best.1 {
            best = (key, distance);
        }
    }
    best
}

/// The Levenshtein distance between `a` and `b`, over characters (so `太原` and `大原` are
/// one edit apart), comparing at most [`EDIT_DISTANCE_CHARS_MAX`] characters of each.
pub fn edit_distance(a: &str, b: &str) -> u32 {
    let a: Vec<char> = a.chars().take(EDIT_DISTANCE_CHARS_MAX).collect();
    let b: Vec<char> = b.chars().take(EDIT_DISTANCE_CHARS_MAX).collect();
    // One row of the dynamic programme at a time: `row[j]` is the distance between the
    // first i characters of `a` and the first j of `b`.
    let mut row: Vec<u32> = (0..=b.len() as u32).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i as u32 + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + u32::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::parquet::arrow::ArrowWriter;
    use std::sync::Arc;

    const POLICY: &str = r#"
provider = "Test provider"
classification_level = 2
sharing = "conditional"
acquired_on = "2026-10-01"
privacy_unit = "person_id"
unit_kind = "person"
[columns.person_id]
role = "identifier"
[columns.city]
role = "quasi"
keys = ["Taiyaun", "Datong", "Jinzhong"]
[columns.income]
role = "sensitive"
bounds = [0, 10000]
"#;

    /// Writes a Parquet file of (person_id, city, income) and checks it under `policy`.
    fn report_of(
        persons: Vec<Option<&str>>,
        cities: Vec<Option<&str>>,
        incomes: Vec<Option<f64>>,
        policy: &str,
    ) -> QualityReport {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("data.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new("person_id", DataType::Utf8, true),
            Field::new("city", DataType::Utf8, true),
            Field::new("income", DataType::Float64, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(persons)),
            Arc::new(StringArray::from(cities)),
            Arc::new(Float64Array::from(incomes)),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        let file = std::fs::File::create(&path).expect("file");
        let mut writer = ArrowWriter::try_new(file, schema, None).expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
        compute(&path, &Policy::parse(policy).expect("policy"), &mut || {}).expect("report")
    }

    #[test]
    fn finds_a_misspelt_key_with_its_nearest_key_and_the_rows_it_loses() {
        let report = report_of(
            vec![Some("1"), Some("1"), Some("2"), Some("3"), Some("4")],
            vec![
                Some("Taiyuan"),
                Some("Taiyuan"),
                Some("Taiyuan"),
                Some("Datong"),
                None,
            ],
            vec![Some(1.0), Some(2.0), Some(3.0), Some(4.0), Some(5.0)],
            POLICY,
        );
        let city = &report.key_sets[0];
        assert_eq!((city.rows_outside, city.distinct_outside), (3, 1));
        assert_eq!(
            city.outside,
            vec![OutsideValue {
                value: "Taiyuan".into(),
                rows: 3,
                nearest_key: "Taiyaun".into(),
                distance: 2,
            }]
        );
        assert_eq!(city.keys_without_rows, ["Taiyaun", "Jinzhong"]);
        let blocking = report.blocking();
        assert_eq!(blocking.len(), 1, "{blocking:?}");
        assert!(
            blocking[0].contains("`city`")
                && blocking[0].contains("`Taiyuan` × 3 (nearest key `Taiyaun`)"),
            "{blocking:?}"
        );
        // The null city is a null, not a value outside the key set.
        assert_eq!(
            report.nulls,
            vec![ColumnNulls {
                column: "city".into(),
                nulls: 1
            }]
        );
        assert_eq!(
            report.unit.rows_per_unit,
            Some(RowsPerUnit {
                min: 1,
                median: 1,
                p99: 2,
                max: 2
            })
        );
        assert_eq!(report.unit.units, 4);
    }

    #[test]
    fn a_row_without_a_unit_blocks_and_is_left_out_of_rows_per_unit() {
        let report = report_of(
            vec![Some("1"), None, Some("  "), Some("")],
            vec![Some("Datong"); 4],
            vec![Some(1.0); 4],
            POLICY,
        );
        assert_eq!((report.unit.nulls, report.unit.blanks), (1, 2));
        assert_eq!(report.unit.units, 1);
        let blocking = report.blocking();
        assert_eq!(blocking.len(), 1, "{blocking:?}");
        assert!(
            blocking[0].contains("privacy unit `person_id`: 3 row(s) name no unit"),
            "{blocking:?}"
        );
    }

    #[test]
    fn counts_values_outside_bounds_without_blocking() {
        let report = report_of(
            vec![Some("1"), Some("2"), Some("3"), Some("4")],
            vec![Some("Datong"); 4],
            vec![Some(-5.0), Some(20_000.0), Some(30_000.0), None],
            POLICY,
        );
        assert_eq!((report.bounds[0].below, report.bounds[0].above), (1, 2));
        assert!(report.blocking().is_empty(), "{:?}", report.blocking());
        let notes = report.notes().join("\n");
        assert!(notes.contains("1 value(s) below and 2 above"), "{notes}");
        assert!(notes.contains("`income` 1"), "{notes}");
        let shown = report.to_string();
        assert!(shown.contains("bounds of `income` [0, 10000]"), "{shown}");
    }

    #[test]
    fn keeps_the_most_frequent_values_outside_and_counts_all_of_them() {
        let cities: Vec<String> = (0..30).map(|i| format!("Town{i:02}")).collect();
        let mut values: Vec<Option<&str>> = cities.iter().map(|c| Some(c.as_str())).collect();
        values.extend([Some("Town29"), Some("Town29"), Some("Town07")]);
        let n = values.len();
        let persons: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let report = report_of(
            persons.iter().map(|p| Some(p.as_str())).collect(),
            values,
            vec![Some(1.0); n],
            POLICY,
        );
        let city = &report.key_sets[0];
        assert_eq!((city.distinct_outside, city.rows_outside), (30, 33));
        assert_eq!(city.outside.len(), OUTSIDE_VALUES_KEPT_MAX);
        assert_eq!(
            (city.outside[0].value.as_str(), city.outside[0].rows),
            ("Town29", 3)
        );
        assert_eq!(
            (city.outside[1].value.as_str(), city.outside[1].rows),
            ("Town07", 2)
        );
        // Among the values of one row each, the smallest are kept.
        assert_eq!(city.outside[2].value, "Town00");
        assert!(report.blocking()[0].contains("and 20 more"));
    }

    #[test]
    fn integer_keys_compare_as_integers() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("data.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new("person_id", DataType::Int64, true),
            Field::new("grade", DataType::Int64, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(Int64Array::from(vec![7, 7, 9])),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        let mut writer =
            ArrowWriter::try_new(std::fs::File::create(&path).expect("file"), schema, None)
                .expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
        let policy = POLICY
            .replace("[columns.city]", "[columns.grade]")
            .replace(r#"["Taiyaun", "Datong", "Jinzhong"]"#, r#"["007", "8"]"#)
            .replace(
                "[columns.income]\nrole = \"sensitive\"\nbounds = [0, 10000]\n",
                "",
            );
        let report =
            compute(&path, &Policy::parse(&policy).expect("policy"), &mut || {}).expect("report");
        let grade = &report.key_sets[0];
        assert_eq!((grade.rows_outside, grade.distinct_outside), (1, 1));
        assert_eq!(grade.outside[0].value, "9");
        assert_eq!(grade.keys_without_rows, ["8"]);
        assert_eq!(report.unit.blanks, 0);
    }

    #[test]
    fn edit_distance_counts_characters() {
        assert_eq!(edit_distance("Taiyuan", "Taiyaun"), 2);
        assert_eq!(edit_distance("太原", "大原"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let keys = vec!["Datong".to_string(), "Taiyuan".to_string()];
        assert_eq!(nearest_key("taiyuan", &keys), ("Taiyuan", 1));
        // A tie goes to the first key in the set's order.
        assert_eq!(nearest_key("xx", &keys).0, "Datong");
    }

    #[test]
    fn summarizes_rows_per_unit_from_the_histogram() {
        let histogram: BTreeMap<u64, u64> = [(1, 50), (2, 49), (40, 1)].into_iter().collect();
        let (units, rows) = summarize(&histogram);
        assert_eq!(units, 100);
        assert_eq!(
            rows,
            Some(RowsPerUnit {
                min: 1,
                median: 1,
                p99: 2,
                max: 40
            })
        );
        assert_eq!(summarize(&BTreeMap::new()), (0, None));
    }

    #[test]
    fn counts_distinct_values_per_unit_in_groupable_columns_a_null_as_one() {
        let report = report_of(
            vec![
                Some("1"),
                Some("1"),
                Some("1"),
                Some("2"),
                Some("3"),
                Some("3"),
                Some("4"),
                None,
            ],
            vec![
                Some("Datong"),
                Some("Datong"),
                Some("Taiyaun"),
                Some("Datong"),
                None,
                Some("Datong"),
                Some("Taiyaun"),
                Some("Jinzhong"),
            ],
            vec![Some(1.0); 8],
            POLICY,
        );
        // Units 1 and 3 have two values each (a null is one), units 2 and 4 one; the row
        // without a unit counts for no one. The identifier and the sensitive column have none.
        assert_eq!(
            report.values_per_unit,
            vec![ValuesPerUnit {
                column: "city".into(),
                min: 1,
                median: 1,
                p99: 2,
                max: 2,
            }]
        );
        assert_eq!(report.values_per_unit("city").map(|v| v.p99), Some(2));
        assert_eq!(report.values_per_unit("income"), None);
        let shown = report.to_string();
        assert!(shown.contains("`city`: 1 / 1 / 2 / 2"), "{shown}");
    }

    #[test]
    fn counts_distinct_integers_per_unit_and_a_null_as_one_more_value() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("data.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new("person_id", DataType::Int64, true),
            Field::new("year", DataType::Int64, true),
            Field::new("city", DataType::Utf8, true),
            Field::new("district", DataType::Utf8, true),
        ]));
        // Person 1: years 2023, 2024, 2024 and a null (three values); person 2: one year;
        // person 3: years 2023 and 2025. Each person has one city, person 3 also a null.
        // Person 1 has two districts, so (city, district) pairs are not one per person and
        // each text column is counted on its own.
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![1, 1, 1, 1, 2, 3, 3])),
            Arc::new(Int64Array::from(vec![
                Some(2023),
                Some(2024),
                Some(2024),
                None,
                Some(2025),
                Some(2023),
                Some(2025),
            ])),
            Arc::new(StringArray::from(vec![
                Some("Datong"),
                Some("Datong"),
                Some("Datong"),
                Some("Datong"),
                Some("Taiyaun"),
                Some("Jinzhong"),
                None,
            ])),
            Arc::new(StringArray::from(vec!["a", "a", "b", "b", "c", "d", "d"])),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        let mut writer =
            ArrowWriter::try_new(std::fs::File::create(&path).expect("file"), schema, None)
                .expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
        let policy = POLICY.replace(
            "[columns.income]\nrole = \"sensitive\"\nbounds = [0, 10000]\n",
            "[columns.year]\nrole = \"public\"\n[columns.district]\nrole = \"quasi\"\n",
        );
        let report =
            compute(&path, &Policy::parse(&policy).expect("policy"), &mut || {}).expect("report");
        let spread = |v: &ValuesPerUnit| (v.column.clone(), v.min, v.median, v.p99, v.max);
        let found: Vec<_> = report.values_per_unit.iter().map(spread).collect();
        assert_eq!(
            found,
            [
                ("year".to_string(), 1, 2, 3, 3),
                ("city".to_string(), 1, 1, 2, 2),
                ("district".to_string(), 1, 1, 2, 2),
            ]
        );
        assert_eq!(
            report.unit.rows_per_unit,
            Some(RowsPerUnit {
                min: 1,
                median: 2,
                p99: 4,
                max: 4
            })
        );
    }

    #[test]
    fn a_report_stored_before_values_per_unit_still_loads() {
        let report = report_of(
            vec![Some("1")],
            vec![Some("Datong")],
            vec![Some(1.0)],
            POLICY,
        );
        let mut json = serde_json::to_value(&report).expect("json");
        json.as_object_mut()
            .expect("an object")
            .remove("values_per_unit")
            .expect("the field is stored");
        let back: QualityReport = serde_json::from_value(json).expect("parse");
        assert!(back.values_per_unit.is_empty());
        assert!(!back.to_string().contains("distinct values per unit"));
    }

    #[test]
    fn the_report_survives_storage_as_json() {
        let report = report_of(vec![Some("1")], vec![Some("太原")], vec![Some(1.0)], POLICY);
        let json = serde_json::to_string(&report).expect("json");
        let back: QualityReport = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, report);
        assert!(report.to_string().contains("`太原` × 1"), "{report}");
    }
}
