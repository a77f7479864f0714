//! Gate step 3: contribution bounding per privacy unit.
//!
//! The gate does not run the operator's aggregate. It runs its own plan and folds the rows
//! itself, in one pass:
//!
//! ```text
//! in the sandbox (DataFusion):
//!   SELECT unit, g1..gn, clamp(v_j, lo_j, hi_j) … FROM <the operator's input: scans, WHERE,
//!   joins on the unit>, in whatever partitions the scan makes (not partitioned by unit)
//! here, one fold per partition:
//!   per unit it saw, at most `max_groups` slots of (group, rows, Σ clamped v_j, non-null count)
//! then `finish`, one thread per fold:
//!   a unit only one fold saw is counted from its slots; a unit several folds saw has its
//!   slots merged once (by the lowest-numbered fold that saw it)
//!   per group: units, capped rows, scaled sums
//! ```
//!
//! # Which groups a unit keeps
//! A unit in more than `max_groups` groups keeps the `max_groups` groups whose keys rank
//! lowest by (hash, key), with one random hash of the group key per job, shared by all folds.
//! Within a fold, the slots hold the lowest-ranked groups seen so far: a new group replaces
//! the slot with the highest rank if its own is lower. The highest kept rank only ever
//! decreases, so a group that was turned away or evicted can never come back, and a group
//! that is admitted has had every one of its rows in that fold counted. A fold's final slots
//! for a unit are therefore exactly the `max_groups` lowest-ranked groups among the unit's
//! groups in that fold.
//!
//! ## Merging folds
//! Let `G` be all of a unit's groups, `G_i` those fold `i` saw, `K_i` what fold `i` kept, and
//! `K` the `max_groups` lowest-ranked groups of `G` (the choice one fold over all rows would
//! make). A group `g` in `K` is among the `max_groups` lowest of `G`, so also among the
//! `max_groups` lowest of any `G_i` that holds it: every fold that saw `g` kept it, with all
//! of its rows there. So `K` ⊆ ∪ `K_i`, and as `K` is the lowest of all `G`, the `max_groups`
//! lowest-ranked groups of ∪ `K_i` are exactly `K`; for each of them, summing rows and
//! accumulators over the folds that kept it gives its counts over all the unit's rows. Groups
//! are matched across folds by key (each fold numbers its groups itself), and ranks agree
//! because the hash is the same. The merge therefore yields exactly the single-fold result,
//! whatever the partitioning — a choice that depends on that unit's rows alone, never on any
//! other unit.
//!
//! # Counting the units the bounds cut
//! A unit is *cut* when bounding changed what it adds: it has more than `max_groups` groups
//! (the groups beyond its kept ones are dropped), or one of its kept slots is capped — it has
//! more than `max_rows` rows there and a measure counts rows, or a measure has more than
//! `max_rows` non-null values there. [`Bounded::truncated_units`] counts the cut units, and it
//! is what one fold over all rows would count, whatever the partitioning:
//!
//! - *Within a fold*, `slot_for` flags a unit (in a spare bit of its table entry, [`CUT_BIT`])
//!   when a group of it is turned away or evicts another. Both happen exactly when the unit
//!   holds `max_groups` slots and a row of a group it has no slot for arrives; since a group
//!   that left never comes back, the unit then has `max_groups` + 1 groups in that fold's
//!   rows. Conversely, if it has more, the first row of its (`max_groups` + 1)-th group finds
//!   (no flag yet, so nothing left) `max_groups` slots full. The flag is set before the choice
//!   between turning away and evicting, so: *a fold flags a unit if and only if the unit has
//!   more than `max_groups` groups among that fold's rows.*
//! - *Across folds*, with `G`, `G_i`, `K_i` and `K` as above: if a fold flagged the unit,
//!   `|G| ≥ |G_i| > max_groups`. If none did, every fold kept every group it saw
//!   (`K_i = G_i`), so the merge holds `∪ K_i = G` and truncates exactly when
//!   `|G| > max_groups`. Hence "some fold flagged it, or the merge truncates" is exactly
//!   `|G| > max_groups` — for a unit only one fold saw, its flag alone.
//! - The caps are judged on the unit's final slots, which are `K` with every row of the unit
//!   counted (see above), as in one fold; the folds' partial counts are added before a cap
//!   is compared, so a slot whose rows are split over folds is judged on its total.
//! - Each cut unit is counted once: a unit several folds saw by its merge (in the
//!   lowest-numbered fold that saw it), a unit one fold saw by that fold — in the walk over
//!   its table if flagged, else in the walk over its slots at its first capped slot. A
//!   unit's chain runs to ever higher slot indices (new slots are appended, then linked at
//!   the chain's end; an eviction reuses a slot in place), so the walk passes an "already
//!   counted" mark on along the chain before it reaches the unit's later slots.
//!
//! Whether a unit is cut depends on its own rows and the job's group hash alone, never on
//! another unit, so adding or removing one unit moves the count by at most 1: a release of it
//! has sensitivity 1.
//!
//! # Proof of the bounds
//! Neighbouring datasets differ in all rows of one privacy unit `u`. After `finish`, `u` owns
//! at most `max_groups` slots (each fold keeps at most that many, and a merge keeps the
//! `max_groups` lowest), and nothing about other units' slots depends on `u` (each fold's
//! per-unit state is keyed by the unit, and a merge reads only that unit's slots). The caps
//! below apply once, to the merged slot: the folds' partial counts and sums of (u, g) are
//! added up first. For each slot (u, g) with `n` rows and, per measure, `c_j` non-null values
//! summing to `s_j`:
//! - its unit count contribution is exactly 1;
//! - its row count contribution is `min(n, max_rows)` ≤ `max_rows`;
//! - each value is clamped to `[lo, hi]` before summing, so `|s_j| ≤ c_j · B` with
//!   `B = max(|lo|, |hi|)` (integer sums saturate at the `i64` range, in a fold and in a
//!   merge, which only moves a partial sum toward zero: `|a ⊕ b| ≤ |a| + |b|`); the kept sum is `s_j · min(1, max_rows / c_j)` (as if only
//!   `max_rows` average rows were kept), so `|s_j'| ≤ max_rows · B`; its count is
//!   `min(c_j, max_rows)`.
//!
//! Hence, over the vector of all groups, one unit changes the unit counts by at most
//! `max_groups` (L1), row counts by at most `max_groups · max_rows`, and sums by at most
//! `max_groups · max_rows · B`. Those are the sensitivities `noise` calibrates to. A join on
//! the unit keeps every joined row owned by one unit, so the argument holds after joins too.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::sandbox::FoldError;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, lit, try_cast, when};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use crate::analysis::{Analysis, MeasureKind};
use crate::disclosure::{self, Largest};

/// Name of the unit column in the gate's plan.
const UNIT: &str = "__veil_unit";

/// Memory a fold grows its reservation by at a time, in bytes.
const FOLD_RESERVATION_STEP_BYTES: usize = 8 * 1024 * 1024;
/// Memory one unit may cost the fold's unit table beyond its slots, in bytes: an entry of at
/// most 24 bytes (a text unit's 16-byte key and its first slot) at a load of at least 3/8
/// (tables are sized for a load of 3/4, then rounded up to a power of two).
const UNIT_ENTRY_BYTES: usize = 64;
/// How many rows' units the fold reads from its unit table ahead of folding them.
const UNIT_TOUCH_ROWS: usize = 256;
/// Entries a unit table starts with at least.
const UNIT_TABLE_ENTRIES_MIN: usize = 16;
/// Words in a 4 KiB memory page.
const PAGE_WORDS: usize = 4096 / std::mem::size_of::<u64>();

/// Per-unit and per-group limits pinned by the template's approval.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_groups: u32,
    pub(crate) max_rows: u32,
}

/// One measure's bounded totals in one group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Total {
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
pub(crate) struct GroupTotals {
    /// Distinct units behind the group after bounding (the true count k-anonymity checks).
    pub(crate) units: i64,
    pub(crate) totals: Vec<Total>,
    /// Per measure with disclosure rules, in measure order, the group's largest per-unit
    /// contributions (`disclosure::Largest`); empty when no measure has rules.
    largest: Vec<Largest>,
}

impl GroupTotals {
    fn empty(kinds: &[SlotKind], largest: &[Largest]) -> Self {
        Self {
            largest: largest.to_vec(),
            units: 0,
            totals: kinds
                .iter()
                .map(|kind| match kind {
                    SlotKind::Units => Total::Units,
                    SlotKind::Rows | SlotKind::NonNull => Total::Count(0),
                    SlotKind::IntSum => Total::IntSum { sum: 0, count: 0 },
                    SlotKind::FloatSum => Total::FloatSum { sum: 0.0, count: 0 },
                })
                .collect(),
        }
    }

    /// Adds another share of the same group's totals (shares hold disjoint (unit, group) slots).
    fn merge(&mut self, other: &GroupTotals) {
        self.units += other.units;
        for (mine, theirs) in self.largest.iter_mut().zip(&other.largest) {
            mine.merge(theirs);
        }
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
pub(crate) type GroupKeyBytes = Box<[u8]>;

impl GroupTotals {
    /// The group's largest per-unit contributions to measure `measure`, largest first; empty
    /// when the measure has no disclosure rules.
    pub(crate) fn largest(&self, measure: usize) -> &[f64] {
        self.largest
            .iter()
            .find(|l| l.measure() == measure)
            .map_or(&[], |l| l.values())
    }
}

/// Every group that has at least one unit after bounding, keyed by its row-encoded group key,
/// plus the converter that decodes keys back into columns.
pub(crate) struct Bounded {
    pub(crate) converter: RowConverter,
    pub(crate) groups: HashMap<GroupKeyBytes, GroupTotals>,
    /// Group key types, in order.
    pub(crate) key_types: Vec<DataType>,
    /// Units whose contributions the bounds cut: more groups than `max_groups`, or a kept
    /// group where a cap on `max_rows` changed a total (see "Counting the units the bounds
    /// cut" in the module docs). A true count, the same whatever the partitioning, released
    /// only with noise (sensitivity 1).
    pub(crate) truncated_units: i64,
}

/// Builds the gate's plan: the operator's input, projected to the unit, the group keys and the
/// clamped values. It is not partitioned by unit: each fold takes whatever partition the scan
/// gives it, and [`finish`] merges a unit's slots across folds (see the module docs).
pub(crate) fn stage_plan(analysis: &Analysis) -> datafusion::error::Result<LogicalPlan> {
    let mut projected = vec![Expr::Column(analysis.unit.clone()).alias(UNIT)];
    for (i, group) in analysis.groups.iter().enumerate() {
        projected.push(group.expr.clone().alias(format!("__veil_g{i}")));
    }
    for (j, measure) in analysis.measures.iter().enumerate() {
        let name = format!("__veil_v{j}");
        match &measure.kind {
            MeasureKind::CountUnits | MeasureKind::CountRows { of: None } => {}
            MeasureKind::CountRows { of: Some(expr) } => projected.push(expr.clone().alias(name)),
            MeasureKind::Sum {
                value,
                lo,
                hi,
                integer,
                ..
            }
            | MeasureKind::Avg {
                value,
                lo,
                hi,
                integer,
                ..
            } => {
                projected.push(clamp(value.clone(), *lo, *hi, *integer).alias(name));
            }
        }
    }
    LogicalPlanBuilder::from(analysis.input.clone())
        .project(projected)?
        .build()
}

/// `CASE WHEN v < lo THEN lo WHEN v > hi THEN hi ELSE v END`, in Int64 or Float64.
fn clamp(expr: Expr, lo: f64, hi: f64, integer: bool) -> Expr {
    // TRY_CAST: a value that does not convert is NULL (not counted), never an error.
    if integer {
        let value = try_cast(expr, DataType::Int64);
        let (lo, hi) = (lo.ceil() as i64, hi.floor() as i64);
        when(value.clone().lt(lit(lo)), lit(lo))
            .when(value.clone().gt(lit(hi)), lit(hi))
            .otherwise(value)
            .unwrap_or_else(|_| lit(lo))
    } else {
        let value = try_cast(expr, DataType::Float64);
        when(value.clone().lt(lit(lo)), lit(lo))
            .when(value.clone().gt(lit(hi)), lit(hi))
            .otherwise(value)
            .unwrap_or_else(|_| lit(lo))
    }
}

/// The unit column's type in the gate's plan.
pub(crate) fn unit_type(plan: &LogicalPlan) -> DataType {
    plan.schema().field(0).data_type().clone()
}

/// The group key types of the gate's plan.
pub(crate) fn key_types(plan: &LogicalPlan, n_groups: usize) -> Vec<DataType> {
    (0..n_groups)
        .map(|i| plan.schema().field(1 + i).data_type().clone())
        .collect()
}

/// A unit's identity in the fold: an integer unit's 64 bits, or a text unit's 128 bits from
/// two XXH64 hashes of its text with different seeds. Two distinct units would have to collide
/// in both to be merged; the units are the data owner's, never chosen by the operator, so
/// an accidental collision is the only kind, at odds of about 2⁻¹²⁸ per pair — not a practical
/// concern, and a cryptographic hash (BLAKE3 before) cost more than the rest of the fold. A column holds one kind, so the two never meet; integer units get the smaller
/// key because they are the common case and the table is the fold's largest state.
trait UnitKey: Copy + Eq + Into<u128> {
    /// Words of a table entry: the key's, then one for its first slot.
    const WORDS: usize;
    fn hash(self) -> u64;
    fn to_words(self, entry: &mut [u64]);
    fn from_words(entry: &[u64]) -> Self;
    /// The batch's unit keys, with the unit column's nulls (rows that belong to no one).
    fn keys(array: &ArrayRef) -> Result<(Vec<Self>, Option<NullBuffer>), &'static str>;
    fn table(fold: &Fold) -> &UnitTable<Self>;
    fn table_mut(fold: &mut Fold) -> &mut UnitTable<Self>;
}

/// Seeds of the two XXH64 hashes that make a text unit's 128-bit key.
const TEXT_KEY_SEEDS: [u64; 2] = [0x7665_696c_5f75_6e31, 0x7665_696c_5f75_6e32];

/// The 128-bit keys of a column of text units (a null's key is never read). A row whose text
/// equals the row before's reuses its key: stored data often keeps a unit's rows together.
fn text_keys<'a>(texts: impl Iterator<Item = Option<&'a str>>) -> Vec<u128> {
    let mut keys = Vec::with_capacity(texts.size_hint().0);
    let mut previous: Option<(&str, u128)> = None;
    for text in texts {
        let key = match (text, previous) {
            (None, _) => 0,
            (Some(text), Some((before, key))) if before == text => key,
            (Some(text), _) => {
                let [low, high] =
                    TEXT_KEY_SEEDS.map(|seed| twox_hash::XxHash64::oneshot(seed, text.as_bytes()));
                let key = u128::from(low) | (u128::from(high) << 64);
                previous = Some((text, key));
                key
            }
        };
        keys.push(key);
    }
    keys
}

/// The finaliser of MurmurHash3: every input bit reaches the top bits, which pick the home
/// entry. Unit keys are in-domain values, never chosen by the operator, so a fixed mixing
/// function (no random seed) is enough; it also lets all folds lay out their tables alike.
#[inline]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl UnitKey for u64 {
    const WORDS: usize = 2;

    #[inline]
    fn hash(self) -> u64 {
        mix(self)
    }

    #[inline]
    fn to_words(self, entry: &mut [u64]) {
        entry[0] = self;
    }

    #[inline]
    fn from_words(entry: &[u64]) -> Self {
        entry[0]
    }

    fn keys(array: &ArrayRef) -> Result<(Vec<Self>, Option<NullBuffer>), &'static str> {
        let unsupported = "the privacy unit column has an unsupported type";
        // Unsigned units keep all 64 bits; signed ones are reinterpreted (a column has one
        // type, so a signed and an unsigned unit never share a table).
        let (keys, nulls) = if array.data_type().is_unsigned_integer() {
            let ints = datafusion::arrow::compute::cast(array, &DataType::UInt64)
                .map_err(|_| unsupported)?;
            let ints = ints.as_primitive::<UInt64Type>();
            (ints.values().to_vec(), ints.logical_nulls())
        } else {
            let ints = datafusion::arrow::compute::cast(array, &DataType::Int64)
                .map_err(|_| unsupported)?;
            let ints = ints.as_primitive::<Int64Type>();
            (
                ints.values().iter().map(|v| *v as u64).collect(),
                ints.logical_nulls(),
            )
        };
        Ok((keys, nulls))
    }

    fn table(fold: &Fold) -> &UnitTable<Self> {
        &fold.integer_units
    }

    fn table_mut(fold: &mut Fold) -> &mut UnitTable<Self> {
        &mut fold.integer_units
    }
}

impl UnitKey for u128 {
    const WORDS: usize = 3;

    #[inline]
    fn hash(self) -> u64 {
        mix(self as u64 ^ (self >> 64) as u64)
    }

    #[inline]
    fn to_words(self, entry: &mut [u64]) {
        entry[0] = self as u64;
        entry[1] = (self >> 64) as u64;
    }

    #[inline]
    fn from_words(entry: &[u64]) -> Self {
        u128::from(entry[0]) | (u128::from(entry[1]) << 64)
    }

    fn keys(array: &ArrayRef) -> Result<(Vec<Self>, Option<NullBuffer>), &'static str> {
        // The stored text types are read in place; anything else is cast to text first.
        match array.data_type() {
            DataType::Utf8View => {
                let text = array.as_string_view();
                Ok((text_keys(text.iter()), text.logical_nulls()))
            }
            DataType::Utf8 => {
                let text = array.as_string::<i32>();
                Ok((text_keys(text.iter()), text.logical_nulls()))
            }
            DataType::LargeUtf8 => {
                let text = array.as_string::<i64>();
                Ok((text_keys(text.iter()), text.logical_nulls()))
            }
            _ => {
                let text = datafusion::arrow::compute::cast(array, &DataType::Utf8)
                    .map_err(|_| "the privacy unit column has an unsupported type")?;
                let text = text.as_string::<i32>();
                Ok((text_keys(text.iter()), text.logical_nulls()))
            }
        }
    }

    fn table(fold: &Fold) -> &UnitTable<Self> {
        &fold.text_units
    }

    fn table_mut(fold: &mut Fold) -> &mut UnitTable<Self> {
        &mut fold.text_units
    }
}

/// The fold's map from unit to the unit's first slot: open addressing with linear probing in
/// one flat array of words. Compared with a general hash map, an entry is smaller (16 bytes
/// for an integer unit instead of 32 plus a control byte elsewhere), so a lookup of a unit
/// not yet seen — most lookups, on data stored in unit order — costs one cache miss rather
/// than two, and its home entry can be fetched ahead of time (see `touch`).
struct UnitTable<K> {
    /// `K::WORDS` words per entry: the key, then its first slot plus one (0: an empty entry,
    /// so a fresh table is zeroed memory; see [`written_zeroed_words`]) with [`CUT_BIT`] set
    /// once the fold turned one of the unit's groups away.
    words: Vec<u64>,
    /// 64 − log2(entries): a hash's top bits pick an entry's home.
    shift: u32,
    len: usize,
    key: std::marker::PhantomData<K>,
}

/// `len` zeroed words, each of their pages written once now. Fresh zeroed memory is mapped
/// lazily: a page first *read* (a lookup's probe) is mapped to the kernel's shared zero page,
/// and the write that follows copies it and flushes every other thread's TLB entry for it, an
/// interprocessor interrupt per page (measured: a fifth of a fresh job process's CPU time on
/// a 10M-row fold). A page first written is simply allocated.
fn written_zeroed_words(len: usize) -> Vec<u64> {
    let mut words = vec![0u64; len];
    for word in words.iter_mut().step_by(PAGE_WORDS) {
        // A store of a known zero into memory known to be zeroed would be optimised away.
        *word = std::hint::black_box(0);
    }
    words
}

/// The bit of a unit table entry's slot word that says the fold turned away or evicted one of
/// the unit's groups, i.e. the unit has more than `max_groups` groups in that fold. A slot
/// index plus one needs at most 33 bits, so the top bit is free: the flag costs no memory,
/// and reading a slot index with `as u32` drops it.
const CUT_BIT: u64 = 1 << 63;

/// What a fold's unit table holds for one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UnitEntry {
    /// The unit's first slot.
    first: u32,
    /// Whether the fold turned away or evicted one of the unit's groups ([`CUT_BIT`]).
    cut: bool,
}

impl UnitEntry {
    fn of_word(word: u64) -> Self {
        Self {
            // `as u32` keeps the 32 bits of the index, without the flag.
            first: (word - 1) as u32,
            cut: word & CUT_BIT != 0,
        }
    }
}

impl<K> Default for UnitTable<K> {
    fn default() -> Self {
        Self {
            words: Vec::new(),
            shift: 64,
            len: 0,
            key: std::marker::PhantomData,
        }
    }
}

impl<K: UnitKey> UnitTable<K> {
    /// A table that holds `units` units without growing.
    fn for_units(units: usize) -> Self {
        let entries = (units.saturating_mul(4) / 3 + 1)
            .next_power_of_two()
            .max(UNIT_TABLE_ENTRIES_MIN);
        Self {
            words: written_zeroed_words(entries * K::WORDS),
            shift: 64 - entries.trailing_zeros(),
            len: 0,
            key: std::marker::PhantomData,
        }
    }

    fn entries(&self) -> usize {
        self.words.len() / K::WORDS
    }

    #[inline]
    fn home(&self, key: K) -> usize {
        // A default table has no entries (shift 64); callers check before probing.
        key.hash().checked_shr(self.shift).unwrap_or(0) as usize
    }

    /// The unit's entry, if the table holds the unit.
    #[inline]
    fn get(&self, key: K) -> Option<UnitEntry> {
        if self.len == 0 {
            return None;
        }
        let mask = self.entries() - 1;
        let mut at = self.home(key);
        loop {
            let entry = &self.words[at * K::WORDS..(at + 1) * K::WORDS];
            let first = entry[K::WORDS - 1];
            if first == 0 {
                return None;
            }
            if K::from_words(entry) == key {
                return Some(UnitEntry::of_word(first));
            }
            at = (at + 1) & mask;
        }
    }

    /// The unit's first slot and the place of its slot word (for [`Self::mark_cut`]) if the
    /// table holds the unit; otherwise records `first` as the new unit's first slot and
    /// returns `None`. One probe sequence either way.
    #[inline]
    fn get_or_insert(&mut self, key: K, first: u32) -> Option<(u32, usize)> {
        if (self.len + 1) * 4 > self.entries() * 3 {
            self.grow();
        }
        let mask = self.entries() - 1;
        let mut at = self.home(key);
        loop {
            let entry = &mut self.words[at * K::WORDS..(at + 1) * K::WORDS];
            let known = entry[K::WORDS - 1];
            if known == 0 {
                key.to_words(entry);
                entry[K::WORDS - 1] = u64::from(first) + 1;
                self.len += 1;
                return None;
            }
            if K::from_words(entry) == key {
                // `as u32` drops the cut flag (see `CUT_BIT`).
                return Some(((known - 1) as u32, at * K::WORDS + K::WORDS - 1));
            }
            at = (at + 1) & mask;
        }
    }

    /// Flags the unit whose slot word is at `word` (from [`Self::get_or_insert`]) as cut: the
    /// fold turned away or evicted one of its groups.
    #[inline]
    fn mark_cut(&mut self, word: usize) {
        self.words[word] |= CUT_BIT;
    }

    /// Doubles the table (a table sized from the input's row count rarely needs to).
    fn grow(&mut self) {
        let mut bigger = Self::for_units(self.entries());
        for (key, entry) in self.iter() {
            bigger.get_or_insert(key, entry.first);
            if entry.cut
                && let Some((_, word)) = bigger.get_or_insert(key, entry.first)
            {
                bigger.mark_cut(word);
            }
        }
        *self = bigger;
    }

    /// Reads the unit's home entry, so that a later lookup finds it in the cache. Lookups of
    /// different units do not depend on one another, so the processor overlaps these reads
    /// instead of waiting for each miss in turn.
    #[inline]
    fn touch(&self, key: K) -> u64 {
        self.words
            .get(self.home(key) * K::WORDS + K::WORDS - 1)
            .copied()
            .unwrap_or(0)
    }

    /// Every (unit, entry), in table order.
    fn iter(&self) -> impl Iterator<Item = (K, UnitEntry)> + '_ {
        self.words
            .chunks_exact(K::WORDS)
            .filter(|entry| entry[K::WORDS - 1] != 0)
            .map(|entry| {
                (
                    K::from_words(entry),
                    UnitEntry::of_word(entry[K::WORDS - 1]),
                )
            })
    }

    fn bytes(&self) -> usize {
        self.words.capacity() * std::mem::size_of::<u64>()
    }
}

/// A fast, non-cryptographic hasher (the FxHash mixing step) for the fold's group-id maps. The
/// keys are in-domain group keys, never chosen by the operator, so hash flooding is not a
/// concern; speed is, because the fold looks a group up for most rows.
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

/// The rows of a batch at which a run of equal group keys starts: row 0 and every row whose
/// key differs from the row before (nulls compare equal to nulls, and floats by their bits,
/// as in the row format). Stored data often keeps a unit's rows together in one group, so
/// there are far fewer runs than rows. Key types the comparison kernel does not support make
/// every row a run of its own.
fn run_starts(columns: &[ArrayRef], rows: usize) -> Vec<u32> {
    use datafusion::arrow::compute::kernels::{boolean, cmp};
    let every_row = || (0..rows as u32).collect();
    if rows < 2 {
        return every_row();
    }
    let mut changed: Option<datafusion::arrow::array::BooleanArray> = None;
    for column in columns {
        let Ok(differs) = cmp::distinct(&column.slice(1, rows - 1), &column.slice(0, rows - 1))
        else {
            return every_row();
        };
        changed = match changed {
            None => Some(differs),
            Some(before) => match boolean::or(&before, &differs) {
                Ok(either) => Some(either),
                Err(_) => return every_row(),
            },
        };
    }
    let Some(changed) = changed else {
        return vec![0];
    };
    std::iter::once(0)
        .chain(changed.values().set_indices().map(|i| i as u32 + 1))
        .collect()
}

/// The most memory the folds of one job can hold, in bytes, whatever the data, for a gate
/// input drawn from tables of `rows` rows each and `partitions` folds. Every row adds at most
/// one unit entry (at most [`UNIT_ENTRY_BYTES`]) and one slot with its accumulators to one
/// fold, whose vectors may have doubled their capacity, so one table's input costs at most
/// `rows × (UNIT_ENTRY_BYTES + 2 × slot)`. A join on the unit can repeat rows, but never
/// units: each fold then holds at most the smallest table's units, each with at most
/// `max_groups` slots.
pub(crate) fn state_bytes_max(
    analysis: &Analysis,
    limits: Limits,
    rows: &[u64],
    partitions: usize,
) -> u128 {
    let accumulating = analysis
        .measures
        .iter()
        .filter(|m| slot_kind(&m.kind).accumulates())
        .count();
    let slot = (std::mem::size_of::<Slot>() + accumulating * std::mem::size_of::<Acc>()) as u128;
    let entry = UNIT_ENTRY_BYTES as u128;
    match rows {
        [] => 0,
        [rows] => u128::from(*rows) * (entry + 2 * slot),
        _ => {
            let units = u128::from(rows.iter().copied().min().unwrap_or(0));
            partitions as u128 * units * (entry + 2 * u128::from(limits.max_groups) * slot)
        }
    }
}

/// Whether DataFusion's group interner tells two keys of this type apart exactly when their
/// row encodings differ. Integers, text, booleans and dates do; floats do not (the interner
/// takes 0.0 and −0.0 as one group and every NaN as its own), and a fold's group identity
/// must be the row encoding's, or folds could disagree on a group's key when they merge.
fn interns_exactly(data_type: &DataType) -> bool {
    data_type.is_integer()
        || matches!(
            data_type,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Boolean
                | DataType::Date32
                | DataType::Date64
        )
}

/// How many units a fold sizes its state for up front: the hint, but never more than
/// `bytes_max` of state. Sizing once avoids rebuilding a table of millions of units as it grows.
pub(crate) fn units_capacity(analysis: &Analysis, hint: usize, bytes_max: usize) -> usize {
    let accumulating = analysis
        .measures
        .iter()
        .filter(|m| slot_kind(&m.kind).accumulates())
        .count();
    let per_unit =
        UNIT_ENTRY_BYTES + std::mem::size_of::<Slot>() + accumulating * std::mem::size_of::<Acc>();
    hint.min(bytes_max / per_unit)
}

/// What one measure keeps per slot.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SlotKind {
    /// COUNT(DISTINCT unit): nothing per slot.
    Units,
    /// COUNT(*): the slot's row count.
    Rows,
    /// COUNT(expr): the non-null count of `__veil_v{j}`.
    NonNull,
    /// SUM/AVG over an integer column.
    IntSum,
    /// SUM/AVG over a float column.
    FloatSum,
}

impl SlotKind {
    /// Whether a slot keeps an accumulator for this measure: COUNT(DISTINCT unit) needs
    /// nothing per slot and COUNT(*) uses the slot's row count, so neither costs memory.
    fn accumulates(self) -> bool {
        matches!(
            self,
            SlotKind::NonNull | SlotKind::IntSum | SlotKind::FloatSum
        )
    }
}

#[cfg(feature = "cluster")]
impl SlotKind {
    /// The kind's byte in an encoded [`FoldSpec`].
    fn code(self) -> u8 {
        match self {
            SlotKind::Units => 0,
            SlotKind::Rows => 1,
            SlotKind::NonNull => 2,
            SlotKind::IntSum => 3,
            SlotKind::FloatSum => 4,
        }
    }

    fn of_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => SlotKind::Units,
            1 => SlotKind::Rows,
            2 => SlotKind::NonNull,
            3 => SlotKind::IntSum,
            4 => SlotKind::FloatSum,
            _ => return None,
        })
    }
}

/// The slot kind of a measure.
fn slot_kind(kind: &MeasureKind) -> SlotKind {
    match kind {
        MeasureKind::CountUnits => SlotKind::Units,
        MeasureKind::CountRows { of: None } => SlotKind::Rows,
        MeasureKind::CountRows { of: Some(_) } => SlotKind::NonNull,
        MeasureKind::Sum { integer: true, .. } | MeasureKind::Avg { integer: true, .. } => {
            SlotKind::IntSum
        }
        MeasureKind::Sum { .. } | MeasureKind::Avg { .. } => SlotKind::FloatSum,
    }
}

/// One accumulating measure's running value in one slot: its non-null count and its sum,
/// an `i64` for an integer measure or an `f64`'s bits for a float one. The fold's largest
/// state is one of these per unit and measure, so it is kept to 16 bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    sum: i64,
    count: i64,
}

impl Acc {
    fn add_int(&mut self, value: i64) {
        self.count += 1;
        self.sum = self.sum.saturating_add(value);
    }

    fn add_float(&mut self, value: f64) {
        self.count += 1;
        self.sum = (self.float() + value).to_bits() as i64;
    }

    fn float(self) -> f64 {
        f64::from_bits(self.sum as u64)
    }

    /// Adds another share of the same (unit, group) slot of a measure of `kind`.
    fn merge(&mut self, kind: SlotKind, other: Acc) {
        self.count += other.count;
        match kind {
            SlotKind::IntSum => self.sum = self.sum.saturating_add(other.sum),
            SlotKind::FloatSum => self.sum = (self.float() + other.float()).to_bits() as i64,
            SlotKind::Units | SlotKind::Rows | SlotKind::NonNull => {}
        }
    }
}

/// A measure's column in one batch, downcast.
enum Value<'a> {
    /// Nothing to read (COUNT(*), COUNT(DISTINCT unit)).
    Missing,
    Int(&'a datafusion::arrow::array::Int64Array),
    Float(&'a datafusion::arrow::array::Float64Array),
    /// Only nullness matters (COUNT(expr)).
    Any(&'a dyn Array),
}

/// One (unit, group) slot.
#[derive(Debug, Clone, Copy)]
struct Slot {
    group: u32,
    rows: i64,
    /// The unit's next slot, or `NO_SLOT`.
    next: u32,
}

const NO_SLOT: u32 = u32::MAX;

/// The random hash that ranks group keys for the min-k choice: one per job, shared by all of
/// the job's folds (keyed BLAKE3 with a fresh random key per job, so which groups a unit in
/// too many groups keeps cannot be predicted from the keys).
#[derive(Clone)]
pub(crate) struct GroupHasher {
    key: [u8; blake3::KEY_LEN],
}

impl GroupHasher {
    /// A hasher with a fresh random key.
    pub(crate) fn new() -> Self {
        let mut key = [0u8; blake3::KEY_LEN];
        // The choice only needs to be unpredictable to the operator; should the system's
        // randomness fail, a key derived from the clock still varies per job.
        if getrandom::fill(&mut key).is_err() {
            key = blake3::derive_key(
                "veil group hasher fallback v1",
                &crate::clock::now()
                    .timestamp_nanos_opt()
                    .unwrap_or(0)
                    .to_le_bytes(),
            );
        }
        Self { key }
    }

    /// Test builds only: a hasher whose key comes from the test-noise seed, so two runs on
    /// neighbouring datasets choose a unit's groups alike (see `noise::Source`).
    #[cfg(feature = "test-noise")]
    pub(crate) fn seeded(seed: u64) -> Self {
        Self {
            key: blake3::derive_key("veil test group hasher v1", &seed.to_le_bytes()),
        }
    }

    /// The hasher for a job whose noise comes from `source`.
    pub(crate) fn for_source(source: super::noise::Source) -> Self {
        match source {
            super::noise::Source::OpenDp => Self::new(),
            #[cfg(feature = "test-noise")]
            super::noise::Source::Seeded(seed) => Self::seeded(seed),
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        let digest = blake3::keyed_hash(&self.key, key);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }
}

impl Default for GroupHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// The fold state of one partition.
pub(crate) struct Fold {
    limits: Limits,
    n_groups: usize,
    kinds: Vec<SlotKind>,
    /// The kinds of the measures that keep an accumulator, in order: a slot's accumulators.
    acc_kinds: Vec<SlotKind>,
    /// An empty list of largest contributions per measure with disclosure rules, which every
    /// group's totals start from (`disclosure::lists`); empty when no measure has rules.
    largest: Vec<Largest>,
    converter: RowConverter,
    hasher: GroupHasher,
    group_ids: FastMap<GroupKeyBytes, u32>,
    /// DataFusion's group interner, for group keys whose equality is their row encoding's
    /// (see `interns_exactly`); other keys go through `group_ids` run by run. In a mutex only
    /// so that finished folds can be shared between `finish`'s threads; the fold itself
    /// reaches it through `&mut self`, without locking.
    interner: Option<std::sync::Mutex<Box<dyn GroupValues>>>,
    group_keys: Vec<GroupKeyBytes>,
    group_hashes: Vec<u64>,
    /// Whether the unit column is an integer: then units live in `integer_units`, otherwise
    /// in `text_units`, and the other table stays empty.
    integer_units_only: bool,
    integer_units: UnitTable<u64>,
    text_units: UnitTable<u128>,
    slots: Vec<Slot>,
    accs: Vec<Acc>,
    reservation: MemoryReservation,
    reserved_for: usize,
    /// The last row's unit (widened to 128 bits), group and slot. Rows of one unit often
    /// arrive together (data stored in unit order stays in order within a scan partition),
    /// and then the unit and group lookups can be skipped.
    last: Option<(u128, u32, u32)>,
}

/// What every fold of one job is made from: the job's measures, limits and group hasher,
/// without the analysis. A cluster executor receives it over the wire (`FoldSpec::encode`) and
/// makes its folds from it, so they rank and bound exactly as the job's own process would.
#[derive(Clone)]
pub(crate) struct FoldSpec {
    limits: Limits,
    n_groups: usize,
    kinds: Vec<SlotKind>,
    /// An empty list of largest contributions per measure with disclosure rules.
    largest: Vec<Largest>,
    hasher: GroupHasher,
    units_capacity: usize,
}

/// The first bytes of an encoded [`FoldSpec`] (its format's version).
#[cfg(feature = "cluster")]
const SPEC_MAGIC: &[u8; 4] = b"VFP1";
/// The first bytes of an encoded fold state (its format's version).
#[cfg(feature = "cluster")]
const STATE_MAGIC: &[u8; 4] = b"VFS1";

impl FoldSpec {
    /// The spec of `analysis`'s folds. Every fold of one job must get the same `hasher`, so
    /// that they rank groups alike and [`finish`] can merge them.
    pub(crate) fn new(
        analysis: &Analysis,
        limits: Limits,
        hasher: GroupHasher,
        units_capacity: usize,
    ) -> Self {
        Self {
            limits,
            n_groups: analysis.groups.len(),
            kinds: analysis
                .measures
                .iter()
                .map(|m| slot_kind(&m.kind))
                .collect(),
            largest: disclosure::lists(analysis),
            hasher,
            units_capacity,
        }
    }

    /// The number of group columns the folds' input has after its unit column.
    #[cfg(feature = "cluster")]
    pub(crate) fn n_groups(&self) -> usize {
        self.n_groups
    }

    /// The spec as bytes, for the cluster's codec. It carries the job's group hash key: only
    /// the domain's own machines (the job's process and Veil's executors) ever see it.
    #[cfg(feature = "cluster")]
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(SPEC_MAGIC);
        put_u64(&mut out, u64::from(self.limits.max_groups));
        put_u64(&mut out, u64::from(self.limits.max_rows));
        put_u64(&mut out, self.n_groups as u64);
        put_u64(&mut out, self.units_capacity as u64);
        out.extend_from_slice(&self.hasher.key);
        put_u64(&mut out, self.kinds.len() as u64);
        for kind in &self.kinds {
            out.push(kind.code());
        }
        put_u64(&mut out, self.largest.len() as u64);
        for largest in &self.largest {
            put_u64(&mut out, largest.measure() as u64);
            put_u64(&mut out, largest.keep() as u64);
        }
        out
    }

    /// The spec [`Self::encode`] wrote, or `None` if `bytes` are not one.
    #[cfg(feature = "cluster")]
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        if r.take(4)? != SPEC_MAGIC {
            return None;
        }
        let limits = Limits {
            max_groups: u32::try_from(r.u64()?).ok()?,
            max_rows: u32::try_from(r.u64()?).ok()?,
        };
        let n_groups = usize::try_from(r.u64()?).ok()?;
        let units_capacity = usize::try_from(r.u64()?).ok()?;
        let mut key = [0u8; blake3::KEY_LEN];
        key.copy_from_slice(r.take(blake3::KEY_LEN)?);
        let kinds = (0..r.count(1)?)
            .map(|_| SlotKind::of_code(r.take(1)?[0]))
            .collect::<Option<Vec<_>>>()?;
        let largest = (0..r.count(16)?)
            .map(|_| {
                let measure = usize::try_from(r.u64()?).ok()?;
                let keep = usize::try_from(r.u64()?).ok()?;
                Some(Largest::new(measure, keep))
            })
            .collect::<Option<Vec<_>>>()?;
        r.end()?;
        Some(Self {
            limits,
            n_groups,
            kinds,
            largest,
            hasher: GroupHasher { key },
            units_capacity,
        })
    }
}

impl Fold {
    /// A fold for `analysis` whose unit column has `unit_type` and group keys `key_types`.
    /// Every fold of one job must get the same `hasher`, so that they rank groups alike and
    /// [`finish`] can merge them.
    pub(crate) fn new(
        analysis: &Analysis,
        unit_type: &DataType,
        key_types: &[DataType],
        limits: Limits,
        hasher: GroupHasher,
        reservation: MemoryReservation,
        units_capacity: usize,
    ) -> Result<Self, FoldError> {
        let spec = FoldSpec::new(analysis, limits, hasher, units_capacity);
        Self::from_spec(&spec, unit_type, key_types, reservation)
    }

    /// A fold made from `spec` (see [`Fold::new`]).
    pub(crate) fn from_spec(
        spec: &FoldSpec,
        unit_type: &DataType,
        key_types: &[DataType],
        reservation: MemoryReservation,
    ) -> Result<Self, FoldError> {
        let units_capacity = spec.units_capacity;
        let converter = RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())
            .map_err(|_| FoldError::Internal("group keys of an unsupported type"))?;
        let kinds = spec.kinds.clone();
        let acc_kinds: Vec<SlotKind> = kinds.iter().copied().filter(|k| k.accumulates()).collect();
        let acc_kinds_len = acc_kinds.len();
        let interner = if !key_types.is_empty() && key_types.iter().all(interns_exactly) {
            let fields: Vec<Field> = key_types
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("g{i}"), t.clone(), true))
                .collect();
            new_group_values(Arc::new(Schema::new(fields)), &GroupOrdering::None)
                .ok()
                .map(std::sync::Mutex::new)
        } else {
            None
        };
        Ok(Self {
            limits: spec.limits,
            n_groups: spec.n_groups,
            kinds,
            acc_kinds,
            largest: spec.largest.clone(),
            converter,
            hasher: spec.hasher.clone(),
            group_ids: FastMap::default(),
            interner,
            group_keys: Vec::new(),
            group_hashes: Vec::new(),
            integer_units_only: unit_type.is_integer(),
            integer_units: if unit_type.is_integer() {
                UnitTable::for_units(units_capacity)
            } else {
                UnitTable::default()
            },
            text_units: if unit_type.is_integer() {
                UnitTable::default()
            } else {
                UnitTable::for_units(units_capacity)
            },
            slots: Vec::with_capacity(units_capacity),
            accs: Vec::with_capacity(units_capacity * acc_kinds_len),
            reservation,
            reserved_for: 0,
            last: None,
        })
    }

    /// The memory this fold holds reserved, in bytes.
    #[cfg(feature = "cluster")]
    pub(crate) fn reserved_bytes(&self) -> usize {
        self.reserved_for
    }

    /// The fold's finished state as bytes: what [`finish`] reads of it — its groups (keys and
    /// ranking hashes), its units with their first slot and cut flag, its slots and their
    /// accumulators. A cluster executor sends this to the job's process, which decodes it
    /// ([`Fold::decode`]) and merges it with the other folds exactly as if it had folded the
    /// rows itself. It is in-domain data: it travels only between the domain's machines.
    #[cfg(feature = "cluster")]
    pub(crate) fn encode(&self) -> Vec<u8> {
        let words = if self.integer_units_only {
            self.integer_units.len * <u64 as UnitKey>::WORDS
        } else {
            self.text_units.len * <u128 as UnitKey>::WORDS
        };
        let keys: usize = self.group_keys.iter().map(|k| k.len() + 12).sum();
        let mut out = Vec::with_capacity(
            64 + keys + words * 8 + self.slots.len() * 16 + self.accs.len() * 16,
        );
        out.extend_from_slice(STATE_MAGIC);
        out.push(u8::from(self.integer_units_only));
        put_u64(&mut out, self.group_keys.len() as u64);
        for (key, hash) in self.group_keys.iter().zip(&self.group_hashes) {
            put_u64(&mut out, key.len() as u64);
            out.extend_from_slice(key);
            put_u64(&mut out, *hash);
        }
        let (entries, table_words): (usize, &[u64]) = if self.integer_units_only {
            (self.integer_units.len, &self.integer_units.words)
        } else {
            (self.text_units.len, &self.text_units.words)
        };
        let per_entry = if self.integer_units_only {
            <u64 as UnitKey>::WORDS
        } else {
            <u128 as UnitKey>::WORDS
        };
        put_u64(&mut out, entries as u64);
        for entry in table_words.chunks_exact(per_entry) {
            if entry[per_entry - 1] != 0 {
                for word in entry {
                    put_u64(&mut out, *word);
                }
            }
        }
        put_u64(&mut out, self.slots.len() as u64);
        for slot in &self.slots {
            out.extend_from_slice(&slot.group.to_le_bytes());
            out.extend_from_slice(&slot.next.to_le_bytes());
            out.extend_from_slice(&slot.rows.to_le_bytes());
        }
        put_u64(&mut out, self.accs.len() as u64);
        for acc in &self.accs {
            out.extend_from_slice(&acc.sum.to_le_bytes());
            out.extend_from_slice(&acc.count.to_le_bytes());
        }
        out
    }

    /// The fold [`Fold::encode`] wrote, made from the same `spec`, with its memory reserved
    /// from `reservation`. Malformed bytes (a chain out of range, a group that does not exist,
    /// accumulators that do not match the slots) are refused, never trusted.
    #[cfg(feature = "cluster")]
    pub(crate) fn decode(
        spec: &FoldSpec,
        unit_type: &DataType,
        key_types: &[DataType],
        reservation: MemoryReservation,
        bytes: &[u8],
    ) -> Result<Self, FoldError> {
        const MALFORMED: FoldError =
            FoldError::Internal("a fold state from an executor is malformed");
        let empty = FoldSpec {
            units_capacity: 0,
            ..spec.clone()
        };
        let mut fold = Self::from_spec(&empty, unit_type, key_types, reservation)?;
        let mut r = Reader::new(bytes);
        if r.take(4) != Some(STATE_MAGIC.as_slice()) {
            return Err(MALFORMED);
        }
        let integer = r.take(1).ok_or(MALFORMED)?[0] == 1;
        if integer != fold.integer_units_only {
            return Err(MALFORMED);
        }
        let groups = r.count(12).ok_or(MALFORMED)?;
        for _ in 0..groups {
            let len = r.count(1).ok_or(MALFORMED)?;
            let key = r.take(len).ok_or(MALFORMED)?;
            fold.group_keys.push(GroupKeyBytes::from(key));
            fold.group_hashes.push(r.u64().ok_or(MALFORMED)?);
        }
        let entries = if integer {
            read_table(&mut r, &mut fold.integer_units)
        } else {
            read_table(&mut r, &mut fold.text_units)
        }
        .ok_or(MALFORMED)?;
        let slots = r.count(16).ok_or(MALFORMED)?;
        fold.slots.reserve_exact(slots);
        for _ in 0..slots {
            let group = u32::try_from(r.u64_half().ok_or(MALFORMED)?).map_err(|_| MALFORMED)?;
            let next = u32::try_from(r.u64_half().ok_or(MALFORMED)?).map_err(|_| MALFORMED)?;
            let rows = r.u64().ok_or(MALFORMED)? as i64;
            fold.slots.push(Slot { group, rows, next });
        }
        let accs = r.count(16).ok_or(MALFORMED)?;
        if accs != slots * fold.stride() {
            return Err(MALFORMED);
        }
        fold.accs.reserve_exact(accs);
        for _ in 0..accs {
            let sum = r.u64().ok_or(MALFORMED)? as i64;
            let count = r.u64().ok_or(MALFORMED)? as i64;
            fold.accs.push(Acc { sum, count });
        }
        r.end().ok_or(MALFORMED)?;
        // Every index the merge follows must point inside the state.
        let slot_ok = |at: u32| (at as usize) < slots;
        let firsts_ok = if integer {
            fold.integer_units.iter().all(|(_, e)| slot_ok(e.first))
        } else {
            fold.text_units.iter().all(|(_, e)| slot_ok(e.first))
        };
        let slots_ok = fold.slots.iter().enumerate().all(|(at, slot)| {
            (slot.group as usize) < groups
                && (slot.next == NO_SLOT || (slot.next as usize > at && slot_ok(slot.next)))
        });
        if !firsts_ok || !slots_ok || entries > slots {
            return Err(MALFORMED);
        }
        fold.account()?;
        Ok(fold)
    }

    /// Accumulators per slot.
    fn stride(&self) -> usize {
        self.acc_kinds.len()
    }

    /// Each row's group id.
    fn batch_groups(&mut self, batch: &RecordBatch) -> Result<Vec<u32>, &'static str> {
        let rows = batch.num_rows();
        if self.n_groups == 0 {
            // No GROUP BY: every row is in the one group, whose key is empty.
            let group = self.group_id(&[]);
            return Ok(vec![group; rows]);
        }
        let columns: Vec<ArrayRef> = (0..self.n_groups)
            .map(|i| batch.column(1 + i).clone())
            .collect();
        if self.interner.is_some() {
            return self.interned_groups(&columns);
        }
        // Other key types: only the first row of each run of equal keys is row-encoded and
        // looked up; the rest of the run shares its id.
        let starts = run_starts(&columns, rows);
        let keys = self.encode_rows(&columns, starts.clone())?;
        let mut groups = Vec::with_capacity(rows);
        for (run, start) in starts.iter().enumerate() {
            let end = starts.get(run + 1).map_or(rows, |next| *next as usize);
            let group = self.group_id(keys.row(run).data());
            groups.extend(std::iter::repeat_n(group, end - *start as usize));
        }
        Ok(groups)
    }

    /// Each row's group id from DataFusion's own group interner, which hashes and compares
    /// whole columns at a time. The interner numbers groups as it meets them, exactly as
    /// `group_id` would; only the first row of each new group is row-encoded, for the key
    /// that ranks the group and matches it across folds.
    fn interned_groups(&mut self, columns: &[ArrayRef]) -> Result<Vec<u32>, &'static str> {
        let unsupported = "group keys of an unsupported type";
        let Some(Ok(interner)) = self.interner.as_mut().map(|i| i.get_mut()) else {
            return Err(unsupported);
        };
        let known = self.group_keys.len();
        let mut ids = Vec::with_capacity(columns.first().map_or(0, |c| c.len()));
        interner
            .intern(columns, &mut ids)
            .map_err(|_| unsupported)?;
        let total = interner.len();
        if total > known {
            let mut firsts = vec![u32::MAX; total - known];
            for (row, id) in ids.iter().enumerate() {
                if let Some(first) = id.checked_sub(known).and_then(|new| firsts.get_mut(new))
                    && *first == u32::MAX
                {
                    *first = row as u32;
                }
            }
            let keys = self.encode_rows(columns, firsts)?;
            for row in 0..keys.num_rows() {
                let key = keys.row(row);
                self.group_hashes.push(self.hasher.hash(key.data()));
                self.group_keys.push(Box::from(key.data()));
            }
        }
        ids.into_iter()
            .map(|id| u32::try_from(id).map_err(|_| "more groups than the fold can number"))
            .collect()
    }

    /// The row encodings of the group keys of `rows` (indices into `columns`).
    fn encode_rows(
        &self,
        columns: &[ArrayRef],
        rows: Vec<u32>,
    ) -> Result<datafusion::arrow::row::Rows, &'static str> {
        let unsupported = "group keys of an unsupported type";
        let rows = datafusion::arrow::array::UInt32Array::from(rows);
        let taken = columns
            .iter()
            .map(|column| datafusion::arrow::compute::take(column, &rows, None))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| unsupported)?;
        self.converter
            .convert_columns(&taken)
            .map_err(|_| unsupported)
    }

    fn group_id(&mut self, key: &[u8]) -> u32 {
        if let Some(id) = self.group_ids.get(key) {
            return *id;
        }
        let id = self.group_keys.len() as u32;
        self.group_hashes.push(self.hasher.hash(key));
        self.group_keys.push(Box::from(key));
        self.group_ids.insert(Box::from(key), id);
        id
    }

    /// Orders groups for the min-k choice: by hash, then by key.
    fn rank(&self, group: u32) -> (u64, &[u8]) {
        (
            self.group_hashes[group as usize],
            &self.group_keys[group as usize],
        )
    }

    fn new_slot(&mut self, group: u32) -> u32 {
        let index = self.slots.len() as u32;
        self.slots.push(Slot {
            group,
            rows: 0,
            next: NO_SLOT,
        });
        self.accs
            .extend(std::iter::repeat_n(Acc::default(), self.stride()));
        index
    }

    /// The slot for (unit, group), making or reusing one, or `None` when the unit keeps
    /// other groups. A unit that has a group turned away or evicted here is flagged as cut
    /// in its table entry (see "Counting the units the bounds cut" in the module docs).
    fn slot_for<K: UnitKey>(
        &mut self,
        units: &mut UnitTable<K>,
        unit: K,
        group: u32,
    ) -> Option<u32> {
        // One probe of the unit table whether the unit is new or known.
        let Some((first, word)) = units.get_or_insert(unit, self.slots.len() as u32) else {
            return Some(self.new_slot(group));
        };
        let mut count = 0usize;
        let mut last = first;
        let mut worst = first;
        let mut at = first;
        while at != NO_SLOT {
            let slot = self.slots[at as usize];
            if slot.group == group {
                return Some(at);
            }
            if self.rank(slot.group) > self.rank(self.slots[worst as usize].group) {
                worst = at;
            }
            count += 1;
            last = at;
            at = slot.next;
        }
        if count < self.limits.max_groups as usize {
            let slot = self.new_slot(group);
            self.slots[last as usize].next = slot;
            return Some(slot);
        }
        // The unit has more than `max_groups` groups in this fold: one is dropped either way.
        units.mark_cut(word);
        if self.rank(group) < self.rank(self.slots[worst as usize].group) {
            // Evict the largest-hash group: it can never come back (see the module docs).
            let stride = self.stride();
            let slot = &mut self.slots[worst as usize];
            slot.group = group;
            slot.rows = 0;
            for acc in &mut self.accs[worst as usize * stride..(worst as usize + 1) * stride] {
                *acc = Acc::default();
            }
            return Some(worst);
        }
        None
    }

    /// Grows the memory reservation to cover the state, a step at a time.
    fn account(&mut self) -> Result<(), FoldError> {
        let used = self.state_bytes();
        if used > self.reserved_for {
            // A step at a time, so the pool is asked rarely; near a small limit, only what
            // the state needs.
            let need = used - self.reserved_for;
            let step = need.max(FOLD_RESERVATION_STEP_BYTES);
            let grow = if self.reservation.try_grow(step).is_ok() {
                step
            } else {
                self.reservation
                    .try_grow(need)
                    .map_err(|_| FoldError::Memory)?;
                need
            };
            self.reserved_for += grow;
        }
        Ok(())
    }

    /// The memory the fold's state holds, in bytes: per unit, and per group.
    fn state_bytes(&mut self) -> usize {
        self.unit_state_bytes()
            + self
                .interner
                .as_mut()
                .and_then(|i| i.get_mut().ok())
                .map_or(0, |i| i.size())
    }

    /// The memory the fold's per-unit state holds (what [`state_bytes_max`] bounds), in bytes.
    fn unit_state_bytes(&self) -> usize {
        self.integer_units.bytes()
            + self.text_units.bytes()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.accs.capacity() * std::mem::size_of::<Acc>()
    }

    /// Folds one batch of the gate's plan.
    pub(crate) fn add_batch(&mut self, batch: &RecordBatch) -> Result<(), FoldError> {
        if self.integer_units_only {
            self.add_rows::<u64>(batch)?;
        } else {
            self.add_rows::<u128>(batch)?;
        }
        self.account()
    }

    fn add_rows<K: UnitKey>(&mut self, batch: &RecordBatch) -> Result<(), FoldError> {
        let internal = FoldError::Internal;
        let groups = self.batch_groups(batch).map_err(internal)?;
        let (units, nulls) = K::keys(batch.column(0)).map_err(internal)?;
        // The table is taken out of `self` while the rows are folded, so that it and the
        // slots can be borrowed at once; it is put back before returning.
        let mut table = std::mem::take(K::table_mut(self));
        let folded = self.fold_rows(&mut table, &units, nulls.as_ref(), &groups, batch);
        *K::table_mut(self) = table;
        folded
    }

    fn fold_rows<K: UnitKey>(
        &mut self,
        table: &mut UnitTable<K>,
        units: &[K],
        nulls: Option<&NullBuffer>,
        groups: &[u32],
        batch: &RecordBatch,
    ) -> Result<(), FoldError> {
        // Each measure's column, downcast once per batch rather than once per row.
        let mut columns: Vec<Option<ArrayRef>> = Vec::with_capacity(self.kinds.len());
        for (j, kind) in self.kinds.iter().enumerate() {
            columns.push(match kind {
                SlotKind::Units | SlotKind::Rows => None,
                _ => Some(
                    batch
                        .column_by_name(&format!("__veil_v{j}"))
                        .cloned()
                        .ok_or(FoldError::Internal("the gate's plan lost a value column"))?,
                ),
            });
        }
        // One value column per accumulator, in the slot's accumulator order.
        let values: Vec<Value<'_>> = self
            .kinds
            .iter()
            .zip(&columns)
            .filter(|(kind, _)| kind.accumulates())
            .map(|(kind, column)| match (kind, column) {
                (SlotKind::IntSum, Some(c)) => c
                    .as_primitive_opt::<Int64Type>()
                    .map_or(Value::Missing, Value::Int),
                (SlotKind::FloatSum, Some(c)) => c
                    .as_primitive_opt::<Float64Type>()
                    .map_or(Value::Missing, Value::Float),
                (SlotKind::NonNull, Some(c)) => Value::Any(c.as_ref()),
                _ => Value::Missing,
            })
            .collect();
        let stride = self.stride();
        let mut touched = 0u64;
        for (r, unit) in units.iter().copied().enumerate() {
            // At the start of each stretch of `UNIT_TOUCH_ROWS` rows, read the home entry of
            // every unit a run starts with in that stretch, before looking any of them up:
            // the reads do not depend on one another, so their cache misses overlap instead
            // of each lookup waiting for its own, and the lookups below then hit the cache.
            if r % UNIT_TOUCH_ROWS == 0 {
                let mut previous = None;
                for ahead in &units[r..units.len().min(r + UNIT_TOUCH_ROWS)] {
                    if previous != Some(ahead) {
                        touched ^= table.touch(*ahead);
                        previous = Some(ahead);
                    }
                }
            }
            // A row without a unit belongs to no one and is dropped.
            if nulls.is_some_and(|nulls| nulls.is_null(r)) {
                continue;
            }
            let group = groups[r];
            let cached = match self.last {
                Some((last_unit, last_group, slot))
                    if last_unit == unit.into() && last_group == group =>
                {
                    Some(slot)
                }
                _ => None,
            };
            let slot = match cached {
                Some(slot) => slot,
                None => {
                    let Some(slot) = self.slot_for(table, unit, group) else {
                        continue;
                    };
                    self.last = Some((unit.into(), group, slot));
                    slot
                }
            };
            self.slots[slot as usize].rows += 1;
            let accs = &mut self.accs[slot as usize * stride..(slot as usize + 1) * stride];
            for (value, acc) in values.iter().zip(accs.iter_mut()) {
                match value {
                    Value::Missing => {}
                    Value::Int(ints) => {
                        if ints.is_valid(r) {
                            acc.add_int(ints.value(r));
                        }
                    }
                    Value::Float(floats) => {
                        if floats.is_valid(r) {
                            acc.add_float(floats.value(r));
                        }
                    }
                    Value::Any(column) => {
                        if column.is_valid(r) {
                            acc.count += 1;
                        }
                    }
                }
            }
        }
        std::hint::black_box(touched);
        Ok(())
    }

    /// The slots of the unit whose first slot is `first`, in the unit's chain order.
    fn chain(&self, first: u32) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors(Some(first), |at| {
            Some(self.slots[*at as usize].next).filter(|next| *next != NO_SLOT)
        })
    }

    fn accs_of(&self, slot: u32) -> &[Acc] {
        let stride = self.stride();
        &self.accs[slot as usize * stride..(slot as usize + 1) * stride]
    }
}

/// Appends `value` as 8 little-endian bytes.
#[cfg(feature = "cluster")]
fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Reads the encodings of [`FoldSpec::encode`] and [`Fold::encode`], refusing any length
/// that runs past the end.
#[cfg(feature = "cluster")]
struct Reader<'a> {
    bytes: &'a [u8],
}

#[cfg(feature = "cluster")]
impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.bytes.len() {
            return None;
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn u64_half(&mut self) -> Option<u64> {
        Some(u64::from(u32::from_le_bytes(
            self.take(4)?.try_into().ok()?,
        )))
    }

    /// A count of items of at least `item_bytes` each, refused if the rest cannot hold them
    /// (so a hostile count cannot make the reader allocate).
    fn count(&mut self, item_bytes: usize) -> Option<usize> {
        let count = usize::try_from(self.u64()?).ok()?;
        (count.checked_mul(item_bytes)? <= self.bytes.len()).then_some(count)
    }

    fn end(&self) -> Option<()> {
        self.bytes.is_empty().then_some(())
    }
}

/// Reads a unit table's occupied entries into `table` (sized for them), each with its slot
/// word as it was (first slot and cut flag); the number of units, or `None` if malformed.
#[cfg(feature = "cluster")]
fn read_table<K: UnitKey>(r: &mut Reader<'_>, table: &mut UnitTable<K>) -> Option<usize> {
    let entries = r.count(8 * K::WORDS)?;
    *table = UnitTable::for_units(entries);
    let mut entry = vec![0u64; K::WORDS];
    for _ in 0..entries {
        for word in entry.iter_mut() {
            *word = r.u64()?;
        }
        let slot_word = entry[K::WORDS - 1];
        if slot_word == 0 {
            return None;
        }
        let key = K::from_words(&entry);
        let first = UnitEntry::of_word(slot_word);
        // A unit twice in one table would be counted twice: refused.
        if table.get_or_insert(key, first.first).is_some() {
            return None;
        }
        if first.cut
            && let Some((_, word)) = table.get_or_insert(key, first.first)
        {
            table.mark_cut(word);
        }
    }
    Some(entries)
}

/// Adds one slot's capped contribution to its group's totals.
fn add_slot(totals: &mut GroupTotals, kinds: &[SlotKind], max_rows: i64, rows: i64, accs: &[Acc]) {
    if !totals.largest.is_empty() {
        add_largest(&mut totals.largest, kinds, max_rows, accs);
    }
    totals.units += 1;
    // The slot's accumulators belong to the accumulating measures, in order.
    let mut accs = accs.iter();
    for (kind, total) in kinds.iter().zip(totals.totals.iter_mut()) {
        let acc = if kind.accumulates() {
            accs.next().copied().unwrap_or_default()
        } else {
            Acc::default()
        };
        match (kind, total) {
            (SlotKind::Rows, Total::Count(t)) => *t += rows.min(max_rows),
            (SlotKind::NonNull, Total::Count(t)) => *t += acc.count.min(max_rows),
            (SlotKind::IntSum, Total::IntSum { sum, count }) => {
                let s = capped_int(acc, max_rows);
                *sum += s;
                *count += acc.count.min(max_rows);
            }
            (SlotKind::FloatSum, Total::FloatSum { sum, count }) => {
                let s = capped_float(acc, max_rows);
                *sum += s;
                *count += acc.count.min(max_rows);
            }
            _ => {}
        }
    }
}

/// A slot's integer sum as it is kept: scaling toward zero keeps `|s'| ≤ max_rows · B` (see
/// the module proof).
fn capped_int(acc: Acc, max_rows: i64) -> i128 {
    let s = i128::from(acc.sum);
    if acc.count > max_rows {
        s * i128::from(max_rows) / i128::from(acc.count)
    } else {
        s
    }
}

/// A slot's float sum as it is kept (as if only `max_rows` average rows were).
fn capped_float(acc: Acc, max_rows: i64) -> f64 {
    if acc.count > max_rows {
        acc.float() * (max_rows as f64 / acc.count as f64)
    } else {
        acc.float()
    }
}

/// Records one slot's kept contribution to each measure with disclosure rules in its group's
/// list of largest contributions. Called once per (unit, group) with the unit's final slot —
/// from `fold_totals`, after a unit's slots were merged across folds — so the lists hold
/// exactly the largest per-unit contributions, whatever the partitioning. Only groups of a
/// release with ruled measures have lists, so other releases never come here.
fn add_largest(largest: &mut [Largest], kinds: &[SlotKind], max_rows: i64, accs: &[Acc]) {
    for list in largest {
        let j = list.measure();
        // The measure's accumulator: the slot holds one per accumulating measure, in order.
        let at = kinds.iter().take(j).filter(|k| k.accumulates()).count();
        let acc = accs.get(at).copied().unwrap_or_default();
        match kinds.get(j) {
            Some(SlotKind::IntSum) => list.push(capped_int(acc, max_rows) as f64),
            Some(SlotKind::FloatSum) => list.push(capped_float(acc, max_rows)),
            _ => {}
        }
    }
}

/// Group ids over all folds of a job: each fold numbers its groups in the order it met them,
/// so a group key has a different id in each fold.
struct GlobalGroups<'a> {
    keys: Vec<&'a [u8]>,
    /// The groups' ranking hashes (the same in every fold: one hasher per job).
    hashes: Vec<u64>,
    /// Per fold, its group ids' global ids.
    of_fold: Vec<Vec<u32>>,
}

impl<'a> GlobalGroups<'a> {
    fn new(folds: &'a [Fold]) -> Self {
        let mut ids: FastMap<&'a [u8], u32> = FastMap::default();
        let mut keys = Vec::new();
        let mut hashes = Vec::new();
        let of_fold = folds
            .iter()
            .map(|fold| {
                fold.group_keys
                    .iter()
                    .zip(&fold.group_hashes)
                    .map(|(key, hash)| {
                        *ids.entry(key).or_insert_with(|| {
                            keys.push(&**key);
                            hashes.push(*hash);
                            (keys.len() - 1) as u32
                        })
                    })
                    .collect()
            })
            .collect();
        Self {
            keys,
            hashes,
            of_fold,
        }
    }

    fn rank(&self, group: u32) -> (u64, &[u8]) {
        (self.hashes[group as usize], self.keys[group as usize])
    }
}

/// One group of a unit that several folds saw, while its slots are merged.
struct MergedSlot {
    group: u32,
    rows: i64,
    /// Where its accumulators start in the merge's flat `Acc` buffer.
    accs_at: usize,
}

/// A mark of a slot while its fold's totals are added up: the slot's unit was seen by other
/// folds too, so the merge counts it, not the slot loop.
const MERGED_AWAY: u8 = 1;
/// A mark of a slot while its fold's totals are added up: the slot's unit is already counted
/// as cut. The slot loop passes it on along the unit's chain.
const UNIT_COUNTED: u8 = 2;

/// Whether capping a kept (unit, group) slot changes a total: it has more than `max_rows` rows
/// and a measure counts rows, or a measure has more than `max_rows` non-null values in it.
fn slot_is_capped(counts_rows: bool, max_rows: i64, rows: i64, accs: &[Acc]) -> bool {
    (counts_rows && rows > max_rows) || accs.iter().any(|acc| acc.count > max_rows)
}

/// The group totals of fold `i`'s units, by global group id: units no other fold saw straight
/// from their slots, and units several folds saw merged once, by the lowest-numbered of them;
/// and how many of those units the bounds cut (see "Counting the units the bounds cut" in
/// the module docs), each counted by the same fold that counts its slots.
fn fold_totals<K: UnitKey>(
    folds: &[Fold],
    i: usize,
    global: &GlobalGroups<'_>,
) -> (Vec<Option<GroupTotals>>, i64) {
    let fold = &folds[i];
    let kinds = &fold.kinds;
    let stride = fold.stride();
    let max_rows = i64::from(fold.limits.max_rows);
    let max_groups = fold.limits.max_groups as usize;
    let mut totals: Vec<Option<GroupTotals>> = vec![None; global.keys.len()];
    let mut add = |group: u32, rows: i64, accs: &[Acc]| {
        let entry =
            totals[group as usize].get_or_insert_with(|| GroupTotals::empty(kinds, &fold.largest));
        add_slot(entry, kinds, max_rows, rows, accs);
    };
    let counts_rows = kinds.contains(&SlotKind::Rows);
    let mut cut_units = 0i64;
    // Per slot, `MERGED_AWAY` and `UNIT_COUNTED`.
    let mut marks = vec![0u8; fold.slots.len()];
    let mut holders: Vec<(usize, UnitEntry)> = Vec::with_capacity(folds.len());
    let mut merged: Vec<MergedSlot> = Vec::new();
    let mut merged_accs: Vec<Acc> = Vec::new();
    // Every table has the same layout for the same size (a fixed hash, top bits first), so
    // walking this table in order probes the others in order too, not at random.
    for (unit, entry) in K::table(fold).iter() {
        holders.clear();
        for (j, other) in folds.iter().enumerate() {
            if j != i
                && let Some(theirs) = K::table(other).get(unit)
            {
                holders.push((j, theirs));
            }
        }
        if holders.is_empty() {
            // A unit only this fold saw: cut if the fold turned a group of it away; else if
            // one of its slots is capped, which the slot loop below finds.
            if entry.cut {
                cut_units += 1;
                marks[entry.first as usize] |= UNIT_COUNTED;
            }
            continue;
        }
        // Slots of units that other folds saw too: counted by the merge, not one by one.
        for slot in fold.chain(entry.first) {
            marks[slot as usize] |= MERGED_AWAY;
        }
        if holders.iter().any(|(j, _)| *j < i) {
            continue;
        }
        holders.push((i, entry));
        merged.clear();
        merged_accs.clear();
        for (j, entry) in &holders {
            let holder = &folds[*j];
            for at in holder.chain(entry.first) {
                let slot = holder.slots[at as usize];
                let group = global.of_fold[*j][slot.group as usize];
                let into = match merged.iter().position(|m| m.group == group) {
                    Some(k) => k,
                    None => {
                        merged.push(MergedSlot {
                            group,
                            rows: 0,
                            accs_at: merged_accs.len(),
                        });
                        merged_accs.extend(std::iter::repeat_n(Acc::default(), stride));
                        merged.len() - 1
                    }
                };
                let target = &mut merged[into];
                target.rows += slot.rows;
                let accs = &mut merged_accs[target.accs_at..target.accs_at + stride];
                for ((acc, theirs), kind) in accs
                    .iter_mut()
                    .zip(holder.accs_of(at))
                    .zip(&holder.acc_kinds)
                {
                    acc.merge(*kind, *theirs);
                }
            }
        }
        // The unit is cut if a fold turned a group of it away, or the merge drops one (see
        // "Counting the units the bounds cut" in the module docs).
        let mut cut = holders.iter().any(|(_, entry)| entry.cut) || merged.len() > max_groups;
        // The unit's kept groups are the `max_groups` smallest-ranked among what the folds
        // kept (see "Merging folds" in the module docs).
        if merged.len() > max_groups {
            merged.sort_by(|a, b| global.rank(a.group).cmp(&global.rank(b.group)));
            merged.truncate(max_groups);
        }
        for m in &merged {
            let accs = &merged_accs[m.accs_at..m.accs_at + stride];
            cut = cut || slot_is_capped(counts_rows, max_rows, m.rows, accs);
            add(m.group, m.rows, accs);
        }
        cut_units += i64::from(cut);
    }
    for (index, slot) in fold.slots.iter().enumerate() {
        let mut counted = marks[index] & UNIT_COUNTED != 0;
        if slot.rows != 0 && marks[index] & MERGED_AWAY == 0 {
            let accs = fold.accs_of(index as u32);
            if !counted && slot_is_capped(counts_rows, max_rows, slot.rows, accs) {
                cut_units += 1;
                counted = true;
            }
            add(global.of_fold[i][slot.group as usize], slot.rows, accs);
        }
        // A unit's chain runs to ever higher slots (a new slot is appended, then linked at
        // the chain's end; an eviction reuses a slot in place), so a mark passed on to the
        // next slot reaches each later slot of the unit before this loop does: the unit is
        // counted once, however many of its slots are capped.
        if counted && slot.next != NO_SLOT {
            debug_assert!(slot.next as usize > index, "a unit's chain runs forward");
            marks[slot.next as usize] |= UNIT_COUNTED;
        }
    }
    (totals, cut_units)
}

/// Adds up the folds into the bounded groups. A unit seen by one fold only is counted from
/// that fold's slots; a unit seen by several has its slots merged first (see the module docs).
/// Each fold's units are counted on a thread of their own.
pub(crate) fn finish(folds: Vec<Fold>, key_types: Vec<DataType>) -> Result<Bounded, &'static str> {
    let converter = RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())
        .map_err(|_| "group keys of an unsupported type")?;
    let global = GlobalGroups::new(&folds);
    let per_fold: Vec<(Vec<Option<GroupTotals>>, i64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..folds.len())
            .map(|i| {
                let (folds, global) = (&folds, &global);
                scope.spawn(move || {
                    if folds[i].integer_units_only {
                        fold_totals::<u64>(folds, i, global)
                    } else {
                        fold_totals::<u128>(folds, i, global)
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join())
            .collect::<Result<_, _>>()
    })
    .map_err(|_| "adding up the folds")?;
    let mut totals: Vec<Option<GroupTotals>> = vec![None; global.keys.len()];
    let mut truncated_units = 0i64;
    for (fold, cut_units) in per_fold {
        // Each unit is counted by one fold only: the one whose slots of it are added.
        truncated_units += cut_units;
        for (sum, part) in totals.iter_mut().zip(fold) {
            match (sum.as_mut(), part) {
                (Some(sum), Some(part)) => sum.merge(&part),
                (None, part) => *sum = part,
                (Some(_), None) => {}
            }
        }
    }
    let groups = global
        .keys
        .iter()
        .zip(totals)
        .filter_map(|(key, totals)| totals.map(|t| (GroupKeyBytes::from(*key), t)))
        .collect();
    drop(global);
    // The folds hold most of the job's memory (a table entry, a slot and accumulators per
    // unit); handing it back takes tens of milliseconds that the release need not wait for.
    // Should no thread start, the closure and the folds are dropped here instead.
    let _ = std::thread::Builder::new()
        .name("veil-fold-free".into())
        .spawn(move || drop(folds));
    Ok(Bounded {
        converter,
        groups,
        key_types,
        truncated_units,
    })
}

/// Decodes row-encoded group keys back into Arrow columns.
pub(crate) fn decode_keys(
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
pub(crate) fn encode_public_keys(
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::common::Column;
    use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, UnboundedMemoryPool};
    use datafusion::logical_expr::col;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::analysis::{GroupKey, Measure};
    use crate::disclosure::{DisclosureRules, Dominance};

    /// One input row of the gate's plan: unit, group key, an integer and a float value.
    type Row = (Option<i64>, &'static str, Option<i64>, Option<f64>);

    const GROUPS: [&str; 7] = ["a", "b", "c", "d", "e", "f", "g"];

    /// Units a test fold's state is first sized for: small, so that it grows.
    const TEST_UNITS_CAPACITY: usize = 4;

    /// COUNT(DISTINCT unit), COUNT(*), SUM(int), AVG(float) grouped by one text key.
    fn analysis() -> Analysis {
        let measures = vec![
            MeasureKind::CountUnits,
            MeasureKind::CountRows { of: None },
            MeasureKind::Sum {
                value: col("i"),
                lo: 0.0,
                hi: 100.0,
                integer: true,
                // The sum keeps its groups' three largest contributions (`disclosure`).
                disclosure: Some(DisclosureRules {
                    p_percent: Some(10.0),
                    dominance: Some(Dominance {
                        n: 3,
                        k_percent: 75.0,
                    }),
                }),
            },
            MeasureKind::Avg {
                value: col("f"),
                lo: 0.0,
                hi: 1.0,
                integer: false,
                nullable: true,
                disclosure: None,
            },
        ];
        Analysis {
            input: LogicalPlanBuilder::empty(false).build().unwrap(),
            unit: Column::from_name("unit"),
            unit_kind: "person".into(),
            groups: vec![GroupKey {
                expr: col("g"),
                name: "g".into(),
                keys: None,
                bases: Vec::new(),
            }],
            measures: measures
                .into_iter()
                .enumerate()
                .map(|(j, kind)| Measure {
                    name: format!("m{j}"),
                    kind,
                })
                .collect(),
            output: Vec::new(),
            tables: Vec::new(),
        }
    }

    /// The unit column's type: integer units, or the same units as text.
    fn unit_type(text_units: bool) -> DataType {
        if text_units {
            DataType::Utf8
        } else {
            DataType::Int64
        }
    }

    fn batch(rows: &[Row], text_units: bool) -> RecordBatch {
        let units: ArrayRef = if text_units {
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| r.0.map(|u| format!("person-{u}"))),
            ))
        } else {
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.0)))
        };
        let schema = Schema::new(vec![
            Field::new(UNIT, unit_type(text_units), true),
            Field::new("__veil_g0", DataType::Utf8, false),
            Field::new("__veil_v2", DataType::Int64, true),
            Field::new("__veil_v3", DataType::Float64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                units,
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2))),
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.3))),
            ],
        )
        .unwrap()
    }

    /// Folds each share of rows in a fold of its own (in batches of `batch_rows`), then
    /// finishes them together. The folds' unit tables start small, so they also grow.
    fn bounded(
        shares: &[Vec<Row>],
        limits: Limits,
        hasher: &GroupHasher,
        batch_rows: usize,
        text_units: bool,
    ) -> HashMap<GroupKeyBytes, GroupTotals> {
        bounded_by(shares, limits, hasher, batch_rows, text_units, true)
    }

    /// [`bounded`], with group ids from DataFusion's interner or (`interned` false) from the
    /// row encoding of each run of equal keys, as for key types the interner cannot tell
    /// apart exactly. Also checks the per-unit state against [`state_bytes_max`].
    fn bounded_by(
        shares: &[Vec<Row>],
        limits: Limits,
        hasher: &GroupHasher,
        batch_rows: usize,
        text_units: bool,
        interned: bool,
    ) -> HashMap<GroupKeyBytes, GroupTotals> {
        bounded_all(shares, limits, hasher, batch_rows, text_units, interned).groups
    }

    /// [`bounded_by`], with everything `finish` says (the count of cut units too).
    fn bounded_all(
        shares: &[Vec<Row>],
        limits: Limits,
        hasher: &GroupHasher,
        batch_rows: usize,
        text_units: bool,
        interned: bool,
    ) -> Bounded {
        let folds = fold_shares(shares, limits, hasher, batch_rows, text_units, interned);
        finish(folds, vec![DataType::Utf8]).unwrap()
    }

    /// The folds [`bounded_all`] finishes, one per share.
    fn fold_shares(
        shares: &[Vec<Row>],
        limits: Limits,
        hasher: &GroupHasher,
        batch_rows: usize,
        text_units: bool,
        interned: bool,
    ) -> Vec<Fold> {
        let analysis = analysis();
        let key_types = vec![DataType::Utf8];
        let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
        let folds = shares
            .iter()
            .map(|rows| {
                let reservation = MemoryConsumer::new("test-fold").register(&pool);
                let mut fold = Fold::new(
                    &analysis,
                    &unit_type(text_units),
                    &key_types,
                    limits,
                    hasher.clone(),
                    reservation,
                    TEST_UNITS_CAPACITY,
                )
                .unwrap();
                if !interned {
                    fold.interner = None;
                }
                for chunk in rows.chunks(batch_rows.max(1)) {
                    fold.add_batch(&batch(chunk, text_units)).unwrap();
                }
                fold
            })
            .collect::<Vec<_>>();
        let used: usize = folds.iter().map(Fold::unit_state_bytes).sum();
        let rows = shares.iter().map(Vec::len).sum::<usize>() as u64;
        // The fixed first size of each fold's table is outside the bound (the job sizes it
        // from its share of the memory limit).
        let first_sizes = shares.len()
            * (UNIT_TABLE_ENTRIES_MIN * 3 * 8
                + TEST_UNITS_CAPACITY
                    * (std::mem::size_of::<Slot>() + 2 * std::mem::size_of::<Acc>()));
        assert!(
            used as u128
                <= state_bytes_max(&analysis, limits, &[rows], shares.len()) + first_sizes as u128,
            "{used} bytes of state for {rows} rows"
        );
        folds
    }

    /// The units the bounds cut, from the definition: more than `max_groups` groups, or a
    /// group with more than `max_rows` rows (the test analysis counts rows, and a unit with at
    /// most `max_groups` groups keeps them all, so no group choice is needed here).
    fn cut_by_definition(rows: &[Row], limits: Limits) -> i64 {
        let mut per_unit: HashMap<i64, HashMap<&str, u32>> = HashMap::new();
        for (unit, group, _, _) in rows {
            if let Some(unit) = unit {
                *per_unit.entry(*unit).or_default().entry(group).or_default() += 1;
            }
        }
        per_unit
            .values()
            .filter(|groups| {
                groups.len() > limits.max_groups as usize
                    || groups.values().any(|rows| *rows > limits.max_rows)
            })
            .count() as i64
    }

    /// The two results agree: the same groups, the same unit and row counts and integer sums,
    /// and float sums equal up to the order of additions.
    fn assert_same(
        merged: &HashMap<GroupKeyBytes, GroupTotals>,
        single: &HashMap<GroupKeyBytes, GroupTotals>,
    ) {
        let mut keys: Vec<_> = merged.keys().collect();
        keys.sort();
        let mut expected: Vec<_> = single.keys().collect();
        expected.sort();
        assert_eq!(keys, expected, "the same groups");
        for key in keys {
            let (a, b) = (&merged[key], &single[key]);
            assert_eq!(a.units, b.units, "units of a group");
            assert_eq!(
                a.largest(2),
                b.largest(2),
                "largest contributions of a group"
            );
            for (x, y) in a.totals.iter().zip(&b.totals) {
                match (x, y) {
                    (
                        Total::FloatSum { sum, count },
                        Total::FloatSum {
                            sum: other,
                            count: other_count,
                        },
                    ) => {
                        assert_eq!(count, other_count);
                        assert!((sum - other).abs() <= 1e-9 * (1.0 + other.abs()));
                    }
                    _ => assert_eq!(x, y),
                }
            }
        }
    }

    #[test]
    fn a_unit_split_across_folds_keeps_the_groups_one_fold_would() {
        let limits = Limits {
            max_groups: 2,
            max_rows: 2,
        };
        // Unit 1 is in five groups, spread over both folds, with "a" in both; unit 2 is in
        // one fold only; unit 3 in both, in one group.
        let first: Vec<Row> = vec![
            (Some(1), "a", Some(10), Some(0.5)),
            (Some(1), "b", Some(20), None),
            (Some(1), "a", Some(30), Some(0.25)),
            (Some(2), "c", Some(5), Some(1.0)),
            (Some(3), "d", Some(7), Some(0.0)),
            (None, "a", Some(99), Some(1.0)),
        ];
        let second: Vec<Row> = vec![
            (Some(1), "c", Some(40), Some(0.75)),
            (Some(1), "a", Some(50), Some(1.0)),
            (Some(1), "d", Some(60), None),
            (Some(1), "e", None, Some(0.5)),
            (Some(3), "d", Some(8), Some(1.0)),
        ];
        let all: Vec<Row> = first.iter().chain(&second).copied().collect();
        // Several hashers, so unit 1's kept groups differ from run to run.
        for run in 0..20 {
            let text_units = run % 2 == 1;
            let hasher = GroupHasher::new();
            let merged = bounded(
                &[first.clone(), second.clone()],
                limits,
                &hasher,
                2,
                text_units,
            );
            let single = bounded(std::slice::from_ref(&all), limits, &hasher, 3, text_units);
            assert_same(&merged, &single);
            // Unit 1 keeps exactly two groups; units 2 and 3 one each.
            let units: i64 = merged.values().map(|g| g.units).sum();
            assert_eq!(units, 4);
        }
    }

    #[test]
    fn a_group_keeps_its_largest_capped_contributions_whatever_the_split() {
        let limits = Limits {
            max_groups: 1,
            max_rows: 2,
        };
        // In group "a": unit 1 adds 10 + 30 in two folds (one contribution of 40), unit 2
        // three rows of 5 (capped to two rows' worth: 10), unit 3 adds 100, unit 4 adds 7.
        let first: Vec<Row> = vec![
            (Some(1), "a", Some(10), None),
            (Some(2), "a", Some(5), None),
            (Some(3), "a", Some(100), None),
            (Some(2), "a", Some(5), None),
        ];
        let second: Vec<Row> = vec![
            (Some(1), "a", Some(30), None),
            (Some(2), "a", Some(5), None),
            (Some(4), "a", Some(7), None),
        ];
        let all: Vec<Row> = first.iter().chain(&second).copied().collect();
        let hasher = GroupHasher::new();
        let merged = bounded(&[first, second], limits, &hasher, 2, false);
        let single = bounded(std::slice::from_ref(&all), limits, &hasher, 3, false);
        for groups in [&merged, &single] {
            let a = groups.values().next().unwrap();
            assert_eq!(a.largest(2), [100.0, 40.0, 10.0].as_slice());
            assert_eq!(a.totals[2], Total::IntSum { sum: 157, count: 6 });
            // Measures without rules keep no list.
            assert!(a.largest(3).is_empty());
        }
    }

    #[test]
    fn a_run_of_equal_keys_has_one_row_encoding() {
        // Nulls, a signed zero, NaN and a string key that changes while the float does not.
        let text: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a"),
            Some("a"),
            None,
            None,
            Some("b"),
            Some("b"),
            Some("b"),
            Some("a"),
            Some("a"),
        ]));
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![
            Some(0.0),
            Some(-0.0),
            Some(1.0),
            Some(1.0),
            Some(f64::NAN),
            Some(f64::NAN),
            None,
            None,
            None,
        ]));
        let columns = vec![text, floats];
        let converter = RowConverter::new(vec![
            SortField::new(DataType::Utf8),
            SortField::new(DataType::Float64),
        ])
        .unwrap();
        let encoded = converter.convert_columns(&columns).unwrap();
        let starts = run_starts(&columns, 9);
        assert_eq!(starts, vec![0, 1, 2, 4, 6, 7]);
        for row in 1..9 {
            let starts_a_run = starts.contains(&(row as u32));
            assert_eq!(starts_a_run, encoded.row(row) != encoded.row(row - 1));
        }
    }

    #[test]
    fn random_splits_merge_to_the_single_fold_result() {
        let mut rng = ChaCha8Rng::seed_from_u64(20261123);
        for run in 0..300 {
            let text_units = run % 3 == 2;
            let limits = Limits {
                max_groups: rng.random_range(1..=4),
                max_rows: rng.random_range(1..=4),
            };
            let n_units = rng.random_range(1..=60);
            let n_groups = rng.random_range(1..=GROUPS.len());
            let rows: Vec<Row> = (0..rng.random_range(0..=300))
                .map(|_| {
                    (
                        (rng.random_range(0..20) > 0).then(|| rng.random_range(0..n_units)),
                        GROUPS[rng.random_range(0..n_groups)],
                        (rng.random_range(0..10) > 0).then(|| rng.random_range(0..=100)),
                        (rng.random_range(0..10) > 0).then(|| rng.random_range(0.0..=1.0)),
                    )
                })
                .collect();
            let n_folds = rng.random_range(2..=4);
            let mut shares: Vec<Vec<Row>> = vec![Vec::new(); n_folds];
            for row in &rows {
                shares[rng.random_range(0..n_folds)].push(*row);
            }
            let hasher = GroupHasher::new();
            let batch_rows = rng.random_range(1..=50);
            let merged_all = bounded_all(&shares, limits, &hasher, batch_rows, text_units, true);
            let single_all = bounded_all(
                std::slice::from_ref(&rows),
                limits,
                &hasher,
                64,
                text_units,
                true,
            );
            let (merged, single) = (&merged_all.groups, &single_all.groups);
            assert_same(merged, single);
            // Group ids from the interner and from run-by-run row encodings agree.
            let by_runs = bounded_all(&shares, limits, &hasher, batch_rows, text_units, false);
            assert_same(&by_runs.groups, single);
            // So do the counts of cut units, and they are the definition's.
            let cut = cut_by_definition(&rows, limits);
            assert_eq!(single_all.truncated_units, cut, "run {run}: one fold");
            assert_eq!(
                merged_all.truncated_units, cut,
                "run {run}: {n_folds} folds"
            );
            assert_eq!(
                by_runs.truncated_units, cut,
                "run {run}: run-by-run group ids"
            );
            // The bound itself: no unit is in more than `max_groups` groups.
            let units: i64 = merged.values().map(|g| g.units).sum();
            let distinct: std::collections::HashSet<i64> =
                rows.iter().filter_map(|r| r.0).collect();
            assert!(units <= distinct.len() as i64 * i64::from(limits.max_groups));
        }
    }

    /// What a cluster executor sends back is the fold itself: folds encoded and decoded (as
    /// they cross from the executors to the job's process) finish exactly as the originals,
    /// and bytes that are not a fold's state are refused, never trusted.
    #[cfg(feature = "cluster")]
    #[test]
    fn folds_sent_over_the_wire_finish_exactly_as_the_originals() {
        let mut rng = ChaCha8Rng::seed_from_u64(20261202);
        let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
        for run in 0..100 {
            let text_units = run % 2 == 1;
            let limits = Limits {
                max_groups: rng.random_range(1..=3),
                max_rows: rng.random_range(1..=3),
            };
            let rows: Vec<Row> = (0..rng.random_range(0..=200))
                .map(|_| {
                    (
                        (rng.random_range(0..20) > 0).then(|| rng.random_range(0..40)),
                        GROUPS[rng.random_range(0..GROUPS.len())],
                        (rng.random_range(0..10) > 0).then(|| rng.random_range(0..=100)),
                        (rng.random_range(0..10) > 0).then(|| rng.random_range(0.0..=1.0)),
                    )
                })
                .collect();
            let mut shares: Vec<Vec<Row>> = vec![Vec::new(); 3];
            for row in &rows {
                shares[rng.random_range(0..3)].push(*row);
            }
            let hasher = GroupHasher::new();
            let spec = FoldSpec::decode(
                &FoldSpec::new(&analysis(), limits, hasher.clone(), TEST_UNITS_CAPACITY).encode(),
            )
            .expect("a spec decodes");
            let originals = fold_shares(&shares, limits, &hasher, 7, text_units, true);
            let sent: Vec<Fold> = originals
                .iter()
                .map(|fold| {
                    let reservation = MemoryConsumer::new("test-received").register(&pool);
                    Fold::decode(
                        &spec,
                        &unit_type(text_units),
                        &[DataType::Utf8],
                        reservation,
                        &fold.encode(),
                    )
                    .expect("a fold decodes")
                })
                .collect();
            let here = finish(originals, vec![DataType::Utf8]).unwrap();
            let there = finish(sent, vec![DataType::Utf8]).unwrap();
            assert_same(&there.groups, &here.groups);
            assert_eq!(there.truncated_units, here.truncated_units, "run {run}");
        }

        // Malformed states: truncated, another magic, a chain that runs backwards.
        let hasher = GroupHasher::new();
        let limits = Limits {
            max_groups: 2,
            max_rows: 2,
        };
        let row = |unit: i64, group: &'static str| (Some(unit), group, Some(1), Some(0.5));
        let share = vec![row(1, "a"), row(1, "b"), row(2, "a"), row(1, "c")];
        let fold = fold_shares(&[share], limits, &hasher, 4, false, true).remove(0);
        let spec = FoldSpec::new(&analysis(), limits, hasher, 0);
        let decode = |bytes: &[u8]| {
            let reservation = MemoryConsumer::new("test-received").register(&pool);
            Fold::decode(
                &spec,
                &DataType::Int64,
                &[DataType::Utf8],
                reservation,
                bytes,
            )
        };
        let good = fold.encode();
        assert!(decode(&good).is_ok());
        assert!(decode(&good[..good.len() - 1]).is_err(), "truncated");
        let mut magic = good.clone();
        magic[0] ^= 1;
        assert!(decode(&magic).is_err(), "another magic");
        // The first slot's `next` (right after the slot count) pointing at itself.
        let slots_at = good.len() - 8 - fold.accs.len() * 16 - fold.slots.len() * 16 - 8;
        let mut backwards = good.clone();
        backwards[slots_at + 8 + 4..slots_at + 8 + 8].copy_from_slice(&0u32.to_le_bytes());
        assert!(
            decode(&backwards).is_err(),
            "a chain that does not run forward"
        );
        assert!(decode(&[]).is_err());
        assert!(FoldSpec::decode(b"VFP1").is_none());
    }

    #[test]
    fn counts_each_unit_the_bounds_cut_once_whatever_the_split() {
        let limits = Limits {
            max_groups: 2,
            max_rows: 2,
        };
        let row = |unit: i64, group: &'static str| (Some(unit), group, Some(1), Some(0.5));
        // Two shares, so that some units are split over folds.
        let first: Vec<Row> = vec![
            // Unit 1: three groups of one row — cut (groups).
            row(1, "a"),
            row(1, "b"),
            // Unit 2: three rows in one group — cut (rows).
            row(2, "a"),
            row(2, "a"),
            row(2, "a"),
            // Unit 3: two groups of two rows — within both limits.
            row(3, "a"),
            row(3, "a"),
            row(3, "b"),
            row(3, "b"),
            // Unit 4: one row.
            row(4, "d"),
            // Unit 5: four groups of three rows, two slots capped in any fold — cut, once.
            row(5, "a"),
            row(5, "b"),
            row(5, "c"),
            row(5, "d"),
            row(5, "a"),
            row(5, "b"),
            row(5, "c"),
            row(5, "d"),
            // Unit 6: three rows in one group, two here and one in the other share; no fold
            // sees more than two — cut once the shares are added.
            row(6, "e"),
            row(6, "e"),
            // Unit 7: two groups here and one there; no fold sees more than two — cut by the
            // merge.
            row(7, "a"),
            row(7, "b"),
            // Unit 8: two groups of three rows, both slots capped — cut, once.
            row(8, "f"),
            row(8, "f"),
            row(8, "f"),
            row(8, "g"),
            row(8, "g"),
            // Rows without a unit belong to no one and are no cut unit.
            (None, "a", Some(1), Some(0.5)),
            (None, "a", Some(1), Some(0.5)),
            (None, "a", Some(1), Some(0.5)),
        ];
        let second: Vec<Row> = vec![
            row(1, "c"),
            row(5, "a"),
            row(5, "b"),
            row(5, "c"),
            row(5, "d"),
            row(6, "e"),
            row(7, "c"),
            row(8, "g"),
            row(4, "d"),
        ];
        let all: Vec<Row> = first.iter().chain(&second).copied().collect();
        let cut = [1, 2, 5, 6, 7, 8].len() as i64;
        assert_eq!(cut_by_definition(&all, limits), cut);
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        for run in 0..40 {
            let text_units = run % 2 == 1;
            let hasher = GroupHasher::new();
            let single = bounded_all(
                std::slice::from_ref(&all),
                limits,
                &hasher,
                1 + run % 7,
                text_units,
                true,
            );
            assert_eq!(single.truncated_units, cut, "one fold");
            let split = bounded_all(
                &[first.clone(), second.clone()],
                limits,
                &hasher,
                1 + run % 5,
                text_units,
                run % 3 != 0,
            );
            assert_eq!(split.truncated_units, cut, "the two shares");
            // Rows dealt to 2–5 folds at random, in a random order.
            let n_folds = rng.random_range(2..=5);
            let mut shares: Vec<Vec<Row>> = vec![Vec::new(); n_folds];
            let mut order = all.clone();
            for at in (1..order.len()).rev() {
                order.swap(at, rng.random_range(0..=at));
            }
            for row in order {
                shares[rng.random_range(0..n_folds)].push(row);
            }
            let dealt = bounded_all(&shares, limits, &hasher, 3, text_units, true);
            assert_eq!(dealt.truncated_units, cut, "{n_folds} folds");
        }
        // With limits that cut nobody, nobody is counted.
        let loose = Limits {
            max_groups: 4,
            max_rows: 4,
        };
        let hasher = GroupHasher::new();
        let none = bounded_all(&[first, second], loose, &hasher, 4, false, true);
        assert_eq!(none.truncated_units, 0);
    }
}
