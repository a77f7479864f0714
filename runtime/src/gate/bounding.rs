//! Gate step 3: contribution bounding per privacy unit.
//!
//! The gate does not run the operator's aggregate. It runs its own two-stage plan:
//!
//! ```text
//! stage A (DataFusion, in the sandbox):
//!   SELECT unit, g1..gn, COUNT(*) AS n, SUM(clamp(v_j, lo_j, hi_j)) AS s_j, COUNT(v_j) AS c_j
//!   FROM <the operator's input: scans, WHERE, joins on the unit> GROUP BY unit, g1..gn
//! stage B (here, in trusted Rust): per unit keep at most `max_groups` groups, cap each
//!   (unit, group) contribution at `max_rows` rows, and add the capped contributions up per group.
//! ```
//!
//! # Proof of the bounds
//! Neighbouring datasets differ in all rows of one privacy unit `u`. After stage A, `u` owns
//! one row per group it appears in. Stage B keeps at most `max_groups` of them, chosen by a
//! hash of the group key alone, so which groups `u` keeps depends on `u`'s rows only and never
//! on other units (adding `u` changes nothing about any other unit's kept rows). For each kept
//! (u, g):
//! - its unit count contribution is exactly 1;
//! - its row count contribution is `min(n, max_rows)` ≤ `max_rows`;
//! - each value is clamped to `[lo, hi]` before summing, so `|s_j| ≤ c_j · B` with
//!   `B = max(|lo|, |hi|)`; the kept sum is `s_j · min(1, max_rows / c_j)` (as if only
//!   `max_rows` average rows were kept), so `|s_j'| ≤ max_rows · B`; its count is
//!   `min(c_j, max_rows)`.
//!
//! Hence, over the vector of all groups, one unit changes the unit counts by at most
//! `max_groups` (L1), row counts by at most `max_groups · max_rows`, and sums by at most
//! `max_groups · max_rows · B`. Those are the sensitivities `noise` calibrates to. A join on
//! the unit keeps every joined row owned by one unit, so the argument holds after joins too.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast, col, lit, when};

use super::analysis::{Analysis, MeasureKind};

/// Name prefix of the gate's internal columns; no operator column can clash with it because
/// the gate builds this plan itself from expressions, not names.
const UNIT: &str = "__veil_unit";
const ROWS: &str = "__veil_rows";

/// Memory stage B needs per stage-A row beyond the batches themselves, in bytes: at most one
/// entry per row in the per-unit group count (a 16-byte key and a count, padded to 32 bytes,
/// at hash-table load 7/8, plus a control byte), and the row-encoded group keys of one batch.
/// An estimate on the high side.
pub const BYTES_PER_STAGE_A_ROW: usize = 48;

/// Per-unit and per-group limits pinned by the template's approval.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_groups: u32,
    pub max_rows: u32,
}

/// One measure's bounded totals in one group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Total {
    /// Rows (COUNT) or non-null values.
    Count(i64),
    /// SUM over an integer column, with its non-null count (for AVG).
    IntSum { sum: i128, count: i64 },
    /// SUM over a float column, with its non-null count (for AVG).
    FloatSum { sum: f64, count: i64 },
    /// COUNT(DISTINCT unit): taken from the group's unit count.
    Units,
}

/// Bounded totals of one group.
#[derive(Debug, Clone)]
pub struct GroupTotals {
    /// Distinct units behind the group after bounding (the true count k-anonymity checks).
    pub units: i64,
    pub totals: Vec<Total>,
}

impl GroupTotals {
    /// Adds another shard's totals of the same group (shards hold disjoint units).
    fn merge(&mut self, other: &GroupTotals) {
        self.units += other.units;
        for (mine, theirs) in self.totals.iter_mut().zip(&other.totals) {
            match (mine, theirs) {
                (Total::Count(a), Total::Count(b)) => *a += b,
                (Total::IntSum { sum, count }, Total::IntSum { sum: s, count: c }) => {
                    *sum += s;
                    *count += c;
                }
                (Total::FloatSum { sum, count }, Total::FloatSum { sum: s, count: c }) => {
                    *sum += s;
                    *count += c;
                }
                _ => {}
            }
        }
    }
}

/// A group key in Arrow's row format (order-preserving bytes); empty when there is no GROUP BY.
pub type GroupKeyBytes = Box<[u8]>;

/// The result of stage B: every group that has at least one unit, keyed by its row-encoded
/// group key, plus the converter that decodes keys back into columns.
pub struct Bounded {
    pub converter: RowConverter,
    pub groups: HashMap<GroupKeyBytes, GroupTotals>,
    /// Group key types, in order.
    pub key_types: Vec<DataType>,
}

/// Builds the stage-A plan.
pub fn stage_a_plan(analysis: &Analysis) -> datafusion::error::Result<LogicalPlan> {
    let mut projected = vec![Expr::Column(analysis.unit.clone()).alias(UNIT)];
    let mut group_names = vec![col(UNIT)];
    for (i, group) in analysis.groups.iter().enumerate() {
        let name = format!("__veil_g{i}");
        projected.push(group.expr.clone().alias(&name));
        group_names.push(col(name));
    }
    let mut aggregates = vec![count(lit(1i64)).alias(ROWS)];
    for (j, measure) in analysis.measures.iter().enumerate() {
        let value = format!("__veil_v{j}");
        match &measure.kind {
            MeasureKind::CountUnits | MeasureKind::CountRows { of: None } => {}
            MeasureKind::CountRows { of: Some(expr) } => {
                projected.push(expr.clone().alias(&value));
                aggregates.push(count(col(&value)).alias(format!("__veil_c{j}")));
            }
            MeasureKind::Sum {
                value: expr,
                lo,
                hi,
                integer,
            }
            | MeasureKind::Avg {
                value: expr,
                lo,
                hi,
                integer,
            } => {
                projected.push(clamp(expr.clone(), *lo, *hi, *integer).alias(&value));
                aggregates.push(sum(col(&value)).alias(format!("__veil_s{j}")));
                aggregates.push(count(col(&value)).alias(format!("__veil_c{j}")));
            }
        }
    }
    LogicalPlanBuilder::from(analysis.input.clone())
        .project(projected)?
        .aggregate(group_names, aggregates)?
        .build()
}

/// `CASE WHEN v < lo THEN lo WHEN v > hi THEN hi ELSE v END`, in Int64 or Float64.
fn clamp(expr: Expr, lo: f64, hi: f64, integer: bool) -> Expr {
    if integer {
        let value = cast(expr, DataType::Int64);
        let (lo, hi) = (lo.ceil() as i64, hi.floor() as i64);
        when(value.clone().lt(lit(lo)), lit(lo))
            .when(value.clone().gt(lit(hi)), lit(hi))
            .otherwise(value)
            .unwrap_or_else(|_| lit(lo))
    } else {
        let value = cast(expr, DataType::Float64);
        when(value.clone().lt(lit(lo)), lit(lo))
            .when(value.clone().gt(lit(hi)), lit(hi))
            .otherwise(value)
            .unwrap_or_else(|_| lit(lo))
    }
}

/// A unit's identity in stage B, in 16 bytes: an integer unit with the top bit set, or the
/// first 127 bits of the BLAKE3 digest of a text unit (top bit clear), so the two kinds never
/// meet. Two text units colliding in 127 bits is not a practical concern.
type UnitKey = u128;

const INTEGER_UNIT: u128 = 1 << 127;

/// The unit keys of one stage-A batch; `None` for a null unit (such rows belong to no one
/// and are dropped).
fn unit_keys(array: &ArrayRef) -> Result<Vec<Option<UnitKey>>, &'static str> {
    if array.data_type().is_integer()
        && let Ok(ints) = datafusion::arrow::compute::cast(array, &DataType::Int64)
    {
        let ints = ints.as_primitive::<Int64Type>();
        return Ok((0..ints.len())
            .map(|i| {
                ints.is_valid(i)
                    .then(|| INTEGER_UNIT | u128::from(ints.value(i) as u64))
            })
            .collect());
    }
    let text = datafusion::arrow::compute::cast(array, &DataType::Utf8)
        .map_err(|_| "the privacy unit column has an unsupported type")?;
    let text = text.as_string::<i32>();
    Ok((0..text.len())
        .map(|i| {
            text.is_valid(i).then(|| {
                let digest = blake3::hash(text.value(i).as_bytes());
                let mut first = [0u8; 16];
                first.copy_from_slice(&digest.as_bytes()[..16]);
                u128::from_le_bytes(first) & !INTEGER_UNIT
            })
        })
        .collect())
}

/// A fast, non-cryptographic hasher (the FxHash mixing step) for stage B's maps. The keys are
/// in-domain values and group keys, never chosen by the operator, so hash flooding is not a
/// concern; speed is, because stage B touches every (unit, group).
#[derive(Debug, Default, Clone, Copy)]
struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_i64(&mut self, value: i64) {
        self.add(value as u64);
    }

    fn write_u128(&mut self, value: u128) {
        self.add(value as u64);
        self.add((value >> 64) as u64);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn write_isize(&mut self, value: isize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Stage A's group keys for one batch, row-encoded.
enum BatchKeys {
    /// No GROUP BY: every row is in the one group, whose key is empty.
    Single,
    Rows(datafusion::arrow::row::Rows),
}

impl BatchKeys {
    fn encode(
        converter: &RowConverter,
        batch: &RecordBatch,
        n_groups: usize,
    ) -> Result<Self, &'static str> {
        if n_groups == 0 {
            return Ok(Self::Single);
        }
        let key_columns: Vec<ArrayRef> =
            (0..n_groups).map(|i| batch.column(1 + i).clone()).collect();
        converter
            .convert_columns(&key_columns)
            .map(Self::Rows)
            .map_err(|_| "group keys of an unsupported type")
    }

    #[inline]
    fn key(&self, row: usize) -> &[u8] {
        match self {
            Self::Single => &[],
            Self::Rows(rows) => rows.row(row).data(),
        }
    }
}

/// Stage B over stage A's output batches.
///
/// The units are split into shards by a hash of the unit key, and each shard is bounded on its
/// own thread: a unit's rows all fall in one shard, so no state is shared, and the per-unit
/// maps are smaller. The shards' group totals are added up at the end.
pub fn bound(
    analysis: &Analysis,
    key_types: Vec<DataType>,
    batches: &[RecordBatch],
    limits: Limits,
) -> Result<Bounded, &'static str> {
    let converter = RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())
        .map_err(|_| "group keys of an unsupported type")?;
    let shards = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, BOUNDING_SHARDS_MAX);
    let results: Vec<Result<FastMap<GroupKeyBytes, GroupTotals>, &'static str>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..shards)
                .map(|shard| {
                    let converter = &converter;
                    scope.spawn(move || {
                        bound_shard(analysis, converter, batches, limits, shard, shards)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err("a bounding thread failed")))
                .collect()
        });
    let mut groups: HashMap<GroupKeyBytes, GroupTotals> = HashMap::new();
    for result in results {
        for (key, totals) in result? {
            match groups.get_mut(&key) {
                Some(existing) => existing.merge(&totals),
                None => {
                    groups.insert(key, totals);
                }
            }
        }
    }
    Ok(Bounded {
        converter,
        groups,
        key_types,
    })
}

/// Most threads stage B uses.
const BOUNDING_SHARDS_MAX: usize = 16;

/// The shard a unit belongs to.
#[inline]
fn shard_of(unit: UnitKey, shards: usize) -> usize {
    let folded = (unit as u64) ^ ((unit >> 64) as u64);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % shards
}

/// Stage B for the units of one shard.
fn bound_shard(
    analysis: &Analysis,
    converter: &RowConverter,
    batches: &[RecordBatch],
    limits: Limits,
    shard: usize,
    shards: usize,
) -> Result<FastMap<GroupKeyBytes, GroupTotals>, &'static str> {
    let n_groups = analysis.groups.len();
    let max_groups = limits.max_groups as usize;
    let max_rows = i64::from(limits.max_rows);

    // Pass 1: how many groups each unit appears in. Unit keys are recomputed in pass 2
    // rather than kept, to hold memory to the map alone.
    // Sized for one unit per stage-A row of the shard, so the map never rehashes.
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut group_count: FastMap<UnitKey, u32> =
        FastMap::with_capacity_and_hasher(rows / shards + 1, Default::default());
    for batch in batches {
        for key in unit_keys(batch.column(0))?.into_iter().flatten() {
            if shard_of(key, shards) == shard {
                *group_count.entry(key).or_insert(0) += 1;
            }
        }
    }

    // Pass 2: add up every (unit, group) of units within the limit; set aside those of units
    // over it.
    let mut groups: FastMap<GroupKeyBytes, GroupTotals> = FastMap::default();
    let add = |groups: &mut FastMap<GroupKeyBytes, GroupTotals>,
               key: &[u8],
               columns: &MeasureColumns<'_>,
               rows_in_group: i64,
               r: usize| {
        let totals = match groups.get_mut(key) {
            Some(totals) => totals,
            None => groups.entry(Box::from(key)).or_insert_with(|| GroupTotals {
                units: 0,
                totals: columns.empty(),
            }),
        };
        totals.units += 1;
        columns.add(r, rows_in_group.min(max_rows), max_rows, &mut totals.totals);
    };
    let hasher = std::collections::hash_map::RandomState::new();
    // Rows of units over the limit: (unit, hash of the group key, the key, batch, row). They
    // are rare (a unit in more groups than the approval allows), so their keys are copied.
    let mut over_limit: Vec<(UnitKey, u64, GroupKeyBytes, usize, usize)> = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let keys = BatchKeys::encode(converter, batch, n_groups)?;
        let n = batch
            .column_by_name(ROWS)
            .ok_or("stage A lost its row count")?
            .as_primitive::<Int64Type>();
        let columns = MeasureColumns::of(analysis, batch)?;
        for (r, unit) in unit_keys(batch.column(0))?.into_iter().enumerate() {
            let Some(unit) = unit else { continue };
            if shard_of(unit, shards) != shard {
                continue;
            }
            if group_count.get(&unit).copied().unwrap_or(0) as usize <= max_groups {
                add(&mut groups, keys.key(r), &columns, n.value(r), r);
            } else {
                // The hasher's keys are random per process: which groups a heavy unit keeps
                // cannot be predicted, and never depends on any other unit.
                let mut h = hasher.build_hasher();
                h.write(keys.key(r));
                over_limit.push((unit, h.finish(), Box::from(keys.key(r)), b, r));
            }
        }
    }
    drop(group_count);

    // Units over the limit keep the `max_groups` groups with the smallest hash of the key.
    over_limit.sort_unstable_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    let mut previous: Option<UnitKey> = None;
    let mut taken = 0usize;
    for (unit, _, key, b, r) in &over_limit {
        if previous != Some(*unit) {
            previous = Some(*unit);
            taken = 0;
        }
        if taken < max_groups {
            let batch = &batches[*b];
            let n = batch
                .column_by_name(ROWS)
                .ok_or("stage A lost its row count")?
                .as_primitive::<Int64Type>();
            let columns = MeasureColumns::of(analysis, batch)?;
            add(&mut groups, key, &columns, n.value(*r), *r);
            taken += 1;
        }
    }
    Ok(groups)
}

/// Stage A's measure columns in one batch.
struct MeasureColumns<'a> {
    kinds: Vec<ColumnKind<'a>>,
}

enum ColumnKind<'a> {
    Units,
    Rows,
    NonNull(&'a datafusion::arrow::array::Int64Array),
    IntSum(
        &'a datafusion::arrow::array::Int64Array,
        &'a datafusion::arrow::array::Int64Array,
    ),
    FloatSum(
        &'a datafusion::arrow::array::Float64Array,
        &'a datafusion::arrow::array::Int64Array,
    ),
}

impl<'a> MeasureColumns<'a> {
    fn of(analysis: &Analysis, batch: &'a RecordBatch) -> Result<Self, &'static str> {
        let int = |name: String| {
            batch
                .column_by_name(&name)
                .and_then(|c| c.as_primitive_opt::<Int64Type>())
                .ok_or("stage A lost a measure column")
        };
        let mut kinds = Vec::with_capacity(analysis.measures.len());
        for (j, measure) in analysis.measures.iter().enumerate() {
            kinds.push(match &measure.kind {
                MeasureKind::CountUnits => ColumnKind::Units,
                MeasureKind::CountRows { of: None } => ColumnKind::Rows,
                MeasureKind::CountRows { of: Some(_) } => {
                    ColumnKind::NonNull(int(format!("__veil_c{j}"))?)
                }
                MeasureKind::Sum { integer: true, .. } | MeasureKind::Avg { integer: true, .. } => {
                    ColumnKind::IntSum(int(format!("__veil_s{j}"))?, int(format!("__veil_c{j}"))?)
                }
                MeasureKind::Sum { .. } | MeasureKind::Avg { .. } => ColumnKind::FloatSum(
                    batch
                        .column_by_name(&format!("__veil_s{j}"))
                        .and_then(|c| {
                            c.as_primitive_opt::<datafusion::arrow::datatypes::Float64Type>()
                        })
                        .ok_or("stage A lost a measure column")?,
                    int(format!("__veil_c{j}"))?,
                ),
            });
        }
        Ok(Self { kinds })
    }

    fn empty(&self) -> Vec<Total> {
        self.kinds
            .iter()
            .map(|kind| match kind {
                ColumnKind::Units => Total::Units,
                ColumnKind::Rows | ColumnKind::NonNull(_) => Total::Count(0),
                ColumnKind::IntSum(..) => Total::IntSum { sum: 0, count: 0 },
                ColumnKind::FloatSum(..) => Total::FloatSum { sum: 0.0, count: 0 },
            })
            .collect()
    }

    /// Adds one (unit, group)'s capped contribution.
    fn add(&self, r: usize, rows: i64, max_rows: i64, totals: &mut [Total]) {
        for (kind, total) in self.kinds.iter().zip(totals.iter_mut()) {
            match (kind, total) {
                (ColumnKind::Rows, Total::Count(t)) => *t += rows,
                (ColumnKind::NonNull(c), Total::Count(t)) => *t += c.value(r).min(max_rows),
                (ColumnKind::IntSum(s, c), Total::IntSum { sum, count }) => {
                    let n = c.value(r);
                    let s = if s.is_valid(r) {
                        i128::from(s.value(r))
                    } else {
                        0
                    };
                    // Scaling toward zero keeps |s'| ≤ max_rows · B (see the module proof).
                    let s = if n > max_rows {
                        s * i128::from(max_rows) / i128::from(n)
                    } else {
                        s
                    };
                    *sum += s;
                    *count += n.min(max_rows);
                }
                (ColumnKind::FloatSum(s, c), Total::FloatSum { sum, count }) => {
                    let n = c.value(r);
                    let s = if s.is_valid(r) { s.value(r) } else { 0.0 };
                    let s = if n > max_rows {
                        s * (max_rows as f64 / n as f64)
                    } else {
                        s
                    };
                    *sum += s;
                    *count += n.min(max_rows);
                }
                _ => {}
            }
        }
    }
}

/// Decodes row-encoded group keys back into Arrow columns.
pub fn decode_keys(
    converter: &RowConverter,
    n_groups: usize,
    keys: &[&GroupKeyBytes],
) -> Result<Vec<ArrayRef>, &'static str> {
    if n_groups == 0 {
        return Ok(Vec::new());
    }
    let parser = converter.parser();
    converter
        .convert_rows(keys.iter().map(|k| parser.parse(k)))
        .map_err(|_| "decoding group keys")
}

/// Encodes the cartesian product of public key sets (strings from the policy) as group keys
/// of the given types.
pub fn encode_public_keys(
    converter: &RowConverter,
    key_types: &[DataType],
    key_sets: &[Vec<String>],
) -> Result<Vec<GroupKeyBytes>, &'static str> {
    if key_sets.is_empty() {
        // No group keys: exactly one group, which always exists.
        return Ok(vec![GroupKeyBytes::default()]);
    }
    let mut combos: Vec<Vec<&str>> = vec![Vec::new()];
    for set in key_sets {
        let mut next = Vec::with_capacity(combos.len() * set.len());
        for combo in &combos {
            for key in set {
                let mut extended = combo.clone();
                extended.push(key.as_str());
                next.push(extended);
            }
        }
        combos = next;
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(key_sets.len());
    for (i, data_type) in key_types.iter().enumerate() {
        let text: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(
            combos.iter().map(|c| c[i]).collect::<Vec<_>>(),
        ));
        let typed = datafusion::arrow::compute::cast(&text, data_type)
            .map_err(|_| "a public key set does not fit its column's type")?;
        columns.push(typed);
    }
    let rows = converter
        .convert_columns(&columns)
        .map_err(|_| "encoding public keys")?;
    Ok((0..rows.num_rows())
        .map(|i| Box::from(rows.row(i).as_ref()))
        .collect())
}
